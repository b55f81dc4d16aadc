"""The Kubernetes manifests render, are schema-valid and agree with the job:  .venv/bin/pytest -q tests/test_k8s.py

Every kustomization (k8s/base and each k8s/overlays/*) is rendered with `kubectl kustomize` and
every object is checked against the Kubernetes OpenAPI schema of K8S_VERSION in strict mode
(unknown fields rejected), as `kubernetes-validate --strict` does. Then the rules a schema cannot
see: security context, the podFailurePolicy exit codes (from job.errors.ExitCode, not copied), the
settings accepted by the real CLI, and each knob set in one place. No cluster is involved.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
# 1.31: the first release with Job podFailurePolicy GA (and the oldest GKE minor still supported
# when this was written); kubernetes-validate ships its schemas offline.
K8S_VERSION = "1.31.0"
KUBECTL = shutil.which("kubectl")
# A sample Job name for the downward-API variables (what a CronJob would name a run).
SAMPLE_JOB_NAME = "finetune-nightly-29412360"

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")

KUSTOMIZATIONS = sorted(p.parent for p in K8S.glob("**/kustomization.yaml"))
IDS = [p.relative_to(K8S).as_posix() for p in KUSTOMIZATIONS]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    out = {}
    for path, name in zip(KUSTOMIZATIONS, IDS, strict=True):
        proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0, f"kubectl kustomize {name} failed:\n{proc.stderr}"
        out[name] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def workload(docs: list[dict]) -> dict:
    found = [d for d in docs if d["kind"] in ("Job", "CronJob")]
    assert len(found) == 1, f"expected one Job or CronJob, got {[d['kind'] for d in found]}"
    return found[0]


def job_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Job" else obj["spec"]["jobTemplate"]["spec"]


def pod_spec(obj: dict) -> dict:
    return job_spec(obj)["template"]["spec"]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def dockerfile_facts() -> dict:
    """The UID and writable folder the image declares (USER, HOME)."""
    text = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"^USER\s+(\d+)", text, re.MULTILINE)
    home = re.search(r"\bHOME=(\S+)", text)
    assert uid and home, "Dockerfile must declare a numeric USER and HOME"
    return {"uid": int(uid.group(1)), "home": home.group(1)}


def test_every_overlay_is_discovered():
    assert "base" in IDS
    assert {"overlays/job", "overlays/cronjob"} <= set(IDS)
    assert all(i == "base" or i.startswith("overlays/") for i in IDS), IDS


@pytest.mark.parametrize("name", IDS)
def test_renders_and_passes_strict_schema_validation(rendered, name):
    import kubernetes_validate

    docs = rendered[name]
    assert {d["kind"] for d in docs} >= {"ServiceAccount", "ConfigMap"}
    workload(docs)
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:  # its str() dumps the whole schema
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.path}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", IDS)
def test_pods_run_locked_down_as_the_image_user(rendered, name):
    facts = dockerfile_facts()
    spec = pod_spec(workload(rendered[name]))
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == facts["uid"]
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not sc.get("privileged") and not sc.get("capabilities", {}).get("add"), c["name"]
        assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", facts["uid"]) == facts["uid"]
        assert sc.get("seccompProfile", pod_sc["seccompProfile"]) == {"type": "RuntimeDefault"}
        # The image's only writable folder (HOME, TMPDIR, HF_HOME, FT_WORK_DIR) and a real /dev/shm.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts[facts["home"]]]
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert "requests" in c["resources"] and "limits" in c["resources"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])


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
    # RETRY (transient) and INTERNAL must stay retryable.
    assert not {int(ExitCode.RETRY), int(ExitCode.INTERNAL)} & set(fail[0]["onExitCodes"]["values"])
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert [c for r in ignore for c in r.get("onPodConditions", [])] == [
        {"type": "DisruptionTarget", "status": "True"}]
    assert spec["backoffLimit"] >= 0 and spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0


def cli():
    """The job's real command line as a click-style group (typer vendors click; no copy of options here)."""
    import entrypoint

    return typer.main.get_command(entrypoint.app)


def train_envvars() -> set[str]:
    return {p.envvar for p in cli().commands["train"].params if isinstance(p.envvar, str)}


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values: known names are replaced, $$ escapes, unknown stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The environment the kubelet would give the container (envFrom first, then env in order)."""
    maps = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env.update(maps[src["configMapRef"]["name"]]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _expand(var["value"], env)
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.labels['batch.kubernetes.io/job-name']", field
            env[var["name"]] = SAMPLE_JOB_NAME
    return env


@pytest.mark.parametrize("name", IDS)
def test_settings_and_args_are_accepted_by_the_real_cli(rendered, name, monkeypatch):
    docs = rendered[name]
    (container,) = pod_spec(workload(docs))["containers"]
    env = container_env(docs, container)
    known = train_envvars()
    ft = {k for k in env if k.startswith("FT_")}
    assert ft <= known, f"not options of `train`: {sorted(ft - known)}"
    assert not [v for v in env.values() if "$(" in v], f"unresolved $(VAR) in {env}"

    # Parse exactly like the container would: the image's ENTRYPOINT + these args, this env.
    for k in [k for k in os.environ if k.startswith("FT_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    group = cli()
    args = list(container["args"])
    assert args[0] == "train"
    with group.make_context("entrypoint.py", list(args)) as gctx:
        cmd_name, train, rest = group.resolve_command(gctx, list(args))
        ctx = train.make_context(cmd_name, rest, parent=gctx)  # raises on unknown options or bad values
    for param in train.params:
        if param.envvar in ft:
            assert ctx.get_parameter_source(param.name).name == "ENVIRONMENT", param.name
    # Each run publishes to its own folder, named after the Job.
    assert ctx.params["output"].startswith("gs://") and ctx.params["output"].endswith("/" + SAMPLE_JOB_NAME)
    assert ctx.params["data"] or ctx.params["train"]
    assert ctx.params["model"]


def test_a_bad_setting_would_be_rejected_by_that_check(monkeypatch):
    """The parse above is not vacuous: a value of the wrong type or an unknown option fails it, with
    the usage exit code that podFailurePolicy turns into FailJob."""
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
    # Same pod as the one-off Job: the spec was copied, not rewritten.
    one_off = workload(rendered["overlays/job"])
    assert job_spec(cron) == job_spec(one_off)


def test_image_is_tagged_only_in_overlays_and_set_in_one_place(rendered):
    base_image = pod_spec(workload(rendered["base"]))["containers"][0]["image"]
    assert ":" not in base_image and "@" not in base_image, "no tag in base"
    images = {n: pod_spec(workload(d))["containers"][0]["image"] for n, d in rendered.items() if n != "base"}
    assert len(set(images.values())) == 1, images
    assert all(re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", i) for i in images.values()), images
    setting = [p for p in K8S.glob("**/kustomization.yaml") if "images" in (yaml.safe_load(p.read_text()) or {})]
    assert [p.relative_to(K8S).as_posix() for p in setting] == ["overlays/job/kustomization.yaml"]


def test_bucket_paths_and_gpu_count_are_each_set_in_one_place():
    sources = [p for p in K8S.rglob("*") if p.is_file() and p.suffix in (".yaml", ".env")]
    with_bucket = [p for p in sources
                   if re.search(r"^[^#]*gs://", p.read_text(), re.MULTILINE)]
    assert [p.relative_to(K8S).as_posix() for p in with_bucket] == ["base/job.env"]
    with_gpu_count = [p for p in sources if re.search(r"^[^#]*nvidia\.com/gpu:\s*\d", p.read_text(), re.MULTILINE)]
    assert [p.relative_to(K8S).as_posix() for p in with_gpu_count] == ["base/job.yaml"]


def test_gpu_overlays_ask_for_gpu_nodes_and_the_smoke_test_does_not(rendered):
    for name, docs in rendered.items():
        spec = pod_spec(workload(docs))
        limits = spec["containers"][0]["resources"]["limits"]
        if name == "overlays/cpu-smoke":
            assert "nvidia.com/gpu" not in limits and not spec.get("nodeSelector") and not spec.get("tolerations")
        else:
            assert int(limits["nvidia.com/gpu"]) >= 1
            assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_service_account_is_bound_for_workload_identity(rendered):
    for name, docs in rendered.items():
        accounts = by_kind(docs, "ServiceAccount")
        sa = accounts[pod_spec(workload(docs))["serviceAccountName"]]
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com"), name
        # The Workload Identity binding names the Kubernetes account: overlays must not rename it.
        assert sa["metadata"]["name"] == "finetune-job", name


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=IDS)
def test_kustomizations_use_only_current_fields(path):
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    deprecated = {"commonLabels", "patchesStrategicMerge", "patchesJson6902", "bases", "vars", "imageTags"}
    assert not deprecated & set(k), f"deprecated kustomize fields: {sorted(deprecated & set(k))}"
