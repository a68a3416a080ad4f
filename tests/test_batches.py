"""WindowBatcher's batches equal TimeSeriesDataSet._collate_fn's, bit for bit."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.data.encoders import (
    EncoderNormalizer,
    GroupNormalizer,
    MultiNormalizer,
    NaNLabelEncoder,
    TorchNormalizer,
)
from reference import tutorial_data, tutorial_datasets  # bench/reference.py

from tft_sagemaker.config import build_config
from tft_sagemaker.dataset import build_training_dataset, build_validation_dataset
from tft_sagemaker.evaluate import window_keys
from tft_sagemaker.job_data import split_holdout
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.speedups.batches import (
    WindowBatcher,
    first_difference,
    series_scales,
    unsupported_reason,
)
from tft_sagemaker.validation import min_series_length, validate_frame

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def reference_batch(dataset: TimeSeriesDataSet, windows: np.ndarray):
    return TimeSeriesDataSet._collate_fn([dataset[int(i)] for i in windows])


def assert_identical(expected, actual) -> None:
    """Same structure; tensors of the same dtype and shape with equal values, bit for bit."""
    difference = first_difference(expected, actual)
    assert difference is None, difference


def window_batches(n_windows: int, seed: int = 0, n_random: int = 25) -> list[np.ndarray]:
    """Random batches of assorted sizes, plus one window alone, one window twice, all windows."""
    rng = np.random.default_rng(seed)
    batches = [np.array([0]), np.array([n_windows - 1]), np.array([3 % n_windows] * 2)]
    batches.append(np.concatenate([rng.integers(0, n_windows, 7), [1 % n_windows] * 2]))
    for _ in range(n_random):
        size = int(rng.integers(1, min(n_windows, 128) + 1))
        batches.append(rng.choice(n_windows, size=size, replace=False))
    batches.append(np.arange(n_windows)[:512])
    return batches


def check_equivalence(dataset: TimeSeriesDataSet, device: str = "cpu", seed: int = 0) -> None:
    assert unsupported_reason(dataset) is None
    batcher = WindowBatcher(dataset, device=device)
    assert len(batcher) == len(dataset)
    for windows in window_batches(len(dataset), seed):
        expected = reference_batch(dataset, windows)
        assert_identical(expected, batcher(windows))
    # Window indices may also come as a list or a tensor.
    windows = [2 % len(dataset), 0]
    expected = reference_batch(dataset, np.array(windows))
    assert_identical(expected, batcher(windows))
    assert_identical(expected, batcher(torch.tensor(windows)))


# ---------------------------------------------------------------------------------------------
# Stallion (pytorch-forecasting's TFT tutorial)


def preset_datasets(path: str) -> tuple[TimeSeriesDataSet, TimeSeriesDataSet]:
    """Training and validation datasets as the job builds them with the `stallion` preset."""
    config = build_config({"preset": "stallion"}, None, PRESET_VALUES).data
    raw = pd.read_parquet(path)
    frame = prepare_training_frame(raw, config)[0]
    frame = validate_frame(frame, config, "train", min_series_length(config, holdout=True))
    training = build_training_dataset(split_holdout(frame, config), config)
    return training, build_validation_dataset(training, frame, config)


@pytest.fixture(scope="module", params=["tutorial", "preset"])
def stallion(request: pytest.FixtureRequest) -> tuple[TimeSeriesDataSet, TimeSeriesDataSet]:
    """Stallion as pytorch-forecasting's tutorial builds it, and as the job's preset does."""
    path = os.environ.get("STALLION_PARQUET")
    if not path:
        pytest.skip("STALLION_PARQUET is not set (path of the Stallion parquet file)")
    if request.param == "tutorial":
        return tutorial_datasets(tutorial_data(path))
    return preset_datasets(path)


@pytest.mark.parametrize("device", DEVICES)
def test_stallion_training(stallion, device):
    check_equivalence(stallion[0], device)


@pytest.mark.parametrize("device", DEVICES)
def test_stallion_validation(stallion, device):
    check_equivalence(stallion[1], device)


# ---------------------------------------------------------------------------------------------
# A small synthetic panel: series of different lengths and start times


def synthetic_panel(seed: int = 0, n_series: int = 14) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_series):
        length = int(rng.integers(2, 30))
        first = int(rng.integers(0, 15))
        frames.append(
            pd.DataFrame(
                {
                    "series": f"s{s}",
                    "store": f"store{s % 3}",
                    "time_idx": np.arange(first, first + length),
                    "value": rng.gamma(2.0, 3.0, length),
                    "label": rng.choice(["low", "mid", "high"], length),
                    # pytorch-forecasting fits a MultiNormalizer on a numpy array of all targets,
                    # so a class target beside a real one must be numeric
                    "label_code": rng.integers(0, 3, length),
                    "price": rng.normal(10.0, 2.0, length),
                    "count": rng.integers(0, 5, length),
                    # "c" is unknown to the encoder of promo and encoded as nan (0)
                    "promo": rng.choice(["a", "b", "c"], length),
                    "holiday_x": rng.choice(["-", "x"], length),
                    "holiday_y": rng.choice(["-", "y"], length),
                    "weight": rng.uniform(0.5, 2.0, length),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def synthetic_dataset(data: pd.DataFrame | None = None, **overrides) -> TimeSeriesDataSet:
    kwargs = dict(
        time_idx="time_idx",
        target="value",
        group_ids=["series"],
        weight="weight",
        min_encoder_length=1,
        max_encoder_length=8,
        min_prediction_length=1,
        max_prediction_length=4,
        static_categoricals=["store"],
        time_varying_known_categoricals=["promo", "holidays"],
        variable_groups={"holidays": ["holiday_x", "holiday_y"]},
        categorical_encoders={"promo": NaNLabelEncoder(add_nan=True).fit(pd.Series(["a", "b"]))},
        time_varying_known_reals=["time_idx", "price"],
        time_varying_unknown_reals=["value", "count"],
        target_normalizer=GroupNormalizer(groups=["series"], transformation="softplus"),
        add_relative_time_idx=True,
        add_target_scales=True,
        add_encoder_length=True,
    )
    kwargs.update(overrides)
    with warnings.catch_warnings():
        # series too short for some settings are left out of the index, with a warning
        warnings.simplefilter("ignore", UserWarning)
        return TimeSeriesDataSet(synthetic_panel() if data is None else data, **kwargs)


def predict_dataset(training: TimeSeriesDataSet) -> TimeSeriesDataSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return TimeSeriesDataSet.from_dataset(
            training, synthetic_panel(), predict=True, stop_randomization=True
        )


SYNTHETIC_VARIANTS = {
    "group_normalizer": {},
    "min_encoder_length_3": dict(min_encoder_length=3, max_encoder_length=10),
    "no_weight_no_added_features": dict(
        weight=None, add_relative_time_idx=False, add_target_scales=False, add_encoder_length=False
    ),
    "torch_normalizer_log1p": dict(target_normalizer=TorchNormalizer(transformation="log1p")),
    "identity_normalizer": dict(target_normalizer=None),
    "scale_by_group": dict(
        group_ids=["series", "store"],
        target_normalizer=GroupNormalizer(groups=["series", "store"], scale_by_group=True),
    ),
    "min_prediction_idx": dict(min_prediction_idx=12),
    "min_prediction_length_2": dict(min_prediction_length=2, max_prediction_length=5),
    "lags": dict(lags={"value": [1, 3]}, min_encoder_length=2),
    "classification": dict(
        target="label",
        target_normalizer=NaNLabelEncoder(),
        time_varying_unknown_reals=["value", "count"],
        time_varying_unknown_categoricals=["label"],
    ),
    "multi_target": dict(
        target=["value", "count"],
        target_normalizer=MultiNormalizer(
            [GroupNormalizer(groups=["series"], transformation="softplus"), TorchNormalizer()]
        ),
    ),
    "multi_target_with_classes": dict(
        target=["value", "label_code"],
        target_normalizer=MultiNormalizer(
            [GroupNormalizer(groups=["series"], transformation="softplus"), NaNLabelEncoder()]
        ),
    ),
    "allow_missing_timesteps_without_gaps": dict(allow_missing_timesteps=True),
    # Fitted on each window's encoder (two steps at least: one has no standard deviation).
    "encoder_normalizer": dict(target_normalizer=EncoderNormalizer(), min_encoder_length=2),
    "encoder_normalizer_softplus_max_length": dict(
        target_normalizer=EncoderNormalizer(transformation="softplus", max_length=5),
        min_encoder_length=2,
    ),
    "encoder_normalizer_robust_no_target_scales": dict(
        target_normalizer=EncoderNormalizer(method="robust", transformation="log1p"),
        min_encoder_length=2,
        add_target_scales=False,
    ),
}


@pytest.mark.parametrize("variant", list(SYNTHETIC_VARIANTS))
@pytest.mark.parametrize("device", DEVICES)
def test_synthetic_training(variant, device):
    check_equivalence(synthetic_dataset(**SYNTHETIC_VARIANTS[variant]), device)


@pytest.mark.parametrize("variant", list(SYNTHETIC_VARIANTS))
@pytest.mark.parametrize("device", DEVICES)
def test_synthetic_predict(variant, device):
    training = synthetic_dataset(**SYNTHETIC_VARIANTS[variant])
    check_equivalence(predict_dataset(training), device)


def test_synthetic_panel_covers_short_and_late_windows():
    """The synthetic training set really has what the equivalence tests are meant to cover."""
    dataset = synthetic_dataset()
    x, (_, weight) = WindowBatcher(dataset)(np.arange(len(dataset)))
    assert x["encoder_lengths"].min() == 1 and x["encoder_lengths"].max() == 8
    assert x["decoder_lengths"].min() < 4
    assert len(x["groups"].unique()) > 10
    assert weight is not None
    assert (x["encoder_cat"][..., dataset.flat_categoricals.index("promo")] == 0).any()  # nan


def library_scales(dataset: TimeSeriesDataSet, series_groups: torch.Tensor) -> torch.Tensor:
    """The normalizer asked series by series, stacked as _collate_fn stacks them."""
    scales = [dataset.target_normalizer.get_parameters(g, dataset.group_ids) for g in series_groups]
    return torch.from_numpy(np.array(scales, dtype=np.float32))


@pytest.mark.parametrize("group_ids", [["series"], ["series", "store"]])
def test_group_scales_of_every_series_at_once_are_the_normalizers(group_ids):
    dataset = synthetic_dataset(
        group_ids=group_ids,
        target_normalizer=GroupNormalizer(groups=group_ids, transformation="softplus"),
    )
    series = torch.unique(dataset.data["groups"], dim=0)
    unknown = series[:1] + 1000  # a series the normalizer was not fitted on: its `missing_`
    series = torch.cat([series.flip(0), unknown])
    expected = library_scales(dataset, series)
    assert_identical(expected, series_scales(dataset, series))
    missing = dataset.target_normalizer.missing_
    assert expected[-1].tolist() == pytest.approx([missing["center"], missing["scale"]])


def test_series_scales_of_other_normalizers_are_the_librarys():
    scale_by_group = synthetic_dataset(**SYNTHETIC_VARIANTS["scale_by_group"])
    for dataset in (scale_by_group, synthetic_dataset(target_normalizer=None)):
        series = torch.unique(dataset.data["groups"], dim=0)
        assert_identical(library_scales(dataset, series), series_scales(dataset, series))


def test_stallion_group_scales(stallion):
    for dataset in stallion:
        series = torch.unique(dataset.data["groups"], dim=0)
        assert_identical(library_scales(dataset, series), series_scales(dataset, series))


# ---------------------------------------------------------------------------------------------
# What WindowBatcher refuses


def data_with_gaps() -> pd.DataFrame:
    data = synthetic_panel()
    return data[data["time_idx"] % 7 != 3]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: synthetic_dataset(randomize_length=True), "randomize_length is set"),
        (
            lambda: synthetic_dataset(
                target=["value", "count"],
                target_normalizer=MultiNormalizer([EncoderNormalizer(), TorchNormalizer()]),
                min_encoder_length=2,
            ),
            "EncoderNormalizer on value, one of several targets",
        ),
        (
            lambda: synthetic_dataset(scalers={"price": EncoderNormalizer()}),
            "EncoderNormalizer on price",
        ),
        (
            lambda: synthetic_dataset(data_with_gaps(), allow_missing_timesteps=True),
            "windows with missing timesteps",
        ),
    ],
    ids=["randomize_length", "encoder_normalizer_targets", "encoder_normalizer_real", "gaps"],
)
def test_unsupported(make, reason):
    dataset = make()
    assert unsupported_reason(dataset) == reason
    with pytest.raises(ValueError, match=reason):
        WindowBatcher(dataset)


def test_unsupported_overwrite_values():
    dataset = synthetic_dataset()
    dataset.set_overwrite_values(1.0, variable="price")
    assert unsupported_reason(dataset) == "overwrite values are set"
    dataset.reset_overwrite_values()
    assert unsupported_reason(dataset) is None


def test_randomized_training_has_a_supported_validation_set():
    training = synthetic_dataset(randomize_length=True)
    assert unsupported_reason(predict_dataset(training)) is None


def test_stallion_supported(stallion):
    assert [unsupported_reason(d) for d in stallion] == [None, None]


@pytest.mark.parametrize("group_ids", [["series"], ["series", "store"]])
def test_series_without_a_scale(group_ids):
    """Series the group normalizer has no scale for (not in training): the scales the
    library's __getitem__ gives them (the normalizer's `missing_`), one group id or several."""
    panel = synthetic_panel()
    normalizer = GroupNormalizer(groups=group_ids, transformation="softplus")
    encoders = {
        "promo": NaNLabelEncoder(add_nan=True).fit(pd.Series(["a", "b"])),
        "series": NaNLabelEncoder(add_nan=True),  # s0 unknown: the 'unknown' class
    }
    training = synthetic_dataset(
        panel[panel["series"] != "s0"],
        group_ids=group_ids,
        target_normalizer=normalizer,
        categorical_encoders=encoders,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        predict = TimeSeriesDataSet.from_dataset(
            training, panel, predict=True, stop_randomization=True
        )
    check_equivalence(predict)


@pytest.mark.parametrize("variant", [*SYNTHETIC_VARIANTS, "gaps"])
def test_window_keys_are_those_of_the_library_batches(variant):
    """What the job computes ahead of its forecasts (`fits_ahead.py`) from the dataset alone:
    each window's first forecast step and series codes, and the longest horizon, as the
    library's own batches of every window have them (training and predict datasets)."""
    if variant == "gaps":
        training = synthetic_dataset(data_with_gaps(), allow_missing_timesteps=True)
    else:
        training = synthetic_dataset(**SYNTHETIC_VARIANTS[variant])
    for dataset in (training, predict_dataset(training)):
        (times, codes), horizon = window_keys(dataset)
        x, _ = reference_batch(dataset, np.arange(len(dataset)))
        np.testing.assert_array_equal(times, x["decoder_time_idx"][:, 0].numpy())
        np.testing.assert_array_equal(codes, x["groups"].numpy())
        assert horizon == int(x["decoder_lengths"].max())
