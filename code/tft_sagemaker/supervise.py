"""`train` for the image: runs SageMaker's toolkit and lets SIGTERM reach the training processes.

SageMaker stops a job (StopTrainingJob, MaxRuntime) by sending SIGTERM to the container's first
process and SIGKILL 120 s later. The toolkit does not pass the signal on to the training script
(and as PID 1 it ignores it), so the script would die at SIGKILL without saving anything. This
supervisor starts the toolkit as its child and forwards SIGTERM to every process below it,
except the toolkit itself, which must live on to report the script's exit. The training
processes then save a checkpoint at the end of their current batch and exit (trainer.py).

    python -m tft_sagemaker.supervise [COMMAND ...]     # default: the toolkit's `train`
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

TOOLKIT = "from sagemaker_training.cli.train import main; main()"


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


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv) or [sys.executable, "-c", TOOLKIT]
    toolkit = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        for pid in descendants(toolkit.pid):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    return toolkit.wait()


if __name__ == "__main__":
    sys.exit(main())
