"""What every contender shares: argument names, the result file, the data subset. Standard library
only: the PyTorch contender imports it from its own virtualenv, without TensorFlow or the job."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path


def contender_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="checkpoint folder (config.json, tokenizer.json, weights)")
    p.add_argument("--train", required=True, help="training rows: CSV/TSV with a header")
    p.add_argument("--dev", required=True, help="rows for the accuracy after training")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--label-column", default="label")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", required=True, help="scratch folder of this contender")
    p.add_argument("--result", required=True, help="JSON file to write the figures to")
    p.add_argument("--launched-at", type=float, required=True, help="time.time() when the process was started")
    p.add_argument("--matmul-size", type=int, default=2048)
    return p


def read_rows(path: str | Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Texts and label strings of a headed CSV or TSV (TSV without quoting, as the job reads it)."""
    path = Path(path)
    tsv = path.suffix in (".tsv", ".tab", ".txt")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.DictReader(f)
        rows = [(r[text_column], r[label_column]) for r in reader]
    return [t for t, _ in rows], [y for _, y in rows]


def label_ids(train: list[str], *others: list[str]) -> tuple[list[str], list[list[int]]]:
    """The job's rule: distinct training labels, sorted (numerically when all are integers), are ids."""
    names = sorted(set(train), key=lambda x: (int(x), x) if all(v.lstrip("-").isdigit() for v in set(train)) else (0, x))
    index = {n: i for i, n in enumerate(names)}
    return names, [[index[y] for y in split] for split in (train, *others)]


def write_result(path: str | Path, result: dict) -> None:
    result = {**result, "pid": os.getpid(), "python": sys.executable}
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


class Stopwatch:
    """Named wall-clock durations: `with watch("tokenize"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        watch = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                watch.seconds[name] = round(watch.seconds.get(name, 0.0) + time.perf_counter() - self.t0, 3)

        return _Span()
