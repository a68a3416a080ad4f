"""The job's TFT class: checkpoints of other classes load into it, and what it logs."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch
from pytorch_forecasting import TemporalFusionTransformer

from tft_sagemaker.config import build_config
from tft_sagemaker.dataset import build_training_dataset
from tft_sagemaker.model import JobTemporalFusionTransformer, build_model
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import settle


class TemporalFusionTransformerDDP(TemporalFusionTransformer):
    """What this class was called before: its checkpoints must still load."""


def test_checkpoints_of_other_classes_load(tmp_path: Path, small_panel: pd.DataFrame) -> None:
    """Lightning checkpoints hold the hyperparameters and weights, no class: a checkpoint of the
    library's TFT, or of this class under its earlier name, loads into the job's class."""
    config = build_config({"preset": "synthetic", "hidden_size": "8"}, None, PRESET_VALUES)
    dataset = build_training_dataset(
        prepare_training_frame(small_panel, config.data)[0], config.data
    )
    old = TemporalFusionTransformerDDP.from_dataset(dataset, hidden_size=8, log_interval=-1)
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(old, train_dataloaders=dataset.to_dataloader(batch_size=16))
        trainer.save_checkpoint(tmp_path / "old.ckpt")
        loaded = JobTemporalFusionTransformer.load_from_checkpoint(
            tmp_path / "old.ckpt", weights_only=False
        )
    assert type(loaded) is JobTemporalFusionTransformer
    expected = old.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    assert loaded.state_dict().keys() == expected.keys()


def test_learning_rate_is_logged_as_learning_rate(small_panel: pd.DataFrame) -> None:
    """LearningRateMonitor tags the curve with the scheduler's name (else `lr-Adam`)."""
    config = build_config({"preset": "synthetic"}, None, PRESET_VALUES)
    dataset = build_training_dataset(
        prepare_training_frame(small_panel, config.data)[0], config.data
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizers = build_model(dataset, settle(config, len(dataset))).configure_optimizers()
    assert type(optimizers["optimizer"]) is torch.optim.Adam
    assert optimizers["optimizer"].defaults["fused"]
    assert optimizers["lr_scheduler"]["name"] == "learning_rate"
