"""The default recipe: what a careful practitioner would choose for a new panel, from the data.

A hyperparameter left unset (or "auto") is chosen here from statistics of the training
data; a value given by a preset, the configuration file or a hyperparameter is kept as it is
(presets set every one of them). Every rule is a pure function of those statistics that returns
the value and the reason, which the job logs:

- the target's unit: a power of ten that gives the model values of the same size whatever
  unit the target is measured in (`units.py`);
- calendar variables (month, day of week, ...) from the frequency of the dates;
- the target one season back as a known input where the horizon is at most a season;
- target scaling: per window (`encoder`) when series drift away from their overall level, so
  that the model forecasts relative to the recent past; else per series (`group`);
- batch size, epoch length and a training budget in steps from the number of training windows
  (about `PASSES` passes over them, within `MIN_STEPS`..`MAX_STEPS`), epochs short enough to
  validate often; training goes on past the budget while the validation still improves, up to
  `EXTEND_BUDGETS` more budgets within a time limit; early stopping keeps the best epoch's
  weights (the job evaluates and ships the best checkpoint);
- model width and dropout from the number of windows;
- a learning rate scaled from the one tuned on Stallion (0.007 at batch 256, the square-root
  rule for Adam), halved on plateaus, with a moving average of the weights over about an epoch,
  which makes the validated weights far less noisy from one epoch to the next;
- on GPUs, batches up to MAX_GPU_BATCH per GPU; batches above the tuned one warm the (scaled)
  learning rate up over the first steps;
- the validation batch, and the learning rate for data-parallel processes.

`resolve_data` settles the dataset's choices (before the datasets are built), `settle` the rest
(from the number of training windows and processes): it returns the `Settings` that the model
and the trainer are built from, with nothing left to choose.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from .config import DataConfig, JobConfig, job_season
from .time_axis import normalize_freq
from .units import SPREAD, target_spread, unit_for
from .validation import is_sorted

DRIFT_THRESHOLD = 0.5  # recent level this many series standard deviations from the overall mean
MIN_BATCH, MAX_BATCH = 32, 256
# On GPUs a step of 256 windows takes a few ms, mostly kernel launches: larger panels get larger
# batches per GPU, the learning rate scaled with them and warmed up (choose_warmup_steps).
MAX_GPU_BATCH = 1024
WARMUP_SHARE = 0.05  # of the step budget (Goyal et al.: about 5 of 90 epochs), within an epoch
BATCHES_PER_PASS = 100  # a batch about this many times smaller than the training windows
MAX_EPOCH_STEPS = 100  # validate at least this often
# The cap binds from about 34,000 windows on (batch 256). US employment (52k windows, seed 42)
# reached validation MAE 37.1 at 500 steps and 33.4 at 800 (naive 89.5).
PASSES, MIN_STEPS, MAX_STEPS = 6, 300, 800
PATIENCE_STEPS = 300  # early stopping waits at least this many steps (and 6 epochs)
# Budgets that may follow the first while the validation improves. With 6 passes the best epoch
# was the last one in 10 of the 24 runs of `make bench-quality` (seeds 42, 1, 7); on
# aus_accommodation (seed 42) 3 budgets took the TFT's validation MAE from 18.55 to 16.81.
EXTEND_BUDGETS = 2
SMALL_DATA_WINDOWS, LARGE_DATA_WINDOWS = 5_000, 100_000
REFERENCE_LEARNING_RATE, REFERENCE_BATCH = 0.007, 256  # the stallion preset's, tuned there


@dataclass(frozen=True)
class Choice:
    """One automatic choice: hyperparameter, value and why."""

    name: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.name}={self.value}: {self.reason}"


# --------------------------------------------------------------------------------------------
# Statistics of the data
# --------------------------------------------------------------------------------------------
def series_drift(
    frame: pd.DataFrame, group_ids: Sequence[str], time_idx: str, target: str, recent: int
) -> np.ndarray:
    """Per series, |mean of the last `recent` values - series mean| / series std (series
    without variation left out): what `level_drift` takes the median of."""
    keys = list(group_ids)
    ordered = frame.sort_values(time_idx, kind="stable")
    overall = ordered.groupby(keys, observed=True)[target].agg(["mean", "std"])
    tail = ordered.groupby(keys, observed=True).tail(recent)
    recent_mean = tail.groupby(keys, observed=True)[target].mean()
    drift = (recent_mean - overall["mean"]).abs() / overall["std"].where(overall["std"] > 0)
    return drift.dropna().to_numpy(dtype=float)


def level_drift(
    frame: pd.DataFrame, group_ids: Sequence[str], time_idx: str, target: str, recent: int
) -> float:
    """Median over series of `series_drift`: about 0 for stationary series, about 1.7 for a
    straight trend, large after level shifts."""
    return median_of([series_drift(frame, group_ids, time_idx, target, recent)])


def median_of(parts: Sequence[np.ndarray], empty: float = 0.0) -> float:
    """The median of per-series statistics, each host's series in one part (`empty` without
    any)."""
    values = np.concatenate(parts) if parts else np.empty(0)
    return float(np.median(values)) if len(values) else empty


def seasonal_ratios(
    frame: pd.DataFrame,
    group_ids: Sequence[str],
    time_idx: str,
    target: str,
    season: int,
    horizon: int,
) -> np.ndarray:
    """Per series, the mean absolute difference of its values a season apart over that of its
    values 1 to `horizon` steps apart (averaged over those steps): below 1 where the value one
    season back forecasts the horizon better than the last value does (series too short or
    without variation left out)."""
    keys = [*group_ids, time_idx]
    ordered = frame if is_sorted(frame, keys) else frame.sort_values(keys, kind="stable")
    series = ordered.groupby(list(group_ids), observed=True, sort=False).ngroup().to_numpy()
    values = ordered[target].to_numpy(dtype=np.float64)
    count = int(series.max()) + 1 if len(series) else 0

    def apart(steps: int) -> np.ndarray:
        same = series[steps:] == series[:-steps]
        errors = np.abs(values[steps:] - values[:-steps])[same]
        where = series[steps:][same]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(where, errors, count) / np.bincount(where, minlength=count)

    persistence = np.mean([apart(k) for k in range(1, horizon + 1)], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = apart(season) / persistence
    return ratios[np.isfinite(ratios)]


# --------------------------------------------------------------------------------------------
# Rules: pure functions of the statistics
# --------------------------------------------------------------------------------------------
def choose_target_normalizer(drift: float, min_encoder_length: int) -> Choice:
    if drift > DRIFT_THRESHOLD and min_encoder_length < 2:
        return Choice(
            "target_normalizer",
            "group",
            f"series drift (median recent shift {drift:.2f} standard deviations), but windows "
            f"with min_encoder_length={min_encoder_length} step are too short to scale by their "
            "own history: scaled per series",
        )
    if drift > DRIFT_THRESHOLD:
        return Choice(
            "target_normalizer",
            "encoder",
            f"series drift from their overall level (median recent shift {drift:.2f} standard "
            f"deviations > {DRIFT_THRESHOLD}): scaled per window, relative to the recent past",
        )
    return Choice(
        "target_normalizer",
        "group",
        f"series keep their level (median recent shift {drift:.2f} standard deviations "
        f"<= {DRIFT_THRESHOLD}): scaled per series",
    )


def choose_target_unit(spread: float, transformation: str | None) -> Choice:
    if transformation == "logit":
        return Choice("target_unit", 1.0, "target_transformation=logit needs values in (0, 1)")
    unit = unit_for(spread)
    return Choice(
        "target_unit",
        unit,
        f"median series standard deviation {spread:.3g}: the model sees the target in units of "
        f"{unit:g} (between {SPREAD:g} and {10 * SPREAD:g}), forecasts and metrics are in the "
        "data's unit",
    )


# Calendar variables by the unit of the time step (pandas' offset names).
_CALENDAR_BY_UNIT = {
    **dict.fromkeys(("QS", "QE", "BQS", "BQE"), ("quarter",)),
    **dict.fromkeys(("MS", "ME", "SMS", "SME", "BMS", "BME", "W"), ("month",)),
    **dict.fromkeys(("D", "B", "C"), ("day_of_week", "month")),
    **dict.fromkeys(("h", "bh", "cbh", "min", "s"), ("hour", "day_of_week")),
}


def choose_calendar_features(freq: str | None) -> Choice:
    """Where each step falls in the year, week or day, for the unit of `freq`: the model then
    need not infer seasonality from the shape of the history alone. Steps of several days skip
    weekdays (7D: always the same), so they get the month alone."""
    if not freq:
        return Choice("calendar_features", [], "no dates (an integer time index)")
    offset = to_offset(normalize_freq(freq))
    unit = offset.name.split("-")[0]  # W-MON → W, QS-JAN → QS
    variables = list(_CALENDAR_BY_UNIT.get(unit, ()))
    if unit in ("D", "B", "C") and offset.n > 1:
        variables.remove("day_of_week")
    if not variables:
        return Choice("calendar_features", [], f"freq={freq}: no calendar variable below a year")
    return Choice(
        "calendar_features",
        variables,
        f"freq={freq}: the {' and '.join(v.replace('_', ' ') for v in variables)} of each step "
        "as known categoricals",
    )


def choose_seasonal_input(season: int | None, horizon: int, ratio: float | None) -> Choice:
    """The target one season back as a known input: a seasonal naive forecast the model can
    lean on and correct. Known for every forecast step only when the horizon is at most a
    season; kept where, in the training data, it forecasts the horizon at least as well as the
    last value (`seasonal_ratios`' median `ratio` at most 1). Measured on 1 seed (3 on Stallion):
    the TFT alone from 23.1 to 18.4 MAE on 8 quarterly series (ratio 0.76), from 0.81 to 0.58 on
    a weekly one (1.00); on Stallion's raw columns (1.03) no better for the TFT and 1.3% worse
    for the combination, on US employment (1.34) no change."""
    if season is None:
        return Choice("seasonal_input", "false", "no season (season_length, freq)")
    if season < horizon:
        return Choice(
            "seasonal_input",
            "false",
            f"a season of {season} steps is shorter than the horizon ({horizon}): not known "
            "over all of it",
        )
    assert ratio is not None
    if ratio > 1.0:
        return Choice(
            "seasonal_input",
            "false",
            f"the value one season back forecasts the training data's horizon worse than the "
            f"last value (median ratio of their errors {ratio:.3f} > 1)",
        )
    return Choice(
        "seasonal_input",
        "true",
        f"a season of {season} steps covers the horizon ({horizon}) and the value one season "
        f"back forecasts it at least as well as the last value (median ratio of their errors "
        f"{ratio:.3f} <= 1)",
    )


def _power_of_two_floor(value: float) -> int:
    return 2 ** max(0, math.floor(math.log2(max(value, 1.0))))


def choose_batch_size(windows: int, accelerator: str = "cpu") -> Choice:
    largest = MAX_GPU_BATCH if accelerator == "gpu" else MAX_BATCH
    size = min(largest, max(MIN_BATCH, _power_of_two_floor(windows / BATCHES_PER_PASS)))
    return Choice(
        "batch_size",
        size,
        f"{windows:,} training windows: about {BATCHES_PER_PASS} batches per pass, "
        f"a power of two within {MIN_BATCH}-{largest}"
        + (" (per GPU)" if accelerator == "gpu" else ""),
    )


def steps_per_pass(windows: int, batch_size: int) -> int:
    return max(1, math.ceil(windows / batch_size))


def choose_epoch_length(windows: int, batch_size: int) -> Choice:
    steps = steps_per_pass(windows, batch_size)
    if steps <= MAX_EPOCH_STEPS:
        return Choice("limit_train_batches", 1.0, f"every batch ({steps}) in each epoch")
    return Choice(
        "limit_train_batches",
        MAX_EPOCH_STEPS,
        f"{MAX_EPOCH_STEPS} of {steps} batches per epoch, to validate (and keep the best "
        "weights) often",
    )


def epoch_steps(windows: int, batch_size: int, limit: float) -> int:
    """Batches in one epoch under Lightning's reading of limit_train_batches."""
    steps = steps_per_pass(windows, batch_size)
    return max(1, int(steps * limit)) if isinstance(limit, float) else min(steps, int(limit))


def choose_max_epochs(windows: int, batch_size: int, epoch: int) -> Choice:
    passes = steps_per_pass(windows, batch_size) * PASSES
    budget = min(MAX_STEPS, max(MIN_STEPS, passes))
    epochs = max(1, math.ceil(budget / epoch))
    return Choice(
        "max_epochs",
        epochs,
        f"a budget of {budget} steps ({PASSES} passes over the windows = {passes} steps, "
        f"within {MIN_STEPS}-{MAX_STEPS}) in epochs of {epoch} batches",
    )


def choose_extend_epochs(budget_epochs: int, chosen: bool) -> Choice:
    """Up to EXTEND_BUDGETS more budgets while the validation improves, where the budget is the
    recipe's (`chosen`); none past a max_epochs given."""
    if not chosen:
        return Choice("extend_epochs", 0, "max_epochs is given: training stops there")
    return Choice(
        "extend_epochs",
        EXTEND_BUDGETS * budget_epochs,
        f"training goes on past the budget while the validation still improves (early stopping "
        f"ends it), up to {EXTEND_BUDGETS} more budgets, each epoch begun within "
        "extend_time_limit_s of training",
    )


def choose_early_stopping_patience(epoch: int) -> Choice:
    patience = max(6, math.ceil(PATIENCE_STEPS / epoch))
    return Choice(
        "early_stopping_patience",
        patience,
        f"at least 6 epochs and {PATIENCE_STEPS} steps without improvement; the best epoch's "
        "weights are the model",
    )


def choose_reduce_on_plateau_patience(early_stopping_patience: int) -> Choice:
    patience = max(1, early_stopping_patience // 3)
    return Choice(
        "reduce_on_plateau_patience",
        patience,
        "the learning rate halves a third of the way to early stopping",
    )


def choose_ema_decay(epoch: int) -> Choice:
    steps = min(max(epoch, 10), MAX_EPOCH_STEPS)
    return Choice(
        "ema_decay",
        round(1.0 - 1.0 / steps, 4),
        f"the validated weights are an average over about {steps} steps (an epoch)",
    )


def choose_learning_rate(batch_size: int) -> Choice:
    rate = round(REFERENCE_LEARNING_RATE * math.sqrt(batch_size / REFERENCE_BATCH), 5)
    return Choice(
        "learning_rate",
        rate,
        f"{REFERENCE_LEARNING_RATE} at batch {REFERENCE_BATCH} (tuned on Stallion), scaled by "
        f"the square root of batch {batch_size}/{REFERENCE_BATCH}",
    )


def choose_warmup_steps(batch_size: int, budget: int, epoch: int) -> Choice:
    """Batches above the one the learning rate was tuned at take a larger (square-root scaled)
    step: reached linearly over the first WARMUP_SHARE of the `budget` steps, within the first
    epoch (of `epoch` steps; the plateau schedule acts after epochs)."""
    if batch_size <= REFERENCE_BATCH:
        return Choice(
            "warmup_steps", 0, f"batch {batch_size} <= {REFERENCE_BATCH}, the tuned batch: none"
        )
    steps = max(1, min(epoch, round(WARMUP_SHARE * budget)))
    return Choice(
        "warmup_steps",
        steps,
        f"batch {batch_size} > {REFERENCE_BATCH}, the tuned batch: the scaled learning rate "
        f"reached linearly over {steps} steps ({WARMUP_SHARE:.0%} of the {budget}-step budget, "
        "within the first epoch)",
    )


def choose_hidden_size(windows: int, attention_heads: int) -> Choice:
    size = 16 if windows < SMALL_DATA_WINDOWS else 32
    size = math.ceil(size / attention_heads) * attention_heads  # heads divide the width
    return Choice(
        "hidden_size",
        size,
        f"{windows:,} training windows (width 16 below {SMALL_DATA_WINDOWS:,}, else 32)",
    )


def choose_hidden_continuous_size(hidden_size: int) -> Choice:
    return Choice("hidden_continuous_size", max(1, hidden_size // 2), "half the width")


def choose_dropout(windows: int) -> Choice:
    rate = 0.2 if windows < LARGE_DATA_WINDOWS else 0.1
    return Choice(
        "dropout", rate, f"{windows:,} training windows (0.1 from {LARGE_DATA_WINDOWS:,} up)"
    )


# --------------------------------------------------------------------------------------------
# Applying the rules to a configuration
# --------------------------------------------------------------------------------------------
def _fill(section: Any, choice: Choice, made: list[Choice]) -> Any:
    """`section` with `choice` applied when the hyperparameter is unset; records it."""
    if getattr(section, choice.name) is not None:
        return section
    made.append(choice)
    return dataclasses.replace(section, **{choice.name: choice.value})


def resolve_data(
    config: DataConfig,
    frame: pd.DataFrame,
    gather: Callable[[str, Any], list[Any]] | None = None,
) -> tuple[DataConfig, list[Choice]]:
    """The dataset's automatic choices (before the TimeSeriesDataSet is built), from the
    statistics of every host's series (`gather`: shares.Hosts.gather; None: one host)."""
    made: list[Choice] = []
    if config.target_unit is None:
        spread = target_spread(frame, config.group_ids, config.target)
        choice = choose_target_unit(spread, config.target_transformation)
        config = dataclasses.replace(config, target_unit=choice.value)
        made.append(choice)
    if config.target_normalizer == "auto":
        drifts = series_drift(
            frame, config.group_ids, config.time_idx, config.target, config.max_encoder_length
        )
        drift = median_of(gather("series_drift", drifts) if gather else [drifts])
        choice = choose_target_normalizer(drift, config.resolved_min_encoder_length)
        config = dataclasses.replace(config, target_normalizer=choice.value)
        made.append(choice)
    if config.calendar_features == ["auto"]:
        choice = choose_calendar_features(config.freq)
        config = dataclasses.replace(config, calendar_features=choice.value)
        made.append(choice)
    elif config.calendar_features == ["none"]:
        config = dataclasses.replace(config, calendar_features=[])
    if config.seasonal_input == "auto":
        season, horizon = job_season(config), config.max_prediction_length
        ratio = None
        if season is not None and season >= horizon:
            ratios = seasonal_ratios(
                frame, config.group_ids, config.time_idx, config.target, season, horizon
            )
            ratio = median_of(gather("seasonal_ratios", ratios) if gather else [ratios], np.inf)
        choice = choose_seasonal_input(season, horizon, ratio)
        config = dataclasses.replace(config, seasonal_input=choice.value)
        made.append(choice)
    return config, made


def choose_val_batch_size(batch_size: int) -> Choice:
    return Choice("val_batch_size", 8 * batch_size, "8 x batch_size: validation keeps no gradients")


def scaled_learning_rate(learning_rate: float, world_size: int, rule: str) -> float:
    """The learning rate for `world_size` data-parallel processes, each with the batch size
    `learning_rate` was chosen for: the global batch grows with the world, and so, by `rule`,
    does the step (sqrt: the usual safe choice for Adam; linear: Goyal et al. for SGD)."""
    factor = {"none": 1.0, "sqrt": world_size**0.5, "linear": float(world_size)}[rule]
    return learning_rate * factor


def choose_process_learning_rate(learning_rate: float, world_size: int, rule: str) -> Choice:
    rate = scaled_learning_rate(learning_rate, world_size, rule)
    return Choice(
        "learning_rate",
        rate,
        f"{learning_rate:g} for {world_size} processes (learning_rate_scaling={rule}: the "
        f"global batch is {world_size} x batch_size)",
    )


@dataclass(frozen=True)
class Settings:
    """What the job trains with, every automatic choice made: what `model.build_model` and
    `trainer.build_trainer` take. `config` holds no unset automatic value; `learning_rate` is
    the optimizer's initial rate for this world (`config`'s is the one per process, which
    checkpoints are stamped with: a resumed job may run on another number of processes)."""

    config: JobConfig
    learning_rate: float
    choices: tuple[Choice, ...]

    def __post_init__(self) -> None:
        unset = [
            name for name in (*AUTOMATIC, "val_batch_size") if self.config.flat()[name] is None
        ]
        if unset:
            raise ValueError(f"settings with {', '.join(unset)} unset: recipe.settle sets them")


def settle(
    config: JobConfig,
    windows: int,
    world_size: int = 1,
    data_choices: Sequence[Choice] = (),
    accelerator: str = "cpu",
) -> Settings:
    """`config` (its data section resolved by `resolve_data`, which made `data_choices`) with
    every remaining automatic choice made, for `windows` training windows and `world_size`
    data-parallel processes on `accelerator` (gpu or cpu)."""
    config, made = resolve_training(config, windows, accelerator)
    made = [*data_choices, *made]
    training = _fill(config.training, choose_val_batch_size(config.training.batch_size), made)
    config = dataclasses.replace(config, training=training)
    learning_rate = config.model.learning_rate
    if world_size > 1:
        choice = choose_process_learning_rate(
            learning_rate, world_size, config.training.learning_rate_scaling
        )
        learning_rate = choice.value
        made.append(choice)
    return Settings(config, learning_rate, tuple(made))


def resolve_training(
    config: JobConfig, windows: int, accelerator: str = "cpu"
) -> tuple[JobConfig, list[Choice]]:
    """The model's and the training's automatic choices, from the number of training windows
    (and, for the batch size, the accelerator)."""
    made: list[Choice] = []
    model, training = config.model, config.training
    training = _fill(training, choose_batch_size(windows, accelerator), made)
    training = _fill(training, choose_epoch_length(windows, training.batch_size), made)
    epoch = epoch_steps(windows, training.batch_size, training.limit_train_batches)
    chosen = training.max_epochs is None
    training = _fill(training, choose_max_epochs(windows, training.batch_size, epoch), made)
    training = _fill(training, choose_extend_epochs(training.max_epochs, chosen), made)
    training = _fill(training, choose_early_stopping_patience(epoch), made)
    budget = training.max_epochs * epoch
    training = _fill(training, choose_warmup_steps(training.batch_size, budget, epoch), made)
    model = _fill(model, choose_reduce_on_plateau_patience(training.early_stopping_patience), made)
    model = _fill(model, choose_ema_decay(epoch), made)
    model = _fill(model, choose_learning_rate(training.batch_size), made)
    model = _fill(model, choose_hidden_size(windows, model.attention_head_size), made)
    model = _fill(model, choose_hidden_continuous_size(model.hidden_size), made)
    model = _fill(model, choose_dropout(windows), made)
    return dataclasses.replace(config, model=model, training=training), made


# Every hyperparameter the recipe may choose: presets set all of them (tests check it).
AUTOMATIC = (
    "target_normalizer",
    "calendar_features",
    "seasonal_input",
    "batch_size",
    "limit_train_batches",
    "max_epochs",
    "extend_epochs",
    "early_stopping_patience",
    "warmup_steps",
    "reduce_on_plateau_patience",
    "ema_decay",
    "learning_rate",
    "hidden_size",
    "hidden_continuous_size",
    "dropout",
)
