"""Quantile forecasts from a trained model, for new data.

    python -m tft_sagemaker.predict --model model.tar.gz --data new.parquet --output fc.parquet

`--model` is the job's model directory or SageMaker's model.tar.gz. `--data` is a file or a
folder of parquet/CSV files with each series' history followed by the `max_prediction_length`
steps to forecast: known covariates filled in, the target (and past-only columns) left empty.
A series without such steps is skipped with a warning. Given complete data instead, it
forecasts the last steps of each series and adds the actuals, which is how the job's
validation metrics are reproduced. A model trained with ensemble=true forecasts its
combination (combination.py): the TFT's quantiles and those of the classical models it weights,
refitted on each series' history in `--data`.

Output in the format its name ends in (`OUTPUT_FORMATS`: parquet, CSV, optionally compressed,
JSON records or JSON lines): one row per (series, forecast step) with the group ids as given,
the time index (and date), `horizon`, `prediction` (the median), one column per quantile
(`q0.1`, ...) and `actual`. Every bad argument, file or row is one line `error: ...` on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pandas.tseries.frequencies import to_offset
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet

from .artifacts import TrainedModel, load_trained_model
from .channels import channel_files, read_files, source_of
from .combination import Combination, apply
from .config import DataConfig, unique
from .console import setup_logging
from .dataset import (
    CALENDAR,
    build_prediction_dataset,
    calendar_columns,
    refuse_unscaled_series,
    trained_labels,
    user_names,
)
from .errors import DataError, JobError
from .evaluate import forecast, to_frame
from .preparation import as_labels, prepare_frame
from .speedups import batches_reason
from .time_axis import TimeAxis
from .validation import refuse_duplicated_keys, validate_frame

log = logging.getLogger(__name__)
CHANNEL = "The prediction data"  # how messages name it
_EXAMPLES = 3
# CSV name ending → compression (stated: the partial file's name does not end in it).
_CSV_COMPRESSION = {".csv": None, ".csv.gz": "gzip", ".csv.bz2": "bz2", ".csv.xz": "xz"}
# The output's name ending → how the forecasts are written (dates in ISO 8601, empty as null).
OUTPUT_FORMATS: dict[str, Callable[[pd.DataFrame, Path], object]] = {
    ".parquet": lambda frame, path: frame.to_parquet(path, index=False),
    ".pq": lambda frame, path: frame.to_parquet(path, index=False),
    **{
        suffix: lambda frame, path, compression=compression: frame.to_csv(
            path, index=False, compression=compression
        )
        for suffix, compression in _CSV_COMPRESSION.items()
    },
    ".json": lambda frame, path: frame.to_json(path, orient="records", date_format="iso"),
    ".jsonl": lambda frame, path: frame.to_json(
        path, orient="records", date_format="iso", lines=True
    ),
}


def output_format(path: Path) -> str | None:
    """The `OUTPUT_FORMATS` key `path`'s name ends in (the longest: .csv.gz before .gz)."""
    name = path.name.lower()
    return max((s for s in OUTPUT_FORMATS if name.endswith(s)), key=len, default=None)


def _examples(series: pd.DataFrame) -> str:
    return "; ".join(
        ", ".join(f"{k}={v}" for k, v in row.items())
        for row in series.head(_EXAMPLES).to_dict(orient="records")
    )


def _future_rows(frame: pd.DataFrame, config: DataConfig, label: str) -> pd.DataFrame:
    """The rows to forecast, where the target is empty: each series' last
    `max_prediction_length` rows. A series without any is skipped (with a warning): its
    forecast would be of its past. The target and past-only columns, which the model does not
    read there, are filled with the series' last values."""
    target, time, groups, horizon = (
        config.target,
        config.time_idx,
        config.group_ids,
        config.max_prediction_length,
    )
    unknown = frame[target].isna()
    if not unknown.any():
        return frame  # complete data: its last steps are forecast, next to their actuals
    frame = frame.sort_values([*groups, time], kind="stable")
    unknown = unknown.loc[frame.index]
    ids = [frame[g] for g in groups]
    known_end = frame[time].where(~unknown).groupby(ids, observed=True).transform("max")
    early = unknown & (frame[time] <= known_end)
    if early.any():
        raise DataError(
            f"{source_of(label)}: {int(early.sum())} row(s) have an empty target "
            f"'{target}' before the last known one of their series (e.g. at "
            f"{_examples(frame.loc[early, [*groups, time]])}): only the rows to forecast, at "
            "the end of each series, may leave it empty."
        )
    counts = unknown.groupby(ids, observed=True).agg(["sum", "size"])
    series = counts.index.to_frame(index=False)
    future = counts["sum"].to_numpy()
    history = future == counts["size"].to_numpy()
    for wrong, problem in (
        (history, "no row with a known target (each series needs its history)"),
        (
            (future > 0) & (future < horizon),
            f"fewer rows to forecast than max_prediction_length={horizon}",
        ),
        (future > horizon, f"more rows to forecast than max_prediction_length={horizon}"),
    ):
        if wrong.any():
            shown = (
                series[wrong]
                if problem.startswith("no")
                else series[wrong].assign(rows=future[wrong])
            )
            raise DataError(
                f"{source_of(label)}: {int(wrong.sum())} series have {problem} (e.g. "
                f"{_examples(shown)}): give each series its history, then {horizon} rows with "
                "the known covariates filled in and the target empty (or no such rows, to "
                "forecast its last steps from complete data)."
            )
    skipped = future == 0
    if skipped.any():
        log.warning(
            "%s: %d of %d series have no rows to forecast (no empty target after their "
            "history), e.g. %s: skipped",
            source_of(label),
            int(skipped.sum()),
            len(series),
            _examples(series[skipped]),
        )
        keep = pd.MultiIndex.from_frame(series[~skipped].astype(str))
        frame = frame[pd.MultiIndex.from_frame(frame[groups].astype(str)).isin(keep)]
    unknown_categoricals = [
        c
        for name in config.time_varying_unknown_categoricals
        for c in config.variable_groups.get(name, [name])
    ]
    past_only = list(
        dict.fromkeys([target, *config.time_varying_unknown_reals, *unknown_categoricals])
    )
    filled = frame.groupby([frame[g] for g in groups], observed=True)[past_only].ffill()
    return frame.assign(**{c: filled[c] for c in past_only})


def _dates(time_idx: pd.Series, axis: TimeAxis) -> pd.Series:
    first = min(int(time_idx.min()), 0)  # data before the training data's first date: < 0
    start = pd.Timestamp(axis.origin) + first * to_offset(axis.freq)
    grid = pd.date_range(start, periods=int(time_idx.max()) - first + 1, freq=axis.freq)
    return pd.Series(grid[time_idx.to_numpy() - first], index=time_idx.index)


def _with_training_labels(
    frame: pd.DataFrame, known: dict[str, set[str]], config: DataConfig, label: str
) -> pd.DataFrame:
    """`frame` with its ids and categoricals as labels, those that lost the leading zeros of a
    training label (the id '001' written to a CSV and read back as the number 1) read as that
    label, with a warning."""
    labelled = {}
    for column in unique([*config.group_ids, *config.categoricals]):
        if column not in frame.columns:
            continue  # reported with the other missing columns
        labels = as_labels(frame[column])
        padded: dict[int, list[str]] = {}
        for known_label in known.get(column, ()):
            if known_label.isdigit():
                padded.setdefault(int(known_label), []).append(known_label)
        lost = {}
        for value in labels.cat.categories:
            if value.isdigit() and value not in known[column]:
                matches = padded.get(int(value), [])
                if len(matches) == 1:  # 1 for both '01' and '001' would be a guess
                    lost[value] = matches[0]
        if lost:
            example = next(iter(lost.items()))
            log.warning(
                "%s: %d value(s) of '%s' are the training data's with their leading zeros "
                "lost (e.g. %s for '%s', as numbers read from a CSV lose them): read as those",
                source_of(label),
                len(lost),
                column,
                *example,
            )
            labels = labels.map(lambda value, lost=lost: lost.get(value, value)).astype("category")
        labelled[column] = labels
    return frame.assign(**labelled)


def _rows_of(frame: pd.DataFrame, mask: pd.Series, config: DataConfig) -> str:
    """Where the `mask` rows are: their count and the first one's series and time."""
    first = frame.loc[mask, [*config.group_ids, config.time_idx]].iloc[0]
    return f"{int(mask.sum())} rows, e.g. at {', '.join(f'{k}={v}' for k, v in first.items())}"


def new_categories(
    frame: pd.DataFrame, known: dict[str, set[str]], config: DataConfig, label: str
) -> None:
    """Categories the model never saw in training, which it would read as missing values:
    refused in the data's categoricals, named for series ids (new series, with their own
    history but no embedding of their own) and calendar values (a month not trained on)."""
    unseen = {}
    for column in config.categoricals:
        mask = ~frame[column].astype(str).isin(known[column])
        if mask.any():
            unseen[column] = mask
    new_ids = [c for c in config.group_ids if c in unseen]
    if new_ids:
        series = frame.loc[np.logical_or.reduce([unseen.pop(c) for c in new_ids]), config.group_ids]
        series = series.drop_duplicates()
        log.warning(
            "%s: %d series are not in the training data (e.g. %s): the model knows no '%s' of "
            "theirs and forecasts them from their history and covariates alone",
            source_of(label),
            len(series),
            _examples(series),
            "', '".join(new_ids),
        )
    if config.date_column:
        dates = frame[config.date_column]
        for variable, column in calendar_columns(config).items():
            values = CALENDAR[variable](dates)
            new = [v for v in pd.unique(values) if str(v) not in known[column]]
            if new:
                log.warning(
                    "%s: calendar %s %s (%s) never occurs in the training data: the model reads "
                    "it as unknown",
                    source_of(label),
                    variable,
                    ", ".join(str(v) for v in sorted(new)[:_EXAMPLES]),
                    _rows_of(frame, values.isin(new), config),
                )
    if unseen:

        def quoted(values: list[str]) -> str:
            return ", ".join(repr(v) for v in values[:_EXAMPLES]) + ", ..." * (
                len(values) > _EXAMPLES
            )

        listed = "; ".join(
            f"{column} {quoted(list(frame.loc[mask, column].astype(str).unique()))} "
            f"({_rows_of(frame, mask, config)}; it knows {quoted(sorted(known[column]))})"
            for column, mask in unseen.items()
        )
        raise DataError(
            f"{source_of(label)}: categories the model never saw in training, which it would "
            f"read as missing values: {listed}; give values it was trained on, or train it on "
            "data that holds these."
        )


@dataclass
class PredictionInput:
    """New data ready for the model: its windows, the actual targets it holds, and the series
    ids as given (1, not the label '1' the model knows), by label, which the forecasts keep."""

    dataset: TimeSeriesDataSet
    actuals: pd.DataFrame
    given_ids: dict[str, dict[str, Any]]


def prepare_prediction(
    frame: pd.DataFrame,
    dataset_parameters: dict[str, Any],
    config: DataConfig,
    time_axis: TimeAxis | None,
    label: str = CHANNEL,
) -> PredictionInput:
    """Windows for the rows to forecast of every series in `frame`, checked (the job prepares
    its `forecast` channel with this before training)."""
    known = trained_labels(dataset_parameters, config)
    labelled = _with_training_labels(frame, known, config, label)
    given = {
        g: dict(
            pd.DataFrame({"label": labelled[g].astype(str), "given": frame[g]})
            .drop_duplicates("label")
            .itertuples(index=False)
        )
        for g in config.group_ids
        if g in frame.columns
    }
    prepared = prepare_frame(labelled, config, label, time_axis)
    refuse_duplicated_keys(prepared, config, label)
    actuals = prepared[[*config.group_ids, config.time_idx, config.target]]
    prepared = validate_frame(
        _future_rows(prepared, config, label),
        config,
        label,
        config.resolved_min_encoder_length + config.max_prediction_length,
    )
    refuse_unscaled_series(dataset_parameters, prepared, config, label, "the training data")
    new_categories(prepared, known, config, label)
    dataset = build_prediction_dataset(dataset_parameters, prepared, config)
    return PredictionInput(dataset, actuals, given)


def forecast_table(
    model: TemporalFusionTransformer,
    data: PredictionInput,
    config: DataConfig,
    quantiles: list[float],
    time_axis: TimeAxis | None,
    vectorised: bool,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    combination: Combination | None = None,
) -> pd.DataFrame:
    """The forecasts of `model` for prepared data, in the user's names and ids: what
    `predict` and the job's `forecast` channel write (`vectorised`: batches by gathers, as
    `speedups.batches_reason` decides); with the model's `combination`, the combination's,
    its classical members refitted on each series' history in `data`."""
    result = forecast(
        model,
        data.dataset,
        vectorised,
        batch_size=batch_size,
        device=device,
        unit=config.resolved_target_unit,
    )
    result.index = result.index.rename(columns=user_names(config))
    if combination is not None:
        result = apply(combination, result, data.actuals, config)
    out = to_frame(result, quantiles, config.time_idx)
    keys = [*config.group_ids, config.time_idx]
    actuals = data.actuals.astype({g: str for g in config.group_ids})
    out = out.astype({g: str for g in config.group_ids})
    out = out.merge(actuals.rename(columns={config.target: "actual"}), on=keys, how="left")
    for column, given in data.given_ids.items():
        out[column] = out[column].map(given)
    columns = [*keys, *(c for c in out.columns if c not in keys)]  # ids, time, forecasts
    if time_axis is not None and config.date_column:
        out[config.date_column] = _dates(out[config.time_idx], time_axis)
        columns.insert(len(keys), config.date_column)
    return out[columns]


def predict_frame(
    trained: TrainedModel, frame: pd.DataFrame, batch_size: int = 1024, device: str = "cpu"
) -> pd.DataFrame:
    """Forecasts for the rows to forecast of every series in `frame`."""
    config = trained.config
    data = prepare_prediction(frame, trained.dataset_parameters, config.data, trained.time_axis)
    return forecast_table(
        trained.model,
        data,
        config.data,
        config.model.quantiles,
        trained.time_axis,
        batches_reason(config.speedups, data.dataset) is None,
        batch_size,
        device,
        trained.combination,
    )


def _read(path: Path) -> pd.DataFrame:
    if path.is_dir():
        files = channel_files(path)
        if not files:
            raise DataError(f"--data {path} holds no parquet or CSV files.")
        return read_files(files, str(path), root=path)
    return read_files([path], str(path))


class UsageError(JobError):
    """A bad command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


def _check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: this machine has no CUDA GPU; use --device cpu.")
        if device.index is not None and device.index >= count:
            raise UsageError(
                f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: only cpu, cuda[:N] and mps are supported.")


def _check_args(args: argparse.Namespace) -> None:
    """Everything about the command line that can be checked before the model is loaded."""
    for option, path in (("--model", args.model), ("--data", args.data)):
        if not path.exists():
            raise UsageError(f"{option} {path} does not exist.")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    _check_device(args.device)
    output: Path = args.output
    if output.is_dir():
        raise UsageError(
            f"--output {output} is a directory: name a file, e.g. {output}/fc.parquet."
        )
    if output_format(output) is None:
        raise UsageError(
            f"--output {output}: unknown format {''.join(output.suffixes) or '(no extension)'}; "
            f"name a file ending in {', '.join(OUTPUT_FORMATS)}."
        )
    if output.exists() and not args.overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it.")
    folder = next(p for p in output.parents if p.exists())
    if not folder.is_dir():
        raise UsageError(f"--output {output}: {folder} is a file, not a folder.")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as err:
        raise UsageError(
            f"--output {output}: cannot write in {output.parent} ({err.strerror or err})."
        ) from None


def _load(path: Path) -> TrainedModel:
    try:
        return load_trained_model(path)
    except JobError:
        raise
    except (
        OSError,
        EOFError,
        tarfile.TarError,
        zlib.error,
        pickle.UnpicklingError,
        RuntimeError,
        ValueError,
        KeyError,
        TypeError,
    ) as err:  # a truncated archive, a corrupt checkpoint or configuration
        reason = " ".join(str(err).split())[:200]
        raise JobError(
            f"--model {path} cannot be read ({type(err).__name__}: {reason}): give a complete "
            "model.tar.gz or model directory written by a training job of this project."
        ) from None


def write_forecasts(forecasts: pd.DataFrame, output: Path, config: DataConfig) -> None:
    """Forecasts in the format `output`'s name ends in (`OUTPUT_FORMATS`), whole or not at
    all: a partial file never takes the output's name."""
    suffix = output_format(output)
    assert suffix is not None, output  # _check_args refuses other names; the job's is .parquet
    partial = output.with_name(f".{output.name}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT_FORMATS[suffix](forecasts, partial)
        os.replace(partial, output)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise JobError(f"Cannot write {output}: {err.strerror or err}.") from None
    series = forecasts[config.group_ids].drop_duplicates().shape[0]
    print(f"wrote {len(forecasts)} forecasts for {series} series to {output}", flush=True)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = _Parser(prog="python -m tft_sagemaker.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model dir or model.tar.gz")
    parser.add_argument("--data", type=Path, required=True, help="parquet/CSV file or folder")
    parser.add_argument(
        "--output", type=Path, required=True, help=f"forecasts ({', '.join(OUTPUT_FORMATS)})"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    try:
        args = parser.parse_args(argv)
        _check_args(args)
        frame = _read(args.data)
        trained = _load(args.model)
        forecasts = predict_frame(trained, frame, args.batch_size, args.device)
        write_forecasts(forecasts, args.output, trained.config.data)
    except JobError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if forecasts["actual"].notna().any():
        known = forecasts.dropna(subset=["actual"])
        print(
            f"MAE on the {len(known)} steps with actuals: "
            f"{np.abs(known['prediction'] - known['actual']).mean():.4g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
