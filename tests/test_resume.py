"""Preemption and resume: SIGTERM saves and exits 'retry me'; SIGKILL at any point loses at most the
steps since the last save; a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from job.errors import ExitCode

ARGS = ["--per-replica-batch-size", "16", "--max-length", "32", "--learning-rate", "1e-3"]


@pytest.fixture(scope="module")
def deterministic_checkpoint(tiny_checkpoints, tmp_path_factory):
    """The tiny checkpoint without dropout: training is then a pure function of data order and
    state, so an interrupted-and-resumed run can be compared weight by weight."""
    d = tmp_path_factory.mktemp("nodrop") / "m"
    shutil.copytree(tiny_checkpoints["tf"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def start(args, log):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py"), "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=ROOT)


def wait_for_step(state_file, at_least: int, proc, timeout=240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_file.is_file():
            try:
                step = json.loads(state_file.read_text())["step"]
            except (ValueError, KeyError):
                step = -1  # being replaced
            if step >= at_least:
                return step
        assert proc.poll() is None, "the job ended before checkpointing"
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


def hf_weights(run) -> dict[str, np.ndarray]:
    import h5py

    out = {}
    with h5py.File(run / "hf_model" / "tf_model.h5") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None)
    return out


def test_sigterm_checkpoints_and_exits_retry_then_resumes(tiny_checkpoints, toy_data, tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    args = ["--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output", str(out),
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "10", "--epochs", "30", *ARGS]
    proc = start(args, tmp_path / "first.log")
    wait_for_step(ckpt / "state.json", 30, proc)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    log = (tmp_path / "first.log").read_text()
    assert code == ExitCode.RETRY, log[-2000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: received SIGTERM") and "checkpoint saved at step" in last
    saved = json.loads((ckpt / "state.json").read_text())["step"]
    assert last.endswith(f"step {saved})")
    assert not out.exists()

    second = start(args, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-2000:]
    assert f"resuming from step {saved}" in (tmp_path / "second.log").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 30 and metrics["final_evaluation"]["accuracy"] >= 0.9
    assert not ckpt.exists(), "checkpoints are removed once the run is published"


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(deterministic_checkpoint, toy_data, tmp_path):
    common = ["--data", str(toy_data), "--model", str(deterministic_checkpoint), "--epochs", "4", *ARGS]
    # Reference: uninterrupted.
    ref = start([*common, "--output", str(tmp_path / "ref")], tmp_path / "ref.log")
    assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-2000:]

    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    args = [*common, "--output", str(out), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "7"]
    killed = start(args, tmp_path / "killed.log")
    step = wait_for_step(ckpt / "state.json", 7, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert step % 20 != 0, "the kill should land mid-epoch (20 steps per epoch)"
    resumed = start(args, tmp_path / "resumed.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-2000:]
    log = (tmp_path / "resumed.log").read_text()
    assert "resuming from step" in log

    # Same data order, optimizer moments and schedule step: the same model, up to float noise.
    a, b = hf_weights(tmp_path / "ref"), hf_weights(out)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=2e-5, rtol=1e-4, err_msg=name)
    ma = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    mb = json.loads((out / "metrics.json").read_text())
    assert [e["val_accuracy"] for e in ma["epochs"]] == [e["val_accuracy"] for e in mb["epochs"]]
    assert ma["final_evaluation"]["accuracy"] == mb["final_evaluation"]["accuracy"]


def test_checkpoint_from_other_settings_is_refused(tiny_checkpoints, toy_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"step": 3, "prefix": "ckpt-3", "files": [],
                                                 "fingerprint": "something-else"}))
    from conftest import run_job
    proc = run_job(["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output",
                    str(tmp_path / "out"), "--checkpoint-dir", str(ckpt), "--epochs", "1", *ARGS])
    assert proc.returncode == ExitCode.BAD_INPUT
    assert "was made with other settings or data" in proc.stderr.strip().splitlines()[-1]
