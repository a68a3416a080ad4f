"""Channels → validated data frames.

Reads every parquet/CSV file of a channel, applies a preset's feature engineering, derives the
integer time index from a date column, and checks everything pytorch-forecasting would
otherwise reject later (or, worse, accept silently). Each problem becomes one `DataError` whose
message names the channel, the columns and an example, before any expensive work starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .config import DataConfig
from .errors import ConfigError, DataError
from .paths import JobPaths
from .presets import PRESETS

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")
CONFIG_FILE_NAMES = ("tft_config.json", "tft_config.yaml", "tft_config.yml")
CONFIG_CHANNELS = ("config", "train")
_EXAMPLES = 3


# --------------------------------------------------------------------------------------------
# Configuration file
# --------------------------------------------------------------------------------------------
def find_config_file(paths: JobPaths, name: str | None) -> Path | None:
    """The configuration file named by `config_file`, or a tft_config.* found in a channel."""
    if name:
        candidate = Path(name)
        if candidate.is_absolute():
            if candidate.is_file():
                return candidate
        else:
            for channel in paths.channels.values():
                if (channel / candidate).is_file():
                    return channel / candidate
        raise ConfigError(
            f"config_file={name!r} was not found (looked in channels: "
            f"{', '.join(sorted(paths.channels)) or 'none'})."
        )
    for channel in CONFIG_CHANNELS:
        directory = paths.channels.get(channel)
        for file_name in CONFIG_FILE_NAMES:
            if directory is not None and (directory / file_name).is_file():
                return directory / file_name
    return None


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"Configuration file {path} cannot be read: {err}".strip()) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"Configuration file {path} must hold a mapping of hyperparameters.")
    return values


# --------------------------------------------------------------------------------------------
# Reading channels
# --------------------------------------------------------------------------------------------
def channel_files(directory: Path) -> list[Path]:
    """Data files of a channel, recursively, in a stable order (hidden and _* files skipped)."""
    files = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith((".", "_")) for part in relative.parts) or not path.is_file():
            continue
        if path.name.lower().endswith(DATA_SUFFIXES) and path.name not in CONFIG_FILE_NAMES:
            files.append(path)
    return files


def _read_file(path: Path) -> pd.DataFrame:
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as err:  # pyarrow and pandas raise many types for a corrupt file
        reason = " ".join(str(err).split())[:200]
        raise DataError(f"Cannot read data file {path}: {type(err).__name__}: {reason}") from None


def read_files(files: list[Path], label: str) -> pd.DataFrame:
    """Data files with the same columns → one frame (`label` names them in errors)."""
    frames = [_read_file(path) for path in files]
    columns = set(frames[0].columns)
    for path, frame in zip(files[1:], frames[1:], strict=True):
        if set(frame.columns) != columns:
            missing = sorted(columns - set(frame.columns))
            extra = sorted(set(frame.columns) - columns)
            raise DataError(
                f"Data file {path} does not match {files[0].name} in {label}: "
                f"missing columns {missing}, extra columns {extra}."
            )
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if frame.empty:
        raise DataError(f"{label.capitalize()} has no rows ({len(files)} file(s)).")
    log.info("%s: %d rows from %d file(s)", label, len(frame), len(files))
    return frame


def channel_dir(paths: JobPaths, name: str, required: bool) -> Path | None:
    """The channel's directory (None for a missing optional channel)."""
    directory = paths.channels.get(name)
    if directory is None or not directory.is_dir():
        if required:
            available = ", ".join(sorted(n for n, d in paths.channels.items() if d.is_dir()))
            available = available or "none"
            raise DataError(
                f"Channel '{name}' is missing (channels given: {available}): pass it as "
                f"inputs={{'{name}': 's3://...'}} or put files in input/data/{name}/."
            )
        return None
    return directory


def read_channel(paths: JobPaths, name: str, required: bool) -> pd.DataFrame | None:
    """All data files of channel `name` as one frame (None for a missing optional channel)."""
    directory = channel_dir(paths, name, required)
    if directory is None:
        return None
    files = channel_files(directory)
    if not files:
        raise DataError(
            f"Channel '{name}' has no data files (.parquet, .pq, .csv, .csv.gz) in {directory}."
        )
    return read_files(files, f"channel '{name}'")


# --------------------------------------------------------------------------------------------
# Preparing: preset features, time index, dtypes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeAxis:
    """How dates map to the integer time index; stored with the model for prediction."""

    freq: str
    origin: str  # ISO date of time_idx == 0

    def to_time_idx(self, dates: pd.Series, channel: str) -> np.ndarray:
        dates = pd.to_datetime(dates)
        origin = pd.Timestamp(self.origin, tz=dates.dt.tz)
        try:
            grid = pd.date_range(min(origin, dates.min()), dates.max(), freq=self.freq)
        except ValueError as err:
            raise ConfigError(
                f"freq={self.freq!r} is not a pandas frequency (e.g. 'D', 'W-MON', 'MS', 'h')."
            ) from err
        positions = grid.get_indexer(dates)
        off_grid = positions < 0
        if off_grid.any() or origin not in grid:
            example = dates[off_grid].iloc[0] if off_grid.any() else origin
            raise DataError(
                f"Channel '{channel}': {int(off_grid.sum())} date(s) are not on the "
                f"freq={self.freq!r} grid (e.g. {example}); fix freq or the dates."
            )
        return positions - grid.get_loc(origin)


def time_axis_for(frame: pd.DataFrame, config: DataConfig, channel: str) -> TimeAxis | None:
    """The time axis of a training frame (origin = its first date), or None without dates."""
    if not config.date_column or config.date_column not in frame.columns:
        return None  # a missing date column is reported by prepare_frame, with the others
    try:
        dates = pd.to_datetime(frame[config.date_column])
    except (ValueError, TypeError) as err:
        raise DataError(
            f"Channel '{channel}': column '{config.date_column}' is not a date: {err}"
        ) from None
    if dates.isna().any():
        raise DataError(
            f"Channel '{channel}': {int(dates.isna().sum())} empty date(s) in "
            f"'{config.date_column}'."
        )
    first = dates.min()
    return TimeAxis(freq=config.freq or "", origin=first.tz_localize(None).isoformat())


def prepare_frame(
    frame: pd.DataFrame, config: DataConfig, channel: str, time_axis: TimeAxis | None
) -> pd.DataFrame:
    """Preset features, time index from dates, categorical dtypes; raises on missing columns."""
    preset = PRESETS.get(config.preset) if config.preset else None
    if preset is not None and preset.prepare is not None:
        _require_columns(frame, preset.raw_columns, channel, f"the '{preset.name}' preset")
        frame = preset.prepare(frame)
    _require_columns(frame, config.required_columns, channel, "the configuration")
    frame = frame.copy()
    if config.date_column:
        assert time_axis is not None
        if config.time_idx in frame.columns and config.time_idx != config.date_column:
            raise DataError(
                f"Channel '{channel}' already has a column '{config.time_idx}' and date_column "
                f"is set: drop one, or name another time_idx column."
            )
        frame[config.date_column] = pd.to_datetime(frame[config.date_column])
        frame[config.time_idx] = time_axis.to_time_idx(frame[config.date_column], channel)
    _check_dtypes(frame, config, channel)
    for column in config.categoricals:
        values = frame[column]
        # Categories as text, missing values kept missing for validation to find (pandas 2,
        # the DLC's, turns None into the text "None").
        frame[column] = values.astype(str).where(values.notna()).astype("category")
    return frame


def _require_columns(frame: pd.DataFrame, columns: list[str], channel: str, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"Channel '{channel}' lacks {len(missing)} column(s) required by {what}: "
            f"{', '.join(missing)} (it has: {', '.join(map(str, frame.columns[:30]))})."
        )


def _check_dtypes(frame: pd.DataFrame, config: DataConfig, channel: str) -> None:
    numeric_cats = [
        c
        for c in config.categoricals
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    if numeric_cats:
        raise DataError(
            f"Channel '{channel}': categorical column(s) {', '.join(numeric_cats)} hold numbers; "
            "store them as strings (e.g. month '1'..'12') or list them as reals instead."
        )
    non_numeric = [
        c
        for c in _unique([config.target, config.time_idx, *config.reals, config.weight])
        if c and not pd.api.types.is_numeric_dtype(frame[c])
    ]
    if non_numeric:
        raise DataError(
            f"Channel '{channel}': column(s) {', '.join(non_numeric)} must be numeric "
            "(target, time index, weight and reals)."
        )


def _unique(items: list[str | None]) -> list[str]:
    return [c for c in dict.fromkeys(items) if c]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _series_examples(frame: pd.DataFrame, mask: pd.Series | np.ndarray, columns: list[str]) -> str:
    rows = frame.loc[mask, columns].drop_duplicates().head(_EXAMPLES)
    return "; ".join(
        ", ".join(f"{k}={v}" for k, v in row.items()) for row in rows.to_dict(orient="records")
    )


def _reject_counts(counts: Mapping[str, int], problem: str, fix: str) -> None:
    """A DataError listing every column with a non-zero count: `problem: a (3), b (1); fix`."""
    listed = ", ".join(f"{c} ({n})" for c, n in counts.items() if n)
    if listed:
        raise DataError(f"{problem}: {listed}; {fix}")


def min_series_length(config: DataConfig, holdout: bool) -> int:
    """Steps a series needs for one training window (and the held-out window, if holding out)."""
    train = config.resolved_min_encoder_length + config.min_prediction_length
    return train + config.max_prediction_length if holdout else train


def validate_frame(
    frame: pd.DataFrame, config: DataConfig, channel: str, min_length: int
) -> pd.DataFrame:
    """Check a prepared frame; returns it (short series dropped only if drop_short_series)."""
    groups, time = config.group_ids, config.time_idx
    keys = [*groups, time]
    empty_keys = frame[keys].isna().any(axis=1)
    if empty_keys.any():
        raise DataError(
            f"Channel '{channel}': {int(empty_keys.sum())} row(s) have an empty group id or "
            f"time ({', '.join(keys)})."
        )
    target = frame[config.target].to_numpy(dtype=float, na_value=np.nan)
    bad_target = ~np.isfinite(target)
    if bad_target.any():
        raise DataError(
            f"Channel '{channel}': target '{config.target}' has {int(bad_target.sum())} missing "
            f"or infinite value(s), e.g. at {_series_examples(frame, bad_target, keys)}."
        )
    reals = [c for c in _unique([*config.reals, config.weight]) if c not in (config.target, time)]
    _reject_counts(
        {
            c: int((~np.isfinite(frame[c].to_numpy(dtype=float, na_value=np.nan))).sum())
            for c in reals
        },
        f"Channel '{channel}': missing or infinite values in real column(s)",
        "fill or drop them.",
    )
    _reject_counts(
        {c: int(frame[c].isna().sum()) for c in config.categoricals},
        f"Channel '{channel}': missing values in categorical column(s)",
        "fill them (e.g. with '-' or 'unknown').",
    )
    duplicated = frame.duplicated(subset=keys, keep=False)
    if duplicated.any():
        raise DataError(
            f"Channel '{channel}': {int(duplicated.sum())} rows share a (group, time) key, e.g. "
            f"{_series_examples(frame, duplicated, keys)}; each series needs one row per step."
        )

    ordered = frame.sort_values(keys, kind="stable")
    by_series = ordered.groupby(groups, observed=True, sort=False)[time]
    steps = by_series.diff()
    if not config.allow_missing_timesteps:
        gaps = steps.gt(1)
        if gaps.any():
            n_series = ordered.loc[gaps, groups].drop_duplicates().shape[0]
            first = ordered.loc[gaps].iloc[0]
            where = ", ".join(f"{g}={first[g]}" for g in groups)
            raise DataError(
                f"Channel '{channel}': {n_series} series have gaps in '{time}', e.g. {where}: "
                f"{time} {int(first[time] - steps[gaps].iloc[0])} is followed by "
                f"{int(first[time])}; fill the missing steps or set allow_missing_timesteps=true."
            )
    span = by_series.transform("max") - by_series.transform("min") + 1
    short = span < min_length
    if short.any():
        n_short = ordered.loc[short, groups].drop_duplicates().shape[0]
        n_total = ordered[groups].drop_duplicates().shape[0]
        message = (
            f"Channel '{channel}': {n_short} of {n_total} series are shorter than the "
            f"{min_length} steps one window needs (min_encoder_length + prediction lengths), "
            f"shortest {int(span.min())}, e.g. {_series_examples(ordered, short, groups)}"
        )
        if n_short == n_total:
            raise DataError(
                message + "; no series is long enough: lower min_encoder_length or "
                "max_prediction_length, or provide longer history."
            )
        if not config.drop_short_series:
            raise DataError(
                message + "; drop them from the data, lower min_encoder_length or "
                "max_prediction_length, or set drop_short_series=true."
            )
        log.warning("%s: dropping them (drop_short_series=true)", message)
        ordered = ordered.loc[~short]
    return ordered.reset_index(drop=True)


def split_holdout(frame: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """Training rows when no validation channel is given: each series minus its last
    `max_prediction_length` steps (which the validation windows then forecast)."""
    last = frame.groupby(config.group_ids, observed=True)[config.time_idx].transform("max")
    return frame[frame[config.time_idx] <= last - config.max_prediction_length]


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
    for column in config.categoricals:
        merged[column] = merged[column].astype(str).astype("category")
    return merged.sort_values(keys, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class JobData:
    train: pd.DataFrame  # rows the model is fitted on
    validation: pd.DataFrame  # series whose last max_prediction_length steps are validated
    time_axis: TimeAxis | None


def load_job_data(paths: JobPaths, config: DataConfig) -> JobData:
    """Read, prepare and validate the channels; hold out a validation horizon if needed."""
    raw_train = read_channel(paths, "train", required=True)
    time_axis = time_axis_for(raw_train, config, "train")
    train = prepare_frame(raw_train, config, "train", time_axis)
    raw_validation = read_channel(paths, "validation", required=False)
    if raw_validation is None:
        train = validate_frame(train, config, "train", min_series_length(config, holdout=True))
        return JobData(split_holdout(train, config), train, time_axis)
    train = validate_frame(train, config, "train", min_series_length(config, holdout=False))
    validation = prepare_frame(raw_validation, config, "validation", time_axis)
    validation = validate_frame(validation, config, "validation", min_length=1)
    merged = merge_validation(train, validation, config)
    merged = validate_frame(
        merged,
        config,
        "validation (with its history from train)",
        config.resolved_min_encoder_length + config.min_prediction_length,
    )
    return JobData(train, merged, time_axis)


def describe_frame(frame: pd.DataFrame, config: DataConfig) -> Mapping[str, int]:
    """Size figures for the log."""
    return {
        "rows": len(frame),
        "series": int(frame[config.group_ids].drop_duplicates().shape[0]),
        "steps": int(frame[config.time_idx].nunique()),
    }
