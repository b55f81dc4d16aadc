"""The problem type: what the head predicts and how it is trained, scored, served and stored.

    spec = problem.ProblemSpec("multi_label", ("news", "sports"), thresholds=(0.5, 0.5))
    model.compile(loss=problem.loss(spec), ...)
    final = problem.metrics(spec, targets, logits)
    outputs = problem.serving_outputs(logits_tensor, spec)   # the SavedModel signature's tensors

- single_label: one class per text; softmax over K logits, cross-entropy; accuracy, macro-F1.
- multi_label: any subset of K labels (none included); K independent sigmoids, binary cross-entropy
  on logits; a label is predicted when its probability reaches its threshold (--threshold, or per
  label tuned on validation); micro/macro-F1, per-label P/R/F1/support, subset accuracy, Hamming loss.
- regression: one float per text; the single logit is the `score`; mean squared error; Pearson,
  Spearman, MSE, MAE.

Targets by type (job/labels.py builds them): int32 ids [n]; float32 0/1 [n, K]; float32 [n].
The spec travels with the model in hf_model/config.json (`finetune_job`), so predict and evaluate
apply the same thresholds as serving. Everything but the Keras losses is numpy.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from job.errors import ConfigError

SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"
# Metrics that mean something for each type (--promote-if-better, --select-best); loss fits all.
FITTING = {SINGLE: ("accuracy", "macro_f1", "loss"), MULTI: ("micro_f1", "macro_f1", "loss"),
           REGRESSION: ("pearson", "spearman", "mse", "loss")}
# Hugging Face's names (config.problem_type), so the hf_model folder loads as the right task there.
HF_PROBLEM_TYPES = {SINGLE: "single_label_classification", MULTI: "multi_label_classification",
                    REGRESSION: "regression"}
CONFIG_KEY = "finetune_job"
LAST = "last"
# Per-epoch predicted-vs-true points kept in metrics.json for the regression plots (a seeded sample).
SCATTER_POINTS = 1000


@dataclasses.dataclass(frozen=True)
class ProblemSpec:
    kind: str
    label_names: tuple[str, ...]  # classes, labels, or ("score",) for regression
    thresholds: tuple[float, ...] | None = None  # multi-label: one per label
    tuned: bool = False  # thresholds chosen on validation

    @property
    def num_outputs(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict:
        return {"problem_type": self.kind, "labels": list(self.label_names),
                "thresholds": list(self.thresholds) if self.thresholds is not None else None,
                "thresholds_tuned": self.tuned}


def make_spec(kind: str, label_names: tuple[str, ...], threshold: float = 0.5) -> ProblemSpec:
    return ProblemSpec(kind, tuple(label_names), (float(threshold),) * len(label_names) if kind == MULTI else None)


# --------------------------------------------------------------------------------------------
# Settings: checked at start (job.config.validate) and once the data decided `auto`

def selected_metric(train_cfg, promote_spec: str) -> str:
    """--select-best: given, else the promotion metric, else loss."""
    from job.config import parse_promote_spec

    if train_cfg.select_best:
        return train_cfg.select_best.strip().lower().replace("-", "_")
    return parse_promote_spec(promote_spec)[0] if promote_spec else "loss"


def parse_class_weight(text: str) -> str | dict[str, float]:
    """"none", "balanced", or a JSON object {label: weight > 0}."""
    value = (text or "none").strip()
    if value.lower() in ("none", "balanced"):
        return value.lower()
    try:
        weights = json.loads(value)
    except ValueError:
        weights = None
    if not isinstance(weights, dict) or not weights:
        raise ConfigError(f"--class-weight must be none, balanced or a JSON object of label -> weight "
                          f"(e.g. '{{\"spam\": 5}}'), got {text!r}")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ConfigError(f"--class-weight: the weight of {name!r} must be a number greater than 0, got {w!r}")
    return {str(k): float(v) for k, v in weights.items()}


def check_settings(cfg) -> None:
    """Combinations that cannot work, refused before any data is read (config.validate calls it)."""
    from job.config import PROMOTION_METRICS

    kind, t = cfg.data.problem_type, cfg.train
    parse_class_weight(t.class_weight)
    chosen = t.select_best.strip().lower().replace("-", "_") if t.select_best else ""
    if chosen and chosen != LAST and chosen not in PROMOTION_METRICS:
        raise ConfigError(f"--select-best must be one of {', '.join(PROMOTION_METRICS)} or last, got {t.select_best!r}")
    if t.early_stopping_patience and chosen == LAST:
        raise ConfigError("--early-stopping-patience needs a metric to watch: drop --select-best last")
    if kind == REGRESSION and parse_class_weight(t.class_weight) != "none":
        raise ConfigError("--class-weight applies to classification; drop it for --problem-type regression")
    if kind in (SINGLE, REGRESSION) and (t.tune_thresholds or t.threshold != 0.5):
        raise ConfigError(f"--threshold and --tune-thresholds apply to multi-label only, not --problem-type {kind}")
    if kind != "auto":
        check_fits(kind, t, cfg.output.promote_if_better)


def check_fits(kind: str, train_cfg, promote_spec: str) -> None:
    """Refuse a promotion or selection metric that does not exist for this problem type."""
    from job.config import parse_promote_spec

    for flag, metric in (("promote-if-better", parse_promote_spec(promote_spec)[0] if promote_spec else None),
                         ("select-best", selected_metric(train_cfg, promote_spec))):
        if metric and metric != LAST and metric not in FITTING[kind]:
            raise ConfigError(f"--{flag} {metric} does not fit a {kind} problem: use one of "
                              f"{', '.join(FITTING[kind])}")
    if kind != MULTI and (train_cfg.tune_thresholds or train_cfg.threshold != 0.5):
        raise ConfigError(f"--threshold and --tune-thresholds apply to multi-label only; the data make this {kind}")
    if kind == REGRESSION and parse_class_weight(train_cfg.class_weight) != "none":
        raise ConfigError("--class-weight applies to classification, not to regression")


def direction(metric: str) -> int:
    from job.config import PROMOTION_METRICS

    return PROMOTION_METRICS[metric]


# --------------------------------------------------------------------------------------------
# Class weights (single-label) and positive weights (multi-label), from the training targets

def class_weights(spec: ProblemSpec, setting: str, train_targets: np.ndarray) -> list[float] | None:
    """Per class (single-label: multiplies each row's loss by its class's weight) or per label
    (multi-label: multiplies the positive term of that label's binary cross-entropy), or None.

    balanced, single-label: n / (K * count) as scikit-learn's; multi-label: negatives / positives
    of each label (the pos_weight of PyTorch's BCEWithLogitsLoss), 1 for a label with no positive.
    """
    parsed = parse_class_weight(setting)
    if parsed == "none" or spec.kind == REGRESSION:
        return None
    k = spec.num_outputs
    if parsed == "balanced":
        if spec.kind == SINGLE:
            counts = np.bincount(np.asarray(train_targets, np.int64), minlength=k).astype(float)
            return [float(len(train_targets) / (k * c)) if c else 1.0 for c in counts]
        pos = np.asarray(train_targets, float).sum(axis=0)
        neg = len(train_targets) - pos
        return [float(n / p) if p else 1.0 for p, n in zip(pos, neg)]
    unknown = sorted(set(parsed) - set(spec.label_names))
    if unknown:
        raise ConfigError(f"--class-weight names {unknown[0]!r}, which is not a label of the training data "
                          f"({', '.join(spec.label_names[:10])})")
    return [parsed.get(n, 1.0) for n in spec.label_names]


# --------------------------------------------------------------------------------------------
# Keras: the loss and the metrics shown per epoch

def loss(spec: ProblemSpec, weights: list[float] | None = None):
    """The training loss on logits (never on probabilities: see job/training.py)."""
    import tensorflow as tf

    if spec.kind == SINGLE and weights is None:
        return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if spec.kind == MULTI and weights is None:
        return tf.keras.losses.BinaryCrossentropy(from_logits=True)
    return _WeightedLoss(spec.kind, None if spec.kind == REGRESSION else weights)


def keras_metrics(spec: ProblemSpec) -> list:
    import tensorflow as tf

    if spec.kind == SINGLE:
        return [tf.keras.metrics.SparseCategoricalAccuracy("accuracy")]
    return []  # F1 and correlations need the whole split: computed per epoch by job.selection


def _WeightedLoss(kind: str, weights: list[float] | None):
    import tensorflow as tf

    class WeightedLoss(tf.keras.losses.Loss):
        """Per-row losses: class-weighted cross-entropy, pos-weighted binary cross-entropy, or
        squared error (the single logit against the target, shapes [b, 1] vs [b] made explicit)."""

        def __init__(self):
            super().__init__(name=f"{kind}_loss")
            self.w = None if weights is None else tf.constant(weights, tf.float32)

        def call(self, y_true, y_pred):
            y_pred = tf.cast(y_pred, tf.float32)
            if kind == REGRESSION:
                return tf.square(tf.reshape(y_pred, [-1]) - tf.reshape(tf.cast(y_true, tf.float32), [-1]))
            if kind == SINGLE:
                ids = tf.reshape(tf.cast(y_true, tf.int32), [-1])
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids, logits=y_pred)
                return ce * tf.gather(self.w, ids)
            y = tf.cast(y_true, tf.float32)
            per_label = tf.nn.weighted_cross_entropy_with_logits(labels=y, logits=y_pred, pos_weight=self.w)
            return tf.reduce_mean(per_label, axis=-1)

    return WeightedLoss()


# --------------------------------------------------------------------------------------------
# Serving: the SavedModel's output tensors

def serving_outputs(logits, spec: ProblemSpec | None) -> dict:
    """The serving signature's outputs from float32 logits [batch, K]."""
    import tensorflow as tf

    if spec is None or spec.kind == SINGLE:
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}
    if spec.kind == REGRESSION:
        return {"score": logits[:, 0]}
    probs = tf.sigmoid(logits)
    chosen = probs >= tf.constant(spec.thresholds, tf.float32)
    names = tf.broadcast_to(tf.constant(spec.label_names), tf.shape(chosen))
    # Dense [batch, K]: the label's name where predicted, "" elsewhere (signatures return no ragged lists).
    return {"logits": logits, "probabilities": probs, "predicted": tf.cast(chosen, tf.int32),
            "labels": tf.where(chosen, names, tf.constant(""))}


def annotate_config(config, spec: ProblemSpec) -> None:
    """Store the spec in the Hugging Face config that hf_model/config.json is written from."""
    config.problem_type = HF_PROBLEM_TYPES[spec.kind]
    setattr(config, CONFIG_KEY, spec.to_dict())


def spec_from_config(config: dict, label_names: tuple[str, ...]) -> ProblemSpec:
    """The spec stored in a published hf_model/config.json (runs from before it: single-label)."""
    stored = config.get(CONFIG_KEY) or {}
    kind = stored.get("problem_type") or {v: k for k, v in HF_PROBLEM_TYPES.items()}.get(
        config.get("problem_type"), SINGLE)
    thresholds = stored.get("thresholds")
    if kind == MULTI and not thresholds:
        thresholds = [0.5] * len(label_names)
    return ProblemSpec(kind, tuple(label_names), tuple(float(t) for t in thresholds) if thresholds else None,
                       bool(stored.get("thresholds_tuned")))


# --------------------------------------------------------------------------------------------
# Metrics (numpy)

def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def metrics(spec: ProblemSpec, targets: np.ndarray, logits: np.ndarray) -> dict:
    """The evaluation of one split: what metrics.json's final_evaluation and `evaluate` hold."""
    from job import evaluation

    if spec.kind == SINGLE:
        return evaluation.classification_metrics(targets, logits, spec.label_names)
    if spec.kind == REGRESSION:
        return regression_metrics(np.asarray(targets, np.float64), np.asarray(logits, np.float64)[:, 0])
    return multi_label_metrics(np.asarray(targets) > 0.5, sigmoid(logits), spec.label_names, spec.thresholds)


def scalars(result: dict) -> dict[str, float]:
    """The single-number metrics of metrics(), e.g. to log per epoch."""
    return {k: v for k, v in result.items() if isinstance(v, float)}


def _f1(tp, fp, fn):
    tp, fp, fn = (np.asarray(a, float) for a in (tp, fp, fn))
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    return p, r, f


def multi_label_metrics(truth: np.ndarray, probs: np.ndarray, names: tuple[str, ...],
                        thresholds) -> dict:
    truth = np.asarray(truth, bool).reshape(len(probs), len(names))
    pred = probs >= np.asarray(thresholds, float)[None, :]
    tp, fp, fn = (truth & pred).sum(0), (~truth & pred).sum(0), (truth & ~pred).sum(0)
    p, r, f = _f1(tp, fp, fn)
    _, _, micro = _f1(tp.sum(), fp.sum(), fn.sum())
    # Macro-F1 over the labels present in the data or predicted (as single-label's): absent ones add 0s.
    present = (tp + fp + fn) > 0
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    bce = -(truth * np.log(clipped) + (~truth) * np.log(1 - clipped)).mean() if len(probs) else 0.0
    return {
        "examples": int(len(probs)),
        "loss": float(bce),
        "micro_f1": float(micro),
        "macro_f1": float(f[present].mean()) if present.any() else 0.0,
        "subset_accuracy": float((pred == truth).all(axis=1).mean()) if len(probs) else 0.0,
        "hamming_loss": float((pred != truth).mean()) if len(probs) else 0.0,
        "thresholds": {n: float(t) for n, t in zip(names, thresholds)},
        "per_label": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(truth[:, i].sum()), "predicted": int(pred[:, i].sum())}
                      for i, n in enumerate(names)},
        "label_cardinality": float(truth.sum(axis=1).mean()) if len(probs) else 0.0,
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    import pandas as pd

    return pd.Series(x).rank(method="average").to_numpy()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def regression_metrics(truth: np.ndarray, pred: np.ndarray) -> dict:
    err = pred - truth
    rng = np.random.default_rng(0)
    keep = np.sort(rng.permutation(len(truth))[:SCATTER_POINTS])
    return {
        "examples": int(len(truth)),
        "loss": float((err ** 2).mean()) if len(truth) else 0.0,  # the training loss: MSE
        "pearson": _pearson(truth, pred) if len(truth) > 1 else 0.0,
        "spearman": _pearson(_ranks(truth), _ranks(pred)) if len(truth) > 1 else 0.0,
        "mse": float((err ** 2).mean()) if len(truth) else 0.0,
        "mae": float(np.abs(err).mean()) if len(truth) else 0.0,
        "target_mean": float(truth.mean()) if len(truth) else 0.0,
        # For the scatter and residual plots, which are drawn from metrics.json alone.
        "sample": {"true": [round(float(v), 5) for v in truth[keep]],
                   "predicted": [round(float(v), 5) for v in pred[keep]]},
    }


def tune_thresholds(truth: np.ndarray, probs: np.ndarray, start: float = 0.5, passes: int = 2) -> list[float]:
    """Per-label thresholds that maximise micro-F1 on (truth, probs), by coordinate ascent from
    `start` for every label: each label in turn takes the cut (a midpoint between two of its sorted
    probabilities, or `start`) that gives the best micro-F1 with the others fixed. A label's move is
    kept only when it strictly improves micro-F1, so the result is never worse than `start`, and
    macro-F1-minded per-label optimisation cannot trade the headline figure away."""
    truth = np.asarray(truth, bool)
    probs = np.asarray(probs, float)
    n, k = probs.shape
    th = np.full(k, float(start))

    def counts(j, t):
        pred = probs[:, j] >= t
        return int((pred & truth[:, j]).sum()), int((pred & ~truth[:, j]).sum()), int((~pred & truth[:, j]).sum())

    per = np.array([counts(j, th[j]) for j in range(k)], dtype=np.int64)  # tp, fp, fn per label
    for _ in range(passes):
        for j in range(k):
            others = per.sum(axis=0) - per[j]
            order = np.argsort(-probs[:, j], kind="stable")
            p_sorted, t_sorted = probs[order, j], truth[order, j]
            # Cut after the first m rows (predict those): tp/fp from cumulative sums.
            tp = np.concatenate([[0], np.cumsum(t_sorted)])
            fp = np.concatenate([[0], np.cumsum(~t_sorted)])
            fn = int(t_sorted.sum()) - tp
            tot_tp, tot_fp, tot_fn = others[0] + tp, others[1] + fp, others[2] + fn
            f1 = np.divide(2 * tot_tp, 2 * tot_tp + tot_fp + tot_fn, out=np.zeros(n + 1),
                           where=(2 * tot_tp + tot_fp + tot_fn) > 0)
            # Only cuts between distinct probabilities can be expressed as a threshold.
            valid = np.ones(n + 1, bool)
            valid[1:n] = p_sorted[:-1] > p_sorted[1:]
            cur_tp, cur_fp, cur_fn = others + per[j]
            current = 2 * cur_tp / max(2 * cur_tp + cur_fp + cur_fn, 1)
            best = int(np.argmax(np.where(valid, f1, -1.0)))
            if f1[best] > current + 1e-12:
                if best == 0:
                    t = min(1.0 - 1e-6, (p_sorted[0] + 1.0) / 2)
                elif best == n:
                    t = max(1e-6, p_sorted[-1] / 2)
                else:
                    t = float((p_sorted[best - 1] + p_sorted[best]) / 2)
                th[j] = float(np.clip(t, 1e-6, 1 - 1e-6))
                per[j] = counts(j, th[j])
    return [float(t) for t in th]
