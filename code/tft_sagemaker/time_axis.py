"""Dates → the integer time index: frequencies, date parsing and the `TimeAxis`.

`parse_dates` reads a date column whatever form it comes in (datetimes, pandas periods, text
in one format, day-first or not, integers such as 20230131, 202301 or 2023, mixed UTC
offsets); `TimeAxis` maps dates on the `freq` grid to time steps and is stored with the model
for prediction.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import Tick

from .channels import source_of
from .config import DataConfig
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

_MAX_GRID = 10_000_000  # date grid points; a freq that needs more is far finer than the data

# Frequency aliases pandas 3 no longer accepts (2.2 deprecated them) → today's names.
_OLD_FREQ_ALIASES = {
    "H": "h",
    "BH": "bh",
    "CBH": "cbh",
    "T": "min",
    "S": "s",
    "L": "ms",
    "U": "us",
    "N": "ns",
    "M": "ME",
    "BM": "BME",
    "CBM": "CBME",
    "SM": "SME",
    "Q": "QE",
    "BQ": "BQE",
    "A": "YE",
    "Y": "YE",
    "BA": "BYE",
    "BY": "BYE",
    "AS": "YS",
    "BAS": "BYS",
}
_UTC_OFFSET = r"([+-]\d\d:?\d\d|Z)\s*$"  # at the end of a date's text: +01:00, -0500, Z
# Integers users give as dates: digits → strptime pattern and name (never ns since 1970).
_DATE_INTEGERS = ((8, "%Y%m%d", "YYYYMMDD"), (6, "%Y%m", "YYYYMM"), (4, "%Y", "years"))


def normalize_freq(freq: str) -> str:
    """`freq` in today's pandas spelling: old aliases ('H', 'M', 'A-DEC', '15T') are renamed."""
    freq = freq.strip()
    match = re.fullmatch(r"(\d*)([A-Za-z]+)(-\w+)?", freq)
    if match and match[2] in _OLD_FREQ_ALIASES:
        return f"{match[1]}{_OLD_FREQ_ALIASES[match[2]]}{match[3] or ''}"
    return freq


def _offset(freq: str) -> pd.DateOffset:
    try:
        return to_offset(freq)
    except ValueError:
        raise ConfigError(
            f"freq={freq!r} is not a pandas frequency (e.g. 'D', 'W-MON', 'MS', 'h')."
        ) from None


def inferred_freq(dates: pd.Series, ids: pd.DataFrame | None) -> str | None:
    """The frequency the dates follow (pandas' infer_freq on the longest series), if any."""
    frame = pd.DataFrame({"_date": dates.to_numpy(), "_series": 0})
    if ids is not None and len(ids.columns):
        frame["_series"] = ids.groupby(list(ids.columns), observed=True, sort=False).ngroup()
    by_series = frame.groupby("_series")["_date"]
    found: list[str] = []
    for series in by_series.size().nlargest(5).index:
        index = pd.DatetimeIndex(by_series.get_group(series).drop_duplicates().sort_values())
        freq = pd.infer_freq(index) if len(index) >= 3 else None
        if freq:
            found.append(freq)
    return max(set(found), key=found.count) if found else None


def parse_dates(values: pd.Series, config: DataConfig, channel: str) -> pd.Series:
    """`date_column` as datetimes: dates as they are; periods by the end of theirs on the
    `freq` grid; text by `date_format` / `dayfirst` (else in the format of the first date);
    integers as YYYYMMDD, YYYYMM or years, never as nanoseconds since 1970. Mixed UTC offsets
    (local dates across a DST change) keep their wall-clock dates at a daily or coarser `freq`
    (the calendar date is what was meant) and are converted to UTC at a finer one."""
    name = config.date_column
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    elif isinstance(values.dtype, pd.PeriodDtype):
        parsed = _dates_from_periods(values, config)
    elif pd.api.types.is_bool_dtype(values):
        raise DataError(f"{source_of(channel)}: column '{name}' holds true/false, not dates.")
    elif isinstance(values.dtype, pd.CategoricalDtype):
        return parse_dates(values.astype(object), config, channel)
    elif pd.api.types.is_numeric_dtype(values) or pd.api.types.infer_dtype(values, skipna=True) in (
        "integer",
        "floating",
        "mixed-integer-float",
        "decimal",
    ):
        parsed = _dates_from_numbers(pd.to_numeric(values), config, channel)
    else:
        parsed = _dates_from_text(values, config, channel)
    empty = int(parsed.isna().sum())
    if empty:
        raise DataError(f"{source_of(channel)}: {empty} empty date(s) in '{name}'.")
    return parsed


def _dates_from_numbers(values: pd.Series, config: DataConfig, channel: str) -> pd.Series:
    numbers = values.to_numpy(dtype=float, na_value=np.nan)
    known = ~np.isnan(numbers)
    whole = np.isfinite(numbers[known]).all() and (numbers[known] % 1 == 0).all()
    if whole:
        text = pd.Series(
            np.where(known, np.nan_to_num(numbers).astype(np.int64).astype(str), None),
            index=values.index,
            dtype=object,
        )
        if config.date_format:
            return _dates_from_text(text, config, channel)
        digits = set(text[known].str.lstrip("-").str.len())
        for length, pattern, what in _DATE_INTEGERS:
            if digits != {length} or (numbers[known] < 0).any():
                continue
            parsed = pd.to_datetime(text, format=pattern, errors="coerce")
            if pattern != "%Y%m%d":  # a year or a month: a period, not a day
                parsed = _on_period_anchor(parsed, config)
            if parsed[known].notna().all():
                log.info(
                    "%s: '%s' holds integers, read as %s (%s → %s)",
                    source_of(channel),
                    config.date_column,
                    what,
                    text[known].iloc[0],
                    parsed[known].iloc[0].date(),
                )
                return parsed
    example = values[known].iloc[0] if known.any() else values.iloc[0]
    raise DataError(
        f"{source_of(channel)}: column '{config.date_column}' holds numbers that are not dates "
        f"(e.g. {example}): give dates as text (2023-01-31) or as integers such as 20230131 "
        f"(YYYYMMDD), 202301 (YYYYMM) or 2023 (years); for an integer time index set "
        f"time_idx={config.date_column} and leave date_column and freq unset."
    )


def _dates_from_periods(values: pd.Series, config: DataConfig) -> pd.Series:
    """Periods (pandas' Period[D], [W-SUN], [M], ...) as the date that starts them, or the day
    that ends them where that one is on the `freq` grid (W-SUN, ME) and the start is not."""
    start = values.dt.to_timestamp(how="start")
    end = values.dt.to_timestamp(how="end").dt.normalize()
    return min((start, end), key=lambda dates: _off_grid(dates, config.freq))


def _on_period_anchor(dates: pd.Series, config: DataConfig) -> pd.Series:
    """Years and months read as integers start their period; a monthly, quarterly or yearly
    `freq` anchored elsewhere (freq=YE: 31 December) places them on its anchor."""
    try:
        offset = to_offset(normalize_freq(config.freq or ""))
    except ValueError:
        return dates  # reported with the time axis
    if offset is None or not re.match(r"B?[MQY]|SM", offset.rule_code):
        return dates
    return dates + offset * 0  # rolls forward onto the offset; no change if already on it


def _to_datetime(values: pd.Series, config: DataConfig, dayfirst: bool, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        # pandas' advice names arguments (format=, utc=True) no hyperparameter sets: ours follows.
        warnings.simplefilter("ignore")
        return pd.to_datetime(values, format=config.date_format, dayfirst=dayfirst, **kwargs)


def _guess_format(text: str, dayfirst: bool) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return guess_datetime_format(text, dayfirst=dayfirst)


def _reading(
    values: pd.Series, config: DataConfig, dayfirst: bool
) -> tuple[pd.Series, bool] | None:
    """The dates read one way (and whether mixed UTC offsets made them UTC), or None."""
    for utc in (False, True):
        try:
            parsed = _to_datetime(values, config, dayfirst, utc=utc)
        except (ValueError, TypeError, OverflowError):
            continue
        if pd.api.types.is_datetime64_any_dtype(parsed):  # pandas 2: objects for mixed offsets
            return parsed, utc
    return None


def _daily_or_coarser(freq: str | None) -> bool:
    try:
        offset = to_offset(normalize_freq(freq)) if freq else None
    except ValueError:
        return False  # reported with the time axis
    if offset is None:
        return False
    return not isinstance(offset, Tick) or pd.Timedelta(offset) >= pd.Timedelta(days=1)


def _wall_clock(values: pd.Series, config: DataConfig, dayfirst: bool) -> pd.Series | None:
    """Dates written with UTC offsets read as the local dates and times they show (None if
    they do not read so)."""
    text = values.astype("string").str.replace(r"\s*" + _UTC_OFFSET, "", regex=True)
    fmt = config.date_format.replace("%z", "").strip() if config.date_format else None
    reading = _reading(text, dataclasses.replace(config, date_format=fmt), dayfirst)
    return reading[0] if reading is not None and not reading[1] else None


def _off_grid(dates: pd.Series, freq: str | None) -> int:
    """Distinct dates off the `freq` grid through the first of them (0 without a usable freq)."""
    unique = pd.DatetimeIndex(dates.dropna().unique()).sort_values()
    try:
        offset = to_offset(normalize_freq(freq)) if freq else None
    except ValueError:
        return 0  # reported with the time axis
    if offset is None or len(unique) < 2:
        return 0
    span = unique[-1] - unique[0]
    if isinstance(offset, Tick) and span / pd.Timedelta(offset) > _MAX_GRID:
        return len(unique)
    return int((~unique.isin(pd.date_range(unique[0], unique[-1], freq=offset))).sum())


def _dates_from_text(values: pd.Series, config: DataConfig, channel: str) -> pd.Series:
    name, fmt = config.date_column, config.date_format
    first = str(values.dropna().iloc[0]) if values.notna().any() else ""
    # dayfirst only concerns dates that start with the day or the month: pandas would read
    # 2023-01-02 as 1 February with it.
    year_first = (_guess_format(first, dayfirst=False) or "").startswith("%Y")
    if fmt:
        options = [config.dayfirst]
    else:
        options = [False] if year_first else [config.dayfirst, not config.dayfirst]
    readings = {dayfirst: _reading(values, config, dayfirst) for dayfirst in options}
    found = {dayfirst: r for dayfirst, r in readings.items() if r is not None}
    if found:
        # Both readings fit (01/02/2023, ...): the one whose dates lie on the freq grid, else
        # the configured one. One fits: a later date (13/02/2023) told which.
        dayfirst = min(
            found, key=lambda d: (_off_grid(found[d][0], config.freq), d != config.dayfirst)
        )
        parsed, utc = found[dayfirst]
        if utc:
            offsets = values.astype(str).str.extract(_UTC_OFFSET)[0]
            daily = _daily_or_coarser(config.freq)
            local = _wall_clock(values, config, dayfirst) if daily else None
            parsed = parsed if local is None else local
            log.warning(
                "%s: '%s' mixes UTC offsets (%s): %s",
                source_of(channel),
                name,
                ", ".join(map(str, offsets.dropna().unique()[:3])),
                "converted to UTC"
                if local is None
                else f"read as the local dates they show (freq={config.freq} is daily or coarser)",
            )
        if dayfirst != config.dayfirst and not year_first:
            differ = found[True][0].ne(found[False][0]) if len(found) > 1 else parsed.notna()
            example = differ.idxmax()
            log.warning(
                "%s: '%s' read with dayfirst=%s (e.g. %s → %s): %s; set dayfirst or "
                "date_format to say so",
                source_of(channel),
                name,
                str(dayfirst).lower(),
                values[example],
                parsed[example].date(),
                f"the dates read so are on the freq={config.freq} grid"
                if len(found) > 1
                else "only that reading fits every date",
            )
        pattern = fmt or _guess_format(first, dayfirst)
        log.info(
            "%s: dates in '%s' read as %s, %s to %s",
            source_of(channel),
            name,
            pattern or "mixed formats",
            parsed.min(),
            parsed.max(),
        )
        return parsed
    coerced = _to_datetime(values, config, config.dayfirst, errors="coerce", utc=True)
    text = values.astype(str).str.strip()
    failing = values[coerced.isna() & values.notna() & text.ne("")]
    example = failing.iloc[0] if len(failing) else values.dropna().iloc[0]
    if fmt:
        raise DataError(
            f"{source_of(channel)}: {len(failing) or 'some'} value(s) of '{name}' do not match "
            f"date_format={fmt!r}, e.g. {example!r}: fix date_format (strftime codes such as "
            "%Y-%m-%d, %d/%m/%Y, %Y-%m-%d %H:%M:%S) or the dates."
        )
    raise DataError(
        f"{source_of(channel)}: {len(failing) or 'some'} value(s) of '{name}' cannot be read as "
        f"dates, e.g. {example!r}: set date_format to their strftime pattern (e.g. "
        "date_format=%d.%m.%Y for 31.01.2023), and dayfirst=true for day-first dates."
    )


@dataclass(frozen=True)
class TimeAxis:
    """How dates map to the integer time index; stored with the model for prediction."""

    freq: str
    origin: str  # ISO date of time_idx == 0

    def to_time_idx(
        self, dates: pd.Series, channel: str, ids: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Positions of `dates` on the grid (`ids`: the series of each date, to name the
        frequency the data follows when it is not `freq`)."""
        offset = _offset(self.freq)
        origin = pd.Timestamp(self.origin, tz=dates.dt.tz)
        start, end = min(origin, dates.min()), max(origin, dates.max())
        steps = (end - start) / pd.Timedelta(offset) if isinstance(offset, Tick) else 0
        if steps > _MAX_GRID + 10 * len(dates):
            positions = np.full(len(dates), -1)  # far finer than the data: no grid to build
            grid = pd.DatetimeIndex([])
        else:
            grid = pd.date_range(start, end, freq=offset)
            positions = grid.get_indexer(dates)
        off_grid = positions < 0
        if off_grid.any() or origin not in grid:
            example = dates[off_grid].iloc[0] if off_grid.any() else origin
            looks = inferred_freq(dates, ids)
            hint = (
                f"the data looks like freq={looks!r}: set freq={looks}"
                if looks and to_offset(looks) != offset
                else "fix freq or the dates"
            )
            raise DataError(
                f"{source_of(channel)}: {int(off_grid.sum())} date(s) are not on the "
                f"freq={self.freq!r} grid (e.g. {example}); {hint}."
            )
        return positions - grid.get_loc(origin)


def time_axis_for(dates: pd.Series | None, config: DataConfig) -> TimeAxis | None:
    """The time axis of the training data from its parsed dates (origin = the first date), or
    None without dates (an integer time index, or a missing date column, which
    `preparation.prepare_frame` reports with the other missing columns)."""
    if not config.date_column or dates is None:
        return None
    freq = normalize_freq(config.freq or "")
    _offset(freq)
    if freq != config.freq:
        log.info("freq=%r is pandas' old name of %r: using %r", config.freq, freq, freq)
    return TimeAxis(freq=freq, origin=dates.min().tz_localize(None).isoformat())
