"""Channels → validated data frames.

Reads every parquet/CSV file of a channel, applies a preset's feature engineering, derives the
integer time index from a date column, and checks everything pytorch-forecasting would
otherwise reject later (or, worse, accept silently). Each problem becomes one `DataError` whose
message names the channel, the columns and an example, before any expensive work starts.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import yaml
from pandas.tseries.api import guess_datetime_format
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import Tick

from .config import DataConfig
from .errors import ConfigError, DataError
from .presets import PRESETS
from .sagemaker.paths import JobPaths

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz")
CONFIG_FILE_NAMES = ("tft_config.json", "tft_config.yaml", "tft_config.yml")
CONFIG_CHANNELS = ("config", "train")
_EXAMPLES = 3
_OTHER_SEPARATORS = (";", "\t", "|")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_GRID = 10_000_000  # date grid points; a freq that needs more is far finer than the data


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


def _partition_values(path: Path, root: Path) -> dict[str, str | None]:
    """Hive-style partition keys of a file below `root`, as Spark and pyarrow write them:
    `shop=shop0/part-0.parquet` → {'shop': 'shop0'} (values URL-encoded, None for null)."""
    values: dict[str, str | None] = {}
    for part in path.relative_to(root).parts[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            value = unquote(value)
            values[unquote(key)] = None if value == _HIVE_NULL else value
    return values


def _read_file(path: Path) -> pd.DataFrame:
    """One data file (an empty file is a frame without rows); column names as text."""
    try:
        if path.stat().st_size == 0:
            return pd.DataFrame()
        if path.name.lower().endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, encoding="utf-8-sig")  # utf-8-sig: drops a BOM
            header = str(frame.columns[0]) if frame.shape[1] == 1 else ""
            separator = next((sep for sep in _OTHER_SEPARATORS if sep in header), None)
            if separator:  # one column named 'a;b;c': another delimiter than ','
                frame = pd.read_csv(path, encoding="utf-8-sig", sep=separator)
            if separator == ";":  # as spreadsheets write it where the decimal mark is ','
                comma = pd.read_csv(path, encoding="utf-8-sig", sep=separator, decimal=",")
                if _numeric_columns(comma) > _numeric_columns(frame):
                    frame = comma
    except pd.errors.EmptyDataError:  # whitespace only, or a compressed empty file
        return pd.DataFrame()
    except Exception as err:  # pyarrow and pandas raise many types for a corrupt file
        reason = " ".join(str(err).split())[:200]
        raise DataError(f"Cannot read data file {path}: {type(err).__name__}: {reason}") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _numeric_columns(frame: pd.DataFrame) -> int:
    return sum(pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes)


def _typed_partition_column(values: pd.Series) -> pd.Series:
    """Partition values are text in the path: whole numbers become integers, as pyarrow
    reads them."""
    known = values.dropna()
    if len(known) and known.str.fullmatch(r"-?\d{1,18}").all():
        return pd.to_numeric(values).astype("Int64" if values.isna().any() else "int64")
    return values


def read_files(files: list[Path], label: str, root: Path | None = None) -> pd.DataFrame:
    """Data files with the same columns → one frame (`label` names them in errors). Files in
    hive-style folders below `root` get their partition keys as columns; files without rows
    (empty, or a header only) are skipped with a warning."""
    frames: list[tuple[Path, pd.DataFrame]] = []
    empty: list[Path] = []
    partition_keys: set[str] = set()
    for path in files:
        frame = _read_file(path)
        if frame.empty:
            empty.append(path)
            continue
        for key, value in (_partition_values(path, root) if root else {}).items():
            if key not in frame.columns:
                frame[key] = pd.Series(value, index=frame.index, dtype=object)
                partition_keys.add(key)
        frames.append((path, frame))
    if not frames:
        raise DataError(f"{label.capitalize()} has no rows ({len(files)} file(s)).")
    if empty:
        names = ", ".join(p.name for p in empty[:_EXAMPLES]) + (", ..." * (len(empty) > _EXAMPLES))
        log.warning("%s: skipping %d file(s) without rows: %s", label, len(empty), names)
    (first_path, first), others = frames[0], frames[1:]
    columns = set(first.columns)
    for path, frame in others:
        if set(frame.columns) != columns:
            missing = sorted(columns - set(frame.columns))
            extra = sorted(set(frame.columns) - columns)
            raise DataError(
                f"Data file {path} does not match {first_path.name} in {label}: "
                f"missing columns {missing}, extra columns {extra}."
            )
    frame = pd.concat([f for _, f in frames], ignore_index=True) if others else first
    for key in sorted(partition_keys):
        frame[key] = _typed_partition_column(frame[key])
    if partition_keys:
        log.info(
            "%s: partition folder(s) give column(s) %s", label, ", ".join(sorted(partition_keys))
        )
    log.info("%s: %d rows from %d file(s)", label, len(frame), len(frames))
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


def channel_data_files(paths: JobPaths, name: str, required: bool) -> list[Path] | None:
    """The data files of channel `name` (None for a missing optional channel); a channel
    without any is an error, reported before the configuration is read."""
    directory = channel_dir(paths, name, required)
    if directory is None:
        return None
    files = channel_files(directory)
    if not files:
        raise DataError(
            f"Channel '{name}' has no data files ({', '.join(DATA_SUFFIXES)}) in {directory}."
        )
    return files


def read_channel(paths: JobPaths, name: str, required: bool) -> pd.DataFrame | None:
    """All data files of channel `name` as one frame (None for a missing optional channel)."""
    files = channel_data_files(paths, name, required)
    if files is None:
        return None
    return read_files(files, f"channel '{name}'", root=paths.channels[name])


def undeclared_channel_dirs(paths: JobPaths) -> list[Path]:
    """Folders in input/data that are not channels of this job (SM_CHANNEL_*, which the
    toolkit derives from inputdataconfig.json): their files are never read."""
    data_dir = paths.base / "input" / "data"
    if not data_dir.is_dir():
        return []
    declared = {d.resolve() for d in paths.channels.values()}
    return [
        d
        for d in sorted(data_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".") and d.resolve() not in declared
    ]


# --------------------------------------------------------------------------------------------
# Dates and the time axis
# --------------------------------------------------------------------------------------------
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
    """`date_column` as datetimes: dates as they are; text by `date_format` / `dayfirst`
    (else in the format of the first date); integers as YYYYMMDD, YYYYMM or years, never as
    nanoseconds since 1970. Mixed UTC offsets are converted to UTC."""
    name = config.date_column
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
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
            offsets = values.astype(str).str.extract(r"([+-]\d\d:?\d\d|Z)\s*$")[0]
            log.warning(
                "%s: '%s' mixes UTC offsets (%s): converted to UTC",
                source_of(channel),
                name,
                ", ".join(map(str, offsets.dropna().unique()[:3])),
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


def time_axis_for(frame: pd.DataFrame, config: DataConfig, channel: str) -> TimeAxis | None:
    """The time axis of a training frame (origin = its first date), or None without dates."""
    if not config.date_column or config.date_column not in frame.columns:
        return None  # a missing date column is reported by prepare_frame, with the others
    dates = parse_dates(frame[config.date_column], config, channel)
    freq = normalize_freq(config.freq or "")
    _offset(freq)
    if freq != config.freq:
        log.info("freq=%r is pandas' old name of %r: using %r", config.freq, freq, freq)
    return TimeAxis(freq=freq, origin=dates.min().tz_localize(None).isoformat())


# --------------------------------------------------------------------------------------------
# Preparing: preset features, time index, dtypes
# --------------------------------------------------------------------------------------------
def with_parsed_dates(frame: pd.DataFrame, config: DataConfig, channel: str) -> pd.DataFrame:
    """`frame` with its date column parsed (unchanged without one)."""
    date = config.date_column
    if not date or date not in frame.columns:
        return frame
    return frame.assign(**{date: parse_dates(frame[date], config, channel)})


def prepare_frame(
    frame: pd.DataFrame, config: DataConfig, channel: str, time_axis: TimeAxis | None
) -> pd.DataFrame:
    """Dates parsed, preset features, time index from dates, categoricals as labels, numbers
    as floats; raises on missing columns and wrong types."""
    frame = with_parsed_dates(frame, config, channel)  # the preset's features read dates
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
    _check_dtypes(frame, config, channel)
    frame[config.time_idx] = _whole_numbers(frame[config.time_idx], channel)
    numeric_labels = []
    for column in _unique([*config.group_ids, *config.categoricals]):
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
    for column in _unique([config.target, *config.reals, config.weight]):
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


def _check_dtypes(frame: pd.DataFrame, config: DataConfig, channel: str) -> None:
    time = config.time_idx
    non_numeric = [
        c
        for c in _unique([config.target, time, *config.reals, config.weight])
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


def source_of(channel: str) -> str:
    """How messages name where rows come from: `Channel 'train'`, or a description such as
    'The prediction data' as it is."""
    return channel if channel[:1].isupper() else f"Channel '{channel}'"


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
    for column in _unique(categoricals):
        changing[column] = by_series[column].nunique() > 1
    for column in _unique(config.static_reals):
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
    reals = [c for c in _unique([*config.reals, config.weight]) if c not in (config.target, time)]
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
    duplicated = frame.duplicated(subset=keys, keep=False)
    if duplicated.any():
        raise DataError(
            f"{source_of(channel)}: {int(duplicated.sum())} rows share a (group, time) key, e.g. "
            f"{_series_examples(frame, duplicated, keys)}; each series needs one row per step."
        )
    _check_statics(frame, config, channel)

    ordered = frame.sort_values(keys, kind="stable").astype({time: np.int64})
    by_series = ordered.groupby(groups, observed=True, sort=False)[time]
    steps = by_series.diff()
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
    span = by_series.transform("max") - by_series.transform("min") + 1
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
    for column in _unique([*config.group_ids, *config.categoricals]):
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


def _dropped_series(
    before: pd.DataFrame, after: pd.DataFrame, config: DataConfig, reason: str
) -> pd.DataFrame:
    """The series of `before` that validation left out of `after`, each with `reason`."""
    series = before[config.group_ids].drop_duplicates()
    kept = after[config.group_ids].drop_duplicates().assign(_kept=True)
    gone = series.merge(kept, on=config.group_ids, how="left")["_kept"].isna().to_numpy()
    return series[gone].assign(reason=reason).reset_index(drop=True)


def load_job_data(paths: JobPaths, config: DataConfig) -> JobData:
    """Read, prepare and validate the channels; hold out a validation horizon if needed."""
    for directory in undeclared_channel_dirs(paths):
        log.warning(
            "input/data/%s is not a channel of this job (channels: %s): its files are not "
            "read; declare it (inputs={'%s': ...}, inputdataconfig.json) to use it",
            directory.name,
            ", ".join(sorted(paths.channels)) or "none",
            directory.name,
        )
    raw_train = with_parsed_dates(read_channel(paths, "train", required=True), config, "train")
    time_axis = time_axis_for(raw_train, config, "train")
    prepared = prepare_frame(raw_train, config, "train", time_axis)
    raw_validation = read_channel(paths, "validation", required=False)
    holdout = raw_validation is None
    length = min_series_length(config, holdout=holdout)
    train = validate_frame(prepared, config, "train", length)
    dropped = [_dropped_series(prepared, train, config, f"train: shorter than {length} steps")]
    if holdout:
        return JobData(split_holdout(train, config), train, time_axis, pd.concat(dropped))
    validation = prepare_frame(raw_validation, config, "validation", time_axis)
    validation = validate_frame(validation, config, "validation", min_length=1)
    check_validation_horizon(train, validation, config)
    merged = merge_validation(train, validation, config)
    length = config.resolved_min_encoder_length + config.max_prediction_length
    checked = validate_frame(merged, config, "validation (with its history from train)", length)
    reason = f"validation: history and horizon shorter than {length} steps"
    dropped.append(_dropped_series(merged, checked, config, reason))
    return JobData(train, checked, time_axis, pd.concat(dropped, ignore_index=True))


def describe_frame(frame: pd.DataFrame, config: DataConfig) -> Mapping[str, int]:
    """Size figures for the log."""
    return {
        "rows": len(frame),
        "series": int(frame[config.group_ids].drop_duplicates().shape[0]),
        "steps": int(frame[config.time_idx].nunique()),
    }
