"""Typed errors and the exit codes they map to: the only place exit codes are defined.

Kubernetes manifests (podFailurePolicy) and the README's table read these numbers; tests check
that they agree, so change them here and nowhere else.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    SUCCESS = 0
    INTERNAL = 1  # a bug: report it; retrying may or may not help
    USAGE = 2  # the command line itself is wrong (typer/click use 2 as well)
    BAD_INPUT = 3  # data, model or settings are wrong: retrying cannot help
    OUTPUT_EXISTS = 4  # the output holds another run (no --overwrite) or files the job did not write
    IO_ERROR = 74  # the machine's disk or filesystem failed (full, read-only, I/O error): fix it, rerun (EX_IOERR)
    RETRY = 75  # transient (storage down, preempted): run again with the same arguments (EX_TEMPFAIL)


class JobError(Exception):
    """Base of every error the job reports as one line; subclasses choose the exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL


class BadInputError(JobError):
    """The user's data, model or configuration cannot work; the message says how to fix it."""

    exit_code = ExitCode.BAD_INPUT


class DataError(BadInputError):
    pass


class ModelError(BadInputError):
    pass


class ConfigError(BadInputError):
    pass


class OutputExistsError(JobError):
    exit_code = ExitCode.OUTPUT_EXISTS


class TransientError(JobError):
    """Worth retrying unchanged: storage unreachable, preemption, a peer that went away."""

    exit_code = ExitCode.RETRY


class Interrupted(BaseException):
    """A stop the job was asked for (SIGTERM): exit 75, run again to resume.

    A BaseException, like KeyboardInterrupt, because the signal handler raises it wherever the main
    thread happens to be, and code that catches Exception there (logging's StreamHandler.emit, a
    library's retry loop) must not swallow it.
    """

    exit_code = ExitCode.RETRY


class EnvironmentIOError(JobError):
    """A local filesystem failed under the job (disk full, quota, read-only, I/O error); not a bug."""

    exit_code = ExitCode.IO_ERROR


#: errno values that mean "the machine's storage failed", not "the job has a bug".
ENVIRONMENT_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EIO", "EACCES", "EPERM", "EMFILE", "ENFILE", "ENOMEM",
                      "EFBIG", "ESTALE")


def from_os_error(exc: OSError) -> EnvironmentIOError | None:
    """The one-line typed error for an OSError the environment caused, or None (then it is a bug)."""
    import errno
    import os

    names = {getattr(errno, n) for n in ENVIRONMENT_ERRNOS if hasattr(errno, n)}
    if exc.errno not in names:
        return None
    # A copy (shutil) or a rename names the destination second: that is where the disk failed.
    where = getattr(exc, "filename2", None) or exc.filename or "a local file"
    fix = {errno.ENOSPC: "free space there or point --work-dir / --output at a bigger disk",
           errno.EROFS: "mount it writable or choose another folder",
           errno.EACCES: "fix its permissions or choose another folder",
           errno.EPERM: "fix its permissions or choose another folder"}.get(exc.errno, "fix the disk and run again")
    return EnvironmentIOError(f"{os.strerror(exc.errno)} at {where} ({errno.errorcode.get(exc.errno, exc.errno)}): {fix}")
