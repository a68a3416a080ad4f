"""Stops passed on to the training processes below this one, and the wait for all of them.

Two processes of the job handle SIGTERM and SIGINT this way: the image's first process (the
supervisor, supervise.py) and the training toolkit's own process, through the framework module
(framework.py). Neither trains: each forwards the signal to the training processes (those
running the entry script, SAGEMAKER_PROGRAM, whoever launched them: the toolkit, torchrun,
Lightning, mpirun), to those that do not run yet as soon as they do, and after a stop waits for
every process below it, orphans included (it is a child subreaper), so that the command a user
or SageMaker waits on ends last, once the cause is in output/failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# SageMaker's SIGKILL follows its SIGTERM after 120 s: waiting longer would be pointless.
STOP_WAIT_S = 115.0
STARTING_POLL_S = 0.1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def children_of() -> dict[int, list[int]]:
    """Parent pid → child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (2nd field) may hold spaces; the ppid follows its closing ')'.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = children_of(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def runs_program(pid: int, program: str) -> bool:
    """Whether the process runs the entry script (`python ... train.py ...`) and is alive."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(os.fsdecode(arg)).name == program for arg in args if arg)


def training_processes(program: str) -> list[int]:
    return [pid for pid in descendants(os.getpid()) if runs_program(pid, program)]


def signal_training(program: str, signum: int) -> bool:
    """Send the signal to every training process; whether there was any."""
    reached = training_processes(program)
    for pid in reached:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, signum)
    return bool(reached)


def signal_once_started(done: Callable[[], bool], program: str, signum: int) -> None:
    """A stop that came while the training processes were being started: they get it as soon
    as they run (the toolkit forwards nothing). Ends once `done` (the launch has returned), as
    it may already be past them: a job that has finished keeps its outcome."""
    while not done():
        if signal_training(program, signum):
            return
        time.sleep(STARTING_POLL_S)


def become_subreaper() -> None:
    """Orphaned descendants become our children rather than init's (Linux; else a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap() -> None:
    """Collect the exit status of every child that has ended (orphans included). Only once the
    launch has collected its own child's: this would take it from under it."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def wait_for_descendants(timeout_s: float = STOP_WAIT_S, program: str | None = None) -> bool:
    """Wait until no process runs below this one (a subreaper: orphans included), or none that
    runs `program`; whether that came before the timeout. A shell between a launcher and the
    script (dash does not exec it) ends a moment after the script; a launcher that died of the
    signal leaves its training processes saving."""
    deadline = time.monotonic() + timeout_s
    while True:
        reap()
        below = training_processes(program) if program else descendants(os.getpid())
        if not below:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(STARTING_POLL_S)


class Forwarder:
    """SIGTERM and SIGINT to this process, passed on to the training processes below it.

    `install` routes both signals here (in the main thread). `launched(done)` says that the
    launch of the training processes has begun and how to tell it has returned: a stop that
    came before, or that finds no training process yet, reaches them as soon as they run."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.stopping: list[int] = []  # the stop signals received, first first
        self._done: Callable[[], bool] | None = None
        self._pursuing: threading.Thread | None = None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._forward)
        # A stop blocked by the mask this process was started with (and that its children would
        # inherit): handled now, if it is pending, and from now on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def launched(self, done: Callable[[], bool]) -> None:
        self._done = done
        self._pursue()  # a stop that came while the launch was being started

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping.append(signum)
        if not signal_training(self.program, signum):
            self._pursue()

    def _pursue(self) -> None:
        """The first stop, to the training processes once they run (none did when it came)."""
        if self._done is None or not self.stopping or self._pursuing is not None:
            return
        self._pursuing = threading.Thread(
            target=signal_once_started,
            args=(self._done, self.program, self.stopping[0]),
            daemon=True,
        )
        self._pursuing.start()
