"""Data reading, split discovery and label mapping, on files written by each test (no TF needed in this
process; one test runs the real CLI in a subprocess)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_job

from job import data
from job.config import DataConfig
from job.errors import ConfigError, DataError, ExitCode
from job.texts import Texts


def load(tmp_path, num_labels=None, **kw) -> data.LabelledData:
    return data.load(DataConfig(**kw), num_labels, seed=1, scratch=tmp_path / "scratch")


def write(path, text, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def test_csv_with_bom_crlf_and_quoted_commas(tmp_path):
    write(tmp_path / "d/train.csv", '\ufefftext,label\r\n"good, really",pos\r\nbad,neg\r\n"she said ""meh""",neg\r\n')
    write(tmp_path / "d/dev.csv", "text,label\r\nfine,pos\r\n")
    d = load(tmp_path, data=str(tmp_path / "d"))
    assert d.train.texts == ("good, really", "bad", 'she said "meh"')
    assert d.label_names == ("neg", "pos")  # string labels: sorted, stable
    assert d.train.labels.tolist() == [1, 0, 0]
    assert d.validation.texts == ("fine",) and d.validation_source == "file"


def test_tsv_is_read_without_quoting_and_keeps_u0085(tmp_path):
    # SST-2 and the UCI files contain bare quotes and U+0085 inside texts.
    write(tmp_path / "train.tsv", 'sentence\tlabel\n"quoted start\t1\nnext\u0085line\t0\nplain\t1\n')
    d = load(tmp_path, train=str(tmp_path / "train.tsv"), text_column="sentence")
    texts = set(d.train.texts) | set(d.validation.texts)
    assert texts == {'"quoted start', "next\u0085line", "plain"}


def test_no_header_uses_column_positions(tmp_path):
    write(tmp_path / "train.txt", "great stuff\t1\nawful\t0\nok then\t1\nmeh\t0\n")
    d = load(tmp_path, train=str(tmp_path / "train.txt"), header=False, text_column="0", label_column="1")
    assert len(d.train) + len(d.validation) == 4
    assert d.label_names == ("0", "1")


def test_jsonl_and_parquet_shards_in_folders(tmp_path):
    import pandas as pd

    rows = [{"text": f"t{i}", "label": i % 3} for i in range(9)]
    write(tmp_path / "d/train/part-0.jsonl", "\n".join(json.dumps(r) for r in rows[:5]) + "\n")
    write(tmp_path / "d/train/part-1.jsonl", "\n".join(json.dumps(r) for r in rows[5:]) + "\n")
    (tmp_path / "d/validation").mkdir(parents=True)
    pd.DataFrame({"text": ["v0", "v1"], "label": [2, 0]}).to_parquet(tmp_path / "d/validation/00.parquet")
    write(tmp_path / "d/_SUCCESS", "")
    d = load(tmp_path, data=str(tmp_path / "d"))
    assert d.train.texts == tuple(f"t{i}" for i in range(9))
    assert d.train.labels.tolist() == [i % 3 for i in range(9)]
    assert d.validation.labels.tolist() == [2, 0]
    assert d.label_names == ("0", "1", "2")


def test_integer_labels_map_numerically_and_num_labels_is_inferred(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,-1\nb,1\nc,10\nd,2\n")
    write(tmp_path / "dev.csv", "text,label\ne,10\n")
    d = load(tmp_path, data=str(tmp_path))
    assert d.label_names == ("-1", "1", "2", "10")  # numeric, not lexicographic order
    assert d.train.labels.tolist() == [0, 1, 3, 2]
    assert d.validation.labels.tolist() == [3]


def test_explicit_num_labels_keeps_integer_ids(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,0\nb,2\n")
    d = load(tmp_path, num_labels=4, train=str(tmp_path / "train.csv"), validation=str(tmp_path / "train.csv"))
    assert d.label_names == ("0", "1", "2", "3") and d.train.labels.tolist() == [0, 2]


def test_sentence_pairs(tmp_path):
    write(tmp_path / "train.csv", "premise,hypothesis,label\nA cat.,An animal.,entail\nA dog.,A car.,contra\n")
    d = load(tmp_path, train=str(tmp_path / "train.csv"), validation=str(tmp_path / "train.csv"),
             text_column="premise", text_pair_column="hypothesis")
    assert d.train.pairs == ("An animal.", "A car.")


def test_validation_carved_with_fixed_seed_and_subset(tmp_path):
    write(tmp_path / "train.csv", "text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(100)))
    a = load(tmp_path, train=str(tmp_path / "train.csv"), validation_fraction=0.2, max_train_examples=50)
    b = load(tmp_path, train=str(tmp_path / "train.csv"), validation_fraction=0.2, max_train_examples=50)
    assert len(a.validation) == 20 and len(a.train) == 50
    assert a.validation.texts == b.validation.texts and a.train.texts == b.train.texts
    assert not set(a.validation.texts) & set(a.train.texts)
    assert a.validation_source.startswith("carved")


def test_fingerprint_tracks_content(tmp_path):
    write(tmp_path / "a/train.csv", "text,label\nx,0\ny,1\n")
    write(tmp_path / "a/dev.csv", "text,label\nx,0\ny,1\n")
    write(tmp_path / "b/train.csv", "text,label\nx,0\ny,1\n")
    write(tmp_path / "b/dev.csv", "text,label\nx,0\ny,0\n")
    assert load(tmp_path, data=str(tmp_path / "a")).fingerprint() != load(tmp_path, data=str(tmp_path / "b")).fingerprint()


def test_plain_labels_match_leading_zero_ints(tmp_path):
    ids_train, ids_val, names = data.encode_labels(["0", "1", "01"], ["1"], None)
    assert names == ("0", "1") and ids_train.tolist() == [0, 1, 1] and ids_val.tolist() == [1]


# --------------------------------------------------------------------------------------------
# Bad data: one clear line naming the file and the fix

BAD = [
    ("missing path", None, "does not exist"),
    ("empty file", b"", "is empty"),
    ("header only", b"text,label\n", "header but no rows"),
    ("missing text column", b"sentence,label\nx,1\ny,0\n", "no column 'text'"),
    ("missing label column", b"text,target\nx,1\ny,0\n", "no column 'label'"),
    # The header does not name --text-column under any delimiter, so sniffing cannot pick the tab.
    ("wrong delimiter", b"sentence\tlabel\nx\t1\ny\t0\n", "another delimiter: try --format tsv"),
    ("empty text", b"text,label\nx,1\n   ,0\n", "row 3: empty value in the text column"),
    ("null label", b"text,label\nx,1\ny,\n", "row 3: missing label"),
    ("single class", b"text,label\nx,1\ny,1\n", "single class"),
    ("not utf-8", "text,label\ncaf\u00e9,1\nb,0\n".encode("latin-1"), "not UTF-8"),
    ("ragged rows", b"text,label\nx,1\ny,0,extra,more\n", "not valid CSV"),
]


@pytest.mark.parametrize("case,content,message", BAD, ids=[b[0] for b in BAD])
def test_bad_training_file(tmp_path, case, content, message):
    path = tmp_path / "train.csv"
    if content is not None:
        write(path, content)
    with pytest.raises(DataError) as err:
        load(tmp_path, train=str(path))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_validation_label_outside_training_classes(tmp_path):
    write(tmp_path / "train.csv", "text,label\nx,pos\ny,neg\n")
    write(tmp_path / "validation.csv", "text,label\nz,neutral\n")
    with pytest.raises(DataError, match="validation label 'neutral' is not among the training labels"):
        load(tmp_path, data=str(tmp_path))


def test_label_beyond_num_labels(tmp_path):
    write(tmp_path / "train.csv", "text,label\nx,0\ny,5\n")
    with pytest.raises(DataError, match="label 5 is outside 0..1"):
        load(tmp_path, num_labels=2, train=str(tmp_path / "train.csv"))


def test_num_labels_mismatch_with_string_labels(tmp_path):
    write(tmp_path / "train.csv", "text,label\nx,a\ny,b\nz,c\n")
    with pytest.raises(DataError, match="3 distinct labels but --num-labels is 2"):
        load(tmp_path, num_labels=2, train=str(tmp_path / "train.csv"))


def test_no_train_split_under_data(tmp_path):
    write(tmp_path / "d/validation.csv", "text,label\nx,0\n")
    with pytest.raises(DataError, match="no training split"):
        load(tmp_path, data=str(tmp_path / "d"))


def test_unknown_extension_asks_for_format(tmp_path):
    write(tmp_path / "train.data", "text,label\nx,0\ny,1\n")
    with pytest.raises(DataError, match="--format"):
        load(tmp_path, train=str(tmp_path / "train.data"))
    d = load(tmp_path, train=str(tmp_path / "train.data"), validation=str(tmp_path / "train.data"),
             data_format="csv")
    assert d.train.texts == ("x", "y")


def test_bad_jsonl_line(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "a", "label": 0}\n{"text": "b", label: 1}\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        load(tmp_path, train=str(tmp_path / "train.jsonl"))


def test_no_header_needs_positions():
    with pytest.raises(ConfigError, match="0-based column position"):
        from job.config import JobConfig, ModelConfig, OutputConfig, TrainConfig
        JobConfig(DataConfig(train="x", header=False), ModelConfig(model="m"), TrainConfig(), OutputConfig(output="o"))


def test_labels_are_int32_arrays(tmp_path):
    write(tmp_path / "train.csv", "text,label\nx,0\ny,1\n")
    d = load(tmp_path, train=str(tmp_path / "train.csv"), validation=str(tmp_path / "train.csv"))
    assert d.train.labels.dtype == np.int32


# --------------------------------------------------------------------------------------------
# Label rules: whole numbers are one class however spelled; fractions and objects are refused

def write_parquet(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    return path


def write_jsonl(path, rows):
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def load_file(tmp_path, path, num_labels=None, **kw):
    """Train and validate on the same file, so train.labels holds every row in file order."""
    return load(tmp_path, num_labels, train=str(path), validation=str(path), **kw)


@pytest.mark.parametrize("name,make", [
    ("train.csv", lambda p: write(p, "text,label\na,1\nb,1.0\nc,01\nd,0\ne,0.0\nf,+1\ng, 1 \n")),
    ("train.tsv", lambda p: write(p, "text\tlabel\na\t1\nb\t1.0\nc\t01\nd\t0\ne\t0.0\nf\t+1\ng\t1e0\n")),
    ("train.jsonl", lambda p: write_jsonl(p, [{"text": t, "label": v} for t, v in
                                              zip("abcdefg", [1, 1.0, "01", 0, "0.0", "1", "1."])])),
    ("floats.jsonl", lambda p: write_jsonl(p, [{"text": t, "label": v} for t, v in
                                               zip("abcdefg", [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0])])),
    ("floats.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": list("abcdefg"), "label": [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]}))),
    ("ints.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": list("abcdefg"), "label": np.array([1, 1, 1, 0, 0, 1, 1], dtype=np.int8)}))),
    ("strings.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": list("abcdefg"), "label": ["1", "1.0", "01", "0", "-0", "1", "1.00"]}))),
])
def test_whole_number_labels_are_one_class_however_spelled(tmp_path, name, make):
    d = load_file(tmp_path, make(tmp_path / name))
    assert d.label_names == ("0", "1")
    assert d.train.labels.tolist() == [1, 1, 1, 0, 0, 1, 1]


def test_whole_number_labels_match_across_formats(tmp_path):
    import pandas as pd

    write(tmp_path / "d/train.csv", "text,label\na,0\nb,1\nc,2\n")
    write_parquet(tmp_path / "d/validation/00.parquet", pd.DataFrame({"text": ["x", "y"], "label": [2.0, 1.0]}))
    write_jsonl(tmp_path / "d/validation/01.jsonl", [{"text": "z", "label": "02"}, {"text": "w", "label": 0.0}])
    d = load(tmp_path, data=str(tmp_path / "d"))
    assert d.label_names == ("0", "1", "2")
    assert d.validation.labels.tolist() == [2, 1, 2, 0]


def test_numeric_labels_among_names_are_normalised_not_split(tmp_path):
    # "pos" makes the labels names, but "1", "1.0" and "01" are still the one class "1".
    path = write(tmp_path / "train.csv", "text,label\na,pos\nb,1\nc,1.0\nd,01\ne,pos\n")
    d = load_file(tmp_path, path)
    assert d.label_names == ("1", "pos")
    assert d.train.labels.tolist() == [1, 0, 0, 0, 1]
    jsonl = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": 1},
                                                   {"text": "c", "label": 1.0}, {"text": "d", "label": "1"}])
    assert load_file(tmp_path, jsonl).label_names == ("1", "pos")


def test_float_spelled_ids_keep_num_labels_semantics(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\na,0.0\nb,2\nc,02\n")
    d = load_file(tmp_path, path, num_labels=4)
    assert d.label_names == ("0", "1", "2", "3") and d.train.labels.tolist() == [0, 2, 2]
    with pytest.raises(DataError, match="label 5 is outside 0..3"):
        load_file(tmp_path, write(tmp_path / "five.csv", "text,label\na,0\nb,5.0\n"), num_labels=4)


def test_string_names_and_integer_ids_keep_their_order(tmp_path):
    d = load_file(tmp_path, write(tmp_path / "names.csv", "text,label\na,b\nb,a\nc,B\nd,10\n"))
    assert d.label_names == ("10", "B", "a", "b")  # names: lexicographic, as before
    d = load_file(tmp_path, write(tmp_path / "ids.csv", "text,label\na,10\nb,-1\nc,2\nd,2.0\n"))
    assert d.label_names == ("-1", "2", "10") and d.train.labels.tolist() == [2, 0, 1, 1]


def test_boolean_labels_are_names(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": True}, {"text": "b", "label": False}])
    assert load_file(tmp_path, path).label_names == ("false", "true")


def test_non_numeric_lookalikes_stay_names(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\na,0x1\nb,inf\nc,1_000\nd,v1.0\n")
    assert load_file(tmp_path, path).label_names == ("0x1", "1_000", "inf", "v1.0")


FRACTIONS = [
    ("train.csv", lambda p: write(p, "text,label\na,0\nb,0.5\nc,1\n"), "row 3: the label '0.5' is not a whole number"),
    ("train.tsv", lambda p: write(p, "text\tlabel\na\t0\nb\t1\n\nc\t2.25\n"), "row 5: the label '2.25' is not"),
    ("train.jsonl", lambda p: write_jsonl(p, [{"text": "a", "label": 0}, {"text": "b", "label": 0.5}]),
     "row 2: the label 0.5 is not a whole number"),
    ("mixed.jsonl", lambda p: write_jsonl(p, [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"},
                                              {"text": "c", "label": 2.5}]), "row 3: the label 2.5 is not"),
    ("train.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": ["a", "b", "c"], "label": [0.0, 1.0, 1.5]})), "row 3: the label 1.5 is not a whole number"),
    ("inf.jsonl", lambda p: write_jsonl(p, ['{"text": "a", "label": 0}', '{"text": "b", "label": Infinity}']),
     "row 2: the label inf is not a whole number"),
    ("huge.csv", lambda p: write(p, "text,label\na,0\nb,1e999999999\n"), "row 3: the label '1e999999999' is too large"),
]


@pytest.mark.parametrize("name,make,message", FRACTIONS, ids=[f[0] for f in FRACTIONS])
def test_non_whole_number_label_is_refused(tmp_path, name, make, message):
    path = make(tmp_path / name)
    with pytest.raises(DataError) as err:
        load(tmp_path, train=str(path))
    assert str(err.value).startswith(f"{path} {message}")
    if "whole number" in message:
        assert "--problem-type regression" in str(err.value) and "class names" in str(err.value)


NON_SCALAR = [
    ("object.jsonl", lambda p: write_jsonl(p, [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                               {"text": "c", "label": {"a": 1}}]),
     'row 3: the label is a JSON object ({"a": 1}); labels must be a class name or id'),
    ("list.jsonl", lambda p: write_jsonl(p, ["", {"text": "a", "label": [0, 1]}, {"text": "b", "label": 1}]),
     "row 2: the label is a list ([0, 1]); labels must be a class name or id, one per row (multi-label: "
     "--problem-type multi_label)"),
    ("list.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": ["a", "b"], "label": [[0], [0, 1]]})), "row 1: the label is a list ([0]); labels must be"),
    ("struct.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": ["a", "b"], "label": [{"k": "x"}, {"k": "y"}]})),
     'row 1: the label is a JSON object ({"k": "x"}); labels must be a class name or id'),
]


@pytest.mark.parametrize("name,make,message", NON_SCALAR, ids=[n[0] for n in NON_SCALAR])
def test_non_scalar_label_is_refused(tmp_path, name, make, message):
    # Lists are multi-label under --problem-type auto (tests/test_problem_types.py): refused when
    # single-label is asked for.
    path = make(tmp_path / name)
    with pytest.raises(DataError) as err:
        load(tmp_path, train=str(path), problem_type="single_label")
    assert str(err.value).startswith(f"{path} {message}")
    assert "\n" not in str(err.value)


def test_long_object_label_is_shortened_in_the_message(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": {"k": "x" * 500}}])
    with pytest.raises(DataError) as err:
        load(tmp_path, train=str(path))
    assert len(str(err.value)) < len(str(path)) + 160 and "…" in str(err.value)


# --------------------------------------------------------------------------------------------
# Control characters in texts

C0_KEPT = ["\x01", "\x08", "\x0b", "\x0c", "\x12", "\x1b", "\x1f"]


@pytest.mark.parametrize("char", C0_KEPT, ids=[f"U+{ord(c):04X}" for c in C0_KEPT])
def test_control_characters_other_than_nul_are_kept(tmp_path, char):
    # Real data holds them (GLUE STS-B's train.tsv has a U+0012); the tokenizer drops them.
    path = write(tmp_path / "train.csv", f"text,label\nfine,0\nodd{char}text,1\nok,0\n")
    assert f"odd{char}text" in load_file(tmp_path, path).train.texts


def test_nul_is_refused_naming_row_character_and_encoding(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\nfine,0\nbad\x00text,1\nok,0\n")
    with pytest.raises(DataError) as err:
        load(tmp_path, train=str(path))
    assert str(err.value).startswith(f"{path} row 3: the text column holds a NUL byte (U+0000) at character 4; ")
    assert "--encoding utf-16" in str(err.value)


CONTROL_FILES = [
    ("train.tsv", lambda p: write(p, "text\tlabel\na\t0\n\nb\x00\t1\n"), {}, "row 4: the text column holds", "U+0000"),
    ("escaped.jsonl", lambda p: write(p, '{"text": "a", "label": 0}\n\n{"text": "b\\u0000", "label": 1}\n'), {},
     "row 3: the text column holds", "U+0000"),
    ("raw.jsonl", lambda p: write(p, '{"text": "a", "label": 0}\n{"text": "b\x00", "label": 1}\n'), {},
     "row 2: the text column holds", "U+0000"),
    ("train.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": ["a", "b", "c\x00"], "label": [0, 1, 0]})), {}, "row 3: the text column holds", "U+0000"),
    ("pair.csv", lambda p: write(p, "premise,hypothesis,label\na,b,0\nc,d\x00,1\n"),
     {"text_column": "premise", "text_pair_column": "hypothesis"}, "row 3: the text-pair column holds", "U+0000"),
    ("pair.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"p": ["a", "b"], "h": ["\x00x", "y"], "label": [0, 1]})),
     {"text_column": "p", "text_pair_column": "h"}, "row 1: the text-pair column holds", "U+0000"),
]


@pytest.mark.parametrize("name,make,kw,message,char", CONTROL_FILES, ids=[c[0] for c in CONTROL_FILES])
def test_nul_refused_in_every_format_and_column(tmp_path, name, make, kw, message, char):
    path = make(tmp_path / name)
    with pytest.raises(DataError) as err:
        load(tmp_path, train=str(path), **kw)
    assert str(err.value).startswith(f"{path} {message} a NUL byte ({char})")
    assert "\n" not in str(err.value) and "\x00" not in str(err.value)


def test_tab_newline_and_carriage_return_are_kept(tmp_path):
    import pandas as pd

    csv_path = write(tmp_path / "train.csv", 'text,label\n"a\tb\nc\r\nd",0\nplain,1\n')
    assert load_file(tmp_path, csv_path).train.texts[0] == "a\tb\nc\r\nd"
    # A raw tab inside a JSON string is accepted, like in the other formats; escapes work too.
    jsonl = write(tmp_path / "train.jsonl", '{"text": "a\tb", "label": 0}\n{"text": "c\\nd\\re\\t", "label": 1}\n')
    assert load_file(tmp_path, jsonl).train.texts == ("a\tb", "c\nd\re\t")
    pq_path = write_parquet(tmp_path / "train.parquet", pd.DataFrame({"text": ["x\ty\nz\r", "w"], "label": [0, 1]}))
    assert load_file(tmp_path, pq_path).train.texts == ("x\ty\nz\r", "w")


def test_control_character_found_past_the_first_chunk(tmp_path):
    rows = [f"row {i}" for i in range(100_000)]
    assert Texts(rows).first_nul() is None
    rows[70_001] = "row\x00 70001"
    assert Texts(rows).first_nul() == (70_001, 3)
    path = write(tmp_path / "big.csv", "text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(rows)))
    with pytest.raises(DataError, match=r"big\.csv row 70003: the text column holds a NUL byte \(U\+0000\)"):
        load(tmp_path, train=str(path))


# --------------------------------------------------------------------------------------------
# Row numbers: the line of the file for CSV/TSV/JSON Lines (a header is line 1), the 1-based row for Parquet

ROW_NUMBERS = [
    ("csv", "train.csv", lambda p: write(p, "text,label\na,0\nb,1\nc,\n"), {}, "row 4: missing label"),
    ("csv blank line and quoted newline", "train.csv",
     lambda p: write(p, 'text,label\na,0\nb,1\n\n"multi\nline",0\nc,\n'), {}, "row 7: missing label"),
    ("csv crlf", "train.csv", lambda p: write(p, "text,label\r\na,0\r\n\r\n  ,1\r\n"), {},
     "row 4: empty value in the text column"),
    ("csv no header", "train.csv", lambda p: write(p, "a,0\nb,1\n,0\n"),
     {"header": False, "text_column": "0", "label_column": "1"}, "row 3: empty value in the text column"),
    ("tsv", "train.tsv", lambda p: write(p, 'text\tlabel\n"a\t0\n\nb\t\n'), {}, "row 4: missing label"),
    ("tsv no header", "train.txt", lambda p: write(p, "a\t0\n \t1\n"),
     {"header": False, "text_column": "0", "label_column": "1"}, "row 2: empty value in the text column"),
    ("jsonl", "train.jsonl", lambda p: write_jsonl(p, [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                                       {"text": "c"}]), {}, "row 3: missing label"),
    ("jsonl first line", "train.jsonl", lambda p: write_jsonl(p, [{"text": "", "label": 0}, {"text": "b", "label": 1}]),
     {}, "row 1: empty value in the text column"),
    ("jsonl blank lines", "train.jsonl",
     lambda p: write(p, '\n{"text": "a", "label": "x"}\n\n\n{"text": 5, "label": "y"}\n'), {},
     "row 5: not text value in the text column"),
    ("parquet", "train.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": ["a", "b", ""], "label": [0, 1, 0]})), {}, "row 3: empty value in the text column"),
    ("parquet missing label", "train.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": ["a", "b", "c"], "label": [0.0, None, 1.0]})), {}, "row 2: missing label"),
    ("parquet missing string label", "train.parquet", lambda p: write_parquet(p, __import__("pandas").DataFrame(
        {"text": ["a", "b"], "label": ["x", None]})), {}, "row 2: missing label"),
]


@pytest.mark.parametrize("case,name,make,kw,message", ROW_NUMBERS, ids=[r[0] for r in ROW_NUMBERS])
def test_row_numbers_are_the_ones_the_user_sees(tmp_path, case, name, make, kw, message):
    path = make(tmp_path / name)
    with pytest.raises(DataError) as err:
        load(tmp_path, train=str(path), **kw)
    assert str(err.value).startswith(f"{path} {message}"), case


def test_bad_data_through_the_real_cli(tmp_path):
    """The real process: exit code 3, one `error:` line naming file, row and character, nothing written."""
    path = write(tmp_path / "data/train.csv", "text,label\nfine,0\nbad\x00byte,1\nok,0\n")
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}
    proc = run_job(["train", "--train", str(path), "--model", str(tmp_path / "model"),
                    "--output", str(tmp_path / "out")])
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert lines[-1].startswith(f"error: {path} row 3: the text column holds a NUL byte (U+0000)")
    assert not (tmp_path / "out").exists()
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")} == before
