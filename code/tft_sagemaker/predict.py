"""Quantile forecasts from a trained model, for new data.

    python -m tft_sagemaker.predict --model model.tar.gz --data new.parquet --output fc.parquet

`--model` is the job's model directory or SageMaker's model.tar.gz. `--data` is a file or a
folder of parquet/CSV files with each series' history followed by the `max_prediction_length`
steps to forecast: known covariates filled in, the target (and past-only columns) left empty.
Given complete data instead, it forecasts the last steps of each series and adds the actuals,
which is how the job's validation metrics are reproduced.

Output: one row per (series, forecast step) with the group ids, the time index (and date),
`horizon`, `prediction` (the median), one column per quantile (`q0.1`, ...) and `actual`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet

from .artifacts import TrainedModel, load_trained_model
from .config import DataConfig
from .console import setup_logging
from .data import TimeAxis, channel_files, prepare_frame, read_files, validate_frame
from .errors import DataError, JobError
from .evaluate import forecast, to_frame


def _fill_future(frame: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """Zero the target and past-only reals on the rows to forecast (they are not model inputs
    there); an empty target anywhere else is an error."""
    unknown = frame[config.target].isna()
    if not unknown.any():
        return frame
    last = frame.groupby(config.group_ids, observed=True)[config.time_idx].transform("max")
    future = frame[config.time_idx] > last - config.max_prediction_length
    if (unknown & ~future).any():
        raise DataError(
            f"{int((unknown & ~future).sum())} row(s) have an empty target '{config.target}' "
            f"outside the last {config.max_prediction_length} steps of their series."
        )
    frame = frame.copy()
    past_only = [c for c in config.time_varying_unknown_reals if c in frame.columns]
    frame.loc[unknown, list(dict.fromkeys([config.target, *past_only]))] = 0.0
    return frame


def _dates(time_idx: pd.Series, axis: TimeAxis) -> pd.Series:
    grid = pd.date_range(axis.origin, periods=int(time_idx.max()) + 1, freq=axis.freq)
    return pd.Series(grid[time_idx.to_numpy()], index=time_idx.index)


@dataclass
class PredictionInput:
    """New data ready for the model: its windows, and the actual targets it holds."""

    dataset: TimeSeriesDataSet
    actuals: pd.DataFrame


def prepare_prediction(
    frame: pd.DataFrame,
    dataset_parameters: dict[str, Any],
    config: DataConfig,
    time_axis: TimeAxis | None,
    label: str = "the prediction data",
) -> PredictionInput:
    """Windows for the last `max_prediction_length` steps of every series in `frame`, checked
    (the job prepares its `forecast` channel with this before training)."""
    prepared = prepare_frame(frame, config, label, time_axis)
    actuals = prepared[[*config.group_ids, config.time_idx, config.target]]
    prepared = validate_frame(
        _fill_future(prepared, config),
        config,
        label,
        config.resolved_min_encoder_length + 1,
    )
    dataset = TimeSeriesDataSet.from_parameters(
        dataset_parameters, prepared, predict=True, stop_randomization=True
    )
    return PredictionInput(dataset, actuals)


def forecast_table(
    model: TemporalFusionTransformer,
    data: PredictionInput,
    config: DataConfig,
    quantiles: list[float],
    time_axis: TimeAxis | None,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """The forecasts of `model` for prepared data: what `predict` and the job's `forecast`
    channel write."""
    result = forecast(model, data.dataset, batch_size=batch_size, device=device)
    out = to_frame(result, quantiles, config.time_idx)
    keys = [*config.group_ids, config.time_idx]
    actuals = data.actuals
    for column in config.group_ids:  # decoded ids come back as plain values
        out[column] = out[column].astype(str)
        actuals = actuals.assign(**{column: actuals[column].astype(str)})
    out = out.merge(actuals.rename(columns={config.target: "actual"}), on=keys, how="left")
    if time_axis is not None and config.date_column:
        out.insert(
            len(config.group_ids) + 1,
            config.date_column,
            _dates(out[config.time_idx], time_axis),
        )
    return out


def predict_frame(
    trained: TrainedModel, frame: pd.DataFrame, batch_size: int = 1024, device: str = "cpu"
) -> pd.DataFrame:
    """Forecasts for the last `max_prediction_length` steps of every series in `frame`."""
    config = trained.config
    data = prepare_prediction(frame, trained.dataset_parameters, config.data, trained.time_axis)
    return forecast_table(
        trained.model,
        data,
        config.data,
        config.model.quantiles,
        trained.time_axis,
        batch_size,
        device,
    )


def write_forecasts(forecasts: pd.DataFrame, path: Path, config: DataConfig) -> None:
    """Forecasts to parquet, whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    forecasts.to_parquet(partial, index=False)
    os.replace(partial, path)
    series = forecasts[config.group_ids].drop_duplicates().shape[0]
    print(f"wrote {len(forecasts)} forecasts for {series} series to {path}", flush=True)


def _read(path: Path) -> pd.DataFrame:
    if path.is_dir():
        files = channel_files(path)
        if not files:
            raise DataError(f"{path} holds no parquet or CSV files.")
        return read_files(files, str(path))
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    return read_files([path], str(path))


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(
        prog="python -m tft_sagemaker.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", type=Path, required=True, help="model dir or model.tar.gz")
    parser.add_argument("--data", type=Path, required=True, help="parquet/CSV file or folder")
    parser.add_argument("--output", type=Path, required=True, help="forecasts (.parquet)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.overwrite:
        parser.error(f"{args.output} exists; pass --overwrite to replace it")
    try:
        trained = load_trained_model(args.model)
        forecasts = predict_frame(trained, _read(args.data), args.batch_size, args.device)
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_forecasts(forecasts, args.output, trained.config.data)
    if forecasts["actual"].notna().any():
        known = forecasts.dropna(subset=["actual"])
        print(
            f"MAE on the {len(known)} steps with actuals: "
            f"{np.abs(known['prediction'] - known['actual']).mean():.4g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
