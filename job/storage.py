"""Storage: one small interface over a local folder and a gs:// prefix.

All bucket I/O goes through google-cloud-storage (never TensorFlow's gs:// filesystem, which only
talks to Google's real endpoint), so every path is testable against an emulator via
STORAGE_EMULATOR_HOST. The rest of the job reads and writes local files; this module moves them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from job.errors import BadInputError, DataError, OutputExistsError, TransientError

MANIFEST = "manifest.json"


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


@contextlib.contextmanager
def gcs_errors(what: str) -> Iterator[None]:
    """Turn client exceptions into the job's typed errors, with one line that names the object."""
    from google.api_core import exceptions as gexc
    import requests

    try:
        yield
    except gexc.NotFound as exc:
        raise DataError(f"{what}: not found ({_first_line(exc)}); check the bucket and path") from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise BadInputError(f"{what}: access denied ({_first_line(exc)}); grant the job's service account access") from None
    except (gexc.TooManyRequests, gexc.ServerError, gexc.RetryError, requests.ConnectionError,
            requests.Timeout, ConnectionError, TimeoutError) as exc:
        raise TransientError(f"{what}: storage unavailable ({_first_line(exc)}); retry later") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Listing and fetching inputs

@dataclass(frozen=True)
class RemoteFile:
    uri: str  # full location, for messages
    relative: str  # name below the listed prefix
    size: int


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
            blob = bucket.get_blob(name)
            if blob is not None:
                return [RemoteFile(uri, name.rsplit("/", 1)[-1], blob.size or 0)]
        prefix = name.rstrip("/") + "/" if name else ""
        blobs = list(client.list_blobs(bucket_name, prefix=prefix))
    out = [RemoteFile(f"gs://{bucket_name}/{b.name}", b.name[len(prefix):], b.size or 0)
           for b in blobs if not b.name.endswith("/")]
    if not out:
        raise DataError(f"{uri} does not exist or is empty: check the path")
    return sorted(out, key=lambda f: f.relative)


def fetch(files: list[RemoteFile], base_uri: str, dest: Path) -> list[Path]:
    """Bring `files` (listed below `base_uri`) to `dest`, keeping their relative names.

    Local files are used in place (no copy); gs:// objects are downloaded in parallel, each
    checked against its CRC32C by the client.
    """
    if not is_gcs(base_uri):
        return [Path(f.uri) for f in files]
    from google.cloud.storage import transfer_manager

    bucket_name, _ = split_gcs(base_uri)
    targets = [safe_local_path(dest, f.relative) for f in files]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    bucket = gcs_client().bucket(bucket_name)
    pairs = [(bucket.blob(split_gcs(f.uri)[1]), str(t)) for f, t in zip(files, targets)]
    with gcs_errors(f"downloading {base_uri}"):
        results = transfer_manager.download_many(pairs, max_workers=8, worker_type="thread",
                                                 raise_exception=True)
    for r in results:
        if isinstance(r, Exception):
            raise r
    return targets


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
            blob = gcs_client().bucket(bucket_name).get_blob(_gcs_key(name, MANIFEST))
            return json.loads(blob.download_as_bytes()) if blob is not None else None
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
        if not bucket.exists():
            raise DataError(f"bucket gs://{bucket_name} does not exist: create it or fix --output")
        existing = manifest_blob.exists()
        if existing and not overwrite:
            raise OutputExistsError(f"{output_uri} already holds a completed run: pass --overwrite or choose another --output")
        old_names = set()
        if existing:
            # Withdraw the old run first: a reader must never see its manifest over new files.
            old_names = {b.name for b in gcs_client().list_blobs(bucket_name, prefix=_gcs_key(prefix, ""))}
            manifest_blob.delete()
        t0 = time.perf_counter()
        names = [p.relative_to(staging).as_posix() for p in sorted(staging.rglob("*")) if p.is_file()]
        _upload_many(bucket, staging, prefix, names)
        if finalize:
            _upload_many(bucket, staging, prefix, finalize(time.perf_counter() - t0))
        manifest = _write_manifest(staging)
        try:
            manifest_blob.upload_from_filename(str(staging / MANIFEST), content_type="application/json",
                                               if_generation_match=0)
        except gexc.PreconditionFailed:
            raise OutputExistsError(f"another run published to {output_uri} at the same time; "
                                    "choose another --output") from None
        stale = old_names - {_gcs_key(prefix, n) for n in names} - {manifest_blob.name}
        for name in stale:
            with contextlib.suppress(gexc.NotFound):
                bucket.blob(name).delete()
    return manifest


def _upload_many(bucket, root: Path, prefix: str, names: list[str]) -> None:
    from google.cloud.storage import transfer_manager

    pairs = [(str(root / n), bucket.blob(_gcs_key(prefix, n))) for n in names]
    results = transfer_manager.upload_many(pairs, max_workers=8, worker_type="thread", raise_exception=True)
    for r in results:
        if isinstance(r, Exception):
            raise r
