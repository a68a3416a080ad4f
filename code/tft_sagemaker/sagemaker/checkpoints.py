"""Checkpoints: written whole or not at all, found again after a move, and which one a
(restarted) job resumes from.

SageMaker copies `checkpoint_s3_uri` back into /opt/ml/checkpoints when a spot job restarts.
The newest readable checkpoint there is resumed, provided it was written by a job with the same
data and model settings (a stamp that trainer.Fingerprint puts in every checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..config import JobConfig
from ..errors import DataError, JobError, writing

log = logging.getLogger(__name__)

STAMP = "tft_sagemaker"  # checkpoint key of the fingerprint
BEST_CHECKPOINT = "best"  # ModelCheckpoint's filename: best.ckpt
LAST_CHECKPOINT = "last.ckpt"


def fingerprint(config: JobConfig) -> dict[str, Any]:
    """The settings a checkpoint is only valid for (the training budget may change)."""
    return {"data": asdict(config.data), "model": asdict(config.model)}


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [
        f"{key}: {saved[section].get(key)!r} -> {value!r}"
        for section in current
        for key, value in current[section].items()
        if saved.get(section, {}).get(key) != value
    ]


def training_position(checkpoint: dict[str, Any]) -> tuple[int, int, int]:
    """How far training had got when the checkpoint was written, from the state inside it
    (optimizer steps, completed epochs, completed batches): a later state is larger. File times
    say nothing: a restore from checkpoint_s3_uri, or a `cp`, sets them in any order."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})

    def completed(key: str) -> int:
        return int(fit_loop.get(key, {}).get("total", {}).get("completed", -1))

    return (
        int(checkpoint.get("global_step", -1)),
        completed("epoch_progress"),
        completed("epoch_loop.batch_progress"),
    )


# On a tie (the same state saved twice at an epoch's end), last.ckpt, then an epoch's file:
# best.ckpt is another callback's copy.
_TIE_ORDER = {LAST_CHECKPOINT: 2, f"{BEST_CHECKPOINT}.ckpt": 0}


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a job resumes from, memory-mapped (its tensors are read when used)."""

    path: Path
    checkpoint: dict[str, Any]

    def check_fits(
        self, weights: Mapping[str, torch.Tensor], dataset_parameters: dict[str, Any]
    ) -> None:
        """Refuse, before training, a checkpoint the data no longer fits (`weights`: the state
        dict of the model built for the data): other categories (a new series, a new holiday)
        change the embeddings, which Lightning would find out only as a size mismatch."""
        remedy = (
            "Set resume=false to train afresh, or give the job a new checkpoint_dir "
            "(checkpoint_s3_uri)."
        )
        saved = (self.checkpoint.get("dataset_parameters") or {}).get("categorical_encoders", {})
        current = dataset_parameters.get("categorical_encoders", {})
        changed: dict[str, str] = {}
        for name, encoder in current.items():
            then = getattr(saved.get(name), "classes_", None)
            now = getattr(encoder, "classes_", None)
            if then is None or now is None or list(then) == list(now):
                continue
            new, gone = [c for c in now if c not in then], [c for c in then if c not in now]
            changed[name] = (
                f"{name!r}: {len(new)} new (e.g. {str(new[0])!r})"
                if new
                else f"{name!r}: {len(gone)} gone (e.g. {str(gone[0])!r})"
                if gone
                else f"{name!r}: the same in another order"
            )
        # A series id's internal copy (__group_id__NAME) only repeats what its column says.
        copy = "__group_id__"
        shown = [
            text
            for name, text in changed.items()
            if not (name.startswith(copy) and name.removeprefix(copy) in changed)
        ]
        if shown:
            raise DataError(
                f"Cannot resume from {self.path}: it was trained on data with other categories "
                f"({'; '.join(shown[:3])}). {remedy}"
            )
        saved_weights = self.checkpoint.get("state_dict", {})
        for name, tensor in weights.items():
            then = saved_weights.get(name)
            if then is not None and tuple(then.shape) != tuple(tensor.shape):
                raise DataError(
                    f"Cannot resume from {self.path}: its {name} is {list(then.shape)}, the "
                    f"model of this data needs {list(tensor.shape)}. {remedy}"
                )


def find_resume_checkpoint(directory: Path, current: dict[str, Any]) -> ResumePoint | None:
    """The checkpoint in `directory` with the newest training state, or None to start from
    scratch. Refused if it was not written by this job or with other settings."""
    if not directory.is_dir():
        return None
    found: list[ResumePoint] = []
    for path in sorted(directory.glob("*.ckpt")):
        try:
            # Trusted: written by this job or placed in checkpoint_dir by the user. Mapped, not
            # read: only the counters are looked at here.
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as err:  # a checkpoint cut short by SIGKILL, for instance
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
            continue
        found.append(ResumePoint(path, checkpoint))
    if not found:
        return None
    newest = max(
        found,
        key=lambda p: (training_position(p.checkpoint), _TIE_ORDER.get(p.path.name, 1)),
    )
    path, checkpoint = newest.path, newest.checkpoint
    saved = checkpoint.get(STAMP)
    if saved is None:
        raise JobError(
            f"{path} was not written by this training job; empty checkpoint_dir "
            f"({directory}) or set resume=false."
        )
    changes = _differences(saved, current)
    if changes:
        raise JobError(
            f"Cannot resume from {path}: it was trained with other settings "
            f"({'; '.join(changes[:5])}). Use a new checkpoint_s3_uri/checkpoint_dir or "
            "set resume=false."
        )
    log.info(
        "resuming from %s (epoch %s, step %s: the newest training state of %d checkpoints)",
        path,
        checkpoint.get("epoch"),
        checkpoint.get("global_step"),
        len(found),
    )
    return newest


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target and renames it into place.
    Lightning writes the target itself, so a full disk or a file-size limit would leave a
    truncated checkpoint where the last good one was; here the previous one stays intact and
    the job fails naming the file and the cause, and a restart resumes from what was saved."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")  # not *.ckpt: never resumed from
        try:
            with writing("a checkpoint", path):
                path.parent.mkdir(parents=True, exist_ok=True)
                super().save_checkpoint(checkpoint, partial, storage_options)
                os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise


class RelocatableModelCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that still knows its best checkpoint after the checkpoint directory
    moved (SageMaker restores checkpoint_s3_uri into /opt/ml/checkpoints; users copy them
    elsewhere and set checkpoint_dir). Lightning keeps only the stale `best_model_path` then,
    so the job would evaluate and save whatever checkpoint comes last; here the paths it saved
    are read in the new directory."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:

            def moved(path: Any) -> Any:
                if isinstance(path, str) and path and Path(path).parent == Path(old):
                    return str(Path(new) / Path(path).name)
                return path

            best_k = state_dict.get("best_k_models", {})
            state_dict = {
                **{key: moved(value) for key, value in state_dict.items()},
                "best_k_models": {moved(path): score for path, score in best_k.items()},
                "dirpath": new,
            }
            log.info("checkpoints moved from %s to %s: tracking them there", old, new)
        super().load_state_dict(state_dict)
