"""The failure file SageMaker shows as the job's FailureReason: /opt/ml/output/failure."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from ..errors import JobError

# SageMaker keeps the first 1024 characters of /opt/ml/output/failure as FailureReason.
FAILURE_LIMIT = 1024


def failure_text(error: BaseException) -> str:
    """The failure file's text: one line of cause first, then whatever context fits."""
    if isinstance(error, JobError):
        cause, details = str(error), ""
    else:
        cause = f"Unexpected {type(error).__name__}: {error}"
        details = "".join(traceback.format_exception(error)[-6:])
    cause = " ".join(cause.split())  # one line, whatever the message held
    text = cause if not details else f"{cause}\n\n{details}"
    return text[:FAILURE_LIMIT]


def write_failure(path: str | os.PathLike[str], error: BaseException) -> bool:
    """Write the failure file atomically, unless one exists: when a process fails, its peers
    fail after it (their collectives break), so the first cause written is the root cause.
    Returns whether this call wrote it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(failure_text(error)[: FAILURE_LIMIT - 1] + "\n")  # newline included
    try:
        os.link(tmp, path)  # atomic, and fails if the file exists
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
