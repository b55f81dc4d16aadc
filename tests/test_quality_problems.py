"""Quality of the other problem types on real data, through the real CLI with the packaged
all-MiniLM-L6-v2: regression on GLUE STS-B, and multi-label on a set built from the three UCI
sentiment files (each text one or two sentences; its labels the set of their sources and
sentiments). Sized to stay a few minutes each in CI; the bars are calibrated below and the
full-size figures are in the README with the commands that reproduce them."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from conftest import SHARED_DATA, run_job

STSB = SHARED_DATA / "stsb" / "train.tsv"
UCI = SHARED_DATA / "uci_sentiment"
UCI_SOURCES = {"amazon": "amazon_cells_labelled.txt", "imdb": "imdb_labelled.txt", "yelp": "yelp_labelled.txt"}

# STS-B, CI size: 2,000 training rows, 2 epochs, validation carved from train.tsv (575 rows).
# Calibration (this machine, 2026-12-03): see the README's "Measured" table; the bar sits about
# 0.05 below the figure measured at this size so that seed-to-seed spread does not fail CI.
STSB_ROWS, STSB_EPOCHS, STSB_MIN_PEARSON = 2_000, 2, 0.75
# Multi-label, CI size: 1,600 training / 400 validation texts, 2 epochs.
ML_TRAIN, ML_VALIDATION, ML_EPOCHS, ML_MARGIN = 1_600, 400, 2, 0.15


def packaged():
    from demo.__main__ import packaged_model

    return str(packaged_model())


def uci_sentences() -> dict[str, list[tuple[str, str]]]:
    """Per source, (sentence, sentiment) pairs. Lines split on "\\n" only: imdb holds U+0085."""
    out = {}
    for source, name in UCI_SOURCES.items():
        rows = []
        for line in (UCI / name).read_text(encoding="utf-8").split("\n"):
            if line.strip():
                text, label = line.rstrip("\r").rsplit("\t", 1)
                rows.append((text.strip(), "positive" if label.strip() == "1" else "negative"))
        out[source] = rows
    return out


def multi_label_rows(pool: list[tuple[str, str, str]], n: int, rng: random.Random) -> list[dict]:
    """n texts of one or two sentences drawn from `pool` (source, sentence, sentiment); labels are
    the set of the sentences' sources and sentiments."""
    rows = []
    for _ in range(n):
        picked = rng.sample(pool, rng.choice((1, 2)))
        rows.append({"text": " ".join(s for _, s, _ in picked),
                     "labels": sorted({src for src, _, _ in picked} | {y for _, _, y in picked})})
    return rows


def write_multi_label_set(folder, seed: int = 7):
    """train.jsonl and validation.jsonl with disjoint sentence pools (no sentence in both)."""
    rng = random.Random(seed)
    train_pool, val_pool = [], []
    for source, rows in uci_sentences().items():
        rows = rows[:]
        rng.shuffle(rows)
        cut = int(len(rows) * 0.8)
        train_pool += [(source, s, y) for s, y in rows[:cut]]
        val_pool += [(source, s, y) for s, y in rows[cut:]]
    folder.mkdir(parents=True, exist_ok=True)
    for name, pool, n in (("train.jsonl", train_pool, ML_TRAIN), ("validation.jsonl", val_pool, ML_VALIDATION)):
        rows = multi_label_rows(pool, n, rng)
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return folder / "train.jsonl", folder / "validation.jsonl"


def best_constant_micro_f1(truth: np.ndarray) -> float:
    """The best micro-F1 of a predictor that outputs the same label set for every text."""
    best = 0.0
    for k in range(1, truth.shape[1] + 1):
        for chosen in itertools.combinations(range(truth.shape[1]), k):
            pred = np.zeros_like(truth)
            pred[:, list(chosen)] = True
            tp = float((pred & truth).sum())
            best = max(best, 2 * tp / (pred.sum() + truth.sum()))
    return best


def test_best_constant_micro_f1_by_hand():
    truth = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], bool)
    # {0}: tp 3, predicted 4, true 4 -> 0.75; {0, 1}: tp 4, predicted 8, true 4 -> 0.667; {1}: 0.25
    assert best_constant_micro_f1(truth) == pytest.approx(0.75)


@pytest.mark.skipif(not STSB.is_file(), reason="../shared/data/stsb is absent (a user's fresh clone)")
def test_minilm_regression_on_stsb_reaches_the_calibrated_pearson(tmp_path):
    out = tmp_path / "run"
    proc = run_job(["train", "--train", str(STSB), "--format", "tsv", "--text-column", "sentence1",
                    "--text-pair-column", "sentence2", "--label-column", "score", "--problem-type", "regression",
                    "--model", packaged(), "--output", str(out), "--select-best", "pearson",
                    "--max-train-examples", str(STSB_ROWS), "--epochs", str(STSB_EPOCHS),
                    "--learning-rate", "1e-4", "--max-length", "128"], timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    final = m["final_evaluation"]
    print(f"\nSTS-B carved validation Pearson {final['pearson']:.4f}, Spearman {final['spearman']:.4f}, "
          f"MSE {final['mse']:.4f} after {STSB_EPOCHS} epochs on {STSB_ROWS} rows; "
          f"train {m['phases_seconds']['train']:.0f}s")
    assert final["examples"] == 575  # 10% of 5,749 rows carved with the seed
    assert final["pearson"] >= STSB_MIN_PEARSON and final["spearman"] >= STSB_MIN_PEARSON - 0.05
    # The SavedModel's score signature is what was evaluated: its own evaluation agrees.
    assert (out / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.skipif(not (UCI / "yelp_labelled.txt").is_file(), reason="../shared/data/uci_sentiment is absent")
def test_minilm_multi_label_on_uci_sources_and_sentiments(tmp_path):
    train, validation = write_multi_label_set(tmp_path / "data")
    out = tmp_path / "run"
    proc = run_job(["train", "--train", str(train), "--validation", str(validation), "--label-column", "labels",
                    "--model", packaged(), "--output", str(out), "--tune-thresholds", "--select-best", "micro_f1",
                    "--epochs", str(ML_EPOCHS), "--learning-rate", "1e-4", "--max-length", "128"], timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    final = m["final_evaluation"]
    labels = m["problem"]["labels"]
    rows = [json.loads(line) for line in validation.read_text(encoding="utf-8").splitlines()]
    truth = np.array([[name in r["labels"] for name in labels] for r in rows], bool)
    constant = best_constant_micro_f1(truth)
    at_half = final["at_threshold"]["micro_f1"]
    print(f"\nUCI multi-label ({len(labels)} labels) validation micro-F1 {final['micro_f1']:.4f} tuned, "
          f"{at_half:.4f} at 0.5, macro-F1 {final['macro_f1']:.4f}; best constant predictor {constant:.4f}; "
          f"train {m['phases_seconds']['train']:.0f}s")
    assert m["problem"]["problem_type"] == "multi_label" and final["examples"] == ML_VALIDATION
    assert labels == ["amazon", "imdb", "negative", "positive", "yelp"]
    assert final["micro_f1"] >= constant + ML_MARGIN
    assert final["micro_f1"] >= at_half  # tuned on this validation set: never worse than 0.5
