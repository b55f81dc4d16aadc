"""The whole job as users run it: the real CLI in a subprocess, real TF training, local and gs:// I/O."""

from __future__ import annotations

import hashlib
import json
import re
import os
import sys
import textwrap

import numpy as np
import pytest

from conftest import FAST, ROOT, run_job
from demo import emulator
from job.errors import ExitCode

LEARN = FAST + ["--epochs", "6", "--learning-rate", "1e-3"]


@pytest.fixture(scope="module")
def local_run(tiny_checkpoints, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r1"
    proc = run_job(["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]),
                    "--output", str(out), *LEARN])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_local_run_publishes_the_documented_layout(local_run):
    out, _ = local_run
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    # The job's bookkeeping folder keeps only the (empty) publish lock once the run is published:
    # no checkpoints, attempt copies or temp files are left behind.
    assert {n for n in names if n.startswith(".finetune-job/")} == {".finetune-job/lock"}
    names = {n for n in names if not n.startswith(".finetune-job/")}
    assert {"manifest.json", "metrics.json", "saved_model/saved_model.pb", "hf_model/config.json",
            "hf_model/tf_model.h5", "hf_model/tokenizer.json", "serving/1/saved_model.pb",
            "serving/1/assets.extra/tf_serving_warmup_requests"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == names - {"manifest.json"}
    for path, f in listed.items():
        data = (out / path).read_bytes()
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging leftovers"


def test_metrics_json_reports_training_evaluation_and_provenance(local_run):
    out, proc = local_run
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["epochs"]) == 6 and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(m["epochs"][0])
    # The loss goes down and the toy task is learnt: a loss built for probabilities fails this.
    assert m["epochs"][-1]["loss"] < m["epochs"][0]["loss"]
    assert m["final_evaluation"]["accuracy"] >= 0.9
    assert set(m["final_evaluation"]["per_class"]) == {"negative", "positive"}
    assert np.array(m["final_evaluation"]["confusion_matrix"]["rows_true_cols_predicted"]).sum() == 96
    assert {"download", "tokenize", "train", "evaluate", "export", "upload"} <= set(m["phases_seconds"])
    assert m["throughput"]["train_examples_per_second"] > 0
    assert m["config"]["train"]["epochs"] == 6 and m["versions"]["transformers"].startswith("4.57")
    assert m["replicas"] == 1 and m["global_batch_size"] == 16
    assert "global batch: 16" in proc.stderr


def test_saved_model_serves_the_same_predictions_as_the_keras_model(local_run):
    import tensorflow as tf
    from transformers import AutoTokenizer, TFAutoModelForSequenceClassification

    out, _ = local_run
    tok = AutoTokenizer.from_pretrained(str(out / "hf_model"))
    keras_model = TFAutoModelForSequenceClassification.from_pretrained(str(out / "hf_model"), use_safetensors=False)
    assert keras_model.config.id2label == {0: "negative", 1: "positive"}
    texts = ["The film was wonderful.", "The plot? Utterly dull.", "I found the cast rather clever and funny."]
    enc = tok(texts, padding=True, return_tensors="np")
    expected = keras_model({k: tf.constant(v) for k, v in enc.items()}, training=False).logits.numpy()
    import tensorflow_text  # noqa: F401  (the text signatures' ops)

    loaded = tf.saved_model.load(str(out / "saved_model"))
    serve = loaded.signatures["serve_token_ids"]
    # The toy validation texts tokenize identically in the graph: raw text is served too.
    m = json.loads((out / "metrics.json").read_text())
    assert m["outputs"]["text_signatures"] is True and m["outputs"]["parity"]["share"] == 1.0
    by_text = loaded.signatures["serving_default"](text=tf.constant(texts))
    np.testing.assert_allclose(by_text["logits"].numpy(), expected, atol=1e-5)
    assert [x.decode() for x in by_text["label"].numpy()] == ["positive", "negative", "positive"]
    assert {t.name.split(":")[0] for t in serve.inputs if t.dtype == tf.int32} == {
        "input_ids", "attention_mask", "token_type_ids"}
    got = serve(**{k: tf.constant(v, tf.int32) for k, v in enc.items()})
    np.testing.assert_allclose(got["logits"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(got["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-6)
    assert got["probabilities"].numpy().argmax(axis=1).tolist() == [1, 0, 1]
    # Variable batch and length: one row, unpadded.
    one = tok(texts[:1], return_tensors="np")
    assert serve(**{k: tf.constant(v, tf.int32) for k, v in one.items()})["logits"].shape == (1, 2)


def test_second_run_to_same_output_is_refused_and_changes_nothing(local_run, tiny_checkpoints, toy_data):
    out, _ = local_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    proc = run_job(["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]),
                    "--output", str(out), *FAST, "--epochs", "1"])
    assert proc.returncode == ExitCode.OUTPUT_EXISTS
    assert re.fullmatch(rf"error: {re.escape(str(out))} already holds a completed run \(run [\w.-]+\): "
                        "pass --overwrite or choose another --output", proc.stderr.strip().splitlines()[-1])
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*")}


def test_bucket_to_bucket_run_with_pytorch_safetensors_checkpoint(gcs, gcs_server, tiny_checkpoints, toy_data):
    gcs.create_bucket("in-bucket")
    gcs.create_bucket("out-bucket")
    emulator.upload_tree(gcs, toy_data, "in-bucket", "datasets/toy")
    emulator.upload_tree(gcs, tiny_checkpoints["pt"], "in-bucket", "models/tiny")
    env = {"STORAGE_EMULATOR_HOST": gcs_server.url}
    args = ["train", "--data", "gs://in-bucket/datasets/toy/", "--model", "gs://in-bucket/models/tiny",
            "--output", "gs://out-bucket/runs/r1", *LEARN]
    proc = run_job(args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    blobs = {b.name: b for b in gcs.list_blobs("out-bucket", prefix="runs/r1/")}
    manifest = json.loads(blobs["runs/r1/manifest.json"].download_as_bytes())
    assert {f"runs/r1/{f['path']}" for f in manifest["files"]} | {"runs/r1/manifest.json"} == set(blobs)
    for f in manifest["files"]:
        assert blobs[f"runs/r1/{f['path']}"].size == f["size"]
    metrics = json.loads(blobs["runs/r1/metrics.json"].download_as_bytes())
    assert metrics["final_evaluation"]["accuracy"] >= 0.9
    assert metrics["data"]["sources"]["train"] == ["gs://in-bucket/datasets/toy/train.csv"]

    # A second run may not clobber it; with --overwrite it replaces it whole.
    generations = {n: b.generation for n, b in blobs.items()}
    refused = run_job([*args[:-len(LEARN)], *FAST, "--epochs", "1"], env=env)
    assert refused.returncode == ExitCode.OUTPUT_EXISTS, refused.stderr[-2000:]
    assert {b.name: b.generation for b in gcs.list_blobs("out-bucket", prefix="runs/r1/")} == generations
    replaced = run_job([*args[:-len(LEARN)], *FAST, "--epochs", "1", "--overwrite"], env=env)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    new = json.loads(gcs.bucket("out-bucket").blob("runs/r1/metrics.json").download_as_bytes())
    assert len(new["epochs"]) == 1


def test_two_replicas_on_a_split_cpu(tiny_checkpoints, toy_data, tmp_path):
    """The CPU split into 2 logical devices before TF starts: MirroredStrategy runs 2 replicas."""
    launcher = tmp_path / "two_cpus.py"
    launcher.write_text(textwrap.dedent(f"""
        import os, runpy, sys
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.argv = ["entrypoint.py", *sys.argv[1:]]
        sys.path.insert(0, {str(ROOT)!r})
        runpy.run_path({str(ROOT / "entrypoint.py")!r}, run_name="__main__")
    """))
    out = tmp_path / "out"
    import subprocess
    proc = subprocess.run([sys.executable, str(launcher), "train", "--data", str(toy_data), "--model",
                           str(tiny_checkpoints["pt"]), "--output", str(out), *LEARN, "--epochs", "12"],
                          capture_output=True, text=True, timeout=600, env={**os.environ}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replicas: 2, global batch: 32 (= 16 per replica x 2)" in proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["replicas"] == 2 and m["global_batch_size"] == 32 and m["steps_per_epoch"] == 10
    # Half the steps per epoch of one replica, so twice the epochs to learn the same task.
    assert m["epochs"][-1]["loss"] < m["epochs"][0]["loss"]
    assert m["final_evaluation"]["accuracy"] >= 0.85
