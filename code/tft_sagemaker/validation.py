"""Prepared frames → validated frames: everything pytorch-forecasting would reject later, or
worse, accept silently (empty keys and targets, non-finite reals, duplicated steps, statics
that change, gaps, a freq finer than the data, series too short for a window), each one
`DataError` naming the channel, the columns and an example, before any expensive work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from .channels import EXAMPLES, source_of
from .columnar import series_bounds
from .config import DataConfig, unique
from .errors import DataError
from .time_axis import inferred_freq, normalize_freq

log = logging.getLogger(__name__)

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _series_examples(frame: pd.DataFrame, mask: pd.Series | np.ndarray, columns: list[str]) -> str:
    rows = frame.loc[mask, columns].drop_duplicates().head(EXAMPLES)
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


# The target range each target_transformation needs: text, and the values outside it.
_TARGET_DOMAINS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "softplus": ("≥ 0", lambda y: y < 0),  # its inverse is log(expm1(y)): NaN below 0
    "relu": ("≥ 0", lambda y: y < 0),  # forecasts are clipped at 0
    "log": ("> 0", lambda y: y <= 0),
    "log1p": ("> -1", lambda y: y <= -1),
    "logit": ("strictly between 0 and 1", lambda y: (y <= 0) | (y >= 1)),
}


def _check_target_range(
    frame: pd.DataFrame, target: np.ndarray, config: DataConfig, channel: str, keys: list[str]
) -> None:
    transformation = config.target_transformation
    if transformation not in _TARGET_DOMAINS:
        return
    needs, outside = _TARGET_DOMAINS[transformation]
    bad = outside(target)
    if bad.any():
        fits = [
            "none",
            *(name for name, (_, out) in _TARGET_DOMAINS.items() if not out(target).any()),
        ]
        raise DataError(
            f"{source_of(channel)}: target '{config.target}' ranges from {target.min():g} to "
            f"{target.max():g}, but target_transformation={transformation} needs values {needs} "
            f"({int(bad.sum())} are not, e.g. at {_series_examples(frame, bad, keys)}); "
            f"transformations that fit this data: {', '.join(fits)}."
        )


def _check_statics(frame: pd.DataFrame, config: DataConfig, channel: str) -> None:
    """Static columns must hold one value per series."""
    groups = config.group_ids
    categoricals = [
        c
        for name in config.static_categoricals
        for c in config.variable_groups.get(name, [name])
        if c not in groups
    ]
    by_series = frame.groupby(groups, observed=True, sort=False)
    changing: dict[str, pd.Series] = {}
    for column in unique(categoricals):
        changing[column] = by_series[column].nunique() > 1
    for column in unique(config.static_reals):
        spread = by_series[column].agg(["min", "max"])
        scale = spread.abs().max(axis=1).clip(lower=1.0)
        changing[column] = (spread["max"] - spread["min"]) > 1e-9 * scale
    listed = []
    for column, mask in changing.items():
        if mask.any():
            series = mask[mask].index[0]
            series = series if isinstance(series, tuple) else (series,)
            where = dict(zip(groups, series, strict=True))
            rows = frame[np.logical_and.reduce([frame[g] == v for g, v in where.items()])]
            values = " and ".join(map(str, rows[column].drop_duplicates().head(2)))
            ids = ", ".join(f"{g}={v}" for g, v in where.items())
            listed.append(f"{column} ({int(mask.sum())} series, e.g. {ids}: {values})")
    if listed:
        raise DataError(
            f"{source_of(channel)}: static column(s) change within a series: {'; '.join(listed)}; "
            "make each series' value constant, or list them as time_varying_known_reals / "
            "time_varying_known_categoricals."
        )


def _data_freq(frame: pd.DataFrame, config: DataConfig) -> str | None:
    """The frequency the dates follow when it is not `freq` (None: the same, or no dates)."""
    if not config.date_column or config.date_column not in frame.columns:
        return None
    looks = inferred_freq(frame[config.date_column], frame[config.group_ids])
    if looks is None or to_offset(looks) == to_offset(normalize_freq(config.freq or "")):
        return None
    return looks


def _check_steps(ordered: pd.DataFrame, steps: pd.Series, config: DataConfig, channel: str) -> None:
    """Steps between rows that are all multiples of n > 1: the time axis is finer than the data
    (daily dates with freq='h'), which would read as gaps everywhere."""
    known = steps.dropna().to_numpy(dtype=np.int64)
    common = int(np.gcd.reduce(known)) if known.size else 1
    if common <= 1:
        return
    time, date = config.time_idx, config.date_column
    if date and date in ordered.columns:
        looks = (
            inferred_freq(ordered[date], ordered[config.group_ids])
            or (to_offset(normalize_freq(config.freq or "")) * common).freqstr
        )
        raise DataError(
            f"{source_of(channel)}: consecutive dates in '{date}' are always a multiple of "
            f"{common} steps of freq={config.freq!r} apart: freq is finer than the data, which "
            f"looks like freq={looks!r}; set freq={looks}."
        )
    first = ordered.loc[steps.notna()].iloc[0]
    raise DataError(
        f"{source_of(channel)}: every step of '{time}' is a multiple of {common} (e.g. "
        f"{int(first[time] - steps.dropna().iloc[0])} is followed by {int(first[time])}): number "
        f"the steps consecutively (divide {time} by {common}), or give dates with date_column "
        "and freq."
    )


def refuse_duplicated_keys(frame: pd.DataFrame, config: DataConfig, channel: str) -> None:
    """Rows that share a (group, time) key: a DataError naming them, and saying so when they
    are copies of each other (the same rows given twice, in two files or one)."""
    keys = [*config.group_ids, config.time_idx]
    duplicated = frame.duplicated(subset=keys, keep=False)
    if not duplicated.any():
        return
    copies = int(frame[duplicated].duplicated(keep=False).sum())
    raise DataError(
        f"{source_of(channel)}: {int(duplicated.sum())} rows share a (group, time) key, e.g. "
        f"{_series_examples(frame, duplicated, keys)}; each series needs one row per step"
        + (
            f" ({copies} of them are copies of another row: the same data given twice, in two "
            "files or one?)."
            if copies
            else "."
        )
    )


def is_sorted(frame: pd.DataFrame, keys: list[str]) -> bool:
    """Whether `frame` is sorted by `keys` as `sort_values(keys)` sorts it (categories by
    their order): one pass over the rows rather than a sort and a copy of the frame."""
    before = np.zeros(max(len(frame) - 1, 0), dtype=bool)  # a key earlier already orders
    tied = np.ones_like(before)
    for key in keys:
        column = frame[key]
        values = (
            column.cat.codes.to_numpy()
            if isinstance(column.dtype, pd.CategoricalDtype)
            else column.to_numpy()
        )
        if values.dtype.kind not in "iufmMb":
            return False  # text or mixed: let sort_values order it
        before |= tied & (values[:-1] < values[1:])
        tied &= values[:-1] == values[1:]
    return bool((before | tied).all())


def validate_frame(
    frame: pd.DataFrame, config: DataConfig, channel: str, min_length: int
) -> pd.DataFrame:
    """Check a prepared frame; returns it sorted by series and time (short series dropped
    only if drop_short_series)."""
    groups, time = config.group_ids, config.time_idx
    keys = [*groups, time]
    empty_keys = frame[keys].isna().any(axis=1)
    if empty_keys.any():
        raise DataError(
            f"{source_of(channel)}: {int(empty_keys.sum())} row(s) have an empty group id or "
            f"time ({', '.join(keys)})."
        )
    target = frame[config.target].to_numpy(dtype=float, na_value=np.nan)
    bad_target = ~np.isfinite(target)
    if bad_target.any():
        raise DataError(
            f"{source_of(channel)}: target '{config.target}' has {int(bad_target.sum())} missing "
            f"or infinite value(s), e.g. at {_series_examples(frame, bad_target, keys)}."
        )
    _check_target_range(frame, target, config, channel, keys)
    reals = [c for c in unique([*config.reals, config.weight]) if c not in (config.target, time)]
    _reject_counts(
        {
            c: int((~np.isfinite(frame[c].to_numpy(dtype=float, na_value=np.nan))).sum())
            for c in reals
        },
        f"{source_of(channel)}: missing or infinite values in real column(s)",
        "fill or drop them.",
    )
    _reject_counts(
        {
            c: int((np.abs(frame[c].to_numpy(dtype=float)) > _FLOAT32_MAX).sum())
            for c in [config.target, *reals]
        },
        f"{source_of(channel)}: values beyond float32's range (±{_FLOAT32_MAX:.1e}), which the "
        "model computes in, in column(s)",
        "rescale them (e.g. to thousands).",
    )
    if config.weight:
        negative = frame[config.weight].to_numpy(dtype=float) < 0
        if negative.any():
            raise DataError(
                f"{source_of(channel)}: weight '{config.weight}' has {int(negative.sum())} "
                f"negative value(s), e.g. at {_series_examples(frame, negative, keys)}; sample "
                "weights must be ≥ 0."
            )
    _reject_counts(
        {c: int(frame[c].isna().sum()) for c in config.categoricals},
        f"{source_of(channel)}: missing values in categorical column(s)",
        "fill them (e.g. with '-' or 'unknown').",
    )
    refuse_duplicated_keys(frame, config, channel)
    _check_statics(frame, config, channel)

    ordered = frame if is_sorted(frame, keys) else frame.sort_values(keys, kind="stable")
    if ordered[time].dtype != np.int64:
        ordered = ordered.assign(**{time: ordered[time].astype(np.int64)})
    # Sorted, each series is a run of rows from its first step to its last: its steps and
    # span by position (a groupby's per-row intermediates are 200 bytes a row).
    bounds = series_bounds(ordered, groups)
    times = ordered[time].to_numpy()
    steps = pd.Series(np.diff(times, prepend=times[:1]).astype(float), index=ordered.index)
    steps.iloc[bounds[:-1]] = np.nan  # no step before each series' first row (as .diff())
    _check_steps(ordered, steps, config, channel)
    if not config.allow_missing_timesteps:
        gaps = steps.gt(1)
        if gaps.any():
            n_series = ordered.loc[gaps, groups].drop_duplicates().shape[0]
            first = ordered.loc[gaps].iloc[0]
            where = ", ".join(f"{g}={first[g]}" for g in groups)
            looks = _data_freq(ordered, config)
            fix = (
                f"the dates look like freq={looks!r}, not {config.freq!r}: set freq={looks}"
                if looks
                else "fill the missing steps or set allow_missing_timesteps=true"
            )
            raise DataError(
                f"{source_of(channel)}: {n_series} series have gaps in '{time}', e.g. {where}: "
                f"{time} {int(first[time] - steps[gaps].iloc[0])} is followed by "
                f"{int(first[time])}; {fix}."
            )
    lengths = np.diff(bounds)
    span = np.repeat(times[bounds[1:] - 1] - times[bounds[:-1]] + 1, lengths)
    short = span < min_length
    if short.any():
        n_short = ordered.loc[short, groups].drop_duplicates().shape[0]
        n_total = ordered[groups].drop_duplicates().shape[0]
        message = (
            f"{source_of(channel)}: {n_short} of {n_total} series are shorter than the "
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
    if ordered.index.equals(pd.RangeIndex(len(ordered))):
        return ordered  # each step above copies the frame only where it changes it
    return ordered.reset_index(drop=True)
