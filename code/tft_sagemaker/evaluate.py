"""Forecasts and metrics for whole datasets.

`forecast()` forecasts a dataset's windows (or one process's share of them) with the model and
the naive Baseline: the final evaluation (of the best checkpoint and of the naive Baseline, on
the same validation windows) and the `predict` command both go through it. Lightning's
`predict()` is not used: under DDP it returns only the calling rank's share. In the final
evaluation every process forecasts its share, and `Forecast.concat` / `Forecast.order` put the
shares together in the order one process forecasts the whole dataset in (job.evaluate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting import Baseline, TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.metrics import MAE, RMSE, SMAPE, QuantileLoss
from torch.nn.utils import rnn

from .loaders import LoaderSettings, make_loader

Keys = tuple[np.ndarray, np.ndarray]  # `Forecast.keys`: first forecast steps, series codes


@dataclass
class Forecast:
    """Per window: the index (groups, first predicted time), quantiles (windows, horizon, q),
    actuals and the horizon length of each window; values in the data's unit, which is `unit`
    times the model's (`units.py`)."""

    index: pd.DataFrame
    quantiles: torch.Tensor
    baseline: torch.Tensor
    actuals: torch.Tensor
    lengths: torch.Tensor
    codes: torch.Tensor  # each window's encoded series ids (the dataset's order sorts by them)
    unit: float = 1.0

    def take(self, rows: np.ndarray) -> Forecast:
        rows_tensor = torch.as_tensor(rows, dtype=torch.long)
        return Forecast(
            self.index.iloc[rows].reset_index(drop=True),
            *(t[rows_tensor] for t in (self.quantiles, self.baseline, self.actuals)),
            self.lengths[rows_tensor],
            self.codes[rows_tensor],
            self.unit,
        )

    @staticmethod
    def concat(parts: list[Forecast]) -> Forecast:
        """The parts (processes' shares of the windows) one after the other (`order` then gives
        the order one process forecasts them in)."""
        horizon = max(p.quantiles.shape[1] for p in parts)
        return Forecast(
            pd.concat([p.index for p in parts], ignore_index=True),
            *(_padded([getattr(p, k) for p in parts], horizon) for k in _PADDED),
            torch.cat([p.lengths for p in parts]),
            torch.cat([p.codes for p in parts]),
            parts[0].unit,
        )

    @property
    def keys(self) -> Keys:
        """What `window_order` sorts by: first forecast steps and series codes."""
        return self.index.iloc[:, 0].to_numpy(), self.codes.numpy()

    def order(self) -> np.ndarray:
        return window_order(*self.keys)


def window_order(times: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Windows in the order of one process's forecast of a whole dataset: by series codes,
    then first forecast step."""
    # np.lexsort sorts by its last key first: the first id, ..., the last id, the time.
    return np.lexsort([times, *(codes[:, i] for i in reversed(range(codes.shape[1])))])


_PADDED = ("quantiles", "baseline", "actuals")


def window_keys(dataset: TimeSeriesDataSet) -> tuple[Keys, int]:
    """The `Forecast.keys` that `forecast` gives for every window of `dataset` (in its order),
    and the longest horizon, from the dataset alone, as the library's `__getitem__` computes
    them: each window's last time less its decoder length, and its first row's series codes.
    What is computed from them ahead of a forecast is used only where the forecast's keys are
    these (`same_keys`)."""
    index, time = dataset.index, dataset.data["time"].numpy()
    last = time[index["index_end"].to_numpy()].astype(np.int64)  # may be stored narrow
    lengths = dataset.calculate_decoder_length(last, index["sequence_length"].to_numpy())
    codes = dataset.data["groups"].numpy()[index["index_start"].to_numpy()].astype(np.int64)
    return (last - lengths + 1, codes), int(np.max(lengths, initial=0))


def same_keys(a: Sequence[Keys], b: Sequence[Keys]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x, y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)
    )


def _padded(parts: list[torch.Tensor], horizon: int) -> torch.Tensor:
    """The parts along the windows, each padded with zeros to `horizon` steps."""
    return torch.cat(
        [
            torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, horizon - p.shape[1]))
            for p in parts
        ]
    )


def _batches(
    dataset: TimeSeriesDataSet,
    vectorised: bool,
    batch_size: int,
    device: torch.device,
    share: tuple[int, int] = (0, 1),
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    settings = LoaderSettings(
        batch_size=batch_size,
        val_batch_size=batch_size,
        rank=share[0],
        world_size=share[1],
        seed=0,
        num_workers=0,
        device=device,
        threads_per_process=1,
    )
    for x, (target, _weight) in make_loader(dataset, settings, train=False, vectorised=vectorised):
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in x.items()}, target


def decode_series(dataset: TimeSeriesDataSet, codes: np.ndarray) -> pd.DataFrame:
    """The series ids of rows of encoded group ids (`x["groups"]`), through the encoders' own
    value → code tables rather than `dataset.x_to_index`: series the training data did not
    hold (a validation channel's new series) get codes past those `x_to_index` decodes (the
    library's NaNLabelEncoder, refitted with add_nan, numbers them one too high for its
    `inverse_transform`: "KeyError: New unknown values detected")."""
    index = {}
    for i, name in enumerate(dataset.group_ids):
        classes = dataset.get_transformer(name, group_id=True).classes_
        ids = {code: value for value, code in classes.items()}
        index[name] = [ids[code] for code in codes[:, i]]
    return pd.DataFrame(index)


def series_index(dataset: TimeSeriesDataSet, times: np.ndarray, codes: np.ndarray) -> pd.DataFrame:
    """Windows' series ids and first forecast steps (`Forecast.index`) from their first forecast
    steps and encoded group ids (`Forecast.keys`)."""
    index = decode_series(dataset, codes)
    index.insert(0, dataset.time_idx, times)
    return index


def _series_index(dataset: TimeSeriesDataSet, x: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Each window's series ids and first forecast step."""
    return series_index(
        dataset, x["decoder_time_idx"][:, 0].cpu().numpy(), x["groups"].cpu().numpy()
    )


# Sees each batch's input and the model's raw output (interpret.py sums the interpretation).
BatchObserver = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None]


@torch.no_grad()
def forecast(
    model: TemporalFusionTransformer,
    dataset: TimeSeriesDataSet,
    vectorised: bool,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    observe: BatchObserver | None = None,
    unit: float = 1.0,
    share: tuple[int, int] = (0, 1),
) -> Forecast:
    """The model's forecasts of every window of `dataset`, in the data's unit: `unit` is the
    target unit the dataset was built with (`DataConfig.resolved_target_unit`). `share` (i, n):
    only the i-th of n contiguous parts of the windows (a process among its host's)."""
    device = torch.device(device)
    model = model.to(device).eval()
    baseline = Baseline()
    index, quantiles, naive, actuals, lengths, codes = [], [], [], [], [], []
    for x, target in _batches(dataset, vectorised, batch_size, device, share):
        out = model(x)
        if observe is not None:
            observe(x, out)
        quantiles.append(model.to_quantiles(out).float().cpu())
        naive.append(baseline(x)["prediction"].float().cpu())
        actuals.append(target.float().cpu())
        lengths.append(x["decoder_lengths"].cpu())
        codes.append(x["groups"].cpu())
        index.append(_series_index(dataset, x))
    horizon = max(q.shape[1] for q in quantiles)
    return Forecast(
        index=pd.concat(index, ignore_index=True),
        quantiles=_padded(quantiles, horizon) * unit,
        baseline=_padded(naive, horizon) * unit,
        actuals=_padded(actuals, horizon) * unit,
        lengths=torch.cat(lengths),
        codes=torch.cat(codes),
        unit=unit,
    )


def _target(result: Forecast, unit: float = 1.0) -> torch.Tensor | rnn.PackedSequence:
    """Actuals (divided by `unit`) as pytorch-forecasting's metrics take them: packed when
    horizons differ."""
    actuals = result.actuals / unit
    if bool((result.lengths < result.actuals.shape[1]).any()):
        return rnn.pack_padded_sequence(
            actuals, result.lengths, batch_first=True, enforce_sorted=False
        )
    return actuals


def score(result: Forecast, quantiles: list[float]) -> dict[str, float]:
    """MAE / SMAPE / RMSE of the median and the quantile loss, for the model and the Baseline,
    computed by pytorch-forecasting's own metrics (so they match the logged val_* values), in
    the data's unit; SMAPE, which has none, in the model's, as in training: the library adds
    1e-8 to its denominator, which would dominate values below about 1e-6."""
    median = result.quantiles[..., quantiles.index(0.5)]
    target = _target(result)
    baseline_quantiles = result.baseline.unsqueeze(-1).expand(-1, -1, len(quantiles))
    metrics = {}
    for prefix, point, q in (
        ("", median, result.quantiles),
        ("baseline_", result.baseline, baseline_quantiles),
    ):
        metrics[f"{prefix}val_MAE"] = float(MAE()(point, target))
        metrics[f"{prefix}val_SMAPE"] = float(
            SMAPE()(point / result.unit, _target(result, result.unit))
        )
        metrics[f"{prefix}val_RMSE"] = float(RMSE()(point, target))
        metrics[f"{prefix}val_quantile_loss"] = float(QuantileLoss(quantiles)(q, target))
    metrics["validation_windows"] = len(result.index)
    metrics["validation_points"] = int(result.lengths.sum())
    return metrics


def window_errors(result: Forecast, quantiles: list[float]) -> np.ndarray:
    """Each window's MAE of the median over its forecast steps."""
    median = result.quantiles[..., quantiles.index(0.5)]
    steps = torch.arange(median.shape[1])[None, :] < result.lengths[:, None]
    errors = ((median - result.actuals).abs() * steps).sum(1) / result.lengths
    return errors.numpy()


def to_frame(result: Forecast, quantiles: list[float], time_idx: str) -> pd.DataFrame:
    """One row per (series, forecast step): index columns, horizon, median, quantiles."""
    n, horizon = result.quantiles.shape[:2]
    steps = np.arange(horizon)
    valid = (steps[None, :] < result.lengths.numpy()[:, None]).ravel()
    frame = result.index.loc[np.repeat(np.arange(n), horizon)].reset_index(drop=True)
    frame[time_idx] = frame[time_idx].to_numpy() + np.tile(steps, n)
    frame.insert(len(frame.columns), "horizon", np.tile(steps + 1, n))
    flat = result.quantiles.reshape(n * horizon, -1).numpy()
    frame["prediction"] = flat[:, quantiles.index(0.5)]
    for i, q in enumerate(quantiles):
        frame[f"q{q:g}"] = flat[:, i]
    return frame[valid].reset_index(drop=True)
