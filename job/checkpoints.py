"""Checkpoints: step-level training state written locally and mirrored to the checkpoint URI.

TensorFlow writes `tf.train.Checkpoint` files (model + optimizer, so Adam moments and the
learning-rate schedule's step continue) to a local folder; this module copies them to a local
folder or gs:// prefix through job.storage (never TF's own gs:// filesystem). Layout at the URI:

    ckpt-<step>.index, ckpt-<step>.data-*   the tensors of one save
    state.json                              written last: which save is current, epochs' history,
                                            and the fingerprint of the settings that made it

A save is visible only once state.json names it, so a crash mid-upload leaves the previous save
current. A run resumes only from a state whose fingerprint matches its own settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from job import storage
from job.errors import BadInputError

log = logging.getLogger(__name__)

STATE = "state.json"


@dataclass(frozen=True)
class ResumePoint:
    step: int
    history: dict


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CheckpointStore:
    def __init__(self, uri: str, local: Path, fingerprint: str, enabled: bool = True, plan: dict | None = None):
        self.uri = uri.rstrip("/")
        self.local = local
        self.fingerprint = fingerprint
        self.enabled = enabled  # non-chief workers write to a throw-away folder only
        # How this run trains (total_steps, workers, replicas, global_batch, steps_per_epoch): recorded
        # in every state, so a retry that finds training complete can finish without the cluster.
        self.plan = plan
        self.last_save = (0.0, 0)  # (seconds, bytes) of the latest save: the preemption budget
        self.local.mkdir(parents=True, exist_ok=True)
        self._current: list[str] = []

    # -- reading
    def restore(self, checkpoint: tf.train.Checkpoint) -> ResumePoint | None:
        state = self._read_state()
        if state is None:
            return None
        if state.get("fingerprint") != self.fingerprint:
            raise BadInputError(f"the checkpoint at {self.uri} was made with other settings or data; "
                                "delete it, pass the same arguments, or choose another --checkpoint-dir")
        names = state["files"]
        storage.get_files(self.uri, names, self.local)
        self._verify(state)
        checkpoint.read(str(self.local / state["prefix"])).assert_existing_objects_matched()
        self._current = names
        log.info("resuming from step %d (checkpoint %s/%s)", state["step"], self.uri, state["prefix"])
        return ResumePoint(int(state["step"]), state.get("history", {}))

    def _verify(self, state: dict) -> None:
        """Each restored file against the size and sha256 that state.json recorded when it was saved
        (a transfer that went wrong is fetched once more; a file damaged at rest is refused)."""
        digests = state.get("sha256") or {}
        for attempt in range(2):
            bad = [n for n in state["files"] if n in digests and (
                not (self.local / n).is_file() or storage.sha256_file(self.local / n) != digests[n])]
            if not bad:
                return
            if attempt == 0 and storage.is_gcs(self.uri):
                log.warning("checkpoint file %s failed its sha256 check after download; downloading again", bad[0])
                storage.get_files(self.uri, bad, self.local)
                continue
            raise BadInputError(f"checkpoint file {storage.join(self.uri, bad[0])} does not match the sha256 "
                                f"recorded in {STATE} when it was saved: the checkpoint is damaged; delete "
                                f"{self.uri} to train from the start")

    def _read_state(self) -> dict | None:
        raw = storage.read_bytes(storage.join(self.uri, STATE))
        return json.loads(raw) if raw is not None else None

    # -- writing
    def save(self, checkpoint: tf.train.Checkpoint, step: int, history: dict) -> None:
        t0 = time.perf_counter()
        prefix = f"ckpt-{step}"
        path = checkpoint.write(str(self.local / prefix))
        files = sorted(p.name for p in self.local.glob(f"{prefix}.*"))
        if not self.enabled:
            return
        state = {"step": step, "prefix": prefix, "files": files, "history": history,
                 "fingerprint": self.fingerprint,
                 "sha256": {n: storage.sha256_file(self.local / n) for n in files}}
        if self.plan:
            state["plan"] = self.plan
            state["complete"] = step >= self.plan["total_steps"]
        (self.local / STATE).write_text(json.dumps(state))
        storage.put_files(self.local, files, self.uri)
        storage.put_files(self.local, [STATE], self.uri)  # last: makes the new save current
        stale = [n for n in self._current if n not in files]
        storage.delete_files(self.uri, stale)
        for name in stale:
            (self.local / name).unlink(missing_ok=True)
        self._current = files
        self.last_save = (time.perf_counter() - t0, sum((self.local / n).stat().st_size for n in files))
        log.info("checkpoint at step %d: %s (%.2f s, %.1f MB)", step, path, self.last_save[0], self.last_save[1] / 1e6)

    def clear(self) -> None:
        """After a run is published its checkpoints have no further use."""
        if self.enabled:
            storage.delete_files(self.uri, [STATE, *self._current])
            storage.remove_empty(self.uri)


def finished_training(uri: str, fingerprint: str) -> dict | None:
    """The state at `uri` if it is this run's (same fingerprint) and training ran to its end, else None."""
    raw = storage.read_bytes(storage.join(uri.rstrip("/"), STATE))
    state = json.loads(raw) if raw is not None else None
    if not state or state.get("fingerprint") != fingerprint or not state.get("complete"):
        return None
    return state
