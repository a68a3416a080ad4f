"""What the trained Temporal Fusion Transformer looks at: variable importances and attention.

pytorch-forecasting's tutorial interprets a model with `interpret_output(out, reduction="sum")`
over the validation windows: per window, the variable selection weights (averaged over its
encoder and decoder steps) and the attention of the first forecast step over the encoder steps
(averaged over heads), summed over the windows. Every one of those sums adds up across
batches, so `InterpretationSum` takes them batch by batch, during the same forward pass that
scores the model (`evaluate.forecast(observe=...)`), in one process over all validation
windows: memory does not grow with the data, and under DDP it covers every rank's series.
The sums become shares at the end: each group's importances, and the attention over the
encoder steps, add up to 1 (the figures of `plot_interpretation`, as fractions).
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet

from .config import DataConfig
from .evaluate import decode_series

LARGEST_SERIES = 5  # series interpreted one by one
GROUPS = ("static_variables", "encoder_variables", "decoder_variables")
_SUMMED = (*GROUPS, "attention")


def series_names(frame: pd.DataFrame, group_ids: list[str]) -> pd.Series:
    """Each row's series as users name it (`report_series`): its group ids joined by '/'."""
    names = frame[group_ids[0]].astype(str)
    for column in group_ids[1:]:
        names = names + "/" + frame[column].astype(str)
    return names


def largest_totals(frame: pd.DataFrame, config: DataConfig, n: int = LARGEST_SERIES) -> pd.Series:
    """The `n` series with the largest total absolute target in `frame`, and their totals
    (ties: by name)."""
    keys = [frame[g] for g in config.group_ids]
    sums = frame[config.target].abs().groupby(keys, observed=True, sort=False).sum()
    names = series_names(sums.index.to_frame(index=False), config.group_ids)
    totals = pd.Series(sums.to_numpy(), index=names.to_numpy()).sort_index(kind="stable")
    return totals.nlargest(n, keep="first")


def largest_series(frame: pd.DataFrame, config: DataConfig, n: int = LARGEST_SERIES) -> list[str]:
    """The `n` series with the largest total absolute target in `frame`."""
    return largest_totals(frame, config, n).index.tolist()


def largest_of(parts: list[pd.Series], n: int = LARGEST_SERIES) -> list[str]:
    """The `n` largest of the series `largest_totals` found in parts of the data (hosts'
    shares; the same series in two parts counts once)."""
    totals = pd.concat(parts).sort_index(kind="stable")
    return totals[~totals.index.duplicated()].nlargest(n, keep="first").index.tolist()


def derived_variables(
    model: TemporalFusionTransformer, target: str, user_names: dict[str, str] | None = None
) -> dict[str, str]:
    """The model's inputs that are not columns of the data, and what they are."""
    meanings = {
        "relative_time_idx": "position relative to the forecast start",
        "encoder_length": "length of the window's history",
        f"{target}_center": "the series' target center (its normaliser)",
        f"{target}_scale": "the series' target scale (its normaliser)",
    }
    names = {*model.static_variables, *model.encoder_variables, *model.decoder_variables}
    names = {(user_names or {}).get(name, name) for name in names}
    return {name: meaning for name, meaning in meanings.items() if name in names}


def _shares(values: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Importances as shares summing to 1, largest first."""
    total = float(values.sum())
    pairs = [
        (name, round(float(v) / total, 6) if total > 0 else 0.0)
        for name, v in zip(names, values.tolist(), strict=True)
    ]
    return dict(sorted(pairs, key=lambda pair: -pair[1]))


def _attention(values: torch.Tensor) -> dict[str, list[float] | list[int]]:
    """Attention of the first forecast step by encoder step (-1 = the last observed step)."""
    total = float(values.sum())
    return {
        "relative_step": list(range(-len(values), 0)),
        "weight": [round(float(v) / total, 6) if total > 0 else 0.0 for v in values.tolist()],
    }


class InterpretationSum:
    """Sums `interpret_output(out, reduction="sum")` over batches, for all windows and for a
    few named series (`focus`, names as `series_names` makes them)."""

    def __init__(
        self,
        model: TemporalFusionTransformer,
        dataset: TimeSeriesDataSet,
        focus: list[str],
        target: str,
        names: dict[str, str] | None = None,
    ) -> None:
        """`names`: the user's name of each input the library knows by another name
        (dataset.user_names)."""
        self.model, self.target, self.names = model, target, names or {}
        self.windows = 0
        self.seconds = 0.0  # time spent here (the cost of interpreting)
        self.totals: dict[str, torch.Tensor] = {}
        # The encoded group ids of each focus series, to find its windows in a batch.
        codes = dataset.data["groups"][
            torch.as_tensor(dataset.index["index_start"].to_numpy(copy=True))
        ].long()  # as batches hold them (a dataset may store them narrower)
        names = series_names(decode_series(dataset, codes.numpy()), dataset.group_ids).tolist()
        first = {name: i for i, name in reversed(list(enumerate(names)))}
        self.focus = [name for name in focus if name in first]
        self.focus_codes = codes[[first[name] for name in self.focus]]
        self.focus_totals: list[dict[str, torch.Tensor]] = [{} for _ in self.focus]

    @staticmethod
    def _add(into: dict[str, torch.Tensor], interpretation: dict[str, torch.Tensor]) -> None:
        for name in _SUMMED:
            value = interpretation[name].detach().float()
            into[name] = into[name] + value if name in into else value

    def __call__(self, x: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
        started = time.perf_counter()
        self._add(self.totals, self.model.interpret_output(out, reduction="sum"))
        self.windows += len(x["decoder_lengths"])
        if self.focus:
            codes = self.focus_codes.to(x["groups"].device)
            matches = (x["groups"][:, None, :] == codes[None]).all(-1)
            for i in matches.any(0).nonzero().flatten().tolist():
                rows = matches[:, i].nonzero().flatten()
                self._add(self.focus_totals[i], self.model.interpret_output(out.iget(rows), "sum"))
        self.seconds += time.perf_counter() - started

    def state(self) -> dict[str, Any]:
        """The sums, to add to another process's (`add`): each sums its share of windows."""
        return {
            "windows": self.windows,
            "seconds": self.seconds,
            "totals": {k: v.cpu() for k, v in self.totals.items()},
            "focus": dict(zip(self.focus, self.focus_totals, strict=True)),
        }

    def add(self, state: dict[str, Any], focus: list[str]) -> None:
        """Another process's sums added to these (`focus`: the series interpreted one by one,
        in their order; each process has the windows of some of them)."""
        self.windows += state["windows"]
        self.seconds = max(self.seconds, state["seconds"])  # the processes ran side by side
        if state["totals"]:
            self._add(self.totals, state["totals"])
        mine = dict(zip(self.focus, self.focus_totals, strict=True))
        for name, totals in state["focus"].items():
            if totals:  # a series of whose windows that process interpreted some
                self._add(mine.setdefault(name, {}), {k: v.cpu() for k, v in totals.items()})
        self.focus = [name for name in focus if name in mine]
        self.focus_totals = [mine[name] for name in self.focus]

    def _describe(self, totals: dict[str, torch.Tensor]) -> dict[str, Any]:
        variables = {
            group: [self.names.get(v, v) for v in getattr(self.model, group)] for group in GROUPS
        }
        described: dict[str, Any] = {
            group: _shares(totals[group].cpu(), variables[group]) for group in GROUPS
        }
        described["attention"] = _attention(totals["attention"].cpu())
        return described

    def result(self) -> dict[str, Any]:
        """The JSON of interpretation.json."""
        if not self.windows:
            raise ValueError("no batch was interpreted")
        return {
            "method": 'pytorch-forecasting interpret_output(reduction="sum") over the validation '
            "windows; shares per group sum to 1; attention of the first forecast step",
            "windows": self.windows,
            **self._describe(self.totals),
            "derived_variables": derived_variables(self.model, self.target, self.names),
            "largest_series": [
                {"series": name, **self._describe(totals)}
                for name, totals in zip(self.focus, self.focus_totals, strict=True)
                if totals
            ],
        }
