"""The evaluation's classical fits, started before training.

After training, the host's first process fits ETS and Theta on two sets of histories: the
validation windows' (the baselines the shipped forecast is compared with, on a sample of them
on large panels) and, with ensemble=true, the backtest windows' (where the combination's weights
are chosen). The data alone fixes both: which windows there are, and so their histories and the
sample, follow from the datasets (`evaluate.window_keys`), not from the TFT's forecasts. So the
fits are started before training, in worker processes at a low priority on the cores the
training processes leave idle (`baselines.ClassicalFits`, `ahead`), and the evaluation takes
their results where the windows it forecast are those they were computed for: compared key by
key (every host's, for the sample is drawn over all of them); elsewhere it fits them itself,
as it would without this, and logs why. The forecasts are the same either way: each series is
fitted alone, on the same history.

The workers run at nice 10 in the job's own session (the kernel's autogroups share the CPU
per session, whatever the niceness): they take what the training leaves. Where training
leaves cores idle (a GPU host's training processes mostly wait on their GPUs), the fits can
end during training (not measured: no GPU was lent). On this project's 2-core CPU machine a
training process keeps both cores busy (its threads), so at 5 million rows with one process
the fits move from after training into its idle moments and little is gained (`make
bench-scale`, README's Large panels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pytorch_forecasting import TimeSeriesDataSet

from .baselines import CLASSICAL_MODELS, ClassicalFits, Fits, classical_sample, window_histories
from .combination import CLASSICAL_MEMBERS, classical_histories
from .config import DataConfig, JobConfig, job_season
from .dataset import user_names
from .evaluate import Keys, same_keys, series_index, window_keys, window_order
from .job_data import JobData
from .loaders import HostWindows
from .sagemaker.launch_plan import LaunchPlan
from .shares import Hosts

log = logging.getLogger(__name__)


def classical_windows(hosts: Sequence[Keys], node: int, max_series: int, seed: int) -> np.ndarray:
    """Which of host `node`'s validation windows (`hosts`: every host's window keys, in node
    order, each in its forecast's order) the classical baselines are fitted on: the sample one
    process draws from every window, in its order (on one host, the host's order)."""
    total = sum(len(times) for times, _ in hosts)
    if len(hosts) == 1:
        return classical_sample(total, max_series, seed)
    order = window_order(*(np.concatenate(k) for k in zip(*hosts, strict=True)))
    chosen = np.zeros(total, dtype=bool)
    chosen[order[classical_sample(total, max_series, seed)]] = True
    start = sum(len(hosts[n][0]) for n in range(node))
    return np.flatnonzero(chosen[start : start + len(hosts[node][0])])


def windows_index(dataset: TimeSeriesDataSet, keys: Keys, data: DataConfig) -> pd.DataFrame:
    """`Forecast.index` of windows with these keys, in the data's names."""
    return series_index(dataset, *keys).rename(columns=user_names(data))


def validation_histories(
    data: JobData, dataset: TimeSeriesDataSet, keys: Keys, config: DataConfig
) -> list[np.ndarray]:
    """The histories of the host's validation windows (`keys`, in its forecast's order)."""
    index = windows_index(dataset, keys, config)
    return window_histories(
        data.validation, index, config.group_ids, config.time_idx, config.target
    )


def classical_everywhere(config: JobConfig, backtest: HostWindows | None) -> bool:
    """Whether ETS and Theta forecast every validation window (members of the combination,
    which is then shipped for every window), not a sample of them: where the combination
    chooses among them (at most ensemble_max_series backtest windows on all hosts)."""
    return (
        backtest is not None
        and backtest.total <= config.training.ensemble_max_series
        and bool(CLASSICAL_MEMBERS)
    )


def backtest_histories(
    data: JobData, backtest: TimeSeriesDataSet, config: DataConfig
) -> tuple[Keys, int, list[np.ndarray]]:
    """The host's backtest windows' keys in one process's order, their longest horizon and
    their histories (the training rows before each)."""
    (times, codes), longest = window_keys(backtest)
    order = window_order(times, codes)
    keys = (times[order], codes[order])
    index = windows_index(backtest, keys, config)
    histories = window_histories(
        data.train, index, config.group_ids, config.time_idx, config.target
    )
    return keys, longest, histories


@dataclass
class Validation:
    """The validation baselines' fits, for the windows they assume."""

    hosts: list[Keys]  # every host's validation window keys, in node order
    horizon: int
    fit: np.ndarray  # the positions of this host's windows fitted
    fits: ClassicalFits


@dataclass
class Backtest:
    """The combination's classical members' fits on the backtest windows (ensemble=true)."""

    keys: Keys  # the backtest windows, in one process's order
    horizon: int
    fits: ClassicalFits


@dataclass
class FitsAhead:
    """What the host's first process started before training; each part is taken once."""

    validation: Validation | None
    backtest: Backtest | None

    def take_validation(self, hosts: list[Keys], horizon: int, fit: np.ndarray) -> Fits | None:
        """The fits of the validation windows `fit` (positions in this host's), where the
        evaluation's windows (every host's) are those assumed; else None (fit them now)."""
        ahead, self.validation = self.validation, None
        if ahead is None:
            return None
        if not (
            same_keys(ahead.hosts, hosts)
            and ahead.horizon == horizon
            and np.array_equal(ahead.fit, fit)
        ):
            return _not_taken(ahead.fits, "validation")
        return ahead.fits.result()

    def take_backtest(self, keys: Keys, horizon: int) -> Fits | None:
        """The backtest fits, where the windows (in one process's order) are those assumed."""
        ahead, self.backtest = self.backtest, None
        if ahead is None:
            return None
        if not (same_keys([ahead.keys], [keys]) and ahead.horizon == horizon):
            return _not_taken(ahead.fits, "backtest")
        return ahead.fits.result()


def _not_taken(fits: ClassicalFits, windows: str) -> None:
    log.warning(
        "classical fits: those started before training assumed other %s windows than the "
        "evaluation's; fitting them now",
        windows,
    )
    fits.cancel()


def start_fits_ahead(
    config: JobConfig,
    plan: LaunchPlan,
    hosts: Hosts,
    data: JobData | None,
    validation: TimeSeriesDataSet,
    backtest: TimeSeriesDataSet | None,
    backtest_windows: HostWindows | None,
) -> FitsAhead | None:
    """The host's first process (the one with `data`) starts the evaluation's classical fits,
    on the settled `config`; every host's first process takes part in the exchange of the
    validation windows' keys (the baselines' sample is drawn over all of them). None for the
    other processes, and where no core is idle."""
    if data is None:
        return None
    keys, horizon = window_keys(validation)
    gathered = hosts.gather("validation windows", (keys, horizon))
    every = [k for k, _ in gathered]
    horizon = max(h for _, h in gathered)
    season = job_season(config.data)
    everywhere = classical_everywhere(config, backtest_windows)
    fit = (
        np.arange(len(keys[0]))
        if everywhere
        else classical_windows(
            every, plan.node_rank, config.training.baseline_max_series, config.training.seed
        )
    )
    ahead = FitsAhead(None, None)
    if len(fit):
        histories = validation_histories(data, validation, keys, config.data)
        fits = ClassicalFits(
            list(CLASSICAL_MODELS), [histories[i] for i in fit], horizon, season, plan.devices, True
        )
        ahead.validation = Validation(every, horizon, fit, fits) if fits.started else None
    if everywhere:
        assert backtest is not None
        keys, longest, histories = backtest_histories(data, backtest, config.data)
        every_origin, _, _ = classical_histories(histories, longest, season)
        fits = ClassicalFits(
            list(CLASSICAL_MEMBERS), every_origin, longest, season, plan.devices, True
        )
        ahead.backtest = Backtest(keys, longest, fits) if fits.started else None
    return None if ahead.validation is None and ahead.backtest is None else ahead
