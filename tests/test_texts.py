"""Texts (job/texts.py): the Arrow-held text column behaves as a tuple of str, and its Arrow checks
agree with the Python rules they replace on every code point."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from job import data, formats
from job.config import DataConfig
from job.texts import BLANK, Texts


def test_blank_pattern_is_pythons_strip_on_every_code_point():
    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]  # surrogates are not UTF-8
    singles = pa.array([chr(c) for c in points], pa.large_string())
    got = pc.match_substring_regex(singles, BLANK).to_numpy(zero_copy_only=False)
    want = np.array([not chr(c).strip() for c in points])
    assert (got == want).all(), [hex(points[i]) for i in np.flatnonzero(got != want)[:10]]
    mixed = ["", " \t\n\r\x0b\x0c\x1c\x85\u2028\u3000", " a ", "\x00", "\u200b"]  # U+200B is not space
    assert pc.match_substring_regex(pa.array(mixed), BLANK).to_pylist() == [not t.strip() for t in mixed]


def test_texts_behave_as_a_tuple_of_str():
    values = ("a", "b\tc", "😀 d", "", "e\x12f", "last")
    t = Texts(values)
    assert len(t) == 6 and t[0] == "a" and t[-1] == "last" and t[2] == "😀 d"
    assert t == values and t == list(values) and t != values[:-1] and tuple(t) == values
    assert t[1:4] == values[1:4] and t[::2] == values[::2] and t[::-1] == values[::-1]
    assert t.take(np.array([5, 0, 0])) == ("last", "a", "a")
    assert Texts.concat([t[:2], t[2:]]) == t and Texts(t) == t and Texts([]) == ()
    assert t.arrow.type == pa.large_string()
    with pytest.raises(IndexError):
        t[6]
    split = data.Split(list(values), None, np.arange(6))
    assert isinstance(split.texts, Texts) and split.take(np.array([2])).texts == ("😀 d",)


def test_texts_find_the_first_blank_nul_and_null():
    t = Texts(["ok", "also ok", " \u3000 ", "x\x00y", None])
    assert t.first_blank() == 2 and t.first_nul() == (3, 1) and t.first_null() == 4
    clean = Texts(["a", "b\x01"])  # other controls are text
    assert clean.first_blank() is None and clean.first_nul() is None and clean.first_null() is None


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("encoding", ["auto", "utf-8", "utf-8-sig"])
def test_utf8_csv_is_read_from_its_bytes_into_arrow(tmp_path, encoding):
    body = 'text,label\r\n"emoji 😀, quoted",1\r\nplain café,0\r\n"two\nlines ""q""",1\r\n'.encode()
    bom = b"\xef\xbb\xbf" if encoding != "utf-8" else b""
    path = write(tmp_path / "train.csv", bom + body)
    frame = formats.read_table(path, "train.csv", "csv", True, formats.ReadOptions(encoding=encoding))
    assert isinstance(frame["text"].dtype, pd_arrow()) and list(frame.columns) == ["text", "label"]
    got = data.read_split([path], ["train.csv"], DataConfig(train=str(path), encoding=encoding))
    assert isinstance(got.texts, Texts)
    assert got.texts == ("emoji 😀, quoted", "plain café", 'two\nlines "q"') and got.labels == ["1", "0", "1"]


def pd_arrow():
    import pandas as pd

    return pd.ArrowDtype


def test_other_encodings_and_bad_utf8_take_the_decoding_path(tmp_path):
    cp = write(tmp_path / "cp.csv", "text,label\ncafé crème,1\nnaïve,0\n".encode("cp1252"))
    got = data.read_split([cp], ["cp.csv"], DataConfig(train=str(cp), encoding="cp1252"))
    assert got.texts == ("café crème", "naïve")
    bad = write(tmp_path / "bad.csv", b"text,label\nfine,1\n" + b"x" * 5000 + b"\xff,0\n")
    with pytest.raises(Exception, match=r"bad.csv is not UTF-8 \(invalid byte 0xff on line 3\)"):
        data.read_split([bad], ["bad.csv"], DataConfig(train=str(bad)))
