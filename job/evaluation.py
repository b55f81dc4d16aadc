"""Evaluation: predictions on a split and the classification metrics computed from them (pure numpy)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from job import features


def predict_logits(model, enc: features.Encoded, batch: int, max_length: int, pad_id: int = 0
                   ) -> np.ndarray:
    """Logits for every row of `enc`, in row order (batches run length-sorted for speed).

    Runs locally on this worker, outside any distribution: a forward pass needs no collectives,
    so every worker of a multi-worker run can do it on its own.
    """
    ds, order = features.eval_dataset(enc, batch, max_length, pad_id)

    @tf.function(reduce_retracing=True)
    def forward(x):
        return tf.cast(model(x, training=False).logits, tf.float32)

    parts = [forward(x).numpy() for x, _, _ in ds]
    logits = np.concatenate(parts) if parts else np.zeros((0, model.config.num_labels), np.float32)
    out = np.empty_like(logits)
    out[order] = logits
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def classification_metrics(labels: np.ndarray, logits: np.ndarray, names: tuple[str, ...]) -> dict:
    """Loss, accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix (rows = truth)."""
    k = len(names)
    labels = np.asarray(labels, dtype=np.int64)
    pred = logits.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    # Macro-F1 over the classes present in the data or predicted; absent classes would add 0s.
    present = (actual + predicted) > 0
    loss = float(-log_softmax(logits.astype(np.float64))[np.arange(len(labels)), labels].mean())
    return {
        "examples": int(len(labels)),
        "loss": loss,
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {names[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                                 "f1": float(f1[i]), "support": int(actual[i])} for i in range(k)},
        "confusion_matrix": {"labels": list(names), "rows_true_cols_predicted": cm.tolist()},
    }
