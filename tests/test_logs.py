"""job.logs: JSON lines that Cloud Logging parses, text otherwise, and the progress mode."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re

import pytest

from job import logs
from job.errors import ConfigError, ExitCode


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


# --------------------------------------------------------------------------------------------
# Other code's output: sorted into records (no subprocess, no TensorFlow)

def _levels(entries):
    return [(e.levelname, e.name, e.getMessage()) if isinstance(e, logging.LogRecord) else ("OWN", "", e)
            for e in entries]


def test_foreign_output_sorts_native_lines_tracebacks_and_the_error_line():
    sorter = logs.ForeignOutput("stderr", "json")
    own = json.dumps({"severity": "INFO", "message": "mine"})
    chunk = "\n".join([
        logs.ABSL_PREINIT,
        "I0000 00:00:1796197334.372580    3940 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
        "To enable the following instructions: AVX2 AVX512F, rebuild TensorFlow.",  # same write: same level
        "E0000 00:00:1796197298.145682    3099 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
        "E1202 07:41:38.145682    3099 saver.cc:12] could not write gs://b/x?X-Goog-Signature=abc",
        own,
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "",
        "During handling of the above exception, another exception occurred:",
        "Traceback (most recent call last):",
        '  File "y.py", line 2, in <module>',
        "ValueError: boom",
        "a stray line",
        "error: no such file",
        "half a li",
    ])
    got = _levels(sorter.feed(chunk) + sorter.feed("ne\n"))
    cuda = "DEBUG" if not logs.gpu_device_present() else "ERROR"
    assert got == [
        ("DEBUG", "tensorflow.native", logs.ABSL_PREINIT),
        ("DEBUG", "tensorflow.native", chunk.splitlines()[1]),
        ("DEBUG", "tensorflow.native", chunk.splitlines()[2]),
        (cuda, "tensorflow.native", chunk.splitlines()[3]),
        ("ERROR", "tensorflow.native", "E1202 07:41:38.145682    3099 saver.cc:12] could not write "
                                       "gs://b/x?X-Goog-Signature=REDACTED"),
        ("OWN", "", own),
        ("ERROR", "stderr", "\n".join(chunk.splitlines()[6:13])),
        ("WARNING", "stderr", "a stray line"),
        ("ERROR", "finetune-job", "error: no such file"),
        ("WARNING", "stderr", "half a line"),
    ]
    records = [e for e in sorter.feed(chunk) if isinstance(e, logging.LogRecord)]
    # Harmless E lines some CPUs print (seen on a Xeon with AMX) are chatter; real errors stay errors.
    assert logs.native_level("E", "oneDNN supports DT_INT64 only on platforms with AVX-512. Falling back to the "
                                  "default Eigen-based implementation if present.") == logging.DEBUG
    assert logs.native_level("E", "could not write gs://b/x") == logging.ERROR
    assert records[1].pathname == "cpu_feature_guard.cc" and records[1].lineno == 227
    assert records[1].created == 1796197334.372580  # TF's own time stamp


def test_foreign_output_on_stdout_keeps_json_documents_and_last_redraws():
    sorter = logs.ForeignOutput("stdout", "json")
    got = sorter.feed('{\n  "accuracy": 0.5,\n  "per_class": {\n    "a": 1\n  }\n}\n'
                      "1/4 [==>...] - loss: 0.9\r2/4 [====>..] - loss: 0.8\r4/4 [=======] - loss: 0.7\n"
                      "Traceback (most recent call last):\n")
    got += sorter.flush()  # the writer went quiet: an unfinished block is written out
    assert _levels(got) == [
        ("OWN", "", '{"accuracy": 0.5, "per_class": {"a": 1}}'),
        ("INFO", "stdout", "4/4 [=======] - loss: 0.7"),
        ("ERROR", "stdout", "Traceback (most recent call last):"),
    ]
    text = logs.ForeignOutput("stderr", "text")
    line = "2026-12-02 07:41:37,430 INFO job.run: config: {}"
    assert _levels(text.feed(f"{line}\n/x.py:3: FutureWarning: old\n")) == [
        ("OWN", "", line), ("DEBUG", "stderr", "/x.py:3: FutureWarning: old")]


def test_demoted_lowers_matching_records_and_drops_them_below_the_level(restore_logging):
    out = io.StringIO()
    logs.setup_logging("text", "INFO", stream=out)
    lib = logging.getLogger("transformers.modeling_tf_utils")
    with logs.demoted([lib.name], r"^Some layers"):
        lib.warning("Some layers of X are newly initialized: ['classifier']")
        lib.warning("something else")
    lib.warning("Some layers again, outside the block")
    lib.warning("TensorFlow and JAX classes are deprecated and will be removed")  # NoticeFilter
    assert [line.split(" ", 3)[2:] for line in out.getvalue().splitlines()] == [
        ["WARNING", "transformers.modeling_tf_utils: something else"],
        ["WARNING", "transformers.modeling_tf_utils: Some layers again, outside the block"]]


def test_format_cli_error_follows_the_format(restore_logging):
    logs.setup_logging("json", "INFO", stream=io.StringIO())
    entry = json.loads(logs.format_cli_error("error: no such file"))
    assert entry["severity"] == "ERROR" and entry["message"] == "error: no such file"
    logs.setup_logging("text", "INFO", stream=io.StringIO())
    assert logs.format_cli_error("error: no such file") == "error: no such file"


# --------------------------------------------------------------------------------------------
# The forwarding parent of json format: a real fork, real pipes, real signals (no TensorFlow)

FORWARDED = r"""
import logging, os, signal, subprocess, sys, time, traceback, warnings
sys.path.insert(0, ROOT)
from job import logs
logs.setup_logging("json", "INFO", own_process=True)
print("child pid", os.getpid(), flush=True)
logging.getLogger("job.test").info("own line")
print("a print to stdout")
os.write(2, b"I0000 00:00:1796197288.831111    2742 port.cc:153] oneDNN custom operations are on.\n")
os.write(2, b"W0000 00:00:1796197288.831111    2742 foo.cc:7] a native warning\n")
warnings.warn("a library warning")
warnings.warn("an old api", FutureWarning)
try:
    1 / 0
except ZeroDivisionError:
    traceback.print_exc()
subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('from a subprocess\\n')"])
if MODE == "kill":
    os.kill(os.getpid(), signal.SIGKILL)  # like the OOM killer: no last words
signal.signal(signal.SIGTERM, lambda *_: (print("error: got SIGTERM", file=sys.stderr), sys.exit(75)))
print("ready", flush=True)
time.sleep(60)
"""


def _forwarded(mode: str, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    script = tmp_path / "forwarded.py"
    script.write_text(f"ROOT = {str(ROOT)!r}\nMODE = {mode!r}\n{FORWARDED}")
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)


def _entries(text: str) -> list[dict]:
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line parses
    for e in entries:
        assert isinstance(e, dict) and {"severity", "message", "time"} <= set(e), e
    return entries


def test_json_format_forwards_every_line_as_json_and_reports_a_killed_job(tmp_path):
    proc = _forwarded("kill", tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -9  # the parent ends as the job did
    stdout, stderr = _entries(out), _entries(err)
    assert [e["message"] for e in stdout][1:] == ["a print to stdout"]
    assert {e["severity"] for e in stdout} == {"INFO"}
    by_message = {e["message"].splitlines()[0]: e for e in stderr}
    assert by_message["own line"]["logger"] == "job.test"
    native = by_message["W0000 00:00:1796197288.831111    2742 foo.cc:7] a native warning"]
    assert native["severity"] == "WARNING" and native["logging.googleapis.com/sourceLocation"]["file"] == "foo.cc"
    assert not [e for e in stderr if "port.cc" in e["message"] or "an old api" in e["message"]]  # DEBUG
    assert [e["severity"] for e in stderr if "a library warning" in e["message"]] == ["WARNING"]
    (tb,) = [e for e in stderr if e["message"].startswith("Traceback")]
    assert tb["severity"] == "ERROR" and tb["message"].endswith("ZeroDivisionError: division by zero")
    assert by_message["from a subprocess"]["severity"] == "WARNING"
    assert stderr[-1]["severity"] == "ERROR"
    assert stderr[-1]["message"] == "error: the job process was killed by signal 9 (SIGKILL)"


def test_json_format_passes_sigterm_on_to_the_job(tmp_path):
    import signal

    proc = _forwarded("term", tmp_path)
    for line in proc.stdout:
        if json.loads(line)["message"] == "ready":
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    last = _entries(err)[-1]
    assert last["severity"] == "ERROR" and last["message"] == "error: got SIGTERM"


# --------------------------------------------------------------------------------------------
# The real CLI: a tiny train run per setting

TINY_RUN = ["--epochs", "1", "--per-replica-batch-size", "16", "--max-length", "32", "--max-train-examples", "32"]
NATIVE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog")
HF_NOTICES = re.compile(r"were not used when|newly initialized|You should probably TRAIN|TensorFlow and JAX classes")


def _train(tiny_checkpoints, toy_data, tmp_path, *options):
    from conftest import run_job

    proc = run_job([*options, "train", "--data", str(toy_data), "--model", str(tiny_checkpoints["tf"]),
                    "--output", str(tmp_path / "out"), *TINY_RUN])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_default_logs_are_the_jobs_lines_only(tiny_checkpoints, toy_data, tmp_path):
    proc = _train(tiny_checkpoints, toy_data, tmp_path)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert not [line for line in lines if NATIVE.search(line) or HF_NOTICES.search(line)]
    stderr = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line for line in stderr if not logs.OWN_TEXT_LINE.match(line)] == []
    assert sum("INFO job.model: classification head newly initialised (2 labels)" in line for line in stderr) == 1


def test_debug_level_shows_tensorflow_and_transformers_notices(tiny_checkpoints, toy_data, tmp_path):
    proc = _train(tiny_checkpoints, toy_data, tmp_path, "--log-level", "DEBUG")
    assert re.search(r"^[IWEF]\d{4} .*\] ", proc.stderr, re.M), "TF's start-up lines"
    assert re.search(r" DEBUG transformers\.modeling_tf_utils: Some layers .* newly initialized: \['classifier'\]",
                     proc.stderr)
    assert "INFO job.model: classification head newly initialised (2 labels)" in proc.stderr


def test_json_format_every_line_of_a_run_is_a_json_object(tiny_checkpoints, toy_data, tmp_path):
    proc = _train(tiny_checkpoints, toy_data, tmp_path, "--log-format", "json", "--log-level", "DEBUG")
    stdout, stderr = _entries(proc.stdout), _entries(proc.stderr)
    assert [e for e in stdout if e["logger"] == "stdout" and "loss:" in e["message"]], "Keras' epoch line"
    native = [e for e in stderr if e["logger"] == "tensorflow.native"]
    assert native and {e["severity"] for e in native} <= {"DEBUG", "WARNING", "ERROR"}
    assert [e["severity"] for e in stderr if e["message"] == "classification head newly initialised (2 labels)"] \
        == ["INFO"]


def test_json_format_failure_ends_with_a_json_error_line(toy_data, tmp_path):
    from conftest import run_job

    missing = tmp_path / "missing"
    proc = run_job(["--log-format", "json", "train", "--data", str(missing), "--model", str(toy_data),
                    "--output", str(tmp_path / "out")])
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr[-2000:]
    stderr = _entries(proc.stderr)
    assert stderr[-1]["severity"] == "ERROR" and stderr[-1]["message"].startswith("error: ")
    assert str(missing) in stderr[-1]["message"]
    assert {e["severity"] for e in stderr} <= {"INFO", "WARNING", "ERROR"}  # nothing at DEBUG by default
