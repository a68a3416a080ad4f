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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..config import JobConfig
from ..errors import JobError, writing

log = logging.getLogger(__name__)

STAMP = "tft_sagemaker"  # checkpoint key of the fingerprint


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


def find_resume_checkpoint(directory: Path, current: dict[str, Any]) -> Path | None:
    """The newest valid checkpoint in `directory`, or None to start from scratch."""
    if not directory.is_dir():
        return None
    candidates = sorted(
        (p for p in directory.glob("*.ckpt") if p.stem != "best"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in candidates:
        try:
            # Trusted: written by this job or placed in checkpoint_dir by the user.
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a checkpoint cut short by SIGKILL, for instance
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
            continue
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
            "resuming from %s (epoch %s, step %s)",
            path,
            checkpoint.get("epoch"),
            checkpoint.get("global_step"),
        )
        return path
    return None


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
