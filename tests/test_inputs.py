"""What users reasonably give is accepted: the pure steps from files to datasets on awkward but
valid input (dates in many spellings, numbers as categories, hive folders, header-only files,
names the library reserves), and, in slow tests, whole jobs and forecasts on such input.
Rejections are in test_data_validation.py (the job) and test_predict_errors.py (predict)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, SageMakerDir

from tft_sagemaker import predict
from tft_sagemaker.artifacts import load_trained_model
from tft_sagemaker.channels import read_files, undeclared_channel_dirs
from tft_sagemaker.config import DataConfig, build_config, parse_cli
from tft_sagemaker.dataset import (
    build_columnar_training,
    build_prediction_dataset,
    build_training_dataset,
    build_validation_dataset,
    internal_config,
    internal_names,
    known_categories,
    trained_labels,
    user_names,
)
from tft_sagemaker.evaluate import forecast
from tft_sagemaker.job_data import load_job_data, split_holdout
from tft_sagemaker.model import build_model
from tft_sagemaker.preparation import as_labels, prepare_frame, prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import settle
from tft_sagemaker.sagemaker.paths import JobPaths
from tft_sagemaker.time_axis import normalize_freq, parse_dates
from tft_sagemaker.validation import validate_frame

SHORT = {"max_encoder_length": 12, "min_encoder_length": 6, "max_prediction_length": 4}


def synthetic(**values: object) -> DataConfig:
    return build_config({}, {"preset": "synthetic", **SHORT, **values}, PRESET_VALUES).data


def dates_config(**values: object) -> DataConfig:
    return DataConfig(date_column="day", **{"freq": "D", **values})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "settings", "expected"),
    [
        ([20230102, 20230103], {}, ["2023-01-02", "2023-01-03"]),
        ([20230102.0, 20230103.0], {}, ["2023-01-02", "2023-01-03"]),
        ([202301, 202302], {}, ["2023-01-01", "2023-02-01"]),
        ([1990, 1991], {}, ["1990-01-01", "1991-01-01"]),
        ([1990, 1991], {"freq": "Y"}, ["1990-12-31", "1991-12-31"]),
        ([202301, 202302], {"freq": "ME"}, ["2023-01-31", "2023-02-28"]),
        ([20230101, 20230102], {"freq": "ME"}, ["2023-01-01", "2023-01-02"]),
        (["31.01.2023", "01.02.2023"], {"date_format": "%d.%m.%Y"}, ["2023-01-31", "2023-02-01"]),
        (["01/02/2023", "02/02/2023"], {"dayfirst": True}, ["2023-02-01", "2023-02-02"]),
        (["01/02/2023", "02/02/2023"], {}, ["2023-01-02", "2023-02-02"]),
        # Only day-first fits every date: read so, with a warning.
        (["01/02/2023", "13/02/2023"], {}, ["2023-02-01", "2023-02-13"]),
        ([2023_01_31, 2023_02_01], {"date_format": "%Y%m%d"}, ["2023-01-31", "2023-02-01"]),
        (
            pd.Series(["2023-01-01", "2023-01-02"], dtype="category"),
            {},
            ["2023-01-01", "2023-01-02"],
        ),
    ],
    ids=[
        "yyyymmdd",
        "yyyymmdd-float",
        "yyyymm",
        "years",
        "years-at-year-end",
        "yyyymm-at-month-end",
        "yyyymmdd-as-they-are",
        "date_format",
        "dayfirst",
        "monthfirst",
        "dayfirst-inferred",
        "int-with-format",
        "category",
    ],
)
def test_dates_users_give(values: object, settings: dict, expected: list[str]) -> None:
    parsed = _parse(pd.Series(values), **settings)
    assert [str(d.date()) for d in parsed] == expected


def _parse(values: pd.Series, **settings: object) -> pd.Series:
    return parse_dates(values, dates_config(**settings), "train")


@pytest.mark.parametrize(
    ("period", "freq", "expected"),
    [
        ("D", "D", ["2023-01-30", "2023-01-31", "2023-02-01"]),
        ("W-SUN", "W-SUN", ["2023-02-05", "2023-02-12", "2023-02-19"]),
        ("W-SUN", "W-MON", ["2023-01-30", "2023-02-06", "2023-02-13"]),
        ("M", "MS", ["2023-01-01", "2023-02-01", "2023-03-01"]),
        ("M", "ME", ["2023-01-31", "2023-02-28", "2023-03-31"]),
    ],
)
def test_pandas_periods_in_a_parquet_file(
    tmp_path: Path, period: str, freq: str, expected: list[str]
) -> None:
    """A Period column (as pandas writes it to parquet) is read as the dates on the freq grid:
    the period's start, or its last day where that is the grid (W-SUN, ME)."""
    days = pd.period_range("2023-01-30", periods=3, freq=period)
    path = tmp_path / "periods.parquet"
    pd.DataFrame({"id": "a", "day": days, "y": [1.0, 2.0, 3.0]}).to_parquet(path)
    frame = read_files([path], "channel 'train'")
    assert isinstance(frame["day"].dtype, pd.PeriodDtype)
    config = DataConfig(target="y", group_ids=["id"], date_column="day", freq=freq)
    prepared, axis = prepare_training_frame(frame, config)
    assert [str(d.date()) for d in prepared["day"]] == expected
    assert axis is not None and axis.origin == f"{expected[0]}T00:00:00"
    assert list(prepared["time_idx"]) == [0, 1, 2]


def test_decimal_target_and_reals_in_a_parquet_file(tmp_path: Path) -> None:
    """decimal128 columns (as databases export money) are numbers: read as floats."""
    path = tmp_path / "decimals.parquet"
    table = pa.table(
        {
            "id": ["a", "a", "a"],
            "t": pa.array([0, 1, 2], pa.decimal128(5, 0)),
            "y": pa.array(["1.25", "2.50", "3.75"], pa.string()).cast(pa.decimal128(10, 2)),
            "price": pa.array(["9.99", "9.49", "8.99"], pa.string()).cast(pa.decimal128(10, 2)),
        }
    )
    pq.write_table(table, path)
    frame = read_files([path], "channel 'train'")
    assert pd.api.types.infer_dtype(frame["y"]) == "decimal"
    config = DataConfig(
        target="y", group_ids=["id"], time_idx="t", time_varying_known_reals=["price"]
    )
    prepared = prepare_frame(frame, config, "train", None)
    assert prepared["y"].dtype == np.float64 and list(prepared["y"]) == [1.25, 2.5, 3.75]
    assert list(prepared["price"]) == [9.99, 9.49, 8.99]
    assert prepared["t"].dtype == np.int64 and list(prepared["t"]) == [0, 1, 2]


def test_one_letter_keys_as_the_toolkit_passes_them() -> None:
    mapping = pytest.importorskip("sagemaker_training.mapping")
    argv = mapping.to_cmd_args({"d": 1, "preset": "synthetic"})
    assert argv[:2] == ["-d", "1"]
    assert parse_cli(argv) == {"d": "1", "preset": "synthetic"}


def test_integer_dates_say_how_they_were_read(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tft_sagemaker"):
        _parse(pd.Series([20230102, 20230103]))
    assert "'day' holds integers, read as YYYYMMDD (20230102 → 2023-01-02)" in caplog.text


def test_mixed_utc_offsets_become_utc_below_a_day(caplog: pytest.LogCaptureFixture) -> None:
    values = pd.Series(["2023-03-26T01:00:00+01:00", "2023-03-26T03:00:00+02:00"])
    with caplog.at_level(logging.INFO, logger="tft_sagemaker"):
        parsed = _parse(values, freq="h")
    assert str(parsed.dt.tz) == "UTC"
    assert list(parsed.astype(str)) == ["2023-03-26 00:00:00+00:00", "2023-03-26 01:00:00+00:00"]
    assert "'day' mixes UTC offsets (+01:00, +02:00): converted to UTC" in caplog.text


@pytest.mark.parametrize("date_format", [None, "%Y-%m-%dT%H:%M:%S%z"])
def test_local_midnights_across_a_dst_change_keep_their_dates(
    caplog: pytest.LogCaptureFixture, date_format: str | None
) -> None:
    """Daily Europe/Berlin midnights written with their offsets (+01:00, then +02:00 from 26
    March): the calendar dates, consecutive on the daily grid, not UTC's 22:00 and 23:00."""
    days = pd.date_range("2023-03-20", "2023-04-02", freq="D", tz="Europe/Berlin")
    text = [d.isoformat() for d in days]
    assert {t[-6:] for t in text} == {"+01:00", "+02:00"}
    frame = pd.DataFrame({"id": "a", "day": text, "y": np.arange(len(days), dtype=float)})
    config = DataConfig(
        target="y", group_ids=["id"], date_column="day", freq="D", date_format=date_format
    )
    with caplog.at_level(logging.INFO, logger="tft_sagemaker"):
        prepared, axis = prepare_training_frame(frame, config)
    assert list(prepared["day"]) == list(pd.date_range("2023-03-20", "2023-04-02", freq="D"))
    assert axis is not None and axis.origin == "2023-03-20T00:00:00"
    assert list(prepared["time_idx"]) == list(range(len(days)))
    assert (
        "'day' mixes UTC offsets (+01:00, +02:00): read as the local dates they show (freq=D is "
        "daily or coarser)" in caplog.text
    )
    weekly = pd.Series([d.isoformat() for d in days[::7]])  # coarser than daily: the same
    config = DataConfig(date_column="day", freq="W-MON", date_format=date_format)
    assert list(parse_dates(weekly, config, "train").astype(str)) == ["2023-03-20", "2023-03-27"]


def test_day_first_reading_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tft_sagemaker"):
        _parse(pd.Series(["01/02/2023", "13/02/2023"]))
    assert (
        "'day' read with dayfirst=true (e.g. 01/02/2023 → 2023-02-01): only that reading fits "
        "every date" in caplog.text
    )


def test_ambiguous_dates_read_onto_the_freq_grid(caplog: pytest.LogCaptureFixture) -> None:
    """Monthly dates written 01/02/2023, 01/03/2023, ...: every one reads both ways."""
    values = pd.Series(pd.date_range("2022-01-01", periods=24, freq="MS").strftime("%d/%m/%Y"))
    with caplog.at_level(logging.INFO, logger="tft_sagemaker"):
        parsed = parse_dates(values, DataConfig(date_column="day", freq="MS"), "train")
    assert list(parsed) == list(pd.date_range("2022-01-01", periods=24, freq="MS"))
    assert "(e.g. 01/02/2022 → 2022-02-01): the dates read so are on the freq=MS grid" in (
        caplog.text
    )
    iso = values.map(lambda v: f"{v[6:]}-{v[3:5]}-{v[:2]}")  # dayfirst never turns ISO dates
    config = DataConfig(date_column="day", freq="MS", dayfirst=True)
    assert list(parse_dates(iso, config, "train")) == list(parsed)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("H", "h"), ("2H", "2h"), ("M", "ME"), ("A-DEC", "YE-DEC"), ("15T", "15min"), ("D", "D")],
)
def test_old_frequency_names(given: str, expected: str) -> None:
    assert normalize_freq(given) == expected


def test_daily_text_dates_with_a_time_axis() -> None:
    frame = pd.DataFrame(
        {
            "id": ["a"] * 4,
            "day": ["02/01/2023", "03/01/2023", "04/01/2023", "05/01/2023"],
            "y": [1.0, 2.0, 3.0, 4.0],
        }
    )
    config = DataConfig(target="y", group_ids=["id"], date_column="day", freq="D", dayfirst=True)
    prepared, axis = prepare_training_frame(frame, config)
    assert axis is not None and axis.origin == "2023-01-02T00:00:00"

    assert list(prepared["time_idx"]) == [0, 1, 2, 3]


def test_calendar_variables_in_training_and_in_forecasts_of_unseen_months(
    caplog: pytest.LogCaptureFixture,
) -> None:
    days = pd.date_range("2023-01-01", "2023-02-28", freq="D")
    frame = pd.concat(
        [
            pd.DataFrame({"id": name, "day": days, "y": np.arange(len(days)) % 7 + offset})
            for name, offset in (("a", 0.0), ("b", 10.0))
        ],
        ignore_index=True,
    ).assign(calendar_month=1.0)  # a user column of the calendar's name
    config = DataConfig(
        target="y",
        group_ids=["id"],
        date_column="day",
        freq="D",
        max_encoder_length=14,
        max_prediction_length=7,
        time_varying_known_reals=["calendar_month"],
        time_varying_unknown_reals=["y"],
        target_normalizer="group",
        calendar_features=["day_of_week", "month"],
    )
    prepared, axis = prepare_training_frame(frame, config)
    training = build_training_dataset(prepared, config)
    known = training.time_varying_known_categoricals
    assert known == ["calendar_day_of_week", "calendar_month_"]
    parameters = training.get_parameters()
    weekday = parameters["categorical_encoders"]["calendar_day_of_week"]
    assert set(weekday.classes_) == {"nan", *(str(d) for d in range(7))}
    # March was never trained on: the month's 'unknown' embedding, no error.
    march = pd.date_range("2023-03-01", periods=7, freq="D")
    future = pd.concat(
        [frame, *(pd.DataFrame({"id": i, "day": march, "calendar_month": 1.0}) for i in "ab")],
        ignore_index=True,
    )
    future = prepare_frame(future, config, "forecast", axis)
    with caplog.at_level(logging.WARNING, logger="tft_sagemaker"):
        predict.new_categories(future, trained_labels(parameters, config), config, "forecast")
    assert (
        "Channel 'forecast': calendar month 3 (14 rows, e.g. at id=a, time_idx=59) never occurs "
        "in the training data: the model reads it as unknown" in caplog.text
    )
    windows = build_prediction_dataset(parameters, future.fillna({"y": 0.0}), config)
    x, _ = next(iter(windows.to_dataloader(train=False, batch_size=2)))
    month = known.index("calendar_month_")
    assert (x["decoder_cat"][..., month] == 0).all()  # the encoder's code for unseen labels
    assert x["decoder_cat"][0, :, known.index("calendar_day_of_week")].tolist() == list(
        weekday.transform(pd.Series([str(d.dayofweek) for d in march]))
    )


def test_encoders_learn_the_categories_of_the_held_out_horizon(small_panel: pd.DataFrame) -> None:
    """Fitted on the rows they are built on, the encoders are the library's own; given the
    held-out horizon's categories too (as the job gives them), they know its holiday 'xmas'
    and its calendar month, which the training rows alone never hold."""
    frame = small_panel.assign(holiday=small_panel["holiday"].astype(str))
    frame.loc[frame["week"].eq(frame["week"].max()), "holiday"] = "xmas"
    config = synthetic(calendar_features=["month", "quarter"])
    prepared = validate_frame(prepare_training_frame(frame, config)[0], config, "train", 11)
    train = split_holdout(prepared, config)
    library = build_training_dataset(train, config).get_parameters()["categorical_encoders"]
    own = build_columnar_training(train, config, categories=known_categories([train], config))
    encoders = own.get_parameters()["categorical_encoders"]
    for name in ("holiday", "month", "calendar_month", "calendar_quarter", "store"):
        assert encoders[name].classes_ == library[name].classes_, name
    assert "xmas" not in library["holiday"].classes_

    categories = known_categories([train, prepared], config)
    encoders = build_columnar_training(train, config, categories=categories).get_parameters()[
        "categorical_encoders"
    ]
    assert set(encoders["holiday"].classes_) == set(library["holiday"].classes_) | {"xmas"}
    known = trained_labels({"categorical_encoders": encoders}, config)
    assert known["holiday"] == (set(library["holiday"].classes_) - {"nan"}) | {"xmas"}


# --------------------------------------------------------------------------------------------
# Types: numbers as categories, whole floats as the time index
# --------------------------------------------------------------------------------------------
def test_numbers_as_category_labels() -> None:
    values = pd.Series([1, 2.0, None, 3.5, True, "x"], dtype=object)
    labels = as_labels(values)
    assert labels.astype(object).where(labels.notna(), None).tolist() == [
        "1",
        "2",
        None,
        "3.5",
        "True",
        "x",
    ]
    assert as_labels(pd.Series([1.0, 2.0])).tolist() == ["1", "2"]
    assert as_labels(pd.Series([1, 2], dtype="Int64")).tolist() == ["1", "2"]


def test_numeric_categoricals_and_ids(small_panel: pd.DataFrame) -> None:
    frame = small_panel.assign(
        month=small_panel["week"].dt.month,  # int, not '1'..'12'
        store=small_panel["store"].str[-3:].astype(int).astype(float),  # 0.0, 1.0, 2.0
    )
    config = synthetic()
    prepared = prepare_training_frame(frame, config)[0]
    assert sorted(prepared["store"].unique()) == ["0", "1", "2"]
    assert set(prepared["month"].unique()) == {str(m) for m in range(1, 13)}
    validated = validate_frame(prepared, config, "train", 11)
    dataset = build_training_dataset(validated, config)  # the library takes them as categories
    stores = dataset.get_parameters()["categorical_encoders"]["store"].classes_
    assert set(stores) == {"nan", "0", "1", "2"}


def test_whole_float_time_index(small_panel: pd.DataFrame) -> None:
    weeks = (small_panel["week"] - small_panel["week"].min()).dt.days // 7
    frame = small_panel.drop(columns=["week"]).assign(t=weeks.astype(float))
    config = synthetic(
        date_column=None, freq=None, time_idx="t", time_varying_known_reals=["t", "price"]
    )
    prepared = prepare_frame(frame, config, "train", None)
    assert prepared["t"].dtype == np.int64
    dataset = build_training_dataset(validate_frame(prepared, config, "train", 11), config)
    assert dataset.data["time"].max() == weeks.max()  # the library's time index: whole weeks


def test_target_of_zeros_with_softplus(small_panel: pd.DataFrame) -> None:
    """Stallion has zero volumes and uses softplus: zeros are in its range."""
    frame = small_panel.copy()
    frame.loc[frame.index[::7], "sales"] = 0.0
    config = synthetic(target_transformation="softplus")
    prepared = prepare_training_frame(frame, config)[0]
    dataset = build_training_dataset(validate_frame(prepared, config, "train", 11), config)
    assert (dataset.data["target"][0] == 0).sum() == (frame["sales"] == 0).sum()


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def test_files_without_rows_are_skipped(
    tmp_path: Path, small_panel: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    small_panel.to_csv(tmp_path / "part-0.csv", index=False)
    small_panel.iloc[:0].to_csv(tmp_path / "part-1.csv", index=False)  # header only
    (tmp_path / "part-2.csv").write_text("")  # empty
    small_panel.iloc[:0].to_parquet(tmp_path / "part-3.parquet")
    files = sorted(tmp_path.iterdir())
    with caplog.at_level(logging.INFO, logger="tft_sagemaker"):
        frame = read_files(files, "channel 'train'", tmp_path)
    assert len(frame) == len(small_panel)
    assert frame["sales"].dtype == float  # not text, as the header-only part would make it
    assert "channel 'train': skipping 3 file(s) without rows: part-1.csv, part-2.csv" in (
        caplog.text
    )


def test_hive_partitioned_parquet(tmp_path: Path, small_panel: pd.DataFrame) -> None:
    """A folder as Spark and pyarrow write it: store=store_000/<uuid>.parquet, ..."""
    table = pa.Table.from_pandas(
        small_panel.assign(shard=small_panel.index % 2), preserve_index=False
    )
    pq.write_to_dataset(table, tmp_path, partition_cols=["store", "shard"])
    assert (tmp_path / "store=store_001" / "shard=1").is_dir()
    files = sorted(tmp_path.rglob("*.parquet"))
    frame = read_files(files, "channel 'train'", tmp_path)
    assert frame["shard"].dtype == np.int64  # whole numbers, as pyarrow reads them
    assert sorted(frame["store"].unique()) == sorted(small_panel["store"].unique())
    key = ["store", "product", "week"]
    ours = frame.drop(columns="shard").sort_values(key).reset_index(drop=True)
    theirs = small_panel.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        ours[theirs.columns].astype({"store": str}),
        theirs.astype({"store": str}),
        check_dtype=False,
    )


def test_other_csv_delimiters_and_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes("\ufeffstore;week;sales\na;2023-01-02;1.5\n".encode())
    frame = read_files([path], "channel 'train'")
    assert list(frame.columns) == ["store", "week", "sales"]
    assert frame["sales"].tolist() == [1.5]


def test_semicolons_and_decimal_commas(tmp_path: Path, small_panel: pd.DataFrame) -> None:
    """A CSV as spreadsheets write it where the decimal mark is a comma."""
    path = tmp_path / "data.csv"
    small_panel.to_csv(path, index=False, sep=";", decimal=",")
    frame = read_files([path], "channel 'train'")
    assert frame["price"].tolist() == small_panel["price"].tolist()


def test_undeclared_channel_folder_is_reported(
    sm_job: SageMakerDir, small_panel: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    """The toolkit exports SM_CHANNEL_TRAIN only: a validation folder beside it is not read."""
    sm_job.write_data(small_panel)
    sm_job.write_data(small_panel, channel="validation")
    env = {
        "SAGEMAKER_BASE_DIR": str(sm_job.base),
        "SM_CHANNEL_TRAIN": str(sm_job.data_dir / "train"),
    }
    paths = JobPaths.from_env(env)
    assert undeclared_channel_dirs(paths) == [sm_job.data_dir / "validation"]
    with caplog.at_level(logging.INFO, logger="tft_sagemaker"):
        load_job_data(paths, synthetic())
    assert (
        "input/data/validation is not a channel of this job (channels: train): its files are "
        "not read" in caplog.text
    )
    assert (
        undeclared_channel_dirs(JobPaths.from_env({"SAGEMAKER_BASE_DIR": str(sm_job.base)})) == []
    )


# --------------------------------------------------------------------------------------------
# The validation channel
# --------------------------------------------------------------------------------------------
def test_validation_channel_repeating_history_then_the_horizon(
    sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    """Validation holding whole series (history included) and train without their last
    horizon: the history repeats, the validated steps follow train."""
    train = small_panel[small_panel["week"] < small_panel["week"].max() - pd.Timedelta(weeks=3)]
    sm_job.write_data(train)
    sm_job.write_data(small_panel, channel="validation")
    config = synthetic()
    data = load_job_data(JobPaths.from_env({"SAGEMAKER_BASE_DIR": str(sm_job.base)}), config)
    training = build_training_dataset(data.train, config)
    assert len(build_validation_dataset(training, data.validation, config)) == 30


def test_new_series_in_validation_with_per_window_scaling(
    sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    new = small_panel["store"].eq("store_002")
    sm_job.write_data(small_panel[~new])
    sm_job.write_data(small_panel[new], channel="validation")
    config = synthetic(target_normalizer="encoder")
    data = load_job_data(JobPaths.from_env({"SAGEMAKER_BASE_DIR": str(sm_job.base)}), config)
    training = build_training_dataset(data.train, config)
    validation = build_validation_dataset(training, data.validation, config)
    # The final evaluation names each window's series (x_to_index raised KeyError here).
    preset = build_config({}, {"preset": "synthetic"}, PRESET_VALUES)
    model = build_model(training, settle(preset, len(training)))
    index = forecast(model, validation, vectorised=False).index  # per window: encoder scaling
    assert sorted(index["store"].unique()) == ["store_002"] and len(index) == 10


# --------------------------------------------------------------------------------------------
# Names the library reserves
# --------------------------------------------------------------------------------------------
CLASHING = DataConfig(
    target="pop",
    group_ids=["keys", "id"],
    time_idx="t",
    static_categoricals=["keys", "type"],
    static_reals=["pop_center"],
    time_varying_known_categoricals=["holidays"],
    variable_groups={"holidays": ["a.b", "encoder_length"]},
    time_varying_known_reals=["t", "train", "__group_id__id"],
    time_varying_unknown_reals=["pop", "v_pop"],
)


def test_internal_names_avoid_every_clash() -> None:
    names = internal_names(CLASHING)
    assert names == {
        "pop": "v_pop_2",  # v_pop is a user column
        "t": "t",
        "keys": "v_keys",
        "id": "id",
        "type": "v_type",
        "holidays": "holidays",
        "a.b": "v_a_b",
        "encoder_length": "v_encoder_length",
        "pop_center": "pop_center",  # the library derives v_pop_2_center, not pop_center
        "train": "v_train",
        "__group_id__id": "v___group_id__id",
        "v_pop": "v_pop",
    }
    assert user_names(CLASHING) == {
        **{internal: name for name, internal in names.items() if internal != name},
        "v_pop_2_center": "pop_center",
        "v_pop_2_scale": "pop_scale",
    }
    internal = internal_config(CLASHING)
    assert internal.variable_groups == {"holidays": ["v_a_b", "v_encoder_length"]}
    assert internal.group_ids == ["v_keys", "id"]


def _clashing_panel(panel: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The synthetic panel with columns named `pop`, `keys`, `a.b`, `type`, numeric store ids
    and a whole-float time index instead of dates."""
    frame = panel.rename(
        columns={"price": "pop", "discount_pct": "a.b", "category": "keys", "store_size": "type"}
    )
    frame["store"] = frame["store"].str[-3:].astype(int)
    frame["t"] = ((frame["week"] - frame["week"].min()).dt.days // 7).astype(float)
    hyperparameters = {
        **TINY,
        "target": "sales",
        "group_ids": "store,product",
        "time_idx": "t",
        "static_categoricals": "store,product,keys",
        "static_reals": "type",
        "time_varying_known_categoricals": "promo,holiday,month",
        "time_varying_known_reals": "t,pop,a.b",
        "time_varying_unknown_reals": "sales",
        "max_encoder_length": "12",
        "max_prediction_length": "4",
    }
    return frame.drop(columns=["week"]), hyperparameters


@pytest.mark.slow
@pytest.mark.parametrize("given", ["local-dates-in-a-csv", "periods-and-decimals-in-a-parquet"])
def test_jobs_on_local_dates_periods_and_decimals(
    sm_job: SageMakerDir, small_panel: pd.DataFrame, capsys: pytest.CaptureFixture, given: str
) -> None:
    """The weekly panel with its Mondays written as Europe/Berlin midnights (+01:00 in winter,
    +02:00 in summer) in a CSV; or as a Period[D] column beside a decimal128 target."""
    weeks = small_panel["week"]
    if given == "local-dates-in-a-csv":
        local = weeks.dt.tz_localize("Europe/Berlin").map(lambda d: d.isoformat())
        sm_job.write_data(small_panel.assign(week=local), name="data.csv")
    else:
        frame = small_panel.assign(week=weeks.dt.to_period("D"))
        table = pa.Table.from_pandas(frame, preserve_index=False)
        sales = table["sales"].cast(pa.decimal128(12, 4), safe=False)
        table = table.set_column(table.schema.get_field_index("sales"), "sales", sales)
        pq.write_table(table, sm_job.channel("train") / "data.parquet")
    result = sm_job.run({"preset": "synthetic", **TINY, **{k: str(v) for k, v in SHORT.items()}})
    assert result.code == 0, result.failure
    out = capsys.readouterr().out
    if given == "local-dates-in-a-csv":
        assert (
            "Channel 'train': 'week' mixes UTC offsets (+01:00, +02:00): read as the local dates "
            "they show (freq=W-MON is daily or coarser)"
        ) in out
    axis = json.loads((sm_job.model_dir / "config.json").read_text())["time_axis"]
    assert axis == {"freq": "W-MON", "origin": "2022-01-03T00:00:00"}


@pytest.mark.slow
def test_job_and_forecasts_with_clashing_names_and_numeric_ids(
    sm_job: SageMakerDir, small_panel: pd.DataFrame, tmp_path: Path
) -> None:
    frame, hyperparameters = _clashing_panel(small_panel)
    sm_job.write_data(frame)
    result = sm_job.run(hyperparameters)
    assert result.code == 0, result.failure
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["validation_windows"] == 30

    data, output = tmp_path / "data.csv", tmp_path / "forecast.parquet"
    frame.to_csv(data, index=False)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = predict.main(
            ["--model", str(sm_job.model_dir), "--data", str(data), "--output", str(output)]
        )
    assert code == 0
    forecasts = pd.read_parquet(output)
    assert forecasts["store"].dtype == np.int64 and sorted(forecasts["store"].unique()) == [0, 1, 2]
    assert forecasts["t"].dtype == np.int64 and forecasts["t"].min() == 56
    assert forecasts["actual"].notna().all()
    mae = (forecasts["prediction"] - forecasts["actual"]).abs().mean()
    assert mae == pytest.approx(metrics["val_MAE"], rel=1e-4)
    assert f"MAE on the {30 * 4} steps with actuals: " in stdout.getvalue()


@pytest.mark.slow
def test_job_with_new_series_in_validation(sm_job: SageMakerDir, small_panel: pd.DataFrame) -> None:
    """Whole new series in validation, scaled per window: trained, evaluated, saved."""
    new = small_panel["store"].eq("store_002")
    sm_job.write_data(small_panel[~new])
    sm_job.write_data(small_panel[new], channel="validation")
    result = sm_job.run(
        {
            "preset": "synthetic",
            **TINY,
            **{k: str(v) for k, v in SHORT.items()},
            "target_normalizer": "encoder",
        }
    )
    assert result.code == 0, result.failure
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["validation_windows"] == 10
    trained = load_trained_model(sm_job.model_dir)
    forecasts = predict.predict_frame(trained, small_panel[new])
    assert sorted(forecasts["store"].unique()) == ["store_002"]
    mae = (forecasts["prediction"] - forecasts["actual"]).abs().mean()
    assert mae == pytest.approx(metrics["val_MAE"], rel=1e-4)
