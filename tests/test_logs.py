"""job.logs: JSON lines that Cloud Logging parses, text otherwise, and the progress mode."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import pytest

from job import logs
from job.errors import ConfigError


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]


def test_json_logs_are_one_object_per_line(restore_logging):
    out = io.StringIO()
    logs.setup_logging("json", "DEBUG", stream=out)
    log = logging.getLogger("job.test")
    log.debug("debug %d", 1)
    log.info("two\nlines", extra={"json_fields": {"epoch": 3, "path": logs}})
    log.log(25, "between info and warning")
    log.warning("careful")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    log.critical("fatal")
    lines = out.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line parses on its own
    assert [e["severity"] for e in entries] == ["DEBUG", "INFO", "INFO", "WARNING", "ERROR", "CRITICAL"]
    assert [e["logger"] for e in entries] == ["job.test"] * 6
    assert entries[0]["message"] == "debug 1" and entries[1]["message"] == "two\nlines"
    assert entries[1]["epoch"] == 3 and "job.logs" in entries[1]["path"]
    assert entries[4]["message"].startswith("failed\nTraceback") and "ValueError: boom" in entries[4]["message"]
    for e in entries:
        assert e["time"].endswith("Z")
        when = dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 60
        assert e["logging.googleapis.com/sourceLocation"]["file"].endswith("test_logs.py")


def test_level_filters_and_text_format(restore_logging):
    out = io.StringIO()
    logs.setup_logging("text", "warning", stream=out)
    logging.getLogger("job.test").info("hidden")
    logging.getLogger("job.test").warning("shown")
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" WARNING job.test: shown")
    assert logging.getLogger("urllib3").level == logging.WARNING


@pytest.mark.parametrize("fmt, level", [("xml", "INFO"), ("json", "LOUD")])
def test_unknown_format_or_level_is_a_config_error(fmt, level):
    with pytest.raises(ConfigError):
        logs.setup_logging(fmt, level)


def test_severity_names():
    assert [logs.severity(n) for n in (5, 10, 20, 30, 40, 50, 60)] == [
        "DEFAULT", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "CRITICAL"]


def test_progress_mode_follows_the_terminal(tmp_path):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert logs.progress_mode(Tty()) == "bar"
    assert logs.progress_mode(io.StringIO()) == "lines"
    with open(tmp_path / "f", "w") as f:
        assert logs.progress_mode(f) == "lines"
    closed = io.StringIO()
    closed.close()
    assert logs.progress_mode(closed) == "lines"
