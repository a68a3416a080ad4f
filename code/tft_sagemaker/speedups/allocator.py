"""glibc allocator thresholds that keep freed memory in the heap for the next training step.

glibc serves blocks above a threshold (128 KB, adapted up to 32 MB) with their own mmap and
trims the heap's free top beyond twice that: each step then returns its activations to the
kernel and page-faults them back in. Fixed high thresholds keep them in the heap. Left alone
when the user set the allocator up (MALLOC_* thresholds, GLIBC_TUNABLES, a preloaded
allocator) or the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os

_USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30


def load_libc() -> ctypes.CDLL:
    """The process's C library (tests replace this to simulate another one)."""
    return ctypes.CDLL("libc.so.6")


def keep_freed_memory() -> str | None:
    """Set the thresholds for this process; None when set, else why not."""
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if user:
        return f"{user[0]} is set"
    try:
        libc = load_libc()
        libc.gnu_get_libc_version  # noqa: B018  (glibc's own: musl and others lack it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "the C library is not glibc"
    # mallopt returns 1 on success
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return "glibc refused the mmap threshold"
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "glibc refused the trim threshold"
    return None
