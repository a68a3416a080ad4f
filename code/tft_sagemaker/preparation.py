"""Raw frames → prepared frames: a preset's features, the time index, labels and dtypes.

Categoricals and series ids become text labels (1 and 1.0 are the label '1'), numbers
(decimals included) become floats, the time index is computed from the dates (`time_axis.py`);
missing columns and wrong types are refused with the column and an example.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pandas as pd

from .channels import source_of
from .config import DataConfig, unique
from .errors import DataError
from .presets import PRESETS
from .time_axis import TimeAxis, parse_dates, time_axis_for

log = logging.getLogger(__name__)


def with_parsed_dates(frame: pd.DataFrame, config: DataConfig, channel: str) -> pd.DataFrame:
    """`frame` with its date column parsed (unchanged without one): where dates are parsed."""
    date = config.date_column
    if not date or date not in frame.columns:
        return frame
    return frame.assign(**{date: parse_dates(frame[date], config, channel)})


def prepare_training_frame(
    frame: pd.DataFrame, config: DataConfig, channel: str = "train"
) -> tuple[pd.DataFrame, TimeAxis | None]:
    """The training channel's frame prepared, and the time axis its dates define."""
    parsed = with_parsed_dates(frame, config, channel)
    dates = parsed.get(config.date_column) if config.date_column else None
    time_axis = time_axis_for(dates, config)
    return _prepare_parsed(parsed, config, channel, time_axis), time_axis


def prepare_frame(
    frame: pd.DataFrame, config: DataConfig, channel: str, time_axis: TimeAxis | None
) -> pd.DataFrame:
    """Dates parsed, preset features, time index from dates on the training data's
    `time_axis`, categoricals as labels, numbers as floats; raises on missing columns and wrong
    types."""
    return _prepare_parsed(with_parsed_dates(frame, config, channel), config, channel, time_axis)


def _prepare_parsed(
    frame: pd.DataFrame, config: DataConfig, channel: str, time_axis: TimeAxis | None
) -> pd.DataFrame:
    # The preset's features read the parsed dates.
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
                f"{source_of(channel)} already has a column '{config.time_idx}' and date_column "
                f"is set: drop one, or name another time_idx column."
            )
        frame[config.time_idx] = time_axis.to_time_idx(
            frame[config.date_column], channel, frame[config.group_ids]
        )
    _decimals_as_floats(frame, config)
    _check_dtypes(frame, config, channel)
    frame[config.time_idx] = _whole_numbers(frame[config.time_idx], channel)
    numeric_labels = []
    for column in unique([*config.group_ids, *config.categoricals]):
        if pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(
            frame[column]
        ):
            numeric_labels.append(column)
        frame[column] = as_labels(frame[column])
    if numeric_labels:
        log.info(
            "%s: id and categorical column(s) %s hold numbers: used as labels (1 and 1.0 → '1')",
            source_of(channel),
            ", ".join(numeric_labels),
        )
    for column in unique([config.target, *config.reals, config.weight]):
        if column != config.time_idx:
            frame[column] = frame[column].to_numpy(dtype=float, na_value=np.nan)
    return frame


def _label(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))  # 1.0 → '1', as the same id stored as an integer
    return str(value)


def as_labels(values: pd.Series) -> pd.Series:
    """Categories as text labels (numbers included: 1 and 1.0 → '1'); missing stays missing."""
    if isinstance(values.dtype, pd.CategoricalDtype):  # maps the categories, not every row
        return values.map(_label).astype("category")
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty"):
        return values.astype("category")
    if pd.api.types.is_numeric_dtype(values):  # one type: a label per distinct value
        labels = {value: _label(value) for value in pd.unique(values.dropna())}
        return values.map(labels).astype("category")
    return values.map(_label, na_action="ignore").astype("category")  # mixed (1 and True)


def _require_columns(frame: pd.DataFrame, columns: list[str], channel: str, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        by_key = {str(c).strip().lower(): c for c in frame.columns}
        near = [
            f"'{by_key[c.strip().lower()]}' for '{c}'"
            for c in missing
            if c.strip().lower() in by_key
        ]
        hint = f"; names differ in case or spaces: {', '.join(near)}" if near else ""
        raise DataError(
            f"{source_of(channel)} lacks {len(missing)} column(s) required by {what}: "
            f"{', '.join(missing)} (it has: {', '.join(map(str, frame.columns[:30]))}){hint}."
        )


def _decimals_as_floats(frame: pd.DataFrame, config: DataConfig) -> None:
    """Numeric columns of Python decimals (parquet's decimal128, read by pandas as objects)
    as floats, in place: the model computes in float32 anyway."""
    for column in unique([config.target, config.time_idx, *config.reals, config.weight]):
        if pd.api.types.infer_dtype(frame[column], skipna=True) == "decimal":
            frame[column] = frame[column].to_numpy(dtype=float, na_value=np.nan)


def _check_dtypes(frame: pd.DataFrame, config: DataConfig, channel: str) -> None:
    time = config.time_idx
    non_numeric = [
        c
        for c in unique([config.target, time, *config.reals, config.weight])
        if not pd.api.types.is_numeric_dtype(frame[c])
    ]
    if non_numeric:
        column = frame[non_numeric[0]]
        example = column.dropna().iloc[0] if column.notna().any() else None
        hint = ""
        if pd.api.types.is_datetime64_any_dtype(column) and non_numeric[0] == time:
            hint = f": '{time}' holds dates, set date_column={time} and freq instead"
        elif isinstance(example, str) and re.fullmatch(r"-?\d+,\d+", example.strip()):
            hint = ": numbers with a decimal comma, write them with a decimal point"
        elif isinstance(example, str) and _is_number(example):
            hint = ": numbers stored as text, store them as numbers"
        raise DataError(
            f"{source_of(channel)}: column(s) {', '.join(non_numeric)} must be numeric "
            f"(target, time index, weight and reals), e.g. {non_numeric[0]}={example!r}{hint}."
        )


def _whole_numbers(values: pd.Series, channel: str) -> pd.Series:
    """A time index as int64: whole floats (3.0) are whole numbers; empty values are left for
    validate_frame to report."""
    if values.isna().any():
        return values
    if pd.api.types.is_integer_dtype(values):
        return values.astype(np.int64)
    numbers = values.to_numpy(dtype=float)
    fractional = ~(np.isfinite(numbers) & (numbers % 1 == 0))
    if fractional.any():
        raise DataError(
            f"{source_of(channel)}: time index '{values.name}' must hold whole numbers "
            f"({int(fractional.sum())} do not, e.g. {numbers[fractional][0]:g}); or give dates "
            "with date_column and freq."
        )
    return pd.Series(numbers.astype(np.int64), index=values.index, name=values.name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
