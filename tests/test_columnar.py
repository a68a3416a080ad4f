"""The columnar datasets (columnar.py) are pytorch-forecasting's own, bit for bit: fitted
parameters, tensors, windows and the batches its collate function makes of them."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from pytorch_forecasting import TimeSeriesDataSet

from tft_sagemaker import columnar
from tft_sagemaker.config import DataConfig, build_config
from tft_sagemaker.dataset import (
    build_columnar_training,
    build_columnar_validation,
    build_training_dataset,
    build_validation_dataset,
)
from tft_sagemaker.job_data import split_holdout
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import resolve_data
from tft_sagemaker.speedups.batches import first_difference
from tft_sagemaker.synthetic import make_panel
from tft_sagemaker.validation import min_series_length, validate_frame


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few series, so that every panel here is built in several."""
    monkeypatch.setattr(columnar, "CHUNK_ROWS", 150)


def prepared(raw: pd.DataFrame, hyperparameters: dict[str, str]) -> tuple[pd.DataFrame, DataConfig]:
    config = build_config(hyperparameters, None, PRESET_VALUES).data
    frame = prepare_training_frame(raw, config)[0]
    frame = validate_frame(frame, config, "train", min_series_length(config, holdout=True))
    return frame, resolve_data(config, frame)[0]


def assert_same_dataset(expected: TimeSeriesDataSet, actual: TimeSeriesDataSet) -> None:
    pd.testing.assert_frame_equal(expected.index, actual.index, check_exact=True)
    assert first_difference(expected.data, actual.data, "data") is None
    ours, theirs = actual.get_parameters(), expected.get_parameters()
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        if name == "target_normalizer" and hasattr(value, "norm_"):  # a frame: compare values
            pd.testing.assert_frame_equal(value.norm_, ours[name].norm_, check_exact=True)
            assert pickle.dumps({**vars(value), "norm_": 0}) == pickle.dumps(
                {**vars(ours[name]), "norm_": 0}
            )
        elif isinstance(value, dict):
            assert value.keys() == ours[name].keys(), name
            for key in value:
                assert pickle.dumps(value[key]) == pickle.dumps(ours[name][key]), (name, key)
        else:
            assert pickle.dumps(value) == pickle.dumps(ours[name]), name
    windows = np.arange(len(expected))
    rng = np.random.default_rng(0)
    for batch in (windows[:64], rng.choice(windows, min(100, len(windows)), replace=False)):
        reference = expected._collate_fn([expected[int(i)] for i in batch])
        assert (
            first_difference(reference, actual._collate_fn([actual[int(i)] for i in batch])) is None
        )


def check_both(frame: pd.DataFrame, config: DataConfig) -> None:
    train = split_holdout(frame, config)
    library = build_training_dataset(train, config)
    ours = build_columnar_training(train, config)
    # both built before any window is read: __getitem__ refits an EncoderNormalizer
    validation = build_validation_dataset(library, frame, config)
    our_validation = build_columnar_validation(ours, frame, config)
    assert_same_dataset(library, ours)
    assert_same_dataset(validation, our_validation)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"target_normalizer": "encoder"},
        {"target_normalizer": "standard", "min_encoder_length": "4"},
        {"target_normalizer": "none", "add_encoder_length": "false"},
    ],
)
def test_synthetic_preset(extra):
    frame, config = prepared(
        make_panel(n_stores=3, n_weeks=50, seed=1), {"preset": "synthetic", **extra}
    )
    check_both(frame, config)


def test_series_of_different_lengths_with_gaps():
    """Series starting late, of different lengths, with missing steps
    (allow_missing_timesteps): the windows the library adds for them, in its order."""
    raw = make_panel(n_stores=3, n_weeks=60, seed=2)
    rng = np.random.default_rng(0)
    series = raw.groupby(["store", "product"], observed=True).ngroup().to_numpy()
    week = raw.groupby(["store", "product"], observed=True).cumcount().to_numpy()
    late = (series % 4) * 5
    gap = (series % 3 == 0) & (week % 17 == 9)
    raw = raw[(week >= late) & ~gap & (rng.random(len(raw)) > 0.02)].reset_index(drop=True)
    frame, config = prepared(
        raw, {"preset": "synthetic", "allow_missing_timesteps": "true", "min_encoder_length": "3"}
    )
    check_both(frame, config)


def test_stallion_preset(stallion_path):
    frame, config = prepared(pd.read_parquet(stallion_path), {"preset": "stallion"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_both(frame, config)
