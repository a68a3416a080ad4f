"""The report's figures, as PNG bytes, drawn from the saved report data alone.

Matplotlib's object API with the Agg canvas: no pyplot state, no display, no backend to pick.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
_BLUE, _GREY = "#1f6fb4", "#555555"


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def importance(title: str, shares: Mapping[str, float]) -> bytes:
    """Horizontal bars, largest on top, each labelled with its percentage."""
    names = list(shares)[::-1]
    values = np.array([shares[n] for n in names]) * 100
    figure = Figure(figsize=(7, 1.2 + 0.32 * max(len(names), 1)), layout="constrained")
    ax = figure.add_subplot()
    bars = ax.barh(np.arange(len(names)), values, color=_BLUE)
    ax.set_yticks(np.arange(len(names)), names)
    ax.bar_label(bars, [f"{v:.1f}%" for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max(values.max(initial=0) * 1.18, 1))
    ax.set_xlabel("importance (%)")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def attention(steps: Sequence[int], weights: Sequence[float], title: str) -> bytes:
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(steps, np.asarray(weights) * 100, marker="o", markersize=3, color=_BLUE)
    ax.set_xlabel("encoder step (-1 = last observed)")
    ax.set_ylabel("attention (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _png(figure)


def training_curve(history: Sequence[Mapping[str, Any]], baseline_mae: float | None) -> bytes:
    """Losses and validation MAE by epoch, the best epoch (lowest val_loss) marked."""
    frame = pd.DataFrame(list(history))
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    losses, mae = figure.subplots(1, 2)
    for name, style in (("train_loss", "--"), ("val_loss", "-")):
        if name in frame:
            losses.plot(frame["epoch"], frame[name], style, marker="o", markersize=3, label=name)
    if "val_loss" in frame and frame["val_loss"].notna().any():
        best = frame.loc[frame["val_loss"].idxmin(), "epoch"]
        for ax in (losses, mae):
            ax.axvline(best, color=_GREY, alpha=0.4, linewidth=1)
    losses.set_title("loss (quantile loss)")
    if "val_MAE" in frame:
        mae.plot(frame["epoch"], frame["val_MAE"], marker="o", markersize=3, label="model")
    if baseline_mae is not None:
        mae.axhline(baseline_mae, color="#c0392b", linestyle=":", label="naive (last value)")
    mae.set_title("validation MAE")
    for ax in (losses, mae):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(figure)


def forecast(series: Mapping[str, Any], title: str) -> bytes:
    """History, actuals and the forecast's quantile bands (outermost palest) for one series."""
    history, horizon = series["history"], series["forecast"]
    dated = series.get("dates", False)

    def axis(values: list[Any]) -> np.ndarray:
        return pd.to_datetime(values, format="ISO8601").to_numpy() if dated else np.asarray(values)

    x_past, x_future = axis(history["x"]), axis(horizon["x"])
    quantiles = {float(q): np.asarray(v, dtype=float) for q, v in horizon["quantiles"].items()}
    levels = sorted(quantiles)
    figure = Figure(figsize=(8, 3.4), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(x_past, history["y"], color="black", linewidth=1.2, label="history")
    pairs = [(lo, hi) for lo, hi in zip(levels, levels[::-1], strict=True) if lo < hi]
    for i, (lo, hi) in enumerate(pairs):
        ax.fill_between(
            x_future,
            quantiles[lo],
            quantiles[hi],
            color=_BLUE,
            alpha=0.12 + 0.5 * i / max(len(pairs), 1),
            linewidth=0,
            label=f"{lo:g}-{hi:g} quantiles",
        )
    ax.plot(x_future, quantiles[0.5], color=_BLUE, marker="o", markersize=3, label="median")
    actual = np.asarray(horizon["actual"], dtype=float)
    if np.isfinite(actual).any():
        ax.plot(x_future, actual, color="black", linestyle="--", marker="x", label="actual")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncols=3)
    if dated:
        figure.autofmt_xdate()
    return _png(figure)
