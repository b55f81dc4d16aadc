"""Formats written by everyday tools (pandas, the csv module, datasets, compressors) read through
job.data.load, and hostile files written by hand: one error line naming the option that fixes it."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma

import pandas as pd
import pytest
from conftest import SHARED_DATA

from job import data, formats
from job.config import DataConfig
from job.errors import ConfigError, DataError

# Texts a writer must quote: a tab, a newline, a CRLF, quotes, the delimiters.
HARD = ["a review\nwith a line break", "tab\tinside", 'she said "meh"', "comma, semicolon; pipe|", "crlf\r\nend",
        '"starts with a quote', "plain"]
LABELS = [0, 1, 0, 1, 0, 1, 0]


def load_file(tmp_path, path, **kw) -> data.LabelledData:
    """Train and validate on the same file: train holds every row in file order."""
    return data.load(DataConfig(train=str(path), validation=str(path), **kw), None, seed=1,
                     scratch=tmp_path / "scratch")


def frame():
    return pd.DataFrame({"text": HARD, "label": LABELS})


@pytest.mark.parametrize("sep,name", [("\t", "train.tsv"), (",", "train.csv"), (";", "semi.csv"), ("|", "pipe.csv")])
def test_pandas_written_delimited_files_read_back_exactly(tmp_path, sep, name):
    path = tmp_path / name
    frame().to_csv(path, sep=sep, index=False, lineterminator="\r\n")
    d = load_file(tmp_path, path)
    assert d.train.texts == tuple(HARD) and d.train.labels.tolist() == LABELS


@pytest.mark.parametrize("quoting", [csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])
def test_csv_module_written_tsv_reads_back_exactly(tmp_path, quoting):
    path = tmp_path / "train.tsv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", quoting=quoting)
        w.writerow(["text", "label"])
        w.writerows(zip(HARD, LABELS))
    assert load_file(tmp_path, path).train.texts == tuple(HARD)


def test_glue_bare_quote_files_keep_their_quotes(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\n"quoted start\t1\nthe "best" film\t0\n"whole"\t1\nit \'s fine "\t0\n')
    d = load_file(tmp_path, path, text_column="sentence")
    assert d.train.texts == ('"quoted start', 'the "best" film', '"whole"', 'it \'s fine "')


@pytest.mark.parametrize("split,rows,header", [("sst2/train.tsv", 67349, True), ("sst2/dev.tsv", 872, True),
                                               ("uci_sentiment/imdb_labelled.txt", 1000, False)])
def test_real_glue_and_uci_files_read_as_before(tmp_path, split, rows, header):
    path = SHARED_DATA / split
    if not path.is_file():
        pytest.skip(f"{path} is absent (see ../shared/data/README)")
    kw = dict(text_column="sentence") if header else dict(header=False, text_column="0", label_column="1")
    texts = data.read_split([path], [str(path)], DataConfig(**kw)).texts
    assert len(texts) == rows
    bare = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                       header=0 if header else None)
    assert texts == bare.iloc[:, 0].tolist()


def test_semicolon_export_is_sniffed_and_delimiter_can_be_forced(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("\ufefftext;label\r\ngut, wirklich;1\r\nschlecht;0\r\n", encoding="utf-8")
    assert load_file(tmp_path, path).train.texts == ("gut, wirklich", "schlecht")
    # Forcing ',' reads the one column 'text;label' and says which option fixes it.
    with pytest.raises(DataError, match=r"no column 'text'.*try --delimiter ';'"):
        load_file(tmp_path, path, delimiter=",")


def test_json_array_records_columns_and_json_field(tmp_path):
    f = frame()
    f.to_json(tmp_path / "records.json", orient="records", force_ascii=False, indent=2)
    f.to_json(tmp_path / "columns.json")  # pandas' default layout: column -> {row: value}
    (tmp_path / "nested.json").write_text(json.dumps({"version": 1, "data": f.to_dict(orient="records")}))
    for name, kw in (("records.json", {}), ("columns.json", {}), ("nested.json", {"json_field": "data"})):
        d = load_file(tmp_path, tmp_path / name, **kw)
        assert d.train.texts == tuple(HARD) and d.train.labels.tolist() == LABELS, name
    with pytest.raises(DataError, match="holds its rows in a list under 'data': pass --json-field data"):
        load_file(tmp_path, tmp_path / "nested.json")
    with pytest.raises(DataError, match="has no key 'rows' at the top .*set --json-field"):
        load_file(tmp_path, tmp_path / "nested.json", json_field="rows")
    # JSON Lines under .json still works, and a row number in an array is its 1-based position.
    f.to_json(tmp_path / "lines.json", orient="records", lines=True)
    assert load_file(tmp_path, tmp_path / "lines.json").train.texts == tuple(HARD)
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "a", "label": 0}, {"text": " ", "label": 1}]))
    with pytest.raises(DataError, match=r"bad\.json row 2: empty value in the text column"):
        load_file(tmp_path, tmp_path / "bad.json")


def test_datasets_save_to_disk_folders_and_arrow_files(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame()),
                               "validation": datasets.Dataset.from_dict({"text": ["v1", "v2"], "label": [1, 0]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    d = data.load(DataConfig(data=str(tmp_path / "dd")), None, seed=1, scratch=tmp_path / "s")
    assert d.train.texts == tuple(HARD) and d.validation.texts == ("v1", "v2") and d.validation_source == "file"
    arrow = next((tmp_path / "dd" / "train").glob("*.arrow"))
    assert load_file(tmp_path, arrow).train.labels.tolist() == LABELS
    import pyarrow as pa  # the Arrow file format (not the stream datasets writes)

    with pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, pa.schema([("text", pa.string()), ("label", pa.int64())])) as w:
        w.write_table(pa.table({"text": HARD, "label": LABELS}))
    assert load_file(tmp_path, tmp_path / "file.arrow").train.texts == tuple(HARD)


def test_every_compression_for_every_text_format(tmp_path):
    import pyarrow as pa

    def zstd(raw):
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as out:
            out.write(raw)
        return sink.getvalue().to_pybytes()

    f = frame()
    plain = {"csv": f.to_csv(index=False).encode(), "tsv": f.to_csv(sep="\t", index=False).encode(),
             "jsonl": f.to_json(orient="records", lines=True).encode(), "json": f.to_json(orient="records").encode()}
    for fmt, raw in plain.items():
        for suffix, pack in ((".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress), (".zst", zstd)):
            path = tmp_path / f"train.{fmt}{suffix}"
            path.write_bytes(pack(raw))
            assert load_file(tmp_path, path).train.texts == tuple(HARD), path.name
    (tmp_path / "broken.csv.zst").write_bytes(b"not zstd at all")
    with pytest.raises(DataError, match="is not a valid zstd file"):
        load_file(tmp_path, tmp_path / "broken.csv.zst")


def test_encodings_utf16_bom_detected_and_wrong_encoding_names_the_option(tmp_path):
    f = pd.DataFrame({"text": ["café crème", "naïve"], "label": [0, 1]})
    f.to_csv(tmp_path / "utf16.csv", index=False, encoding="utf-16")  # pandas writes a BOM
    assert load_file(tmp_path, tmp_path / "utf16.csv").train.texts == ("café crème", "naïve")
    f.to_csv(tmp_path / "cp1252.csv", index=False, encoding="cp1252")
    with pytest.raises(DataError) as err:
        load_file(tmp_path, tmp_path / "cp1252.csv")
    assert "is not UTF-8 (invalid byte 0xe9 on line 2)" in str(err.value) and "--encoding" in str(err.value)
    assert load_file(tmp_path, tmp_path / "cp1252.csv", encoding="cp1252").train.texts == ("café crème", "naïve")
    (tmp_path / "bad.csv").write_bytes("text,label\nok,0\n\u20ac\u0153,1\n".encode("utf-8"))
    with pytest.raises(DataError, match=r"is not ascii \(invalid byte 0xe2 on line 3\).*--encoding"):
        load_file(tmp_path, tmp_path / "bad.csv", encoding="ascii")
    with pytest.raises(ConfigError, match="--encoding 'klingon'"):
        formats.check_options("klingon", "auto", "auto")


def test_inconsistent_quoting_names_the_option_and_forcing_works(tmp_path):
    path = tmp_path / "train.tsv"
    # A pandas-quoted multi-line field and a GLUE-style bare quote in one file: neither reading fits.
    path.write_text('text\tlabel\n"two\nlines"\t0\nbare "quote" here\t1\n"tab\tin"\t0\n')
    with pytest.raises(DataError) as err:
        load_file(tmp_path, path)
    assert "inconsistent quoting from line 2" in str(err.value) and "--quoting csv" in str(err.value)
    assert "\n" not in str(err.value)
    # --quoting none: quotes are text, so the quoted tab splits line 5 into three fields.
    with pytest.raises(DataError, match=r"Expected 2 fields in line 5, saw 3; .*--quoting"):
        load_file(tmp_path, path, quoting="none")
    # --quoting csv forces RFC 4180: a quoted "whole" field loses its quotes.
    (tmp_path / "q.tsv").write_text('text\tlabel\n"whole"\t0\nx\t1\n')
    assert load_file(tmp_path, tmp_path / "q.tsv").train.texts == ('"whole"', "x")
    assert load_file(tmp_path, tmp_path / "q.tsv", quoting="csv").train.texts == ("whole", "x")


def test_row_numbers_point_at_the_record_after_quoted_multiline_fields(tmp_path):
    path = tmp_path / "train.tsv"
    rows = pd.DataFrame({"text": ["one\ntwo\nthree", "tab\there", "  ", "z"], "label": [0, 1, 0, 1]})
    rows.to_csv(path, sep="\t", index=False)
    # Lines: 1 header, 2-4 the three-line field, 5 the tab row, 6 the blank text.
    with pytest.raises(DataError, match=r"train\.tsv row 6: empty value in the text column"):
        load_file(tmp_path, path)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_take_the_reading_options(tmp_path, command):
    from typer.testing import CliRunner

    import entrypoint
    from job.errors import ExitCode

    result = CliRunner().invoke(entrypoint.app, [command, "--model", str(tmp_path / "run"), "--data",
                                                 str(tmp_path / "x.csv"), "--output", str(tmp_path / "p.jsonl"),
                                                 "--delimiter", ":"])
    assert result.exit_code == ExitCode.BAD_INPUT and "--delimiter must be one of" in result.stderr
    assert not (tmp_path / "p.jsonl").exists()
    assert "--json-field" in CliRunner().invoke(entrypoint.app, [command, "--help"]).output
