"""The model directory: what a finished job leaves in SM_MODEL_DIR, and how to load it back.

    model.ckpt                 best checkpoint (weights + hyperparameters, no optimizer state)
    dataset_parameters.pt      TimeSeriesDataSet parameters (encoders, scalers) for new data
    config.json                resolved configuration, time axis, the combination (weights,
                               the classical models' season and error spreads), versions
    metrics.json               validation metrics of the model and of the naive Baseline
    report_data.json           what report.html is drawn from: per-epoch history, data summary,
                               interpretation, forecast plots' series (report.py)

Files are written to a staging folder first and moved in at the end: a failed job leaves no
partial model behind.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from .combination import Combination
from .config import JobConfig, build_config
from .errors import JobError, writing
from .model import JobTemporalFusionTransformer, load_model
from .presets import PRESET_VALUES
from .sagemaker import stops
from .sagemaker.paths import JobPaths
from .time_axis import TimeAxis

log = logging.getLogger(__name__)
MODEL_FILE = "model.ckpt"
DATASET_FILE = "dataset_parameters.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
REPORT_DATA_FILE = "report_data.json"
# Training state that inference does not need (the optimizer's can outweigh the weights).
_TRAINING_STATE = (
    "optimizer_states",
    "lr_schedulers",
    "callbacks",
    "loops",
    # With weight averaging, "state_dict" holds the averaged weights; these hold the raw ones.
    "current_model_state",
    "averaging_state",
)


def _versions() -> dict[str, str]:
    return {p: version(p) for p in ("torch", "lightning", "pytorch-forecasting", "pandas")}


# What a job writes besides the weights, at most (measured on small jobs, with room to spare):
# the JSON files beside the model; TensorBoard's event files (hparams, scalars, the report's
# figures at the end) and per epoch; the report and the training summaries in output/data.
MODEL_EXTRAS_BYTES = 2**20
TENSORBOARD_BYTES, TENSORBOARD_EPOCH_BYTES = 2**20, 32 * 2**10
REPORT_BYTES, SUMMARY_BYTES = 4 * 2**20, 256 * 2**10
CHECKPOINT_EXTRAS_BYTES = 256 * 2**10  # loops, callbacks, schedulers


def _saved_bytes(value: Any) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.tell()


def planned_writes(
    model: torch.nn.Module,
    dataset_parameters: dict[str, Any],
    config: JobConfig,
    paths: JobPaths,
) -> dict[str, tuple[Path, int]]:
    """What the job will write at most, per directory, from the model's measured size: for
    JobPaths.check_room before training."""
    weights = _saved_bytes(model.state_dict())
    parameters = _saved_bytes(dataset_parameters)
    hyperparameters = _saved_bytes(dict(getattr(model, "hparams", {})))
    # The optimizer holds two tensors per weight (Adam); weight averaging two more copies.
    copies = 3 + (2 if config.model.ema_decay else 0)
    checkpoint = copies * weights + parameters + hyperparameters + CHECKPOINT_EXTRAS_BYTES
    # best, the kept epochs and one more before the oldest goes, last, and one being written.
    checkpoints = checkpoint * (config.training.keep_checkpoints + 4)
    checkpoints -= sum(p.stat().st_size for p in paths.checkpoint_dir.glob("*.ckpt") if p.is_file())
    epochs = (config.training.max_epochs or 1) + (config.training.extend_epochs or 0)
    model_files = weights + 2 * parameters + hyperparameters + MODEL_EXTRAS_BYTES
    return {
        "the model": (paths.model_dir, model_files),
        "checkpoints": (paths.checkpoint_dir, max(checkpoints, checkpoint)),
        "TensorBoard logs": (
            paths.tensorboard_dir,
            TENSORBOARD_BYTES + epochs * TENSORBOARD_EPOCH_BYTES,
        ),
        "the report": (
            paths.output_data_dir,
            (REPORT_BYTES if config.report.report else 0) + SUMMARY_BYTES,
        ),
    }


def write_model_artifacts(
    model_dir: Path,
    best_checkpoint: dict[str, Any],
    dataset_parameters: dict[str, Any],
    config: JobConfig,
    time_axis: TimeAxis | None,
    metrics: dict[str, Any],
    report_data: dict[str, Any],
    combination: Combination | None = None,
) -> None:
    stops.reached("artifacts")
    with writing("the model", model_dir):
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:  # removed after `writing` has looked at the disk (a full one is named so)
        with writing("the model", model_dir):
            torch.save(
                {k: v for k, v in best_checkpoint.items() if k not in _TRAINING_STATE},
                staging / MODEL_FILE,
            )
            torch.save(dataset_parameters, staging / DATASET_FILE)
            (staging / CONFIG_FILE).write_text(
                json.dumps(
                    {
                        "config": config.to_dict(),
                        "time_axis": asdict(time_axis) if time_axis else None,
                        "combination": combination.to_dict() if combination else None,
                        "versions": _versions(),
                    },
                    indent=2,
                )
            )
            (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
            (staging / REPORT_DATA_FILE).write_text(json.dumps(report_data))
            with stops.deferred():  # a model directory is whole or empty
                for path in staging.iterdir():
                    os.replace(path, model_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class TrainedModel:
    model: JobTemporalFusionTransformer
    dataset_parameters: dict[str, Any]
    config: JobConfig
    time_axis: TimeAxis | None
    metrics: dict[str, Any]
    combination: Combination | None  # the shipped combination (None: the TFT alone)


def _unpacked(path: Path, scratch: Path) -> Path:
    """A model directory, or a SageMaker model.tar.gz unpacked into `scratch`."""
    if path.is_dir():
        return path
    if path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            archive.extractall(scratch, filter="data")
        return scratch
    raise JobError(f"{path} is neither a model directory nor a model.tar.gz.")


def _model_files_in(directory: Path, path: Path) -> Path:
    """The folder of `directory` that holds the model's files: itself, or the one folder up to
    three levels below it that does (an archive of the model directory rather than of its
    files: `tar czf model.tar.gz model/`, or `opt/ml/model/`)."""
    required = (MODEL_FILE, DATASET_FILE, CONFIG_FILE)
    if any((directory / f).is_file() for f in required):
        return directory
    found = sorted(
        p.parent
        for depth in range(1, 4)
        for p in directory.glob("*/" * depth + MODEL_FILE)
        if all((p.parent / f).is_file() for f in required)
    )
    if len(found) > 1:
        folders = ", ".join(str(f.relative_to(directory)) for f in found[:3])
        raise JobError(
            f"{path} holds {len(found)} models, in {folders}: give the model directory, or "
            "the model.tar.gz, of one of them."
        )
    if found:
        log.info("%s: the model's files are in %s/", path, found[0].relative_to(directory))
        return found[0]
    return directory  # named missing by load_trained_model


@contextmanager
def model_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """The folder of a model's files: a model directory, or SageMaker's model.tar.gz unpacked
    while in use (in either, the files may be one folder down)."""
    with tempfile.TemporaryDirectory() as scratch:
        yield _model_files_in(_unpacked(Path(path), Path(scratch)), Path(path))


def load_trained_model(path: str | os.PathLike[str]) -> TrainedModel:
    """Load what `write_model_artifacts` wrote (a directory or SageMaker's model.tar.gz)."""
    with model_directory(path) as directory:
        missing = [
            f for f in (MODEL_FILE, DATASET_FILE, CONFIG_FILE) if not (directory / f).is_file()
        ]
        if missing:
            raise JobError(f"{path} is not a model of this project: missing {', '.join(missing)}.")
        saved = json.loads((directory / CONFIG_FILE).read_text())
        metrics_file = directory / METRICS_FILE
        config = build_config(
            {}, {k: v for s in saved["config"].values() for k, v in s.items()}, PRESET_VALUES
        )
        _, model = load_model(directory / MODEL_FILE, config.speedups)
        return TrainedModel(
            model=model,
            # Written by a training job of this project (a trusted pickle).
            dataset_parameters=torch.load(directory / DATASET_FILE, weights_only=False),
            config=config,
            time_axis=TimeAxis(**saved["time_axis"]) if saved["time_axis"] else None,
            metrics=json.loads(metrics_file.read_text()) if metrics_file.is_file() else {},
            combination=(
                Combination.from_dict(saved["combination"]) if saved.get("combination") else None
            ),
        )
