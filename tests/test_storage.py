"""gs:// storage under faults: a real fake-gcs-server behind a fault-injecting proxy (tests/faultproxy.py).

Retries with back-off on every call, integrity checks on every download, "storage down" as one
TransientError, create-only manifests (one winner of a race, our own earlier attempt is not a rival),
refusal of object names that escape the destination, and one whole job through a faulty network.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import FAST, run_job
from faultproxy import FaultProxy
from demo import emulator
from job import publish, storage
from job.errors import ConfigError, DataError, OutputExistsError, TransientError

TRANSIENT = (503, 429, 500)
IDENT = publish.Identity("test-run", "fingerprint-of-test-run")


def manifest_upload(prefix: str = "run") -> bytes:
    """What only the upload of <prefix>/manifest.json carries: its name in the multipart body."""
    return f'"name": "{prefix}/manifest.json"'.encode()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    """Real back-off shape, short waits: the suite must stay fast."""
    monkeypatch.setattr(storage, "RETRY_DELAY", {"initial": 0.01, "maximum": 0.2, "multiplier": 2.0})
    monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", "20")


def use(monkeypatch, url: str) -> None:
    """Point the job's client at `url` (the emulator itself or a proxy in front of it)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    storage.gcs_client.cache_clear()


@pytest.fixture
def proxy(gcs, gcs_server, monkeypatch):
    with FaultProxy(gcs_server.url, seed=1234) as p:
        use(monkeypatch, p.url)
        yield p


@pytest.fixture
def bucket(gcs) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(name)
    return name


def write_tree(root: Path, seed: int = 0, big: bool = True) -> Path:
    """Files of every kind a run holds: nested, empty, binary, one over 8 MiB (a resumable upload)."""
    rng = random.Random(seed)
    files = {
        "metrics.json": json.dumps({"seed": seed, "x": list(range(50))}).encode(),
        "empty.txt": b"",
        "hf_model/config.json": json.dumps({"id2label": {"0": "neg", "1": "pos"}, "seed": seed}).encode(),
        "hf_model/tf_model.h5": rng.randbytes(300_000),
        "saved_model/variables/variables.data-00000-of-00001": rng.randbytes(1_000_003),
        "saved_model/saved_model.pb": rng.randbytes(20_000),
    }
    if big:
        files["saved_model/big.bin"] = rng.randbytes(9 << 20)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def remote_digests(gcs, bucket: str, prefix: str) -> dict[str, str]:
    return {b.name[len(prefix):]: hashlib.sha256(b.download_as_bytes()).hexdigest()
            for b in gcs.list_blobs(bucket, prefix=prefix)}


def report(label: str, proxy: FaultProxy) -> None:
    by = {}
    for s in proxy.log:
        key = s.action if s.action == "forward" else f"{s.action}:{s.status}"
        by[key] = by.get(key, 0) + 1
    print(f"\n[{label}] {len(proxy.log)} requests, {proxy.faults()} faults: {dict(sorted(by.items()))}")


# --------------------------------------------------------------------------------------------
# Retries and integrity under faults

def test_fetch_and_publish_through_30_percent_faults_are_byte_identical(gcs, gcs_server, bucket, proxy,
                                                                        monkeypatch, tmp_path):
    source = write_tree(tmp_path / "source")
    emulator.upload_tree(gcs, source, bucket, "in")

    # The reference: no proxy.
    use(monkeypatch, gcs_server.url)
    clean = storage.fetch(storage.list_files(f"gs://{bucket}/in/"), f"gs://{bucket}/in/", tmp_path / "clean")
    assert len(clean) == 7 == len(digests(source))
    shutil.copytree(source, tmp_path / "stage-clean")
    publish.publish(tmp_path / "stage-clean", f"gs://{bucket}/clean", IDENT, overwrite=False)

    use(monkeypatch, proxy.url)
    proxy.add("status", statuses=TRANSIENT, fraction=0.3)
    t0 = time.monotonic()
    files = storage.list_files(f"gs://{bucket}/in/")
    storage.fetch(files, f"gs://{bucket}/in/", tmp_path / "faulty")
    shutil.copytree(source, tmp_path / "stage-faulty")
    manifest = publish.publish(tmp_path / "stage-faulty", f"gs://{bucket}/faulty", IDENT, overwrite=False)
    seconds = time.monotonic() - t0
    report(f"30% faults, fetch+publish in {seconds:.1f} s", proxy)
    assert proxy.faults() >= 10 and {s.status for s in proxy.log if s.action == "status"} == set(TRANSIENT)
    assert len(proxy.log) >= 30  # list, gets, downloads, uploads, manifest: every kind of call went through

    expected = digests(source)
    assert digests(tmp_path / "clean") == expected == digests(tmp_path / "faulty")
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == expected
    published = remote_digests(gcs, bucket, "faulty/")
    clean_manifest = publish.read_manifest(f"gs://{bucket}/clean")[0]
    assert clean_manifest["files"] == manifest["files"]  # same files, sizes and sha256 (attempt ids differ)
    published.pop("manifest.json")
    assert published == expected


def test_cut_connections_and_lost_answers_are_survived(gcs, bucket, proxy, tmp_path):
    """Connections cut mid-answer (downloads resume with a Range request, JSON calls are redone) and
    uploads whose answer is lost after the server stored them (the retry simply stores them again)."""
    source = write_tree(tmp_path / "source")
    emulator.upload_tree(gcs, source, bucket, "in")
    proxy.add("cut", fraction=0.25, limit=12)
    proxy.add("lost", method="POST", path="/upload/", fraction=0.3, limit=4)
    proxy.add("reset", fraction=0.1, limit=4)
    storage.fetch(storage.list_files(f"gs://{bucket}/in/"), f"gs://{bucket}/in/", tmp_path / "got")
    manifest = publish.publish(write_tree(tmp_path / "stage"), f"gs://{bucket}/out", IDENT, overwrite=False)
    report("cuts/lost/resets", proxy)
    assert sum(s.action == "cut" for s in proxy.log) >= 3 and proxy.faults() >= 6
    assert digests(tmp_path / "got") == digests(source)
    assert {k: v for k, v in remote_digests(gcs, bucket, "out/").items() if k != "manifest.json"} == {
        f["path"]: f["sha256"] for f in manifest["files"]} == digests(source)


def test_corrupt_download_is_detected_and_downloaded_again(gcs, bucket, proxy, tmp_path):
    source = write_tree(tmp_path / "source", big=False)
    emulator.upload_tree(gcs, source, bucket, "in")
    files = storage.list_files(f"gs://{bucket}/in/")
    # The first download of every object comes back with one byte flipped.
    proxy.add("corrupt", query="alt=media", first=len(files))
    storage.fetch(files, f"gs://{bucket}/in/", tmp_path / "got")
    report("corrupt first download of each", proxy)
    downloads = [s for s in proxy.log if "alt=media" in s.query]
    assert sum(s.action == "corrupt" for s in downloads) == len(files)
    damaged = sum(1 for f in files if f.size)  # an empty body has no byte to flip
    assert damaged == 5 and len(downloads) == len(files) + damaged
    assert digests(tmp_path / "got") == digests(source)


def test_corrupt_resumed_download_is_caught_by_our_crc32c_check(gcs, bucket, proxy, tmp_path):
    """A download cut mid-way resumes with a ranged (206) request, which the client does not checksum:
    corrupt that part, and only the check against the listed CRC32C notices."""
    data = os.urandom(3 << 20)
    gcs.bucket(bucket).blob("in/weights.bin").upload_from_string(data)
    proxy.add("cut", path="weights.bin", query="alt=media", first=1)
    proxy.add("corrupt", path="weights.bin", query="generation=", first=1)
    storage.fetch(storage.list_files(f"gs://{bucket}/in/"), f"gs://{bucket}/in/", tmp_path / "got")
    report("cut + corrupt 206", proxy)
    assert [s.action for s in proxy.log if "alt=media" in s.query] == ["cut", "corrupt", "forward"]
    assert (tmp_path / "got/weights.bin").read_bytes() == data


def test_always_corrupt_download_is_a_transient_error_and_leaves_no_file(gcs, bucket, proxy, tmp_path):
    gcs.bucket(bucket).blob("in/a.bin").upload_from_string(os.urandom(5000))
    files = storage.list_files(f"gs://{bucket}/in/")
    proxy.add("corrupt", query="alt=media")
    with pytest.raises(TransientError, match=r"a\.bin failed its integrity check 3 times") as err:
        storage.fetch(files, f"gs://{bucket}/in/", tmp_path / "got")
    assert "\n" not in str(err.value)
    assert sum("alt=media" in s.query for s in proxy.log) == storage.DOWNLOAD_ATTEMPTS
    assert not (tmp_path / "got/a.bin").exists()


def test_small_reads_check_integrity_too(gcs, bucket, proxy):
    """read_bytes / read_manifest: a corrupt answer is read again; one that stays corrupt is transient."""
    gcs.bucket(bucket).blob("run/manifest.json").upload_from_string(b'{"complete": true, "files": []}')
    proxy.add("corrupt", query="alt=media", first=1)
    assert publish.read_manifest(f"gs://{bucket}/run")[0] == {"complete": True, "files": []}
    proxy.add("corrupt", query="alt=media")
    with pytest.raises(TransientError, match="integrity check"):
        storage.read_bytes(f"gs://{bucket}/run/manifest.json")


# --------------------------------------------------------------------------------------------
# Storage down

def test_storage_unreachable_is_transient_within_the_retry_budget(gcs, bucket, monkeypatch, tmp_path):
    from demo import emulator as em

    monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", "2")
    use(monkeypatch, f"http://127.0.0.1:{em.free_port()}")  # nobody listens: connection refused
    t0 = time.monotonic()
    with pytest.raises(TransientError) as err:
        storage.list_files(f"gs://{bucket}/in/")
    seconds = time.monotonic() - t0
    print(f"\n[connection refused] TransientError after {seconds:.2f} s: {err.value}")
    assert 1.0 <= seconds < 30
    assert "\n" not in str(err.value) and "storage unavailable" in str(err.value)


def test_storage_down_during_publish_publishes_nothing(gcs, bucket, proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", "2")
    stage = write_tree(tmp_path / "stage", big=False)
    # Up for the checks, then every upload gets 503 for ever.
    proxy.add("status", statuses=(503,), path="/upload/")
    t0 = time.monotonic()
    with pytest.raises(TransientError) as err:
        publish.publish(stage, f"gs://{bucket}/run", IDENT, overwrite=False)
    seconds = time.monotonic() - t0
    report(f"uploads down: TransientError after {seconds:.2f} s", proxy)
    assert seconds < 30 and "\n" not in str(err.value)
    assert str(err.value).startswith(f"writing gs://{bucket}/run/.finetune-job/claim.json: storage unavailable")
    assert sum(s.status == 503 for s in proxy.log) >= 5  # it did retry
    assert not gcs.bucket(bucket).blob("run/manifest.json").exists()


def test_manifest_upload_down_publishes_nothing(gcs, bucket, proxy, monkeypatch, tmp_path):
    """Every file uploaded, then the manifest's upload fails until the retries run out: nothing is
    published, and the retry (same run) publishes at once - its own earlier claim does not block it."""
    monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", "2")
    rule = proxy.add("status", statuses=(503, 500), body=manifest_upload())
    with pytest.raises(TransientError):
        publish.publish(write_tree(tmp_path / "stage", big=False), f"gs://{bucket}/run", IDENT, overwrite=False)
    assert rule.fired >= 3  # the fault hit the manifest's upload, again and again
    names = {b.name for b in gcs.list_blobs(bucket, prefix="run/")}
    assert "run/manifest.json" not in names and publish.read_manifest(f"gs://{bucket}/run")[0] is None
    assert any("/attempts/" in n for n in names)  # the files were uploaded (under the attempt's own names)
    proxy.clear()
    t0 = time.monotonic()
    manifest = publish.publish(write_tree(tmp_path / "stage2", big=False), f"gs://{bucket}/run", IDENT, overwrite=False)
    assert time.monotonic() - t0 < 15
    assert publish.read_manifest(f"gs://{bucket}/run")[0] == manifest
    assert {b.name for b in gcs.list_blobs(bucket, prefix="run/")} == {f"run/{f['path']}" for f in manifest["files"]} | {
        "run/manifest.json"}  # the dead attempt's files and claim are gone


def test_fetch_with_downloads_down_is_transient(gcs, bucket, proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", "2")
    gcs.bucket(bucket).blob("in/a.txt").upload_from_string(b"abc")
    files = storage.list_files(f"gs://{bucket}/in/")
    proxy.add("status", statuses=(502, 504), query="alt=media")
    t0 = time.monotonic()
    with pytest.raises(TransientError, match=f"downloading gs://{bucket}/in/: storage unavailable"):
        storage.fetch(files, f"gs://{bucket}/in/", tmp_path / "got")
    assert time.monotonic() - t0 < 30


def test_retry_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("FT_STORAGE_RETRY_SECONDS")
    assert storage.retry_seconds() == 120
    monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", "7.5")
    assert storage.retry_seconds() == 7.5 and storage.retry_policy().timeout == 7.5
    for bad in ("soon", "-1", "inf"):
        monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", bad)
        with pytest.raises(ConfigError, match="FT_STORAGE_RETRY_SECONDS"):
            storage.retry_seconds()


# --------------------------------------------------------------------------------------------
# Create-only manifest: one winner, and our own earlier attempt is no rival

def test_two_publishes_racing_for_one_output_have_exactly_one_winner(gcs, bucket, monkeypatch, tmp_path):
    stages = [write_tree(tmp_path / f"stage{i}", seed=i, big=False) for i in range(2)]
    expected = [digests(s) for s in stages]
    outcomes: list[object] = [None, None]
    start = threading.Barrier(2)

    def run(i):
        start.wait()
        try:
            outcomes[i] = publish.publish(stages[i], f"gs://{bucket}/run", publish.Identity(f"run{i}", f"fp{i}"), overwrite=False)
        except Exception as exc:  # noqa: BLE001 - the outcome is what we check
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [i for i, o in enumerate(outcomes) if isinstance(o, dict)]
    losers = [o for o in outcomes if isinstance(o, OutputExistsError)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    published = json.loads(gcs.bucket(bucket).blob("run/manifest.json").download_as_bytes())
    assert {f["path"]: f["sha256"] for f in published["files"]} == expected[winners[0]]


def test_race_loser_does_not_overwrite_the_winners_files(gcs, bucket, tmp_path):
    stages = [write_tree(tmp_path / f"stage{i}", seed=10 + i, big=False) for i in range(2)]
    start = threading.Barrier(2)

    def run(i):
        start.wait()
        with contextlib.suppress(OutputExistsError):
            publish.publish(stages[i], f"gs://{bucket}/run", publish.Identity(f"run{i}", f"fp{i}"), overwrite=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    published = json.loads(gcs.bucket(bucket).blob("run/manifest.json").download_as_bytes())
    assert {k: v for k, v in remote_digests(gcs, bucket, "run/").items() if k != "manifest.json"} == {
        f["path"]: f["sha256"] for f in published["files"]}


def test_injected_412_on_the_manifest_is_another_run_winning(gcs, bucket, proxy, tmp_path):
    """The commit's compare-and-swap refused (as when a stalled claim holder finds another run
    committed): this attempt loses, removes its own copies, and publishes nothing."""
    rule = proxy.add("status", statuses=(412,), body=manifest_upload(), first=1)
    with pytest.raises(OutputExistsError, match=f"another run published to gs://{bucket}/run at the same time"):
        publish.publish(write_tree(tmp_path / "stage", big=False), f"gs://{bucket}/run", IDENT, overwrite=False)
    assert rule.fired == 1
    assert not gcs.bucket(bucket).blob("run/manifest.json").exists()
    assert not [b.name for b in gcs.list_blobs(bucket, prefix="run/") if "/attempts/" in b.name]


def test_412_from_our_own_manifest_is_success(gcs, bucket, proxy, tmp_path):
    """The manifest upload reaches the server, but the client hears 412: the manifest there is ours."""
    rule = proxy.add("after", statuses=(412,), body=manifest_upload(), first=1)
    manifest = publish.publish(write_tree(tmp_path / "stage", big=False), f"gs://{bucket}/run", IDENT, overwrite=False)
    assert rule.fired == 1
    assert json.loads(gcs.bucket(bucket).blob("run/manifest.json").download_as_bytes()) == manifest


def test_lost_answer_then_retry_412_is_success(gcs, bucket, proxy, tmp_path):
    """The realistic path: the answer to the stored manifest is lost, the client's retry gets a real
    412 from the server (the precondition no longer holds), and that 412 is our own manifest."""
    rule = proxy.add("lost", body=manifest_upload(), first=1)
    manifest = publish.publish(write_tree(tmp_path / "stage", big=False), f"gs://{bucket}/run", IDENT, overwrite=False)
    assert rule.fired == 1 and rule.matched >= 2  # lost once, then the retry went through to the server
    assert [(s.action, s.status) for s in proxy.log if s.action == "lost"] == [("lost", None)]
    assert json.loads(gcs.bucket(bucket).blob("run/manifest.json").download_as_bytes()) == manifest


def test_manifest_stored_but_retries_exhausted_is_success(gcs, bucket, proxy, monkeypatch, tmp_path):
    """Every answer to the manifest's uploads is lost though each first attempt was stored: one last
    look finds our manifest, so the run counts as published (exit 0, not 75 then 4 on the rerun)."""
    monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", "1")
    rule = proxy.add("after", statuses=(503,), body=manifest_upload())
    manifest = publish.publish(write_tree(tmp_path / "stage", big=False), f"gs://{bucket}/run", IDENT, overwrite=False)
    assert rule.fired >= 2  # the commit and the final rewrite both heard only 503s
    assert json.loads(gcs.bucket(bucket).blob("run/manifest.json").download_as_bytes()) == manifest


# --------------------------------------------------------------------------------------------
# Names, buckets, overwrite

def test_safe_local_path_refuses_names_that_escape(tmp_path):
    root = tmp_path / "dest"
    root.mkdir()
    assert storage.safe_local_path(root, "a/b.txt") == (root / "a/b.txt").resolve()
    for bad in ("../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", "", "a\\..\\..\\x"):
        with pytest.raises(DataError, match="refusing object name"):
            storage.safe_local_path(root, bad)


def test_object_name_escaping_the_prefix_is_refused_before_any_download(gcs, bucket, proxy, tmp_path):
    b = gcs.bucket(bucket)
    b.blob("in/ok.txt").upload_from_string(b"fine")
    b.blob("in/x/../../evil").upload_from_string(b"pwned")
    files = storage.list_files(f"gs://{bucket}/in/")
    assert "x/../../evil" in {f.relative for f in files}
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(DataError, match=r"refusing object name 'x/\.\./\.\./evil'"):
        storage.fetch(files, f"gs://{bucket}/in/", dest)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [s for s in proxy.log if "alt=media" in s.query]


def test_publish_to_a_missing_bucket_is_bad_input(gcs, proxy, tmp_path):
    with pytest.raises(DataError, match="bucket gs://no-such-bucket-here does not exist"):
        publish.publish(write_tree(tmp_path / "stage", big=False), "gs://no-such-bucket-here/run", IDENT, overwrite=False)


def test_overwrite_replaces_a_run_and_removes_its_stale_files(gcs, bucket, proxy, tmp_path):
    proxy.add("status", statuses=TRANSIENT, fraction=0.2)
    old = write_tree(tmp_path / "old", seed=1, big=False)
    (old / "hf_model/old_only.txt").write_text("from the old run")
    publish.publish(old, f"gs://{bucket}/run", IDENT, overwrite=False)
    generations = {b.name: b.generation for b in gcs.list_blobs(bucket, prefix="run/")}
    assert "run/hf_model/old_only.txt" in generations

    new = write_tree(tmp_path / "new", seed=2, big=False)
    expected = digests(new)
    other = publish.Identity("other-run", "other-settings")
    with pytest.raises(OutputExistsError, match="already holds a completed run"):
        publish.publish(new, f"gs://{bucket}/run", other, overwrite=False)
    assert {b.name: b.generation for b in gcs.list_blobs(bucket, prefix="run/")} == generations

    manifest = publish.publish(new, f"gs://{bucket}/run", other, overwrite=True)
    report("overwrite with 20% faults", proxy)
    published = remote_digests(gcs, bucket, "run/")
    assert "hf_model/old_only.txt" not in published
    assert {k: v for k, v in published.items() if k != "manifest.json"} == expected == {
        f["path"]: f["sha256"] for f in manifest["files"]}
    assert publish.read_manifest(f"gs://{bucket}/run")[0] == manifest


# --------------------------------------------------------------------------------------------
# The whole job through a faulty network (the one full run of this file)

def test_bucket_to_bucket_job_through_20_percent_faults(gcs, bucket, proxy, tiny_checkpoints, toy_data):
    emulator.upload_tree(gcs, toy_data, bucket, "datasets/toy")
    emulator.upload_tree(gcs, tiny_checkpoints["pt"], bucket, "models/tiny")
    proxy.add("cut", query="alt=media", first=2)
    proxy.add("status", statuses=TRANSIENT, fraction=0.2)
    t0 = time.monotonic()
    proc = run_job(["train", "--data", f"gs://{bucket}/datasets/toy/", "--model", f"gs://{bucket}/models/tiny",
                    "--output", f"gs://{bucket}/runs/r1", *FAST, "--epochs", "1"],
                   env={"STORAGE_EMULATOR_HOST": proxy.url, "FT_STORAGE_RETRY_SECONDS": "60"})
    report(f"full job, exit {proc.returncode} in {time.monotonic() - t0:.0f} s", proxy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proxy.faults() >= 5 and sum(s.action == "cut" for s in proxy.log) == 2
    blobs = {b.name: b for b in gcs.list_blobs(bucket, prefix="runs/r1/")}
    manifest = json.loads(blobs["runs/r1/manifest.json"].download_as_bytes())
    assert manifest["complete"] is True
    assert {f"runs/r1/{f['path']}" for f in manifest["files"]} | {"runs/r1/manifest.json"} == set(blobs)
    assert {"metrics.json", "saved_model/saved_model.pb", "hf_model/tf_model.h5"} <= {f["path"] for f in manifest["files"]}
    for f in manifest["files"]:
        data = blobs[f"runs/r1/{f['path']}"].download_as_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]


def test_tf_readable_links_wildcard_folders_and_refuses_when_the_temp_folder_has_them_too(tmp_path, monkeypatch):
    import tempfile

    plain = tmp_path / "plain"
    with storage.tf_readable(plain) as p:
        assert p == plain
    odd = tmp_path / "runs[2]"
    odd.mkdir()
    (odd / "f").write_text("x")
    with storage.tf_readable(odd) as p:
        assert not glob.has_magic(str(p)) and (p / "f").read_text() == "x"
        link = p
    assert not link.exists() and not link.parent.exists(), "the link and its folder are removed"
    assert (odd / "f").read_text() == "x"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp*"))
    with pytest.raises(ConfigError, match="TMPDIR"):
        with storage.tf_readable(odd):
            pass
