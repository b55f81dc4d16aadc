"""Logging setup: readable text on a terminal, one JSON object per line for Cloud Logging.

    from job import logs
    logs.setup_logging(os.environ.get("FT_LOG_FORMAT", "text"), os.environ.get("FT_LOG_LEVEL", "INFO"))

On GKE and Vertex AI the logging agent parses each stdout/stderr line that is a JSON object:
`severity` becomes the entry's severity (otherwise everything on stderr shows as ERROR), `message`
its text, `time` its timestamp, and `logging.googleapis.com/sourceLocation` the file and line. A
traceback stays inside `message` of the same entry, so Error Reporting sees one error, not 30 lines.
Extra fields: `log.info("...", extra={"json_fields": {"epoch": 3}})` adds them to the JSON object
(the same convention as google-cloud-logging's handlers; ignored in text format).

Not covered: TensorFlow's C++ runtime writes its own lines to stderr directly (set
TF_CPP_MIN_LOG_LEVEL=2 to keep them to errors), and Keras's progress output goes to stdout.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import IO

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


def setup_logging(fmt: str = "text", level: str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Configure the root logger (replacing its handlers) to write to `stream` (stderr); return the handler."""
    fmt_name = str(fmt).strip().lower()
    if fmt_name not in FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    level_name = str(level).strip().upper()
    if level_name == "WARN":
        level_name = "WARNING"
    if level_name not in LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt_name == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=level_name, handlers=[handler], force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level_name)))
    # TensorFlow gives its logger a handler of its own when it is imported before logging is set up;
    # with propagation on top, every TF line would appear twice, once not as JSON. Root handler only.
    for name in ("absl", "tensorflow"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    return handler


def progress_mode(stream: IO[str] | None = None) -> str:
    """"bar" when `stream` (stdout) is a terminal - a live progress bar - else "lines": one line per
    period, because pod logs store every carriage-return redraw of a bar as text."""
    stream = stream if stream is not None else sys.stdout
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"
