"""Machine figures the utilisation is measured against, in a TensorFlow process of its own:

    .venv/bin/python -m bench.tfprobe --result probe.json --tokenize-file ../shared/data/sst2/train.tsv \
        --model MODEL

- matrix-multiply FLOP/s: a chain of `--matmul-repeats` fp32 N x N `tf.matmul`s in one graph (a
  chain, so no repeat can be folded away), best of three timings;
- the job's tokenization throughput on every row of a file: job.model.load_tokenizer, then
  job.features.encode (datasets.map), median of three calls.

Also the Keras callback that times steps for the TensorFlow contenders.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import time

import tensorflow as tf

from bench.common import read_rows, write_result


def matmul_flops(n: int = 2048, repeats: int = 10, trials: int = 3) -> float:
    """Sustained fp32 matmul FLOP/s of this process's TensorFlow on its default device."""
    a = tf.random.normal((n, n), seed=1)
    b = tf.random.normal((n, n), seed=2) / float(n) ** 0.5  # keeps the chain's values O(1)

    @tf.function
    def chain(c, b):
        for _ in range(repeats):
            c = tf.matmul(c, b)
        return tf.reduce_sum(c)

    chain(a, b).numpy()  # trace and warm up
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        chain(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 * repeats / best


class StepTimes(tf.keras.callbacks.Callback):
    """Duration of every train batch (one execution of steps_per_execution steps), the host time
    between them, the time spent in fit()'s validation, and when the first batch finished."""

    def __init__(self):
        super().__init__()
        self.durations: list[float] = []
        self.gaps: list[float] = []
        self.validation_seconds = 0.0
        self.first_done_at: float | None = None  # time.time()
        self._begin = self._end = self._test = None

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = time.perf_counter()
        if self._end is not None:
            self.gaps.append(self._begin - self._end)

    def on_train_batch_end(self, batch, logs=None):
        self._end = time.perf_counter()
        self.durations.append(self._end - self._begin)
        if self.first_done_at is None:
            self.first_done_at = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._end = None  # the gap across an epoch boundary is validation, not input

    def on_test_begin(self, logs=None):
        self._test = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation_seconds += time.perf_counter() - self._test


def tokenize_throughput(path: str, text_column: str, label_column: str, model: str, max_length: int,
                        repeats: int = 3) -> dict:
    """The job's tokenization of every row of `path`, as a run does it: the tokenizer loaded by
    job.model.load_tokenizer, then job.features.encode (datasets.map(batched=True) into Arrow
    columns). After a 256-row warm-up (imports), `repeats` timed calls; the median is `seconds`."""
    import statistics
    from pathlib import Path

    import datasets
    import numpy as np
    import tokenizers
    import transformers

    from job import features
    from job.config import ModelConfig
    from job.data import Split
    from job.model import load_tokenizer

    texts, labels = read_rows(path, text_column, label_column)
    tokenizer = load_tokenizer(Path(model), ModelConfig(model=model, max_length=max_length))
    split = Split(tuple(texts), None, np.zeros(len(texts), np.int32))
    features.encode(Split(split.texts[:256], None, split.labels[:256]), tokenizer, max_length)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc = features.encode(split, tokenizer, max_length)
        times.append(round(time.perf_counter() - t0, 3))
    seconds = statistics.median(times)
    return {"rows": len(texts), "seconds": seconds, "rows_per_second": round(len(texts) / seconds, 1),
            "all_seconds": times, "tokens": int(enc.lengths.sum()), "file": str(path),
            "path": "job.model.load_tokenizer + job.features.encode (datasets.map, batched)",
            "chunk_rows": features.TOKENIZE_CHUNK,
            "versions": {"datasets": datasets.__version__, "tokenizers": tokenizers.__version__,
                         "transformers": transformers.__version__}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--result", required=True)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--tokenize-file")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--label-column", default="label")
    p.add_argument("--model")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--launched-at", type=float, help="(unused: every benchmark process is given it)")
    a = p.parse_args(argv)
    import tf_keras

    out: dict = {"matmul_flops": matmul_flops(a.matmul_size),
                 "versions": {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__}}
    if a.tokenize_file:
        out["tokenize"] = tokenize_throughput(a.tokenize_file, a.text_column, a.label_column, a.model, a.max_length)
    write_result(a.result, out)


if __name__ == "__main__":
    main()
