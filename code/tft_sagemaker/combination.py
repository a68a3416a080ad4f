"""The shipped forecast: the TFT combined with the classical models, weighted on a backtest.

The weights are chosen on backtest windows carved from the end of the training data, never on
the validation windows the job reports:

- the TFT's backtest window is each series' last `max_prediction_length` training steps, which
  it then does not train on (`job.build_job`); it forecasts them from the rows before;
- the classical members (naive, seasonal naive, ETS and Theta, baselines.py) forecast that
  window and, where the panel has few series, the windows of earlier origins too (each
  `max_prediction_length` steps further back, `ORIGINS`), each from the history before it:
  they are cheap to refit, and one window per series is a noisy judge on a small panel;
- their weights: greedy ensemble selection (Caruana et al. 2004, as AutoGluon-TimeSeries
  does) on every origin's windows: `ROUNDS` times, add the member (again, if it is the best
  again) whose addition gives the lowest MAE; each member's weight is its share of the rounds;
  kept only where that mix forecasts clearly better than the best single member (`evidence`:
  its gain per window at least `EVIDENCE_T` standard errors above zero), else that member;
- the TFT's share: the multiple of 1/`ROUNDS` that gives the lowest backtest MAE when the TFT
  is mixed with that classical combination, kept only where the mix is clearly better than the
  classical combination in the same sense, on the TFT's one window per series (else the
  classical combination is shipped: a TFT that wins a noisy backtest by chance would otherwise
  be shipped where it loses);
- the classical models forecast a point; their quantiles are that point plus the quantiles of
  their backtest errors at each horizon step, in units of each series' MASE scale (its
  in-sample naive error), centred so that their median is the point;
- the combination's quantile q is the weighted mean of the members' quantiles q (so the
  median is the weighted mean of the members' medians, and the quantiles stay ordered).

Everything here works on arrays of forecasts (windows, horizon[, quantiles]), so that the job,
`predict` and the `forecast` channel apply one combination the same way, refitting the
classical models on the history they are given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .baselines import (
    CLASSICAL_MODELS,
    BaselineForecasts,
    Comparison,
    Fits,
    classical_forecasts,
    mase_scales,
    seasonal_naive,
    window_histories,
)
from .baselines import describe as describe_comparison
from .config import DataConfig
from .evaluate import Forecast

TFT = "tft"
# Members besides the TFT, in the order they are listed.
NAIVE_MEMBERS = ("naive", "seasonal_naive")
CLASSICAL_MEMBERS = tuple(CLASSICAL_MODELS)  # ets, theta: one fit per series
SHIPPED = "shipped"  # the combination's own entry in `Combination.backtest`
ROUNDS = 25  # greedy rounds: weights are multiples of 1/25
# Earlier origins for the classical members until they are judged on about ORIGIN_WINDOWS
# windows, at most MAX_ORIGINS origins (the TFT's one included): cheap fits on small panels,
# one origin from 200 series up.
ORIGIN_WINDOWS = 200
MAX_ORIGINS = 6
# A mix is kept over a simpler forecast where its gain is at least this many standard errors
# (about 2.3% of panels where it is no better would keep it by chance).
EVIDENCE_T = 2.0


@dataclass(frozen=True)
class Combination:
    """What `combine` needs besides the members' forecasts: saved with the model."""

    weights: dict[str, float]  # member → weight; the weights sum to 1, zeros left out
    season: int | None  # steps per season of the seasonal members
    quantiles: list[float]
    # classical member → (horizon, quantiles): its errors' quantiles minus their median, in
    # units of the series' scale
    spreads: dict[str, list[list[float]]]
    # each member's and the combination's MAE on the TFT's backtest window
    backtest: dict[str, float]
    origins: int = 1  # backtest origins the classical weights were chosen on
    # the TFT's gain in standard errors (`evidence`; 0 where it could not be measured)
    evidence: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "season": self.season,
            "quantiles": self.quantiles,
            "spreads": self.spreads,
            "backtest": self.backtest,
            "origins": self.origins,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> Combination:
        return cls(
            weights=dict(saved["weights"]),
            season=saved["season"],
            quantiles=list(saved["quantiles"]),
            spreads={k: [list(r) for r in v] for k, v in saved["spreads"].items()},
            backtest=dict(saved["backtest"]),
            origins=int(saved["origins"]),
            evidence=float(saved["evidence"]),
        )

    @property
    def classical_members(self) -> list[str]:
        """The members with a weight besides the TFT."""
        return [m for m in self.weights if m != TFT]

    @property
    def candidates(self) -> list[str]:
        """Every member the weights were chosen among."""
        return [m for m in self.backtest if m != SHIPPED]


def members(season: int | None, classical: bool) -> list[str]:
    """The members that apply: the TFT, naive, seasonal naive where a season is known, ETS and
    Theta when they are `classical` (fitted on every window)."""
    names = [TFT, "naive", *(["seasonal_naive"] if season else [])]
    return names + (list(CLASSICAL_MEMBERS) if classical else [])


def member_points(
    names: Sequence[str],
    last: np.ndarray,
    seasonal: np.ndarray | None,
    classical: Mapping[str, np.ndarray],
    horizon: int,
) -> dict[str, np.ndarray]:
    """(windows, horizon) point forecasts of the non-TFT members `names`: naive from each
    window's `last` value, seasonal naive from `seasonal` (the last value where it is NaN: a
    history shorter than a season), the classical models' as `classical` forecast them."""
    naive = np.repeat(np.asarray(last, dtype=float)[:, None], horizon, axis=1)
    points: dict[str, np.ndarray] = {}
    for name in names:
        if name == "naive":
            points[name] = naive
        elif name == "seasonal_naive":
            assert seasonal is not None  # a member only where a season is known
            points[name] = np.where(np.isfinite(seasonal), seasonal, naive)
        elif name in classical:
            points[name] = classical[name]
    return points


def point_forecasts(
    names: Sequence[str],
    histories: Sequence[np.ndarray],
    horizon: int,
    season: int | None,
    processes: int = 1,
    fits: Fits | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """`member_points` from each window's history, and how many fits of each classical model
    fell back to the last value (`processes`: the job's on this host; `fits`: the classical
    members' fits of these histories, where they were fitted ahead)."""
    last = np.array([h[-1] for h in histories], dtype=float)
    classical = [n for n in names if n in CLASSICAL_MEMBERS]
    if fits is None:
        fits = classical_forecasts(classical, histories, horizon, season, processes)
    seasonal = (
        seasonal_naive(histories, horizon, season or 1) if "seasonal_naive" in names else None
    )
    points = member_points(names, last, seasonal, {n: f for n, (f, _) in fits.items()}, horizon)
    return points, {name: fallbacks for name, (_, fallbacks) in fits.items()}


def _mae(point: np.ndarray, actuals: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(point - actuals)[mask].mean())


def select_weights(
    points: Mapping[str, np.ndarray],
    actuals: np.ndarray,
    lengths: np.ndarray,
    rounds: int = ROUNDS,
) -> dict[str, float]:
    """Greedy ensemble selection with replacement on the MAE of the point forecasts (ties go
    to the member listed first); the weights of the members ever chosen, summing to 1."""
    mask = np.arange(actuals.shape[1])[None, :] < lengths[:, None]
    names = list(points)
    counts = dict.fromkeys(names, 0)
    total = np.zeros_like(actuals, dtype=float)
    for chosen in range(1, rounds + 1):
        errors = [_mae((total + points[n]) / chosen, actuals, mask) for n in names]
        best = names[int(np.argmin(errors))]
        counts[best] += 1
        total = total + points[best]
    return {n: c / rounds for n, c in counts.items() if c}


def spreads(
    point: np.ndarray,
    actuals: np.ndarray,
    lengths: np.ndarray,
    scales: np.ndarray,
    quantiles: Sequence[float],
) -> np.ndarray:
    """(horizon, quantiles): per horizon step, the quantiles of the errors (actual - point) in
    units of each window's scale (windows of scale 0 left out), minus their median; 0 where no
    window has that step."""
    horizon = actuals.shape[1]
    out = np.zeros((horizon, len(quantiles)))
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (actuals - point) / scales[:, None]
    for step in range(horizon):
        errors = scaled[(lengths > step) & (scales > 0), step]
        if len(errors):
            levels = np.quantile(errors, list(quantiles))
            out[step] = levels - np.quantile(errors, 0.5)
    return out


def window_scales(histories: Sequence[np.ndarray], season: int | None) -> np.ndarray:
    """Each window's scale for the classical quantiles: MASE's (baselines.mase_scales), 0
    where that is undefined (a constant or one-step history: no spread)."""
    return np.nan_to_num(mase_scales(histories, season), nan=0.0)


def combine(
    combination: Combination,
    tft_quantiles: np.ndarray,
    points: Mapping[str, np.ndarray],
    scales: np.ndarray,
) -> np.ndarray:
    """(windows, horizon, quantiles): the weighted mean of the members' quantiles."""
    out = np.zeros(tft_quantiles.shape, dtype=float)
    for name, weight in combination.weights.items():
        if name == TFT:
            member = tft_quantiles.astype(float)
        else:
            spread = np.asarray(combination.spreads[name])[None, : tft_quantiles.shape[1]]
            member = points[name][..., None] + scales[:, None, None] * spread
        out += weight * member
    return out


def origins(series: int) -> int:
    """How many backtest origins the classical members are judged on for a panel of `series`
    (the TFT's window included)."""
    return max(1, min(MAX_ORIGINS, -(-ORIGIN_WINDOWS // max(series, 1))))


def earlier_windows(
    histories: Sequence[np.ndarray], horizon: int, count: int, season: int | None
) -> tuple[list[np.ndarray], np.ndarray, int]:
    """The windows of up to `count - 1` earlier origins, each `horizon` steps before the last:
    their histories, their (windows, horizon) actuals and the origins reached (the TFT's
    included), cut from the histories of the TFT's backtest windows (gaps filled forward, as
    there). An origin is left out for a series where
    the history before it is shorter than two seasons and two steps, or two horizons: the
    classical models' fits would fall back there, not forecast."""
    shortest = max(2 * (season or 1) + 2, 2 * horizon)
    before: list[np.ndarray] = []
    actuals: list[np.ndarray] = []
    reached = 1
    for history in histories:
        for back in range(1, count):
            cut = len(history) - back * horizon
            if cut < shortest:
                break
            before.append(history[:cut])
            actuals.append(history[cut : cut + horizon])
            reached = max(reached, back + 1)
    return before, np.array(actuals, dtype=float).reshape(len(actuals), horizon), reached


def classical_histories(
    histories: Sequence[np.ndarray], horizon: int, season: int | None
) -> tuple[list[np.ndarray], np.ndarray, int]:
    """What `choose` fits the classical members on for the TFT's backtest windows (their
    `histories`): those histories, then those of the earlier origins (`earlier_windows`);
    and the earlier origins' actuals and the origins reached."""
    before, earlier, reached = earlier_windows(histories, horizon, origins(len(histories)), season)
    return [*histories, *before], earlier, reached


def _window_maes(point: np.ndarray, actuals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, np.abs(point - actuals), 0.0).sum(axis=1) / mask.sum(axis=1)


def evidence(
    base: np.ndarray, candidate: np.ndarray, actuals: np.ndarray, lengths: np.ndarray
) -> float:
    """How clearly `candidate` forecasts better than `base`: the mean gain in MAE per window
    over its standard error (clipped to +-100; 0 with fewer than two windows)."""
    mask = np.arange(actuals.shape[1])[None, :] < lengths[:, None]
    gains = _window_maes(base, actuals, mask) - _window_maes(candidate, actuals, mask)
    if len(gains) < 2:
        return 0.0
    spread = gains.std(ddof=1) / np.sqrt(len(gains))
    if spread == 0:
        return 0.0 if gains.mean() == 0 else float(np.sign(gains.mean()) * 100)
    return float(np.clip(gains.mean() / spread, -100, 100))


def classical_weights(
    points: Mapping[str, np.ndarray], actuals: np.ndarray, lengths: np.ndarray
) -> dict[str, float]:
    """The classical members' weights: greedy ensemble selection, kept only where its mix
    forecasts clearly better (EVIDENCE_T) than the best single member, else that member."""
    mask = np.arange(actuals.shape[1])[None, :] < lengths[:, None]
    single = min(points, key=lambda n: _mae(points[n], actuals, mask))
    weights = select_weights(points, actuals, lengths)
    if len(weights) == 1:
        return weights
    mix = sum(w * points[n] for n, w in weights.items())
    clear = evidence(points[single], np.asarray(mix), actuals, lengths) >= EVIDENCE_T
    return weights if clear else {single: 1.0}


def tft_share(
    tft: np.ndarray, classical: np.ndarray, actuals: np.ndarray, lengths: np.ndarray
) -> tuple[float, float]:
    """The TFT's weight in a mix with the classical combination's point forecast: the multiple
    of 1/ROUNDS with the lowest MAE (ties to the lower share), 0 unless that mix forecasts
    clearly better (EVIDENCE_T) than the classical combination; and that `evidence` (0 where
    no share lowers the MAE)."""
    mask = np.arange(actuals.shape[1])[None, :] < lengths[:, None]
    shares = np.arange(ROUNDS + 1) / ROUNDS
    errors = [_mae(s * tft + (1 - s) * classical, actuals, mask) for s in shares]
    share = float(shares[int(np.argmin(errors))])
    if share == 0:
        return 0.0, 0.0
    clear = evidence(classical, share * tft + (1 - share) * classical, actuals, lengths)
    return (share if clear >= EVIDENCE_T else 0.0), clear


@dataclass
class BacktestMembers:
    """The non-TFT members' point forecasts of backtest windows, what the weights are chosen
    on besides the TFT's forecasts: rows of the TFT's windows (`windows` of them) first, then
    rows of the earlier origins' windows; the earlier origins' actuals, and each row's scale.
    Each host's first process makes its host's (`backtest_members`); `concat` joins hosts'."""

    points: dict[str, np.ndarray]  # member → (rows, horizon)
    windows: int  # the first rows: the TFT's backtest windows
    earlier: np.ndarray  # (rows - windows, horizon): the earlier origins' actuals
    scales: np.ndarray  # (rows,) `window_scales`
    reached: int  # the backtest origins reached (the TFT's included)

    @staticmethod
    def concat(parts: Sequence[BacktestMembers]) -> BacktestMembers:
        """The parts' TFT windows one after the other, then their earlier origins' windows."""

        def rows(values: Sequence[np.ndarray]) -> np.ndarray:
            own = [v[: p.windows] for v, p in zip(values, parts, strict=True)]
            before = [v[p.windows :] for v, p in zip(values, parts, strict=True)]
            return np.concatenate([*own, *before])

        return BacktestMembers(
            {n: rows([p.points[n] for p in parts]) for n in parts[0].points},
            sum(p.windows for p in parts),
            np.concatenate([p.earlier for p in parts]),
            rows([p.scales for p in parts]),
            max(p.reached for p in parts),
        )


def backtest_members(
    histories: Sequence[np.ndarray],
    horizon: int,
    season: int | None,
    classical: bool,
    processes: int = 1,
    fits: Fits | None = None,
) -> BacktestMembers:
    """The members' forecasts of the backtest windows whose `histories` these are, and of the
    earlier origins cut from them (ETS and Theta where `classical`; `processes`: the job's on
    this host; `fits`: the classical members' fits of `classical_histories`, where they were
    fitted ahead)."""
    names = [n for n in members(season, classical) if n != TFT]
    every, earlier, reached = classical_histories(histories, horizon, season)
    points, _ = point_forecasts(names, every, horizon, season, processes, fits)
    return BacktestMembers(points, len(histories), earlier, window_scales(every, season), reached)


def choose(
    tft_quantiles: np.ndarray,
    backtest: BacktestMembers,
    actuals: np.ndarray,
    lengths: np.ndarray,
    season: int | None,
    quantiles: Sequence[float],
) -> Combination:
    """The combination of the backtest windows' forecasts (`tft_quantiles`: the TFT's, trained
    without them; `backtest`: the other members', of the same windows in the same order) that
    forecasts their `actuals` best: the classical members' weights chosen on these windows and
    those of earlier origins, then the TFT's share on these."""
    horizon = actuals.shape[1]
    own, points = backtest.windows, backtest.points
    every_actuals = np.concatenate([actuals, backtest.earlier])
    every_lengths = np.concatenate([lengths, np.full(len(backtest.earlier), horizon)])
    chosen = classical_weights(points, every_actuals, every_lengths)
    errors = {
        n: spreads(points[n], every_actuals, every_lengths, backtest.scales, quantiles).tolist()
        for n in chosen
    }
    # The TFT's windows only, from here on.
    median = list(quantiles).index(0.5)
    candidates = {TFT: tft_quantiles[..., median].astype(float)} | {
        n: p[:own] for n, p in points.items()
    }
    mix = sum(w * candidates[n] for n, w in chosen.items())
    share, clear = tft_share(candidates[TFT], np.asarray(mix), actuals, lengths)
    weights = {TFT: share} | {n: round((1 - share) * w, 6) for n, w in chosen.items()}
    weights = {n: w for n, w in weights.items() if w > 0}
    combination = Combination(
        weights=weights,
        season=season,
        quantiles=list(quantiles),
        spreads=errors,
        backtest={},
    )
    mask = np.arange(horizon)[None, :] < lengths[:, None]
    shipped = combine(combination, tft_quantiles, candidates, backtest.scales[:own])[..., median]
    results = {n: _mae(p, actuals, mask) for n, p in candidates.items()}
    results[SHIPPED] = _mae(shipped, actuals, mask)
    used = {n: errors[n] for n in weights if n != TFT}
    return Combination(weights, season, list(quantiles), used, results, backtest.reached, clear)


def _combined(
    combination: Combination, tft: Forecast, points: Mapping[str, np.ndarray], scales: np.ndarray
) -> Forecast:
    """`tft` with the combination's quantiles: its windows, actuals and unit stay the TFT's."""
    quantiles = combine(combination, tft.quantiles.numpy(), points, scales)
    return dataclasses.replace(tft, quantiles=torch.from_numpy(quantiles).to(tft.quantiles.dtype))


def apply(
    combination: Combination, tft: Forecast, frame: pd.DataFrame, data: DataConfig
) -> Forecast:
    """The combination for the windows of `tft` (its index in the data's names), the classical
    members refitted on each window's history in `frame` (`predict`, the `forecast` channel)."""
    histories = window_histories(frame, tft.index, data.group_ids, data.time_idx, data.target)
    points, _ = point_forecasts(
        combination.classical_members, histories, tft.quantiles.shape[1], combination.season
    )
    return _combined(combination, tft, points, window_scales(histories, combination.season))


def apply_to_baselines(
    combination: Combination, tft: Forecast, baselines: BaselineForecasts
) -> Forecast:
    """`apply` for windows the job's baselines forecast (`baselines`, of the windows of `tft`
    in the same order, ETS and Theta on every window where they are members): their forecasts
    are those `apply` would refit, from the same histories, and are taken as they are."""
    points = member_points(
        combination.classical_members,
        baselines.last,
        baselines.seasonal,
        baselines.classical,
        tft.quantiles.shape[1],
    )
    return _combined(combination, tft, points, np.nan_to_num(baselines.scales, nan=0.0))


def describe(combination: Combination) -> str:
    """One line for the log: the weights, why the TFT has its share, and the backtest MAEs."""
    weights = ", ".join(f"{n} {w:.2f}" for n, w in combination.weights.items())
    scores = ", ".join(f"{n} {v:.4g}" for n, v in combination.backtest.items())
    verdict = (
        "clearly better" if TFT in combination.weights else f"not clearly better (< {EVIDENCE_T})"
    )
    return (
        f"combination: {weights} (classical weights chosen on {combination.origins} backtest "
        f"origin(s); the TFT's gain on its backtest window: {combination.evidence:.2f} standard "
        f"errors, {verdict}; backtest MAE: {scores})"
    )


def describe_shipped(comparison: Comparison, combination: Combination) -> str:
    """The shipped combination against its strongest baseline; where it is that baseline alone,
    that (a tie, not a loss to a simpler model)."""
    if set(combination.weights) == {comparison.best_baseline}:
        return (
            f"the shipped forecast is the {comparison.best_baseline} baseline alone: on the "
            "backtest the combination put all its weight on it (the TFT was not clearly better)"
        )
    return describe_comparison(comparison, "the shipped forecast (the combination)")
