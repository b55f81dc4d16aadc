"""Evaluation: predictions on a split and the classification metrics computed from them (pure numpy)."""

from __future__ import annotations

import weakref

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
    forward = forward_function(model, ds.element_spec[0])
    parts = [forward(x).numpy() for x, _, _ in ds]
    logits = np.concatenate(parts) if parts else np.zeros((0, model.config.num_labels), np.float32)
    out = np.empty_like(logits)
    out[order] = logits
    return out


_FORWARD: dict[tuple, tuple] = {}


def forward_function(model, element_spec):
    """The model's float32-logits forward pass as one traced function per model and compute dtype,
    reused by every call (each epoch's best-epoch scoring, the final evaluation): traced once for
    any batch size and length (input_signature with unknown dimensions), without AutoGraph (see
    job.training._fast_first_step). Holds the model weakly."""
    key = (id(model), model.dtype_policy.compute_dtype)
    ref, fn = _FORWARD.get(key, (None, None))
    if ref is None or ref() is not model:
        for k in [k for k, (r, _) in _FORWARD.items() if r() is None]:
            del _FORWARD[k]
        ref = weakref.ref(model)
        sig = tf.nest.map_structure(lambda s: tf.TensorSpec([None] * s.shape.rank, s.dtype), element_spec)
        fn = tf.function(lambda x: tf.cast(ref()(x, training=False).logits, tf.float32), input_signature=[sig],
                         autograph=False)
        _FORWARD[key] = (ref, fn)
    return fn


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
