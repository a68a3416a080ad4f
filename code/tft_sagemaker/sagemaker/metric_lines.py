"""Metric lines that SageMaker can read, and the one list of regexes that reads them.

SageMaker (CloudWatch metrics, hyperparameter tuning) extracts metrics with regexes over the
job log. Progress bars cannot be parsed, so rank 0 prints one plain line per epoch:

    [metrics] epoch=3 train_loss=41.2 val_loss=38.9 val_MAE=270.1 ... elapsed_s=12.4

and, after the final evaluation, one line with the `final_*` figures and the baselines'.
`METRIC_DEFINITIONS` is the single source of truth for the estimator's `metric_definitions`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

PREFIX = "[metrics]"

# Per-epoch metrics, in the order they are printed.
EPOCH_METRICS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_MAE",
    "val_SMAPE",
    "val_RMSE",
    "lr",
    "elapsed_s",
)
# Printed once, after training, from the evaluation of the shipped forecast (the combination
# with ensemble=true, else the TFT: final_val_*), of the TFT alone (tft_*) and of the baselines
# (baselines.py) on the validation windows; baseline_margin < 0 and beats_baselines=1 when the
# shipped forecast beats them all (tft_*: the TFT alone); weight_*: the combination's weights.
# (With ensemble=true the per-epoch val_* are the TFT's on the backtest windows it early-stops on.)
FINAL_METRICS = (
    "final_val_MAE",
    "final_val_SMAPE",
    "final_val_RMSE",
    "final_val_quantile_loss",
    "final_val_MASE",
    "tft_val_MAE",
    "tft_val_quantile_loss",
    "tft_val_MASE",
    "tft_baseline_margin",
    "tft_beats_baselines",
    "weight_tft",
    "baseline_val_MAE",
    "baseline_val_MASE",
    "seasonal_naive_val_MAE",
    "ets_val_MAE",
    "theta_val_MAE",
    "baseline_margin",
    "beats_baselines",
)

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

METRIC_DEFINITIONS: list[dict[str, str]] = [
    # The leading space keeps "val_MAE" from matching inside "final_val_MAE".
    {"Name": name, "Regex": rf"(?:^|\s){name}={_NUMBER}"}
    for name in EPOCH_METRICS + FINAL_METRICS
]


def format_metric_line(values: Mapping[str, float | int | None]) -> str:
    """One `[metrics] k=v ...` line; missing or non-finite values are left out."""
    parts = [PREFIX]
    for name, value in values.items():
        if value is None:
            continue
        value = float(value)
        if not math.isfinite(value):
            continue
        parts.append(f"{name}={int(value)}" if name == "epoch" else f"{name}={value:.6g}")
    return " ".join(parts)
