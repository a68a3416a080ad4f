"""Stopping the job: SIGTERM and SIGINT in any phase end with a cause and a non-zero exit.

SageMaker stops a job (StopTrainingJob, spot interruption, MaxRuntime) with SIGTERM and kills it
120 s later; Ctrl-C sends SIGINT. Whatever the job was doing, it must end with the cause in
output/failure, a non-zero exit, and, if it was training, a checkpoint from which a restarted
job trains no batch twice.

- While Lightning trains, Lightning owns SIGTERM: it finishes the current step and raises
  `SIGTERMException`; trainer.py saves the checkpoint. SIGINT is turned into SIGTERM then, so
  that Ctrl-C saves a checkpoint too.
- In every other phase (data preparation, the final evaluation, writing the model) the handler
  here raises `Stopped` at once: nothing there is worth finishing, and a restart redoes it.

Whose turn it is follows from the handler that is installed, not from a flag: Lightning
installs its own SIGTERM handler for the duration of `fit` (calling the previous one, ours,
from it) and restores ours afterwards.

Phases have names (`reached`), so that the cause says where the stop hit, and so that a stop
can be rehearsed at an exact phase: with `TFT_STOP_AT=PHASE[@EPOCH[.BATCH]]` the job sends
`TFT_STOP_SIGNAL` (SIGTERM, the default, or SIGINT) when it reaches that phase, to itself or,
with `TFT_STOP_TARGET=supervisor`, `leader` or `group`, to the image's supervisor (as SageMaker
does), to its process group's leader (the command a user started: `kill PID`), or to its whole
process group (as `kill -- -PGID` or a terminal's Ctrl-C does), and waits until the signal has
arrived. The project's tests stop jobs this way; users can rehearse their spot-resume
pipelines with it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..errors import ConfigError

log = logging.getLogger(__name__)

PHASES = (
    "data preparation",  # before any training: reading, validating, building datasets
    "training",  # on_train_batch_end of EPOCH.BATCH
    "validation",  # on_validation_batch_end of EPOCH.BATCH
    "epoch end",  # on_train_epoch_end of EPOCH, after validation and the epoch checkpoint
    "epoch start",  # on_train_epoch_start of EPOCH
    "evaluation",  # the final evaluation of the best checkpoint
    "artifacts",  # writing the model directory
)
_SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
_TARGETS = ("self", "supervisor", "leader", "group")
_ARRIVAL_TIMEOUT_S = 60.0
SUPERVISOR_MODULE = "tft_sagemaker.sagemaker.supervise"


class Stopped(BaseException):
    """The job received SIGTERM or SIGINT outside Lightning's training loop. A BaseException,
    as KeyboardInterrupt is, so that a library's `except Exception` does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} during {_State.phase}")


@dataclass(frozen=True)
class Rehearsal:
    """A stop to send when the job reaches `phase` (and `epoch`, `batch`, where given)."""

    phase: str
    epoch: int | None
    batch: int | None
    signum: int
    target: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Rehearsal | None:
        """The stop TFT_STOP_AT, TFT_STOP_SIGNAL and TFT_STOP_TARGET ask for (a ConfigError
        naming the one that does not parse)."""
        spec = env.get("TFT_STOP_AT")
        if not spec:
            return None
        phase, _, position = spec.partition("@")
        epoch, _, batch = position.partition(".")
        signame = env.get("TFT_STOP_SIGNAL", "SIGTERM").upper()
        target = env.get("TFT_STOP_TARGET", "self")
        if phase not in PHASES:
            raise ConfigError(
                f"TFT_STOP_AT={spec!r}: no phase {phase!r}; PHASE[@EPOCH[.BATCH]] with a phase "
                f"of: {', '.join(PHASES)}."
            )
        if not all(part.isdigit() for part in (epoch, batch) if part) or (batch and not epoch):
            raise ConfigError(
                f"TFT_STOP_AT={spec!r}: PHASE[@EPOCH[.BATCH]], EPOCH and BATCH counted from 0."
            )
        if signame not in _SIGNALS:
            raise ConfigError(f"TFT_STOP_SIGNAL={signame!r}: SIGTERM or SIGINT.")
        if target not in _TARGETS:
            raise ConfigError(f"TFT_STOP_TARGET={target!r}: one of {', '.join(_TARGETS)}.")
        return cls(
            phase,
            int(epoch) if epoch else None,
            int(batch) if batch else None,
            _SIGNALS[signame],
            target,
        )

    def matches(self, phase: str, epoch: int | None, batch: int | None) -> bool:
        return phase == self.phase and self.epoch in (None, epoch) and self.batch in (None, batch)


class _State:
    phase = "start-up"
    received: int | None = None  # the first stop signal that arrived
    arrived_during = ""  # the phase it arrived in (training stops a little later)
    deferred = False
    rehearsal: Rehearsal | None = None
    rehearsed = False


def received() -> int | None:
    """The stop signal received so far, if any."""
    return _State.received


def _lightning_owns_sigterm() -> bool:
    return signal.getsignal(signal.SIGTERM) is not _on_signal


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _State.received is not None:
        return  # already stopping: a second signal changes nothing
    _State.received, _State.arrived_during = signum, _State.phase
    if _lightning_owns_sigterm():
        # Called by Lightning's SIGTERM handler (it has already noted the stop), or SIGINT
        # during training: hand that to Lightning as the SIGTERM it stops gracefully on.
        if signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)
        return
    if not _State.deferred:
        raise Stopped(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """A step that must not be cut in half (moving the model files in): a stop that arrives
    meanwhile takes effect when it is done."""
    _State.deferred = True
    try:
        yield
    finally:
        _State.deferred = False
    if _State.received is not None and not _lightning_owns_sigterm():
        raise Stopped(_State.received)


@contextmanager
def handling() -> Iterator[None]:
    """Route SIGTERM and SIGINT through this module while the job runs (then as before)."""
    _State.phase, _State.received, _State.arrived_during = "start-up", None, ""
    _State.rehearsed, _State.rehearsal = False, None
    previous = {signum: signal.signal(signum, _on_signal) for signum in _SIGNALS.values()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def rehearse(env: Mapping[str, str]) -> None:
    """Arm the stop that TFT_STOP_AT asks for, if any (inside `handling`)."""
    _State.rehearsal = Rehearsal.from_env(env)


def reached(phase: str, epoch: int | None = None, batch: int | None = None) -> None:
    """Mark the phase the job is in; sends the rehearsed stop if this is its moment."""
    _State.phase = phase if epoch is None else f"{phase} of epoch {epoch}"
    rehearsal = _State.rehearsal
    if rehearsal is None or _State.rehearsed or not rehearsal.matches(phase, epoch, batch):
        return
    _State.rehearsed = True
    log.warning(
        "rehearsing a stop: %s to %s at %s",
        signal.Signals(rehearsal.signum).name,
        rehearsal.target,
        phase,
    )
    if rehearsal.target == "self":
        signal.raise_signal(rehearsal.signum)  # handled before raise_signal returns
        return
    if rehearsal.target == "group":
        os.killpg(os.getpgid(0), rehearsal.signum)
    elif rehearsal.target == "leader":
        os.kill(os.getpgid(0), rehearsal.signum)
    else:
        os.kill(_supervisor_pid(), rehearsal.signum)
    # It comes back to this process through the supervisor (or at once, for the group): wait
    # for it, so that the stop hits this phase and no later one.
    deadline = time.monotonic() + _ARRIVAL_TIMEOUT_S
    while _State.received is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _supervisor_pid() -> int:
    """The nearest ancestor running the image's supervisor."""
    pid = os.getppid()
    while pid > 1:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if SUPERVISOR_MODULE.encode() in command:
            return pid
        pid = parent
    raise RuntimeError("TFT_STOP_TARGET=supervisor, but no ancestor runs the supervisor.")


def _signal() -> int:
    # Lightning stops on a SIGTERM that reached it before our handler was installed, too.
    return _State.received or signal.SIGTERM


def cause(checkpoint_dir: Path, saved: bool) -> str:
    """The failure's first line for a stop (`saved`: training saved a checkpoint on it)."""
    phase = _State.arrived_during or _State.phase
    what = f"Stopped by {signal.Signals(_signal()).name} during {phase}"
    if saved:
        return (
            f"{what}; saved {checkpoint_dir}/last.ckpt: a restarted job resumes there and "
            "trains no batch twice."
        )
    return (
        f"{what}; a restarted job resumes from the newest checkpoint in {checkpoint_dir}, if "
        "any, and trains no batch twice."
    )


def exit_code() -> int:
    """The shell's convention: 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + _signal()
