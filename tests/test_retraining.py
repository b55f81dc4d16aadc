"""Scheduled retraining end to end: runs under one root, the champion promoted only when better,
predict/evaluate from the champion, the report, JSON logs and platform conventions."""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

import entrypoint
from conftest import FAST, run_job

LEARN = [*FAST, "--epochs", "6", "--learning-rate", "1e-3"]
WEAK = [*FAST, "--epochs", "1", "--learning-rate", "1e-5"]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def retraining(tiny_checkpoints, toy_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain") / "root"
    common = ["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output-root", str(root),
              "--promote-if-better", "accuracy:0.01"]
    good = run_job([*common, "--run-id", "good", *LEARN])
    assert good.returncode == 0, good.stderr[-3000:]
    weak = run_job([*common, "--run-id", "weak", *WEAK])
    assert weak.returncode == 0, weak.stderr[-3000:]
    return root, good, weak


def test_better_run_is_champion_and_worse_run_is_not_promoted(retraining):
    root, good, weak = retraining
    pointer = json.loads((root / "champion.json").read_text())
    assert pointer["run"] == "good" and pointer["uri"] == str(root / "runs" / "good")
    assert (root / "runs" / "weak" / "manifest.json").is_file()  # kept, just not promoted
    decision = json.loads((root / "promotions" / "weak.json").read_text())
    assert decision["promoted"] is False and "accuracy" in decision["reason"]
    assert json.loads((root / "promotions" / "good.json").read_text())["promoted"] is True
    assert "promotion: not promoted" in weak.stderr


def test_every_run_has_report_model_card_and_tensorboard(retraining):
    root, _, _ = retraining
    run = root / "runs" / "good"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run_id"] == "good"
    for name in ("loss.png", "accuracy.png", "learning_rate.png", "confusion_matrix.png", "per_class_f1.png"):
        width, height = png_size(run / "report" / name)
        assert width > 100 and height > 100
    card = (run / "report" / "README.md").read_text()
    assert f"{metrics['final_evaluation']['accuracy']:.4f}" in card
    # The card's loading snippets point at where this run was published (the card is written
    # before publishing, so from the output it was given), not at a staging folder.
    assert f'tf.saved_model.load("{run}/saved_model")' in card
    assert f'from_pretrained("{run}/hf_model")' in card
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard event files"
    manifest = {f["path"] for f in json.loads((run / "manifest.json").read_text())["files"]}
    assert "report/README.md" in manifest and any(p.startswith("tensorboard/") for p in manifest)


def test_predict_and_evaluate_from_the_champion(retraining, toy_data, tmp_path):
    root, _, _ = retraining
    runner = CliRunner()
    out = tmp_path / "preds.jsonl"
    result = runner.invoke(entrypoint.app, ["--log-format", "json", "predict", "--model", str(root), "--data",
                                            str(toy_data / "validation.csv"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 96 and set(rows[0]) == {"text", "label", "label_name", "probabilities"}
    assert set(rows[0]["probabilities"]) == {"negative", "positive"}
    # JSON logs: every stderr line is one object with severity and message.
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert logged and all({"severity", "message"} <= set(r) for r in logged)

    evaluated = runner.invoke(entrypoint.app, ["evaluate", "--model", str(root), "--data",
                                               str(toy_data / "validation.csv")])
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads(evaluated.stdout)
    champion_metrics = json.loads((root / "runs" / "good" / "metrics.json").read_text())["final_evaluation"]
    assert scores["accuracy"] == pytest.approx(champion_metrics["accuracy"])
    assert scores["confusion_matrix"] == champion_metrics["confusion_matrix"]
    correct = sum(r["label_name"] == t for r, t in zip(rows, _labels(toy_data / "validation.csv")))
    assert correct / 96 == pytest.approx(scores["accuracy"])


def _labels(path):
    import csv
    with open(path) as f:
        return [r["label"] for r in csv.DictReader(f)]


def test_different_validation_data_refuses_promotion(retraining, tiny_checkpoints, toy_data, tmp_path):
    root, _, _ = retraining
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.csv").write_text((toy_data / "train.csv").read_text())
    lines = (toy_data / "validation.csv").read_text().splitlines()
    (other / "validation.csv").write_text("\n".join(lines[:60]) + "\n")
    proc = run_job(["train", "--data", str(other), "--model", str(tiny_checkpoints["tf"]), "--output-root", str(root),
                    "--run-id", "other", "--promote-if-better", "accuracy", *LEARN])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((root / "champion.json").read_text())["run"] == "good"
    assert "validation" in json.loads((root / "promotions" / "other.json").read_text())["reason"]


def test_platform_variables_supply_defaults_and_flags_win(tiny_checkpoints, toy_data, tmp_path, monkeypatch):
    aip = tmp_path / "aip-model"
    board = tmp_path / "aip-tb"
    env = {"AIP_MODEL_DIR": str(aip), "AIP_TENSORBOARD_LOG_DIR": str(board)}
    proc = run_job(["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), *FAST, "--epochs", "1"],
                   env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (aip / "manifest.json").is_file() and list(board.rglob("events.out.tfevents.*"))
    explicit = tmp_path / "explicit"
    proc = run_job(["train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]), "--output",
                    str(explicit), *FAST, "--epochs", "1", "--overwrite"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (explicit / "manifest.json").is_file()
