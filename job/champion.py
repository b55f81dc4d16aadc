"""The champion pointer: which run, below an output root, is the model to serve.

    from job import champion
    decision = champion.promote_if_better("gs://b/runs", run_id, "gs://b/runs/" + run_id, metrics,
                                          "accuracy:0.005", force=False)
    log.info("promotion: %s", decision.reason)

`<output-root>/champion.json` holds

    {"run": RUN_ID, "uri": RUN_URI, "metrics": {"accuracy", "macro_f1", "loss", "examples"},
     "validation_fingerprint": "...", "promoted_at": ISO-8601 UTC, "reason": "why it was promoted"}

A scheduled retraining publishes every run (storage.publish), then calls promote_if_better: the
pointer moves only to a run that beats the champion on the chosen metric, on the same validation
data. Serving reads the pointer, never "the latest run".

Semantics
---------
- Spec "METRIC[:MIN_DELTA]": METRIC is accuracy, macro_f1, micro_f1, pearson, spearman (higher is
  better), loss (the validation loss of the problem type) or mse (lower is better), each only for the
  problem types it fits (job/problem.py FITTING, refused at start otherwise); the candidate must improve on the champion by more than 0 and by
  at least MIN_DELTA (default 0): ties keep the incumbent.
- Runs scored on different validation data (fingerprints differ or one is missing) are not compared:
  the run is not promoted and the reason says so. `force` promotes unconditionally - the way to move
  the pointer to a new validation set, or to roll back - but never a run without a finite score.
- The pointer changes only through a conditional write: on gs:// `if_generation_match` (0 = "must not
  exist yet", else the generation we read); on a local folder an exclusive `flock` on
  `.champion.json.lock`, a check that the file still has the content (sha256) we read, then an atomic
  `os.replace`. A crashed holder cannot leave the lock stuck: the kernel drops it with the process
  (an O_EXCL lock file would stay behind after a SIGKILLed pod and block every later promotion).
- Concurrent promotions: read -> decide -> conditional write. A writer that finds the pointer
  changed since its read re-reads and re-decides once against the new champion (the other run may
  have been worse), and otherwise reports that it lost. For two concurrent runs this leaves exactly
  one pointer, naming the better run; on a tie (or within MIN_DELTA) it names the one that wrote
  first. A run's Decision says whether its own write took effect: when the worse run writes first,
  the better one replaces it a moment later and both report promote=True. With three or more racing
  runs a run can lose twice and report "lost" although it was better: promoting again later
  (promote_if_better is idempotent for a published run) settles it.
- A local output root must be a local disk or NFS (which supports flock), not a bucket mounted with
  gcsfuse: use its gs:// address instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import storage
from job.config import PROMOTION_METRICS, parse_promote_spec  # noqa: F401 - re-exported
from job.errors import ConfigError, DataError, TransientError

log = logging.getLogger(__name__)

CHAMPION = "champion.json"
LOCK = ".champion.json.lock"
# +1: higher is better, -1: lower is better (defined with the spec's parser, in job/config.py).
METRICS = PROMOTION_METRICS
# Float slack when checking "improves by at least MIN_DELTA": 0.905 - 0.9 is 0.0049999999999999 in
# binary floating point, and a user who asked for 0.005 means it to pass.
TOLERANCE = 1e-9
# The local lock is held for milliseconds; waiting this long means a hung holder (a stuck NFS mount).
LOCK_TIMEOUT_SECONDS = 30.0

Token = storage.Token  # gs://: the object's generation (0: none); local: sha256 of the file (0: none)


class ChampionMoved(TransientError):
    """The pointer changed between our read and our write (another run promoted meanwhile)."""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


# --------------------------------------------------------------------------------------------
# Pure parts: the spec, the candidate, the decision

def candidate(run_id: str, run_uri: str, metrics: dict) -> dict:
    """The pointer a run would become, from its metrics.json (without promoted_at/reason)."""
    final = metrics.get("final_evaluation") or {}
    return {
        "run": run_id,
        "uri": run_uri,
        # A non-finite score becomes null: champion.json stays strict JSON, and null never wins.
        # The metrics of the run's problem type (others are absent from its evaluation: left out).
        "metrics": {k: _finite_or_none(final.get(k)) for k in (*METRICS, "examples") if k in final},
        "validation_fingerprint": (metrics.get("data") or {}).get("validation_fingerprint"),
    }


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _score(pointer: dict | None, metric: str) -> float | None:
    value = ((pointer or {}).get("metrics") or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def decide(new: dict, champion: dict | None, metric: str, min_delta: float, force: bool = False) -> Decision:
    """Whether pointer-shaped `new` (see candidate()) should replace `champion`. Pure; see the module
    docstring for the rules."""
    if metric not in METRICS:
        raise ConfigError(f"unknown promotion metric {metric!r}: use one of {', '.join(METRICS)}")
    value = _score(new, metric)
    if value is None:
        return Decision(False, f"run {new.get('run')} has no finite validation {metric}: not promoted")
    who = f"champion {champion.get('run')}" if champion else "no champion"
    if force:
        return Decision(True, f"forced: {new.get('run')} ({metric} {value:.4f}) replaces {who}")
    if champion is None:
        return Decision(True, f"no champion yet: {new.get('run')} ({metric} {value:.4f}) becomes the first")
    best = _score(champion, metric)
    if best is None:
        why = champion.get("unreadable") or f"it records no {metric}"
        return Decision(False, f"not compared: the champion cannot be scored ({why}); promote with force to "
                               "replace it")
    mine, theirs = new.get("validation_fingerprint"), champion.get("validation_fingerprint")
    if not mine or not theirs or mine != theirs:
        return Decision(False, f"not compared: {new.get('run')} was scored on different validation data than {who} "
                               f"(fingerprint {mine} vs {theirs}); promote with force to switch validation sets")
    gain = (value - best) * METRICS[metric]
    direction = "higher" if METRICS[metric] > 0 else "lower"
    summary = f"{metric} {value:.4f} vs {who}'s {best:.4f} ({direction} is better, minimum gain {min_delta:g})"
    if gain > 0 and gain >= min_delta - TOLERANCE:
        return Decision(True, f"better: {summary}")
    return Decision(False, f"not better: {summary}")


# --------------------------------------------------------------------------------------------
# The pointer in storage: read with a token, write only if the token still holds

def champion_uri(root_uri: str) -> str:
    return storage.join(root_uri, CHAMPION)


def _parse(data: bytes, where: str) -> dict:
    # A damaged pointer must not be mistaken for "no champion" (that would promote anything): it is
    # returned as a champion that cannot be scored, so only a forced promotion replaces it.
    try:
        pointer = json.loads(data)
        if isinstance(pointer, dict):
            return pointer
        problem = f"not a JSON object but {type(pointer).__name__}"
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"not valid JSON ({exc})"
    log.warning("%s is %s", where, problem)
    return {"unreadable": f"{where} is {problem}"}


def read_champion(root_uri: str) -> tuple[dict | None, Token]:
    """(pointer or None, token for write_champion). The token is 0 when there is no pointer."""
    uri = champion_uri(root_uri)
    data, token = storage.read_object(uri)
    if data is None:
        return None, 0
    return _parse(data, uri), token


def run_of(root_uri: str, pointer: dict) -> str:
    """The run a pointer names, which must lie below the root: a pointer edited (or written by a
    compromised job) to name another bucket or folder must not decide what gets served."""
    uri = str(pointer.get("uri") or "")
    runs = root_uri.rstrip("/") + "/"
    if storage.is_gcs(root_uri):
        inside = uri.startswith(runs) and ".." not in uri[len(runs):].split("/")
    else:
        base = os.path.realpath(Path(runs).expanduser())
        inside = os.path.commonpath([base, os.path.realpath(Path(uri).expanduser())]) == base if uri else False
    if not inside or uri.rstrip("/") + "/" == runs:
        raise DataError(f"{champion_uri(root_uri)} names {uri!r}, which is not a folder below {runs}; "
                        "promote a run of this root again (promote with force) or fix the pointer")
    return uri


def write_champion(root_uri: str, pointer: dict, expected_token: Token) -> Token:
    """Replace the pointer only if it is still what `expected_token` was read from (0: only if there
    is none); raise ChampionMoved otherwise. Returns the new token.

    gs://: a generation precondition (the client's retries included: a retry refused because its
    first attempt landed is recognised by storage.write_object). Local: under an flock of the root,
    compare the sha256 we read, then an atomic rename; readers take no lock.
    """
    body = (json.dumps(pointer, indent=2, allow_nan=False) + "\n").encode()
    uri = champion_uri(root_uri)
    try:
        if storage.is_gcs(root_uri):
            # Serving reads the pointer: a public object would otherwise be cached for up to an hour.
            return storage.write_object(uri, body, if_token=expected_token, cache_control="no-store")
        root = Path(root_uri).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        with storage.local_lock(root / LOCK, LOCK_TIMEOUT_SECONDS, f"promoting in {root_uri}"):
            return storage.write_object(uri, body, if_token=expected_token)
    except storage.PreconditionFailed:
        raise ChampionMoved(f"{uri} changed since it was read (another run promoted meanwhile)") from None


# --------------------------------------------------------------------------------------------
# The whole step

def promote_if_better(root_uri: str, run_id: str, run_uri: str, metrics: dict, spec: str | tuple[str, float],
                      force: bool = False, attempts: int = 2) -> Decision:
    """Read the champion, decide, write conditionally; after a lost write re-read and re-decide
    (`attempts` = 2: once more), else report that this run lost. See the module docstring."""
    metric, min_delta = parse_promote_spec(spec) if isinstance(spec, str) else spec
    new = candidate(run_id, run_uri, metrics)
    for attempt in range(attempts):
        current, token = read_champion(root_uri)
        if current and current.get("run") == run_id and current.get("uri") == run_uri:
            # Our write landed although its answer was lost (a retried request then fails its
            # precondition), or promotion is run again for a run that already won.
            return Decision(True, f"{run_id} is the champion ({current.get('reason', 'promoted')})")
        decision = decide(new, current, metric, min_delta, force)
        if attempt:
            decision = Decision(decision.promote, f"{decision.reason} (re-decided after a concurrent promotion)")
        if not decision.promote:
            return decision
        pointer = {**new, "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "reason": decision.reason}
        try:
            write_champion(root_uri, pointer, token)
        except ChampionMoved as exc:
            log.info("promotion of %s: %s; re-reading", run_id, exc)
            continue
        log.info("promoted %s: %s", run_id, decision.reason)
        return decision
    return Decision(False, f"lost: {champion_uri(root_uri)} kept changing under concurrent promotions; "
                           f"promote {run_id} again to re-decide")


def describe(pointer: dict[str, Any] | None) -> str:
    """One line for logs."""
    if not pointer:
        return "no champion"
    m = pointer.get("metrics") or {}
    return (f"champion {pointer.get('run')} at {pointer.get('uri')} (accuracy {m.get('accuracy')}, "
            f"macro_f1 {m.get('macro_f1')}, loss {m.get('loss')}; promoted {pointer.get('promoted_at')})")
