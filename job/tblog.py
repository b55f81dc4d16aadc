"""TensorBoard scalars for a training run, written to a LOCAL folder that the caller uploads later.

    from job import tblog
    tb = tblog.TensorBoardLogger(scratch / "tensorboard")
    training.fit(clf, train_ds, val_ds, cfg.train, steps, callbacks=[tb])
    plots.write_report_plots(metrics, tb.learning_rates, staging / "plots")

Layout (TensorBoard's own convention, so train and validation overlay on one chart per tag):

    LOG_DIR/train/events.out.tfevents.*       step/loss, step/learning_rate   (step = optimizer step)
                                              epoch/loss, epoch/accuracy      (step = epoch, 1-based)
    LOG_DIR/validation/events.out.tfevents.*  epoch/loss, epoch/accuracy      (from val_loss, val_accuracy)

Why not keras.callbacks.TensorBoard: it records the learning rate once per epoch only (evaluated at
the *next* step), adds graph and profiler data we do not want, and would happily write to gs://
through TensorFlow's own filesystem - which talks only to Google's real endpoint and bypasses our
emulator-tested storage layer and its error mapping.

Scalars are written with `tf.summary.write` and the "scalars" plugin metadata - byte for byte what
`tf.summary.scalar` writes - because `tf.summary.scalar` itself is implemented in the tensorboard
package, which the job does not depend on (TensorFlow 2.21 no longer installs it).
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from job.errors import ConfigError

TRAIN, VALIDATION = "train", "validation"
STEP_LOSS, STEP_LR = "step/loss", "step/learning_rate"
EPOCH_TAGS = {"loss": "epoch/loss", "accuracy": "epoch/accuracy"}


def local_log_dir(log_dir: str | Path) -> Path:
    """`log_dir` as a local Path; a URI (gs://, s3://, ...) is refused: upload the folder instead."""
    text = str(log_dir)
    if "://" in text:
        raise ConfigError(f"TensorBoard logs are written to a local folder and uploaded afterwards; got {text}: "
                          "pass a local folder")
    return Path(text).expanduser()


def schedule_of(optimizer):
    """The optimizer's LearningRateSchedule, or None when its rate is a constant."""
    # tf.keras (Keras 2) keeps the schedule in `_learning_rate`; its public `learning_rate` returns
    # the value of the last update instead. Legacy optimizers keep it as the "learning_rate" hyper.
    for candidate in (getattr(optimizer, "_learning_rate", None),
                      getattr(optimizer, "_hyper", {}).get("learning_rate")):
        if isinstance(candidate, tf.keras.optimizers.schedules.LearningRateSchedule):
            return candidate
    return None


def learning_rate_at(optimizer, step_index: int) -> float:
    """The rate the optimizer uses for the update with 0-based index `step_index`.

    Keras evaluates the schedule at `optimizer.iterations` *before* incrementing it, so the k-th
    update (1-based) uses schedule(k - 1).
    """
    schedule = schedule_of(optimizer)
    if schedule is not None:
        return float(schedule(step_index))
    return float(tf.keras.backend.get_value(optimizer.learning_rate))


def write_scalar(tag: str, value: float, step: int, description: str = "") -> None:
    """One scalar into the default summary writer, readable by TensorBoard's scalars dashboard."""
    metadata = summary_pb2.SummaryMetadata(summary_description=description)
    # Plugin "scalars" with empty content (ScalarPluginData version 0), as tensorboard's own scalar().
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=metadata)


class TensorBoardLogger(tf.keras.callbacks.Callback):
    """Scalars per optimizer step (loss, learning rate) and per epoch (train and validation loss and
    accuracy), plus `learning_rates`: the rate of every step, in order, for job.plots.

    The per-step `loss` is what Keras reports after each batch: the running mean since the start of
    the epoch (Keras 2 averages batch losses), not the single batch's loss.
    `every_n_steps` thins the per-step event records on long runs; `learning_rates` keeps every step.
    Use on the chief only (several writers into one folder give TensorBoard duplicate points).
    """

    def __init__(self, log_dir: str | Path, every_n_steps: int = 1):
        super().__init__()
        if every_n_steps < 1:
            raise ConfigError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.log_dir = local_log_dir(log_dir)
        self.every_n_steps = int(every_n_steps)
        self.learning_rates: list[float] = []
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    # -- writers are opened lazily: constructing the callback must not create files
    def _writer(self, name: str) -> tf.summary.SummaryWriter:
        if name not in self._writers:
            folder = self.log_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            self._writers[name] = tf.summary.create_file_writer(str(folder))
        return self._writers[name]

    def _steps_done(self) -> int:
        return int(tf.keras.backend.get_value(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        # Start at the optimizer's step, not 0: a resumed fit() continues the step numbering, and a
        # second fit() with the same callback appends to `learning_rates`.
        self._next_step = self._steps_done()

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        step = self._steps_done()
        # With steps_per_execution > 1 Keras calls back once per several steps: record each of them.
        start, self._next_step = self._next_step, step
        rates = [learning_rate_at(optimizer, s) for s in range(start, step)]
        self.learning_rates.extend(rates)
        if not rates:
            return
        loss = (logs or {}).get("loss")
        # Write when a multiple of every_n_steps was reached since the last call; the values are
        # those after the last of those steps.
        if any(s % self.every_n_steps == 0 for s in range(start + 1, step + 1)):
            with self._writer(TRAIN).as_default():
                if loss is not None:  # NaN is written too: TensorBoard shows where it diverged
                    write_scalar(STEP_LOSS, float(loss), step=step,
                                 description="training loss, running mean since the start of the epoch")
                write_scalar(STEP_LR, rates[-1], step=step,
                             description="learning rate used by this optimizer step")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for split, prefix in ((TRAIN, ""), (VALIDATION, "val_")):
            values = {tag: logs[prefix + key] for key, tag in EPOCH_TAGS.items() if prefix + key in logs}
            if not values:
                continue
            writer = self._writer(split)
            with writer.as_default():
                for tag, value in values.items():
                    write_scalar(tag, float(value), step=epoch + 1)
            # Flush per epoch: a preempted job still leaves every finished epoch readable.
            writer.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.flush()
            writer.close()
        self._writers.clear()
