"""Quality on real data: the packaged all-MiniLM-L6-v2 fine-tuned on an SST-2 subset through the
real CLI. The one real-model test; its figure goes into the README."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, run_job

SST2 = SHARED_DATA / "sst2"
ROWS, MIN_ACCURACY = 12_000, 0.85


@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason="../shared/data/sst2 is absent (a user's fresh clone)")
def test_minilm_on_sst2_subset_reaches_085_dev_accuracy(tmp_path):
    from demo.__main__ import packaged_model

    out = tmp_path / "run"
    proc = run_job(["train", "--train", str(SST2 / "train.tsv"), "--validation", str(SST2 / "dev.tsv"),
                    "--text-column", "sentence", "--model", str(packaged_model()), "--output", str(out),
                    "--max-train-examples", str(ROWS), "--epochs", "1", "--per-replica-batch-size", "32",
                    "--learning-rate", "1e-4", "--max-length", "128"], timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    final = m["final_evaluation"]
    print(f"\nSST-2 dev accuracy {final['accuracy']:.4f} (macro-F1 {final['macro_f1']:.4f}) after 1 epoch on "
          f"{ROWS} rows; train {m['phases_seconds']['train']:.0f}s, "
          f"{m['throughput']['train_examples_per_second']:.1f} examples/s")
    assert final["examples"] == 872
    assert final["accuracy"] >= MIN_ACCURACY
