"""Data: find the splits, read their files (job/formats.py), validate, map labels to ids.

Everything here is checked before a model is loaded, so bad data fails in seconds with one line
that names the file, the row and the fix.
"""

from __future__ import annotations

import csv
import decimal
import hashlib
import itertools
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from job import formats, storage
from job import labels as label_rules
from job.config import DataConfig
from job.errors import ConfigError, DataError
from job.texts import Texts, release_unused

log = logging.getLogger(__name__)

# Split names recognised under --data: `train.csv`, `train-00001.parquet`, `train/…`, `dev.tsv`.
SPLIT_PATTERN = re.compile(r"^(train|validation|valid|val|dev)(?:[-_.][^/]*)?$", re.IGNORECASE)
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation"}
_INT = re.compile(r"^[+-]?\d+$")
# A label string that is a number: 1, 01, +1, 1.0, 1., .5, 1e3 (not hex, not inf/nan: those stay names).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# Only NUL is refused in texts (Texts.first_nul): no text file holds one, so it means a binary file
# or a wrong encoding (UTF-16 read as UTF-8 is half NULs). Other C0 controls occur in real data
# (GLUE STS-B's train.tsv holds a U+0012) and are kept: BERT-style tokenizers drop them, as serving
# does; the data report counts the rows holding them.


@dataclass(frozen=True)
class Split:
    texts: Texts  # any sequence of str given is held as Texts (one Arrow array, no per-row objects)
    pairs: Texts | None  # second text per row, for sentence-pair tasks
    labels: np.ndarray  # int32 class ids; multi-label float32 0/1 [n, K]; regression float32 (job/labels.py)

    def __post_init__(self):
        object.__setattr__(self, "texts", Texts(self.texts))
        if self.pairs is not None:
            object.__setattr__(self, "pairs", Texts(self.pairs))

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: np.ndarray) -> "Split":
        return Split(self.texts.take(idx), self.pairs.take(idx) if self.pairs is not None else None,
                     self.labels[idx])


@dataclass(frozen=True)
class LabelledData:
    train: Split
    validation: Split
    label_names: tuple[str, ...]
    validation_source: str  # "file" or "carved from train"
    sources: dict  # split -> list of files read
    problem: str = "single_label"  # the problem type, `auto` resolved (job/problem.py)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def fingerprint(self, split: str = "validation") -> str:
        """A hash of a split's content, so runs can tell whether they were scored on the same data."""
        s = getattr(self, split)
        h = hashlib.sha256()
        # Iterated, not indexed: Texts yields a chunk of rows at a time, an index costs an Arrow lookup.
        pairs = iter(s.pairs) if s.pairs is not None else itertools.repeat("")
        for text, pair, label in zip(s.texts, pairs, s.labels):
            target = label_rules.key(self.problem, label, self.label_names)
            h.update(f"{text}\x1f{pair}\x1f{target}\x1e".encode())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Locating splits

def locate_splits(cfg: DataConfig) -> dict[str, tuple[str, list[storage.RemoteFile]]]:
    """split name -> (base uri, files). Explicit --train/--validation win over --data's convention."""
    found: dict[str, tuple[str, list[storage.RemoteFile]]] = {}
    if cfg.data:
        by_split: dict[str, list[storage.RemoteFile]] = {}
        for f in storage.list_files(cfg.data):
            first = f.relative.split("/", 1)[0]
            m = SPLIT_PATTERN.match(first)
            if m:
                by_split.setdefault(SPLIT_ALIASES[m.group(1).lower()], []).append(f)
        for split, files in by_split.items():
            found[split] = (cfg.data, files)
        if "train" not in found and not cfg.train:
            raise DataError(f"no training split under {cfg.data}: expected train.* files or a train/ folder "
                            "(or pass --train)")
    for split, uri in (("train", cfg.train), ("validation", cfg.validation)):
        if uri:
            found[split] = (uri, storage.list_files(uri))
    for split, (uri, files) in found.items():
        if not files:
            raise DataError(f"the {split} split at {uri} has no files")
    return found


def file_format(path: str, configured: str) -> str:
    return formats.file_format(path, configured)


# --------------------------------------------------------------------------------------------
# Reading one file into a frame (job/formats.py does the reading)

def read_options(cfg: DataConfig) -> formats.ReadOptions:
    named = (cfg.text_column, cfg.label_column) + ((cfg.text_pair_column,) if cfg.text_pair_column else ())
    return formats.ReadOptions(encoding=cfg.encoding, quoting=cfg.quoting, delimiter=cfg.delimiter,
                               json_field=cfg.json_field, columns=named)


def read_table(path: Path, shown: str, fmt: str, header: bool,
               opts: formats.ReadOptions | None = None) -> pd.DataFrame:
    return formats.read_table(path, shown, fmt, header, opts or formats.ReadOptions())


# --------------------------------------------------------------------------------------------
# Columns, texts and labels

def _column(frame: pd.DataFrame, name: str, flag: str, shown: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    cols = list(frame.columns)
    hint = ""
    if len(cols) == 1:
        only = cols[0]
        for sep, fix in (("\t", "--format tsv or --delimiter '\\t'"), (",", "--format csv"),
                         (";", "--delimiter ';'"), ("|", "--delimiter '|'")):
            if sep in only:
                hint = f"; the file seems to use another delimiter: try {fix}"
                break
    raise DataError(f"{shown} has no column {name!r} (columns: {', '.join(map(repr, cols[:10]))}): "
                    f"set --{flag}{hint}")


@dataclass(frozen=True)
class _Source:
    """One file being validated, and how its messages number a row the way the user counts it."""

    path: Path
    shown: str
    fmt: str
    header: bool
    opts: formats.ReadOptions = formats.ReadOptions()

    def row(self, index: int) -> int:
        """The number messages give the frame's row `index` (0-based): formats.record_line."""
        simple = index + (2 if self.header and self.fmt in ("csv", "tsv") else 1)
        try:
            found = formats.record_line(self.path, self.shown, self.fmt, self.header, self.opts, index)
        except (OSError, DataError, csv.Error):
            found = None
        return found if found is not None else simple


def _arrow_strings(col: pd.Series):
    """The column as an Arrow string array when it is one (CSV/TSV, Parquet and Arrow string
    columns are read Arrow-backed: job/formats.py), else None."""
    import pyarrow as pa

    if not isinstance(col.dtype, pd.ArrowDtype):
        return None
    arr = pa.array(col.array)  # zero-copy: the column's own Arrow data
    return arr if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) else None


def _texts(col: pd.Series, flag: str, src: _Source) -> Texts:
    what_column = flag.removesuffix("-column")
    arrow = _arrow_strings(col)
    if arrow is not None:
        # Millions of rows: Arrow kernels, no Python object per row.
        out = Texts(arrow)
        for i, what in ((out.first_null(), "missing"), (out.first_blank(), "empty")):
            if i is not None:
                raise DataError(f"{src.shown} row {src.row(i)}: {what} value in the {what_column} column; "
                                "remove or fill such rows")
    else:
        values = col.tolist()
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v.strip():
                what = "missing" if v is None or (isinstance(v, float) and np.isnan(v)) else \
                    ("not text" if not isinstance(v, str) else "empty")
                raise DataError(f"{src.shown} row {src.row(i)}: {what} value in the {what_column} column; "
                                "remove or fill such rows")
        out = Texts(values)
    hit = out.first_nul()
    if hit is not None:
        i, at = hit
        raise DataError(f"{src.shown} row {src.row(i)}: the {what_column} column holds a NUL byte (U+0000) at "
                        f"character {at + 1}; a text never does: the file is binary or in another encoding "
                        "(UTF-16 without a byte-order mark: pass --encoding utf-16), or remove the NULs")
    return out


class _LabelProblem(ValueError):
    pass


def _number_label(value: decimal.Decimal | float, shown: str) -> str:
    """An integral number's class name ("1" for 1, 1.0, "01", "1e0"); anything else is refused."""
    # Whole numbers from 10**18 on are refused: no class id is that large, and arithmetic on
    # "1e999999999" would overflow the decimal context (adjusted() only reads the exponent).
    if isinstance(value, (int, float)):
        finite = math.isfinite(value)
        huge = finite and abs(value) >= 10**18
    else:
        finite = value.is_finite()
        huge = finite and not value.is_zero() and value.adjusted() >= 18
    if huge:
        raise _LabelProblem(f"the label {shown} is too large to be a class id: use class names")
    integral = finite and (value == int(value) if isinstance(value, (int, float)) else
                           value == value.to_integral_value())
    if not integral:
        raise _LabelProblem(f"the label {shown} is not a whole number, so it cannot be a class: use integer "
                            "class ids or class names, or --problem-type regression for scores")
    return str(int(value))


def _preview(value: object) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:39] + "…"


def _label(v: object) -> str:
    """One label value as its class name; "" when missing.

    Rule: a label that is a whole number is that integer, however it is spelled or typed, so
    1, 1.0, "1", "01", "+1" and "1.0" are all class "1" (CSV exports of a column with gaps write 1.0,
    JSON and Parquet hold ints or floats). This holds even when other labels are names ("pos" and 1):
    no file means "1" and "1.0" to be two classes, and normalising keeps such data working instead
    of refusing it. A number that is not whole (0.5) is refused: it is a regression target or a
    spelling that cannot be a class id. Booleans are the names "true"/"false"; other strings are
    names as written (stripped). JSON objects and lists are refused (multi-label is not supported).
    """
    if v is None or v is pd.NA or v is pd.NaT:
        return ""
    if isinstance(v, str):
        v = v.strip()
        return _number_label(decimal.Decimal(v), repr(v)) if _NUMBER.fullmatch(v) else v
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return _number_label(int(v), str(int(v)))
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else _number_label(float(v), str(v))
    if isinstance(v, decimal.Decimal):  # Parquet decimal columns
        return "" if v.is_nan() else _number_label(v, str(v))
    if isinstance(v, dict):
        raise _LabelProblem(f"the label is a JSON object ({_preview(v)}); labels must be a class name or id")
    if isinstance(v, (list, tuple, np.ndarray)):
        raise _LabelProblem(f"the label is a list ({_preview(v)}); labels must be a class name or id, "
                            "one per row (multi-label: --problem-type multi_label)")
    return str(v)


def _numeric_labels(col: pd.Series, src: _Source) -> list[str]:
    """_label for a whole int/float column (JSON Lines, Parquet) with numpy instead of a loop per row."""
    values = col.to_numpy()
    if values.dtype.kind == "f":
        missing = np.isnan(values)
        if missing.any():
            raise DataError(f"{src.shown} row {src.row(int(np.argmax(missing)))}: missing label; every row needs one")
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values != np.floor(values)) | (np.abs(values) >= 1e18)
    else:
        bad = (values >= 10**18) | (values <= -10**18)
    if bad.any():
        i = int(np.argmax(bad))
        try:
            _label(values[i].item())
        except _LabelProblem as exc:
            raise DataError(f"{src.shown} row {src.row(i)}: {exc}") from None
    classes, inverse = np.unique(values.astype(np.int64), return_inverse=True)
    return np.array([str(c) for c in classes.tolist()], dtype=object)[inverse.reshape(-1)].tolist()


def _label_strings(col: pd.Series, src: _Source) -> list[str]:
    if isinstance(col.dtype, np.dtype) and col.dtype.kind in "iuf":
        return _numeric_labels(col, src)
    out = []
    cache: dict[str, str] = {}  # CSV columns repeat a few label strings millions of times
    for i, v in enumerate(col.tolist()):
        try:
            if type(v) is str:
                name = cache.get(v)
                if name is None:
                    name = cache[v] = _label(v)
            else:
                name = _label(v)
        except _LabelProblem as exc:
            raise DataError(f"{src.shown} row {src.row(i)}: {exc}") from None
        if not name:
            raise DataError(f"{src.shown} row {src.row(i)}: missing label; every row needs one")
        out.append(name)
    return out


@dataclass(frozen=True)
class RawSplit:
    texts: Texts
    pairs: Texts | None
    labels: list  # str per row; multi-label: tuple of str; regression: float (job/labels.py)


def read_split(paths: list[Path], shown: list[str], cfg: DataConfig, labelled: bool = True) -> RawSplit:
    texts, pairs, labels = [], [] if cfg.text_pair_column else None, []
    opts = read_options(cfg)
    # A `datasets.save_to_disk` folder: its .arrow shards are the rows, its JSON files bookkeeping.
    if any(name.lower().endswith(".arrow") for name in shown):
        kept = [(p, n) for p, n in zip(paths, shown) if not formats.is_metadata(n)]
        paths, shown = [p for p, _ in kept], [n for _, n in kept]
    for path, name in zip(paths, shown):
        fmt = file_format(name, cfg.data_format)
        frame = read_table(path, name, fmt, cfg.header, opts)
        if frame.shape[0] == 0:
            raise DataError(f"{name} has a header but no rows")
        src = _Source(path, name, fmt, cfg.header, opts)
        texts.append(_texts(_column(frame, cfg.text_column, "text-column", name), "text-column", src))
        if pairs is not None:
            pairs.append(_texts(_column(frame, cfg.text_pair_column, "text-pair-column", name), "text-pair-column",
                                src))
        if labelled:
            col = _column(frame, cfg.label_column, "label-column", name)
            if isinstance(col.dtype, pd.ArrowDtype):
                col = col.astype(object)  # labels: a few distinct strings, parsed per row as before
            kind = label_rules.column_kind(col, cfg.problem_type, cfg.label_separator)
            labels += _label_strings(col, src) if kind == "single_label" else label_rules.parse_column(
                col.tolist(), kind, cfg.label_separator, name, src.row, _label)
    return RawSplit(Texts.concat(texts), Texts.concat(pairs) if pairs is not None else None, labels)


def read_rows(uri: str, cfg: DataConfig, scratch: Path, labelled: bool) -> RawSplit:
    """Every row of the file or folder/prefix at `uri` (for predict and evaluate)."""
    files = storage.list_files(uri)
    return read_split(storage.fetch(files, uri, scratch), [f.uri for f in files], cfg, labelled)


def encode_labels(train: list[str], validation: list[str] | None, num_labels: int | None
                  ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Label strings -> ids and the id order's names.

    _label has already made every whole-number label its plain integer ("1.0" -> "1"). Integer
    labels sort numerically, others lexicographically, so the mapping is the same for every run on
    the same label set (0/1 stays 0/1; -1/1 becomes 0/1 named "-1"/"1"). With an
    explicit --num-labels, integer labels are taken as ids and must lie below it.
    """
    every = set(train) | set(validation or [])
    integers = all(_INT.match(v) for v in every)
    # "01" and "1" are the same integer class.
    canon = (lambda v: str(int(v))) if integers else (lambda v: v)
    classes = {canon(v) for v in train}
    if num_labels is not None and integers:
        bad = sorted(int(v) for v in every if not 0 <= int(v) < num_labels)
        if bad:
            raise DataError(f"label {bad[0]} is outside 0..{num_labels - 1} (--num-labels {num_labels}); "
                            "fix the data or --num-labels")
        names = tuple(str(i) for i in range(num_labels))
    else:
        names = tuple(sorted(classes, key=int) if integers else sorted(classes))
        if num_labels is not None and len(names) != num_labels:
            raise DataError(f"the training data has {len(names)} distinct labels but --num-labels is {num_labels}; "
                            "drop --num-labels to infer it")
    if len(classes) < 2:
        raise DataError(f"the training data has a single class ({next(iter(classes))!r}); "
                        "classification needs at least 2")
    index = {n: i for i, n in enumerate(names)}

    def ids(values: list[str], split: str) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int32)
        for i, v in enumerate(values):
            key = canon(v)
            if key not in index:
                raise DataError(f"{split} label {v!r} is not among the training labels "
                                f"({', '.join(names[:10])}); fix the data or check the splits")
            out[i] = index[key]
        return out

    return ids(train, "training"), (ids(validation, "validation") if validation is not None else None), names


# --------------------------------------------------------------------------------------------
# The whole step

def load(cfg: DataConfig, num_labels: int | None, seed: int, scratch: Path) -> LabelledData:
    splits = locate_splits(cfg)
    raw: dict[str, RawSplit] = {}
    sources = {}
    for split, (base, files) in splits.items():
        local = storage.fetch(files, base, scratch / split)
        shown = [f.uri for f in files]
        sources[split] = shown
        raw[split] = read_split(local, shown, cfg)
        log.info("read %s split: %d rows from %d file(s) at %s", split, len(raw[split].texts), len(files), base)
    tr, va = raw["train"], raw.get("validation")
    kind = _problem_of(cfg, tr, va)
    if kind == "single_label":
        train_ids, val_ids, names = encode_labels(tr.labels, va.labels if va else None, num_labels)
    else:
        if num_labels is not None:
            raise ConfigError(f"--num-labels applies to single-label data; the labels make this {kind}: drop it")
        train_ids, val_ids, names = label_rules.encode(kind, tr.labels, va.labels if va else None)
    train = Split(tr.texts, tr.pairs, train_ids)
    validation = Split(va.texts, va.pairs, val_ids) if va is not None else None
    del raw, tr, va  # at millions of rows: the texts of a carve below are copies, the originals go
    rng = np.random.default_rng(seed)
    if validation is not None:
        source = "file"
    else:
        if len(train) < 2:
            raise DataError("the training split has fewer than 2 rows: cannot carve a validation split from it")
        order = rng.permutation(len(train))
        n_val = min(max(1, round(len(train) * cfg.validation_fraction)), len(train) - 1)
        validation, train = train.take(order[:n_val]), train.take(np.sort(order[n_val:]))
        source = f"carved from train ({cfg.validation_fraction:.0%}, seed {seed})"
        log.info("no validation split found: %s", source)
    if cfg.max_train_examples and cfg.max_train_examples < len(train):
        train = train.take(np.sort(rng.permutation(len(train))[: cfg.max_train_examples]))
    if kind == "single_label" and len(set(train.labels.tolist())) < 2:
        raise DataError("after carving validation and --max-train-examples, training holds a single class: "
                        "use more rows")
    release_unused()
    return LabelledData(train, validation, names, source, sources, kind)


def _problem_of(cfg: DataConfig, train: RawSplit, validation: RawSplit | None) -> str:
    """`auto` resolved: multi-label when the train labels were read as lists (job/labels.py)."""
    if cfg.problem_type != "auto":
        return cfg.problem_type
    listed = [isinstance(v, tuple) for v in train.labels]
    if any(listed) and not all(listed):
        raise DataError("some training files hold label lists and others single labels: pass --problem-type")
    kind = "multi_label" if train.labels and listed[0] else "single_label"
    if validation is not None and any(isinstance(v, tuple) for v in validation.labels) != (kind == "multi_label"):
        raise DataError(f"the training labels make this {kind} but the validation labels do not match: "
                        "use the same label form in both splits")
    return kind
