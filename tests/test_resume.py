"""Which checkpoint a restarted job resumes from: the newest training state, whatever order a
restore gave the files' times; and a checkpoint the data no longer fits is refused before
training. (That a resumed job trains no batch twice: tests/test_stops.py.)"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SYNTHETIC_SHORT, TINY, SageMakerDir, record_error

from tft_sagemaker.errors import DataError
from tft_sagemaker.sagemaker.checkpoints import (
    STAMP,
    ResumePoint,
    find_resume_checkpoint,
    training_position,
)

HP = {**SYNTHETIC_SHORT, **TINY, "max_epochs": "3", "early_stopping_patience": "0"}
FILES = ("best.ckpt", "epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_panel: pd.DataFrame) -> Path:
    """A job trained for three epochs: its checkpoints/ holds FILES."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        job = SageMakerDir(tmp_path_factory.mktemp("trained") / "opt_ml", monkeypatch)
        job.write_data(small_panel)
        result = job.run(HP)
    assert result.code == 0, result.failure
    assert sorted(p.name for p in (job.base / "checkpoints").glob("*.ckpt")) == list(FILES)
    return job.base


def restored(source: Path, target: Path, order: tuple[str, ...]) -> Path:
    """The checkpoints copied into `target`, their file times in `order` (oldest first), as a
    restore from S3 or a `cp -r` may leave them."""
    target.mkdir()
    for i, name in enumerate(order):
        shutil.copyfile(source / name, target / name)
        os.utime(target / name, (1_700_000_000 + i, 1_700_000_000 + i))
    return target


def stamp(directory: Path) -> dict:
    return torch.load(directory / "last.ckpt", map_location="cpu", weights_only=False)[STAMP]


def test_the_newest_training_state_is_resumed_whatever_the_file_times(
    trained: Path, tmp_path: Path
) -> None:
    source = trained / "checkpoints"
    positions = {
        name: training_position(torch.load(source / name, weights_only=False, mmap=True))
        for name in FILES
    }
    # last.ckpt and epoch=2.ckpt hold the same state (the end of the last epoch), the others
    # an earlier one: the tie goes to last.ckpt, and without it to epoch=2.ckpt.
    assert positions["last.ckpt"] == positions["epoch=2.ckpt"] > positions["epoch=1.ckpt"]
    assert positions["best.ckpt"] <= positions["last.ckpt"]
    current = stamp(source)
    for i, order in enumerate(itertools.permutations(FILES)):
        directory = restored(source, tmp_path / f"all-{i}", order)
        chosen = find_resume_checkpoint(directory, current)
        assert chosen is not None and chosen.path.name == "last.ckpt", order
        without_last = tuple(name for name in order if name != "last.ckpt")
        (directory / "last.ckpt").unlink()
        chosen = find_resume_checkpoint(directory, current)
        assert chosen is not None and chosen.path.name == "epoch=2.ckpt", without_last


def test_a_checkpoint_of_fewer_series_is_refused_before_training(
    trained: Path, sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    """The data gained a series since the checkpoints in checkpoint_dir were written."""
    shutil.copytree(trained / "checkpoints", sm_job.base / "checkpoints")
    before = {p.name: p.stat().st_mtime_ns for p in (sm_job.base / "checkpoints").iterdir()}
    first = small_panel[small_panel["product"] == small_panel["product"].iloc[0]]
    sm_job.write_data(pd.concat([small_panel, first.assign(product="product_new")]))
    result = sm_job.run({**HP, "max_epochs": "4"})
    assert result.code == 2, result.failure
    line = result.failure_line
    assert line == (
        f"Cannot resume from {sm_job.base}/checkpoints/last.ckpt: it was trained on data with "
        "other categories ('product': 1 new (e.g. 'product_new')). Set resume=false to train "
        "afresh, or give the job a new checkpoint_dir (checkpoint_s3_uri)."
    ), line
    after = {p.name: p.stat().st_mtime_ns for p in (sm_job.base / "checkpoints").iterdir()}
    assert after == before, "it trained"
    assert result.model_files == []
    record_error("job", line)


def test_a_checkpoint_whose_weights_do_not_fit_the_model_is_refused(trained: Path) -> None:
    path = trained / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    point = ResumePoint(path, checkpoint)
    weights = dict(checkpoint["state_dict"])
    point.check_fits(weights, checkpoint["dataset_parameters"])  # its own model fits
    name = next(n for n in weights if n.startswith("input_embeddings."))
    weights[name] = torch.zeros(weights[name].shape[0] + 1, *weights[name].shape[1:])
    with pytest.raises(DataError) as raised:
        point.check_fits(weights, checkpoint["dataset_parameters"])
    shape = list(checkpoint["state_dict"][name].shape)
    assert str(raised.value).startswith(
        f"Cannot resume from {path}: its {name} is {shape}, the model of this data needs "
        f"[{shape[0] + 1}, "
    ), raised.value
