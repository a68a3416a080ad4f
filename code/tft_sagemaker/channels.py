"""Channels → raw frames: the files of a SageMaker channel, read as one frame.

Parquet and CSV files (other delimiters, decimal commas, compression), hive-style partition
folders, empty files skipped with a warning, files whose columns differ refused. Nothing here
knows the schema: `preparation.py` and `validation.py` take the frames from here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import CONFIG_FILE_NAMES
from .errors import DataError
from .sagemaker.paths import JobPaths

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz")
EXAMPLES = 3  # examples a message lists
_OTHER_SEPARATORS = (";", "\t", "|")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def channel_files(directory: Path) -> list[Path]:
    """Data files of a channel, recursively, in a stable order (hidden and _* files skipped)."""
    files = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith((".", "_")) for part in relative.parts):
            continue
        if path.is_symlink() and not path.exists():
            raise DataError(
                f"{path} is a symbolic link to {path.readlink()}, which does not exist: copy the "
                "file itself into the channel, or remove the link."
            )
        if not path.is_file():
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


def _refuse_duplicated_names(names: list[str], path: Path) -> None:
    """Two columns of one name would be read as one of them (pandas renames the second of a
    CSV `price.1`, pyarrow cannot select either): a DataError naming them."""
    seen: set[str] = set()
    repeated = list(dict.fromkeys(n for n in names if n in seen or seen.add(n)))
    if repeated:
        shown = ", ".join(f"'{n}' ({names.count(n)} times)" for n in repeated[:EXAMPLES])
        raise DataError(
            f"Data file {path} has duplicated column names: {shown}; rename or drop the copies "
            "so that each column has its own name."
        )


def _read_file(path: Path) -> pd.DataFrame:
    """One data file (an empty file is a frame without rows); column names as text."""
    try:
        if path.stat().st_size == 0:
            return pd.DataFrame()
        if path.name.lower().endswith((".parquet", ".pq")):
            _refuse_duplicated_names([str(n) for n in pq.read_schema(path).names], path)
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
            header_row = pd.read_csv(
                path, encoding="utf-8-sig", sep=separator or ",", header=None, nrows=1, dtype=str
            ).iloc[0]
            _refuse_duplicated_names([n for n in header_row if isinstance(n, str)], path)
    except DataError:
        raise
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
    # The parquet reader's pool (mimalloc) keeps the pages of the tables it freed, for the
    # rest of the job unless handed back (0.3 GB at 5 million rows of the built-in panel).
    pa.default_memory_pool().release_unused()
    if not frames:
        raise DataError(f"{label.capitalize()} has no rows ({len(files)} file(s)).")
    if empty:
        names = ", ".join(p.name for p in empty[:EXAMPLES]) + (", ..." * (len(empty) > EXAMPLES))
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


def source_of(channel: str) -> str:
    """How messages name where rows come from: `Channel 'train'`, or a description such as
    'The prediction data' as it is."""
    return channel if channel[:1].isupper() else f"Channel '{channel}'"
