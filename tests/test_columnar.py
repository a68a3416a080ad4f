"""The columnar datasets (columnar.py) are pytorch-forecasting's own, bit for bit: fitted
parameters, tensors, windows and the batches its collate function makes of them."""

from __future__ import annotations

import pickle
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_forecasting import TimeSeriesDataSet

from tft_sagemaker import columnar, dataset
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
from tft_sagemaker.speedups.batches import WindowBatcher, first_difference
from tft_sagemaker.speedups.batches import unsupported_reason as batches_unsupported
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


def assert_same_dataset(
    expected: TimeSeriesDataSet, actual: TimeSeriesDataSet, all_rows: bool = True
) -> None:
    """The same dataset; with `all_rows` false, `actual` may leave out rows no window holds
    (the windows then start at other rows): the same windows and every window's batch."""
    if all_rows:
        pd.testing.assert_frame_equal(expected.index, actual.index, check_exact=True)
        assert first_difference(expected.data, widened(actual.data), "data") is None
    else:
        same = ["sequence_length", "time", "sequence_id"]
        pd.testing.assert_frame_equal(expected.index[same], actual.index[same], check_exact=True)
        assert len(actual.data["time"]) < len(expected.data["time"])
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
    batches = [windows[:64], rng.choice(windows, min(100, len(windows)), replace=False)]
    batcher = WindowBatcher(actual) if batches_unsupported(actual) is None else None
    for batch in batches if all_rows else np.array_split(windows, -(-len(windows) // 64)):
        reference = expected._collate_fn([expected[int(i)] for i in batch])
        assert (
            first_difference(reference, actual._collate_fn([actual[int(i)] for i in batch])) is None
        )
        if batcher is not None:
            assert first_difference(reference, batcher(batch)) is None


def widened(data: dict) -> dict:
    """A dataset's tensors with the integers it stores narrow (columnar.storage_types) as the
    library's int64."""
    return {
        name: value.long()
        if isinstance(value, torch.Tensor) and not value.is_floating_point()
        else value
        for name, value in data.items()
    }


def check_both(frame: pd.DataFrame, config: DataConfig) -> None:
    train = split_holdout(frame, config)
    library = build_training_dataset(train, config)
    ours = build_columnar_training(train, config)
    # both built before any window is read: __getitem__ refits an EncoderNormalizer
    validation = build_validation_dataset(library, frame, config)
    our_validation = build_columnar_validation(ours, frame, config)
    assert_same_dataset(library, ours)
    # stored narrower than the library's int64 (a few stores, products and weeks)
    assert ours.data["time"].dtype == torch.int32
    assert ours.data["groups"].dtype == ours.data["categoricals"].dtype == torch.int8
    # The predict-mode windows' rows only, unless the scales are fitted on every row.
    encoder = config.target_normalizer == "encoder"
    assert_same_dataset(validation, our_validation, all_rows=encoder)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"target_normalizer": "encoder"},
        {"target_normalizer": "standard", "min_encoder_length": "4"},
        {"target_normalizer": "none", "add_encoder_length": "false"},
        {"seasonal_input": "true"},
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


def test_end_indices_are_the_librarys():
    """`end_indices` over arrays against the library's loop, on series with and without gaps,
    of every length against every window length."""
    from pytorch_forecasting.data.timeseries._timeseries import _find_end_indices

    rng = np.random.default_rng(0)
    for trial in range(300):
        diffs, max_lengths = [], []
        for _ in range(rng.integers(1, 6)):
            steps = rng.choice([1, 1, 1, 2, 3], rng.integers(1, 30)) if trial % 2 else None
            time = np.cumsum(steps) - steps[0] if steps is not None else np.arange(30)
            diffs.append(np.append(np.diff(time), 1))
            longest = np.minimum(time + rng.integers(1, 15) - 1, time[-1])
            max_lengths.append(longest - time + 1)
        args = np.concatenate(diffs), np.concatenate(max_lengths), int(rng.integers(1, 8))
        expected_end, expected_missing = _find_end_indices(*args)
        end, missing = columnar.end_indices(*args)
        assert np.array_equal(end, expected_end)
        assert np.array_equal(missing, expected_missing.reshape(-1, 2))


def test_lookups_are_the_librarys():
    """`encode` and `group_norm` give what NaNLabelEncoder.transform and
    GroupNormalizer.get_norm give, unknown categories and series without a scale included."""
    from pytorch_forecasting.data.encoders import GroupNormalizer, NaNLabelEncoder

    values = pd.Series(["b", "a", "c", "a", "zz"], dtype="category")
    encoder = NaNLabelEncoder(add_nan=True).fit(columnar.distinct(values.iloc[:3]))
    with pytest.warns(UserWarning, match="1 unknown classes"):
        expected = encoder.transform(values)
    assert np.array_equal(columnar.encode(encoder, values), expected)
    with pytest.raises(KeyError, match="Unknown category 'zz'"):
        columnar.encode(NaNLabelEncoder().fit(values.iloc[:3]), values)

    frame = pd.DataFrame({"g": [0, 0, 1, 1, 2], "h": [0, 0, 1, 1, 0], "y": [1.0, 2, 3, 5, 7]})
    for groups in (["g"], ["g", "h"]):
        normalizer = GroupNormalizer(groups=groups).fit(frame["y"], frame)  # g=2: one row, NaN
        other = frame.assign(g=[0, 3, 1, 2, 2])  # 3: no scale
        assert np.array_equal(columnar.group_norm(normalizer, other), normalizer.get_norm(other))


def test_unsupported_falls_back_to_the_library(monkeypatch, caplog):
    """Where the columnar build does not apply, the job gets the library's own datasets, their
    tensors in the allocated arrays, and says so."""
    from tft_sagemaker import dataset

    frame, config = prepared(make_panel(n_stores=2, n_weeks=40, seed=1), {"preset": "synthetic"})
    train = split_holdout(frame, config)
    monkeypatch.setattr(dataset, "unsupported_reason", lambda kwargs: "lags are set")
    allocated = []

    def allocate(name, shape, dtype):
        allocated.append(name)
        return np.empty(shape, dtype)

    with caplog.at_level("WARNING"):
        ours = build_columnar_training(train, config, allocate)
        our_validation = build_columnar_validation(ours, frame, config, allocate)
    assert "built by pytorch-forecasting on the whole frame (lags are set)" in caplog.text
    library = build_training_dataset(train, config)
    assert_same_dataset(library, ours)
    assert_same_dataset(build_validation_dataset(library, frame, config), our_validation)
    assert {"reals", "time", "target_0"} <= set(allocated)


def test_non_finite_values_fail_as_in_the_library():
    """A missing target (validate_frame refuses it before; this is the check behind it): the
    library's error."""
    frame, config = prepared(make_panel(n_stores=2, n_weeks=40, seed=1), {"preset": "synthetic"})
    train = split_holdout(frame, config)
    train.loc[train.index[5], config.target] = np.nan
    with pytest.raises(ValueError) as library:
        build_training_dataset(train, config)
    with pytest.raises(ValueError) as ours:
        build_columnar_training(train, config)
    assert "found to be NA or infinite" in str(library.value)
    share = re.compile(r" \(\d+\.\d+%\)")  # ours: of the chunk of series it is in
    assert share.sub("", str(ours.value)) == share.sub("", str(library.value))


def test_the_target_one_season_back_reads_only_the_past():
    """Rows out of order, a gap, a series' first season and rows to forecast (empty target):
    each row gets its series' value a season back, the latest before it across a gap, the
    first value before any."""
    config = DataConfig(target="y", group_ids=["s"], season_length=3)
    frame = pd.DataFrame(
        {
            "s": ["a"] * 8 + ["b"] * 4,
            "time_idx": [0, 1, 2, 3, 4, 6, 7, 8, 5, 6, 7, 8],  # a: no step 5
            "y": [10.0, 11, 12, 13, 14, 16, 17, np.nan, 1, 2, np.nan, np.nan],
        }
    ).sample(frac=1.0, random_state=0)
    lagged = pd.Series(dataset.last_season(frame, config), index=frame.index)
    expected = [10.0, 10, 10, 10, 11, 13, 14, 14, 1, 1, 1, 1]
    assert lagged.sort_index().tolist() == expected
