"""The data report, --max-length auto and --max-leakage: functions on tiny data with the conftest
tokenizer, and one real training run that publishes report/data.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST, build_tokenizer
from typer.testing import CliRunner

import entrypoint
from job import data, datareport, features
from job.errors import DataError, ExitCode


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def split(texts, labels=None, pairs=None):
    labels = np.array(labels if labels is not None else [i % 2 for i in range(len(texts))], np.int32)
    return data.Split(tuple(texts), tuple(pairs) if pairs is not None else None, labels)


def test_truncate_equals_encoding_at_max_length_for_texts_and_pairs(tok):
    words = "good bad film story acting plot".split()
    texts = [" ".join(words[(i + j) % 6] for j in range(i % 17)) or "x" for i in range(60)]
    for pairs in (None, texts[::-1]):
        s = split(texts, pairs=pairs)
        full = features.encode(s, tok, 128)
        for n in (6, 9, 128):
            got, want = features.truncate(full, s, tok, n), features.encode(s, tok, n)
            assert np.array_equal(got.offsets, want.offsets)
            assert all(np.array_equal(got.features[k], want.features[k]) for k in want.names)
        assert int(full.lengths.max()) > 9  # the splice was exercised


def test_auto_max_length_is_the_smallest_multiple_of_8_covering_99_percent():
    lengths = np.array([10] * 98 + [17, 300])
    assert datareport.choose_max_length(lengths, 512) == 24  # p99 (higher) is 17 -> 24
    assert datareport.choose_max_length(np.array([3] * 100), 512) == 8
    assert datareport.choose_max_length(np.array([600] * 100), 128) == 128  # capped at the model's limit
    assert datareport.choose_max_length(np.array([16] * 100), None) == 16


def labelled(train, validation, train_labels, val_labels):
    names = ("neg", "pos")
    return data.LabelledData(split(train, train_labels), split(validation, val_labels), names, "file", {})


def test_report_counts_duplicates_overlap_labels_and_lengths():
    d = labelled(["a b", "a b", "c", "d", "d", "d", "Great  Film", "x"], ["a b", "great film ", "new"],
                 [0, 0, 0, 0, 0, 0, 1, 1], [0, 1, 1])
    lengths = np.array([4, 4, 3, 3, 3, 3, 5, 40])
    rep = datareport.build(d, lengths, 8, "auto", 512)
    assert rep["rows"] == {"train": 8, "validation": 3}
    assert rep["labels"] == {"neg": 6, "pos": 2} and rep["imbalance_ratio"] == 3.0
    assert rep["duplicates_in_train"]["rows"] == 3 and rep["duplicates_in_train"]["distinct_repeated"] == 2
    assert rep["duplicates_in_train"]["examples"][0] == {"text": "d", "count": 3}
    assert rep["overlap"]["exact"]["rows"] == 1 and rep["overlap"]["exact"]["examples"] == ["a b"]
    assert rep["overlap"]["normalised"]["rows"] == 2 and rep["overlap"]["normalised"]["share"] == pytest.approx(2 / 3, abs=1e-5)
    assert rep["token_lengths"]["p50"] == 3 and rep["token_lengths"]["max"] == 40
    assert rep["truncated_share"] == 0.125 and rep["max_length"] == {"requested": "auto", "used": 8, "model_limit": 512}
    line = datareport.summary_line(rep)
    assert "\n" not in line and "1 validation rows in train (33.3%; 2 after normalising" in line
    md = datareport.markdown(rep)
    assert "| neg | 6 |" in md and "3x `d`" in md and "12.50% of train rows truncated" in md
    datareport.check_leakage(rep, None)
    datareport.check_leakage(rep, 0.7)
    with pytest.raises(DataError, match=r"2 of 3 validation rows \(66.7%\) also occur in train .*--max-leakage 0.5"):
        datareport.check_leakage(rep, 0.5)


def test_pairs_overlap_only_when_both_texts_match():
    s_train = split(["a", "b"], [0, 1], pairs=["x", "y"])
    s_val = split(["a", "b"], [0, 1], pairs=["x", "z"])
    rep = datareport.build(data.LabelledData(s_train, s_val, ("0", "1"), "file", {}), np.array([3, 3]), 8, 8, None)
    assert rep["overlap"]["exact"]["rows"] == 1 and rep["overlap"]["exact"]["examples"] == ["a | x"]


def test_texts_with_control_characters_are_counted_not_refused():
    s_train = split(["plain", "odd\x12one", "tab\tand\nnewline", "esc\x1b[0m"], pairs=["x", "y", "z", "w"])
    s_val = split(["fine", "a\x01b"], pairs=["q", "r"])
    rep = datareport.build(data.LabelledData(s_train, s_val, ("0", "1"), "file", {}), np.full(4, 3), 8, 8, None)
    assert rep["control_character_texts"] == {"train": 2, "validation": 1}  # tab and newline do not count
    assert "| train | 4 | 0 | 2 |" in datareport.markdown(rep)


def test_training_run_publishes_the_data_report_and_resolves_auto(tmp_path, tiny_checkpoints):
    rows = [f"good fine great film {i % 7}" if i % 2 else f"bad awful dull plot {i % 5}" for i in range(80)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d/train.csv").write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(rows)))
    (tmp_path / "d/validation.csv").write_text("text,label\nGOOD fine great film 1,1\nnew text,0\n")
    args = ["train", *FAST, "--epochs", "1", "--data", str(tmp_path / "d"), "--model", str(tiny_checkpoints["tf"])]
    # Half of validation also occurs in train: more than --max-leakage allows, so exit 3, nothing written.
    refused = CliRunner().invoke(entrypoint.app, [*args, "--max-leakage", "0.2", "--output", str(tmp_path / "no")])
    assert refused.exit_code == ExitCode.BAD_INPUT, refused.output
    assert "1 of 2 validation rows (50.0%) also occur in train" in refused.stderr and not (tmp_path / "no").exists()
    done = CliRunner().invoke(entrypoint.app, [*args, "--max-length", "auto", "--output", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    rep = metrics["data_report"]
    used, p99 = rep["max_length"]["used"], rep["token_lengths"]["p99"]
    assert rep["max_length"]["requested"] == "auto" and used % 8 == 0 and used - 8 < p99 <= used < 128
    assert rep["truncated_share"] <= 0.01 and rep["max_length"]["model_limit"] == 128
    assert metrics["config"]["model"]["max_length"] == used and rep["rows"] == {"train": 80, "validation": 2}
    assert (tmp_path / "out/report/data.md").read_text().startswith("# Data report")
    assert "[data.md](data.md)" in (tmp_path / "out/report/README.md").read_text()


def test_max_length_and_max_leakage_option_values(tmp_path):
    for flag, value, message in (("--max-length", "long", "--max-length must be a number of tokens or auto, got 'long'"),
                                 ("--max-leakage", "1.5", "--max-leakage must be a share from 0 to 1, got 1.5"),
                                 ("--quoting", "maybe", "--quoting must be one of auto, csv, none")):
        result = CliRunner().invoke(entrypoint.app, ["train", "--train", str(tmp_path / "t.csv"), "--model", "m",
                                                     "--output", str(tmp_path / "o"), flag, value])
        assert result.exit_code == ExitCode.BAD_INPUT and message in result.stderr, result.output


def test_overlap_taken_in_train_chunks_equals_one_pass(monkeypatch):
    train = ["a b", "x", "Great  Film", "y", "z", "q w"]
    d = labelled(train, ["great film", "z", "new", "A B"], [0, 1] * 3, [0, 1, 0, 1])
    whole = datareport.build(d, np.full(6, 3), 8, 8, None)["overlap"]
    monkeypatch.setattr(datareport, "OVERLAP_CHUNK", 2)  # hits in the 2nd and 3rd chunks
    chunked = datareport.build(d, np.full(6, 3), 8, 8, None)["overlap"]
    assert chunked == whole and whole["exact"]["rows"] == 1 and whole["normalised"]["rows"] == 3
