"""Errors the user can act on (their message is the job's cause, sagemaker/failure.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class JobError(Exception):
    """A problem with the job's input that the user can fix; its message is the failure cause."""


class ConfigError(JobError):
    """Bad or inconsistent hyperparameters."""


class DataError(JobError):
    """Missing, unreadable or invalid data."""


# torch.save's C++ writer reports a failed write (a full disk, a file-size limit) without the
# OS error, e.g. "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0".
_TORCH_WRITE_ERRORS = ("inline_container.cc", "PytorchStreamWriter failed writing")


def _free_bytes(path: Path) -> int | None:
    for directory in (path, *path.parents):
        try:
            stat = os.statvfs(directory)
        except OSError:
            continue
        return stat.f_bavail * stat.f_frsize
    return None


def _failed(what: str, path: str | os.PathLike[str], reason: str) -> JobError:
    return JobError(
        f"Could not write {what} to {path}: {reason}. Free space or fix the directory's "
        "permissions; checkpoints already written stay intact."
    )


@contextmanager
def writing(what: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError while writing (disk full, file-size limit, read-only or missing directory),
    or torch.save's report of one, becomes a cause that names what was being written, where,
    and why."""
    try:
        yield
    except OSError as err:
        raise _failed(what, path, f"{err.strerror or err} (errno {err.errno})") from err
    except RuntimeError as err:
        if not any(marker in str(err) for marker in _TORCH_WRITE_ERRORS):
            raise
        free = _free_bytes(Path(path))
        if free is not None and free < 2**20:
            reason = f"No space left on device ({free} bytes free there)"
        else:  # freed meanwhile, or a file-size limit
            reason = (
                f"torch.save failed ({str(err).splitlines()[0]}): the disk was full or a "
                "file-size limit was reached"
            )
        raise _failed(what, path, reason) from err
