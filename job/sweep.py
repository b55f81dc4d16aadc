"""Hyper-parameter sweep: one Indexed Job, pod i runs trial i of a search declared once (FT_SWEEP).

    FT_SWEEP='{"grid": {"learning_rate": [2e-5, 5e-5], "epochs": [2, 3], "seed": [1, 2]}}'
    FT_SWEEP='{"random": {"trials": 6, "seed": 7, "learning_rate": {"log_uniform": [1e-5, 1e-4]}, "epochs": [2, 3]}}'

A grid is the product of its lists in the order written (the last key varies fastest); a random
search draws `trials` settings from its seed, so every pod computes the same list. Trial i trains
with the sweep's settings (the ConfigMap's FT_* values) overridden by its own and publishes to
FT_OUTPUT_ROOT/runs/<sweep>-<i>; the sweep's name is FT_SWEEP's "name", else the run id (the Job's
name). No trial promotes itself. After each trial, `summarize` looks at every trial's published
run; once all are there it writes sweeps/<sweep>.json (every trial's settings and metrics) and
promotes the best through the champion rules (job/champion.py). Race-safe: the summary is a pure
function of the published runs (two trials finishing together write the same bytes), and the
champion pointer moves by compare-and-set and is idempotent for a run that already won.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import random
import re
import tempfile
from pathlib import Path

from job import champion, publish, storage
from job.errors import ConfigError

log = logging.getLogger(__name__)

# Trial setting -> the train option's variable (what the container's CLI reads).
PARAMETERS = {"learning_rate": ("FT_LEARNING_RATE", float), "epochs": ("FT_EPOCHS", int),
              "seed": ("FT_SEED", int), "warmup_ratio": ("FT_WARMUP_RATIO", float),
              "weight_decay": ("FT_WEIGHT_DECAY", float), "per_replica_batch_size": ("FT_PER_REPLICA_BATCH_SIZE", int)}
DEFAULT_METRIC = "accuracy"


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    trials: tuple[dict, ...]


def parse(text: str, default_name: str) -> Sweep:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"FT_SWEEP is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(spec, dict) or len({"grid", "random"} & set(spec)) != 1 or set(spec) - {"name", "grid", "random"}:
        raise ConfigError('FT_SWEEP must be a JSON object with "grid" or "random" (and optionally "name")')
    name = str(spec.get("name") or default_name)
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?", name):
        raise ConfigError(f"sweep name {name!r} must be lower-case letters, digits and '-' (it names run folders); "
                          'set "name" in FT_SWEEP or --run-id')
    trials = _grid(spec["grid"]) if "grid" in spec else _random(spec["random"])
    return Sweep(name, tuple(trials))


def _check_keys(keys) -> None:
    unknown = sorted(set(keys) - set(PARAMETERS))
    if unknown:
        raise ConfigError(f"FT_SWEEP: unknown setting(s) {unknown}; use {sorted(PARAMETERS)}")


def _value(key: str, v):
    kind = PARAMETERS[key][1]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)) or v < 0:
        raise ConfigError(f"FT_SWEEP: {key} value {v!r} must be a non-negative {kind.__name__}")
    return kind(v)


def _grid(grid) -> list[dict]:
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError('FT_SWEEP "grid" must map settings to non-empty lists of values')
    _check_keys(grid)
    keys = list(grid)
    return [dict(zip(keys, (_value(k, v) for k, v in zip(keys, combo)))) for combo in itertools.product(*grid.values())]


def _random(spec) -> list[dict]:
    if not isinstance(spec, dict) or not isinstance(spec.get("trials"), int) or spec["trials"] < 1:
        raise ConfigError('FT_SWEEP "random" needs "trials" (a positive integer)')
    space = {k: v for k, v in spec.items() if k not in ("trials", "seed")}
    _check_keys(space)
    rng = random.Random(int(spec.get("seed", 0)))
    trials = []
    for _ in range(spec["trials"]):
        trial = {}
        for key, dist in space.items():
            if isinstance(dist, list) and dist:
                trial[key] = _value(key, rng.choice(dist))
            elif isinstance(dist, dict) and set(dist) <= {"uniform", "log_uniform"} and len(dist) == 1:
                (kind, (lo, hi)), = dist.items()
                if not 0 < lo <= hi and kind == "log_uniform":
                    raise ConfigError(f"FT_SWEEP: {key} log_uniform bounds must be 0 < low <= high")
                x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "log_uniform" else rng.uniform(lo, hi)
                trial[key] = _value(key, round(x, 12) if PARAMETERS[key][1] is float else round(x))
            else:
                raise ConfigError(f'FT_SWEEP: {key} must be a list of choices, {{"uniform": [lo, hi]}} or '
                                  '{"log_uniform": [lo, hi]}')
        trials.append(trial)
    return trials


def trial_id(sweep: Sweep, index: int) -> str:
    return f"{sweep.name}-{index}"


def trial_env(sweep: Sweep, index: int) -> dict[str, str]:
    """The variables trial `index` trains with, on top of the sweep's own settings."""
    if not 0 <= index < len(sweep.trials):
        raise ConfigError(f"trial index {index} is outside the sweep's {len(sweep.trials)} trials: set the "
                          f"Indexed Job's completions to {len(sweep.trials)}")
    env = {PARAMETERS[k][0]: repr(v) if isinstance(v, float) else str(v) for k, v in sweep.trials[index].items()}
    return {**env, "FT_RUN_ID": trial_id(sweep, index)}


def summarize(output_root: str, sweep: Sweep, promote_spec: str = "", force: bool = False) -> dict | None:
    """sweeps/<name>.json and the champion, once every trial has published; None before that."""
    runs, missing = [], []
    for i, settings in enumerate(sweep.trials):
        uri = storage.join(output_root, "runs", trial_id(sweep, i))
        manifest, _ = publish.read_manifest(uri)
        if manifest is None:
            missing.append(i)
            continue
        metrics = json.loads(publish.read_file(uri, manifest, "metrics.json"))
        runs.append({"index": i, "run": trial_id(sweep, i), "uri": uri, "settings": settings,
                     "metrics": {k: metrics["final_evaluation"][k] for k in ("accuracy", "macro_f1", "loss")},
                     "validation_fingerprint": metrics["data"]["validation_fingerprint"], "_full": metrics})
    if missing:
        log.info("sweep %s: %d of %d trials published (waiting for %s); the last to finish writes the summary",
                 sweep.name, len(runs), len(sweep.trials), ", ".join(map(str, missing)))
        return None
    metric, min_delta = champion.parse_promote_spec(promote_spec) if promote_spec else (DEFAULT_METRIC, 0.0)
    sign = -1 if metric == "loss" else 1
    best = max(runs, key=lambda r: (sign * r["metrics"][metric], -r["index"]))
    summary = {"sweep": sweep.name, "metric": metric, "best": best["run"],
               "trials": [{k: v for k, v in r.items() if k != "_full"} for r in runs]}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{sweep.name}.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        storage.put_files(Path(tmp), [f"{sweep.name}.json"], storage.join(output_root, "sweeps"))
    log.info("sweep %s: best trial %s (%s %.4f); summary at %s", sweep.name, best["run"], metric,
             best["metrics"][metric], storage.join(output_root, "sweeps", f"{sweep.name}.json"))
    if promote_spec:
        decision = champion.promote_if_better(output_root, best["run"], best["uri"], best["_full"],
                                              (metric, min_delta), force=force)
        summary["promotion"] = {"run": best["run"], "promoted": decision.promote, "reason": decision.reason}
        log.info("promotion: %s -> %s", "promoted" if decision.promote else "not promoted", decision.reason)
    return summary
