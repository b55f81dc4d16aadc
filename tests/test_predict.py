"""job.predict: a tiny classifier exported as a real run folder; batch predictions through the
SavedModel and through hf_model/ equal the Keras model's own, in input order."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import numpy as np
import pytest

from job import export, predict
from job.errors import ConfigError, DataError, ModelError

TEXTS = ["The film was wonderful.", "Dull.", "I found the cast rather clever and funny, and the plot moved well.",
         "The plot? Utterly dull and slow, a waste of an evening.", "Clever!"]
PAIRS = ["Great acting.", "The pace was slow and the ending was weak.", "Fine.", "Bad.", "A clever and funny film."]
LABELS = ("neg", "pos")
MAX_LENGTH = 32


@pytest.fixture(scope="module")
def run_dir(tiny_checkpoints, tmp_path_factory):
    """A run folder as the job publishes it (saved_model/ + hf_model/), and the Keras model itself."""
    import tensorflow as tf

    from job import model as model_step
    from job.config import ModelConfig

    ckpt = tiny_checkpoints["tf"]
    tf.keras.utils.set_random_seed(5)
    tok = model_step.load_tokenizer(ckpt, ModelConfig(max_length=MAX_LENGTH))
    clf = model_step.load_classifier(ckpt, "tf", LABELS)
    clf(clf.dummy_inputs)
    # An untrained tiny BERT pools nearly the same vector for every text, so a fresh head gives the
    # same probabilities to all rows - which would hide a row-order bug. Aim the head along the
    # direction in which these texts' pooled vectors differ most, so their probabilities spread out.
    enc = tok(TEXTS + PAIRS, padding=True, return_tensors="np")
    pooled = clf.bert({k: tf.constant(v) for k, v in enc.items()}, training=False).pooler_output.numpy()
    centred = pooled - pooled.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    scale = 1.5 / (centred @ direction).std()
    clf.classifier.kernel.assign(np.stack([-direction, direction], axis=1).astype("float32") * scale / 2)
    clf.classifier.bias.assign(np.array([1, -1], "float32") * float(pooled.mean(axis=0) @ direction) * scale / 2)
    names = tuple(n for n in tok.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids"))
    folder = tmp_path_factory.mktemp("run") / "r1"
    folder.mkdir()
    export.export_all(clf, tok, names, folder)
    return folder, clf, tok


def direct_probabilities(clf, tok, texts, pairs=None) -> np.ndarray:
    import tensorflow as tf

    enc = tok(*([texts, pairs] if pairs else [texts]), padding=True, truncation=True, max_length=MAX_LENGTH,
              return_tensors="np")
    logits = clf({k: tf.constant(v) for k, v in enc.items()}, training=False).logits
    return tf.nn.softmax(logits, axis=-1).numpy()


def test_saved_model_predictions_equal_the_keras_model(run_dir, caplog):
    folder, clf, tok = run_dir
    assert predict.load_predictor(folder, MAX_LENGTH).kind == "saved_model"
    with caplog.at_level(logging.INFO, logger="job.predict"):
        probs, names = predict.predict_rows(folder, TEXTS, None, batch_size=2, max_length=MAX_LENGTH, log_every=1)
    expected = direct_probabilities(clf, tok, TEXTS)
    assert names == LABELS and probs.shape == (5, 2) and probs.dtype == np.float32
    assert expected[:, 1].std() > 0.05, "the rows must differ, or a row-order bug would go unseen"
    np.testing.assert_allclose(probs, expected, atol=2e-5)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predicted ")]
    assert len(progress) == 3 and progress[-1].startswith("predicted 5/5 rows (3/3 batches")


def test_hf_model_predictions_equal_the_keras_model_for_pairs(run_dir, tmp_path):
    folder, clf, tok = run_dir
    hf_only = tmp_path / "r1"
    shutil.copytree(folder / export.HF_MODEL, hf_only / export.HF_MODEL)
    predictor = predict.load_predictor(hf_only, MAX_LENGTH)
    assert predictor.kind == "hf_model"
    probs = predict.predict_with(predictor, TEXTS, PAIRS, batch_size=3, max_length=MAX_LENGTH)
    np.testing.assert_allclose(probs, direct_probabilities(clf, tok, TEXTS, PAIRS), atol=2e-5)
    # ... and the SavedModel agrees on pairs too.
    sm, _ = predict.predict_rows(folder, TEXTS, PAIRS, batch_size=4, max_length=MAX_LENGTH)
    np.testing.assert_allclose(sm, probs, atol=2e-5)


def test_jsonl_and_csv_files_have_one_row_per_input(run_dir, tmp_path):
    folder, _, _ = run_dir
    probs, names = predict.predict_rows(folder, TEXTS, None, batch_size=8, max_length=MAX_LENGTH)
    jsonl = predict.write_predictions(TEXTS, probs, names, tmp_path / "out" / "p.jsonl")
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == TEXTS
    for r, p in zip(records, probs):
        assert r["label"] == int(p.argmax()) and r["label_name"] == LABELS[r["label"]]
        assert list(r["probabilities"]) == list(LABELS)
        np.testing.assert_allclose(list(r["probabilities"].values()), p, rtol=1e-6)

    path = predict.write_predictions(TEXTS, probs, names, tmp_path / "p.csv", pairs=PAIRS)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["text", "text_pair", "label", "label_name", "probability_neg", "probability_pos"]
    assert [r["text"] for r in rows] == TEXTS and [r["text_pair"] for r in rows] == PAIRS
    np.testing.assert_allclose([[float(r["probability_neg"]), float(r["probability_pos"])] for r in rows], probs,
                               rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.csv"], "no temp files left"


def test_bad_inputs_are_refused_with_typed_errors(run_dir, tmp_path):
    folder, _, _ = run_dir
    predictor = predict.load_predictor(folder, MAX_LENGTH)
    assert predict.predict_with(predictor, [], None, 4, MAX_LENGTH).shape == (0, 2)
    with pytest.raises(DataError, match="2 texts but 1 text pairs"):
        predict.predict_with(predictor, ["a", "b"], ["c"], 4, MAX_LENGTH)
    with pytest.raises(DataError, match="row 2: the text is NoneType"):
        predict.predict_with(predictor, ["a", None], None, 4, MAX_LENGTH)
    with pytest.raises(ConfigError, match="exceeds this model's limit"):
        predict.load_predictor(folder, 100_000)
    with pytest.raises(ModelError, match="holds no hf_model"):
        predict.load_predictor(tmp_path, MAX_LENGTH)
    with pytest.raises(ConfigError, match=".jsonl or .csv"):
        predict.write_predictions(["a"], np.ones((1, 2)), LABELS, tmp_path / "p.xlsx")
