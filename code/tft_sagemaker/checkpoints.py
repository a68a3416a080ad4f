"""Which checkpoint a (restarted) job resumes from.

SageMaker copies `checkpoint_s3_uri` back into /opt/ml/checkpoints when a spot job restarts.
The newest readable checkpoint there is resumed, provided it was written by a job with the same
data and model settings (a stamp that trainer.Fingerprint puts in every checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .config import JobConfig
from .errors import JobError

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
