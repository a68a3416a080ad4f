"""The reference: pytorch-forecasting's Stallion tutorial, written the way its docs write it.

https://pytorch-forecasting.readthedocs.io/en/stable/tutorials/stallion.html (1.x). Deviations,
each to keep the comparison fair: `optimizer="adam"` (the docs' "ranger" needs an extra package
and stalls on this budget, see shared/notes/numbers-to-beat.md), `log_interval=-1` (the docs
draw prediction plots during validation), and no progress bar.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.data import GroupNormalizer
from pytorch_forecasting.metrics import QuantileLoss

from tft_sagemaker.presets import STALLION, STALLION_SPECIAL_DAYS

SPECIAL_DAYS = STALLION_SPECIAL_DAYS  # the tutorial's list of holiday columns
# The tutorial's columns and their roles, which the `stallion` preset took from it as they are.
SCHEMA = STALLION.values


def tutorial_data(path: str) -> pd.DataFrame:
    return tutorial_features(pd.read_parquet(path))


def tutorial_features(data: pd.DataFrame) -> pd.DataFrame:
    data = data.copy()
    data["time_idx"] = data["date"].dt.year * 12 + data["date"].dt.month
    data["time_idx"] -= data["time_idx"].min()
    data["month"] = data.date.dt.month.astype(str).astype("category")
    data["log_volume"] = np.log(data.volume + 1e-8)
    data["avg_volume_by_sku"] = data.groupby(["time_idx", "sku"], observed=True).volume.transform(
        "mean"
    )
    data["avg_volume_by_agency"] = data.groupby(
        ["time_idx", "agency"], observed=True
    ).volume.transform("mean")
    data[SPECIAL_DAYS] = (
        data[SPECIAL_DAYS].apply(lambda x: x.map({0: "-", 1: x.name})).astype("category")
    )
    return data


def tutorial_datasets(data: pd.DataFrame) -> tuple[TimeSeriesDataSet, TimeSeriesDataSet]:
    max_prediction_length = 6
    max_encoder_length = 24
    training_cutoff = data["time_idx"].max() - max_prediction_length
    training = TimeSeriesDataSet(
        data[lambda x: x.time_idx <= training_cutoff],
        time_idx="time_idx",
        target="volume",
        group_ids=SCHEMA["group_ids"],
        min_encoder_length=max_encoder_length // 2,
        max_encoder_length=max_encoder_length,
        min_prediction_length=1,
        max_prediction_length=max_prediction_length,
        static_categoricals=SCHEMA["static_categoricals"],
        static_reals=SCHEMA["static_reals"],
        time_varying_known_categoricals=SCHEMA["time_varying_known_categoricals"],
        variable_groups=SCHEMA["variable_groups"],
        time_varying_known_reals=SCHEMA["time_varying_known_reals"],
        time_varying_unknown_categoricals=[],
        time_varying_unknown_reals=SCHEMA["time_varying_unknown_reals"],
        target_normalizer=GroupNormalizer(groups=["agency", "sku"], transformation="softplus"),
        add_relative_time_idx=True,
        add_target_scales=True,
        add_encoder_length=True,
    )
    validation = TimeSeriesDataSet.from_dataset(
        training, data, predict=True, stop_randomization=True
    )
    return training, validation


def tutorial_fit(
    path: str,
    max_epochs: int,
    accelerator: str,
    precision: str,
    callbacks: list[Callback],
    log_dir: str,
    limit_train_batches: int = 50,
    early_stopping: bool = True,
) -> TemporalFusionTransformer:
    """The tutorial's training; `early_stopping=False` runs all `max_epochs` (for a time to a
    target the recipe might reach only late)."""
    pl.seed_everything(42)  # as the tutorial does before building the trainer
    training, validation = tutorial_datasets(tutorial_data(path))
    batch_size = 128
    train_dataloader = training.to_dataloader(train=True, batch_size=batch_size, num_workers=0)
    val_dataloader = validation.to_dataloader(
        train=False, batch_size=batch_size * 10, num_workers=0
    )
    early_stop_callback = EarlyStopping(
        monitor="val_loss", min_delta=1e-4, patience=10, verbose=False, mode="min"
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        enable_model_summary=False,
        enable_progress_bar=False,
        gradient_clip_val=0.1,
        limit_train_batches=limit_train_batches,
        callbacks=[
            LearningRateMonitor(),
            *([early_stop_callback] if early_stopping else []),
            *callbacks,
        ],
        logger=TensorBoardLogger(log_dir),
    )
    tft = TemporalFusionTransformer.from_dataset(
        training,
        learning_rate=0.03,
        hidden_size=16,
        attention_head_size=2,
        dropout=0.1,
        hidden_continuous_size=8,
        loss=QuantileLoss(),
        log_interval=-1,
        optimizer="adam",
        reduce_on_plateau_patience=4,
    )
    trainer.fit(tft, train_dataloaders=train_dataloader, val_dataloaders=val_dataloader)
    return tft
