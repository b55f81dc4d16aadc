"""Progress for pod logs: when stdout is not a terminal Keras prints one line per epoch, so long
epochs go silent; this prints one line at most every `seconds`, with the loss and the speed."""

from __future__ import annotations

import logging
import time

import tensorflow as tf

from job import logs

log = logging.getLogger(__name__)


class ProgressLog(tf.keras.callbacks.Callback):
    def __init__(self, total_steps: int, seconds: float = 30.0):
        super().__init__()
        self.total_steps, self.seconds = total_steps, seconds
        self.enabled = logs.progress_mode() == "lines"
        self._last = self._t0 = 0.0
        self._step0 = 0

    def on_train_begin(self, logs=None):
        self._last = self._t0 = time.monotonic()
        self._step0 = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if not self.enabled or now - self._last < self.seconds:
            return
        self._last = now
        step = int(self.model.optimizer.iterations.numpy())
        rate = (step - self._step0) / max(now - self._t0, 1e-9)
        eta = (self.total_steps - step) / rate if rate else float("nan")
        log.info("step %d/%d (%.0f%%), loss %.4f, %.2f steps/s, about %.0f s left", step, self.total_steps,
                 100 * step / max(self.total_steps, 1), (logs or {}).get("loss", float("nan")), rate, eta)
