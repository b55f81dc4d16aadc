"""Data reading, split discovery and label mapping, on files written by each test (no TF needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from job import data
from job.config import DataConfig
from job.errors import ConfigError, DataError


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
    ("wrong delimiter", b"text\tlabel\nx\t1\ny\t0\n", "another delimiter: try --format tsv"),
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
