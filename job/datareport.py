"""Data report: what is in the data, said before the model is built (seconds, not minutes).

    rep = datareport.build(data, train_lengths, max_length, requested="auto", limit=512)
    log.info(datareport.summary_line(rep)); datareport.check_leakage(rep, 0.01)

Rows per split, label distribution and imbalance, duplicate texts in train, train/validation
overlap (exact and after case/whitespace normalisation), empty texts, token-length percentiles and
the share truncated at max_length. Texts are compared as Arrow columns (hashing in C), so millions
of rows cost no per-row Python objects here. run.py writes it as report/data.md and metrics.json's
`data_report`; --max-length auto is chosen from the same lengths (choose_max_length).
"""

from __future__ import annotations

import math
import re

import numpy as np

from job.errors import DataError

# --max-length auto covers this share of training rows, in multiples of this many tokens.
AUTO_COVERAGE = 0.99
AUTO_MULTIPLE = 8
# Longest token count measured when the model states no limit.
UNKNOWN_LIMIT_CAP = 512
EXAMPLES = 3
OVERLAP_CHUNK = 1 << 18  # train rows per value set when looking for validation rows in train
# C0 controls other than tab, newline and carriage return (NUL never reaches here: data.py refuses it).
_CONTROLS = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f]")


def covering(lengths: np.ndarray, share: float) -> int:
    """The shortest length that at least `share` of the rows fit in: the ceil(share n)-th smallest.
    The report's percentiles use it too, so p99 is exactly what --max-length auto rounds up."""
    k = max(int(math.ceil(share * len(lengths))) - 1, 0)
    return int(np.partition(np.asarray(lengths), k)[k])


def choose_max_length(lengths: np.ndarray, limit: int | None) -> int:
    """The smallest multiple of 8 that covers 99% of training rows, capped at the model's limit."""
    if len(lengths) == 0:
        return AUTO_MULTIPLE
    need = covering(lengths, AUTO_COVERAGE)
    chosen = max(AUTO_MULTIPLE, int(math.ceil(need / AUTO_MULTIPLE) * AUTO_MULTIPLE))
    cap = limit or UNKNOWN_LIMIT_CAP
    return min(chosen, cap)


def _keys(split):
    """The split's rows as one Arrow string column (text, or text + NUL + pair: data.py refuses NUL in
    texts, so no two different rows share a key)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if split.pairs is None:
        return split.texts.arrow
    return pc.binary_join_element_wise(split.texts.arrow, split.pairs.arrow, pa.scalar("\x00", pa.large_string()))


def _normalised(col):
    import pyarrow.compute as pc

    return pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(col), r"\s+", " "))


def _short(text: str, width: int = 80) -> str:
    text = " ".join(_CONTROLS.sub(" ", text.replace("\x00", " | ")).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _overlap(train, val, normalise: bool) -> dict:
    """Validation rows whose text (normalised: lower case, runs of whitespace as one space) occurs in
    train. Train is taken OVERLAP_CHUNK rows at a time: a value set of all of train (or a normalised
    copy of it) would hold every character once more at 10 million rows."""
    import pyarrow.compute as pc

    keys = _normalised(val) if normalise else val
    hit = np.zeros(len(val), bool)
    for begin in range(0, len(train), OVERLAP_CHUNK):
        part = train.slice(begin, OVERLAP_CHUNK)
        part = part.combine_chunks() if hasattr(part, "combine_chunks") else part
        if normalise:
            part = _normalised(part)
        hit |= pc.is_in(keys, value_set=part).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(hit)
    return {"rows": int(len(rows)), "share": round(float(len(rows)) / max(len(val), 1), 6),
            "examples": [_short(val[int(i)].as_py()) for i in rows[:EXAMPLES]]}


def _duplicates(col) -> dict:
    """Train rows repeating an earlier row, by a 64-bit hash of each text: counting distinct values
    with Arrow (value_counts) keeps a copy of every distinct text, 2.6 GB measured at 10 million
    rows; the hashes are 80 MB. Hashes are taken a chunk of rows at a time (no Python object per
    row outlives its chunk); a collision among 10 million 64-bit hashes has odds of about 3e-6."""
    hashes = np.empty(len(col), np.int64)
    step = 1 << 16
    for begin in range(0, len(col), step):
        chunk = col.slice(begin, step).to_pylist()
        hashes[begin:begin + len(chunk)] = np.fromiter(map(hash, chunk), np.int64, count=len(chunk))
    _, first, n = np.unique(hashes, return_index=True, return_counts=True)
    del hashes
    repeated = np.flatnonzero(n > 1)
    # Most repeated first; ties in the order the texts first appear (hash order varies by process).
    top = repeated[np.lexsort((first[repeated], -n[repeated]))[:EXAMPLES]]
    return {"rows": int(len(col) - len(n)), "distinct_repeated": int(len(repeated)),
            "examples": [{"text": _short(col[int(first[i])].as_py()), "count": int(n[i])} for i in top]}


def _with_controls(col) -> int:
    """Rows holding a C0 control character other than tab, newline and carriage return (kept in the
    texts; BERT-style tokenizers drop them)."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.match_substring_regex(col, _CONTROLS.pattern)).as_py() or 0)


def _empty(col) -> int:
    import pyarrow.compute as pc

    from job.texts import BLANK

    return int(pc.sum(pc.match_substring_regex(col, BLANK)).as_py() or 0)


def label_counts(data) -> np.ndarray:
    """Train rows per class (single-label) or rows carrying each label (multi-label); regression
    targets are scores, not labels: no counts."""
    labels = np.asarray(data.train.labels)
    if data.problem == "regression":
        return np.zeros(0, dtype=np.int64)
    if labels.ndim == 2:  # multi-label: one 0/1 column per label
        return (labels > 0.5).sum(axis=0).astype(np.int64)
    return np.bincount(labels.astype(np.int64), minlength=data.num_labels)


def build(data, train_lengths: np.ndarray, max_length: int, requested: int | str, limit: int | None) -> dict:
    """The report of a LabelledData (the rows training uses) and its training token lengths
    (counted up to the model's limit, before truncation at max_length)."""
    train, val = _keys(data.train), _keys(data.validation)
    counts = label_counts(data)
    present = counts[counts > 0]
    lengths = np.asarray(train_lengths)
    pct = {f"p{q}": covering(lengths, q / 100) for q in (50, 90, 99)} if len(lengths) else {}
    return {
        "rows": {"train": len(data.train), "validation": len(data.validation)},
        "validation_source": data.validation_source,
        "labels": {name: int(c) for name, c in zip(data.label_names, counts)},
        "imbalance_ratio": round(float(present.max() / present.min()), 3) if len(present) else None,
        **({"targets": _targets(data.train.labels)} if data.problem == "regression" else {}),
        "duplicates_in_train": _duplicates(train),
        "overlap": {"exact": _overlap(train, val, False), "normalised": _overlap(train, val, True)},
        "empty_texts": {"train": _empty(train), "validation": _empty(val)},
        "control_character_texts": {"train": _with_controls(train), "validation": _with_controls(val)},
        "token_lengths": {**pct, "max": int(lengths.max()) if len(lengths) else 0,
                          "counted_up_to": int(limit or max(UNKNOWN_LIMIT_CAP, max_length))},
        "max_length": {"requested": requested, "used": int(max_length), "model_limit": limit},
        "truncated_share": round(float(np.mean(lengths > max_length)) if len(lengths) else 0.0, 6),
    }


def _targets(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "mean": round(float(v.mean()), 6), "max": float(v.max())} if len(v) else {}


def summary_line(rep: dict) -> str:
    t, o = rep["token_lengths"], rep["overlap"]
    return (f"data report: {rep['rows']['train']} train / {rep['rows']['validation']} validation rows, imbalance "
            f"{rep['imbalance_ratio']}x, {rep['duplicates_in_train']['rows']} duplicate train texts, "
            f"{o['exact']['rows']} validation rows in train ({o['exact']['share']:.1%}; "
            f"{o['normalised']['rows']} after normalising case/space), tokens p50/p90/p99/max "
            f"{t.get('p50')}/{t.get('p90')}/{t.get('p99')}/{t['max']}, max_length {rep['max_length']['used']}"
            f" ({rep['max_length']['requested']}), {rep['truncated_share']:.1%} truncated")


def check_leakage(rep: dict, max_leakage: float | None) -> None:
    """DataError (exit 3) when more than `max_leakage` of validation rows also occur in train."""
    if max_leakage is None:
        return
    o = rep["overlap"]["normalised"]
    if o["share"] > max_leakage:
        shown = "; ".join(repr(e) for e in o["examples"])
        raise DataError(f"{o['rows']} of {rep['rows']['validation']} validation rows ({o['share']:.1%}) also occur "
                        f"in train (after normalising case and whitespace), more than --max-leakage "
                        f"{max_leakage:g} (e.g. {shown}): deduplicate the splits or raise --max-leakage")


def markdown(rep: dict) -> str:
    o, d, t, m = rep["overlap"], rep["duplicates_in_train"], rep["token_lengths"], rep["max_length"]
    lines = ["# Data report", "", f"Validation: {rep['validation_source']}.", "",
             "| Split | Rows | Empty texts | Texts with control characters |", "| --- | --- | --- | --- |"]
    lines += [f"| {s} | {rep['rows'][s]:,} | {rep['empty_texts'][s]} | {rep['control_character_texts'][s]} |"
              for s in ("train", "validation")]
    if rep.get("targets"):
        y = rep["targets"]
        lines += ["", f"## Targets (train, regression): min {y['min']:g}, mean {y['mean']:g}, max {y['max']:g}"]
    else:
        lines += ["", f"## Labels (train; imbalance ratio {rep['imbalance_ratio']})", "", "| Label | Rows |",
                  "| --- | --- |"]
        lines += [f"| {name} | {c:,} |" for name, c in rep["labels"].items()]
    lines += ["", "## Duplicates and overlap", "",
              f"- Train rows repeating an earlier train row: {d['rows']:,} ({d['distinct_repeated']:,} distinct texts)"]
    lines += [f"  - {e['count']}x `{e['text']}`" for e in d["examples"]]
    for kind, label in (("exact", "exactly"), ("normalised", "after normalising case and whitespace")):
        lines.append(f"- Validation rows also in train, {label}: {o[kind]['rows']:,} ({o[kind]['share']:.2%})")
        lines += [f"  - `{e}`" for e in o[kind]["examples"]]
    lines += ["", "## Token lengths (train)", "",
              f"p50 {t.get('p50')}, p90 {t.get('p90')}, p99 {t.get('p99')}, max {t['max']} (counted up to "
              f"{t['counted_up_to']}). max_length {m['used']} (requested: {m['requested']}; model limit: "
              f"{m['model_limit']}): {rep['truncated_share']:.2%} of train rows truncated.", ""]
    return "\n".join(lines)
