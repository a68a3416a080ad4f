"""Errors the user can act on (their message is the job's cause, sagemaker/failure.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class JobError(Exception):
    """A problem with the job's input that the user can fix; its message is the failure cause."""


class ConfigError(JobError):
    """Bad or inconsistent hyperparameters."""


class DataError(JobError):
    """Missing, unreadable or invalid data."""


@contextmanager
def writing(what: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError while writing (disk full, file-size limit, read-only or missing directory)
    becomes a cause that names what was being written, where, and why."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        raise JobError(
            f"Could not write {what} to {path}: {reason} (errno {err.errno}). Free space or "
            "fix the directory's permissions; checkpoints already written stay intact."
        ) from err
