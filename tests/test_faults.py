"""Faults of the machine rather than of the input: directories that cannot be written, a disk
that fills up, checkpoints that moved. Each ends in a cause that names the path, never in a
lost run."""

from __future__ import annotations

import copy
import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CODE_DIR, SYNTHETIC_SHORT, TINY, JobRun, SageMakerDir, to_cli
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tft_sagemaker.errors import JobError
from tft_sagemaker.sagemaker.checkpoints import AtomicCheckpointIO, RelocatableModelCheckpoint

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
