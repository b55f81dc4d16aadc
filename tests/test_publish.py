"""Publishing under races, crashes and stalls, on a real fake-gcs-server and real folders.

What must hold (README, "Publishing guarantees"):
P1 a reader that follows manifest.json sees a complete run whose files match their sha256, under any
   interleaving of 4 publishers and a SIGKILL at any step;
P2 nothing the job did not write is deleted or replaced;
P3 an overwrite keeps the old run readable until the new one is complete;
P4 the same command after a crash converges (never blocked by its own earlier attempt);
P6 readers check the manifest and every file's sha256.
Publishers stop themselves at each step of job.publish.STEPS (a hook), in threads or in processes
that SIGKILL or SIGSTOP themselves there (tests/publisher.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from job import champion, publish, storage
from job.errors import DataError, OutputExistsError, TransientError

HERE = Path(__file__).resolve().parent
STEPS = publish.STEPS


@pytest.fixture(autouse=True)
def short_leases(monkeypatch):
    monkeypatch.setenv("FT_PUBLISH_LEASE_SECONDS", "1")
    monkeypatch.setenv("FT_STORAGE_RETRY_SECONDS", "10")
    monkeypatch.setattr(storage, "RETRY_DELAY", {"initial": 0.01, "maximum": 0.2, "multiplier": 2.0})


@pytest.fixture(params=["local", "gs"])
def place(request, tmp_path):
    """(output uri, a function listing everything around it) on a folder or a bucket prefix."""
    if request.param == "local":
        (tmp_path / "neighbour.txt").write_text("not the job's")
        return str(tmp_path / "out")
    gcs = request.getfixturevalue("gcs")
    bucket = f"p-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    gcs.bucket(bucket).blob("neighbour.txt").upload_from_string(b"not the job's")
    gcs.bucket(bucket).blob("outer/other-team/champion.json").upload_from_string(b"{}")
    return f"gs://{bucket}/outer/out"


def stage(root: Path, seed: int) -> Path:
    files = {"metrics.json": json.dumps({"seed": seed}).encode(),
             "hf_model/config.json": json.dumps({"seed": seed}).encode(),
             "hf_model/tf_model.h5": os.urandom(20_000 + seed),
             "saved_model/saved_model.pb": os.urandom(5_000),
             f"only-in-{seed}.txt": b"x" * seed}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith(".") and p.name != "manifest.json"}


def visible(output: str, scratch: Path) -> dict[str, str] | None:
    """What a reader sees: the verified files of the run at `output`, or None when there is none."""
    if publish.read_manifest(output)[0] is None:
        return None
    dest = scratch / uuid.uuid4().hex
    manifest, folder = publish.open_run(output, dest)
    got = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert digests(folder) == got  # every file there, matching its sha256
    return got


def around(output: str) -> dict[str, str]:
    """Digests of everything next to the output (the job must never touch it)."""
    if storage.is_gcs(output):
        bucket, prefix = storage.split_gcs(output)
        return {b.name: b.md5_hash for b in storage.gcs_client().list_blobs(bucket)
                if not b.name.startswith(prefix + "/")}
    parent = Path(output).parent
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in parent.iterdir() if p.is_file()}


def leftovers(output: str) -> list[str]:
    """Names at the output beyond manifest, files and the (empty) local lock."""
    manifest, _ = publish.read_manifest(output)
    named = {f["path"] for f in manifest["files"]} | {publish.MANIFEST, publish.LOCK}
    return [n for n in storage.list_all(output) if n not in named and not n.endswith("/")]


def run_publisher(staging: Path, output: str, run_id: str, fp: str, overwrite=False, at=None, sig="KILL",
                  wait=True):
    cmd = [sys.executable, str(HERE / "publisher.py"), str(staging), output, run_id, fp]
    cmd += ["--overwrite"] if overwrite else []
    cmd += ["--at", at, "--signal", sig] if at else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    if wait:
        proc.wait(60)
    return proc


# --------------------------------------------------------------------------------------------
# P1/P3/P4: a SIGKILL at every step of an overwrite, then the same command again

@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_step_of_an_overwrite_leaves_old_or_new_and_the_rerun_converges(place, step, tmp_path):
    output = place
    old, new = stage(tmp_path / "old", 1), stage(tmp_path / "new", 2)
    publish.publish(old, output, publish.Identity("old", "fp-old"), overwrite=False)
    outside = around(output)

    proc = run_publisher(new, output, "new", "fp-new", overwrite=True, at=step)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    seen = visible(output, tmp_path / "read")
    committed = STEPS.index(step) >= STEPS.index("commit")
    assert seen == (digests(new) if committed else digests(old)), step  # P3: old or new, whole
    assert around(output) == outside  # P2

    t0 = time.monotonic()
    manifest = publish.publish(new, output, publish.Identity("new", "fp-new"), overwrite=True)  # the same command
    seconds = time.monotonic() - t0
    assert seconds < 10, f"the rerun waited {seconds:.1f} s for its own dead attempt's claim"  # P4
    assert visible(output, tmp_path / "read") == digests(new) == {f["path"]: f["sha256"] for f in manifest["files"]}
    assert leftovers(output) == []  # the dead attempt's copies, claim and the old run's files are gone
    assert around(output) == outside


@pytest.mark.parametrize("step", ["upload", "commit", "settle", "finalize"])
def test_a_rerun_without_overwrite_after_a_crash_finds_its_run_or_publishes_it(place, step, tmp_path):
    new = stage(tmp_path / "new", 3)
    proc = run_publisher(new, place, "r", "fp", at=step)
    assert proc.returncode == -signal.SIGKILL
    manifest = publish.publish(new, place, publish.Identity("r", "fp"), overwrite=False)  # exit 0, not 4
    assert visible(place, tmp_path / "read") == digests(new) == {f["path"]: f["sha256"] for f in manifest["files"]}
    assert leftovers(place) == []


def test_a_dead_claim_of_another_run_is_taken_over_after_its_lease(gcs, tmp_path, monkeypatch):
    bucket = f"p-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    output = f"gs://{bucket}/run"
    proc = run_publisher(stage(tmp_path / "a", 1), output, "a", "fp-a", at="upload")
    assert proc.returncode == -signal.SIGKILL
    assert gcs.bucket(bucket).blob("run/.finetune-job/claim.json").exists()  # left by the dead run
    t0 = time.monotonic()
    publish.publish(stage(tmp_path / "b", 2), output, publish.Identity("b", "fp-b"), overwrite=False)
    seconds = time.monotonic() - t0
    print(f"\n[dead claim] taken over after {seconds:.1f} s (lease 1 s)")
    assert 0.5 < seconds < 10
    assert visible(output, tmp_path / "read") == digests(tmp_path / "b") and leftovers(output) == []


# --------------------------------------------------------------------------------------------
# P1: four publishers, one paused at each step while the others try

@pytest.mark.parametrize("step", STEPS)
def test_four_publishers_with_one_paused_at_each_step(place, step, tmp_path):
    stages = [stage(tmp_path / f"s{i}", 10 + i) for i in range(4)]
    overwrite = [False, True, False, True]
    outcomes: list[object] = [None] * 4
    paused, resume = threading.Event(), threading.Event()

    def hook(s):
        if s == step:
            paused.set()
            resume.wait(30)

    def go(i, hook=None):
        try:
            outcomes[i] = publish.publish(stages[i], place, publish.Identity(f"r{i}", f"fp{i}"), overwrite[i],
                                          hook=hook)
        except Exception as exc:  # noqa: BLE001 - the outcome is what we check
            outcomes[i] = exc

    first = threading.Thread(target=go, args=(0, hook))
    first.start()
    assert paused.wait(30)
    others = [threading.Thread(target=go, args=(i,)) for i in (1, 2, 3)]
    for t in others:
        t.start()
    time.sleep(1.5)  # lease 1 s: a holder that did not renew would have lost its claim by now
    if step != "release":
        assert outcomes[1:] == [None, None, None]  # the live claim is respected: everyone waits
    seen = visible(place, tmp_path / "read")
    assert seen in ((None, digests(stages[0])) if step != "release" else [digests(x) for x in stages])
    resume.set()
    for t in [first, *others]:
        t.join(60)
    assert isinstance(outcomes[0], dict), outcomes[0]
    assert isinstance(outcomes[2], OutputExistsError)  # no --overwrite, and a run was there
    assert isinstance(outcomes[1], dict) and isinstance(outcomes[3], dict), outcomes
    final = visible(place, tmp_path / "read")
    assert final in (digests(stages[1]), digests(stages[3]))  # the last overwrite, whole
    assert leftovers(place) == []


# --------------------------------------------------------------------------------------------
# A holder stalled past its lease (SIGSTOP) cannot commit or settle over the run that took over

@pytest.mark.parametrize("step", ["upload", "commit"])
def test_a_stalled_publisher_cannot_overwrite_the_run_that_took_over(gcs, step, tmp_path):
    bucket = f"p-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    output = f"gs://{bucket}/run"
    a, b = stage(tmp_path / "a", 1), stage(tmp_path / "b", 2)
    proc = run_publisher(a, output, "a", "fp-a", at=step, sig="STOP", wait=False)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:  # wait until it has stopped itself
        state = Path(f"/proc/{proc.pid}/stat").read_text().split()[2]
        if state == "T":
            break
        time.sleep(0.05)
    try:
        publish.publish(b, output, publish.Identity("b", "fp-b"), overwrite=True)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err  # it noticed it had lost the claim, and stopped
    assert "taken over" in err
    assert visible(output, tmp_path / "read") == digests(b)
    assert leftovers(output) == []


# --------------------------------------------------------------------------------------------
# P2: foreign files are never touched; --overwrite of anything but a run of this job is refused

def test_a_bucket_root_with_other_objects_is_refused_and_left_as_it_was(gcs, tmp_path):
    bucket = f"p-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    for name in ("data/train.csv", "team-b/model.bin", "champion.json"):
        gcs.bucket(bucket).blob(name).upload_from_string(name.encode())
    before = {b.name: b.generation for b in gcs.list_blobs(bucket)}
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"holds 3 file\(s\) and no run of this job \(champion.json, "
                                                     r"data/train.csv, team-b/model.bin\)"):
            publish.publish(stage(tmp_path / "s", 1), f"gs://{bucket}", publish.Identity("r", "fp"), overwrite)
        with pytest.raises(OutputExistsError):
            publish.check_output(f"gs://{bucket}", publish.Identity("r", "fp"), overwrite)
    assert {b.name: b.generation for b in gcs.list_blobs(bucket)} == before


def test_an_empty_bucket_root_works_and_later_foreign_objects_block_overwrite(gcs, tmp_path):
    bucket = f"p-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    root = f"gs://{bucket}"
    publish.publish(stage(tmp_path / "a", 1), root, publish.Identity("a", "fp-a"), overwrite=False)
    publish.publish(stage(tmp_path / "b", 2), root, publish.Identity("b", "fp-b"), overwrite=True)
    assert visible(root, tmp_path / "r") == digests(tmp_path / "b") and leftovers(root) == []
    gcs.bucket(bucket).blob("notes/keep.txt").upload_from_string(b"mine")
    with pytest.raises(OutputExistsError, match=r"1 file\(s\) besides the run of this job there \(notes/keep.txt\)"):
        publish.publish(stage(tmp_path / "c", 3), root, publish.Identity("c", "fp-c"), overwrite=True)
    assert gcs.bucket(bucket).blob("notes/keep.txt").download_as_bytes() == b"mine"
    assert visible(root, tmp_path / "r") == digests(tmp_path / "b")


def test_local_overwrite_of_a_folder_the_job_did_not_write_is_refused(tmp_path):
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data/train.csv").write_text("text,label\na,1\n")
    (out / "notes.md").write_text("mine")
    before = digests(out)
    with pytest.raises(OutputExistsError, match=r"holds 2 file\(s\) and no run of this job \(data/train.csv, notes.md\)"):
        publish.publish(stage(tmp_path / "s", 1), str(out), publish.Identity("r", "fp"), overwrite=True)
    assert digests(out) == before and not (out / publish.BOOKKEEPING / "attempts").exists()


# --------------------------------------------------------------------------------------------
# P6: readers trust only a manifest and matching files; the champion must lie under its root

def test_readers_refuse_a_tampered_file_or_a_folder_without_manifest(place, tmp_path):
    publish.publish(stage(tmp_path / "s", 1), place, publish.Identity("r", "fp"), overwrite=False)
    target = storage.join(place, "hf_model/tf_model.h5")
    storage.write_object(target, b"tampered")
    with pytest.raises(DataError, match=r"hf_model/tf_model.h5 does not match the sha256 in its manifest.json"):
        publish.open_run(place, tmp_path / "read")
    storage.delete_object(storage.join(place, publish.MANIFEST))
    with pytest.raises(DataError, match="holds no manifest.json: it is not a published run"):
        publish.open_run(place, tmp_path / "read2")


def test_a_manifest_naming_files_outside_the_run_is_refused(tmp_path):
    out = tmp_path / "out"
    publish.publish(stage(tmp_path / "s", 1), str(out), publish.Identity("r", "fp"), overwrite=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][0]["object"] = "../neighbour.txt"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="escapes the run folder"):
        publish.open_run(str(out), tmp_path / "read")


@pytest.mark.parametrize("uri", ["gs://elsewhere/runs/x", "/etc", "{root}/../outside", "{root}", "", "{root}x/runs/y"])
def test_a_champion_pointing_outside_its_root_is_refused(tmp_path, uri):
    root = str(tmp_path / "root")
    with pytest.raises(DataError, match="which is not a folder below"):
        champion.run_of(root, {"uri": uri.format(root=root)})
    assert champion.run_of(root, {"uri": f"{root}/runs/r1"}) == f"{root}/runs/r1"
    assert champion.run_of("gs://b/r", {"uri": "gs://b/r/runs/x"}) == "gs://b/r/runs/x"
    with pytest.raises(DataError):
        champion.run_of("gs://b/r", {"uri": "gs://b/r/../x"})


def test_a_stalled_claim_holders_rivals_time_out_with_retry_later(gcs, tmp_path, monkeypatch):
    """A live holder that never finishes: a rival waits FT_PUBLISH_WAIT_SECONDS, then exits 75."""
    bucket = f"p-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    release = threading.Event()
    holder = threading.Thread(target=lambda: publish.publish(
        stage(tmp_path / "a", 1), f"gs://{bucket}/run", publish.Identity("a", "fp-a"), False,
        hook=lambda s: release.wait(30) if s == "upload" else None))
    holder.start()
    time.sleep(0.5)
    monkeypatch.setenv("FT_PUBLISH_WAIT_SECONDS", "2")
    t0 = time.monotonic()
    try:
        with pytest.raises(TransientError, match="has been publishing to .* for over 2 s; retry later"):
            publish.publish(stage(tmp_path / "b", 2), f"gs://{bucket}/run", publish.Identity("b", "fp-b"), True)
        assert 1.5 < time.monotonic() - t0 < 10
    finally:
        release.set()
        holder.join(30)
    assert visible(f"gs://{bucket}/run", tmp_path / "read") == digests(tmp_path / "a")


# --------------------------------------------------------------------------------------------
# Through the CLI: refused in the first seconds (P5), odd local outputs (P7), a full disk

def _tree(root: Path) -> dict[str, tuple[int, str]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["data inside output", "output inside data", "checkpoint dir inside output",
                                  "work dir inside output", "report dir inside output", "output not writable"])
def test_overlapping_or_unwritable_places_are_refused_before_training(case, tmp_path, tiny_checkpoints, toy_data):
    from conftest import FAST, run_job

    out = tmp_path / "out"
    data = toy_data
    extra: list[str] = []
    if case == "data inside output":
        (out / "data").mkdir(parents=True)
        for f in toy_data.iterdir():
            (out / "data" / f.name).write_bytes(f.read_bytes())
        data = out / "data"
    elif case == "output inside data":
        data = tmp_path / "data"
        data.mkdir()
        for f in toy_data.iterdir():
            (data / f.name).write_bytes(f.read_bytes())
        out = data / "runs" / "r1"
    elif case == "checkpoint dir inside output":
        extra = ["--checkpoint-dir", str(out / "ckpt")]
    elif case == "work dir inside output":
        extra = ["--work-dir", str(out / "scratch")]
    elif case == "report dir inside output":
        extra = ["--report-dir", str(out / "report-copy")]
    before = _tree(tmp_path)
    args = ["train", "--data", str(data), "--model", str(tiny_checkpoints["tf"]), "--output", str(out), *FAST,
            *extra]
    if case == "output not writable":
        # A read-only mount (root ignores permission bits, not a read-only filesystem): the parent of
        # the output is bind-mounted read-only in a private mount namespace.
        ro = tmp_path / "ro"
        ro.mkdir()
        before = _tree(tmp_path)
        full = ["unshare", "-rm", "sh", "-c", f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "
                f"{sys.executable} {HERE.parent / 'entrypoint.py'} train --data {data} --model "
                f"{tiny_checkpoints['tf']} --output {ro / 'out'} --epochs 1"]
        t0 = time.monotonic()
        proc = subprocess.run(full, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    else:
        t0 = time.monotonic()
        proc = run_job(args)
    seconds = time.monotonic() - t0
    lines = proc.stderr.strip().splitlines()
    print(f"\n[{case}] exit {proc.returncode} after {seconds:.1f} s: {lines[-1] if lines else ''}")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1
    assert "steps/epoch" not in proc.stderr and seconds < 60  # refused before any data or model was loaded
    assert _tree(tmp_path) == before  # nothing written, nothing touched


def test_a_mount_point_output_with_a_read_only_parent_publishes(tmp_path, tiny_checkpoints, toy_data):
    """The `make docker-run` layout: -v DIR:/mnt/local on a read-only root. The output folder is a
    mount point (it cannot be renamed) and nothing can be written beside it."""
    parent, real = tmp_path / "parent", tmp_path / "real"
    (parent / "out").mkdir(parents=True)
    real.mkdir()
    script = (f"mount --bind {parent} {parent} && mount -o remount,bind,ro {parent} && "
              f"mount --bind {real} {parent / 'out'} && exec {sys.executable} {HERE.parent / 'entrypoint.py'} "
              f"train --data {toy_data} --model {tiny_checkpoints['tf']} --output {parent / 'out'} "
              "--epochs 1 --per-replica-batch-size 16 --max-length 32")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest, folder = publish.open_run(str(real), tmp_path / "read")
    assert {"saved_model/saved_model.pb", "hf_model/config.json", "metrics.json"} <= {f["path"] for f in manifest["files"]}
    assert [p.name for p in parent.iterdir()] == ["out"]  # nothing beside it


def test_a_full_disk_at_the_output_is_exit_74_with_one_line_and_no_run(tmp_path, tiny_checkpoints, toy_data):
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {small} && exec {sys.executable} {HERE.parent / 'entrypoint.py'} "
              f"train --data {toy_data} --model {tiny_checkpoints['tf']} --output {small / 'out'} "
              "--epochs 1 --per-replica-batch-size 16 --max-length 32; ")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script + f"code=$?; ls -A {small}/out >&2 || true; "
                                                                  "exit $code"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    lines = proc.stderr.strip().splitlines()
    err = [line for line in lines if line.startswith("error: ")]
    print(f"\n[full disk] exit {proc.returncode}: {err}")
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert len(err) == 1 and "No space left on device" in err[0] and str(small) in err[0]
    assert "manifest.json" not in lines  # `ls -A` of the output after the run: no run was published


# --------------------------------------------------------------------------------------------
# Soak: four real CLI runs race for one gs:// output through a faulty network, a reader watching

def test_four_cli_runs_racing_through_faults_never_show_a_corrupt_run(gcs, gcs_server, tmp_path, tiny_checkpoints,
                                                                      toy_data):
    from conftest import FAST, ROOT
    from faultproxy import FaultProxy
    from demo import emulator

    bucket = f"soak-{uuid.uuid4().hex[:10]}"
    gcs.create_bucket(bucket)
    emulator.upload_tree(gcs, toy_data, bucket, "data")
    emulator.upload_tree(gcs, tiny_checkpoints["pt"], bucket, "model")
    output = f"gs://{bucket}/shared/run"
    reads = {"runs seen": 0, "no run yet": 0, "changed while read": 0, "corrupt": []}
    done = threading.Event()

    def reader():
        while not done.is_set():
            try:
                if visible(output, tmp_path / "reads") is None:
                    reads["no run yet"] += 1
                else:
                    reads["runs seen"] += 1
            except TransientError:
                reads["changed while read"] += 1
            except (DataError, AssertionError) as exc:  # a manifest that stayed put over bad files
                reads["corrupt"].append(str(exc))
            time.sleep(0.05)

    with FaultProxy(gcs_server.url, seed=7) as proxy:
        proxy.add("status", statuses=(503, 429, 500), fraction=0.1)
        proxy.add("cut", query="alt=media", fraction=0.05)
        watcher = threading.Thread(target=reader, daemon=True)
        watcher.start()
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "STORAGE_EMULATOR_HOST": proxy.url,
               "FT_STORAGE_RETRY_SECONDS": "60", "FT_PUBLISH_LEASE_SECONDS": "5"}
        procs = []
        for i in range(4):
            args = ["train", "--data", f"gs://{bucket}/data/", "--model", f"gs://{bucket}/model", "--output", output,
                    *FAST, "--epochs", "1", "--seed", str(i), "--run-id", f"r{i}"] + (["--overwrite"] if i % 2 else [])
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py"), *args], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [(p.wait(600), p.stderr.read()) for p in procs]
        done.set()
        watcher.join(30)
        faults = proxy.faults()
    codes = [code for code, _ in results]
    print(f"\n[soak] exit codes {codes}, {faults} injected faults, reader: "
          f"{ {k: (v if not isinstance(v, list) else len(v)) for k, v in reads.items()} }")
    assert reads["corrupt"] == []
    assert reads["runs seen"] >= 1 and faults >= 10
    assert codes[1] == codes[3] == 0, [err[-1500:] for _, err in results]  # --overwrite runs always publish
    assert all(code in (0, 4) for code in codes), [err[-1500:] for _, err in results]
    for code, err in results:
        if code == 4:
            assert err.strip().splitlines()[-1].startswith(f"error: {output} already holds a completed run")
    final, _ = publish.read_manifest(output)
    assert final["run_id"] in {f"r{i}" for i, c in enumerate(codes) if c == 0}
    assert visible(output, tmp_path / "final") is not None and leftovers(output) == []


def test_a_bucket_the_job_may_not_write_is_refused_before_training(gcs, gcs_server, tmp_path, monkeypatch):
    """The start-up probe (one object under .finetune-job/, removed again) meets a 403: exit 3, at once."""
    from faultproxy import FaultProxy

    from job.errors import BadInputError

    bucket = f"p-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    with FaultProxy(gcs_server.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        storage.gcs_client.cache_clear()
        rule = proxy.add("status", statuses=(403,), body=b".finetune-job/probe-")
        with pytest.raises(BadInputError, match="access denied .*grant the job's service account access"):
            publish.check_output(f"gs://{bucket}/run", publish.Identity("r", "fp"), overwrite=False)
        assert rule.fired == 1
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    storage.gcs_client.cache_clear()
    assert list(gcs.list_blobs(bucket)) == []


def test_a_retry_after_a_crash_between_publishing_and_promoting_promotes(tmp_path, tiny_checkpoints, toy_data):
    """The run published, then died before promoting: the same command again finds the run (no
    training) and promotes it, exit 0."""
    from conftest import FAST, run_job

    root = tmp_path / "root"
    base = ["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output-root", str(root),
            "--run-id", "nightly-1", *FAST, "--epochs", "1"]
    first = run_job(base)  # as if it had died right after publishing: no promotion asked, none made
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (root / "champion.json").exists()
    retry = run_job([*base, "--promote-if-better", "accuracy"])
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert "already holds this run" in retry.stderr and "steps/epoch" not in retry.stderr
    pointer = json.loads((root / "champion.json").read_text())
    assert pointer["run"] == "nightly-1" and pointer["uri"] == str(root / "runs" / "nightly-1")
