"""SIGTERM handling in-process: the handler's exception must reach the job's top level wherever
the main thread is when the signal arrives (job/training.py Preemption; the CLI-level behaviour is
in tests/test_resume.py)."""

from __future__ import annotations

import io
import logging
import os
import signal

import pytest

from job import logs, training


class SignallingStream(io.StringIO):
    """A log stream that receives SIGTERM while a record is being written to it."""

    def write(self, text: str) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        return super().write(text)  # Python code: the handler runs here, inside logging's emit()


@pytest.fixture
def job_logging():
    """The job's logging setup on a SignallingStream; pytest's own handlers restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = SignallingStream()
    logs.setup_logging("text", "INFO", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_sigterm_outside_training_raises_preempted():
    """The handler itself: outside training a SIGTERM raises Preempted at once."""
    preemption = training.Preemption()
    with preemption.installed(), pytest.raises(training.Preempted):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # a few bytecodes: where Python runs the handler
            pass
    assert preemption.requested.is_set()


def test_sigterm_while_a_log_line_is_written_is_not_swallowed(job_logging):
    preemption = training.Preemption()
    with preemption.installed(), pytest.raises(training.Preempted):
        logging.getLogger("job.run").info("config: %s", {"data": "..."})
        for _ in range(1000):
            pass


class SignalsWhenCollected:
    """An object whose finalizer receives SIGTERM: what the handler raises there is dropped by
    Python ("Exception ignored in ...")."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped Preempted
def test_a_sigterm_lost_in_a_finalizer_still_stops_the_run_at_the_next_check():
    preemption = training.Preemption()
    with preemption.installed():
        SignalsWhenCollected()  # collected at once: the handler's Preempted is dropped
        assert preemption.requested.is_set()
        with pytest.raises(training.Preempted, match="received SIGTERM"):
            preemption.check()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_fit_refuses_to_start_after_a_lost_sigterm_and_saves_nothing(tmp_path):
    """The CI failure this guards: a SIGTERM during data loading whose exception was lost, then one
    training step and a checkpoint. fit() must stop before its first step, with no checkpoint."""
    import numpy as np
    import tensorflow as tf

    from job.checkpoints import CheckpointStore
    from job.config import TrainConfig

    model = tf.keras.Sequential([tf.keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.ones((8, 3), np.float32), np.zeros((8,), np.int64)
    batches = lambda epoch, skip: tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()  # noqa: E731
    store = CheckpointStore(str(tmp_path / "ckpt"), tmp_path / "local", "fp")
    preemption = training.Preemption()
    with preemption.installed():
        SignalsWhenCollected()
        with pytest.raises(training.Preempted) as raised:
            training.fit(model, batches, (batches(0, 0), 1), TrainConfig(epochs=1, checkpoint_every=1), 2,
                         store, preemption)
    assert "checkpoint saved" not in str(raised.value)
    assert int(model.optimizer.iterations.numpy()) == 0, "no training step ran"
    assert not (tmp_path / "ckpt" / "state.json").exists()
