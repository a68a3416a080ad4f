"""Faults of the machine rather than of the input: directories that cannot be written, a disk
that fills up, checkpoints that moved. Each ends in a cause that names the path, never in a
lost run."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    CODE_DIR,
    SYNTHETIC_SHORT,
    TINY,
    VENV_BIN,
    JobRun,
    SageMakerDir,
    record_error,
    to_cli,
)
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tft_sagemaker.errors import JobError
from tft_sagemaker.sagemaker import failure
from tft_sagemaker.sagemaker.checkpoints import AtomicCheckpointIO, RelocatableModelCheckpoint
from tft_sagemaker.sagemaker.paths import JobPaths

HP = {**SYNTHETIC_SHORT, **TINY}


@pytest.mark.slow  # the job as a process
@pytest.mark.parametrize(
    ("variable", "what"),
    [
        ("SM_MODEL_DIR", "the model directory"),
        ("SM_OUTPUT_DATA_DIR", "the output directory"),
    ],
)
def test_an_unwritable_directory_fails_before_training(
    sm_job: SageMakerDir,
    tiny_panel: pd.DataFrame,
    tmp_path: Path,
    variable: str,
    what: str,
) -> None:
    # Root may write anywhere, so "unwritable" is a path whose parent is a file.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file")
    sm_job.write_data(tiny_panel)
    result = run_with_env(sm_job, {variable: str(blocker / "sub")})
    assert result.code == 2, result.failure
    line = result.failure_line
    assert line.startswith(f"Could not write a test file in {what} to {blocker}/sub/"), line
    assert "Not a directory" in line
    assert "windows:" not in (sm_job.base / "job.log").read_text(), "it read the data first"


def job_command(hyperparameters: dict[str, str]) -> list[str]:
    return [sys.executable, str(CODE_DIR / "train.py"), *to_cli(hyperparameters)]


def job_env(job: SageMakerDir, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(job.base),
        "PYTHONPATH": str(CODE_DIR),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def run_with_env(job: SageMakerDir, env: dict[str, str]) -> JobRun:
    """The job as a process (run in-process, main() would drop the SM_* variables)."""
    job.write_hyperparameters(HP)
    process = subprocess.run(
        job_command(HP),
        env=job_env(job, **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    (job.base / "job.log").write_text(process.stdout + process.stderr)
    return job.result(process.returncode)


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, target)

    def disk_full(self: TorchCheckpointIO, checkpoint: dict, path: Path, *args: object) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", disk_full)
    with pytest.raises(JobError) as failure:
        io.save_checkpoint({"epoch": 2}, target)
    assert str(failure.value).startswith(
        f"Could not write a checkpoint to {target}: No space left on device (errno 28)."
    )
    assert torch.load(target, weights_only=False) == {"epoch": 1}, "the last good one was lost"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "a partial file was left"


@pytest.mark.slow
def test_a_full_disk_names_the_checkpoint_and_a_restart_resumes(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    """A file-size limit (what `ulimit -f` sets, and what a full disk looks like to a writer):
    the first checkpoint is larger than the limit."""
    sm_job.write_data(tiny_panel)
    hps = {**HP, "max_epochs": "2"}
    sm_job.write_hyperparameters(hps)
    command, env = job_command(hps), job_env(sm_job)
    # Far below a checkpoint (weights and dataset parameters, about 480 KiB here), above the
    # rest written before it: the host panel's arrays (under 90 KiB) and TensorBoard's events.
    limit = 160 * 1024

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    stopped = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=limit_file_size,
    )
    assert stopped.returncode == 2, stopped.stdout[-3000:]
    line = sm_job.result(stopped.returncode).failure_line
    checkpoints = sm_job.base / "checkpoints"
    assert line.startswith(f"Could not write a checkpoint to {checkpoints}/"), line
    assert "File too large" in line
    assert not list(checkpoints.glob("*.ckpt")), "a truncated checkpoint was left behind"
    assert sm_job.result(0).model_files == []

    sm_job.failure_file.unlink()
    restarted = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert restarted.returncode == 0, restarted.stdout[-3000:]
    assert json.loads((sm_job.model_dir / "metrics.json").read_text())["epochs_trained"] == 2


def test_moved_checkpoints_keep_their_best(tmp_path: Path) -> None:
    """The callback state a checkpoint holds, loaded by a job whose checkpoint_dir is another
    directory (SageMaker restores checkpoint_s3_uri there): every path follows the move."""
    old, new = tmp_path / "old", tmp_path / "new"
    saved = RelocatableModelCheckpoint(dirpath=old, filename="best", monitor="val_loss")
    saved.best_model_path = str(old / "best.ckpt")
    saved.best_model_score = torch.tensor(0.5)
    saved.best_k_models = {str(old / "best.ckpt"): torch.tensor(0.5)}
    saved.kth_best_model_path = str(old / "best.ckpt")
    saved.last_model_path = str(old / "last.ckpt")
    state = copy.deepcopy(saved.state_dict())

    restored = RelocatableModelCheckpoint(dirpath=new, filename="best", monitor="val_loss")
    restored.load_state_dict(state)
    assert restored.best_model_path == str(new / "best.ckpt")
    assert restored.best_model_score == torch.tensor(0.5), "the best score was dropped"
    assert restored.best_k_models == {str(new / "best.ckpt"): torch.tensor(0.5)}
    assert restored.kth_best_model_path == str(new / "best.ckpt")
    assert restored.last_model_path == str(new / "last.ckpt")

    same = RelocatableModelCheckpoint(dirpath=old, filename="best", monitor="val_loss")
    same.load_state_dict(copy.deepcopy(state))
    assert same.best_model_path == str(old / "best.ckpt")
    assert same.best_model_score == torch.tensor(0.5)


# --------------------------------------------------------------------------------------------
# Full disks: real small filesystems (tmpfs) mounted by the test
# --------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(request: pytest.FixtureRequest) -> Iterator[Callable[[Path, int], Path]]:
    """mount(directory, bytes): a tmpfs of that size at `directory` (unmounted afterwards)."""
    mounted: list[Path] = []

    def mount(directory: Path, size: int) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> None:
    """Take every free byte of the filesystem (as another writer on that disk would)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (2**16, 2**12, 1):  # down to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    assert shutil.disk_usage(directory).free == 0


def fill_after_the_room_check(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """The disk fills up once the job has checked it has room (another writer on it)."""
    check_room = JobPaths.check_room

    def then_fill(paths: JobPaths, writes: dict) -> None:
        check_room(paths, writes)
        fill(directory)

    monkeypatch.setattr(JobPaths, "check_room", then_fill)


def assert_disk_cause(result: JobRun, *words: str) -> str:
    assert result.code == 2, result.failure
    line = result.failure_line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert result.model_files == []
    record_error("job", line)
    return line


def test_the_failure_file_is_written_on_a_full_disk(small_disk: Callable, tmp_path: Path) -> None:
    output = small_disk(tmp_path / "output", 64 * 1024)
    path = output / "failure"
    failure.reserve(path)
    fill(output)
    assert failure.write_failure(path, JobError("the cause"))
    assert path.read_text() == "the cause\n"
    assert sorted(p.name for p in output.iterdir()) == ["failure", "filler"], "reservation left"


def test_a_failure_file_that_cannot_be_written_is_logged(
    small_disk: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = small_disk(tmp_path / "output", 64 * 1024)
    fill(output)  # before any room was reserved
    assert not failure.write_failure(output / "failure", JobError("the cause"))
    assert "the cause" in capsys.readouterr().err
    assert sorted(p.name for p in output.iterdir()) == ["filler"]


@pytest.mark.slow
def test_a_small_output_disk_is_refused_before_training(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, small_disk: Callable
) -> None:
    """output/ on a 1 MiB disk: too small for the TensorBoard logs and the report."""
    small_disk(sm_job.output_dir, 2**20)
    (sm_job.output_dir / "data").mkdir()
    sm_job.write_data(tiny_panel)
    line = assert_disk_cause(
        sm_job.run(HP),
        f"MiB in {sm_job.output_dir}/tensorboard, the report ~",
        f"MiB in {sm_job.output_dir}/data: 1.0 MiB free there, about ",
    )
    assert re.match(r"Not enough room to write TensorBoard logs ~\d+\.\d MiB in ", line), line
    assert not (sm_job.base / "checkpoints").exists() or not list(
        (sm_job.base / "checkpoints").iterdir()
    ), "it trained"


@pytest.mark.slow
def test_a_small_model_disk_is_refused_before_training(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, small_disk: Callable
) -> None:
    """model/ on a 256 KiB disk: smaller than the model."""
    small_disk(sm_job.model_dir, 256 * 1024)
    sm_job.write_data(tiny_panel)
    line = assert_disk_cause(sm_job.run(HP), "the model ~", f"MiB in {sm_job.model_dir}:")
    assert line.startswith("Not enough room to write the model "), line
    assert not list((sm_job.base / "checkpoints").glob("*.ckpt")), "it trained"


@pytest.mark.slow
def test_an_output_disk_that_fills_during_training(
    sm_job: SageMakerDir,
    tiny_panel: pd.DataFrame,
    small_disk: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """output/ fills up after the job checked its room: TensorBoard and the training summary
    meet "No space left on device" mid-training. The cause still reaches output/failure
    (written into room reserved at the start), and the job fails."""
    output = small_disk(sm_job.output_dir, 16 * 2**20)
    (output / "data").mkdir()
    fill_after_the_room_check(monkeypatch, output)
    sm_job.write_data(tiny_panel)
    line = assert_disk_cause(sm_job.run(HP), f"{output}/", "No space left on device")
    assert line.startswith("Could not write "), line
    assert not (output / "success").exists()
    assert not list(output.glob(".failure*")), "the reserved room was left behind"


@pytest.mark.slow
def test_a_model_disk_that_fills_while_the_model_is_written(
    sm_job: SageMakerDir,
    tiny_panel: pd.DataFrame,
    small_disk: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """model/ fills up after the room check: torch.save's "[enforce fail at
    inline_container.cc] unexpected pos" becomes a cause naming the directory and the disk."""
    model_dir = small_disk(sm_job.model_dir, 16 * 2**20)
    fill_after_the_room_check(monkeypatch, model_dir)
    sm_job.write_data(tiny_panel)
    code = sm_job.run(HP).code
    (model_dir / "filler").unlink()
    line = assert_disk_cause(
        sm_job.result(code), f"Could not write the model to {model_dir}: No space left on device"
    )
    assert "inline_container" not in line


@pytest.mark.slow
def test_a_full_output_disk_under_the_supervisor_is_a_failure(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, small_disk: Callable
) -> None:
    """output/ full before the job starts, under the image's supervisor and the real toolkit:
    not even the failure file can be written (the toolkit's own write raises, and it exits 0
    then); the supervisor exits non-zero and the cause is in the log."""
    if not (VENV_BIN / "train").is_file():
        pytest.skip("sagemaker-training is not installed")
    output = small_disk(sm_job.output_dir, 256 * 1024)
    (output / "data").mkdir()
    fill(output)
    sm_job.write_data(tiny_panel)
    sm_job.write_hyperparameters(HP)
    shutil.copytree(CODE_DIR, sm_job.base / "code", ignore=shutil.ignore_patterns("__pycache__"))
    process = subprocess.run(
        [sys.executable, "-m", "tft_sagemaker.sagemaker.supervise", str(VENV_BIN / "train")],
        env={**sm_job.toolkit_env(), "PYTHONPATH": str(CODE_DIR)},
        cwd=sm_job.base,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = process.stdout + process.stderr
    assert process.returncode == 1, log[-3000:]
    assert (
        f"the cause: Could not write a test file in the output directory to {output}/data/" in log
    ), log[-3000:]
    assert "supervise: The training toolkit exited 0 without reporting success" in log
    assert not (output / "success").exists()
