"""Multi-worker training: two real worker processes on 127.0.0.1 run the job together with
MultiWorkerMirroredStrategy, and the cluster layout is resolved from each platform's variables."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST, ROOT
from demo import emulator
from job import distribution
from job.errors import ConfigError, ExitCode


def start_workers(args, envs, tmp_path) -> list[subprocess.Popen]:
    procs = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, env in enumerate(envs):
        with open(tmp_path / f"worker{i}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py"), "train", *args],
                                          env={**os.environ, "TF_USE_LEGACY_KERAS": "1", **env},
                                          stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT))
    return procs


def two_workers(args, envs, tmp_path, timeout=600):
    procs = start_workers(args, envs, tmp_path)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes, [(tmp_path / f"worker{i}.log").read_text() for i in range(len(envs))]


def digest(log):
    return re.search(r"final weights digest: (\w+)", log).group(1)


@pytest.mark.parametrize("style", ["TF_CONFIG", "indexed-job"])
def test_two_workers_train_together(style, tiny_checkpoints, toy_data, tmp_path):
    ports = [emulator.free_port(), emulator.free_port()]
    hosts = [f"127.0.0.1:{p}" for p in ports]
    if style == "TF_CONFIG":
        envs = [{"TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})}
                for i in range(2)]
    else:
        envs = [{"JOB_COMPLETION_INDEX": str(i), "FT_WORKER_HOSTS": ",".join(hosts)} for i in range(2)]
    out = tmp_path / "out"
    # TF_CONFIG trains to a learnt model; the Indexed Job layout (the same training once its cluster
    # is resolved) runs 2 epochs: enough to show both workers stepping together and publishing.
    epochs = 8 if style == "TF_CONFIG" else 2
    args = ["--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output", str(out),
            *FAST, "--epochs", str(epochs), "--learning-rate", "1e-3", "--cluster-timeout", "120"]
    codes, logs = two_workers(args, envs, tmp_path)
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert f"cluster from {style}" in logs[0] and "this is worker:0 (chief)" in logs[0]
    assert "this is worker:1 (worker)" in logs[1]
    assert digest(logs[0]) == digest(logs[1])
    assert "the chief publishes the run" in logs[1] and "published to" not in logs[1]
    m = json.loads((out / "metrics.json").read_text())
    # 2 workers x 1 CPU replica: global batch 32, 320 rows -> 10 steps per epoch on each worker.
    assert m["replicas"] == 2 and m["workers"] == 2 and m["global_batch_size"] == 32
    assert m["steps_per_epoch"] == 10 and m["cluster_source"] == style
    assert len(m["epochs"]) == epochs and m["epochs"][-1]["loss"] < m["epochs"][0]["loss"]
    if style == "TF_CONFIG":
        assert m["final_evaluation"]["accuracy"] >= 0.85


def test_unreachable_peer_fails_within_the_timeout(tiny_checkpoints, toy_data, tmp_path):
    hosts = [f"127.0.0.1:{emulator.free_port()}", f"127.0.0.1:{emulator.free_port()}"]
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 0}})}
    codes, logs = two_workers(["--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output",
                               str(tmp_path / "out"), *FAST, "--cluster-timeout", "5"], [env], tmp_path, timeout=120)
    assert codes == [-9], logs[0][-2000:]  # killed by its watchdog: Kubernetes retries it
    assert re.search(r"^error: workers unreachable for 5s from worker:0 \(peers: 127.0.0.1:\d+\)",
                     logs[0].strip().splitlines()[-1])


def tf_configs(n: int) -> list[dict]:
    hosts = [f"127.0.0.1:{emulator.free_port()}" for _ in range(n)]
    return [{"TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})}
            for i in range(n)]


@pytest.mark.parametrize("loss", ["killed", "frozen"])
def test_lost_peer_during_training_exits_retry(loss, tiny_checkpoints, toy_data, tmp_path):
    """The non-chief is lost mid-training: the chief fails in its next collective and exits 75
    (RETRY: Kubernetes starts it again and every worker resumes from the chief's checkpoint) with
    one `error:` line. "killed": SIGKILL, the peer's connections are reset (a crashed pod; measured:
    the chief exits 0.3 s later). "frozen": SIGSTOP, the peer stays connected but silent (a lost
    node): TensorFlow's coordination service misses its heartbeats (measured: exit 7.9 s later),
    and the collective timeout (--cluster-timeout) bounds the wait in any case."""
    timeout = 20
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    args = ["--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output", str(out),
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2", *FAST, "--epochs", "40",
            "--cluster-timeout", str(timeout)]
    chief, worker = procs = start_workers(args, tf_configs(2), tmp_path)
    try:
        step = wait_for_checkpoint(ckpt / "state.json", 4, procs)
        killed_at = time.monotonic()
        worker.send_signal(signal.SIGKILL if loss == "killed" else signal.SIGSTOP)
        code = chief.wait(timeout=timeout + 90)
        seconds = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    log = (tmp_path / "worker0.log").read_text()
    print(f"chief: exit {code} {seconds:.1f} s after the peer was {loss} (checkpoint at step {step}, "
          f"--cluster-timeout {timeout})")
    assert code == ExitCode.RETRY, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors == [log.strip().splitlines()[-1]], errors
    assert errors[0].startswith("error: lost contact with another worker during training"), errors
    assert seconds < timeout + 60
    assert not out.exists(), "nothing is published"
    assert (ckpt / "state.json").is_file(), "the chief's last checkpoint is kept for the retry"


def wait_for_checkpoint(state_file, at_least: int, procs, timeout=300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            step = json.loads(state_file.read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = -1  # not there yet, or being replaced
        if step >= at_least:
            return step
        assert all(p.poll() is None for p in procs), "a worker ended before checkpointing"
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


# --------------------------------------------------------------------------------------------
# Cluster resolution (no TensorFlow needed)

def test_no_cluster_is_one_machine():
    c = distribution.resolve_cluster({})
    assert c.source == "none" and c.tf_config is None and c.is_chief and c.workers == 1


def test_tf_config_as_given():
    tf_config = {"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}, "task": {"type": "worker", "index": 1}}
    c = distribution.resolve_cluster({"TF_CONFIG": json.dumps(tf_config)})
    assert c.tf_config == tf_config and c.workers == 3 and not c.is_chief and c.worker_index == 2


def test_vertex_cluster_spec():
    spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                        "workerpool1": ["cmle-training-workerpool1-ab-0:2222", "cmle-training-workerpool1-ab-1:2222"]},
            "environment": "cloud", "task": {"type": "workerpool1", "index": 1}}
    c = distribution.resolve_cluster({"CLUSTER_SPEC": json.dumps(spec)})
    assert c.tf_config == {"cluster": {"chief": spec["cluster"]["workerpool0"], "worker": spec["cluster"]["workerpool1"]},
                           "task": {"type": "worker", "index": 1}}
    chief = distribution.resolve_cluster({"CLUSTER_SPEC": json.dumps({**spec, "task": {"type": "workerpool0", "index": 0}})})
    assert chief.is_chief and chief.worker_index == 0


def test_master_is_read_as_chief():
    tf_config = {"cluster": {"master": ["m:1"], "worker": ["w0:1"]}, "task": {"type": "master", "index": 0}}
    c = distribution.resolve_cluster({"TF_CONFIG": json.dumps(tf_config)})
    assert c.tf_config == {"cluster": {"chief": ["m:1"], "worker": ["w0:1"]}, "task": {"type": "chief", "index": 0}}
    assert c.is_chief


def test_indexed_job_builds_stable_hostnames():
    env = {"JOB_COMPLETION_INDEX": "2", "FT_NUM_WORKERS": "3", "FT_WORKER_SERVICE": "ft-workers", "JOB_NAME": "ft-run"}
    c = distribution.resolve_cluster(env)
    assert c.tf_config == {"cluster": {"worker": ["ft-run-0.ft-workers:2222", "ft-run-1.ft-workers:2222",
                                                  "ft-run-2.ft-workers:2222"]}, "task": {"type": "worker", "index": 2}}
    assert c.source == "indexed-job" and not c.is_chief
    assert distribution.resolve_cluster({**env, "FT_NUM_WORKERS": "1", "JOB_COMPLETION_INDEX": "0"}).tf_config is None


BAD = [
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid JSON"),
    ({"TF_CONFIG": "[]"}, "must be a JSON object"),
    ({"TF_CONFIG": json.dumps({"task": {"type": "worker", "index": 0}})}, "has no 'cluster'"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}})}, "has no 'task'"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}})},
     "task worker:5 is not in the cluster"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a", "b:2"]}, "task": {"type": "worker", "index": 0}})},
     "'host:port' strings"),
    ({"TF_CONFIG": json.dumps({"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}})},
     "parameter servers are not supported"),
    ({"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool1": ["a:1"]}, "task": {"type": "workerpool1", "index": 0}})},
     "no cluster.workerpool0"),
    ({"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["a:1"]}, "task": {"type": "workerpool2", "index": 0}})},
     "task.type must be workerpool0 or workerpool1"),
    ({"JOB_COMPLETION_INDEX": "x", "FT_NUM_WORKERS": "2"}, "JOB_COMPLETION_INDEX must be a non-negative integer"),
    ({"JOB_COMPLETION_INDEX": "0", "FT_NUM_WORKERS": "two"}, "FT_NUM_WORKERS must be a positive integer"),
    ({"JOB_COMPLETION_INDEX": "0", "FT_NUM_WORKERS": "2"}, "needs FT_WORKER_SERVICE"),
    ({"JOB_COMPLETION_INDEX": "3", "FT_WORKER_HOSTS": "a:1,b:1"}, "task worker:3 is not in the cluster"),
]


@pytest.mark.parametrize("env,message", BAD, ids=[m for _, m in BAD])
def test_malformed_cluster_settings(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        distribution.resolve_cluster(env)


# --------------------------------------------------------------------------------------------
# Chief-retry recovery

def wait_for_line(path, text: str, proc, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, f"ended before logging {text!r}:\n{path.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in time")


def test_chief_failing_after_the_workers_finished_is_retried_alone(tiny_checkpoints, toy_data, tmp_path):
    """The chief fails after training, once the other worker has exited 0 (here: frozen right after
    training, then killed, so it never publishes). An Indexed Job retries only the chief's index; a
    JobSet restarts every worker. Neither retry may wait for the finished peer: the restarted worker
    (JobSet hostnames that resolve nowhere here, so any dial would hang until the watchdog) exits 0
    at once, and the retried chief (Indexed Job layout) finishes from the final checkpoint alone and
    publishes the run the two workers trained."""
    timeout = 30
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    hosts = [f"127.0.0.1:{emulator.free_port()}", f"127.0.0.1:{emulator.free_port()}"]
    indexed = [{"JOB_COMPLETION_INDEX": str(i), "FT_WORKER_HOSTS": ",".join(hosts)} for i in range(2)]
    args = ["--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output", str(out),
            "--checkpoint-dir", str(ckpt), *FAST, "--epochs", "1", "--cluster-timeout", str(timeout)]
    chief, worker = procs = start_workers(args, indexed, tmp_path)
    try:
        wait_for_line(tmp_path / "worker0.log", "final weights digest", chief)
        chief.send_signal(signal.SIGSTOP)  # after training, before export and publishing
        assert worker.wait(timeout=120) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
        chief.kill()
        chief.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    first_worker_log = (tmp_path / "worker1.log").read_text()
    assert not out.exists() and json.loads((ckpt / "state.json").read_text())["complete"] is True
    assert "worker 1 done" in first_worker_log

    # JobSet: every worker restarts; the non-chief must not wait for a cluster.
    jobset = {"JOBSET_NAME": "ft-js", "REPLICATED_JOB_NAME": "workers", "JOB_INDEX": "0", "FT_NUM_WORKERS": "2"}
    started = time.monotonic()
    (restarted,) = start_workers(args, [{**jobset, "JOB_COMPLETION_INDEX": "1"}], tmp_path / "js")
    assert restarted.wait(timeout=120) == 0, (tmp_path / "js" / "worker0.log").read_text()[-3000:]
    restarted_seconds = time.monotonic() - started
    js_log = (tmp_path / "js" / "worker0.log").read_text()
    assert "cluster from jobset: this is worker:1 (worker); training ended in an earlier attempt" in js_log
    assert "the chief publishes the run" in js_log and not out.exists()

    # Indexed Job: only the chief's index is retried; its peer (index 1) has succeeded for good.
    started = time.monotonic()
    (retry,) = start_workers(args, indexed[:1], tmp_path / "retry")
    code = retry.wait(timeout=180)
    retry_seconds = time.monotonic() - started
    log = (tmp_path / "retry" / "worker0.log").read_text()
    print(f"restarted worker exit 0 after {restarted_seconds:.1f} s; retried chief exit {code} after "
          f"{retry_seconds:.1f} s (--cluster-timeout {timeout})")
    assert code == 0, log[-3000:]
    assert "cluster from indexed-job: this is worker:0 (chief); training ended in an earlier attempt" in log
    assert "workers unreachable" not in log and "resuming from step" in log
    m = json.loads((out / "metrics.json").read_text())
    # The run the two workers trained: their plan, their epoch history.
    assert m["workers"] == 2 and m["replicas"] == 2 and m["global_batch_size"] == 32 and m["steps_per_epoch"] == 10
    assert len(m["epochs"]) == 1
    assert digest(log) == digest(first_worker_log), "the published model is the one the two workers trained"
    assert not (ckpt / "state.json").exists(), "published: the checkpoints are cleared"
