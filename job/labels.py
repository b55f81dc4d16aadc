"""Labels by problem type: multi-label lists and delimited strings, regression targets, their checks.

job/data.py reads the files and keeps single-label parsing; it hands each label column here when the
problem type is multi_label or regression (or auto finds lists), and the train/validation values to
`encode` for the targets job/problem.py trains on:

    multi_label   ["news", "sports"], [] or "news|sports" (--label-separator "|") -> float32 0/1 [n, K],
                  K = the labels seen in train (integers sort numerically, names alphabetically)
    regression    3.8, "3.8" -> float32 [n]; names ("score",)

Every refusal is one line naming the file, the row as the user counts it, and the fix.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np
import pandas as pd

from job.errors import DataError
from job.problem import MULTI, REGRESSION, SINGLE

_INT = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
SCORE = ("score",)


def _is_list(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def column_kind(column: pd.Series, configured: str, separator: str | None) -> str:
    """The problem type `auto` means for one label column: lists (or a separator) make it multi-label."""
    if configured != "auto":
        return configured
    if separator is not None:
        return MULTI
    # Only object columns can hold lists (a CSV's strings, JSON/Parquet arrays); numbers never do.
    return MULTI if column.dtype == object and any(_is_list(v) for v in column.tolist()) else SINGLE


def parse_column(values: list, kind: str, separator: str | None, shown: str, row: Callable[[int], int],
                 name_of: Callable[[object], str]) -> list:
    """Multi-label: a tuple of label names per row; regression: a float per row. `name_of` turns one
    scalar into its class name (job.data's rule: 1, 1.0 and "01" are "1"); `row` numbers a row."""
    if kind == REGRESSION:
        return _targets(values, shown, row)
    out = []
    for i, v in enumerate(values):
        try:
            out.append(_label_set(v, separator, name_of))
        except ValueError as exc:
            raise DataError(f"{shown} row {row(i)}: {exc}") from None
    return out


def _label_set(v, separator: str | None, name_of) -> tuple[str, ...]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise ValueError("missing labels; write [] (or an empty string with --label-separator) for a row "
                         "with none")
    if _is_list(v):
        items = list(v.tolist() if isinstance(v, np.ndarray) else v)
        for item in items:
            if _is_list(item) or isinstance(item, dict):
                raise ValueError(f"the label list holds a {type(item).__name__}; each label must be a name or id")
    elif isinstance(v, str):
        if separator is None:
            raise ValueError(f"the label {v!r} is a string, not a list, in a multi-label column: write lists "
                             "(JSON Lines/Parquet arrays) or pass --label-separator (e.g. ',' or '|')")
        items = [p for p in v.split(separator)]
        if not v.strip():
            items = []
    else:
        raise ValueError(f"the label {v!r} is not a list of labels: write lists or pass --label-separator")
    names = []
    for item in items:
        name = name_of(item.strip() if isinstance(item, str) else item)
        if not name:
            raise ValueError("an empty label inside the list (e.g. 'a||b' or ['a', '']); remove it")
        names.append(name)
    return tuple(dict.fromkeys(names))  # a label named twice is one label


def _targets(values: list, shown: str, row: Callable[[int], int]) -> list[float]:
    out = []
    for i, v in enumerate(values):
        problem = None
        if _is_list(v) or isinstance(v, dict):
            problem = (f"the regression target is a {'list' if _is_list(v) else 'JSON object'}; each row needs "
                       "one number")
        elif v is None or isinstance(v, bool) or (isinstance(v, str) and not v.strip()):
            problem = "missing or non-numeric regression target; every row needs one number"
        elif isinstance(v, str) and not _NUMBER.fullmatch(v):
            spelled = v.strip().lower().lstrip("+-")
            problem = (f"the regression target is {v.strip()!r} (NaN and infinity cannot be learnt); fix or drop "
                       "the row" if spelled in ("nan", "inf", "infinity") else
                       f"the regression target {v!r} is not a number")
        if problem is None:
            x = float(v)
            if not math.isfinite(x):
                problem = f"the regression target is {x} (NaN and infinity cannot be learnt); fix or drop the row"
        if problem:
            raise DataError(f"{shown} row {row(i)}: {problem}")
        out.append(x)
    return out


def encode(kind: str, train: list, validation: list | None) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """(train targets, validation targets, label names) for multi-label or regression values."""
    if kind == REGRESSION:
        return (np.asarray(train, np.float32), np.asarray(validation, np.float32) if validation is not None else None,
                SCORE)
    seen = {n for row in train for n in row}
    integers = bool(seen) and all(_INT.match(n) for n in seen)
    names = tuple(sorted(seen, key=int) if integers else sorted(seen))
    if len(names) < 2:
        raise DataError(f"multi-label training data name {len(names)} label(s) ({', '.join(names) or 'none'}); "
                        "multi-label needs at least 2 (for one yes/no label use single-label 0/1)")
    index = {n: i for i, n in enumerate(names)}

    def hot(rows: list, split: str) -> np.ndarray:
        out = np.zeros((len(rows), len(names)), dtype=np.float32)
        for r, labels in enumerate(rows):
            for n in labels:
                if n not in index:
                    raise DataError(f"{split} label {n!r} is not among the training labels "
                                    f"({', '.join(names[:10])}); fix the data or check the splits")
                out[r, index[n]] = 1.0
        return out

    return hot(train, "training"), (hot(validation, "validation") if validation is not None else None), names


def key(kind: str, target, names: tuple[str, ...]) -> str:
    """One row's target as text, for the split fingerprint."""
    if kind == SINGLE:
        return names[int(target)]
    if kind == REGRESSION:
        return repr(float(target))
    return "|".join(n for n, on in zip(names, np.asarray(target) > 0.5) if on)


def frequencies(kind: str, targets: np.ndarray, names: tuple[str, ...]) -> dict[str, int] | None:
    """Training rows per label (multi-label) or class (single-label), for metrics.json and the plots."""
    if kind == REGRESSION:
        return None
    if kind == SINGLE:
        counts = np.bincount(np.asarray(targets, np.int64), minlength=len(names))
    else:
        counts = np.asarray(targets).sum(axis=0)
    return {n: int(c) for n, c in zip(names, counts)}


def describe_targets(kind: str, targets: np.ndarray) -> dict | None:
    if kind != REGRESSION or not len(targets):
        return None
    s = pd.Series(np.asarray(targets, float))
    return {"min": float(s.min()), "max": float(s.max()), "mean": float(s.mean()), "std": float(s.std(ddof=0))}
