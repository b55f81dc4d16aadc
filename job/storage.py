"""Storage: one small interface over a local folder and a gs:// prefix.

All bucket I/O goes through google-cloud-storage (never TensorFlow's gs:// filesystem, which only
talks to Google's real endpoint), so every path is testable against an emulator via
STORAGE_EMULATOR_HOST. The rest of the job reads and writes local files; this module moves them.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import glob
import hashlib
import logging
import math
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from job.errors import BadInputError, ConfigError, DataError, TransientError

log = logging.getLogger(__name__)

def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix -> ("bucket", "some/prefix")."""
    rest = uri[len("gs://"):]
    bucket, _, name = rest.partition("/")
    if not bucket:
        raise BadInputError(f"{uri} names no bucket: write gs://BUCKET/path")
    return bucket, name


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


@contextlib.contextmanager
def tf_readable(path: Path) -> Iterator[Path]:
    """`path`, or a glob-free symlink to it, for TensorFlow to read checkpoints and SavedModels from.

    TensorFlow opens checkpoint and SavedModel variables through a file *pattern*: in a folder such
    as `runs[2]` or `exp*`, `[`, `*` and `?` are wildcards, so what was saved there is "not found" on
    reading (resume, the export's check, predict), and escaping them breaks its literal reads. Such a
    folder is reached through a link in the temp folder instead; the link is removed afterwards."""
    path = Path(path)
    if not glob.has_magic(str(path)):
        yield path
        return
    base = tempfile.gettempdir()
    if glob.has_magic(base):
        raise ConfigError(f"{path} and the temp folder {base} both contain one of * ? [, which TensorFlow reads as "
                          "wildcards: choose a folder without them (or set TMPDIR to one)")
    holder = Path(tempfile.mkdtemp(prefix="finetune-job-link-", dir=base))
    link = holder / "dir"
    try:
        link.symlink_to(path.resolve(), target_is_directory=True)
        yield link
    finally:
        link.unlink(missing_ok=True)
        holder.rmdir()


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
    TransientError. Uploads are retried too: a conditional write copes with finding its own earlier
    attempt (see write_object).
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


def _digest_file(path: Path, hasher) -> bytes:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.digest()


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
# Objects by name: read with a token, conditional write, copy, delete, list everything.
# The building blocks of job.publish and job.champion; the same calls on a local folder and gs://.
#
# A token says which version of an object was read: on gs:// its generation, locally the sha256 of
# its bytes; 0 means "there is no such object". A conditional write succeeds only if the object is
# still at the token given (0: only if it does not exist yet). Local conditional writes are atomic
# only under local_lock() of the same folder (the callers take it).

Token = int | str


class PreconditionFailed(Exception):
    """The object is no longer at the token the caller read (another writer changed it)."""


def sha256_file(path: Path) -> str:
    return _digest_file(path, hashlib.sha256()).hex()


def _gcs_key(prefix: str, relative: str) -> str:
    return f"{prefix.rstrip('/')}/{relative}" if prefix.strip("/") else relative


def read_object(uri: str) -> tuple[bytes | None, Token]:
    """(bytes or None, token). On gs:// the bytes and the generation come from one answer, so new
    content can never be paired with an old generation; the bytes are checked like every download."""
    if is_gcs(uri):
        bucket_name, key = split_gcs(uri)
        import google_crc32c
        from google.api_core import exceptions as gexc

        problem = ""
        with gcs_errors(f"reading {uri}"):
            for attempt in range(DOWNLOAD_ATTEMPTS + 2):
                if attempt:
                    _pause(attempt)
                # Metadata, then the bytes: when the object is replaced in between (a renewed claim,
                # a manifest switched by an overwrite), size or CRC32C disagree - look again.
                blob = gcs_client().bucket(bucket_name).get_blob(key, retry=retry_policy())
                if blob is None:
                    return None, 0
                try:
                    data = blob.download_as_bytes(retry=retry_policy(), checksum="auto")
                except gexc.NotFound:
                    problem = "it was replaced while being read"
                    continue
                except Exception as exc:
                    if not _is_corruption(exc):
                        raise
                    problem = "its bytes failed the client's checksum"
                    continue
                if blob.content_encoding == "gzip":  # served decompressed: stored size and CRC32C do not apply
                    return data, int(blob.generation)
                crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
                if len(data) == blob.size and (not blob.crc32c or crc == blob.crc32c):
                    return data, int(blob.generation)
                problem = "its bytes do not match the object's size and CRC32C"
        raise TransientError(f"reading {uri}: the download failed its integrity check {DOWNLOAD_ATTEMPTS + 2} times "
                             f"({problem}); retry later")
    path = Path(uri).expanduser()
    if not path.is_file():
        return None, 0
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def write_object(uri: str, data: bytes, if_token: Token | None = None, cache_control: str | None = None,
                 tmp_dir: Path | None = None) -> Token:
    """Store `data` at `uri`, only if the object is still at `if_token` (None: unconditionally).

    Returns the new token. Raises PreconditionFailed when another writer got there first. Locally the
    bytes go to a temp file (in `tmp_dir` when given, else beside the target) renamed into place. A gs:// write
    is retried like every call; a retry refused because its own earlier attempt went through (the
    answer was lost) is recognised by comparing bytes and counts as success.
    """
    if is_gcs(uri):
        return _write_gcs_object(uri, data, if_token, cache_control)
    path = Path(uri).expanduser()
    if if_token is not None:
        current, token = read_object(uri)
        if token != if_token:
            raise PreconditionFailed(f"{uri} changed since it was read")
    _atomic_write(path, data, tmp_dir)
    return hashlib.sha256(data).hexdigest()


def _write_gcs_object(uri: str, data: bytes, if_token: Token | None, cache_control: str | None) -> Token:
    from google.api_core import exceptions as gexc

    bucket_name, key = split_gcs(uri)
    blob = gcs_client().bucket(bucket_name).blob(key)
    if cache_control:
        blob.cache_control = cache_control
    condition = {} if if_token is None else {"if_generation_match": int(if_token)}
    with gcs_errors(f"writing {uri}"):
        try:
            # Small objects only (pointers, manifests, claims): a multipart upload, whose
            # precondition every server honours (fake-gcs-server ignores it on resumable ones).
            blob.upload_from_string(data, content_type="application/json", retry=retry_policy(),
                                    checksum="auto", **condition)
            return int(blob.generation)
        except gexc.PreconditionFailed:
            ours = _gcs_holds(blob.bucket, key, data)
            if ours is None:
                raise PreconditionFailed(f"{uri} changed since it was read") from None
            log.debug("%s: an earlier attempt of this write went through", uri)
            return ours
        except _transient_errors():
            # Retries ran out, but the first attempt may have been stored: one last look decides.
            with contextlib.suppress(Exception):
                ours = _gcs_holds(blob.bucket, key, data, retry=None)
                if ours is not None:
                    return ours
            raise


def _gcs_holds(bucket, key: str, data: bytes, retry="default") -> int | None:
    """The generation of object `key` if it holds exactly `data` (size, CRC32C and MD5 agree), else None."""
    import google_crc32c

    remote = bucket.get_blob(key, retry=retry_policy() if retry == "default" else retry)
    if remote is None or remote.size != len(data) or not (remote.crc32c or remote.md5_hash):
        return None
    crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    if (remote.crc32c and remote.crc32c != crc) or (remote.md5_hash and remote.md5_hash != md5):
        return None
    return int(remote.generation)


def delete_object(uri: str, if_token: Token | None = None) -> None:
    """Delete `uri` if it exists (and, on gs://, only if still at `if_token` when one is given)."""
    if is_gcs(uri):
        from google.api_core import exceptions as gexc

        bucket_name, key = split_gcs(uri)
        condition = {} if if_token is None else {"if_generation_match": int(if_token)}
        with gcs_errors(f"deleting {uri}"):
            try:
                gcs_client().bucket(bucket_name).blob(key).delete(retry=retry_policy(), **condition)
            except gexc.NotFound:  # already gone, or a retried delete whose first attempt went through
                pass
            except gexc.PreconditionFailed:
                raise PreconditionFailed(f"{uri} changed since it was read") from None
        return
    path = Path(uri).expanduser()
    if if_token is not None:
        _, token = read_object(uri)
        if token != if_token:
            raise PreconditionFailed(f"{uri} changed since it was read")
    path.unlink(missing_ok=True)


def copy_object(src: str, dst: str, tmp_dir: Path | None = None) -> None:
    """Make `dst` hold the bytes of `src` (same bucket or same filesystem), replacing it atomically.

    gs://: a server-side rewrite (no download; instant within one bucket and storage class). Local:
    a hard link renamed into place (no second copy of a large file), or a copy where links do not
    work (FUSE mounts); `src` stays in place either way.
    """
    if is_gcs(src):
        src_bucket, src_key = split_gcs(src)
        dst_bucket, dst_key = split_gcs(dst)
        client = gcs_client()
        with gcs_errors(f"copying {src} to {dst}"):
            bucket = client.bucket(src_bucket)
            bucket.copy_blob(bucket.blob(src_key), client.bucket(dst_bucket), dst_key, retry=retry_policy())
        return
    source, target = Path(src).expanduser(), Path(dst).expanduser()
    with atomic_file(target, tmp_dir) as tmp:
        try:
            os.link(source, tmp)
        except FileNotFoundError:
            raise
        except OSError:
            shutil.copyfile(source, tmp)


def list_all(uri: str) -> list[str]:
    """Every object/file name below folder/prefix `uri` (hidden ones included), relative, sorted;
    [] when there is nothing there. Local: files, symlinks and empty folders (as "name/")."""
    if is_gcs(uri):
        bucket_name, name = split_gcs(uri)
        prefix = _gcs_key(name, "")
        with gcs_errors(f"listing {uri}"):
            return sorted(b.name[len(prefix):] for b in gcs_client().list_blobs(bucket_name, prefix=prefix,
                                                                                 retry=retry_policy()))
    root = Path(uri).expanduser()
    if not root.is_dir():
        return []
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink() or p.is_file():
            out.append(rel)
        elif p.is_dir() and not any(p.iterdir()):
            out.append(rel + "/")
    return sorted(out)


def bucket_exists(uri: str) -> bool:
    bucket_name, _ = split_gcs(uri)
    with gcs_errors(f"bucket gs://{bucket_name}"):
        return gcs_client().bucket(bucket_name).exists(retry=retry_policy())


def _tmp_name(target: Path, tmp_dir: Path | None) -> Path:
    """A temp name on the target's filesystem: in `tmp_dir` (the job's own bookkeeping folder, so a
    crash leaves no stray names among the user's files) or beside the target."""
    if tmp_dir is None:
        return target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tmp_dir / f"{target.name}.tmp-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_file(path: Path, tmp_dir: Path | None = None) -> Iterator[Path]:
    """The one way the job writes a local file that others may read: yields a temp path on the same
    filesystem; when the block ends without an error it is renamed onto `path` (a reader sees the old
    file or the new one, never half of one), and on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, tmp_dir)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write, fsync, rename (atomic_file); then fsync the folder so the rename survives a crash."""
    with atomic_file(path, tmp_dir) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    with contextlib.suppress(OSError):  # the rename itself survives a crash (not every FS allows it)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def local_lock(path: Path, timeout: float, what: str):
    """An exclusive flock on `path` (created if missing), waited for up to `timeout` seconds.

    The kernel drops the lock with the process, so a SIGKILLed holder never blocks anyone (an O_EXCL
    lock file would stay behind). Needs a local disk or NFS; gcsfuse mounts do not support flock.
    """
    import errno
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise TransientError(f"cannot lock {path} ({exc.strerror}); retry later") from None
                if time.monotonic() > deadline:
                    raise TransientError(f"{what}: {path} stayed locked by another process for {timeout:g} s; "
                                         "retry later") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing drops the lock


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
    """The content at `uri`, or None when there is no such file/object (checked like read_object)."""
    return read_object(uri)[0]


def put_files(local: Path, names: list[str], uri: str, tmp_dir: Path | None = None) -> None:
    """Copy local/<name> to uri/<name> for each name (locally through a temp file renamed into place)."""
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
        with atomic_file(safe_local_path(dest, name), tmp_dir) as tmp:
            shutil.copyfile(local / name, tmp)


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
