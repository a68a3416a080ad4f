"""Baselines on the job's own validation windows: what the TFT must beat to be worth shipping.

- `naive`: the last observed value (pytorch-forecasting's `Baseline`, from `evaluate.forecast`);
- `seasonal_naive`: the value one season earlier, where a season follows from the frequency;
- `ets`: Holt-Winters exponential smoothing with a damped additive trend, and an additive
  season where the history covers two seasons of at most 24 steps (statsmodels);
- `theta`: the Theta method (statsmodels' ThetaModel, deseasonalised when a season is found).

Every method forecasts the windows the TFT forecast, from each series' history before the
window, and is scored on the same points (MAE as pytorch-forecasting computes it, and MASE).
The classical models are fitted per series, so their cost is bounded twice: each fit sees at
most the last `CLASSICAL_HISTORY` steps (or 10 seasons), and at most `max_series` windows are
fitted (a fixed random sample of them on larger panels; the TFT is then compared with them on
that sample). A fit that fails or forecasts a non-finite value falls back to the naive forecast.
The fits are spread over worker processes on the host's idle cores (`classical_forecasts`).
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

# Steps a classical model is fitted on (at least 10 seasons). Long: on the monthly US
# employment panel ETS's validation MAE was 52.8 fitted on the last 120 months and 26.2 on all
# of them (about 350); the fit time grows with it.
CLASSICAL_HISTORY = 1_000
_MAX_ETS_SEASON = 24  # longer seasons: too many initial states to estimate per series


# --------------------------------------------------------------------------------------------
# Forecasts from each window's history
# --------------------------------------------------------------------------------------------
def window_histories(
    frame: pd.DataFrame,
    index: pd.DataFrame,
    group_ids: Sequence[str],
    time_idx: str,
    target: str,
) -> list[np.ndarray]:
    """The target before each window's first forecast step (`index` as `x_to_index` gives it),
    on the full time grid: gaps are filled forward, as pytorch-forecasting fills them.

    Every series is laid out once on its own grid (first to last step) in one flat array,
    filled forward; each window's history is a slice of it (no per-window frame lookups: a
    panel of 50,000 series has as many validation windows)."""
    series = frame.groupby(list(group_ids), observed=True, sort=False).ngroup().to_numpy()
    times = frame[time_idx].to_numpy(dtype=np.int64)
    n_series = int(series.max()) + 1 if len(series) else 0
    first = np.full(n_series, np.iinfo(np.int64).max)
    last = np.full(n_series, np.iinfo(np.int64).min)
    np.minimum.at(first, series, times)
    np.maximum.at(last, series, times)
    offsets = np.concatenate([[0], np.cumsum(last - first + 1)])
    grid = np.full(offsets[-1], np.nan)
    grid[offsets[series] + times - first[series]] = frame[target].to_numpy(dtype=float)
    # Forward fill: each series' first step is a row, so nothing spills from one into the next.
    filled = np.where(np.isnan(grid), 0, np.arange(len(grid)))
    grid = grid[np.maximum.accumulate(filled)] if len(grid) else grid
    _, rows = np.unique(series, return_index=True)
    keys = frame[list(group_ids)].iloc[rows].astype(str).itertuples(index=False, name=None)
    number = {key: i for i, key in enumerate(keys)}
    histories = []
    window_series = index[list(group_ids)].astype(str).itertuples(index=False, name=None)
    for key, start in zip(window_series, index[time_idx].to_numpy(dtype=np.int64), strict=True):
        i = number[key]
        steps = int(start - first[i])  # the grid from the series' first step to start - 1
        history = grid[offsets[i] : offsets[i] + min(steps, offsets[i + 1] - offsets[i])]
        if steps > len(history):  # a window starting after the series' last row
            history = np.concatenate([history, np.full(steps - len(history), history[-1])])
        histories.append(history)
    return histories


def seasonal_naive(histories: Sequence[np.ndarray], horizon: int, season: int) -> np.ndarray:
    """(windows, horizon): the last season repeated; NaN where the history is shorter."""
    out = np.full((len(histories), horizon), np.nan)
    for i, history in enumerate(histories):
        if len(history) >= season:
            out[i] = np.resize(history[-season:], horizon)
    return out


def _ets(history: np.ndarray, horizon: int, season: int | None) -> np.ndarray:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    seasonal = (
        season if season and season <= _MAX_ETS_SEASON and len(history) >= 2 * season + 2 else None
    )
    model = ExponentialSmoothing(
        history,
        trend="add",
        damped_trend=True,
        seasonal="add" if seasonal else None,
        seasonal_periods=seasonal,
        initialization_method="estimated",
    )
    return np.asarray(model.fit().forecast(horizon), dtype=float)


def _theta(history: np.ndarray, horizon: int, season: int | None) -> np.ndarray:
    from statsmodels.tsa.forecasting.theta import ThetaModel

    seasonal = bool(season) and len(history) >= 2 * season
    model = ThetaModel(history, period=season if seasonal else 1, deseasonalize=seasonal)
    return np.asarray(model.fit().forecast(horizon), dtype=float)


CLASSICAL_MODELS: dict[str, Callable[[np.ndarray, int, int | None], np.ndarray]] = {
    "ets": _ets,
    "theta": _theta,
}


# Decimals kept of a history in units of its magnitude (about 1): far below any data's precision,
# far above the last bits that differ between units.
UNIT_DECIMALS = 9


def _magnitude(history: np.ndarray) -> float:
    """The history's mean |value| (1 for zeros): statsmodels' optimisers stop at absolute
    tolerances, so each series is fitted in this unit, where it has the same values whatever
    the data's (ETS forecasts of the same series 1e-12 apart differed by 2% without it)."""
    mean = float(np.abs(history).mean()) if len(history) else 0.0
    return mean if mean > 0 and np.isfinite(mean) else 1.0


def classical_forecast(
    name: str, histories: Sequence[np.ndarray], horizon: int, season: int | None
) -> tuple[np.ndarray, int]:
    """(windows, horizon) forecasts of a classical model, and how many fits fell back to the
    last value (too short a history, a failed fit, a non-finite forecast). Each series is
    fitted in units of its own magnitude, so that its unit changes nothing. In the job's own
    process: a pool of forked processes hung in the image (torch's OpenMP threads and
    jemalloc's background thread do not survive a fork)."""
    fit = CLASSICAL_MODELS[name]
    limit = max(CLASSICAL_HISTORY, 10 * (season or 0))
    out = np.empty((len(histories), horizon))
    fallbacks = 0
    # statsmodels loads scipy's own BLAS, which keeps its threads if loaded inside the limit
    # below (two processes fitting at once on 2 cores then took 2.6 times as long).
    import statsmodels.tsa.forecasting.theta
    import statsmodels.tsa.holtwinters  # noqa: F401

    # One BLAS thread: the optimiser's tiny problems run several times slower with more.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter, per series
        for i, history in enumerate(histories):
            forecast = None
            recent = history[-limit:]
            if len(recent) and np.ptp(recent) == 0:
                # Both models forecast a constant series as the constant (statsmodels' Theta
                # fits a spurious drift to one).
                forecast = np.full(horizon, recent[-1])
            elif len(recent) >= 4:
                try:
                    magnitude = _magnitude(recent)
                    # Rounded: the same series in another unit differs here in the last bits,
                    # and ETS's optimiser turned that into 2e-4 apart forecasts on one CPU.
                    scaled = np.round(recent / magnitude, UNIT_DECIMALS)
                    forecast = fit(scaled, horizon, season) * magnitude
                except (ValueError, np.linalg.LinAlgError):
                    forecast = None
            if forecast is None or not np.isfinite(forecast).all():
                forecast = np.full(horizon, history[-1])
                fallbacks += 1
            out[i] = forecast
    return out, fallbacks


Fits = dict[str, tuple[np.ndarray, int]]  # model name → `classical_forecast`'s result

# A worker process takes about 1.5 s of a core to start (Python, numpy, pandas, statsmodels) and
# a fit about 10 ms: one worker per `_FITS_PER_WORKER` fits at most, and a few in all (each
# holds about 150 MB).
_FITS_PER_WORKER = 200
_MAX_WORKERS = 8
# A worker writes its fits a block of windows at a time, so that the process that waits for
# them can fit the blocks it has not reached yet, from the last one back (its core is idle).
_BLOCK = 25
_WORKER = [sys.executable, "-m", __name__]  # `_worker` reads its part on stdin
# Workers started ahead (while the job trains) yield their cores to the training processes,
# from their start on (importing statsmodels takes about 1.5 s of a core).
AHEAD_NICENESS = 10
_AHEAD_WORKER = [
    sys.executable,
    "-c",
    f"import os, runpy; os.nice({AHEAD_NICENESS}); runpy.run_module({__name__!r}, "
    "run_name='__main__', alter_sys=True)",
]


def _worker_count(fits: int, processes: int, ahead: bool = False) -> int:
    """Workers for `fits` fits on a host where the job runs `processes` processes: the cores
    they do not take (with two processes on 2 cores, a worker made the fits no faster: the
    process waiting for them keeps its core). `ahead` (started while the job trains): at least
    one where a core is idle, since no process waits for its start."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    wanted = fits // _FITS_PER_WORKER - 1
    if ahead and fits:
        wanted = max(1, wanted)
    return max(0, min((cores or 1) - processes, _MAX_WORKERS, wanted))


def _fit_part(
    names: Sequence[str], histories: Sequence[np.ndarray], horizon: int, season: int | None
) -> Fits:
    return {name: classical_forecast(name, histories, horizon, season) for name in names}


def _blocks(chunk: Sequence[np.ndarray]) -> list[Sequence[np.ndarray]]:
    return [chunk[i : i + _BLOCK] for i in range(0, len(chunk), _BLOCK)]


class _Worker:
    """A worker process fitting a part, a block (`_BLOCK` windows) at a time, and the blocks'
    fits it has written so far (read as they come, in a thread of this process). In a process
    group of its own: a stop signalled to the job's group is the job's to handle. Not in a
    session of its own: with the kernel's autogroups (sched_autogroup_enabled) a session shares
    the CPU equally with the job's whatever its niceness, and an ahead worker halved the
    training's speed on 2 cores."""

    def __init__(self, payload: bytes, blocks: int, ahead: bool = False) -> None:
        self.blocks = blocks
        self.fitted: list[Fits] = []  # the blocks' fits, in order, as the worker writes them
        # Not a pipe: nothing reads it until the worker ends. Closed by `stop`.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self._reader: threading.Thread | None = None
        self._stopped = False  # ended here, not on its own
        self._last_error = ""  # the last line it wrote to stderr (once stopped)
        code = str(Path(__file__).resolve().parents[1])  # the directory holding this package
        path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)
        try:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                _AHEAD_WORKER if ahead else _WORKER,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._errors,
                env={**os.environ, "PYTHONPATH": path},
                process_group=0,
            )
        except OSError as err:
            log.warning("classical fits: no worker process (%s); this process fits its part", err)
            self.process = None
            return
        assert self.process.stdin is not None
        try:
            with self.process.stdin:
                self.process.stdin.write(payload)
        except OSError:
            pass  # it exited at once: `failure` says why
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            while len(self.fitted) < self.blocks:
                self.fitted.append(pickle.load(self.process.stdout))
        except (EOFError, pickle.UnpicklingError, ValueError, OSError):
            pass  # it ended (or was stopped) before writing them all: `failure` says why

    @property
    def reading(self) -> bool:
        """Whether more of its blocks may still come."""
        return self._reader is not None and self._reader.is_alive()

    def stop(self) -> None:
        """Ends it (its remaining blocks are not wanted) and the reading."""
        if self.process is not None and not self._errors.closed:
            if self.process.poll() is None:
                self.process.kill()
                self._stopped = True
            self.process.wait()
            if self._reader is not None:
                self._reader.join()
            assert self.process.stdout is not None
            self.process.stdout.close()
            self._errors.seek(0)
            lines = self._errors.read().decode(errors="replace").strip().splitlines()
            self._last_error = lines[-1] if lines else "no message"
        self._errors.close()

    @property
    def failed(self) -> bool:
        """Whether it could not start, or ended on its own with an error (once stopped)."""
        return self.process is None or (not self._stopped and self.process.returncode != 0)

    def failure(self) -> str:
        """Why it failed, or wrote fewer blocks than it was given (once stopped)."""
        if self.process is None:
            return "it could not start"
        return f"exit {self.process.returncode}: {self._last_error}"


class ClassicalFits:
    """`classical_forecast` of each model in `names`, the windows split into contiguous parts
    fitted at once: in worker processes on the cores that the job's `processes` on this host
    leave idle (`_worker_count`) and, unless `ahead`, the first part in this process when the
    `result` is asked for; then, rather than wait, this process fits the blocks of each worker's
    part that the worker has not reached yet, from the last back. Each series is fitted alone,
    so the forecasts are those of one process; a worker that fails leaves its part to this
    process, with the reason logged.

    `ahead`: started before the fits are needed (the job starts its evaluation's before it
    trains), every part in a worker at a low priority (`AHEAD_NICENESS`), so that the training
    keeps its cores; `started` says whether any worker could take them (else `result` fits them
    all here)."""

    def __init__(
        self,
        names: Sequence[str],
        histories: Sequence[np.ndarray],
        horizon: int,
        season: int | None,
        processes: int = 1,
        ahead: bool = False,
    ) -> None:
        self.names, self.horizon, self.season = list(names), horizon, season
        self.windows = len(histories)
        count = _worker_count(len(histories) * len(self.names), processes, ahead)
        parts = np.array_split(np.arange(len(histories)), max(1, count + (0 if ahead else 1)))
        chunks = [[histories[i] for i in part] for part in parts]
        self._local = [] if ahead and count else chunks[:1]
        remote = chunks[len(self._local) :]
        if self.names and remote:
            log.info(
                "classical fits: %d windows x %s in %d processes (%s%d workers on idle cores%s)",
                len(histories),
                "/".join(self.names),
                len(chunks),
                "this one, " if self._local else "",
                len(remote),
                ", started before training, at a low priority" if ahead else "",
            )
        self._workers = [
            (
                _Worker(
                    pickle.dumps((self.names, chunk, horizon, season)), len(_blocks(chunk)), ahead
                ),
                chunk,
            )
            for chunk in remote
        ]
        if ahead:  # whatever ends the job before it takes them (a stop, a failure)
            atexit.register(self.cancel)

    @property
    def started(self) -> bool:
        return bool(self._workers)

    def result(self) -> Fits:
        """The fits, in the windows' order: this process's part, then each worker's, of which
        this process fits the blocks the worker has not reached, from the last one back."""
        try:
            results = [_fit_part(self.names, c, self.horizon, self.season) for c in self._local]
            for worker, chunk in self._workers:
                results.extend(self._taken_over(worker, _blocks(chunk)))
        finally:
            self.cancel()
        return {
            name: (
                np.concatenate([r[name][0] for r in results]).reshape(self.windows, self.horizon),
                sum(r[name][1] for r in results),
            )
            for name in self.names
        }

    def _taken_over(self, worker: _Worker, blocks: list[Sequence[np.ndarray]]) -> list[Fits]:
        """The fits of a worker's blocks, in order: those it wrote, and the rest fitted here,
        from the last back until the worker's blocks meet them (or it failed)."""
        here: list[Fits] = []  # the last blocks, last first
        while len(worker.fitted) + len(here) < len(blocks) and worker.reading:
            here.append(_fit_part(self.names, blocks[-1 - len(here)], self.horizon, self.season))
        worker.stop()
        fitted = worker.fitted[: len(blocks) - len(here)]
        missing = blocks[len(fitted) : len(blocks) - len(here)]
        if missing or worker.failed:
            log.warning(
                "classical fits: a worker process failed (%s); this process fits its part",
                worker.failure(),
            )
        missing_fits = [_fit_part(self.names, b, self.horizon, self.season) for b in missing]
        return fitted + missing_fits + here[::-1]

    def cancel(self) -> None:
        """Workers still fitting are stopped: their fits are not wanted (this process is
        stopping, or it fits other windows)."""
        atexit.unregister(self.cancel)
        for worker, _ in self._workers:
            worker.stop()


def classical_forecasts(
    names: Sequence[str],
    histories: Sequence[np.ndarray],
    horizon: int,
    season: int | None,
    processes: int = 1,
) -> Fits:
    """`ClassicalFits` of `names` for `histories`, fitted now."""
    return ClassicalFits(names, histories, horizon, season, processes).result()


def _worker() -> None:
    """A worker process (`python -m tft_sagemaker.baselines`): the fits of the part on stdin,
    pickled to stdout a block at a time (anything printed goes to stderr)."""
    out, sys.stdout = sys.stdout.buffer, sys.stderr
    names, histories, horizon, season = pickle.load(sys.stdin.buffer)
    for block in _blocks(histories):  # one pickle each: the job reads them as they come
        pickle.dump(_fit_part(names, block, horizon, season), out)
        out.flush()


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def mase_scales(histories: Sequence[np.ndarray], season: int | None) -> np.ndarray:
    """Per window, the in-sample MAE of the seasonal naive forecast (naive where the history is
    shorter than two seasons): MASE's denominator. NaN where it is 0 or undefined."""
    scales = np.full(len(histories), np.nan)
    for i, history in enumerate(histories):
        lag = season if season and len(history) >= 2 * season else 1
        if len(history) > lag:
            scale = np.abs(history[lag:] - history[:-lag]).mean()
            scales[i] = scale if scale > 0 else np.nan
    return scales


def scores(
    forecast: np.ndarray, actuals: np.ndarray, lengths: np.ndarray, scales: np.ndarray
) -> dict[str, float]:
    """MAE over every forecast point (pytorch-forecasting's MAE over packed sequences) and
    MASE (each window's MAE over its scale, averaged over windows with a scale)."""
    mask = np.arange(actuals.shape[1])[None, :] < lengths[:, None]
    errors = np.where(mask, np.abs(forecast - actuals), 0.0)
    per_window = errors.sum(axis=1) / lengths
    scaled = per_window / scales
    return {
        "MAE": float(errors.sum() / mask.sum()),
        "MASE": float(np.nanmean(scaled)) if np.isfinite(scaled).any() else float("nan"),
    }


@dataclass
class Comparison:
    """The TFT and each baseline scored on the windows that baseline forecast."""

    metrics: dict[str, float | int | str | bool]
    beats_baselines: bool
    best_baseline: str
    margin: float  # TFT MAE / best baseline's MAE - 1 on its windows (< 0: the TFT is better)


@dataclass
class BaselineForecasts:
    """What the baselines forecast for a set of windows (the whole validation set, or one
    rank's share of it): everything the comparison needs besides the TFT's forecast."""

    scales: np.ndarray  # (windows,) MASE's denominator
    last: np.ndarray  # (windows,) each history's last value (the naive forecast, as fitted)
    seasonal: np.ndarray | None  # (windows, horizon), NaN where the history is short
    classical: dict[str, np.ndarray]  # name → (windows, horizon), NaN where not fitted
    fitted: np.ndarray  # (windows,) bool: the windows the classical models were fitted on
    fallbacks: dict[str, int]

    @staticmethod
    def concat(parts: Sequence[BaselineForecasts], order: np.ndarray) -> BaselineForecasts:
        """The parts' windows one after the other, then taken in `order`."""
        seasonal = [p.seasonal for p in parts]
        return BaselineForecasts(
            np.concatenate([p.scales for p in parts])[order],
            np.concatenate([p.last for p in parts])[order],
            None if seasonal[0] is None else np.concatenate(seasonal)[order],
            {
                name: np.concatenate([p.classical[name] for p in parts])[order]
                for name in parts[0].classical
            },
            np.concatenate([p.fitted for p in parts])[order],
            {name: sum(p.fallbacks[name] for p in parts) for name in parts[0].fallbacks},
        )


def classical_sample(windows: int, max_series: int, seed: int) -> np.ndarray:
    """The windows the classical models are fitted on: all, or a fixed sample of `max_series`
    (none for 0)."""
    everything = np.arange(windows)
    if max_series <= 0:
        return everything[:0]
    if windows <= max_series:
        return everything
    return np.sort(np.random.default_rng(seed).choice(everything, size=max_series, replace=False))


def baseline_forecasts(
    histories: Sequence[np.ndarray],
    horizon: int,
    season: int | None,
    fit: np.ndarray,
    classical: bool,
    processes: int = 1,
    fits: Fits | None = None,
) -> BaselineForecasts:
    """The baselines' forecasts of these windows; the classical models (`classical`) on the
    windows `fit` selects (positions), with `processes` of the job on this host (`fits`: those
    fits, where they were fitted ahead)."""
    n = len(histories)
    fitted = np.zeros(n, dtype=bool)
    fitted[fit] = True
    forecasts: dict[str, np.ndarray] = {}
    fallbacks: dict[str, int] = {}
    if fits is None or not classical:
        fits = classical_forecasts(
            list(CLASSICAL_MODELS) if classical else [],
            [histories[i] for i in fit],
            horizon,
            season,
            processes,
        )
    for name, (forecast, fallbacks[name]) in fits.items():
        forecasts[name] = np.full((n, horizon), np.nan)
        forecasts[name][fit] = forecast
    return BaselineForecasts(
        mase_scales(histories, season),
        np.array([h[-1] for h in histories], dtype=float),
        seasonal_naive(histories, horizon, season) if season else None,
        forecasts,
        fitted,
        fallbacks,
    )


def compare(
    tft: np.ndarray,
    naive: np.ndarray,
    actuals: np.ndarray,
    lengths: np.ndarray,
    histories: Sequence[np.ndarray],
    season: int | None,
    max_series: int,
    seed: int = 0,
) -> Comparison:
    """Score the TFT's point forecast against every baseline that applies to these windows."""
    sample = classical_sample(len(histories), max_series, seed)
    forecasts = baseline_forecasts(histories, actuals.shape[1], season, sample, max_series > 0)
    return score_baselines(tft, naive, actuals, lengths, forecasts)


def score_baselines(
    tft: np.ndarray,
    naive: np.ndarray,
    actuals: np.ndarray,
    lengths: np.ndarray,
    forecasts: BaselineForecasts,
) -> Comparison:
    """The TFT and each baseline scored on the windows that baseline forecast."""
    scales = forecasts.scales
    everything = np.arange(len(scales))
    candidates: dict[str, tuple[np.ndarray, np.ndarray]] = {"naive": (naive, everything)}
    if forecasts.seasonal is not None:
        covered = np.flatnonzero(np.isfinite(forecasts.seasonal).all(axis=1))
        if len(covered):
            candidates["seasonal_naive"] = (forecasts.seasonal[covered], covered)
    metrics: dict[str, float | int | str | bool] = {}
    if forecasts.classical:
        sample = np.flatnonzero(forecasts.fitted)
        for name, forecast in forecasts.classical.items():
            candidates[name] = (forecast[sample], sample)
            metrics[f"{name}_fallbacks"] = forecasts.fallbacks[name]
        metrics["classical_windows"] = len(sample)

    tft_scores = scores(tft, actuals, lengths, scales)
    metrics["val_MASE"] = tft_scores["MASE"]
    ratios: dict[str, float] = {}
    for name, (forecast, rows) in candidates.items():
        own = scores(forecast, actuals[rows], lengths[rows], scales[rows])
        prefix = "baseline_" if name == "naive" else f"{name}_"
        if name != "naive":  # the naive Baseline's MAE is evaluate.score's baseline_val_MAE
            metrics[f"{prefix}val_MAE"] = own["MAE"]
        metrics[f"{prefix}val_MASE"] = own["MASE"]
        tft_on_rows = scores(tft[rows], actuals[rows], lengths[rows], scales[rows])["MAE"]
        ratios[name] = tft_on_rows / own["MAE"] if own["MAE"] > 0 else float("inf")
    best = max(ratios, key=lambda n: ratios[n])  # the baseline the TFT fares worst against
    margin = ratios[best] - 1.0
    beats = margin < 0
    metrics |= {"best_baseline": best, "baseline_margin": margin, "beats_baselines": beats}
    return Comparison(metrics, beats, best, margin)


def describe(comparison: Comparison, forecast: str = "the TFT") -> str:
    """One line for the log: how `forecast` compares with its strongest baseline."""
    percent = abs(comparison.margin) * 100
    if comparison.beats_baselines:
        return (
            f"{forecast} beats every baseline: {percent:.1f}% lower MAE than the best one, "
            f"{comparison.best_baseline}"
        )
    return (
        f"{forecast} does not beat the {comparison.best_baseline} baseline: its validation MAE is "
        f"{percent:.1f}% higher on the same windows. A simpler model forecasts this data better; "
        "train longer, or check the schema and the recipe."
    )


if __name__ == "__main__":
    _worker()
