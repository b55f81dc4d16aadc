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
    OUTPUT_EXISTS = 4  # the output already holds a completed run and --overwrite was not given
    RETRY = 75  # transient (storage down, preempted): run again with the same arguments (EX_TEMPFAIL)


class JobError(Exception):
    """Base of every error the job reports as one line; subclasses choose the exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(JobError):
    exit_code = ExitCode.USAGE


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
