"""Storage: one small interface over a local folder and a gs:// prefix.

All bucket I/O goes through google-cloud-storage (never TensorFlow's gs:// filesystem, which only
talks to Google's real endpoint), so every path is testable against an emulator via
STORAGE_EMULATOR_HOST. The rest of the job reads and writes local files; this module moves them.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from job.errors import BadInputError, ConfigError, DataError, OutputExistsError, TransientError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Held while a run uploads its files to a gs:// output, so a second run cannot interleave its
# files with the first one's. Hidden name: never data, never in a manifest.
CLAIM = ".publishing"
# A claim older than this is left from a publisher that died: it may be taken over.
CLAIM_LEASE_SECONDS = 3600


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix -> ("bucket", "some/prefix")."""
    rest = uri[len("gs://"):]
    bucket, _, name = rest.partition("/")
    if not bucket:
        raise BadInputError(f"{uri} names no bucket: write gs://BUCKET/path")
    return bucket, name


def normalize(uri: str) -> str:
    """A comparable form: absolute local paths, gs:// unchanged, no trailing slash."""
    if is_gcs(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    base = uri.rstrip("/")
    return "/".join([base, *parts]) if is_gcs(uri) else os.path.join(base, *parts)


def safe_local_path(root: Path, relative: str) -> Path:
    """Map an object name below a prefix to a path below `root`, refusing anything that escapes it.

    Object names are user data: `../x`, `/etc/x` or `a/../../x` must never write outside `root`.
    """
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith("/") or any(p in ("..", ".") for p in parts) or not all(parts):
        raise DataError(f"refusing object name {relative!r}: it is absolute or contains '.', '..' or '//'; rename it")
    path = (root / Path(*parts)).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"refusing object name {relative!r}: it points outside the destination folder")
    return path


# --------------------------------------------------------------------------------------------
# gs:// client and error mapping

@functools.lru_cache(maxsize=1)
def gcs_client():
    from google.cloud import storage

    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # An emulator needs no credentials; looking for real ones would fail or, worse, find them.
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local-emulator", credentials=AnonymousCredentials())
    try:
        return storage.Client(project=project)
    except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise BadInputError(
            f"no Google Cloud credentials for gs:// access ({type(exc).__name__}): use Workload Identity, "
            "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`") from None


#: Back-off between attempts of one gs:// call: exponential with full jitter - the n-th wait is drawn
#: from [0, min(initial * multiplier**n, maximum)] seconds. The total per call is retry_seconds().
RETRY_DELAY = {"initial": 1.0, "maximum": 30.0, "multiplier": 2.0}
DEFAULT_RETRY_SECONDS = 120.0
#: Attempts at a download whose bytes fail the CRC32C/MD5 or size check (the client does not retry those).
DOWNLOAD_ATTEMPTS = 3
UPLOAD_ATTEMPTS = 3


def retry_seconds() -> float:
    """How long one gs:// call may keep retrying: FT_STORAGE_RETRY_SECONDS, default 120 (the one reader)."""
    raw = os.environ.get("FT_STORAGE_RETRY_SECONDS", "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"FT_STORAGE_RETRY_SECONDS={raw!r} is not a number of seconds >= 0; "
                          f"unset it for the default of {DEFAULT_RETRY_SECONDS:g}")
    return value


def retry_policy():
    """The retry policy passed as `retry=` to every gs:// call the job makes.

    google-cloud-storage's DEFAULT_RETRY predicate (429, 408, 500, 502, 503, 504, connection
    refused/reset/cut, read time-outs), our back-off, and at most retry_seconds() in all per call;
    then the client raises google.api_core.exceptions.RetryError, which gcs_errors() turns into a
    TransientError. Uploads are retried too: the create-only manifest upload copes with finding its
    own earlier attempt (see _create_manifest).
    """
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_delay(**RETRY_DELAY).with_timeout(retry_seconds())


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "storage did not answer properly; the same call may work later"."""
    import http.client

    import requests
    import urllib3
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as gauth
    from google.cloud.storage.exceptions import DataCorruption

    return (gexc.RetryError, gexc.TooManyRequests, gexc.ServerError,
            requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError, http.client.HTTPException, gauth.TransportError, DataCorruption,
            ConnectionError, TimeoutError)


@contextlib.contextmanager
def gcs_errors(what: str) -> Iterator[None]:
    """Turn client exceptions into the job's typed errors, with one line that names the object.

    By the time an exception gets here the client has retried it for retry_seconds() when that made
    sense, so whatever is transient now means "storage is down": exit 75, retry the run later.
    """
    from google.api_core import exceptions as gexc

    try:
        yield
    except gexc.NotFound as exc:
        raise DataError(f"{what}: not found ({_first_line(exc)}); check the bucket and path") from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise BadInputError(f"{what}: access denied ({_first_line(exc)}); grant the job's service account access") from None
    except _transient_errors() as exc:
        raise TransientError(f"{what}: storage unavailable ({_reason(exc)}), gave up after retrying for up to "
                             f"{retry_seconds():g} s; retry later") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The telling part of a storage failure: the last error behind a RetryError, and the socket-level
    reason (e.g. "Connection refused") behind requests' "Max retries exceeded" wrapper."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.RetryError) and exc.cause is not None:
        exc = exc.cause
    inner = getattr(exc.args[0], "reason", None) if exc.args else None  # urllib3's MaxRetryError
    return _first_line(inner if isinstance(inner, BaseException) else exc)


def _is_corruption(exc: BaseException) -> bool:
    from google.cloud.storage.exceptions import DataCorruption

    return isinstance(exc, DataCorruption)


def _crc32c_file(path: Path) -> str:
    """Base64 of the big-endian CRC32C, as GCS reports it (`blob.crc32c`)."""
    import google_crc32c

    return base64.b64encode(_digest_file(path, google_crc32c.Checksum())).decode()


def _md5_file(path: Path) -> str:
    return base64.b64encode(_digest_file(path, hashlib.md5())).decode()


def _digest_file(path: Path, hasher) -> bytes:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.digest()


def _download_bytes(blob, what: str) -> bytes:
    """A small object's bytes, checked against its listed size and CRC32C; corrupt transfers are retried."""
    import google_crc32c

    size, crc32c = blob.size, blob.crc32c
    if blob.content_encoding == "gzip":  # served decompressed: the stored size and CRC32C do not apply
        size = crc32c = None
    problem = ""
    for attempt in range(DOWNLOAD_ATTEMPTS):
        if attempt:
            _pause(attempt)
        try:
            data = blob.download_as_bytes(retry=retry_policy(), checksum="auto")
        except Exception as exc:
            if not _is_corruption(exc):
                raise
            problem = "its bytes failed the client's checksum"
            continue
        # A download resumed after a cut connection ends in a ranged (206) answer, which the client
        # does not checksum: compare with the object's metadata ourselves.
        if size is not None and len(data) != size:
            problem = f"{len(data)} bytes arrived instead of {size}"
        elif crc32c and base64.b64encode(google_crc32c.Checksum(data).digest()).decode() != crc32c:
            problem = "its bytes do not match the object's CRC32C"
        else:
            return data
    raise TransientError(f"{what}: the download failed its integrity check {DOWNLOAD_ATTEMPTS} times "
                         f"({problem}); retry later")


def _pause(attempt: int) -> None:
    """Back-off before our own re-attempts (corrupt downloads), same shape as retry_policy()'s."""
    cap = min(RETRY_DELAY["initial"] * RETRY_DELAY["multiplier"] ** (attempt - 1), RETRY_DELAY["maximum"])
    time.sleep(random.uniform(0.0, cap))


# --------------------------------------------------------------------------------------------
# Listing and fetching inputs

@dataclass(frozen=True)
class RemoteFile:
    uri: str  # full location, for messages
    relative: str  # name below the listed prefix
    size: int | None  # listed size in bytes; None when unknown (a download is then not size-checked)
    crc32c: str | None = None  # listed CRC32C (base64, as GCS gives it), checked after each download


def list_files(uri: str) -> list[RemoteFile]:
    """Every file at `uri`: the file itself, or all files below it as a folder/prefix, sorted by name.

    Hidden names (`.x`, `_SUCCESS`-style markers) are skipped: they are tool bookkeeping, not data.
    """
    if is_gcs(uri):
        files = _list_gcs(uri)
    else:
        files = _list_local(uri)
    # '.' and '..' are not hidden names but path tricks: keep them so fetch() refuses them loudly.
    return [f for f in files if not any(p.startswith((".", "_")) and p not in (".", "..")
                                        for p in f.relative.split("/"))]


def _list_local(uri: str) -> list[RemoteFile]:
    path = Path(uri).expanduser()
    if path.is_file():
        return [RemoteFile(str(path), path.name, path.stat().st_size)]
    if not path.is_dir():
        raise DataError(f"{uri} does not exist: check the path")
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out.append(RemoteFile(str(p), p.relative_to(path).as_posix(), p.stat().st_size))
    return out


def _list_gcs(uri: str) -> list[RemoteFile]:
    bucket_name, name = split_gcs(uri)
    client = gcs_client()
    with gcs_errors(f"bucket gs://{bucket_name}"):
        bucket = client.bucket(bucket_name)
        if name and not name.endswith("/"):
            blob = bucket.get_blob(name, retry=retry_policy())
            if blob is not None:
                return [_remote_file(uri, name.rsplit("/", 1)[-1], blob)]
        prefix = name.rstrip("/") + "/" if name else ""
        blobs = list(client.list_blobs(bucket_name, prefix=prefix, retry=retry_policy()))
    out = [_remote_file(f"gs://{bucket_name}/{b.name}", b.name[len(prefix):], b)
           for b in blobs if not b.name.endswith("/")]
    if not out:
        raise DataError(f"{uri} does not exist or is empty: check the path")
    return sorted(out, key=lambda f: f.relative)


def _remote_file(uri: str, relative: str, blob) -> RemoteFile:
    if blob.content_encoding == "gzip":
        # Stored gzip-compressed and served decompressed: the listed size and CRC32C are the stored
        # bytes', not the downloaded ones' (the client still checks the transfer itself).
        return RemoteFile(uri, relative, None)
    return RemoteFile(uri, relative, int(blob.size or 0), blob.crc32c)


def fetch(files: list[RemoteFile], base_uri: str, dest: Path) -> list[Path]:
    """Bring `files` (listed below `base_uri`) to `dest`, keeping their relative names.

    Local files are used in place (no copy); gs:// objects are downloaded in parallel. Each call
    retries transient errors (retry_policy()); each download is checked by the client (CRC32C or
    MD5 of a whole-object answer) and then here against the listed size and CRC32C, which also
    covers a download resumed after a cut connection (ranged answers are not checksummed by the
    client). A file that fails a check is downloaded again, up to DOWNLOAD_ATTEMPTS times in all.
    """
    if not is_gcs(base_uri):
        return [Path(f.uri) for f in files]
    from google.cloud.storage import transfer_manager

    bucket_name, _ = split_gcs(base_uri)
    targets = [safe_local_path(dest, f.relative) for f in files]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    bucket = gcs_client().bucket(bucket_name)
    pending = list(range(len(files)))
    problems: dict[int, str] = {}
    with gcs_errors(f"downloading {base_uri}"):
        for attempt in range(DOWNLOAD_ATTEMPTS):
            if attempt:
                log.warning("downloading %s: %d file(s) failed their integrity check (%s: %s); "
                            "downloading them again (attempt %d of %d)", base_uri, len(pending),
                            files[pending[0]].uri, problems[pending[0]], attempt + 1, DOWNLOAD_ATTEMPTS)
                _pause(attempt)
            pairs = [(bucket.blob(split_gcs(files[i].uri)[1]), str(targets[i])) for i in pending]
            results = transfer_manager.download_many(
                pairs, download_kwargs={"retry": retry_policy(), "checksum": "auto"}, max_workers=8,
                worker_type="thread", raise_exception=False)
            problems = {}
            for i, result in zip(pending, results):
                if isinstance(result, Exception):
                    if not _is_corruption(result):
                        raise result
                    problems[i] = "its bytes failed the client's checksum"
                elif problem := _check_download(targets[i], files[i]):
                    problems[i] = problem
            if not problems:
                return targets
            pending = sorted(problems)
    for i in pending:
        targets[i].unlink(missing_ok=True)
    first = files[pending[0]]
    raise TransientError(f"downloading {base_uri}: {first.uri} failed its integrity check {DOWNLOAD_ATTEMPTS} "
                         f"times ({problems[pending[0]]}; {len(pending)} file(s) affected); retry later")


def _check_download(path: Path, f: RemoteFile) -> str | None:
    """What is wrong with a downloaded file compared with its listing, or None."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        return f"{size} bytes arrived instead of the listed {f.size}"
    if f.crc32c and _crc32c_file(path) != f.crc32c:
        return "its bytes do not match the listed CRC32C"
    return None


def fetch_tree(uri: str, dest: Path) -> Path:
    """A whole folder/prefix as a local folder: `uri` itself when local, else a download into `dest`."""
    if not is_gcs(uri):
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise BadInputError(f"{uri} is not a folder")
        return path
    fetch(list_files(uri), uri, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Publishing outputs: staged locally, uploaded, manifest last

def sha256_file(path: Path) -> str:
    return _digest_file(path, hashlib.sha256()).hex()


def build_manifest(staging: Path) -> dict:
    files = []
    for p in sorted(staging.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files.append({"path": p.relative_to(staging).as_posix(), "size": p.stat().st_size,
                          "sha256": sha256_file(p)})
    return {"complete": True, "files": files}


def read_manifest(output_uri: str) -> dict | None:
    """The manifest of a completed run at `output_uri`, or None when there is none."""
    if is_gcs(output_uri):
        bucket_name, name = split_gcs(output_uri)
        with gcs_errors(f"reading {output_uri}"):
            blob = gcs_client().bucket(bucket_name).get_blob(_gcs_key(name, MANIFEST), retry=retry_policy())
            return json.loads(_download_bytes(blob, f"reading {output_uri}")) if blob is not None else None
    path = Path(output_uri).expanduser() / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def check_output_free(output_uri: str, overwrite: bool) -> None:
    """Fail early, before hours of training, when publishing would be refused anyway."""
    if overwrite:
        return
    if read_manifest(output_uri) is not None:
        raise OutputExistsError(f"{output_uri} already holds a completed run: pass --overwrite or choose another --output")
    if not is_gcs(output_uri):
        path = Path(output_uri).expanduser()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise OutputExistsError(f"{output_uri} exists and is not an empty folder: pass --overwrite or choose another --output")


def _gcs_key(prefix: str, relative: str) -> str:
    return f"{prefix.rstrip('/')}/{relative}" if prefix.strip("/") else relative


def publish(staging: Path, output_uri: str, overwrite: bool,
            finalize: Callable[[float], list[str]] | None = None) -> dict:
    """Publish the finished run in `staging` at `output_uri`; the manifest is written last.

    A reader who sees `manifest.json` sees a whole run. Without `overwrite`, an existing
    completed run is never touched: on gs:// the manifest is created with a create-only
    precondition, so of two runs racing for one output exactly one wins. `finalize(seconds)`
    runs after the bulk transfer (to record its duration) and names the staged files it rewrote.
    """
    (staging / MANIFEST).unlink(missing_ok=True)
    if is_gcs(output_uri):
        return _publish_gcs(staging, output_uri, overwrite, finalize)
    return _publish_local(staging, Path(output_uri).expanduser(), overwrite, finalize)


def _write_manifest(root: Path) -> dict:
    manifest = build_manifest(root)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _publish_local(staging: Path, out: Path, overwrite: bool, finalize) -> dict:
    check_output_free(str(out), overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Copy next to the destination first so the final step is one rename on the same filesystem.
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        t0 = time.perf_counter()
        shutil.copytree(staging, partial)
        for rel in finalize(time.perf_counter() - t0) if finalize else []:
            shutil.copy2(staging / rel, partial / rel)
        manifest = _write_manifest(partial)
        old = None
        if out.exists():
            check_output_free(str(out), overwrite)  # a run that finished meanwhile wins
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        os.rename(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return manifest


def _publish_gcs(staging: Path, output_uri: str, overwrite: bool, finalize) -> dict:
    from google.api_core import exceptions as gexc

    bucket_name, prefix = split_gcs(output_uri)
    bucket = gcs_client().bucket(bucket_name)
    manifest_blob = bucket.blob(_gcs_key(prefix, MANIFEST))
    with gcs_errors(f"publishing to {output_uri}"):
        if not bucket.exists(retry=retry_policy()):
            raise DataError(f"bucket gs://{bucket_name} does not exist: create it or fix --output")
        existing = manifest_blob.exists(retry=retry_policy())
        if existing and not overwrite:
            raise OutputExistsError(f"{output_uri} already holds a completed run: pass --overwrite or choose another --output")
        old_names = set()
        if existing:
            # Withdraw the old run first: a reader must never see its manifest over new files.
            old_names = {b.name for b in gcs_client().list_blobs(bucket_name, prefix=_gcs_key(prefix, ""),
                                                                  retry=retry_policy())}
            with contextlib.suppress(gexc.NotFound):  # a retried delete whose first attempt went through
                manifest_blob.delete(retry=retry_policy())
        claim = _claim(bucket, prefix, output_uri)
        t0 = time.perf_counter()
        names = [p.relative_to(staging).as_posix() for p in sorted(staging.rglob("*")) if p.is_file()]
        _upload_many(bucket, staging, prefix, names)
        if finalize:
            _upload_many(bucket, staging, prefix, finalize(time.perf_counter() - t0))
        manifest = _write_manifest(staging)
        _create_manifest(manifest_blob, staging / MANIFEST, output_uri)
        with contextlib.suppress(gexc.NotFound):
            claim.delete(retry=retry_policy())
    # The run is published. Files of the old run that the new one lacks are garbage outside the
    # manifest: failing to delete them must not turn a published run into a failed one.
    stale = old_names - {_gcs_key(prefix, n) for n in names} - {manifest_blob.name, claim.name}
    try:
        with gcs_errors(f"deleting stale files of the old run at {output_uri}"):
            for name in sorted(stale):
                with contextlib.suppress(gexc.NotFound):
                    bucket.blob(name).delete(retry=retry_policy())
    except TransientError as exc:
        log.warning("%s; the run is published, the leftovers are not in its manifest", exc)
    return manifest


def _claim(bucket, prefix: str, output_uri: str):
    """Create the claim object create-only, or fail: another run is uploading to this output now.

    Two runs racing for one output would otherwise both upload files under the same names, and the
    loser's could replace the winner's after the winner's manifest listed them. A claim left by a
    publisher that died is taken over after CLAIM_LEASE_SECONDS.
    """
    from google.api_core import exceptions as gexc

    blob = bucket.blob(_gcs_key(prefix, CLAIM))
    token = uuid.uuid4().hex
    body = json.dumps({"token": token, "since": time.time()})
    for _ in range(2):
        try:
            blob.upload_from_string(body, content_type="application/json", if_generation_match=0,
                                    retry=retry_policy())
            return blob
        except (gexc.PreconditionFailed, *_transient_errors()) as exc:
            held = _read_claim(bucket, blob.name)
            if held is not None and held.get("token") == token:
                return blob  # ours: the answer to a stored upload was lost
            if held is None:
                if isinstance(exc, gexc.PreconditionFailed):
                    continue  # released meanwhile: try again
                raise
            age = time.time() - float(held.get("since", 0))
            if age < CLAIM_LEASE_SECONDS:
                raise OutputExistsError(f"another run is publishing to {output_uri} right now (for {age:.0f}s); "
                                        "choose another --output") from None
            log.warning("taking over a publish claim on %s left %.0fs ago by a run that died", output_uri, age)
            with contextlib.suppress(gexc.NotFound):
                blob.delete(retry=retry_policy())
    raise OutputExistsError(f"another run is publishing to {output_uri} right now; choose another --output")


def _read_claim(bucket, name: str) -> dict | None:
    blob = bucket.get_blob(name, retry=retry_policy())
    if blob is None:
        return None
    try:
        return json.loads(blob.download_as_bytes(retry=retry_policy()))
    except ValueError:
        return {"since": 0}


def _create_manifest(blob, path: Path, output_uri: str) -> None:
    """Upload the manifest create-only (if_generation_match=0): of two racing runs exactly one wins.

    The upload is retried like every call. When an attempt succeeded but its answer was lost, the
    retry is refused with 412 by our own manifest: a 412 is "another run won" only when the manifest
    there is not byte-for-byte ours (same size, CRC32C and MD5). Likewise when the retries run out,
    one last look decides whether the manifest made it after all.
    """
    from google.api_core import exceptions as gexc

    try:
        blob.upload_from_filename(str(path), content_type="application/json", if_generation_match=0,
                                  retry=retry_policy(), checksum="auto")
    except gexc.PreconditionFailed:
        if _is_our_object(blob.bucket, blob.name, path, retry=retry_policy()):
            log.info("%s was already ours: an earlier attempt of its upload went through", blob.name)
            return
        raise OutputExistsError(f"another run published to {output_uri} at the same time; "
                                "choose another --output") from None
    except _transient_errors():
        try:
            ours = _is_our_object(blob.bucket, blob.name, path, retry=None)
        except Exception:
            ours = False
        if not ours:
            raise
        log.info("%s was uploaded although the answer was lost", blob.name)


def _is_our_object(bucket, name: str, path: Path, retry) -> bool:
    """Whether object `name` holds exactly the bytes of local `path` (size, CRC32C and MD5 agree)."""
    remote = bucket.get_blob(name, retry=retry)
    if remote is None or remote.size != path.stat().st_size or not (remote.crc32c or remote.md5_hash):
        return False
    return ((not remote.crc32c or remote.crc32c == _crc32c_file(path))
            and (not remote.md5_hash or remote.md5_hash == _md5_file(path)))


def _upload_many(bucket, root: Path, prefix: str, names: list[str]) -> None:
    """Upload in parallel; files whose upload failed transiently are uploaded again (whole), because
    a resumable session broken mid-chunk is not always resumed by the client itself."""
    from google.cloud.storage import transfer_manager

    pending = list(names)
    for attempt in range(UPLOAD_ATTEMPTS):
        pairs = [(str(root / n), bucket.blob(_gcs_key(prefix, n))) for n in pending]
        results = transfer_manager.upload_many(pairs, upload_kwargs={"retry": retry_policy(), "checksum": "auto"},
                                               max_workers=8, worker_type="thread", raise_exception=False)
        failed = [(n, r) for n, r in zip(pending, results) if isinstance(r, Exception)]
        fatal = [r for _, r in failed if not isinstance(r, _transient_errors())]
        if fatal:
            raise fatal[0]
        if not failed:
            return
        if attempt + 1 == UPLOAD_ATTEMPTS:
            raise failed[0][1]
        log.warning("uploading %d file(s) again after %s", len(failed), _reason(failed[0][1]))
        pending = [n for n, _ in failed]
        _pause(attempt)


# --------------------------------------------------------------------------------------------
# Small named objects (checkpoints, pointers): read, put, delete by name below a folder/prefix

def read_bytes(uri: str) -> bytes | None:
    """The content at `uri`, or None when there is no such file/object."""
    if is_gcs(uri):
        bucket_name, name = split_gcs(uri)
        with gcs_errors(f"reading {uri}"):
            blob = gcs_client().bucket(bucket_name).get_blob(name, retry=retry_policy())
            return _download_bytes(blob, f"reading {uri}") if blob is not None else None
    path = Path(uri).expanduser()
    return path.read_bytes() if path.is_file() else None


def put_files(local: Path, names: list[str], uri: str) -> None:
    """Copy local/<name> to uri/<name> for each name."""
    if not names:
        return
    if is_gcs(uri):
        bucket_name, prefix = split_gcs(uri)
        with gcs_errors(f"writing to {uri}"):
            _upload_many(gcs_client().bucket(bucket_name), local, prefix, names)
        return
    dest = Path(uri).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        # Copy then rename: a reader never sees a half-written file.
        target = safe_local_path(dest, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(local / name, tmp)
        os.replace(tmp, target)


def get_files(uri: str, names: list[str], local: Path) -> None:
    """Copy uri/<name> to local/<name> for each name."""
    if is_gcs(uri):
        bucket_name, prefix = split_gcs(uri)
        files = [RemoteFile(f"gs://{bucket_name}/{_gcs_key(prefix, n)}", n, None) for n in names]
        fetch(files, uri, local)
        return
    for name in names:
        source = Path(uri).expanduser() / name
        if source.resolve() != (local / name).resolve():
            shutil.copyfile(source, safe_local_path(local, name))


def delete_files(uri: str, names: list[str]) -> None:
    if is_gcs(uri):
        from google.api_core import exceptions as gexc

        bucket_name, prefix = split_gcs(uri)
        bucket = gcs_client().bucket(bucket_name)
        with gcs_errors(f"deleting from {uri}"):
            for name in names:
                with contextlib.suppress(gexc.NotFound):
                    bucket.blob(_gcs_key(prefix, name)).delete(retry=retry_policy())
        return
    for name in names:
        (Path(uri).expanduser() / name).unlink(missing_ok=True)


def remove_empty(uri: str) -> None:
    """Remove a local folder left empty (gs:// has no folders to remove)."""
    if not is_gcs(uri):
        with contextlib.suppress(OSError):
            Path(uri).expanduser().rmdir()
