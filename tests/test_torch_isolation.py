"""torch beside TensorFlow: the job never imports it, even when one is installed.

With a CUDA build of torch importable, transformers (and datasets) import torch - and triton - into
a process that already holds TensorFlow, which segfaults. Installing a real torch is a multi-GB
download, so a fake one stands in: transformers' availability check finds a package with a version
(`torch-2.5.0.dist-info`), and importing it records who did and ends the process as the real crash
does (status 139).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import run_job

FAKE_TORCH = """\
import os
import traceback

with open(os.environ["FAKE_TORCH_MARKER"], "a") as marker:
    traceback.print_stack(file=marker)
os._exit(139)  # what importing a CUDA torch into a TensorFlow process does: a segfault
"""


@pytest.fixture
def fake_torch(tmp_path):
    """(environment putting the fake torch on the path, the file its import writes)."""
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (site / "torch-2.5.0.dist-info").mkdir()
    (site / "torch-2.5.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.5.0\n")
    marker = tmp_path / "torch-was-imported"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "FAKE_TORCH_MARKER": str(marker)}, marker


def test_the_fake_torch_is_one_transformers_imports(fake_torch):
    """The premise of the test below: left to itself, transformers imports this torch and dies."""
    env, marker = fake_torch
    plain = {k: v for k, v in os.environ.items() if k not in ("USE_TORCH", "USE_TF")}
    proc = subprocess.run([sys.executable, "-c", "import transformers.utils.generic"], env={**plain, **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 139, proc.stderr[-2000:]
    assert "transformers" in marker.read_text()


def test_train_succeeds_and_never_imports_torch(fake_torch, tiny_checkpoints, toy_data, tmp_path):
    env, marker = fake_torch
    # The PyTorch-safetensors checkpoint: the code path that reads PyTorch weights (without torch).
    proc = run_job(["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["pt"]), "--output",
                    str(tmp_path / "out"), "--epochs", "1", "--per-replica-batch-size", "16", "--max-length", "32",
                    "--max-train-examples", "32"], env=env)
    assert not marker.exists(), f"torch was imported:\n{marker.read_text()}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "metrics.json").is_file()
