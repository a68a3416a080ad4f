"""The image's first process: lets SIGTERM reach the training processes.

SageMaker stops a job (StopTrainingJob, MaxRuntime) by sending SIGTERM to the container's first
process and SIGKILL 120 s later. In the DLC that process is its entrypoint shell, which passes
nothing on, and the toolkit below it would not either: the training script would die at SIGKILL
without saving anything. The image therefore starts the DLC's own entrypoint under this
supervisor, which forwards SIGTERM to the training processes (those running the entry script,
SAGEMAKER_PROGRAM, whoever launched them: the toolkit, torchrun, Lightning, mpirun). They save
a checkpoint at the end of the current batch and exit (trainer.py); the toolkit and any
launcher in between then finish and report as usual.

    python -m tft_sagemaker.supervise COMMAND [ARGS ...]
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


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
    """Whether the process runs the entry script (`python ... train.py ...`)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(os.fsdecode(arg)).name == program for arg in args if arg)


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m tft_sagemaker.supervise COMMAND [ARGS ...]", file=sys.stderr)
        return 2
    program = os.environ.get("SAGEMAKER_PROGRAM", "train.py")
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        for pid in descendants(os.getpid()):
            if runs_program(pid, program):
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
