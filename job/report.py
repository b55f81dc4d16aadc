"""Report: phase timings, package versions and the run's metrics.json."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("tensorflow", "tf-keras", "transformers", "tokenizers", "datasets", "google-cloud-storage",
            "typer", "numpy")
METRICS = "metrics.json"
CONFIG = "config.json"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class PhaseTimer:
    """Wall seconds per named phase; a phase entered twice accumulates."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = dt.datetime.now(dt.timezone.utc)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - t0, 3)


def write_metrics(path: Path, payload: dict) -> Path:
    from job.logs import redact

    # The config holds user-given locations; a signed URL's signature must not be published.
    path.write_text(redact(json.dumps(payload, indent=2, sort_keys=False)) + "\n")
    return path


def run_metrics(cfg, fingerprint: str, timer: PhaseTimer, data, trained, final: dict, layout: dict) -> dict:
    """metrics.json of a finished run: what was trained on what, how it scored, how fast, with what."""
    runtime, meter = trained.runtime, trained.meter
    train_seconds = sum(meter.epoch_seconds)
    return {
        "run_id": cfg.output.run_id,
        "started_at": timer.started.isoformat(),
        "status": "complete",
        "settings_fingerprint": fingerprint,
        "replicas": runtime.topology.replicas,
        "workers": runtime.topology.workers,
        "cluster_source": runtime.topology.source,
        "global_batch_size": runtime.global_batch,
        "precision": trained.precision,
        "steps_per_epoch": runtime.steps_per_epoch,
        "data": {"train_examples": len(data.train), "validation_examples": len(data.validation),
                 "labels": list(data.label_names), "validation_source": data.validation_source,
                 "validation_fingerprint": data.fingerprint("validation"), "sources": data.sources},
        "epochs": per_epoch(trained.history),
        "final_evaluation": final,
        "throughput": {
            "train_examples_per_second": round(len(data.train) * cfg.train.epochs / train_seconds, 2)
            if train_seconds else None,
            "epoch_seconds": [round(s, 3) for s in meter.epoch_seconds],
            "first_step_seconds": round(meter.first_step_seconds or 0.0, 3),
        },
        "phases_seconds": timer.seconds,
        "outputs": layout,
        "config": cfg.to_dict(),
        "versions": package_versions(),
    }


def per_epoch(history: dict) -> list[dict]:
    """Keras' History.history (metric -> values) as one record per epoch."""
    n = len(next(iter(history.values()), []))
    return [{"epoch": i + 1, **{k: v[i] for k, v in history.items()}} for i in range(n)]
