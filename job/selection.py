"""Best epoch and early stopping: keep the weights of the epoch with the best validation metric.

    sel = selection.BestEpoch("pearson", +1, history, score=lambda model: {...}, patience=2)
    training.fit(..., selection=sel)   # publishes sel's best weights, stops after 2 epochs without gain

Like Keras' `EarlyStopping(restore_best_weights=True)` and Hugging Face's `load_best_model_at_end`,
but resumable: the best-so-far weights live in shadow variables saved inside every training
checkpoint, and the best epoch and the patience count are derived from the epochs' history that
the checkpoint carries. A resumed run therefore knows its best epoch and how long it has waited
without keeping any state of its own.

Metrics Keras does not compute per epoch (F1, correlations) come from `score(model)`, a full pass
over the validation split with the same code as the final evaluation: the published model's
validation metric then equals the recorded best exactly.
"""

from __future__ import annotations

import logging
import math

import tensorflow as tf

log = logging.getLogger(__name__)


def best_epoch(values: list[float], sign: int, min_delta: float = 0.0) -> int | None:
    """0-based index of the best value (earliest among equals); an epoch counts as better only when
    it improves on the best so far by more than min_delta. None without finite values."""
    best = None
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        if best is None or (v - values[best]) * sign > min_delta:
            best = i
    return best


class BestEpoch(tf.keras.callbacks.Callback):
    """Put the watched metric into each epoch's logs, copy the weights when it is the best so far,
    and stop after `patience` epochs without an improvement greater than `min_delta`.

    Must run before the checkpointing callback, which appends the logs to `history` and saves the
    shadow weights with the rest of the state.
    """

    def __init__(self, metric: str, sign: int, history: dict, score=None, patience: int = 0,
                 min_delta: float = 0.0):
        super().__init__()
        self.metric, self.sign, self.history = metric, sign, history
        self.key = f"val_{metric}"
        self.score, self.patience, self.min_delta = score, patience, min_delta
        self.shadow: tf.Module | None = None
        self.stopped = False

    # -- shadow weights: created before the checkpoint is restored, so a resume fills them
    def attach(self, model) -> tf.Module:
        self.model_ref = model
        module = tf.Module()
        module.weights = [tf.Variable(v.read_value(), trainable=False, name="best") for v in model.variables]
        self.shadow = module
        return module

    def _copy(self, source, dest) -> None:
        for s, d in zip(source, dest):
            d.assign(s.read_value() if hasattr(s, "read_value") else s)

    # -- what the history says
    def values(self) -> list[float]:
        return list(self.history.get(self.key, []))

    def best(self) -> int | None:
        return best_epoch(self.values(), self.sign, self.min_delta)

    def waited(self) -> int:
        """Epochs since the best one (the patience count)."""
        values, best = self.values(), self.best()
        return len(values) - 1 - best if best is not None else len(values)

    def should_stop(self) -> bool:
        return bool(self.patience) and len(self.values()) > 0 and self.waited() >= self.patience

    # -- Keras hooks
    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.key not in logs and self.score is not None:
            for name, value in self.score(self.model).items():
                logs.setdefault(f"val_{name}", value)
        value = logs.get(self.key)
        if value is None:
            raise KeyError(f"validation metric {self.key} missing from the epoch's logs ({', '.join(logs)})")
        values = [*self.values(), float(value)]
        if best_epoch(values, self.sign, self.min_delta) == len(values) - 1:
            self._copy(self.model.variables, self.shadow.weights)
            log.info("epoch %d: best %s so far (%.4f)", epoch + 1, self.key, value)
        best = best_epoch(values, self.sign, self.min_delta)
        if self.patience and len(values) - 1 - best >= self.patience:
            log.info("early stopping after epoch %d: no %s gain above %g for %d epochs (best: epoch %d)", epoch + 1,
                     self.key, self.min_delta, self.patience, best + 1)
            self.model.stop_training = True
            self.stopped = True

    def restore_best(self, model) -> None:
        """The best epoch's weights into the model (no-op when the last epoch is the best)."""
        values, best = self.values(), self.best()
        if best is not None and best != len(values) - 1:
            self._copy(self.shadow.weights, model.variables)
            log.info("publishing epoch %d (best %s %.4f; last epoch %d: %.4f)", best + 1, self.key, values[best],
                     len(values), values[-1])

    def summary(self) -> dict:
        values, best = self.values(), self.best()
        return {"metric": self.metric, "higher_is_better": self.sign > 0,
                "best_epoch": best + 1 if best is not None else None,
                "best": values[best] if best is not None else None,
                "last_epoch": len(values), "last": values[-1] if values else None,
                "early_stopping_patience": self.patience, "early_stopping_min_delta": self.min_delta,
                "stopped_early": self.should_stop()}
