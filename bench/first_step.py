"""First-step cost: the time of the first training step (tracing and optimising the graph) with
and without job.training._fast_first_step, each in a process of its own.

    python -m bench.first_step [--model PATH] [--out bench/results/first_step.json]

Without --model it builds a tiny BERT (the tests' size) in a temporary folder; `--model` takes a
checkpoint folder, e.g. the packaged MiniLM (`make first-step` passes it). Per case and round:
the first `fit` of one batch under MirroredStrategy (the job's compile_model, fp32), then a
second `fit` of 4 batches (steady steps, no tracing) and an `evaluate` (the test step's trace).
"before" is the same code with _fast_first_step disabled: optimizer slots created on the first
step, step functions converted by AutoGraph.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
import numpy as np, tensorflow as tf
from pathlib import Path
from job import training, model as model_step
from job.config import TrainConfig
if {mode!r} == "before":
    training._fast_first_step = lambda model: None
training.set_precision("fp32")
tf.keras.utils.set_random_seed(0)
strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
    clf = model_step.load_classifier(Path({model!r}), "tf", ("negative", "positive"))
    training.compile_model(clf, TrainConfig(learning_rate=1e-4, precision="fp32"), total_steps=100)
rng = np.random.default_rng(0)
x = {{"input_ids": rng.integers(5, 100, (160, 64)).astype(np.int32), "attention_mask": np.ones((160, 64), np.int32),
     "token_type_ids": np.zeros((160, 64), np.int32)}}
y = rng.integers(0, 2, 160).astype(np.int32)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
t = time.perf_counter(); clf.fit(ds.take(1), epochs=1, verbose=0); first = time.perf_counter() - t
t = time.perf_counter(); clf.fit(ds.skip(1), epochs=1, verbose=0); steady = (time.perf_counter() - t) / 4
t = time.perf_counter(); clf.evaluate(ds, verbose=0); evaluate = time.perf_counter() - t
print(json.dumps({{"first_step_seconds": first, "steady_step_seconds": steady, "evaluate_seconds": evaluate}}))
"""


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import TINY, build_tokenizer  # the tests' tiny BERT
    from transformers import BertConfig, TFBertModel

    tok = build_tokenizer(folder / "tok")
    model = TFBertModel(BertConfig(vocab_size=len(tok.get_vocab()), **TINY))
    model(model.dummy_inputs)
    model.save_pretrained(str(folder / "tf"))
    tok.save_pretrained(str(folder / "tf"))
    return folder / "tf"


def measure(model: Path, mode: str) -> dict:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "USE_TORCH": "0"}
    proc = subprocess.run([sys.executable, "-c", CASE.format(root=str(ROOT), mode=mode, model=str(model))],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {mode} case failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder (default: a tiny BERT built here)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", help="write the result JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else tiny_model(Path(tmp))
        rounds = {mode: [measure(model, mode) for _ in range(args.rounds)] for mode in ("before", "after")}
    summary = {mode: {k: round(min(r[k] for r in rs), 3) for k in rs[0]} for mode, rs in rounds.items()}
    result = {"model": "tiny BERT (tests/conftest.py TINY)" if not args.model else Path(args.model).name,
              "machine": f"{os.cpu_count()} CPUs", "batch": 32, "length": 64, "rounds": rounds,
              "best_of_rounds": summary}
    text = json.dumps(result, indent=1)
    print(text)
    for mode in ("before", "after"):
        s = summary[mode]
        print(f"{mode:>6}: first step {s['first_step_seconds']:.2f} s, steady step {s['steady_step_seconds']:.3f} s, "
              f"evaluate {s['evaluate_seconds']:.2f} s")
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
