"""Publishing a run: its files under names of their own first, then one manifest write commits it.

    from job import publish
    publish.check_output("gs://b/runs/r1", identity, overwrite=False)   # before training: fail fast
    manifest = publish.publish(staging, "gs://b/runs/r1", identity, overwrite=False)
    manifest, folder = publish.open_run("gs://b/runs/r1", scratch)      # readers: verified files

Layout at OUTPUT (a local folder or a gs:// prefix, a bucket root included):

    manifest.json               the commit point: run identity and every file with size and sha256
    saved_model/ hf_model/ ...  the run's files, at the paths the manifest lists
    .finetune-job/              the job's own bookkeeping (hidden; never data, never in a manifest)
        claim.json              who is publishing (gs://: a lease its holder renews; local: for messages)
        lock                    local: an flock held while publishing (dropped by the kernel on a crash)
        attempts/<id>/<path>    one publish attempt's files before they take their final names
        checkpoints/            training state while the run trains (the default --checkpoint-dir)
        tmp/                    local temp files renamed into place (same filesystem as the output)

The steps of one publish (STEPS; tests stop or kill a publisher at each of them):

    claim     take the output's claim (wait while another live run holds it; take over a dead one's)
    check     read the manifest; refuse foreign files; remove debris of dead attempts
    upload    copy every file to .finetune-job/attempts/<id>/ (nobody else ever writes those names)
    commit    write manifest.json naming those copies - compare-and-swap on the manifest read in
              `check`: the one instant the output switches from the old run (or none) to the new one
    settle    copy each file to its final path (old run's files there are now named by no manifest)
    retire    delete the old run's files that the new run does not have
    finalize  rewrite manifest.json to name the final paths (compare-and-swap again)
    clean     delete this attempt's copies
    release   drop the claim

At every instant a reader that follows manifest.json finds a complete run, the old one or the new:
files named by the current manifest are never rewritten or deleted while it is current. A crash at
any step leaves either the old manifest (nothing visible changed) or a new one that names complete
files; the same command run again finishes the job (settle -> clean) or finds it done. Deletion is
limited to names that this job's own earlier manifests listed and to its own bookkeeping folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from job import storage
from job.errors import BadInputError, ConfigError, DataError, OutputExistsError, TransientError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BOOKKEEPING = ".finetune-job"
CLAIM = f"{BOOKKEEPING}/claim.json"
LOCK = f"{BOOKKEEPING}/lock"
ATTEMPTS = f"{BOOKKEEPING}/attempts"
CHECKPOINTS = f"{BOOKKEEPING}/checkpoints"
TMP = f"{BOOKKEEPING}/tmp"
FORMAT = 2
STEPS = ("claim", "check", "upload", "commit", "settle", "retire", "finalize", "clean", "release")
# Names a fresh local volume carries that are not anybody's data.
IGNORED_LOCAL = ("lost+found/",)

# gs:// claims are leases: the holder renews every LEASE/4 s; a claim not renewed for LEASE s (plus
# slack for clock skew between machines) belonged to a run that died and may be taken over. Short,
# so that a crashed publisher delays a retry by seconds, not an hour.
DEFAULT_LEASE_SECONDS = 60.0
CLOCK_SKEW_SECONDS = 5.0  # at most; never more than half the lease
# How long a publisher waits for another live run's claim before giving up with "retry later".
DEFAULT_WAIT_SECONDS = 900.0

Hook = Callable[[str], None]


@dataclass(frozen=True)
class Identity:
    """What makes two publishes "the same run": the settings fingerprint (data, model, training)."""

    run_id: str
    fingerprint: str


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and value < 1e7):
        raise ConfigError(f"{name}={raw!r} is not a number of seconds > 0; unset it for the default of {default:g}")
    return value


def lease_seconds() -> float:
    return _seconds("FT_PUBLISH_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)


def wait_seconds() -> float:
    return _seconds("FT_PUBLISH_WAIT_SECONDS", DEFAULT_WAIT_SECONDS)


def default_checkpoints(output_uri: str) -> str:
    """Training state lives inside the output's bookkeeping folder: writable wherever the output is
    (a mount point with a read-only parent, a bucket root), and never mistaken for the run."""
    return storage.join(output_uri, CHECKPOINTS)


# --------------------------------------------------------------------------------------------
# Reading a run

def read_manifest(output_uri: str) -> tuple[dict | None, storage.Token]:
    data, token = storage.read_object(storage.join(output_uri, MANIFEST))
    if data is None:
        return None, 0
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        if not isinstance(files, list) or not all(isinstance(f, dict) and "path" in f for f in files):
            raise ValueError("files is not a list of objects with a path")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{storage.join(output_uri, MANIFEST)} is not a manifest of this job ({exc}); "
                        "publish the run again or choose another folder") from None
    return manifest, token


def _object(entry: dict) -> str:
    """Where a manifest entry's bytes are: its own path once settled, else an attempt's copy."""
    return entry.get("object") or entry["path"]


def _named(manifest: dict | None) -> set[str]:
    """Every name a manifest vouches for: its files' objects and paths, and what it retired."""
    if not manifest:
        return set()
    names = {_object(f) for f in manifest["files"]} | {f["path"] for f in manifest["files"]}
    return names | set(manifest.get("retired", []))


def _check_name(output_uri: str, name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"{storage.join(output_uri, MANIFEST)} names {name!r}, which escapes the run folder; "
                        "the manifest is not this job's: publish the run again")
    return name


def open_run(uri: str, dest: Path, attempts: int = 3) -> tuple[dict, Path]:
    """(manifest, local folder holding exactly the run's files, each checked against its sha256).

    A local run that is settled is checked in place; otherwise files are brought to `dest` (downloads
    from gs://, links or copies locally). A run without a manifest is not a run: refused. When a file
    is missing or differs, the manifest is read again: if it changed, an overwrite was switching runs
    and we start over; if not, the run is damaged (DataError naming the file).
    """
    problem = ""
    for _ in range(attempts):
        manifest, token = read_manifest(uri)
        if manifest is None:
            raise DataError(f"{uri} holds no {MANIFEST}: it is not a published run, or its publishing did not finish; "
                            "give the folder of a completed run (or its output root, for the champion)")
        problem = _bring(uri, manifest, dest)
        if not problem:
            return manifest, _local_view(uri, manifest, dest)
        if read_manifest(uri)[1] == token:
            raise DataError(f"{uri}: {problem}; the run is damaged: publish it again") from None
        log.info("%s changed while it was read (an overwrite); reading it again", uri)
    raise TransientError(f"{uri} kept changing while it was read ({problem}); retry later")


def _settled_locally(uri: str, manifest: dict) -> bool:
    return not storage.is_gcs(uri) and all("object" not in f for f in manifest["files"])


def _local_view(uri: str, manifest: dict, dest: Path) -> Path:
    return Path(uri).expanduser() if _settled_locally(uri, manifest) else dest


def _bring(uri: str, manifest: dict, dest: Path) -> str:
    """Fetch/check the manifest's files; "" when all match, else what is wrong with the first bad one."""
    entries = manifest["files"]
    for f in entries:
        _check_name(uri, f["path"])
        _check_name(uri, _object(f))
    if _settled_locally(uri, manifest):
        targets = [(Path(uri).expanduser() / f["path"], f) for f in entries]
    else:
        dest.mkdir(parents=True, exist_ok=True)
        if storage.is_gcs(uri):
            bucket_name, prefix = storage.split_gcs(uri)
            # No listed size: the sha256 check below is the judge (and names the file).
            files = [storage.RemoteFile(f"gs://{bucket_name}/{storage._gcs_key(prefix, _object(f))}", f["path"],
                                        None) for f in entries]
            try:
                storage.fetch(files, uri, dest)
            except DataError as exc:  # an object went missing: maybe the run was being replaced
                return str(exc)
        else:
            for f in entries:
                try:
                    storage.copy_object(storage.join(uri, _object(f)), str(storage.safe_local_path(dest, f["path"])))
                except FileNotFoundError:
                    return f"{f['path']} is missing"
        targets = [(storage.safe_local_path(dest, f["path"]), f) for f in entries]
    for path, f in targets:
        if not path.is_file():
            return f"{f['path']} is missing"
        if path.stat().st_size != f.get("size", path.stat().st_size) or storage.sha256_file(path) != f.get("sha256"):
            return f"{f['path']} does not match the sha256 in its {MANIFEST}"
    return ""


# --------------------------------------------------------------------------------------------
# Before training: will publishing work?

def check_output(output_uri: str, identity: Identity, overwrite: bool) -> dict | None:
    """Refuse, in the first seconds, what publishing would refuse after hours of training.

    Returns the manifest already there when it is this same run (the caller is a retry of a run
    that published); raises OutputExistsError (exit 4) for another run without --overwrite or for
    foreign files, BadInputError/DataError (exit 3) for an output that cannot be written.
    """
    _probe_writable(output_uri)
    manifest, _ = read_manifest(output_uri)
    if manifest is not None and not overwrite and manifest.get("settings_fingerprint") == identity.fingerprint:
        return manifest
    if manifest is not None and not overwrite:
        raise OutputExistsError(f"{output_uri} already holds a completed run (run {manifest.get('run_id')}): "
                                "pass --overwrite or choose another --output")
    _refuse_foreign(output_uri, manifest)
    return None


def _probe_writable(output_uri: str) -> None:
    """gs://: one small write and its removal, so that a missing bucket or a missing permission fails now."""
    probe = f"{BOOKKEEPING}/probe-{uuid.uuid4().hex[:12]}"
    if storage.is_gcs(output_uri):
        if not storage.bucket_exists(output_uri):
            raise DataError(f"bucket gs://{output_uri.split('/')[2]} does not exist: create it or fix --output")
        storage.write_object(storage.join(output_uri, probe), b"{}", if_token=0)
        storage.delete_object(storage.join(output_uri, probe))
        return
    # Local: ask the kernel (access(2) reports a read-only mount to root too) instead of writing,
    # so that an output holding a run is left exactly as it was, timestamps included.
    out = Path(output_uri).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--output {output_uri} exists and is not a folder: choose a folder")
    where = out
    while not where.exists():
        where = where.parent
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        what = "is not writable" if where == out else f"cannot be created: {where} is not writable"
        raise BadInputError(f"--output {output_uri} {what}; fix its permissions or mount, or choose another folder")


def _foreign(output_uri: str, manifest: dict | None) -> list[str]:
    """Names at the output that no manifest of this job vouches for (the job must never touch them)."""
    named = _named(manifest) | {MANIFEST}
    out = []
    for name in storage.list_all(output_uri):
        if name.startswith(BOOKKEEPING + "/") or name in named or name.endswith("/"):
            continue  # empty folders are nobody's data, but are never deleted either
        if not storage.is_gcs(output_uri) and name.startswith(IGNORED_LOCAL):
            continue
        out.append(name)
    return out


def _refuse_foreign(output_uri: str, manifest: dict | None) -> None:
    foreign = _foreign(output_uri, manifest)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        what = "besides the run of this job there" if manifest else "and no run of this job"
        raise OutputExistsError(f"{output_uri} holds {len(foreign)} file(s) {what} ({shown}); the job never "
                                "deletes or replaces files it did not write: choose an empty --output "
                                "(e.g. a new folder or prefix) or move them away")


# --------------------------------------------------------------------------------------------
# The claim: one publisher at a time per output

class _Claim:
    """Held for the whole publish. gs://: a small object written create-only and renewed (compare-
    and-swap on its generation) by a thread; local: an flock plus claim.json for messages."""

    def __init__(self, output_uri: str, identity: Identity, attempt: str):
        self.uri = storage.join(output_uri, CLAIM)
        self.output_uri = output_uri
        self.identity = identity
        self.attempt = attempt
        self.lease = lease_seconds()
        self._token: storage.Token = 0
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._lost = ""
        self._thread: threading.Thread | None = None
        self._lock_cm = None

    def _body(self) -> bytes:
        return json.dumps({"run_id": self.identity.run_id, "fingerprint": self.identity.fingerprint,
                           "attempt": self.attempt, "host": socket.gethostname(), "pid": os.getpid(),
                           "lease_seconds": self.lease, "renewed": time.time()}).encode()

    # -- taking and dropping
    def __enter__(self) -> "_Claim":
        if storage.is_gcs(self.output_uri):
            self._take_gcs()
            self._thread = threading.Thread(target=self._renew_loop, name="publish-claim", daemon=True)
            self._thread.start()
        else:
            out = Path(self.output_uri).expanduser()
            self._lock_cm = storage.local_lock(out / LOCK, wait_seconds(), f"publishing to {self.output_uri}")
            self._lock_cm.__enter__()
            storage.write_object(self.uri, self._body(), tmp_dir=out / TMP)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            if storage.is_gcs(self.output_uri):
                if not self._lost:  # a failed attempt releases too; only a crash leaves a claim behind
                    storage.delete_object(self.uri, if_token=self._token)
            else:
                storage.delete_object(self.uri)
        except (storage.PreconditionFailed, TransientError) as e:
            log.warning("could not release the publish claim on %s (%s); it expires by itself", self.output_uri, e)
        finally:
            if self._lock_cm is not None:
                self._lock_cm.__exit__(None, None, None)

    def _take_gcs(self) -> None:
        deadline = time.monotonic() + wait_seconds()
        waited = False
        while True:
            data, token = storage.read_object(self.uri)
            if data is not None:
                try:
                    held = json.loads(data)
                    age = time.time() - float(held.get("renewed", 0))
                    lease = float(held.get("lease_seconds", self.lease))
                except (ValueError, TypeError, AttributeError):
                    held, age, lease = {}, float("inf"), self.lease
                if held.get("fingerprint") == self.identity.fingerprint:
                    log.info("taking over the publish claim on %s of an earlier attempt of this run (%s)",
                             self.output_uri, held.get("attempt"))
                elif age > lease + min(CLOCK_SKEW_SECONDS, lease / 2):
                    log.warning("taking over a publish claim on %s not renewed for %.0f s (run %s died)",
                                self.output_uri, age, held.get("run_id"))
                else:
                    if time.monotonic() > deadline:
                        raise TransientError(f"another run ({held.get('run_id')}) has been publishing to "
                                             f"{self.output_uri} for over {wait_seconds():g} s; retry later")
                    if not waited:
                        log.info("run %s is publishing to %s; waiting for it to finish", held.get("run_id"),
                                 self.output_uri)
                        waited = True
                    time.sleep(min(1.0, self.lease / 4))
                    continue
            try:
                self._token = storage.write_object(self.uri, self._body(), if_token=token)
                return
            except storage.PreconditionFailed:
                continue  # somebody else moved first: look again

    # -- keeping it
    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                self.renew()
            except TransientError as exc:  # keep trying: the lease has slack for a few failures
                log.warning("renewing the publish claim on %s: %s", self.output_uri, exc)
            except OutputExistsError:
                return

    def renew(self) -> None:
        """Renew now (compare-and-swap); raise if another attempt took the claim over."""
        if not storage.is_gcs(self.output_uri):
            return  # the flock is held until released
        with self._guard:
            if self._lost:
                raise OutputExistsError(self._lost)
            try:
                self._token = storage.write_object(self.uri, self._body(), if_token=self._token)
            except storage.PreconditionFailed:
                self._lost = (f"the publish claim on {self.output_uri} was taken over by another attempt while "
                              "this one was stalled; this attempt stops without committing")
                raise OutputExistsError(self._lost) from None

    def confirm(self) -> None:
        """Before a step that changes what readers see: the claim must still be ours."""
        try:
            self.renew()
        except OutputExistsError as exc:
            raise TransientError(str(exc) + "; retry to publish or find the other attempt's result") from None


# --------------------------------------------------------------------------------------------
# Publishing

def build_manifest(staging: Path, identity: Identity, attempt: str) -> dict:
    files = []
    for p in sorted(staging.rglob("*")):
        if p.is_file():
            rel = p.relative_to(staging).as_posix()
            files.append({"path": rel, "size": p.stat().st_size, "sha256": storage.sha256_file(p),
                          "object": f"{ATTEMPTS}/{attempt}/{rel}"})
    return {"format": FORMAT, "complete": True, "run_id": identity.run_id,
            "settings_fingerprint": identity.fingerprint, "attempt": attempt,
            "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "files": files,
            "retired": []}


def _encode(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def publish(staging: Path, output_uri: str, identity: Identity, overwrite: bool,
            finalize: Callable[[float], list[str]] | None = None, hook: Hook | None = None) -> dict:
    """Publish the finished run in `staging` at `output_uri` (see the module docstring); return its manifest.

    `finalize(seconds)` runs after the upload (to record its duration) and names the staged files it
    rewrote. `hook(step)` is called after each step of STEPS (tests pause or kill a publisher there).
    A retry of the same run that finds the run already committed finishes it and returns its manifest.
    """
    hook = hook or (lambda step: None)
    attempt = _attempt_id()
    if storage.is_gcs(output_uri) and not storage.bucket_exists(output_uri):
        raise DataError(f"bucket gs://{output_uri.split('/')[2]} does not exist: create it or fix --output")
    with _Claim(output_uri, identity, attempt) as claim:
        hook("claim")
        manifest = _publish_claimed(staging, output_uri, identity, overwrite, finalize, hook, attempt, claim)
    hook("release")
    return manifest


def _publish_claimed(staging: Path, output_uri: str, identity: Identity, overwrite: bool, finalize, hook: Hook,
                     attempt: str, claim: "_Claim") -> dict:
    """Steps check -> clean, under the claim (see publish)."""
    old, token = read_manifest(output_uri)
    if old is not None and not overwrite:
        if old.get("settings_fingerprint") != identity.fingerprint:
            raise OutputExistsError(f"{output_uri} already holds a completed run (run {old.get('run_id')}): "
                                    "pass --overwrite or choose another --output")
        log.info("%s already holds this run (attempt %s); finishing it", output_uri, old.get("attempt"))
        return _settle(output_uri, old, token, claim, hook)
    _refuse_foreign(output_uri, old)
    _remove_debris(output_uri, old)
    hook("check")

    t0 = time.perf_counter()
    names = [p.relative_to(staging).as_posix() for p in sorted(staging.rglob("*")) if p.is_file()]
    where = storage.join(output_uri, ATTEMPTS, attempt)
    tmp = None if storage.is_gcs(output_uri) else Path(output_uri).expanduser() / TMP
    storage.put_files(staging, names, where, tmp_dir=tmp)
    if finalize:
        storage.put_files(staging, finalize(time.perf_counter() - t0), where, tmp_dir=tmp)
    hook("upload")

    manifest = build_manifest(staging, identity, attempt)
    manifest["retired"] = sorted(_named(old) - {f["path"] for f in manifest["files"]})
    claim.confirm()
    try:
        token = storage.write_object(storage.join(output_uri, MANIFEST), _encode(manifest), if_token=token,
                                     tmp_dir=tmp)
    except storage.PreconditionFailed:
        # Only a stalled claim holder gets here: another attempt committed meanwhile.
        _delete(output_uri, [f"{ATTEMPTS}/{attempt}/{n}" for n in names])
        raise OutputExistsError(f"another run published to {output_uri} at the same time; "
                                "choose another --output") from None
    log.info("committed %d files to %s (manifest written)", len(names), output_uri)
    hook("commit")
    return _settle(output_uri, manifest, token, claim, hook)


def complete(output_uri: str, identity: Identity, hook: Hook | None = None) -> dict | None:
    """For a retry that found its own run committed: finish what a crashed attempt left (settle ->
    clean) under the claim and return the manifest; None when the output holds no run of these settings."""
    hook = hook or (lambda step: None)
    manifest, _ = read_manifest(output_uri)
    if manifest is None or manifest.get("settings_fingerprint") != identity.fingerprint:
        return None
    if not _unfinished(manifest) and not _debris(output_uri, manifest):
        return manifest  # the common case needs no claim (and every worker of a cluster may ask)
    with _Claim(output_uri, identity, _attempt_id()) as claim:
        hook("claim")
        manifest, token = read_manifest(output_uri)
        if manifest is None or manifest.get("settings_fingerprint") != identity.fingerprint:
            return None
        return _settle(output_uri, manifest, token, claim, hook)


def _unfinished(manifest: dict) -> bool:
    return any("object" in f for f in manifest["files"]) or bool(manifest.get("retired"))


def _attempt_id() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def read_file(output_uri: str, manifest: dict, path: str) -> bytes:
    """One file of a published run, checked against the manifest's sha256."""
    import hashlib

    entry = next((f for f in manifest["files"] if f["path"] == path), None)
    if entry is None:
        raise DataError(f"{output_uri}: its {MANIFEST} lists no {path}; publish the run again")
    data, _ = storage.read_object(storage.join(output_uri, _check_name(output_uri, _object(entry))))
    if data is None or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise DataError(f"{output_uri}: {path} is missing or does not match the sha256 in its {MANIFEST}; "
                        "publish the run again")
    return data


def _settle(output_uri: str, manifest: dict, token: storage.Token, claim: _Claim, hook: Hook) -> dict:
    """Move a committed run to its final names and tidy up: settle, retire, finalize, clean.

    Every step is safe to repeat after a crash: the manifest written at commit keeps naming complete
    copies until `finalize` switches it to the final names, which `settle` filled before.
    """
    tmp = None if storage.is_gcs(output_uri) else Path(output_uri).expanduser() / TMP
    pending = [f for f in manifest["files"] if "object" in f]
    paths = {f["path"] for f in manifest["files"]}
    if pending:
        claim.confirm()
    # A final path is free or holds a file of an earlier manifest (checked in `check`). A foreign file
    # that someone writes there between `check` and now is not looked for again: a narrow race with
    # a person editing the output during a publish, accepted rather than listed twice per publish.
    for f in pending:
        _check_name(output_uri, f["path"])
        storage.copy_object(storage.join(output_uri, f["object"]), storage.join(output_uri, f["path"]), tmp_dir=tmp)
    hook("settle")
    retired = [n for n in manifest.get("retired", []) if n not in paths]
    _delete(output_uri, retired)
    hook("retire")
    if pending or manifest.get("retired"):
        final = {**manifest, "files": [{k: v for k, v in f.items() if k != "object"} for f in manifest["files"]],
                 "retired": []}
        claim.confirm()
        storage.write_object(storage.join(output_uri, MANIFEST), _encode(final), if_token=token, tmp_dir=tmp)
        manifest = final
    hook("finalize")
    _remove_debris(output_uri, manifest)  # this attempt's copies, and any a crashed one left
    _prune_local(output_uri)
    hook("clean")
    return manifest


def _remove_debris(output_uri: str, current: dict | None) -> None:
    """Files of attempts that died before committing (and stray temp files), and the copies of the
    current run's own attempt once it is settled: ours, and named by no manifest. Only the claim
    holder calls this, so no live attempt's files are among them."""
    debris = _debris(output_uri, current)
    own = f"{ATTEMPTS}/{(current or {}).get('attempt')}/"
    others = [n for n in debris if not n.startswith(own)]
    if others:
        log.info("removing %d file(s) left by earlier attempts that did not finish publishing", len(others))
    _delete(output_uri, debris)


def _debris(output_uri: str, current: dict | None) -> list[str]:
    keep = _named(current)
    return [n for n in storage.list_all(output_uri)
            if n.startswith((ATTEMPTS + "/", TMP + "/")) and n not in keep and not n.endswith("/")]


def _delete(output_uri: str, names: list[str]) -> None:
    for name in names:
        _check_name(output_uri, name)
        storage.delete_object(storage.join(output_uri, name))


def _prune_local(output_uri: str) -> None:
    """Local: drop folders our deletions left empty (attempt folders, an old run's subfolders)."""
    if storage.is_gcs(output_uri):
        return
    root = Path(output_uri).expanduser()
    for sub in (root / ATTEMPTS, root / TMP):
        if sub.is_dir():
            for d in sorted((p for p in sub.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
