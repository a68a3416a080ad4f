"""The training toolkit's framework module: stops that reach the toolkit's own process.

The toolkit's `train` (sagemaker-training 5.1, `trainer.train`) imports the module that
SAGEMAKER_TRAINING_MODULE names ("module:function") and calls it in its own process; the image
sets it to this module's `main` and keeps the DLC's (`sagemaker_pytorch_container.training:main`,
which picks the launcher: torchrun, mpirun) in TFT_FRAMEWORK_MODULE, which `main` runs. Without
one (a local venv), `main` launches the entry script as the toolkit does without a framework
module. Left to itself, the toolkit breaks both stops: its `train()` catches only `Exception`,
and its `finally: _exit_processes(exit_code)` turns a KeyboardInterrupt (SIGINT) into
`sys.exit(0)`, before the training process has written its cause; on SIGTERM it dies at once,
passes nothing on and waits for nothing, so training goes on orphaned.

While the launch runs, `main` handles SIGTERM and SIGINT instead (forwarding.py, as the image's
supervisor does): it passes the signal on to the training processes (they save a checkpoint,
write the cause to output/failure and exit, stops.py), waits for every one of them, orphans
included, and then fails with the first line of output/failure as the cause, so that `train`
exits non-zero (1) only once the cause is written and nothing of the job runs any more, whether
the signal reached the toolkit alone (`kill PID`) or its whole process group (Ctrl-C).
The handlers are installed as soon as the toolkit imports this module: a stop from then on
is handled as one before training starts. Before, the toolkit is still starting: a SIGINT
during its imports ends it with the interrupt's status (non-zero, nothing started); one in the
few milliseconds of `train()` before it imports this module, with exit 0 (nothing started
either). The image's supervisor covers both moments.

    SAGEMAKER_TRAINING_MODULE=tft_sagemaker.sagemaker.framework:main train
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
from collections.abc import Callable

from sagemaker_training import entry_point, environment, errors, params, runner

from .forwarding import Forwarder, become_subreaper, wait_for_descendants
from .paths import JobPaths
from .supervise import outcome

SELF = "tft_sagemaker.sagemaker.framework:main"
INNER_ENV = "TFT_FRAMEWORK_MODULE"  # the base image's SAGEMAKER_TRAINING_MODULE

# The toolkit's stops, handled from its import of this module on (`main` sets the program from
# the toolkit's environment, where a hyperparameter may name it). Only where the toolkit imports
# it as its framework module: elsewhere (tests, other tools) importing it changes nothing.
FORWARDER = Forwarder(os.environ.get("SAGEMAKER_PROGRAM") or "train.py")
if (
    os.environ.get("SAGEMAKER_TRAINING_MODULE") == SELF
    and threading.current_thread() is threading.main_thread()
):
    FORWARDER.install()

log = logging.getLogger(__name__)


def inner_entry_point(env: environment.Environment) -> Callable[[], object]:
    """What launches the training processes: the DLC's framework module, kept in
    TFT_FRAMEWORK_MODULE, or, where none is set, what the toolkit does without one."""
    name = os.environ.get(INNER_ENV, "").strip()
    if name == SELF:  # an image built on this image: its DLC module is lost, do not recurse
        log.warning("%s names this module itself: launching as the toolkit does", INNER_ENV)
        name = ""
    if name:
        module, _, function = name.partition(":")
        return getattr(importlib.import_module(module), function)
    # trainer.train()'s branch for no framework module (sagemaker-training 5.1).
    mpi_enabled = env.additional_framework_parameters.get(params.MPI_ENABLED)
    runner_type = (
        runner.RunnerType.MPI
        if mpi_enabled and env.current_instance_group in env.distribution_instance_groups
        else runner.RunnerType.Process
    )
    return lambda: entry_point.run(
        env.module_dir,
        env.user_entry_point,
        env.to_cmd_args(),
        env.to_env_vars(),
        runner_type=runner_type,
    )


def stopped(forwarder: Forwarder) -> errors.ClientError:
    """The error that makes the toolkit report a stop, once every process below this one has
    ended (a subreaper: orphans included): first the training processes, then, with the cause
    written where they wrote none, the rest (a shell between; the toolkit's intermediate-output
    upload, which ends once output/failure exists). It carries output/failure's first line.

    A ClientError, because trainer.train() treats it as the job's failure with a known cause:
    it logs str(e) under "Reporting training FAILURE", writes it to output/failure only where
    no failure file exists (the training process's stays whole), joins the upload and exits 1.
    Any other Exception would be logged as a "Framework Error" with this module's traceback;
    a SystemExit would be overridden by its `finally: sys.exit(0)`."""
    signum = forwarder.stopping[0]
    if not wait_for_descendants(program=forwarder.program):
        log.warning("training processes still run after the stop; the container ends them")
    output_dir = JobPaths.from_env(os.environ).output_dir
    # A cause, where the training processes wrote none (they were still starting).
    outcome(0, forwarder.stopping, output_dir, toolkit=False, who="framework")
    try:
        cause = (output_dir / "failure").read_text().splitlines()[0]
    except (OSError, IndexError):
        # The toolkit could not write it either: its failed write would end in that same
        # `finally: sys.exit(0)`, a stop reported as a success. Exit as a shell would.
        log.error("stopped by %s; output/failure cannot be written", signal.Signals(signum).name)
        os._exit(128 + signum)
    wait_for_descendants()
    return errors.ClientError(cause)


def main() -> None:
    env = environment.Environment()
    launch = inner_entry_point(env)
    forwarder = FORWARDER
    forwarder.program = env.user_entry_point or forwarder.program  # SAGEMAKER_PROGRAM
    try:
        forwarder.install()  # again: where the import did not (another toolkit's thread)
    except ValueError as err:  # not the main thread: a toolkit that calls this elsewhere
        log.warning("cannot handle stops in this toolkit (%s): launching without", err)
        launch()
        return
    become_subreaper()
    if forwarder.stopping:  # stopped before anything started
        raise stopped(forwarder)
    finished: list[bool] = []
    forwarder.launched(lambda: bool(finished))
    try:
        launch()
    except Exception as err:
        if forwarder.stopping:  # the training processes' failure is the stop's
            raise stopped(forwarder) from err
        raise
    finally:
        finished.append(True)
    if forwarder.stopping:
        if (JobPaths.from_env(os.environ).output_dir / "failure").exists():
            raise stopped(forwarder)
        # Every training process had ended well: the job is done, as the supervisor judges it.
        name = signal.Signals(forwarder.stopping[0]).name
        log.warning("%s came after training had finished: the job reports success", name)
