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

At 5 million rows, one process on 2 cores, the baselines' fits of the 500 sampled series took
4.6 s after training (of 11 s), and ran during preparation and training instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pytorch_forecasting import TimeSeriesDataSet

from .baselines import CLASSICAL_MODELS, ClassicalFits, Fits, classical_sample, window_histories
from .combination import CLASSICAL_MEMBERS, classical_histories
from .config import DataConfig, job_season
from .dataset import user_names
from .evaluate import Keys, same_keys, series_index, window_keys, window_order

if TYPE_CHECKING:
    from .job import Job

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


def validation_histories(job: Job, keys: Keys) -> list[np.ndarray]:
    """The histories of this host's validation windows (`keys`, in its forecast's order)."""
    assert job.data is not None  # the host's first process
    data = job.config.data
    index = windows_index(job.validation, keys, data)
    return window_histories(job.data.validation, index, data.group_ids, data.time_idx, data.target)


def classical_everywhere(job: Job) -> bool:
    """Whether ETS and Theta forecast every validation window (members of the combination,
    which is then shipped for every window), not a sample of them: where the combination
    chooses among them (`choose_on_backtest`: at most ensemble_max_series backtest windows)."""
    return (
        job.backtest is not None
        and len(job.backtest) <= job.config.training.ensemble_max_series
        and bool(CLASSICAL_MEMBERS)
    )


@dataclass
class Validation:
    """The validation baselines' fits, for the windows they assume."""

    hosts: list[Keys]  # every host's validation window keys, in node order
    horizon: int
    everywhere: bool
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
    """What the host's first process started before training (None: nothing to start)."""

    validation: Validation | None
    backtest: Backtest | None

    def take_validation(self, hosts: list[Keys], horizon: int, everywhere: bool) -> Fits | None:
        """The validation baselines' fits, where the evaluation's windows are those assumed."""
        ahead, self.validation = self.validation, None
        if ahead is None:
            return None
        if not (
            same_keys(ahead.hosts, hosts)
            and (ahead.horizon, ahead.everywhere) == (horizon, everywhere)
        ):
            log.warning(
                "classical fits: those started before training assumed other validation "
                "windows than the evaluation's; fitting them now"
            )
            ahead.fits.cancel()
            return None
        return ahead.fits.result()

    def take_backtest(self, keys: Keys, horizon: int) -> Fits | None:
        """The backtest fits, where the windows (in one process's order) are those assumed."""
        ahead, self.backtest = self.backtest, None
        if ahead is None:
            return None
        if not (same_keys([ahead.keys], [keys]) and ahead.horizon == horizon):
            log.warning(
                "classical fits: those started before training assumed other backtest windows "
                "than the evaluation's; fitting them now"
            )
            ahead.fits.cancel()
            return None
        return ahead.fits.result()

    def cancel(self) -> None:
        """Workers not taken are stopped (the job is stopping, or failed)."""
        for part in (self.validation, self.backtest):
            if part is not None:
                part.fits.cancel()


def start_fits_ahead(job: Job) -> FitsAhead | None:
    """The host's first process starts the evaluation's classical fits (the other processes,
    and a job without idle cores, fit nothing ahead). Every host's first process takes part in
    the exchange of the validation windows' keys (the baselines' sample is drawn over all)."""
    if job.data is None:
        return None
    config = job.config
    keys, horizon = window_keys(job.validation)
    hosts = job.hosts.gather("validation windows", (keys, horizon))
    horizon = max(h for _, h in hosts)
    every = [k for k, _ in hosts]
    season = job_season(config.data)
    processes = job.plan.devices
    everywhere = classical_everywhere(job)
    node = job.plan.node_rank
    fit = (
        np.arange(len(keys[0]))
        if everywhere
        else classical_windows(
            every, node, config.training.baseline_max_series, config.training.seed
        )
    )
    validation = None
    if len(fit):
        histories = validation_histories(job, keys)
        fits = ClassicalFits(
            list(CLASSICAL_MODELS), [histories[i] for i in fit], horizon, season, processes, True
        )
        validation = Validation(every, horizon, everywhere, fit, fits) if fits.started else None
    backtest = None
    if everywhere:
        assert job.backtest is not None
        (times, codes), longest = window_keys(job.backtest)
        order = window_order(times, codes)
        ordered = (times[order], codes[order])
        data = config.data
        index = windows_index(job.backtest, ordered, data)
        histories = window_histories(
            job.data.train, index, data.group_ids, data.time_idx, data.target
        )
        every, _, _ = classical_histories(histories, longest, season)
        fits = ClassicalFits(list(CLASSICAL_MEMBERS), every, longest, season, processes, True)
        backtest = Backtest(ordered, longest, fits) if fits.started else None
    if validation is None and backtest is None:
        return None
    return FitsAhead(validation, backtest)
