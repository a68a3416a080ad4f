"""The failure file SageMaker shows as the job's FailureReason: /opt/ml/output/failure.

A full output disk must not cost the cause: `reserve` takes the room for it when the job
starts (a file of FAILURE_LIMIT bytes beside the failure file), and `write_failure` writes the
cause into that room, which needs no new space. Whatever cannot be written there is logged.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from ..errors import JobError

log = logging.getLogger(__name__)

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


def _reservation(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}")


def reserve(path: str | os.PathLike[str]) -> None:
    """Take the room for this process's failure file now, while there is room (a no-op where
    the directory cannot be written: the write probes then say why)."""
    reservation = _reservation(Path(path))
    try:
        reservation.parent.mkdir(parents=True, exist_ok=True)
        reservation.write_bytes(b"\n" * FAILURE_LIMIT)
    except OSError as err:
        log.warning("could not reserve room for %s: %s", path, err)
        reservation.unlink(missing_ok=True)


def release(path: str | os.PathLike[str]) -> None:
    """Give the reserved room back (the job is over)."""
    try:
        _reservation(Path(path)).unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not remove the reservation for %s: %s", path, err)


def write_failure(path: str | os.PathLike[str], error: BaseException) -> bool:
    """Write the failure file atomically, unless one exists: when a process fails, its peers
    fail after it (their collectives break), so the first cause written is the root cause.
    Never raises: a cause that cannot be written is logged (stderr reaches CloudWatch).
    Returns whether this call wrote it."""
    path = Path(path)
    text = failure_text(error)[: FAILURE_LIMIT - 1] + "\n"  # newline included
    data = text.encode()[:FAILURE_LIMIT]
    tmp = _reservation(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # In place, into the reserved room (if any): a full disk has no room for a new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        os.link(tmp, path)  # atomic, and fails if the file exists
        return True
    except FileExistsError:
        return False
    except OSError as err:
        print(
            f"could not write {path} ({err.strerror or err}); the cause: {text}",
            file=sys.stderr,
            flush=True,
        )
        return False
    finally:
        release(path)
