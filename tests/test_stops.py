"""Stops (SIGTERM, SIGINT) in every phase of a job, and the restart that follows.

Each stop is sent at an exact phase by the job itself (TFT_STOP_AT, see stops.py), never at a
moment picked with a sleep, so these tests mean the same on an idle and on a loaded machine.
A stopped job must exit non-zero with the cause (signal and phase) as the first line of
output/failure and an empty model directory; the restarted job must finish and, counted by
the per-rank training summaries of both runs, train every window of every epoch exactly once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CODE_DIR, ROOT, VENV_BIN, files_under, to_cli

from tft_sagemaker.config import build_config
from tft_sagemaker.dataset import build_training_dataset
from tft_sagemaker.job_data import carve_backtest, load_job_data
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.sagemaker.framework import SELF as FRAMEWORK_MODULE
from tft_sagemaker.sagemaker.paths import JobPaths
from tft_sagemaker.sagemaker.stops import SUPERVISOR_MODULE
from tft_sagemaker.synthetic import make_panel

pytestmark = pytest.mark.slow

EPOCHS = 2  # the stops hit epoch 1, the last: epoch 0 is trained whole before them
BATCH_SIZE = 128
QUICK = {
    "preset": "synthetic",
    "hidden_size": "8",
    "attention_head_size": "1",
    "hidden_continuous_size": "4",
    "batch_size": str(BATCH_SIZE),
    "val_batch_size": "8",  # several validation batches, so that a stop can hit between them
    "limit_train_batches": "none",  # every batch: the summaries count whole epochs
    "max_epochs": str(EPOCHS),
    "early_stopping_patience": "0",
}
SUMMARY = "output/data/training-summary-algo-1-rank0.json"


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_panel(n_stores=2, n_products=10, n_weeks=60, seed=3)


def make_base(root: Path, panel: pd.DataFrame) -> Path:
    base = root / "opt_ml"
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(QUICK))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {}}))
    (base / "input" / "data" / "train").mkdir(parents=True)
    panel.to_parquet(base / "input" / "data" / "train" / "data.parquet")
    (base / "model").mkdir()
    (base / "output" / "data").mkdir(parents=True)
    shutil.copytree(CODE_DIR, base / "code", ignore=shutil.ignore_patterns("__pycache__"))
    return base


def batches_per_epoch(base: Path) -> int:
    """What the job will count: the same configuration, data and dataset code."""
    config = build_config(QUICK, {}, PRESET_VALUES)
    data = load_job_data(JobPaths.from_env({"SAGEMAKER_BASE_DIR": str(base)}), config.data)
    train = data.train
    carved = carve_backtest(train, config.data) if config.training.ensemble else None
    if carved is not None:  # the TFT trains without the combination's backtest window
        train = train[carved.fit]
    return math.ceil(len(build_training_dataset(train, config.data)) / BATCH_SIZE)


def job_env(base: Path, stop: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "TFT_"))}
    return env | {
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_PROGRAM": "train.py",
        "SM_STUDIO_LOCAL_MODE": "true",  # the toolkit would wait for algo-1 to resolve
        "PYTHONPATH": str(base / "code"),
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # python, train
        "OMP_NUM_THREADS": "1",
        "SAGEMAKER_TRAINING_MODULE": FRAMEWORK_MODULE,  # as the image sets it
        **stop,
    }


def as_a_terminal_starts_it() -> None:
    """In the child before exec: the stop signals handled by default and none blocked, as a
    terminal or the container starts a command, whatever an earlier test left in this process
    (a disposition of SIG_IGN outlives exec, and a shell cannot trap a signal ignored on entry:
    SIGINT to train_local.sh would then be lost)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def run_in_session(
    command: list[str], env: dict[str, str], cwd: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """`command` as the leader of its own process session (as a terminal or the container
    starts it), once it has exited (`returncode`; the session's id is its `pid`)."""
    with log_path.open("a") as log:
        # What this process would pass on, for the log of a cell that fails.
        status = Path("/proc/self/status")
        if status.exists():
            lines = status.read_text().splitlines(keepends=True)
            log.write("".join(line for line in lines if line.startswith("Sig")))
            log.flush()
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_a_terminal_starts_it,
        )
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return process


def run_job(base: Path, stop: dict[str, str], supervised: bool = False) -> int:
    """The job in its own process session; `supervised`: as the image runs it (supervisor →
    SageMaker toolkit → train.py), else train.py alone. Returns the exit code."""
    if supervised:
        command = [sys.executable, "-m", SUPERVISOR_MODULE, str(VENV_BIN / "train")]
    else:
        command = [sys.executable, str(base / "code" / "train.py"), *to_cli(QUICK)]
    return run_in_session(command, job_env(base, stop), base, base / "job.log").returncode


def restore(directory: Path, order: tuple[str, ...]) -> None:
    """The checkpoints copied back into `directory` as a restore from S3 may leave them: the
    files' times in `order` (oldest first)."""
    saved = directory.with_name("saved-checkpoints")
    directory.rename(saved)
    directory.mkdir()
    assert sorted(p.name for p in saved.glob("*.ckpt")) == sorted(order)
    for i, name in enumerate(order):
        shutil.copyfile(saved / name, directory / name)
        os.utime(directory / name, (1_700_000_000 + i, 1_700_000_000 + i))


def trained_windows(*summaries: dict) -> dict[int, dict[str, int]]:
    """Per epoch, the windows trained by all the runs together (count, sum, sum of squares)."""
    totals: dict[int, dict[str, int]] = {}
    for summary in summaries:
        for epoch, part in summary["epochs"].items():
            counts = {k: v for k, v in part.items() if k != "weights_sha256"}
            total = totals.setdefault(int(epoch), dict.fromkeys(counts, 0))
            for key, value in counts.items():
                total[key] += value
    return totals


# (TFT_STOP_AT, the phase the failure names); "LAST" is the epoch's last training batch.
PHASES = [
    ("data preparation", "data preparation"),
    ("epoch start@1", "epoch start of epoch 1"),
    ("training@1.3", "training of epoch 1"),
    ("training@1.LAST", "training of epoch 1"),
    ("validation@1.1", "validation of epoch 1"),
    ("epoch end@1", "epoch end of epoch 1"),
    ("evaluation", "evaluation"),
    ("artifacts", "artifacts"),
]


def stop_and_restart(
    tmp_path: Path,
    panel: pd.DataFrame,
    at: str,
    phase: str,
    signame: str = "SIGTERM",
    target: str = "self",
    restored_order: tuple[str, ...] = (),
) -> None:
    """Stop the job at `at`, then restart it; `restored_order`: the checkpoints are restored
    before the restart (copied back, their file times in this order, oldest first)."""
    base = make_base(tmp_path, panel)
    if "LAST" in at:
        at = at.replace("LAST", str(batches_per_epoch(base) - 1))
    stop = {"TFT_STOP_AT": at, "TFT_STOP_SIGNAL": signame, "TFT_STOP_TARGET": target}
    supervised = target != "self"

    code = run_job(base, stop, supervised)
    log = (base / "job.log").read_text()
    assert code != 0, log[-3000:]
    if not supervised:  # (the toolkit exits 1 whatever its script's code)
        assert code == 128 + signal.Signals[signame], log[-3000:]
    cause = (base / "output" / "failure").read_text().splitlines()[0]
    assert cause.startswith(f"Stopped by {signame} during {phase}"), cause
    assert files_under(base / "model") == [], "a stopped job left a model behind"
    first = json.loads((base / SUMMARY).read_text()) if (base / SUMMARY).exists() else None

    # SageMaker restarts a job with a fresh output directory (the checkpoints are copied back).
    shutil.rmtree(base / "output")
    (base / "output" / "data").mkdir(parents=True)
    if restored_order:
        restore(base / "checkpoints", restored_order)
    assert run_job(base, {}, supervised) == 0, (base / "job.log").read_text()[-3000:]
    second = json.loads((base / SUMMARY).read_text()) if (base / SUMMARY).exists() else None
    runs = [run for run in (first, second) if run is not None]
    totals = trained_windows(*runs)
    every = np.arange(runs[0]["total_windows"], dtype=np.int64)
    expected = {
        "windows": len(every),
        "index_sum": int(every.sum()),
        "index_square_sum": int((every**2).sum()),
    }
    assert sorted(totals) == list(range(EPOCHS)), [r["epochs"].keys() for r in runs]
    for epoch, total in totals.items():
        assert {k: total[k] for k in expected} == expected, (epoch, [r["epochs"] for r in runs])
    metrics = json.loads((base / "model" / "metrics.json").read_text())
    assert metrics["epochs_trained"] == EPOCHS


@pytest.mark.parametrize(("at", "phase"), PHASES, ids=[at for at, _ in PHASES])
def test_sigterm_in_every_phase_then_a_restart_trains_no_batch_twice(
    tmp_path: Path, panel: pd.DataFrame, at: str, phase: str
) -> None:
    stop_and_restart(tmp_path, panel, at, phase)


@pytest.mark.parametrize(
    ("at", "phase"),
    [("data preparation", "data preparation"), ("training@1.3", "training of epoch 1")],
)
def test_ctrl_c_stops_like_sigterm(
    tmp_path: Path, panel: pd.DataFrame, at: str, phase: str
) -> None:
    stop_and_restart(tmp_path, panel, at, phase, signame="SIGINT")


@pytest.mark.parametrize(
    ("at", "phase", "target"),
    [
        ("training@1.3", "training of epoch 1", "supervisor"),  # SageMaker: SIGTERM to PID 1
        ("validation@1.1", "validation of epoch 1", "group"),  # every process at once
        ("data preparation", "data preparation", "group"),
    ],
)
def test_a_stop_through_the_image_supervisor(
    tmp_path: Path, panel: pd.DataFrame, at: str, phase: str, target: str
) -> None:
    if not (VENV_BIN / "train").is_file():
        pytest.skip("sagemaker-training is not installed")
    stop_and_restart(tmp_path, panel, at, phase, target=target)


def test_a_restore_that_leaves_last_ckpt_oldest_trains_no_batch_twice(
    tmp_path: Path, panel: pd.DataFrame
) -> None:
    """The newest state (last.ckpt, saved on SIGTERM mid-epoch) has the oldest file time."""
    order = ("last.ckpt", "best.ckpt", "epoch=0.ckpt")
    stop_and_restart(tmp_path, panel, "training@1.3", "training of epoch 1", restored_order=order)


# The doors a job is started by, as the user or SageMaker starts them: the image's command
# (supervisor → toolkit → train.py; docker run and compose run it so), local_test's script
# (which runs the same), and the toolkit's `train` alone (`docker run --entrypoint train`, or
# `train` in a venv), with the framework module the image names (framework.py).
DOORS = ("supervisor", "train_local.sh", "train")
STOP_MATRIX = [
    (door, signame, target, "data preparation")
    for door in DOORS
    for signame in ("SIGINT", "SIGTERM")
    for target in ("leader", "group")  # the command started (`kill PID`), or all (Ctrl-C)
] + [  # Ctrl-C while training and while the model is written (#22: these exited 0)
    ("supervisor", "SIGINT", "group", "training@0.2"),
    ("supervisor", "SIGINT", "group", "artifacts"),
    ("train_local.sh", "SIGINT", "group", "training@0.2"),
    ("train", "SIGINT", "group", "training@0.2"),
    ("train", "SIGTERM", "leader", "training@0.2"),
]


def door_command(door: str, base: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """The command that starts the job through `door`, and the directory the job runs in."""
    if door == "train_local.sh":  # it copies the directory it is given
        run_dir = tmp_path / "run"
        script = ROOT / "local_test" / "train_local.sh"
        return ["bash", str(script), "--template", str(base), "--run-dir", str(run_dir)], run_dir
    if door == "train":
        return [str(VENV_BIN / "train")], base
    return [sys.executable, "-m", SUPERVISOR_MODULE, str(VENV_BIN / "train")], base


@pytest.mark.parametrize(("door", "signame", "target", "at"), STOP_MATRIX)
def test_every_stop_through_every_door_fails_with_its_cause(
    tmp_path: Path, panel: pd.DataFrame, door: str, signame: str, target: str, at: str
) -> None:
    """The command that the user or SageMaker waits on exits non-zero (128 + the signal; the
    toolkit alone, 1), and only once the cause is in output/failure and every process of the
    job has ended."""
    if not (VENV_BIN / "train").is_file():
        pytest.skip("sagemaker-training is not installed")
    base = make_base(tmp_path, panel)
    command, run_dir = door_command(door, base, tmp_path)
    stop = {"TFT_STOP_AT": at, "TFT_STOP_SIGNAL": signame, "TFT_STOP_TARGET": target}
    env = job_env(base, stop)
    if door == "train_local.sh":
        del env["SAGEMAKER_TRAINING_MODULE"]  # the script names it itself
    process = run_in_session(command, env, tmp_path, tmp_path / "job.log")
    failure = run_dir / "output" / "failure"
    cause = failure.read_text() if failure.exists() else ""  # read at once: nothing is left
    try:
        os.killpg(process.pid, 0)
        leftover = True
    except ProcessLookupError:
        leftover = False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    log = (tmp_path / "job.log").read_text()[-3000:]
    assert not leftover, f"a process of the job outlived the command: {log}"
    # The toolkit reports a failure with its cause (a ClientError) by exiting 1 (framework.py).
    expected = 1 if door == "train" else 128 + signal.Signals[signame]
    assert process.returncode == expected, log
    phase = at.replace("@", " of epoch ").split(".")[0]
    assert cause.startswith(f"Stopped by {signame} during {phase}"), (cause, log)
    assert not (run_dir / "output" / "success").exists()
    assert files_under(run_dir / "model") == [], "a stopped job left a model behind"


@pytest.mark.parametrize(
    ("hyperparameters", "code", "cause"),
    [
        ({}, 0, None),
        ({"max_epochs": "two"}, 1, "max_epochs"),  # the job's own cause stays first
    ],
    ids=["success", "failure"],
)
def test_the_toolkit_alone_reports_a_job_that_ends_by_itself(
    tmp_path: Path, panel: pd.DataFrame, hyperparameters: dict[str, str], code: int, cause: str
) -> None:
    """Through the framework module, a job that is not stopped ends as the toolkit reports it."""
    if not (VENV_BIN / "train").is_file():
        pytest.skip("sagemaker-training is not installed")
    base = make_base(tmp_path, panel)
    config = base / "input" / "config" / "hyperparameters.json"
    config.write_text(json.dumps(QUICK | {"max_epochs": "1"} | hyperparameters))
    process = run_in_session(["train"], job_env(base, {}), base, base / "job.log")
    log = (base / "job.log").read_text()[-3000:]
    assert process.returncode == code, log
    output = base / "output"
    if cause is None:
        assert (output / "success").exists() and not (output / "failure").exists(), log
        assert (base / "model" / "metrics.json").exists()
    else:
        assert cause in (output / "failure").read_text().splitlines()[0], log
        assert not (output / "success").exists()
