"""The benchmark harness (`make bench`) runs end to end, so it cannot rot: the job and the seed
recipe on a tiny model for a few steps. The PyTorch contender is skipped here (its virtualenv is a
1 GB download); that its module stays importable without TensorFlow or the job is checked."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_bench_runs_ours_and_seed_recipe_and_reports_every_figure(tiny_checkpoints, toy_data, tmp_path):
    from bench import bench

    out = tmp_path / "result.json"
    code = bench.main(["--model", str(tiny_checkpoints["pt"]), "--train", str(toy_data / "train.csv"),
                       "--dev", str(toy_data / "validation.csv"), "--text-column", "text", "--rows", "96",
                       "--max-length", "32", "--batch-size", "16", "--learning-rate", "1e-3", "--no-torch",
                       "--matmul-size", "256", "--work", str(tmp_path / "work"), "--out", str(out), "--timeout", "300"])
    assert code == 0
    report = json.loads(out.read_text())
    s = report["summary"]["contenders"]
    assert set(s) == {"ours", "seed"}
    for figures in s.values():
        assert figures["examples_per_second"] > 0 and figures["real_tokens_per_second"] > 0
        assert 0 <= figures["padding_fraction"] < 1 and 0 <= figures["dev_accuracy"] <= 1
        assert 0 < figures["utilisation"] and figures["start_to_first_step_seconds"] > 0
    # Both trained on the same 96 rows: same real tokens; ours computes fewer padded ones.
    runs = report["runs"]
    assert runs["ours"][0]["real_tokens"] == runs["seed"][0]["real_tokens"]
    assert s["ours"]["padding_fraction"] < s["seed"]["padding_fraction"]
    assert runs["ours"][0]["train_examples"] == 96 and 0 <= s["ours"]["input_share_of_step"] < 1
    assert report["probe"]["tokenize"]["rows"] == 320 and report["summary"]["matmul_flops_median"] > 0
    assert {t["target"].split(" ")[0] for t in report["targets"]} >= {"ours", "tokenize"}
    assert "ours (job defaults)" in report["table"] and "seed recipe" in report["table"]


def test_pytorch_contender_needs_neither_tensorflow_nor_the_job():
    check = ("import sys, bench.torch_peer, bench.common; "
             "assert not {'tensorflow', 'job', 'numpy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True)
