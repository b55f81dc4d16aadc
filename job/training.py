"""Training: optimizer with a warm-up/linear-decay schedule, a loss built for logits, and fit().

The classifier outputs logits (no softmax), so the loss is
SparseCategoricalCrossentropy(from_logits=True). Built for probabilities instead, the loss
squashes already-unnormalised scores and the model barely learns - the classic silent bug this
job exists to rule out (tests/test_training.py proves the difference).
"""

from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np
import tensorflow as tf

from job.config import TrainConfig
from job.errors import BadInputError

log = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm", "layer_norm")


@tf.keras.utils.register_keras_serializable(package="finetune_job")
class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """0 -> peak linearly over `warmup_steps`, then peak -> 0 linearly at `total_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        decay_span = float(max(self.total_steps - self.warmup_steps, 1))
        decay = self.peak * tf.maximum(0.0, (self.total_steps - step) / decay_span)
        return tf.where(step < self.warmup_steps, warm, decay)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def make_optimizer(cfg: TrainConfig, total_steps: int) -> tf.keras.optimizers.Optimizer:
    warmup = int(math.floor(total_steps * cfg.warmup_ratio))
    schedule = WarmupLinearDecay(cfg.learning_rate, warmup, total_steps)
    opt = tf.keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay,
                                    epsilon=1e-8, clipnorm=None)
    # Decaying biases and LayerNorm scales hurts fine-tuning (BERT's original recipe skips them).
    opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return opt


def compile_model(model, cfg: TrainConfig, total_steps: int) -> None:
    """Call inside strategy.scope()."""
    model.compile(optimizer=make_optimizer(cfg, total_steps),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy("accuracy")])


class FailOnNaN(tf.keras.callbacks.Callback):
    """Stop at the first non-finite loss: continuing only burns GPU hours on a dead model."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True
            self.failed_at = batch
            raise TrainingDiverged(f"the training loss became {loss} at step {batch + 1}: lower --learning-rate "
                                   "or check the data")


class TrainingDiverged(BadInputError):
    pass


class Throughput(tf.keras.callbacks.Callback):
    """Wall time per epoch and the steady-state step time (the first step includes tracing)."""

    def __init__(self):
        super().__init__()
        self.epoch_seconds: list[float] = []
        self.first_step_seconds: float | None = None
        self._t0 = self._tb = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._t0)

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_step_seconds is None:
            self._tb = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step_seconds is None:
            self.first_step_seconds = time.perf_counter() - self._tb


def progress_verbosity() -> int:
    # A live bar on a terminal; one line per epoch in pod logs (no megabytes of carriage returns).
    return 1 if sys.stdout.isatty() else 2


def fit(model, train_ds, val_ds, cfg: TrainConfig, steps_per_epoch: int, callbacks=(),
        initial_epoch: int = 0) -> tuple[dict, Throughput]:
    meter = Throughput()
    history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=steps_per_epoch, callbacks=[FailOnNaN(), meter, *callbacks],
                        verbose=progress_verbosity())
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}, meter
