"""Bad input fails the job early, with one actionable line in output/failure and no model.

Every case goes through the job's real entry point (`tft_sagemaker.job.main`) on a tiny synthetic
panel in a fresh `/opt/ml`-shaped directory; a few go through SageMaker's own training toolkit
(`train`), which must keep our failure file rather than write its generic one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SYNTHETIC_SHORT, TINY, JobRun, SageMakerDir, record_error

from tft_sagemaker.sagemaker.failure import FAILURE_LIMIT

# The synthetic preset, short windows: one window needs 6 + 1 steps, plus 4 held out = 11.
HP = {**SYNTHETIC_SHORT, **TINY}
MIN_STEPS = 11


def assert_rejected(result: JobRun, *words: str) -> str:
    """A user error: exit 2, a one-line cause holding `words`, ≤ 1024 characters, no model."""
    assert result.code == 2, result.failure
    assert result.failure is not None, "no output/failure written"
    line = result.failure_line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert re.match(r"Unexpected \w+: ", line) is None, line  # not a crash
    assert result.failure.strip() == line, "a user error's failure file is its one-line cause"
    assert len(result.failure) <= FAILURE_LIMIT
    assert result.model_files == [], "a failed job left something in model/"
    record_error("job", line)
    return line


def series_mask(frame: pd.DataFrame, store: str, product: str) -> pd.Series:
    return frame["store"].eq(store) & frame["product"].eq(product)


def run_with(job: SageMakerDir, frame: pd.DataFrame, **extra: str) -> JobRun:
    job.write_data(frame)
    return job.run({**HP, **extra})


# --------------------------------------------------------------------------------------------
# Channels and files
# --------------------------------------------------------------------------------------------
def test_missing_train_channel(sm_job: SageMakerDir) -> None:
    line = assert_rejected(sm_job.run(HP), "Channel 'train' is missing", "channels given: none")
    assert "inputs={'train': 's3://...'}" in line and "input/data/train/" in line


def test_missing_train_channel_names_the_channels_given(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    sm_job.write_data(tiny_panel, channel="validation")
    sm_job.write_data(tiny_panel, channel="training")  # a near miss of the name
    result = sm_job.run(HP)
    assert_rejected(result, "Channel 'train' is missing", "channels given: training, validation")


def test_channel_without_data_files(sm_job: SageMakerDir) -> None:
    channel = sm_job.channel("train")
    (channel / "README.txt").write_text("not data")
    (channel / "_SUCCESS").write_text("")  # markers are skipped
    (channel / ".hidden.parquet").write_text("")  # hidden files too
    line = assert_rejected(sm_job.run(HP), "Channel 'train' has no data files")
    assert ".parquet, .pq, .csv, .csv.gz" in line and str(channel) in line


def test_dangling_symlink_in_a_channel(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    sm_job.write_data(tiny_panel)
    link = sm_job.channel("train") / "more.parquet"
    link.symlink_to(sm_job.base / "gone.parquet")
    assert_rejected(sm_job.run(HP), f"{link} is a symbolic link to", "which does not exist")


def test_channel_with_only_a_config_file(sm_job: SageMakerDir) -> None:
    (sm_job.channel("train") / "tft_config.json").write_text(json.dumps({"preset": "synthetic"}))
    assert_rejected(sm_job.run(TINY), "Channel 'train' has no data files")


def test_file_with_zero_rows(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    result = run_with(sm_job, tiny_panel.iloc[:0])
    assert_rejected(result, "Channel 'train' has no rows", "(1 file(s))")


def test_several_files_with_zero_rows(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    sm_job.write_data(tiny_panel.iloc[:0], name="a.parquet")
    sm_job.write_data(tiny_panel.iloc[:0], name="b.csv")
    assert_rejected(sm_job.run(HP), "Channel 'train' has no rows", "(2 file(s))")


def test_truncated_parquet(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    path = sm_job.write_data(tiny_panel, name="part-0001.parquet")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = assert_rejected(sm_job.run(HP), "Cannot read data file", str(path))
    assert "ArrowInvalid" in line


def test_undecodable_csv(sm_job: SageMakerDir) -> None:
    path = sm_job.channel("train") / "data.csv"
    path.write_bytes(b"\x00\x01garbage\xff\xfe,,\n1,2,3\n")
    assert_rejected(sm_job.run(HP), "Cannot read data file", str(path), "UnicodeDecodeError")


def test_files_with_different_columns(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    sm_job.write_data(tiny_panel.iloc[:900], name="a.parquet")
    other = tiny_panel.iloc[900:].drop(columns=["price"]).assign(extra=1.0)
    path = sm_job.write_data(other, name="b.parquet")
    assert_rejected(
        sm_job.run(HP),
        f"Data file {path} does not match a.parquet in channel 'train'",
        "missing columns ['price']",
        "extra columns ['extra']",
    )


def test_csv_with_a_duplicated_column(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    """A CSV header naming `price` twice (pandas would read the second as `price.1`)"""
    path = sm_job.channel("train") / "data.csv"
    doubled = tiny_panel.assign(price2=tiny_panel["price"] * 2)
    doubled.to_csv(path, index=False, header=[*tiny_panel.columns, "price"])
    assert_rejected(
        sm_job.run(HP), f"Data file {path} has duplicated column names: 'price' (2 times)"
    )


def test_parquet_with_a_duplicated_column(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(tiny_panel, preserve_index=False)
    table = table.append_column("price", table.column("price"))
    path = sm_job.channel("train") / "data.parquet"
    pq.write_table(table, path)
    assert_rejected(
        sm_job.run(HP), f"Data file {path} has duplicated column names: 'price' (2 times)"
    )


# --------------------------------------------------------------------------------------------
# Columns and types
# --------------------------------------------------------------------------------------------
def test_missing_columns_are_all_listed(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    result = run_with(sm_job, tiny_panel.drop(columns=["price", "promo", "store_size"]))
    line = assert_rejected(
        result, "Channel 'train' lacks 3 column(s) required by the configuration:"
    )
    listed = line.split("configuration:")[1].split("(it has:")[0]
    assert sorted(c.strip() for c in listed.split(",")) == ["price", "promo", "store_size"]
    assert "(it has: store, product, category, week, sales" in line


def test_missing_date_column_is_listed_with_the_others(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    result = run_with(sm_job, tiny_panel.drop(columns=["week", "price"]))
    line = assert_rejected(result, "Channel 'train' lacks 2 column(s)")
    assert "week" in line and "price" in line


def test_preset_raw_columns_missing(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    """The Stallion preset on data that is not Stallion's: its raw columns are named."""
    result = run_with(sm_job, tiny_panel, preset="stallion")
    line = assert_rejected(result, "Channel 'train' lacks", "required by the 'stallion' preset")
    for column in ("agency", "sku", "date", "volume", "music_fest"):
        assert column in line


def test_many_missing_columns_fit_the_failure_limit(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    names = [f"a_rather_long_column_name_for_a_real_feature_{i:03d}" for i in range(60)]
    result = run_with(sm_job, tiny_panel, static_reals=",".join(["store_size", *names]))
    assert_rejected(result, "Channel 'train' lacks 60 column(s)", names[0])
    assert len(result.failure) <= FAILURE_LIMIT


def test_missing_column_in_the_validation_channel(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    sm_job.write_data(tiny_panel)
    sm_job.write_data(tiny_panel.drop(columns=["discount_pct"]), channel="validation")
    result = sm_job.run(HP)
    assert_rejected(result, "Channel 'validation' lacks 1 column(s)", "discount_pct")


def test_non_numeric_real(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    tiny_panel["price"] = tiny_panel["price"].map(lambda p: f"${p:.2f}")
    assert_rejected(
        run_with(sm_job, tiny_panel), "Channel 'train': column(s) price must be numeric"
    )


def test_non_numeric_target(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    tiny_panel["sales"] = tiny_panel["sales"].astype(str)
    assert_rejected(run_with(sm_job, tiny_panel), "column(s) sales must be numeric")


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_target(sm_job: SageMakerDir, tiny_panel: pd.DataFrame, bad: float) -> None:
    row = series_mask(tiny_panel, "store_001", "product_02") & tiny_panel["week"].eq(
        tiny_panel["week"].min() + pd.Timedelta(weeks=5)
    )
    tiny_panel.loc[row, "sales"] = bad
    tiny_panel.loc[tiny_panel.index[-1], "sales"] = bad
    line = assert_rejected(
        run_with(sm_job, tiny_panel),
        "Channel 'train': target 'sales' has 2 missing or infinite value(s)",
        "store=store_001, product=product_02, time_idx=5",
    )
    assert "store=store_002, product=product_09, time_idx=59" in line


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_real(sm_job: SageMakerDir, tiny_panel: pd.DataFrame, bad: float) -> None:
    tiny_panel.loc[[3, 4, 5], "price"] = bad
    tiny_panel.loc[7, "store_size"] = bad
    line = assert_rejected(
        run_with(sm_job, tiny_panel),
        "missing or infinite values in real column(s):",
        "price (3)",
        "store_size (1)",
        "fill or drop them",
    )
    assert "discount_pct" not in line


def test_missing_categorical_value(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    tiny_panel["holiday"] = tiny_panel["holiday"].astype(object)
    tiny_panel.loc[[3, 40], "holiday"] = None
    assert_rejected(
        run_with(sm_job, tiny_panel), "Channel 'train'", "categorical column(s)", "holiday (2)"
    )


def test_missing_group_id(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    tiny_panel["store"] = tiny_panel["store"].astype(object)
    tiny_panel.loc[3, "store"] = None
    assert_rejected(
        run_with(sm_job, tiny_panel),
        "Channel 'train': 1 row(s) have an empty group id or time (store, product, time_idx)",
    )


def test_missing_date(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    tiny_panel.loc[[3, 4], "week"] = pd.NaT
    assert_rejected(run_with(sm_job, tiny_panel), "Channel 'train': 2 empty date(s) in 'week'")


def test_unparseable_dates(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    tiny_panel["week"] = tiny_panel["week"].dt.strftime("%Y-%m-%d")
    tiny_panel.loc[5, "week"] = "next tuesday"
    line = assert_rejected(
        run_with(sm_job, tiny_panel),
        "Channel 'train': 1 value(s) of 'week' cannot be read as dates, e.g. 'next tuesday'",
        "set date_format to their strftime pattern (e.g. date_format=%d.%m.%Y",
        "dayfirst=true",
    )
    assert "format=" not in line.replace("date_format=", "") and "utc=True" not in line


def test_duplicate_rows(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    frame = pd.concat([tiny_panel, tiny_panel.iloc[[7]]], ignore_index=True)
    assert_rejected(
        run_with(sm_job, frame),
        "Channel 'train': 2 rows share a (group, time) key",
        "store=store_000, product=product_00, time_idx=7",
        "one row per step",
    )


def test_gaps(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    gap = tiny_panel.index[series_mask(tiny_panel, "store_001", "product_03")][10]
    other = tiny_panel.index[series_mask(tiny_panel, "store_002", "product_04")][20]
    line = assert_rejected(
        run_with(sm_job, tiny_panel.drop(index=[gap, other])),
        "Channel 'train': 2 series have gaps in 'time_idx'",
        "store=store_001, product=product_03: time_idx 9 is followed by 11",
        "set allow_missing_timesteps=true",
    )
    assert "fill the missing steps" in line


@pytest.mark.slow
def test_gaps_accepted_with_allow_missing_timesteps(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    sm_job.failure_file.write_text("stale failure of an earlier run\n")
    gap = tiny_panel.index[series_mask(tiny_panel, "store_001", "product_03")][10:13]
    result = run_with(sm_job, tiny_panel.drop(index=gap), allow_missing_timesteps="true")
    assert result.code == 0, result.failure
    assert result.failure is None, "a stale failure file survived a successful run"
    assert "model.ckpt" in result.model_files
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["validation_windows"] == 30


def _shorten(frame: pd.DataFrame, n_series: int, steps: int) -> pd.DataFrame:
    """The first `n_series` series of store_000 keep only their first `steps` weeks."""
    products = [f"product_{p:02d}" for p in range(n_series)]
    short = frame["store"].eq("store_000") & frame["product"].isin(products)
    late = frame["week"] >= frame["week"].min() + pd.Timedelta(weeks=steps)
    return frame[~(short & late)].reset_index(drop=True)


def test_short_series_are_counted(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    line = assert_rejected(
        run_with(sm_job, _shorten(tiny_panel, n_series=3, steps=8)),
        f"Channel 'train': 3 of 30 series are shorter than the {MIN_STEPS} steps one window needs",
        "shortest 8",
        "store=store_000, product=product_00",
        "set drop_short_series=true",
    )
    assert "lower min_encoder_length or max_prediction_length" in line


def test_short_series_with_an_explicit_validation_channel_need_no_holdout(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    """With a validation channel nothing is held out: a train series needs 6 + 1 steps."""
    sm_job.write_data(_shorten(tiny_panel, n_series=2, steps=6))
    horizon = tiny_panel.groupby(["store", "product"], observed=True).tail(4)
    sm_job.write_data(horizon, channel="validation")
    result = sm_job.run(HP)
    assert_rejected(result, "Channel 'train': 2 of 30 series are shorter than the 7 steps")


@pytest.mark.slow
def test_short_series_dropped_with_drop_short_series(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    result = run_with(sm_job, _shorten(tiny_panel, n_series=3, steps=8), drop_short_series="true")
    assert result.code == 0, result.failure
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["validation_windows"] == 27
    assert metrics["validation_points"] == 27 * 4


def test_drop_short_series_still_fails_when_every_series_is_short(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    frame = tiny_panel[tiny_panel["week"] < tiny_panel["week"].min() + pd.Timedelta(weeks=8)]
    result = run_with(sm_job, frame, drop_short_series="true")
    line = assert_rejected(result, "30 of 30 series are shorter", "no series is long enough")
    assert "set drop_short_series=true" not in line


@pytest.mark.parametrize(
    ("shift", "count"),
    [(pd.Timedelta(days=1), 1), (pd.Timedelta(hours=12), 1)],
)
def test_date_off_the_grid(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, shift: pd.Timedelta, count: int
) -> None:
    row = tiny_panel.index[10]
    tiny_panel.loc[row, "week"] = tiny_panel.loc[row, "week"] + shift
    expected_example = str(tiny_panel.loc[row, "week"])
    assert_rejected(
        run_with(sm_job, tiny_panel),
        f"Channel 'train': {count} date(s) are not on the freq='W-MON' grid",
        f"(e.g. {expected_example})",
        "fix freq or the dates",
    )


def test_wrong_freq_for_the_data(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    result = run_with(sm_job, tiny_panel, freq="MS")
    assert_rejected(result, f"{len(tiny_panel) - 30} date(s) are not on the freq='MS' grid")


def test_freq_that_pandas_does_not_know(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    result = run_with(sm_job, tiny_panel, freq="fortnightly")
    assert_rejected(result, "freq='fortnightly' is not a pandas frequency")


def test_time_idx_column_and_date_column_together(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    tiny_panel["time_idx"] = 0
    assert_rejected(
        run_with(sm_job, tiny_panel), "already has a column 'time_idx' and date_column is set"
    )


# --------------------------------------------------------------------------------------------
# Hyperparameters and configuration files
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"max_epochs": "abc"}, ["Hyperparameter max_epochs='abc' is invalid"]),
        ({"max_epochs": "2.5"}, ["max_epochs='2.5' is invalid: expected an integer"]),
        ({"allow_missing_timesteps": "maybe"}, ["expected true or false, got 'maybe'"]),
        ({"group_ids": "['store', "}, ["Hyperparameter group_ids=", "is invalid"]),
        ({"dropout": "1.5"}, ["Hyperparameter dropout=1.5 is above its maximum 0.9"]),
        ({"batch_size": "0"}, ["Hyperparameter batch_size=0 is below its minimum 1"]),
        ({"optimizer": "ranger"}, ["optimizer='ranger' is not one of: adam, adamw, sgd"]),
        ({"max_epoch": "3"}, ["Unknown hyperparameter 'max_epoch'", "Did you mean 'max_epochs'?"]),
        ({"preset": "stalion"}, ["Unknown preset 'stalion'. Available: stallion, synthetic."]),
        ({"hidden_size": "10", "attention_head_size": "3"}, ["must be divisible"]),
        ({"accelerator": "gpu"}, ["accelerator=gpu but this host has no GPU"]),
        ({"config_file": "nope.yaml"}, ["config_file='nope.yaml' was not found", "train"]),
        ({"group_ids": "store,sales"}, ["The target 'sales' is listed in group_ids"]),
    ],
)
def test_bad_hyperparameters(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, extra: dict[str, str], words: list[str]
) -> None:
    if extra.get("accelerator") == "gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this host has a GPU")
    assert_rejected(run_with(sm_job, tiny_panel, **extra), *words)


def test_raw_command_line_errors(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    sm_job.write_data(tiny_panel)
    result = sm_job.run(argv=["--preset", "synthetic", "stray"])
    assert_rejected(result, "Unexpected argument 'stray'")
    result = sm_job.run(argv=["--preset"])
    assert_rejected(result, "Hyperparameter --preset has no value")


def write_config(job: SageMakerDir, name: str, text: str, channel: str = "train") -> Path:
    path = job.channel(channel) / name
    path.write_text(text)
    return path


NOT_A_MAPPING = "Configuration file {path} must hold a mapping of hyperparameters."
UNREADABLE = "Configuration file {path} cannot be read: "


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("tft_config.yaml", "- preset\n- synthetic\n", [NOT_A_MAPPING]),
        ("tft_config.yaml", "synthetic\n", [NOT_A_MAPPING]),
        ("tft_config.json", '["preset"]', [NOT_A_MAPPING]),
        ("tft_config.yaml", "group_ids: [store, product\nmax_epochs: 1\n", [UNREADABLE]),
        ("tft_config.yaml", "preset: synthetic\n\tmax_epochs: 1\n", [UNREADABLE]),
        ("tft_config.json", "{'preset': 'synthetic'}", [UNREADABLE, "double quotes"]),
        (
            "tft_config.yml",
            "preset: synthetic\ndropuot: 0.2\n",
            ["Unknown hyperparameter 'dropuot' (in {path}). Did you mean 'dropout'?"],
        ),
        (
            "tft_config.yaml",
            "preset: synthetic\ndropout: 2\n",
            ["dropout=2.0 is above its maximum"],
        ),
    ],
)
def test_bad_config_file(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, name: str, text: str, words: list[str]
) -> None:
    path = write_config(sm_job, name, text)
    sm_job.write_data(tiny_panel)
    assert_rejected(sm_job.run(TINY), *(word.format(path=path) for word in words))


def test_config_file_named_by_hyperparameter_in_the_config_channel(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    path = write_config(sm_job, "settings.yaml", "[not, a, mapping]\n", channel="config")
    sm_job.write_data(tiny_panel)
    line = assert_rejected(sm_job.run({**TINY, "config_file": "settings.yaml"}))
    assert line == f"Configuration file {path} must hold a mapping of hyperparameters."


# --------------------------------------------------------------------------------------------
# Through SageMaker's training toolkit (the `train` console script), as the container runs it
# --------------------------------------------------------------------------------------------
def _framework_encoded(values: dict[str, str]) -> dict[str, str]:
    """hyperparameters.json as a framework estimator writes it: every value JSON-encoded."""
    out = {}
    for key, value in values.items():
        try:
            out[key] = json.dumps(json.loads(value))
        except ValueError:
            out[key] = json.dumps(value)
    return out


@pytest.mark.slow
def test_toolkit_keeps_our_failure_file(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    sm_job.write_data(tiny_panel.drop(columns=["price", "promo"]))
    result, process = sm_job.run_toolkit(_framework_encoded(HP))
    log = process.stdout + process.stderr
    assert result.code != 0, log[-3000:]
    assert result.failure is not None
    line = result.failure_line
    assert line.startswith("Channel 'train' lacks 2 column(s) required by the configuration:"), line
    assert "ExecuteUserScriptError" not in result.failure
    assert len(result.failure) <= FAILURE_LIMIT
    assert not (sm_job.output_dir / "success").exists()
    assert result.model_files == []


@pytest.mark.slow
def test_toolkit_successful_run(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    """Framework-estimator encodings end to end, including a dict (variable_groups) that the
    toolkit decodes and passes as `calendar=['holiday', 'month']`."""
    sm_job.write_data(tiny_panel)
    hyperparameters = _framework_encoded(
        {
            **HP,
            "time_varying_known_categoricals": '["promo", "calendar"]',
            "variable_groups": '{"calendar": ["holiday", "month"]}',
            "allow_missing_timesteps": "false",
            "target_transformation": "null",
        }
    )
    hyperparameters["sagemaker_program"] = '"train.py"'
    result, process = sm_job.run_toolkit(hyperparameters)
    log = process.stdout + process.stderr
    assert result.code == 0, (result.failure, log[-3000:])
    assert (sm_job.output_dir / "success").exists()
    assert result.failure is None
    assert {"model.ckpt", "dataset_parameters.pt", "config.json", "metrics.json"} <= set(
        result.model_files
    )
    saved = json.loads((sm_job.model_dir / "config.json").read_text())["config"]
    assert saved["data"]["variable_groups"] == {"calendar": ["holiday", "month"]}
    assert saved["data"]["target_transformation"] is None
    assert saved["training"]["max_epochs"] == 1
    assert "[metrics] final_val_MAE=" in log


# --------------------------------------------------------------------------------------------
# Order of the checks, one-letter and empty hyperparameter keys
# --------------------------------------------------------------------------------------------
def test_empty_train_channel_is_reported_before_the_configuration(sm_job: SageMakerDir) -> None:
    """An empty train channel, and no hyperparameters at all."""
    sm_job.channel("train")
    assert_rejected(sm_job.run({}), "Channel 'train' has no data files")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["-d", "1"], ["Unknown hyperparameter 'd'", "Did you mean one of: date_column,"]),
        (["-x", "1"], ["Unknown hyperparameter 'x'", "`python train.py --help` lists"]),
        (["", "1"], ["A hyperparameter has an empty name (its value is '1')"]),
    ],
    ids=["one-letter-d", "one-letter-x", "empty-key"],
)
def test_keys_the_toolkit_passes_oddly(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, argv: list[str], words: list[str]
) -> None:
    """A one-letter key reaches the script as `-k value`, an empty one as ''."""
    sm_job.write_data(tiny_panel)
    assert_rejected(sm_job.run(argv=["--preset", "synthetic", *argv]), *words)


# --------------------------------------------------------------------------------------------
# Dates, frequencies and the time index
# --------------------------------------------------------------------------------------------
def test_integers_that_are_not_dates(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    """A date column of week numbers 0, 1, 2, ... (not YYYYMMDD, YYYYMM or years)."""
    tiny_panel["week"] = (tiny_panel["week"] - tiny_panel["week"].min()).dt.days // 7
    line = assert_rejected(
        run_with(sm_job, tiny_panel),
        "Channel 'train': column 'week' holds numbers that are not dates (e.g. 0)",
        "20230131 (YYYYMMDD), 202301 (YYYYMM) or 2023 (years)",
        "set time_idx=week and leave date_column and freq unset",
    )
    assert "1970" not in line


def test_dates_that_do_not_match_date_format(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    tiny_panel["week"] = tiny_panel["week"].dt.strftime("%Y-%m-%d")
    result = run_with(sm_job, tiny_panel, date_format="%d.%m.%Y")
    assert_rejected(
        result,
        f"Channel 'train': {len(tiny_panel)} value(s) of 'week' do not match "
        "date_format='%d.%m.%Y', e.g. '2022-01-03'",
        "fix date_format (strftime codes",
    )


@pytest.mark.parametrize("allow_missing", ["false", "true"])
def test_freq_finer_than_the_data(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, allow_missing: str
) -> None:
    """Weekly dates with freq=D: every step would be a gap (allow_missing_timesteps or not)."""
    result = run_with(sm_job, tiny_panel, freq="D", allow_missing_timesteps=allow_missing)
    assert_rejected(
        result,
        "Channel 'train': consecutive dates in 'week' are always a multiple of 7 steps of "
        "freq='D' apart",
        "looks like freq='W-MON'; set freq=W-MON",
    )


def test_freq_far_finer_than_the_data(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    """Weekly dates with freq=s: a grid of 36 million seconds is not even built."""
    result = run_with(sm_job, tiny_panel, freq="s")
    assert_rejected(result, "are not on the freq='s' grid", "looks like freq='W-MON'")


def test_wrong_freq_names_the_frequency_of_the_data(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    result = run_with(sm_job, tiny_panel, freq="W-SUN")
    assert_rejected(
        result,
        f"{len(tiny_panel)} date(s) are not on the freq='W-SUN' grid",
        "the data looks like freq='W-MON': set freq=W-MON",
    )


def _integer_time_index(frame: pd.DataFrame) -> pd.DataFrame:
    weeks = (frame["week"] - frame["week"].min()).dt.days // 7
    return frame.drop(columns=["week"]).assign(t=weeks)


INTEGER_TIME = {
    "date_column": "none",
    "freq": "none",
    "time_idx": "t",
    "time_varying_known_reals": "t,price,discount_pct",
}


def test_time_index_that_is_not_whole(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    frame = _integer_time_index(tiny_panel).astype({"t": float})
    frame.loc[7, "t"] += 0.5
    result = run_with(sm_job, frame, **INTEGER_TIME)
    assert_rejected(
        result, "Channel 'train': time index 't' must hold whole numbers (1 do not, e.g. 7.5)"
    )


def test_time_index_in_steps_of_seven(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    """Day numbers of weekly data as the time index: 0, 7, 14, ..."""
    frame = _integer_time_index(tiny_panel)
    frame["t"] *= 7
    result = run_with(sm_job, frame, **INTEGER_TIME, allow_missing_timesteps="true")
    assert_rejected(
        result,
        "Channel 'train': every step of 't' is a multiple of 7 (e.g. 0 is followed by 7)",
        "divide t by 7",
    )


def test_time_index_of_dates(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    """Dates given as the time index, without date_column."""
    frame = tiny_panel.rename(columns={"week": "t"})
    assert_rejected(
        run_with(sm_job, frame, **INTEGER_TIME),
        "column(s) t must be numeric",
        "'t' holds dates, set date_column=t and freq instead",
    )


# --------------------------------------------------------------------------------------------
# Values: statics, the target's range
# --------------------------------------------------------------------------------------------
def test_static_columns_that_change_within_a_series(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    one = series_mask(tiny_panel, "store_001", "product_02")
    tiny_panel.loc[one & tiny_panel["week"].gt("2022-06-01"), "store_size"] = 9.5
    tiny_panel["category"] = tiny_panel["category"].astype(str)
    other = series_mask(tiny_panel, "store_002", "product_00")
    tiny_panel.loc[other & tiny_panel["week"].gt("2022-03-01"), "category"] = "toys"
    line = assert_rejected(
        run_with(sm_job, tiny_panel),
        "Channel 'train': static column(s) change within a series:",
        "category (1 series, e.g. store=store_002, product=product_00: ",
        "store_size (1 series, e.g. store=store_001, product=product_02: ",
        "or list them as time_varying_known_reals / time_varying_known_categoricals",
    )
    assert "and 9.5" in line and "and toys" in line


@pytest.mark.parametrize(
    ("transformation", "change", "words"),
    [
        ("log", {"first": 0.0}, ["needs values > 0 (1 are not", "fit this data: none, softplus"]),
        ("softplus", {"first": -0.5}, ["ranges from -0.5 to", "needs values ≥ 0", "none, log1p."]),
        ("log1p", {"first": -1.0}, ["needs values > -1", "transformations that fit: none."]),
        ("logit", {}, ["needs values strictly between 0 and 1", "none, softplus, relu, log,"]),
    ],
)
def test_target_out_of_the_transformations_range(
    sm_job: SageMakerDir,
    tiny_panel: pd.DataFrame,
    transformation: str,
    change: dict[str, float],
    words: list[str],
) -> None:
    if "first" in change:
        tiny_panel.loc[0, "sales"] = change["first"]
    words = [w.replace("fit: none", "fit this data: none") for w in words]
    result = run_with(sm_job, tiny_panel, target_transformation=transformation)
    line = assert_rejected(
        result,
        "Channel 'train': target 'sales' ranges from",
        f"but target_transformation={transformation} needs values",
        *words,
    )
    if change:
        assert "e.g. at store=store_000, product=product_00, time_idx=0" in line


# --------------------------------------------------------------------------------------------
# An explicit validation channel
# --------------------------------------------------------------------------------------------
def _horizon(frame: pd.DataFrame, steps: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, the last `steps` rows) of every series."""
    ordered = frame.sort_values(["store", "product", "week"])
    last = ordered.groupby(["store", "product"], observed=True).cumcount(ascending=False)
    return ordered[last >= steps], ordered[last < steps]


def test_validation_channel_repeating_the_training_data(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    """The whole data in both channels: the validated weeks would be trained on."""
    sm_job.write_data(tiny_panel)
    sm_job.write_data(tiny_panel, channel="validation")
    assert_rejected(
        sm_job.run(HP),
        "Channel 'validation': 30 of 30 series end fewer than max_prediction_length=4 steps "
        "after their last row in 'train' (e.g. store=store_000, product=product_00: train ends "
        "at 2023-02-20, validation at 2023-02-20)",
        "leave each validated series' last 4 steps out of 'train'",
    )


def test_validation_channel_shorter_than_the_horizon(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    """Train without its last 3 weeks, and those 3 in validation, for a horizon of 4."""
    history, horizon = _horizon(tiny_panel, 3)
    sm_job.write_data(history)
    sm_job.write_data(horizon, channel="validation")
    assert_rejected(
        sm_job.run(HP),
        "Channel 'validation': 30 of 30 series end fewer than max_prediction_length=4 steps",
        "train ends at 2023-01-30, validation at 2023-02-20",
    )


def test_new_series_in_validation_with_per_series_scaling(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    """Whole series in validation that train does not have, with target_normalizer=group."""
    new = tiny_panel["store"].eq("store_002")
    sm_job.write_data(tiny_panel[~new])
    sm_job.write_data(tiny_panel[new], channel="validation")
    assert_rejected(
        sm_job.run({**HP, "target_normalizer": "group"}),
        "Channel 'validation': 10 series are not in 'train' (e.g. store=store_002, "
        "product=product_00; store=store_002, product=product_01;",
        "target_normalizer=group scales each series by its own training history",
        "add their history to the train channel, or set target_normalizer=encoder",
    )


def test_values_beyond_float32(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    tiny_panel.loc[[3, 4], "price"] = 1e39
    assert_rejected(
        run_with(sm_job, tiny_panel),
        "Channel 'train': values beyond float32's range (±3.4e+38), which the model computes "
        "in, in column(s): price (2); rescale them",
    )


def test_per_window_scaling_needs_two_steps_of_history(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    result = run_with(sm_job, tiny_panel, target_normalizer="encoder", min_encoder_length="1")
    assert_rejected(
        result,
        "target_normalizer=encoder scales each window by its history: it needs "
        "min_encoder_length >= 2 (it is 1).",
    )


def test_validation_channel_before_the_training_data(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    """Validation holding the first weeks of each series, train the later ones."""
    early = tiny_panel["week"] < tiny_panel["week"].min() + pd.Timedelta(weeks=12)
    sm_job.write_data(tiny_panel[~early])
    sm_job.write_data(tiny_panel[early], channel="validation")
    assert_rejected(
        sm_job.run(HP),
        "Channel 'validation': 30 of 30 series end fewer than max_prediction_length=4 steps",
        "train ends at 2023-02-20, validation at 2022-03-21",
    )


def test_yearly_dates_with_a_daily_freq(sm_job: SageMakerDir, tiny_panel: pd.DataFrame) -> None:
    """Years as integers (1990, 1991, ...) with freq=D."""
    tiny_panel["week"] = 1990 + (tiny_panel["week"] - tiny_panel["week"].min()).dt.days // 7
    assert_rejected(
        run_with(sm_job, tiny_panel, freq="D"),
        "30 series have gaps in 'time_idx', e.g. store=store_000, product=product_00: time_idx "
        "0 is followed by 365; the dates look like freq='YS-JAN', not 'D': set freq=YS-JAN.",
    )


def test_is_sorted_orders_as_sort_values():
    """`is_sorted` says whether sort_values(keys) would change the order: categories by their
    order (not their text), ties broken by the next key, text left to sort_values."""
    from tft_sagemaker.validation import is_sorted

    frame = pd.DataFrame(
        {
            "g": pd.Categorical(["b", "b", "a"], categories=["b", "a"]),
            "t": [1, 2, 0],
            "text": ["x", "y", "z"],
        }
    )
    assert is_sorted(frame, ["g", "t"])
    assert not is_sorted(frame, ["t"])
    assert not is_sorted(frame.iloc[[1, 0, 2]], ["g", "t"])
    assert is_sorted(frame.assign(t=[2, 2, 0]), ["g", "t"])  # ties stay as they are
    assert not is_sorted(frame, ["text"])  # not compared here: sort_values orders it
    for keys in (["g", "t"], ["t"], ["g"]):
        shuffled = frame.sample(frac=1, random_state=1)
        expected = shuffled.sort_values(keys, kind="stable").index.equals(shuffled.index)
        assert is_sorted(shuffled, keys) == expected
