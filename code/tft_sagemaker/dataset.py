"""Validated frames → pytorch-forecasting TimeSeriesDataSets (training and validation windows).

Every rank builds the same datasets from the same full frames: the categorical encoders and the
target normalizer are fitted on the whole training frame, so embeddings match across ranks.
"""

from __future__ import annotations

import pandas as pd
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data import EncoderNormalizer, GroupNormalizer, NaNLabelEncoder
from pytorch_forecasting.data.encoders import TorchNormalizer

from .config import DataConfig


def _target_normalizer(config: DataConfig) -> TorchNormalizer:
    transformation = config.target_transformation
    match config.target_normalizer:
        case "group":
            return GroupNormalizer(groups=config.group_ids, transformation=transformation)
        case "encoder":
            return EncoderNormalizer(transformation=transformation)
        case "standard":
            return TorchNormalizer(method="standard", transformation=transformation)
        case "none":
            return TorchNormalizer(method="identity", transformation=transformation)
        case _:  # "auto"
            raise ValueError(
                f"target_normalizer={config.target_normalizer!r}: recipe.resolve_data chooses "
                "it before the dataset is built"
            )


def _categorical_encoders(config: DataConfig) -> dict[str, NaNLabelEncoder]:
    """Encoders that map categories unseen in training to a learned 'unknown' embedding, so
    that validation and prediction data may hold new stores, products or holidays."""
    names = (
        config.static_categoricals
        + config.time_varying_known_categoricals
        + config.time_varying_unknown_categoricals
        + config.group_ids
        + [f"__group_id__{g}" for g in config.group_ids]
    )
    return {name: NaNLabelEncoder(add_nan=True) for name in dict.fromkeys(names)}


def build_training_dataset(frame: pd.DataFrame, config: DataConfig) -> TimeSeriesDataSet:
    return TimeSeriesDataSet(
        frame,
        time_idx=config.time_idx,
        target=config.target,
        group_ids=config.group_ids,
        weight=config.weight,
        min_encoder_length=config.resolved_min_encoder_length,
        max_encoder_length=config.max_encoder_length,
        min_prediction_length=config.min_prediction_length,
        max_prediction_length=config.max_prediction_length,
        static_categoricals=config.static_categoricals,
        static_reals=config.static_reals,
        time_varying_known_categoricals=config.time_varying_known_categoricals,
        time_varying_known_reals=config.time_varying_known_reals,
        time_varying_unknown_categoricals=config.time_varying_unknown_categoricals,
        time_varying_unknown_reals=config.time_varying_unknown_reals,
        variable_groups=config.variable_groups,
        target_normalizer=_target_normalizer(config),
        categorical_encoders=_categorical_encoders(config),
        add_relative_time_idx=config.add_relative_time_idx,
        add_target_scales=config.add_target_scales,
        add_encoder_length=config.add_encoder_length,
        allow_missing_timesteps=config.allow_missing_timesteps,
    )


def build_validation_dataset(training: TimeSeriesDataSet, frame: pd.DataFrame) -> TimeSeriesDataSet:
    """The last `max_prediction_length` steps of each series in `frame`, one window each."""
    return TimeSeriesDataSet.from_dataset(training, frame, predict=True, stop_randomization=True)
