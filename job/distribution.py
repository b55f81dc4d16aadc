"""Distribution: the one place that reads the cluster layout and chooses a tf.distribute strategy.

Sources, first match wins:
  1. TF_CONFIG, as given (Kubeflow TFJob, hand-written);
  2. CLUSTER_SPEC (Vertex AI custom jobs: workerpool0 = chief, workerpool1 = workers);
  3. a JobSet (one replicated job of indexed workers): JOBSET_NAME + REPLICATED_JOB_NAME (+ JOB_INDEX,
     default 0) + JOB_COMPLETION_INDEX + FT_NUM_WORKERS: pods are
     `<jobset>-<replicated job>-<job index>-<index>.<subdomain>` (subdomain: FT_WORKER_SERVICE, else
     JobSet's default, the JobSet's name);
  4. a Kubernetes Indexed Job: JOB_COMPLETION_INDEX plus FT_WORKER_HOSTS (host:port list) or
     FT_NUM_WORKERS + FT_WORKER_SERVICE (+ JOB_NAME): pods are `<job>-<index>.<service>`;
  5. none: one machine, MirroredStrategy over every visible GPU, else every logical CPU device
     (one, unless the process split the CPU - how tests run two replicas without GPUs).
More than one task -> MultiWorkerMirroredStrategy with TensorFlow's collective all-reduce.
Everything else receives the strategy and a Topology; nothing else reads these variables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping

from job.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_PORT = 2222
# How long workers wait for each other at start and inside a collective before failing (seconds).
DEFAULT_CLUSTER_TIMEOUT = 600


@dataclass(frozen=True)
class Cluster:
    source: str  # TF_CONFIG, CLUSTER_SPEC, jobset, indexed-job, none
    tf_config: dict | None  # what TensorFlow gets, None on one machine

    @property
    def tasks(self) -> list[tuple[str, int, str]]:
        if not self.tf_config:
            return []
        return [(kind, i, addr) for kind, addrs in self.tf_config["cluster"].items() for i, addr in enumerate(addrs)]

    @property
    def task(self) -> tuple[str, int]:
        t = self.tf_config["task"] if self.tf_config else {"type": "worker", "index": 0}
        return t["type"], int(t["index"])

    @property
    def workers(self) -> int:
        return max(1, len([t for t in self.tasks if t[0] in ("chief", "worker")]))

    @property
    def is_chief(self) -> bool:
        kind, index = self.task
        has_chief = bool(self.tf_config and self.tf_config["cluster"].get("chief"))
        return kind == "chief" or (not has_chief and kind == "worker" and index == 0)

    @property
    def worker_index(self) -> int:
        """0..workers-1 in the order TensorFlow numbers input pipelines (chief first)."""
        kind, index = self.task
        has_chief = bool(self.tf_config and self.tf_config["cluster"].get("chief"))
        return 0 if kind == "chief" else index + (1 if has_chief else 0)


def resolve_cluster(env: Mapping[str, str]) -> Cluster:
    if env.get("TF_CONFIG", "").strip():
        return Cluster("TF_CONFIG", _check_tf_config(_json(env["TF_CONFIG"], "TF_CONFIG"), "TF_CONFIG"))
    if env.get("CLUSTER_SPEC", "").strip():
        return Cluster("CLUSTER_SPEC", _from_vertex(_json(env["CLUSTER_SPEC"], "CLUSTER_SPEC")))
    if env.get("JOB_COMPLETION_INDEX", "").strip() and env.get("JOBSET_NAME", "").strip():
        return Cluster("jobset", _from_jobset(env))
    if env.get("JOB_COMPLETION_INDEX", "").strip() and (env.get("FT_WORKER_HOSTS") or env.get("FT_NUM_WORKERS")):
        return Cluster("indexed-job", _from_indexed_job(env))
    return Cluster("none", None)


def _json(text: str, name: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object with 'cluster' and 'task'")
    return value


def _check_tf_config(cfg: dict, name: str) -> dict | None:
    cluster, task = cfg.get("cluster"), cfg.get("task")
    # Older launchers (Cloud ML Engine, some Vertex images) call the chief "master".
    if isinstance(cluster, dict) and "master" in cluster and "chief" not in cluster:
        cluster = {("chief" if k == "master" else k): v for k, v in cluster.items()}
        if isinstance(task, dict) and task.get("type") == "master":
            task = {**task, "type": "chief"}
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError(f"{name} has no 'cluster' object of task lists")
    for kind, addrs in cluster.items():
        if kind not in ("chief", "worker", "evaluator", "ps"):
            raise ConfigError(f"{name}: unknown task type {kind!r} (use chief and worker)")
        if kind == "ps":
            raise ConfigError(f"{name}: parameter servers are not supported; use chief and worker tasks")
        if not isinstance(addrs, list) or not all(isinstance(a, str) and _host_port(a) for a in addrs):
            raise ConfigError(f"{name}: cluster.{kind} must be a list of 'host:port' strings")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(f"{name} has no 'task' with 'type' and 'index'")
    kind, index = task["type"], task["index"]
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"{name}: task {kind}:{index} is not in the cluster")
    if sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")) <= 1:
        return None  # a one-task "cluster" is one machine
    return {"cluster": cluster, "task": {"type": kind, "index": index}}


def _host_port(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    return bool(host) and port.isdigit()


def _from_vertex(spec: dict) -> dict | None:
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or "workerpool0" not in cluster:
        raise ConfigError("CLUSTER_SPEC has no cluster.workerpool0 (the chief)")
    mapping = {"workerpool0": "chief", "workerpool1": "worker"}
    tf_cluster = {mapping[k]: v for k, v in cluster.items() if k in mapping and v}
    if not isinstance(task, dict) or task.get("type") not in mapping:
        raise ConfigError("CLUSTER_SPEC task.type must be workerpool0 or workerpool1 (workerpool2/3: "
                          "parameter servers and evaluators are not supported)")
    return _check_tf_config({"cluster": tf_cluster, "task": {"type": mapping[task["type"]],
                                                              "index": task.get("index", 0)}}, "CLUSTER_SPEC")


def _from_indexed_job(env: Mapping[str, str]) -> dict | None:
    raw_index = env["JOB_COMPLETION_INDEX"]
    if not raw_index.isdigit():
        raise ConfigError(f"JOB_COMPLETION_INDEX must be a non-negative integer, got {raw_index!r}")
    index = int(raw_index)
    if env.get("FT_WORKER_HOSTS"):
        hosts = [h.strip() for h in env["FT_WORKER_HOSTS"].split(",") if h.strip()]
    else:
        count, service = env.get("FT_NUM_WORKERS", ""), env.get("FT_WORKER_SERVICE", "")
        job = env.get("JOB_NAME", "")
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"FT_NUM_WORKERS must be a positive integer, got {count!r}")
        if not service or not job:
            raise ConfigError("an Indexed Job needs FT_WORKER_SERVICE (the headless Service) and JOB_NAME "
                              "to name its peers, or FT_WORKER_HOSTS")
        port = env.get("FT_WORKER_PORT", str(DEFAULT_PORT))
        hosts = [f"{job}-{i}.{service}:{port}" for i in range(int(count))]
    return _check_tf_config({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}},
                            "the Indexed Job settings")


def _from_jobset(env: Mapping[str, str]) -> dict | None:
    """JobSet's DNS hostnames (spec.network.enableDNSHostnames): the Job controller numbers the pods
    of each child Job, JobSet numbers the child Jobs of a replicated job. The workers are the pods of
    one child Job (this pod's), so the cluster never spans two child Jobs."""
    jobset, rjob = env["JOBSET_NAME"].strip(), env.get("REPLICATED_JOB_NAME", "").strip()
    job_index, count = env.get("JOB_INDEX", "0").strip() or "0", env.get("FT_NUM_WORKERS", "")
    if not rjob:
        raise ConfigError("a JobSet worker needs REPLICATED_JOB_NAME (pod label "
                          "jobset.sigs.k8s.io/replicatedjob-name) to name its peers")
    if not job_index.isdigit():
        raise ConfigError(f"JOB_INDEX must be a non-negative integer, got {job_index!r}")
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"FT_NUM_WORKERS must be a positive integer (the replicated job's completions), got {count!r}")
    subdomain = env.get("FT_WORKER_SERVICE", "").strip() or jobset
    port = env.get("FT_WORKER_PORT", str(DEFAULT_PORT))
    hosts = [f"{jobset}-{rjob}-{int(job_index)}-{i}.{subdomain}:{port}" for i in range(int(count))]
    return _check_tf_config({"cluster": {"worker": hosts}, "task": {"type": "worker",
                                                                   "index": _index(env["JOB_COMPLETION_INDEX"])}},
                            "the JobSet settings")


def _index(raw: str) -> int:
    if not raw.strip().isdigit():
        raise ConfigError(f"JOB_COMPLETION_INDEX must be a non-negative integer, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Topology:
    replicas: int  # replicas across all workers
    workers: int
    worker_index: int
    is_chief: bool
    source: str


def make_strategy(env: Mapping[str, str] | None = None, timeout: float = DEFAULT_CLUSTER_TIMEOUT):
    import tensorflow as tf

    env = os.environ if env is None else env
    cluster = resolve_cluster(env)
    if cluster.tf_config is None:
        strategy = _local_strategy()
        return strategy, Topology(strategy.num_replicas_in_sync, 1, 0, True, cluster.source)

    kind, index = cluster.task
    peers = [f"{k}:{i}={a}" for k, i, a in cluster.tasks]
    log.info("cluster from %s: this is %s:%d (%s), peers: %s", cluster.source, kind, index,
             "chief" if cluster.is_chief else "worker", ", ".join(peers))
    # TensorFlow reads the layout from TF_CONFIG; this module is the only writer.
    os.environ["TF_CONFIG"] = json.dumps(cluster.tf_config)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    peers = ", ".join(a for k, i, a in cluster.tasks if (k, i) != (kind, index))
    with _watchdog(timeout, f"workers unreachable for {timeout:.0f}s from {kind}:{index} (peers: {peers}): "
                            "check the Service/TF_CONFIG and that every worker started; raise "
                            "--cluster-timeout if pods start slowly"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    topo = Topology(strategy.num_replicas_in_sync, cluster.workers, cluster.worker_index, cluster.is_chief,
                    cluster.source)
    log.info("strategy: MultiWorkerMirroredStrategy, %d workers, %d replicas in sync",
             topo.workers, topo.replicas)
    return strategy, topo


def _local_strategy():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    log.info("strategy: MirroredStrategy over %d %s device(s): %s", len(devices),
             "GPU" if gpus else "CPU", ", ".join(devices))
    return strategy


def strategy_after_training(plan: dict, env: Mapping[str, str] | None = None):
    """This machine alone, for an attempt that finds the run's training already complete (the chief
    failed after it, e.g. while publishing, and the other workers have exited): nothing is left to
    compute together, so it must not wait for peers that will not come back. The Topology is the
    cluster's that trained (from the checkpoint's plan), this pod's role included."""
    cluster = resolve_cluster(os.environ if env is None else env)
    kind, index = cluster.task
    log.info("cluster from %s: this is %s:%d (%s); training ended in an earlier attempt, so it goes on "
             "without the other workers", cluster.source, kind, index, "chief" if cluster.is_chief else "worker")
    return _local_strategy(), Topology(int(plan["replicas"]), int(plan["workers"]), cluster.worker_index,
                                       cluster.is_chief, cluster.source)


_WATCHDOG = """
import os, select, signal, sys
parent, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:  # no word from the parent in time: it is stuck
    sys.stderr.write("error: " + message + "\\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
"""


@contextlib.contextmanager
def _watchdog(timeout: float, message: str):
    """End this process with `message` if the block does not finish within `timeout` seconds.

    Creating MultiWorkerMirroredStrategy connects to every peer inside TensorFlow's C++ runtime,
    holding the GIL and with no deadline of its own: a missing peer means a silent hang that no
    Python thread or signal handler can interrupt. A tiny watchdog process can: it prints the
    one-line error and kills the job (exit status 137, which Kubernetes retries). Leaving the
    block closes the pipe, which releases the watchdog.
    """
    dog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), message],
                           stdin=subprocess.PIPE)
    try:
        yield
    finally:
        dog.stdin.close()
        dog.wait()
