"""Training: optimizer with a warm-up/linear-decay schedule, a loss built for logits, and fit().

The classifier outputs logits (no softmax), so the loss is
SparseCategoricalCrossentropy(from_logits=True). Built for probabilities instead, the loss
squashes already-unnormalised scores and the model barely learns - the classic silent bug this
job exists to rule out (tests/test_training.py proves the difference).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from job.checkpoints import CheckpointStore
from job.config import TrainConfig
from job.errors import BadInputError, TransientError

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


class Preempted(TransientError):
    pass


class Preemption:
    """SIGTERM handling: outside training stop at once; inside, finish the step, checkpoint, stop.

    Kubernetes sends SIGTERM on eviction, preemption and deletion, then SIGKILL after the grace
    period (30 s by default): one step plus one checkpoint upload must fit in it.
    """

    MESSAGE = "received SIGTERM (eviction or preemption): run again with the same arguments to resume"

    def __init__(self):
        self.requested = threading.Event()
        self.deferred = False

    def handler(self, signum, frame):
        self.requested.set()
        if not self.deferred:
            raise Preempted(self.MESSAGE)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled on the main thread (e.g. under a test runner)
            return
        previous = signal.signal(signal.SIGTERM, self.handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


class Checkpointing(tf.keras.callbacks.Callback):
    """Saves every `every` optimizer steps and after each epoch's validation; stops on SIGTERM."""

    def __init__(self, store: CheckpointStore, checkpoint: tf.train.Checkpoint, every: int,
                 history: dict, preemption: Preemption | None):
        super().__init__()
        self.store, self.checkpoint, self.every = store, checkpoint, every
        self.history = history  # epoch metrics so far, carried across resumes
        self.preemption = preemption

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if self.preemption is not None and self.preemption.requested.is_set():
            self.store.save(self.checkpoint, step, self.history)
            raise Preempted(Preemption.MESSAGE + f" (checkpoint saved at step {step})")
        if self.every and step % self.every == 0:
            self.store.save(self.checkpoint, step, self.history)

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        self.store.save(self.checkpoint, self._step(), self.history)


def progress_verbosity() -> int:
    # A live bar on a terminal; one line per epoch in pod logs (no megabytes of carriage returns).
    return 1 if sys.stdout.isatty() else 2


def fit(model, make_train_ds, validation, cfg: TrainConfig, steps_per_epoch: int, store: CheckpointStore,
        preemption: Preemption | None = None, callbacks=()) -> tuple[dict, Throughput]:
    """Train for cfg.epochs, resuming from `store` when it holds a save of this run.

    `make_train_ds(epoch, skip)` streams batches from `epoch`, skipping its first `skip` batches,
    so a resumed run sees exactly the batches an uninterrupted one would have seen next.
    `validation` is (dataset, steps).
    """
    val_ds, val_steps = validation
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    resume = store.restore(checkpoint)
    start = resume.step if resume else 0
    history = {k: list(v) for k, v in (resume.history if resume else {}).items()}
    meter = Throughput()
    saver = Checkpointing(store, checkpoint, cfg.checkpoint_every, history, preemption)
    epoch, skip = divmod(start, steps_per_epoch)
    legs = []  # (first epoch, end epoch, steps per epoch, batches to skip)
    if skip:
        # A resumed, part-done epoch runs on its own: Keras gives every epoch of a fit() one length.
        legs.append((epoch, epoch + 1, steps_per_epoch - skip, skip))
        epoch += 1
    if epoch < cfg.epochs:
        legs.append((epoch, cfg.epochs, steps_per_epoch, 0))
    if preemption is not None:
        preemption.deferred = True
    try:
        for first, last, steps, skip_batches in legs:
            model.fit(make_train_ds(first, skip_batches), validation_data=val_ds, validation_steps=val_steps, epochs=last,
                      initial_epoch=first, steps_per_epoch=steps, callbacks=[FailOnNaN(), meter, saver, *callbacks],
                      verbose=progress_verbosity())
    finally:
        if preemption is not None:
            preemption.deferred = False
    if preemption is not None and preemption.requested.is_set():
        raise Preempted(Preemption.MESSAGE)
    return history, meter
