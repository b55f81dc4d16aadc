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
