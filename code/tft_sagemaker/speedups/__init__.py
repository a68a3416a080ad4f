"""The speed-up layer: parts of pytorch-forecasting, Lightning and torch replaced by faster
equivalents, each switched on in one place (`engage`) and reported in one log line.

| lever (hyperparameter)   | replaces                                    | module                |
| fast_batches             | per-window __getitem__ + _collate_fn        | batches.py            |
| fused_variable_selection | VariableSelectionNetwork's per-variable ops | variable_selection.py |
| fast_embedding_bags      | the summing EmbeddingBag's CPU kernel       | embedding_bags.py     |
| fast_dropout             | F.dropout's per-element CPU mask draws      | dropout.py            |
| flat_gradients           | per-tensor zeroing and norm clipping        | gradients.py          |
| allocator_thresholds     | glibc's adaptive mmap/trim thresholds       | allocator.py          |
| static_shapes (GPUs)     | the training step's data-dependent shapes   | static_shapes.py      |

Each lever has a switch (`SpeedupConfig`, the [speedups] hyperparameters) and a guard
(guards.py: the library versions it was tested with, and a probe of the structure it replaces).
A lever that is switched on but whose guard fails, or that finds nothing to apply to, leaves the
library's path in place and says why. What each buys: bench/results/ablation.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import lightning.pytorch as pl
from pytorch_forecasting import TimeSeriesDataSet
from torch import nn

from ..config import SpeedupConfig
from .allocator import keep_freed_memory
from .batches import batches_guard, unsupported_reason
from .dropout import dropout_guard, use_fast_dropout
from .embedding_bags import embedding_bags_guard, use_count_matmul
from .gradients import FlatGradientHooks, flat_gradients_guard
from .static_shapes import (
    StaticShapeHooks,
    choose_compile_mode,
    static_shapes_guard,
    unsupported_model,
)
from .variable_selection import fuse_variable_selection, variable_selection_guard

__all__ = [
    "CPU_LEVERS",
    "GPU_LEVERS",
    "GUARDS",
    "LEVERS",
    "Outcome",
    "Report",
    "batches_reason",
    "engage",
]

# The switches (compile_mode is a setting of static_shapes); GPU_LEVERS act on GPUs only.
LEVERS = tuple(f.name for f in dataclasses.fields(SpeedupConfig) if isinstance(f.default, bool))
GPU_LEVERS = ("static_shapes",)
CPU_LEVERS = tuple(lever for lever in LEVERS if lever not in GPU_LEVERS)
# What each lever that reaches into a library checks first (the allocator's checks are its own).
GUARDS: dict[str, Callable[[], str | None]] = {
    "fast_batches": batches_guard,
    "fused_variable_selection": variable_selection_guard,
    "fast_embedding_bags": embedding_bags_guard,
    "fast_dropout": dropout_guard,
    "flat_gradients": flat_gradients_guard,
    "static_shapes": static_shapes_guard,
}


@dataclass(frozen=True)
class Outcome:
    state: str  # "engaged", "fell back" (the library's path runs) or "off"
    note: str = ""  # engaged: what it applies to; otherwise why not


@dataclass
class Report:
    """What `engage` did, lever by lever."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    # Per dataset given to `engage`: whether its batches are assembled by WindowBatcher.
    vectorised: dict[str, bool] = field(default_factory=dict)

    def line(self) -> str:
        """`speed-ups engaged: a, b (note); fell back: c (why); off: d (why)`."""
        parts = []
        for state in ("engaged", "fell back", "off"):
            levers = [
                f"{name} ({outcome.note})" if outcome.note else name
                for name, outcome in self.outcomes.items()
                if outcome.state == state
            ]
            if levers or state == "engaged":
                parts.append(f"{state}: {', '.join(levers) or 'none'}")
        return "speed-ups " + "; ".join(parts)


def _counted(count: int, what: str, missing: str) -> Outcome:
    """Engaged on `count` `what`s, or off: `missing`."""
    if not count:
        return Outcome("off", missing)
    return Outcome("engaged", f"{count} {what}{'' if count == 1 else 's'}")


def batches_reason(switches: SpeedupConfig, dataset: TimeSeriesDataSet) -> str | None:
    """None when `dataset`'s batches are assembled by gathers (`fast_batches`); else why they
    come window by window from the library. `engage` decides the job's datasets with it, and
    `predict` a prediction dataset."""
    return "fast_batches=false" if not switches.fast_batches else unsupported_reason(dataset)


def engage(
    switches: SpeedupConfig,
    model: nn.Module,
    trainer: pl.Trainer | None = None,
    datasets: Mapping[str, TimeSeriesDataSet] | None = None,
) -> Report:
    """Apply every lever that is switched on and whose guard passes, in place.

    `model`: the TFT (module levers; flat gradients need `FlatGradientHooks` in its class).
    `trainer`: given in a training process (flat gradients, allocator).
    `datasets`: by name, those the loaders will batch: `Report.vectorised` says how.
    """
    report = Report()
    reasons = {name: batches_reason(switches, d) for name, d in (datasets or {}).items()}
    report.vectorised = {name: reason is None for name, reason in reasons.items()}

    def lever(name: str, apply: Callable[[], Outcome], idle: str | None = None) -> None:
        """`idle`: why the lever has nothing to do here (before its guard runs)."""
        if not getattr(switches, name):
            report.outcomes[name] = Outcome("off", f"{name}=false")
        elif idle:
            report.outcomes[name] = Outcome("off", idle)
        elif reason := GUARDS.get(name, lambda: None)():
            report.outcomes[name] = Outcome("fell back", reason)
        else:
            report.outcomes[name] = apply()

    def batches() -> Outcome:
        refused = [f"{name}: {why}" for name, why in reasons.items() if why]
        if len(refused) == len(reasons):
            return Outcome("fell back", "; ".join(refused))
        return Outcome("engaged", "; ".join(f"per window for {r}" for r in refused))

    def gradients() -> Outcome:
        if not isinstance(model, FlatGradientHooks):
            return Outcome("fell back", f"{type(model).__name__} has no FlatGradientHooks")
        model.flat_gradients_on = True
        return Outcome("engaged")

    def static_shapes(device: str) -> Outcome:
        if reason := unsupported_model(model):
            return Outcome("fell back", reason)
        if not isinstance(model, StaticShapeHooks):
            return Outcome("fell back", f"{type(model).__name__} has no StaticShapeHooks")
        choice = choose_compile_mode(switches.compile_mode, device)
        model.static_shapes_on, model.compile_mode = True, choice.value
        return Outcome("engaged", str(choice))

    def allocator() -> Outcome:
        reason = keep_freed_memory()
        return Outcome("fell back", reason) if reason else Outcome("engaged")

    if datasets:
        lever("fast_batches", batches)
    lever(
        "fused_variable_selection",
        lambda: _counted(fuse_variable_selection(model), "network", "no variable selection"),
    )
    lever(
        "fast_embedding_bags",
        lambda: _counted(use_count_matmul(model), "bag", "no summing embedding bag"),
    )
    lever("fast_dropout", lambda: _counted(use_fast_dropout(model), "module", "no dropout"))
    if trainer is not None:
        lever("flat_gradients", gradients)
        lever("allocator_thresholds", allocator)
        device = trainer.strategy.root_device.type
        on_cpu = None if device == "cuda" else f"{device}: the library's step"
        lever("static_shapes", lambda: static_shapes(device), idle=on_cpu)
    return report
