"""Contender "ours": the job's own CLI (`entrypoint.py train`) in this process, with its defaults,
instrumented from outside: the job's code runs unchanged, this file only wraps two of its functions
to see the batches it plans and the Keras fit it runs.

    .venv/bin/python -m bench.ours --model M --train T --dev D --work W --result R --launched-at $(date +%s.%N) \
        [--job-arg=--precision=bf16 ...]

Measured besides metrics.json: training time without the per-epoch validation, per-step times,
the padding fraction of the batches the job planned, the input pipeline alone (the share of a step
it would take if it did not overlap), and time from process start to the first finished step.
"""

from __future__ import annotations

import time

LAUNCHED = time.time()

import os  # noqa: E402

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import contender_args, write_result  # noqa: E402


def main(argv=None) -> None:
    p = contender_args(__doc__.splitlines()[0])
    p.add_argument("--job-arg", action="append", default=[], help="extra `entrypoint.py train` option (repeatable)")
    a = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    import entrypoint
    from bench.tfprobe import StepTimes, matmul_flops
    from job import checkpoints, features, report, training

    from job.run import Hooks

    seen: dict = {}
    plan_dataset = features.train_dataset
    steps = StepTimes()

    def on_trained(trained) -> None:
        f, r = trained.features, trained.runtime
        seen.update(plan=dict(enc=f.train, global_batch=r.global_batch, epochs=trained.cfg.train.epochs,
                              seed=trained.cfg.train.seed, max_length=trained.cfg.model.max_length, pad_id=f.pad_id,
                              pad_multiple=f.pad_multiple),
                    model=trained.model, cfg=trained.cfg.train, steps_per_epoch=r.steps_per_epoch, steps=steps,
                    meter=trained.meter)

    # Seen from outside: when the run's first phase starts (imports done) and what checkpoint saves cost.
    marks: dict = {"checkpoint_seconds": 0.0, "checkpoint_saves": 0}
    timer_init, save = report.PhaseTimer.__init__, checkpoints.CheckpointStore.save

    def timed_init(self):
        marks.setdefault("run_started_at", time.time())
        timer_init(self)

    def timed_save(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return save(self, *args, **kwargs)
        finally:
            marks["checkpoint_seconds"] += time.perf_counter() - t0
            marks["checkpoint_saves"] += 1

    report.PhaseTimer.__init__, checkpoints.CheckpointStore.save = timed_init, timed_save

    job_args = list(a.job_arg)
    # Bench-only knob, to weigh the padding lever: the job derives the granularity from --jit-compile.
    forced = [x for x in job_args if x.startswith("--pad-multiple=")]
    if forced:
        job_args.remove(forced[0])
    hooks = Hooks(callbacks=(steps,), on_trained=on_trained,
                  pad_multiple=int(forced[0].split("=", 1)[1]) if forced else None)
    output = Path(a.work) / "run"
    args = ["train", "--train", a.train, "--validation", a.dev, "--text-column", a.text_column,
            "--label-column", a.label_column, "--model", a.model, "--output", str(output), "--overwrite",
            "--epochs", str(a.epochs), "--per-replica-batch-size", str(a.batch_size),
            "--learning-rate", str(a.learning_rate), "--max-length", str(a.max_length), "--seed", str(a.seed),
            "--checkpoint-dir", str(Path(a.work) / "checkpoints"), "--work-dir", str(Path(a.work) / "scratch"),
            *job_args]
    code = entrypoint.app(args, standalone_mode=False, obj=hooks)
    done_at = time.time()
    if code:
        raise SystemExit(f"entrypoint.py train failed with exit code {code}")
    metrics = json.loads((output / "metrics.json").read_text())

    plan, meter, steps, cfg = seen["plan"], seen["meter"], seen["steps"], seen["cfg"]
    enc = plan["enc"]
    multiple = plan["pad_multiple"] if plan["pad_multiple"] is not None else features.pad_multiple()
    real = computed = 0
    for epoch in range(plan["epochs"]):
        batches = features.plan_batches(enc.lengths, plan["global_batch"], plan["seed"], epoch)
        r, c = features.padding_fraction(enc.lengths, batches, plan["max_length"], multiple)
        real, computed = real + r, computed + c
    train_seconds = sum(meter.epoch_seconds) - steps.validation_seconds
    executions = len(steps.durations)
    steady = statistics.median(steps.durations[1:]) if executions > 1 else train_seconds
    # The input pipeline alone: one epoch of the same batches, no model. With prefetching it overlaps
    # the step, so this is an upper bound on the time a step waits for input (on 2 cores it competes
    # with the step's threads, so it is also roughly what input costs).
    ds = plan_dataset(enc, plan["global_batch"], 1, plan["seed"], plan["max_length"], plan["pad_id"],
                      pad_multiple=multiple)
    t0 = time.perf_counter()
    n_batches = sum(1 for _ in ds)
    input_per_batch = (time.perf_counter() - t0) / max(n_batches, 1)
    step_per_batch = train_seconds / max(seen["steps_per_epoch"] * plan["epochs"], 1)

    phases = metrics["phases_seconds"]
    first = steps.durations[0] if steps.durations else 0.0
    breakdown = {  # whole process, launch to published outputs, in the order the run spends it
        "imports": marks["run_started_at"] - a.launched_at,
        "data": phases.get("download", 0.0),
        "tokenize": phases.get("tokenize", 0.0),
        "model_load": phases.get("load_model", 0.0),
        "first_step": first,
        # Steps after the first and the host time between them. A save every --checkpoint-every steps
        # would fall in here too (the bench's 250 steps are fewer than the default 500).
        "steady_training": sum(steps.durations[1:]) + sum(steps.gaps),
        "validation_in_fit": steps.validation_seconds,
        "checkpoint_saves": marks["checkpoint_seconds"],
        "evaluate": phases.get("evaluate", 0.0),
        "export": phases.get("export", 0.0),
        "report": phases.get("report", 0.0),
        "upload": phases.get("upload", 0.0),
    }
    breakdown["other"] = (done_at - a.launched_at) - sum(breakdown.values())

    model = seen["model"]
    non_embedding = sum(int(np.prod(w.shape)) for w in model.trainable_weights if "/embeddings/" not in w.name)
    examples = metrics["data"]["train_examples"] * plan["epochs"]
    write_result(a.result, {
        "train_examples": examples,
        "train_seconds": round(train_seconds, 3),
        "examples_per_second": round(examples / train_seconds, 2),
        "real_tokens": real,
        "computed_tokens": computed,
        "padding_fraction": round(1 - real / computed, 4),
        "real_tokens_per_second": round(real / train_seconds, 1),
        "dev_accuracy": metrics["final_evaluation"]["accuracy"],
        "first_step_seconds": round(meter.first_step_seconds or 0.0, 3),
        "start_to_first_step_seconds": round(meter.first_step_done_at - LAUNCHED, 3),
        "launch_to_first_step_seconds": round(meter.first_step_done_at - a.launched_at, 3),
        "steady_step_seconds": round(steady, 4),
        "validation_seconds_in_fit": round(steps.validation_seconds, 3),
        "export_seconds": metrics["phases_seconds"].get("export"),
        "tokenize_seconds": metrics["phases_seconds"].get("tokenize"),
        "input_seconds_per_batch": round(input_per_batch, 5),
        "input_share_of_step": round(input_per_batch / step_per_batch, 4),
        "host_gap_share_of_step": round(sum(steps.gaps) / train_seconds, 4),
        "non_embedding_params": non_embedding,
        "settings": {"precision": training.resolve_precision(cfg.precision),
                     "policy": tf.keras.mixed_precision.global_policy().name,
                     "jit_compile": training.jit_compile_enabled(cfg), "pad_multiple": multiple,
                     "steps_per_execution": cfg.steps_per_execution, "job_args": a.job_arg},
        "phases_seconds": metrics["phases_seconds"],
        "launch_to_done_seconds": round(done_at - a.launched_at, 3),
        "phase_breakdown_seconds": {k: round(v, 3) for k, v in breakdown.items()},
        "checkpoint_saves": marks["checkpoint_saves"],
        "metrics_throughput": metrics["throughput"],
        "matmul_flops": matmul_flops(a.matmul_size),
    })


if __name__ == "__main__":
    main()
