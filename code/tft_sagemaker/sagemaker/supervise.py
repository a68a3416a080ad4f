"""The image's first process: lets SIGTERM reach the training processes, and waits for them.

SageMaker stops a job (StopTrainingJob, MaxRuntime, spot) by sending SIGTERM to the container's
first process and SIGKILL 120 s later. In the DLC that process is its entrypoint shell, which
passes nothing on: the training script would die at SIGKILL without saving anything. The image
therefore starts the DLC's own entrypoint under this supervisor, which forwards SIGTERM (and
SIGINT) to the training processes (those running the entry script, SAGEMAKER_PROGRAM, whoever
launched them: the toolkit, torchrun, Lightning, mpirun; forwarding.py). They save a checkpoint
at the end of the current step, write the cause to output/failure and exit (stops.py); the
toolkit and any launcher in between then finish and report as usual. (A stop that reaches the
toolkit itself is handled there, by the image's framework module, framework.py.)

When the signal reaches every process at once (`docker kill --signal`, a process-group kill, a
terminal's Ctrl-C), the shell and the toolkit may die before training has saved anything. The
supervisor is a child subreaper, so training processes orphaned that way stay its children: after
a stop it waits for every process below it before it exits, since the container ends, and kills
them, when it does. Its exit status is 128 + the signal after a stop, whatever the toolkit's
(which, without the framework module, exits 0 on SIGINT). A stop that comes while no training
process runs yet reaches them once they do. One that comes after they have ended and the job
has finished well changes nothing: SageMaker's local mode stops every container as soon as the
first one exits, and a host whose toolkit has just reported success may still be exiting then.

Before it starts the toolkit, it checks what the toolkit reads first (preflight.py).

    python -m tft_sagemaker.sagemaker.supervise COMMAND [ARGS ...]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from ..errors import JobError
from . import preflight
from .failure import write_failure
from .forwarding import Forwarder, become_subreaper, reap, wait_for_descendants
from .paths import JobPaths


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it: -15 (killed by SIGTERM) is 143."""
    return 128 - returncode if returncode < 0 else returncode


def runs_toolkit(command: list[str]) -> bool:
    """Whether the command runs the training toolkit's `train` (as the image's CMD does)."""
    return any(Path(arg).name == "train" for arg in command)


def outcome(
    code: int, stopping: list[int], output_dir: Path, toolkit: bool, who: str = "supervise"
) -> int:
    """The exit status SageMaker sees. A stop is a failure whatever the toolkit returned (it
    exits 0 on SIGINT), unless it came once the job had finished well (the toolkit's 0 beside
    output/success and no failure file: a training process that the stop reached writes one).
    A toolkit's 0 without output/success, or beside a failure file, is a failure too (it exits
    0 when writing its failure file fails, on a full or read-only disk). A cause is written
    where none was, if anything can be written there (and logged, prefixed `who`)."""
    failure_file = output_dir / "failure"
    succeeded = toolkit and code == 0 and (output_dir / "success").exists()
    if stopping and succeeded and not failure_file.exists():
        print(
            f"supervise: {signal.Signals(stopping[0]).name} came after the job had finished "
            "and reported success: it stands.",
            file=sys.stderr,
            flush=True,
        )
        return 0
    if stopping:
        code = 128 + stopping[0]
        cause = (
            f"Stopped by {signal.Signals(stopping[0]).name} before the training processes "
            "wrote a cause (they were still starting, or had ended)."
        )
    elif toolkit and code == 0 and (failure_file.exists() or not succeeded):
        code = 1
        free = shutil.disk_usage(output_dir).free if output_dir.is_dir() else 0
        cause = (
            f"The training toolkit exited 0 without reporting success in {output_dir} "
            f"({free} bytes free there): training failed and its cause could not be written; "
            "see the log. Free space in or fix the permissions of the output directory."
        )
    else:
        return code
    with contextlib.suppress(OSError):
        if failure_file.stat().st_size == 0:  # what a write that failed halfway leaves
            failure_file.unlink()
    if not failure_file.exists():
        print(f"{who}: {cause}", file=sys.stderr, flush=True)
        write_failure(failure_file, JobError(cause))  # logs it if it cannot be written
    return code


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print(
            "usage: python -m tft_sagemaker.sagemaker.supervise COMMAND [ARGS ...]", file=sys.stderr
        )
        return 2
    forwarder = Forwarder(os.environ.get("SAGEMAKER_PROGRAM", "train.py"))
    become_subreaper()
    forwarder.install()
    stopping = forwarder.stopping
    paths = JobPaths.from_env(os.environ)
    toolkit = runs_toolkit(command)
    if toolkit and (code := preflight.refused(paths, os.environ, "supervise")) is not None:
        return code  # what the toolkit reads first is broken: it would only print a traceback
    if stopping:  # stopped before anything started
        return outcome(0, stopping, paths.output_dir, toolkit=False)
    child = subprocess.Popen(command)
    forwarder.launched(lambda: child.returncode is not None)  # set by the wait below
    code = exit_status(child.wait())
    if stopping:
        # The shell or the toolkit may have died of the signal before training finished saving:
        # this process, which the container or a terminal waits on, ends last.
        wait_for_descendants()
    reap()
    return outcome(code, stopping, paths.output_dir, toolkit)


if __name__ == "__main__":
    sys.exit(main())
