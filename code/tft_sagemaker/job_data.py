"""The job's channels → `JobData`: the training frame and the validated windows' frame.

Reads, prepares and validates the `train` channel (and `validation`, if given); without a
validation channel, each series' last `max_prediction_length` steps are held out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .channels import read_channel, undeclared_channel_dirs
from .config import DataConfig, unique
from .errors import DataError
from .preparation import as_labels, prepare_frame, prepare_training_frame
from .sagemaker.paths import JobPaths
from .shares import Hosts
from .time_axis import TimeAxis
from .validation import min_series_length, validate_frame

log = logging.getLogger(__name__)


def split_holdout(frame: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """Training rows when no validation channel is given: each series minus its last
    `max_prediction_length` steps (which the validation windows then forecast)."""
    last = frame.groupby(config.group_ids, observed=True)[config.time_idx].transform("max")
    return frame[frame[config.time_idx] <= last - config.max_prediction_length]


# Series whose backtest windows choose the combination's weights and early-stop the TFT: a fixed
# sample above it. At 5 million rows (50,000 series) forecasting all of them took 105 s after
# training and as long in each epoch's validation; a few members' weights need far fewer.
BACKTEST_MAX_SERIES = 10_000


@dataclass(frozen=True)
class Backtest:
    """The training rows split for the combination (ensemble=true), as masks over them (each
    frame is made when its dataset is built, and let go after): the TFT trains on the `fit`
    rows; the `windows` rows are the series whose last `max_prediction_length` training steps
    are the backtest window (series too short to give one keep every row in `fit` and have no
    window), at most BACKTEST_MAX_SERIES of the `series` that have one."""

    fit: np.ndarray
    windows: np.ndarray
    series: int


def carve_backtest(
    train: pd.DataFrame, config: DataConfig, max_series: int = BACKTEST_MAX_SERIES
) -> Backtest | None:
    """Each series' last `max_prediction_length` training steps as its backtest window, where
    the steps before still hold a training window; None when no series is that long. Every such
    series leaves those steps out of `fit`; the windows are those of at most `max_series` of
    them (a random sample fixed by the data alone: the host panel holds it, whatever the seed)."""
    steps = train.groupby(config.group_ids, observed=True)[config.time_idx]
    first, last = steps.transform("min"), steps.transform("max")
    span = config.resolved_min_encoder_length + config.min_prediction_length
    long_enough = (last - first + 1 >= span + config.max_prediction_length).to_numpy()
    if not long_enough.any():
        return None
    held_out = long_enough & (train[config.time_idx] > last - config.max_prediction_length)
    windows = long_enough
    series = steps.ngroup()
    eligible = np.unique(series[long_enough])
    if len(eligible) > max_series:
        chosen = np.random.default_rng(0).choice(eligible, max_series, replace=False)
        windows = long_enough & series.isin(chosen).to_numpy()
    return Backtest(fit=~held_out.to_numpy(), windows=windows, series=len(eligible))


def merge_validation(
    train: pd.DataFrame, validation: pd.DataFrame, config: DataConfig
) -> pd.DataFrame:
    """History + validation rows for the series in the validation channel. Validation rows win
    where both have a (group, time) key, so the channel may hold the horizon alone or whole
    series."""
    keys = [*config.group_ids, config.time_idx]
    in_validation = train.set_index(config.group_ids).index.isin(
        validation.set_index(config.group_ids).index.unique()
    )
    merged = pd.concat([train[in_validation], validation], ignore_index=True)
    merged = merged.drop_duplicates(subset=keys, keep="last")
    for column in unique([*config.group_ids, *config.categoricals]):
        merged[column] = as_labels(merged[column])  # the channels' categories differ
    return merged.sort_values(keys, kind="stable").reset_index(drop=True)


def _series_ends(frame: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """Each series' last step (and date), one row per series, ids as text."""
    columns = {"end": (config.time_idx, "max")}
    if config.date_column:
        columns["date"] = (config.date_column, "max")
    ends = frame.groupby(config.group_ids, observed=True).agg(**columns).reset_index()
    return ends.astype({g: str for g in config.group_ids})


def check_validation_horizon(
    train: pd.DataFrame, validation: pd.DataFrame, config: DataConfig
) -> None:
    """A series in both channels is validated on the `max_prediction_length` steps after its
    training rows, never on training rows (the validation channel may repeat history)."""
    horizon, groups = config.max_prediction_length, config.group_ids
    both = _series_ends(train, config).merge(
        _series_ends(validation, config), on=groups, suffixes=("_train", "_validation")
    )
    short = both[both["end_validation"] - both["end_train"] < horizon]
    if short.empty:
        return
    first = short.iloc[0].map(
        lambda v: v.date() if isinstance(v, pd.Timestamp) and v == v.normalize() else v
    )
    ends = "date" if config.date_column else "end"
    raise DataError(
        f"Channel 'validation': {len(short)} of {len(both)} series end fewer than "
        f"max_prediction_length={horizon} steps after their last row in 'train' (e.g. "
        f"{', '.join(f'{g}={first[g]}' for g in groups)}: train ends at {first[ends + '_train']}, "
        f"validation at {first[ends + '_validation']}), so training rows would be validated: "
        f"leave each validated series' last {horizon} steps out of 'train' (validation may "
        f"repeat its history), or give validation {horizon} steps beyond train."
    )


@dataclass(frozen=True)
class JobData:
    train: pd.DataFrame  # rows the model is fitted on
    validation: pd.DataFrame  # series whose last max_prediction_length steps are validated
    time_axis: TimeAxis | None
    dropped: pd.DataFrame | None = None  # series left out (drop_short_series): ids, reason
    # report.data_summary of the data read, kept once the training rows are let go (job.py)
    summary: dict[str, Any] | None = None


def _dropped_series(
    before: pd.DataFrame, after: pd.DataFrame, config: DataConfig, reason: str
) -> pd.DataFrame:
    """The series of `before` that validation left out of `after`, each with `reason`."""
    series = before[config.group_ids].drop_duplicates()
    kept = after[config.group_ids].drop_duplicates().assign(_kept=True)
    gone = series.merge(kept, on=config.group_ids, how="left")["_kept"].isna().to_numpy()
    return series[gone].assign(reason=reason).reset_index(drop=True)


def load_job_data(paths: JobPaths, config: DataConfig, hosts: Hosts | None = None) -> JobData:
    """Read, prepare and validate this host's share of the channels (`hosts`; all of them on
    one host); hold out a validation horizon if needed."""
    hosts = hosts or Hosts()
    for directory in undeclared_channel_dirs(paths):
        log.warning(
            "input/data/%s is not a channel of this job (channels: %s): its files are not "
            "read; declare it (inputs={'%s': ...}, inputdataconfig.json) to use it",
            directory.name,
            ", ".join(sorted(paths.channels)) or "none",
            directory.name,
        )
    raw = hosts.train_rows(read_channel(paths, "train", required=True), config)
    prepared, time_axis = prepare_training_frame(raw, config, agree=hosts.time_axis)
    del raw
    raw_validation = read_channel(paths, "validation", required=False)
    holdout = raw_validation is None
    length = min_series_length(config, holdout=holdout)
    train = validate_frame(prepared, config, "train", length)
    dropped = [_dropped_series(prepared, train, config, f"train: shorter than {length} steps")]
    if holdout:
        return JobData(split_holdout(train, config), train, time_axis, pd.concat(dropped))
    validation = prepare_frame(raw_validation, config, "validation", time_axis)
    validation = hosts.validation_rows(validation, train, config)
    validation = validate_frame(validation, config, "validation", min_length=1)
    check_validation_horizon(train, validation, config)
    merged = merge_validation(train, validation, config)
    length = config.resolved_min_encoder_length + config.max_prediction_length
    checked = validate_frame(merged, config, "validation (with its history from train)", length)
    reason = f"validation: history and horizon shorter than {length} steps"
    dropped.append(_dropped_series(merged, checked, config, reason))
    return JobData(train, checked, time_axis, pd.concat(dropped, ignore_index=True))


def kept_columns(config: DataConfig) -> list[str]:
    """The columns of JobData's frames that the job reads once its datasets are built: the
    series, the time and the target (the baselines, the combination, the report's plots and
    summary); the datasets hold the rest."""
    dates = [config.date_column] if config.date_column else []
    return unique([*config.group_ids, config.time_idx, config.target, *dates])


def lean(
    data: JobData, config: DataConfig, frames: Sequence[str] = ("train", "validation")
) -> JobData:
    """`data` with only `kept_columns` in these frames (a panel's covariates are most of its
    frames' bytes)."""
    columns = kept_columns(config)
    return dataclasses.replace(data, **{name: getattr(data, name)[columns] for name in frames})


def describe_frame(frame: pd.DataFrame, config: DataConfig) -> Mapping[str, int]:
    """Size figures for the log."""
    return {
        "rows": len(frame),
        "series": int(frame[config.group_ids].drop_duplicates().shape[0]),
        "steps": int(frame[config.time_idx].nunique()),
    }
