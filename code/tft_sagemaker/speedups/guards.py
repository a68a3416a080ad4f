"""What the levers rely on, checked before they engage.

A lever that replaces part of a library engages only when
1. the installed library is a release it was written and tested against (`TESTED`: the
   major.minor versions of docker/requirements.txt and the image's torch), and
2. its probe passes: the lever and the library's own path, run on a small instance built from
   the library, agree (float64, or bit for bit). The probe exercises the very structure the
   lever replaces (classes, attribute names, what the replaced forward computes), so a library
   that changed inside a tested release is caught as well.
Otherwise the lever stays off and the library's path runs; the reason goes into the speed-ups
log line. Each lever's guard runs once per process (`functools.cache`). Upgrading a library: run
the tests (tests/test_speedups.py checks that every lever engages in the job), then add its
version here.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import torch

TESTED: dict[str, tuple[str, ...]] = {
    "torch": ("2.13",),
    "lightning": ("2.6",),
    "pytorch-forecasting": ("1.8",),
}


def untested_version(*packages: str) -> str | None:
    """Why the installed `packages` are not releases the levers were tested with, or None."""
    for package in packages:
        try:
            installed = version(package)
        except PackageNotFoundError:
            return f"{package} is not installed"
        release = ".".join(installed.split("+")[0].split(".")[:2])
        if release not in TESTED[package]:
            tested = ", ".join(TESTED[package])
            return f"{package} {installed}: written and tested against {tested}"
    return None


def probe(check: Callable[[], str | None]) -> str | None:
    """`check()`'s reason, or, when the library's structure made it fail, what failed. Probes
    build modules: torch's random state is restored afterwards, so that seeded runs repeat."""
    try:
        with torch.random.fork_rng(devices=[]):
            return check()
    except Exception as err:  # an attribute, signature or shape the lever relies on is gone
        return f"probe failed: {type(err).__name__}: {err}"


def guard(*packages: str, check: Callable[[], str | None] | None = None) -> str | None:
    """The versions of `packages`, then `check`'s probe: None when the lever may engage."""
    return untested_version(*packages) or (probe(check) if check else None)
