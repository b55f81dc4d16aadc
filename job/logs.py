"""Logging setup: readable text on a terminal, one JSON object per line for Cloud Logging.

    from job import logs
    logs.setup_logging(os.environ.get("FT_LOG_FORMAT", "text"), os.environ.get("FT_LOG_LEVEL", "INFO"))

On GKE and Vertex AI the logging agent parses each stdout/stderr line that is a JSON object:
`severity` becomes the entry's severity (otherwise everything on stderr shows as ERROR), `message`
its text, `time` its timestamp, and `logging.googleapis.com/sourceLocation` the file and line. A
traceback stays inside `message` of the same entry, so Error Reporting sees one error, not 30 lines.
Extra fields: `log.info("...", extra={"json_fields": {"epoch": 3}})` adds them to the JSON object
(the same convention as google-cloud-logging's handlers; ignored in text format).

Output the job does not write itself (`setup_logging(..., own_process=True)`, what the CLI does):

- TensorFlow's C++ runtime prints start-up lines (`I0000 ... port.cc:153] oneDNN ...`, CUDA probes)
  straight to file descriptor 2 while it loads, before absl logging exists, so TF_CPP_MIN_LOG_LEVEL
  cannot hide them. In text format the first `import tensorflow` (and a GPU probe) runs with fd 2
  on a temporary file; its lines are replayed through logging afterwards: TF's own level, except
  INFO lines and known harmless start-up noise (CUDA probe errors on a machine without /dev/nvidia*,
  duplicate cuDNN/cuFFT/cuBLAS factory registrations, TensorRT not found) at DEBUG. Not captured at
  --log-level DEBUG: then every line comes through as written.
- In json format the process forks before anything heavy is imported: the job runs in the child
  with stdout and stderr on pipes, and the parent (pid 1 in a container) turns every line that is
  not already a JSON object into one - Keras' epoch lines, print() from libraries, TF C++ lines at
  any time, tracebacks (one entry), the final `error: ...` line (severity ERROR) - and exits with
  the child's status. Being a separate process, it still forwards the last lines when the job is
  killed or crashes. Signals meant for the job (SIGTERM: preemption) are passed on.
- transformers' own log handler is replaced by propagation to this module's handler; a few of its
  notices (TF deprecation, "all weights were used") are demoted to DEBUG; Python warnings are
  logged (DeprecationWarning/FutureWarning at DEBUG).
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import functools
import glob
import importlib.abc
import json
import logging
import os
import re
import selectors
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import IO, Union

from job.errors import ConfigError

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log a line per file, request or weight at INFO: kept to warnings.
NOISY = ("absl", "h5py", "urllib3", "google", "datasets", "transformers.modeling_tf_utils", "matplotlib")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, in Cloud Logging's structured-logging field names."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        elif record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        entry = {
            "severity": severity(record.levelno),
            "message": message,
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {"file": record.pathname, "line": str(record.lineno),
                                                      "function": record.funcName},
        }
        extra = getattr(record, "json_fields", None)
        if isinstance(extra, dict):
            entry.update({k: v for k, v in extra.items() if k not in entry})
        # default=str: a Path or numpy number in json_fields must not turn a log call into a crash.
        return json.dumps(entry, ensure_ascii=False, default=str)


# Query parameters and headers that carry credentials: signed URLs (GCS V2/V4, S3), OAuth tokens.
_SECRET_PARAM = re.compile(r"(?i)\b((?:x-goog-signature|x-goog-credential|x-amz-signature|x-amz-credential|"
                           r"x-amz-security-token|signature|sig|access_token|id_token|token|key|googleaccessid)=)"
                           r"[^&\s'\"]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[a-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """`text` with signed-URL signatures and tokens replaced by REDACTED (logs, errors, metrics.json)."""
    return _BEARER.sub(r"\1REDACTED", _SECRET_PARAM.sub(r"\1REDACTED", text))


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def severity(levelno: int) -> str:
    """Python level -> Cloud Logging severity; custom levels round down to the nearest named one."""
    for level, name in ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"), (logging.WARNING, "WARNING"),
                        (logging.INFO, "INFO"), (logging.DEBUG, "DEBUG")):
        if levelno >= level:
            return name
    return "DEFAULT"


def _check(fmt: str, level: str) -> tuple[str, str]:
    fmt_name = str(fmt).strip().lower()
    if fmt_name not in FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    level_name = str(level).strip().upper()
    if level_name == "WARN":
        level_name = "WARNING"
    if level_name not in LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    return fmt_name, level_name


_FORMAT = "text"  # what setup_logging chose: format_cli_error follows it
_SORT_NATIVE = False  # the CLI in text format below DEBUG: TF's C++ chatter is sorted (native_sorted)


def setup_logging(fmt: str = "text", level: str = "INFO", stream: IO[str] | None = None,
                  own_process: bool = False) -> logging.Handler:
    """Configure the root logger (replacing its handlers) to write to `stream` (stderr); return the handler.

    `own_process`: this process is the job's (the CLI, not a library caller or a test runner): also
    take over what TensorFlow, transformers and other libraries write (see the module docstring).
    In json format that forks: only the child returns from here.
    """
    global _FORMAT, _SORT_NATIVE
    fmt_name, level_name = _check(fmt, level)
    if own_process and fmt_name == "json":
        supervise(level_name)
    _FORMAT = fmt_name
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt_name == "json" else logging.Formatter(TEXT_FORMAT))
    # The handler's own level as well as the root's: records demoted by a filter are then dropped.
    handler.setLevel(level_name)
    handler.addFilter(RedactingFilter())
    handler.addFilter(NoticeFilter(handler))
    logging.basicConfig(level=level_name, handlers=[handler], force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level_name)))
    # TensorFlow gives its logger a handler of its own when it is imported before logging is set up;
    # with propagation on top, every TF line would appear twice, once not as JSON. Root handler only.
    for name in ("absl", "tensorflow"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    # transformers does the same with a handler of its own and propagation off: adopted now if it
    # is imported already, else (the CLI) when it is.
    if (hf_logging := sys.modules.get("transformers.utils.logging")) is not None:
        _adopt_transformers_logging(lambda: None, hf_logging)
    if own_process:
        warnings.showwarning = _show_warning
        _HOOK.on_import("transformers.utils.logging", _adopt_transformers_logging)
        if fmt_name == "text" and level_name != "DEBUG":
            # (json: the forwarding parent sorts TF's lines; DEBUG: nothing to hide.)
            _HOOK.on_import("tensorflow", _quiet_tensorflow_start)
            _SORT_NATIVE = True
        _HOOK.install()
    return handler


def format_cli_error(message: str) -> str:
    """The CLI's last line for a failure: `message` itself ("error: ...") in text format, in json
    format a JSON object with severity ERROR and that message."""
    if _FORMAT != "json":
        return message
    return JsonFormatter().format(logging.LogRecord("finetune-job", logging.ERROR, "entrypoint.py", 0, message,
                                                    None, None))


# -- library notices ---------------------------------------------------------------------------

# transformers notices with nothing in them a user of this job can act on: logged at DEBUG.
DEMOTED_NOTICES = re.compile(r"TensorFlow and JAX classes are deprecated|All model checkpoint layers were used|"
                             r"All the layers of \S+ were initialized|All PyTorch model weights were used|"
                             r"All the weights of \S+ were initialized")


class NoticeFilter(logging.Filter):
    """On the root handler: transformers' DEMOTED_NOTICES become DEBUG records (dropped below the
    handler's level)."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("transformers") and record.levelno > logging.DEBUG \
                and DEMOTED_NOTICES.search(str(record.msg)):
            _demote(record, logging.DEBUG)
        return record.levelno >= self.handler.level


def _demote(record: logging.LogRecord, level: int) -> None:
    record.levelno, record.levelname = level, logging.getLevelName(level)


@contextlib.contextmanager
def demoted(loggers: Iterable[str], pattern: str, level: int = logging.DEBUG):
    """Within the block, records of these loggers whose message matches `pattern` are logged at
    `level` (and dropped when the root logger is set higher), wherever their handlers are."""
    wanted = re.compile(pattern)
    root = logging.getLogger()

    def lower(record: logging.LogRecord) -> bool:
        if record.levelno > level and wanted.search(str(record.msg)):
            _demote(record, level)
            return record.levelno >= root.getEffectiveLevel()
        return True

    targets = [logging.getLogger(name) for name in loggers]
    for logger in targets:
        logger.addFilter(lower)
    try:
        yield
    finally:
        for logger in targets:
            logger.removeFilter(lower)


# Python warnings: library deprecations are for their maintainers, not for this job's users.
_QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_original_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if file is not None:  # written to a file on purpose: leave it alone
        _original_showwarning(message, category, filename, lineno, file, line)
        return
    logger = logging.getLogger("py.warnings")
    level = logging.DEBUG if issubclass(category, _QUIET_WARNINGS) else logging.WARNING
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, filename, lineno, "%s: %s",
                                        (category.__name__, message), None))


def _adopt_transformers_logging(run: Callable[[], None], module) -> None:
    # transformers writes through a handler of its own with propagation off: route it through ours.
    run()
    module.disable_default_handler()
    module.enable_propagation()


# -- first imports -----------------------------------------------------------------------------

class _ImportHook(importlib.abc.MetaPathFinder):
    """Runs `around(run, module)` around the first import of a module instead of a bare `run()`."""

    def __init__(self):
        self.around: dict[str, Callable] = {}

    def on_import(self, name: str, around: Callable) -> None:
        if name not in sys.modules:
            self.around[name] = around

    def install(self) -> None:
        if self.around and self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def find_spec(self, name, path=None, target=None):
        around = self.around.pop(name, None)
        if around is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _AroundLoader(spec.loader, around)
        return spec


class _AroundLoader(importlib.abc.Loader):
    def __init__(self, inner, around):
        self.inner, self.around = inner, around

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        # From here on the module shows its real loader (importlib.resources, pkgutil look at it).
        module.__loader__ = self.inner
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        self.around(lambda: self.inner.exec_module(module), module)


_HOOK = _ImportHook()


def _quiet_tensorflow_start(run: Callable[[], None], module) -> None:
    with fd2_replayed():
        run()
        # CUDA looks for a GPU on first use, printing errors on a machine without one: do it now.
        with contextlib.suppress(Exception):
            module.config.list_physical_devices("GPU")


@contextlib.contextmanager
def native_sorted():
    """For a step that runs native code known to print harmless ERROR lines after start-up (the
    in-graph tokenizer's first run prints `oneDNN supports DT_INT64 only on platforms with AVX-512`
    on some CPUs), fd 2 is replayed through the sorter: the noise at DEBUG, real errors as they are.
    A no-op where nothing is sorted (json: the parent sorts every line; DEBUG; a library caller)."""
    if not _SORT_NATIVE:
        yield
        return
    with fd2_replayed():
        yield


@contextlib.contextmanager
def fd2_replayed():
    """Within the block, file descriptor 2 writes to a temporary file; afterwards (also after an
    exception) its lines are logged as sorted by ForeignOutput."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                tmp.seek(0)
                replay(tmp.read().decode("utf-8", "replace"))
    finally:
        os.close(saved)


def replay(text: str, stream: str = "stderr") -> None:
    """Log captured output: the job's own lines as they are, the rest as ForeignOutput sorts it."""
    sorter = ForeignOutput(stream, _FORMAT)
    for entry in sorter.feed(text) + sorter.flush(eof=True):
        if isinstance(entry, str):
            sys.stderr.write(entry + "\n")
        else:
            logging.getLogger(entry.name).handle(entry)
    sys.stderr.flush()


# -- other code's output -----------------------------------------------------------------------

ABSL_PREINIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# TensorFlow/absl C++ lines: "I0000 00:00:1796197288.831111    2742 port.cc:153] oneDNN ..."
NATIVE_LINE = re.compile(r"^([IWEF])(\d{4}) (\S+)\s+(\d+) ([^\s:\]]+):(\d+)\] ?(.*)$")
_NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# Harmless start-up chatter wherever it runs.
_NATIVE_NOISE = re.compile(r"Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning|Could not find TensorRT|"
                           r"computation placer already registered|oneDNN custom operations|"
                           # An E line on CPUs with AMX/AVX512-BF16 (oneDNN falls back to Eigen for int64 ops).
                           r"oneDNN supports \w+ only on platforms with")
# CUDA looking for a GPU: noise on a machine without one, worth an error on a machine with one.
_CUDA_PROBE = re.compile(r"cuInit|cuda drivers|CUDA_ERROR_NO_DEVICE|kernel driver does not appear|libcuda|"
                         r"cuda_(platform|executor|diagnostics)\.cc|cudart_stub\.cc")
OWN_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_PY_WARNING = re.compile(r"^\S+:\d+: (\w*Warning): ")
_TRACEBACK_GOES_ON = ("During handling of the above exception", "The above exception was the direct cause",
                      "Traceback (most recent call last):")
_MAX_BLOCK = 2000


@functools.lru_cache(maxsize=1)
def gpu_device_present() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def native_level(letter: str, text: str) -> int:
    """Level for a TF C++ line: INFO lines and known noise at DEBUG, else TF's own level."""
    if letter == "I" or _NATIVE_NOISE.search(text) or (_CUDA_PROBE.search(text) and not gpu_device_present()):
        return logging.DEBUG
    return _NATIVE_LEVELS[letter]


Entry = Union[str, logging.LogRecord]  # a line of the job's own, passed on as is, or a record to format


class ForeignOutput:
    """Sorts text that something other than this module's handler wrote to stdout or stderr into
    log records: TF C++ lines at native_level (lines without a prefix right after one, in the same
    write, at its level), tracebacks as one ERROR record, a pretty-printed JSON document on stdout
    as one line, `error: ...` at ERROR, other lines at INFO (stdout) or WARNING (stderr). Lines in
    the job's own `fmt` pass through. A carriage-return redraw keeps its last state only."""

    def __init__(self, stream: str, fmt: str):
        self.stream, self.fmt = stream, fmt
        self._partial = ""
        self._block: list[str] = []
        self._kind = ""  # "traceback" or "json" while a block is open

    def feed(self, text: str) -> list[Entry]:
        *lines, self._partial = (self._partial + text).split("\n")
        return self._sort(lines)

    def flush(self, eof: bool = False) -> list[Entry]:
        """End an open block (the writer went quiet); at `eof` also the unterminated last line."""
        out = self._close_block()
        if eof and self._partial:
            out += self._sort([self._partial]) + self._close_block()
            self._partial = ""
        return out

    def _sort(self, lines: list[str]) -> list[Entry]:
        out: list[Entry] = []
        native = None  # (level, file, line) of the last TF line of this write
        for line in lines:
            if "\r" in line:
                states = [part for part in line.split("\r") if part.strip()]
                line = states[-1] if states else ""
            if self._kind and self._extend_block(line, out):
                continue
            if not line.strip():
                native = None
                continue
            if self._own(line):
                out.append(line)
                native = None
            elif line.startswith("Traceback (most recent call last):"):
                self._kind, self._block, native = "traceback", [line], None
            elif self.stream == "stdout" and line.strip() in ("{", "["):
                self._kind, self._block, native = "json", [line], None
            elif m := NATIVE_LINE.match(line):
                native = (native_level(m.group(1), f"{m.group(5)}:{m.group(6)}] {m.group(7)}"), m.group(5),
                          int(m.group(6)))
                out.append(self._record(native[0], "tensorflow.native", line, native[1], native[2],
                                        _native_time(m.group(3))))
            elif line.startswith(ABSL_PREINIT):
                out.append(self._record(logging.DEBUG, "tensorflow.native", line))
            elif native is not None:
                out.append(self._record(native[0], "tensorflow.native", line, native[1], native[2]))
            else:  # the CLI's (or its watchdog's) last line is the job's own: under its name
                name = "finetune-job" if line.startswith("error: ") else self.stream
                out.append(self._record(self._guess(line), name, line))
        return out

    def _own(self, line: str) -> bool:
        if self.fmt != "json":
            return bool(OWN_TEXT_LINE.match(line))
        if not line.startswith("{"):
            return False
        try:
            return isinstance(json.loads(line), dict)
        except ValueError:
            return False

    def _extend_block(self, line: str, out: list[Entry]) -> bool:
        """Add `line` to the open block if it belongs there (closing it when it ends it)."""
        if self._kind == "traceback":
            self._block.append(line)
            if not (line.startswith((" ", "\t")) or not line.strip() or line.startswith(_TRACEBACK_GOES_ON)):
                out += self._close_block()  # the exception line ends it
            elif len(self._block) >= _MAX_BLOCK:
                out += self._close_block()
            return True
        self._block.append(line)
        if line.rstrip() in ("}", "]"):
            try:
                doc = json.loads("\n".join(self._block))
            except ValueError:
                pass
            else:
                self._kind, self._block = "", []
                text = json.dumps(doc, ensure_ascii=False)
                out.append(text if isinstance(doc, dict) else self._record(logging.INFO, self.stream, text))
                return True
        if len(self._block) >= _MAX_BLOCK:
            out += self._close_block()
        return True

    def _close_block(self) -> list[Entry]:
        kind, block = self._kind, self._block
        self._kind, self._block = "", []
        while block and not block[-1].strip():
            block.pop()
        if not block:
            return []
        if kind == "traceback":
            return [self._record(logging.ERROR, self.stream, "\n".join(block))]
        return [self._record(self._guess(line), self.stream, line) for line in block if line.strip()]

    def _guess(self, line: str) -> int:
        if line.startswith(("error:", "Error:", "ERROR:", "Fatal Python error", "FATAL", "Segmentation fault")):
            return logging.ERROR
        if m := _PY_WARNING.match(line):
            quiet = m.group(1) in ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")
            return logging.DEBUG if quiet else logging.WARNING
        if line.startswith(("WARNING:", "Warning:", "warning:")):
            return logging.WARNING
        return logging.INFO if self.stream == "stdout" else logging.WARNING

    def _record(self, level: int, name: str, message: str, path: str | None = None, lineno: int = 0,
                created: float | None = None) -> logging.LogRecord:
        record = logging.LogRecord(name, level, path or f"<{self.stream}>", lineno, redact(message), None, None)
        if created is not None:
            record.created, record.msecs = created, (created % 1) * 1000
        return record


def _native_time(stamp: str) -> float | None:
    # Before absl is initialised TF writes "00:00:<seconds since the epoch>"; later a local time of day.
    m = re.fullmatch(r"00:00:(\d{9,}\.\d+)", stamp)
    return float(m.group(1)) if m else None


# -- json format: a forwarding parent ------------------------------------------------------------

SUPERVISED_ENV = "FT_LOG_SUPERVISED"  # set in the job process under a forwarding parent
# Signals for the job that reach the parent (pid 1 in a container): passed on. SIGINT is not - a
# terminal's Ctrl-C reaches the job directly (same process group); the parent ignores it.
PASSED_ON = ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")


def supervise(level: str) -> None:
    """Fork; the child returns and runs the job with stdout and stderr on pipes; the parent turns
    every line from them into JSON (ForeignOutput), exits as the child did, and never returns.

    Skipped (JSON from the logging module only) when forking is not safe or already done: no
    fork(), TensorFlow already imported, threads running, or stdout/stderr closed.
    """
    if not hasattr(os, "fork") or os.environ.get(SUPERVISED_ENV) or "tensorflow" in sys.modules \
            or threading.active_count() > 1:
        return
    try:
        os.fstat(1), os.fstat(2)
    except OSError:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(out_r)
        os.close(err_r)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        os.environ[SUPERVISED_ENV] = "1"
        _end_with(parent)
        with contextlib.suppress(Exception):
            sys.stdout.reconfigure(line_buffering=True)  # a pipe now: lines, not 8 KiB blocks
        return
    os.close(out_w)
    os.close(err_w)
    code = forward(child, out_r, err_r, logging.getLevelName(level))
    if code < 0:  # killed by a signal: end the same way, so the caller sees the same status
        sig = -code
        if os.getpid() != 1:  # pid 1 cannot kill itself
            with contextlib.suppress(OSError, ValueError):  # (SIGKILL has no handler to reset)
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(code)


def _end_with(parent: int) -> None:
    """The job dies with its forwarding parent (killed: e.g. a test's timeout) rather than train on unheard."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


class _Forwarded:
    """One of the child's streams: bytes in, JSON lines out to the parent's own fd."""

    def __init__(self, fd: int, name: str, threshold: int):
        self.fd, self.threshold = fd, threshold
        self.sorter = ForeignOutput(name, "json")
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.formatter = JsonFormatter()
        self.last_severity = ""
        self.broken = False

    def feed(self, data: bytes) -> None:
        self.write(self.sorter.feed(self.decoder.decode(data)))

    def idle(self) -> None:
        self.write(self.sorter.flush())

    def close(self) -> None:
        self.write(self.sorter.feed(self.decoder.decode(b"", final=True)) + self.sorter.flush(eof=True))

    def write(self, entries: list[Entry]) -> None:
        lines = []
        for entry in entries:
            if isinstance(entry, str):
                lines.append(entry)
                with contextlib.suppress(ValueError, AttributeError):
                    self.last_severity = str(json.loads(entry).get("severity", ""))
            elif entry.levelno >= self.threshold:
                lines.append(self.formatter.format(entry))
                self.last_severity = severity(entry.levelno)
        if lines and not self.broken:
            data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
            try:
                while data:
                    data = data[os.write(self.fd, data):]
            except OSError:  # the reader went away: keep draining the job, drop its output
                self.broken = True


def forward(child: int, out_fd: int, err_fd: int, threshold: int) -> int:
    """Forward the child's output until it has exited and its pipes are closed; its exit code
    (negative: killed by that signal)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in PASSED_ON:
        signal.signal(getattr(signal, name), lambda sig, _frame: _pass_on(child, sig))
    err = _Forwarded(2, "stderr", threshold)
    streams = {out_fd: _Forwarded(1, "stdout", threshold), err_fd: err}
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    status, deadline = None, 0.0
    while streams:
        events = selector.select(timeout=0.5)
        if not events:
            for stream in streams.values():
                stream.idle()
        for key, _ in events:
            data = os.read(key.fd, 1 << 16)
            if data:
                streams[key.fd].feed(data)
            else:
                streams.pop(key.fd).close()
                selector.unregister(key.fd)
                os.close(key.fd)
        if status is None:
            done, wait_status = os.waitpid(child, os.WNOHANG)
            if done:
                status, deadline = wait_status, time.monotonic() + 2.0
        elif time.monotonic() > deadline:
            break  # a process the job started still holds the pipes: do not wait for it
    for stream in streams.values():
        stream.close()
    if status is None:
        _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0 and err.last_severity not in ("ERROR", "CRITICAL"):
        # No `error:` line of its own (OOM killer, segfault): say what happened, as an error.
        err.write([err.sorter._record(logging.ERROR, "finetune-job", f"error: the job process was killed by "
                                      f"signal {-code} ({_signal_name(-code)})")])
    return code


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


def _pass_on(child: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, sig)


def progress_mode(stream: IO[str] | None = None) -> str:
    """"bar" when `stream` (stdout) is a terminal - a live progress bar - else "lines": one line per
    period, because pod logs store every carriage-return redraw of a bar as text."""
    stream = stream if stream is not None else sys.stdout
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"
