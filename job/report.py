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
