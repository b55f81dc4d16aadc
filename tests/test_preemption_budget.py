"""Preemption budget, tiny model: SIGTERM during training -> exit 75 with the checkpoint durably
stored, locally and on gs:// (fake-gcs-server), within the Spot overlay's grace period. Prints the
figures (k8s/README.md, "Spot and flex-start"); the MiniLM's: `make preemption-budget`."""

from __future__ import annotations

import pytest
import yaml

from bench.preemption import measure
from conftest import FAST, ROOT
from job.errors import ExitCode


def grace_period(overlay: str) -> int:
    """The overlay's terminationGracePeriodSeconds (its capacity.yaml patch; rendered in tests/test_k8s.py)."""
    patch = yaml.safe_load((ROOT / "k8s" / "overlays" / overlay / "capacity.yaml").read_text())
    (op,) = [o for o in patch if o["path"] == "/spec/template/spec/terminationGracePeriodSeconds"]
    return int(op["value"])


@pytest.mark.parametrize("where", ["local", "gs"])
def test_sigterm_during_training_exits_75_with_a_durable_checkpoint_within_the_grace_period(
        where, tiny_checkpoints, toy_data, tmp_path, gcs_server, monkeypatch):
    from demo import emulator
    from job import storage

    env = {}
    if where == "gs":
        env["STORAGE_EMULATOR_HOST"] = gcs_server.url
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)  # to read the state back
        storage.gcs_client.cache_clear()
        emulator.client(gcs_server.url).create_bucket("preemption-budget")
        root = "gs://preemption-budget"
    else:
        root = str(tmp_path)
    args = ["--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output", f"{root}/out",
            *FAST, "--epochs", "30", "--checkpoint-every", "100000"]
    r = measure(args, f"{root}/ckpt", env, tmp_path / "job.log", after_budget_line=0.5, timeout=300)
    storage.gcs_client.cache_clear()
    limit = grace_period("spot")
    print(f"\ntiny model, {where}: SIGTERM -> exit {r['exit_code']} in {r['sigterm_to_exit_seconds']:.2f} s "
          f"(checkpoint save at start {r['save_seconds_at_start']:.2f} s, {r['state_mb']:.1f} MB; "
          f"Spot grace period {limit} s)")
    assert r["exit_code"] == ExitCode.RETRY, r
    assert r["error_line"].startswith("error: received SIGTERM") and "checkpoint saved at step" in r["error_line"]
    assert r["saved_step"] is not None and r["saved_step"] == r["state_step"] >= 1, r
    assert r["durable"], r
    assert r["sigterm_to_exit_seconds"] < limit


def test_readme_quotes_the_committed_minilm_measurement():
    """The MiniLM rows of k8s/README.md are bench/results/preemption.json's (`make preemption-budget`)."""
    import json

    result = json.loads((ROOT / "bench" / "results" / "preemption.json").read_text())
    readme = (ROOT / "k8s" / "README.md").read_text()
    for case, store in (("local", "local folder"), ("gcs", "`gs://` (fake-gcs-server)")):
        r = result["cases"][case]
        assert r["exit_code"] == ExitCode.RETRY and r["durable"] and r["saved_step"] == r["state_step"]
        row = (f"| MiniLM-L6 ({r['state_mb']:.1f} MB) | {store} | {r['sigterm_to_exit_seconds']:.2f} s | "
               f"{r['save_seconds_at_start']:.2f} s |")
        assert row in readme, row
