"""The default recipe: every automatic choice is a pure function of statistics of the data, set
values win over it, and presets fix everything it would choose."""

from __future__ import annotations

import dataclasses
import types

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.demos.boring_classes import BoringModel

from tft_sagemaker import recipe
from tft_sagemaker.config import build_config
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.sagemaker.launch_plan import plan_launch
from tft_sagemaker.sagemaker.paths import JobPaths
from tft_sagemaker.trainer import ExtensionTimeLimit, build_trainer

BASE = {"target": "y", "group_ids": "series"}


def panel(values: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame({"series": name, "time_idx": np.arange(len(y)), "y": y})
            for name, y in values.items()
        ],
        ignore_index=True,
    )


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def test_level_drift_of_a_straight_trend_and_a_stationary_series() -> None:
    n, recent = 120, 12
    trend = panel({"a": np.arange(n, dtype=float), "b": 5.0 * np.arange(n)})
    # |mean of the last 12 - mean| / std of 0..119: (113.5 - 59.5) / 34.785
    expected = (np.arange(n - recent, n).mean() - np.arange(n).mean()) / np.arange(n).std(ddof=1)
    assert recipe.level_drift(trend, ["series"], "time_idx", "y", recent) == pytest.approx(expected)
    assert expected == pytest.approx(1.552, abs=1e-3)

    seasonal = np.tile([1.0, 3.0, 2.0, 4.0], n // 4)  # the last 12 hold 3 whole seasons
    flat = panel({"a": seasonal, "b": seasonal + 10})
    assert recipe.level_drift(flat, ["series"], "time_idx", "y", recent) == pytest.approx(0.0)


def test_level_drift_reads_each_series_in_time_order_and_skips_constant_ones() -> None:
    frame = panel({"a": np.arange(20, dtype=float), "b": np.full(20, 3.0)})
    shuffled = frame.sample(frac=1.0, random_state=0)
    ordered = recipe.level_drift(frame, ["series"], "time_idx", "y", 5)
    assert recipe.level_drift(shuffled, ["series"], "time_idx", "y", 5) == pytest.approx(ordered)
    # The constant series has no spread: the median is the trending series' drift alone.
    alone = recipe.level_drift(frame[frame["series"].eq("a")], ["series"], "time_idx", "y", 5)
    assert ordered == pytest.approx(alone)


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("drift", "min_encoder_length", "expected"),
    [
        (0.0, 12, "group"),
        (0.5, 12, "group"),
        (0.51, 12, "encoder"),
        (1.7, 2, "encoder"),
        (1.7, 1, "group"),  # a window of one step has no scale of its own
    ],
)
def test_target_normalizer(drift: float, min_encoder_length: int, expected: str) -> None:
    choice = recipe.choose_target_normalizer(drift, min_encoder_length)
    assert choice.value == expected
    assert f"{drift:.2f}" in choice.reason


@pytest.mark.parametrize(
    ("windows", "expected"),
    [(10, 32), (3_199, 32), (6_400, 64), (12_799, 64), (12_800, 128), (25_600, 256), (10**7, 256)],
)
def test_batch_size(windows: int, expected: int) -> None:
    assert recipe.choose_batch_size(windows).value == expected


@pytest.mark.parametrize(
    ("windows", "batch", "limit", "epoch"),
    [(3_200, 32, 1.0, 100), (3_201, 32, 100, 100), (50_000, 256, 100, 100), (640, 32, 1.0, 20)],
)
def test_epoch_length(windows: int, batch: int, limit: float, epoch: int) -> None:
    chosen = recipe.choose_epoch_length(windows, batch).value
    assert chosen == limit and type(chosen) is type(limit)  # 1.0: every batch; 100: a count
    assert recipe.epoch_steps(windows, batch, chosen) == epoch


@pytest.mark.parametrize(
    ("windows", "batch", "epoch", "epochs"),
    [
        (640, 32, 20, 15),  # 6 passes = 120 steps: raised to the 300-step floor
        (12_800, 64, 100, 8),  # 6 passes = 1,200 steps: capped at 800
        (3_200, 32, 100, 6),  # 6 passes = 600 steps in epochs of 100
        (4_000, 64, 63, 6),  # 6 passes = 378 steps in epochs of 63
        (1_000, 32, 32, 10),  # 6 passes = 192 steps: 300 in epochs of 32
    ],
)
def test_max_epochs_spend_the_step_budget(
    windows: int, batch: int, epoch: int, epochs: int
) -> None:
    assert recipe.choose_max_epochs(windows, batch, epoch).value == epochs


def test_training_may_go_on_past_the_recipes_budget_only() -> None:
    assert recipe.choose_extend_epochs(8, chosen=True).value == 16
    assert recipe.choose_extend_epochs(8, chosen=False).value == 0
    given = build_config({**BASE, "max_epochs": "3"})
    resolved, _ = recipe.resolve_training(given, windows=50_000)
    assert (resolved.training.max_epochs, resolved.training.extend_epochs) == (3, 0)
    auto, _ = recipe.resolve_training(build_config(BASE), windows=50_000)
    assert auto.training.extend_epochs == 2 * auto.training.max_epochs


def test_the_job_s_trainer_runs_the_extension_within_its_limit(tmp_path) -> None:
    config = build_config({**BASE, "accelerator": "cpu"})
    plan = plan_launch({}, None, gpus_per_host=0, cpus_per_host=1)
    paths = JobPaths.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    settings = recipe.settle(config, 1_000, plan.world_size)
    training = settings.config.training
    trainer = build_trainer(settings, plan, paths, {})
    assert trainer.max_epochs == training.max_epochs + training.extend_epochs
    (limit,) = [c for c in trainer.callbacks if isinstance(c, ExtensionTimeLimit)]
    assert (limit.budget, limit.limit_s) == (training.max_epochs, 120.0)
    # After early stopping, so that it sees that epoch's decision.
    early = next(i for i, c in enumerate(trainer.callbacks) if isinstance(c, EarlyStopping))
    assert trainer.callbacks.index(limit) > early
    given = recipe.settle(build_config({**BASE, "max_epochs": "4"}), 1_000)
    trainer = build_trainer(given, plan, paths, {})
    assert trainer.max_epochs == 4
    assert not [c for c in trainer.callbacks if isinstance(c, ExtensionTimeLimit)]


class _Improving(BoringModel):
    """val_loss falls every epoch until `plateau` (then stays)."""

    def __init__(self, plateau: int) -> None:
        super().__init__()
        self.plateau = plateau

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", 1.0 / (1 + min(self.current_epoch, self.plateau)))


@pytest.mark.parametrize(
    ("plateau", "limit_s", "epochs"),
    [
        (100, 1e9, 6),  # still improving: the budget's 2 and all 4 more
        (100, 0.0, 2),  # the time limit is spent: none past the budget
        (2, 1e9, 4),  # improving to epoch 2, then early stopping (patience 1) at epoch 4
        (0, 1e9, 2),  # no improvement: early stopping ends it within the budget
    ],
)
def test_training_goes_on_past_the_budget_while_the_validation_improves(
    tmp_path, plateau: int, limit_s: float, epochs: int
) -> None:
    trainer = pl.Trainer(
        max_epochs=2 + 4,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[
            EarlyStopping("val_loss", patience=1, min_delta=1e-4),
            ExtensionTimeLimit(budget=2, limit_s=limit_s),
        ],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(_Improving(plateau))
    assert trainer.current_epoch == epochs


@pytest.mark.parametrize(
    ("epoch", "patience", "plateau"), [(100, 6, 2), (20, 15, 5), (1, 300, 100)]
)
def test_patience(epoch: int, patience: int, plateau: int) -> None:
    assert recipe.choose_early_stopping_patience(epoch).value == patience
    assert recipe.choose_reduce_on_plateau_patience(patience).value == plateau


@pytest.mark.parametrize(
    ("epoch", "decay"), [(1, 0.9), (10, 0.9), (50, 0.98), (100, 0.99), (500, 0.99)]
)
def test_ema_decay_averages_about_an_epoch(epoch: int, decay: float) -> None:
    assert recipe.choose_ema_decay(epoch).value == pytest.approx(decay)


@pytest.mark.parametrize(("batch", "rate"), [(256, 0.007), (64, 0.0035), (32, 0.002475)])
def test_learning_rate_scales_with_the_square_root_of_the_batch(batch: int, rate: float) -> None:
    assert recipe.choose_learning_rate(batch).value == pytest.approx(rate, abs=1e-5)


@pytest.mark.parametrize(
    ("windows", "heads", "hidden", "dropout"),
    [(4_999, 2, 16, 0.2), (5_000, 2, 32, 0.2), (5_000, 3, 33, 0.2), (100_000, 4, 32, 0.1)],
)
def test_model_size(windows: int, heads: int, hidden: int, dropout: float) -> None:
    assert recipe.choose_hidden_size(windows, heads).value == hidden
    assert recipe.choose_hidden_continuous_size(hidden).value == hidden // 2
    assert recipe.choose_dropout(windows).value == dropout


# --------------------------------------------------------------------------------------------
# Applying them
# --------------------------------------------------------------------------------------------
def test_resolve_fills_what_is_unset_and_keeps_what_is_set() -> None:
    config = build_config({**BASE, "batch_size": "64", "dropout": "0.3", "ema_decay": "0"})
    resolved, choices = recipe.resolve_training(config, windows=50_000)
    chosen = {c.name: c.value for c in choices}
    assert set(chosen) == set(recipe.AUTOMATIC) - {
        "target_normalizer",
        "calendar_features",
        "seasonal_input",  # data choices: resolve_data's
        "batch_size",
        "dropout",
        "ema_decay",
    }
    assert (resolved.training.batch_size, resolved.model.dropout, resolved.model.ema_decay) == (
        64,
        0.3,
        0.0,
    )
    # Rules downstream of a set value follow it: batches of 64 → 782 per pass, epochs of 100.
    assert resolved.training.limit_train_batches == 100
    assert resolved.model.learning_rate == pytest.approx(0.0035)
    assert resolved.model.hidden_size == 32
    flat = resolved.flat()
    assert all(flat[name] is not None for name in recipe.AUTOMATIC)
    assert all(str(c).startswith(f"{c.name}={c.value}: ") for c in choices)


def test_resolve_data_chooses_the_normalizer_only_when_auto() -> None:
    trend = panel({"a": np.arange(60.0), "b": np.arange(60.0) * 2})
    config = build_config(BASE)
    resolved, choices = recipe.resolve_data(config.data, trend)
    assert resolved.target_normalizer == "encoder" and [c.name for c in choices] == [
        "target_unit",  # spreads 17 and 35: 1
        "target_normalizer",
        "calendar_features",  # no dates: none
        "seasonal_input",  # no season: false
    ]
    assert resolved.calendar_features == [] and resolved.target_unit == 1.0
    fixed = build_config(
        {
            **BASE,
            "target_normalizer": "group",
            "calendar_features": "",
            "target_unit": "1e-9",
            "seasonal_input": "false",
        }
    ).data
    assert recipe.resolve_data(fixed, trend) == (fixed, [])


@pytest.mark.parametrize(
    ("freq", "expected"),
    [
        (None, []),
        ("YS", []),
        ("QS-JAN", ["quarter"]),
        ("MS", ["month"]),
        ("M", ["month"]),  # pandas' old name of ME
        ("W-SUN", ["month"]),
        ("D", ["day_of_week", "month"]),
        ("B", ["day_of_week", "month"]),
        ("7D", ["month"]),  # always the same weekday
        ("h", ["hour", "day_of_week"]),
        ("15min", ["hour", "day_of_week"]),
    ],
)
def test_calendar_features_follow_the_frequency(freq: str | None, expected: list[str]) -> None:
    choice = recipe.choose_calendar_features(freq)
    assert choice.value == expected and choice.reason


@pytest.mark.parametrize(
    ("season", "horizon", "ratio", "expected"),
    [
        (None, 4, None, "false"),
        (7, 14, None, "false"),  # not known over the whole horizon
        (4, 4, 0.76, "true"),
        (12, 6, 1.0, "true"),
        (12, 6, 1.03, "false"),  # no better than the last value
    ],
)
def test_the_seasonal_input_needs_a_season_that_covers_and_forecasts_the_horizon(
    season: int | None, horizon: int, ratio: float | None, expected: str
) -> None:
    choice = recipe.choose_seasonal_input(season, horizon, ratio)
    assert choice.value == expected and choice.reason


def test_seasonal_ratios_compare_a_season_back_with_the_last_values() -> None:
    """A pure season (every value repeats 4 steps later) against persistence; a trend (each
    value one more) a season back is 4 behind, 1 to 4 steps back 2.5 on average."""
    season = np.tile([1.0, 5.0, 3.0, 8.0], 6)
    frame = panel({"season": season, "trend": np.arange(24.0), "flat": np.ones(24)})
    shuffled = frame.sample(frac=1.0, random_state=0)
    ratios = recipe.seasonal_ratios(shuffled, ["series"], "time_idx", "y", 4, 4)
    assert ratios.tolist() == pytest.approx([0.0, 4.0 / 2.5])  # the flat series left out


def test_resolve_data_chooses_the_seasonal_input_from_the_data() -> None:
    quarterly = {**BASE, "date_column": "q", "freq": "QS", "target_normalizer": "group"}
    quarterly |= {"target_unit": "1", "max_prediction_length": "4", "calendar_features": "none"}
    seasonal = panel({"a": np.tile([1.0, 5.0, 3.0, 8.0], 8), "b": np.tile([2.0, 9.0, 4.0, 6.0], 8)})
    data, choices = recipe.resolve_data(build_config(quarterly).data, seasonal)
    assert data.seasonal_input == "true" and [c.name for c in choices] == ["seasonal_input"]
    trend = panel({"a": np.arange(32.0), "b": np.arange(32.0) * 2})
    data, choices = recipe.resolve_data(build_config(quarterly).data, trend)
    assert data.seasonal_input == "false" and "1.600 > 1" in choices[0].reason
    given = build_config({**quarterly, "seasonal_input": "false"}).data
    data, choices = recipe.resolve_data(given, seasonal)
    assert data.seasonal_input == "false" and choices == []


@pytest.mark.parametrize(
    ("given", "resolved", "chosen"),
    [("auto", ["day_of_week", "month"], True), ("month", ["month"], False), ("none", [], False)],
)
def test_resolve_data_chooses_the_calendar_only_when_auto(
    given: str, resolved: list[str], chosen: bool
) -> None:
    daily = {**BASE, "date_column": "day", "freq": "D", "target_normalizer": "group"}
    daily |= {"target_unit": "1", "seasonal_input": "false"}
    config = build_config({**daily, "calendar_features": given}).data
    data, choices = recipe.resolve_data(config, panel({"a": np.ones(30)}))
    assert data.calendar_features == resolved
    assert [c.name for c in choices] == (["calendar_features"] if chosen else [])


@pytest.mark.parametrize(
    ("world", "rule", "expected"),
    [
        (1, "sqrt", 0.01),
        (4, "sqrt", 0.02),
        (16, "sqrt", 0.04),
        (8, "linear", 0.08),
        (8, "none", 0.01),
    ],
)
def test_learning_rate_grows_with_the_global_batch(world: int, rule: str, expected: float) -> None:
    assert recipe.scaled_learning_rate(0.01, world, rule) == pytest.approx(expected)


def test_settle_makes_every_remaining_choice_once() -> None:
    config = build_config({**BASE, "learning_rate": "0.01", "learning_rate_scaling": "sqrt"})
    data, data_choices = recipe.resolve_data(config.data, panel({"a": np.ones(30)}))
    settings = recipe.settle(
        dataclasses.replace(config, data=data), 5_000, world_size=4, data_choices=data_choices
    )
    names = [choice.name for choice in settings.choices]
    assert names[: len(data_choices)] == [c.name for c in data_choices]
    assert "val_batch_size" in names and names[-1] == "learning_rate"
    assert settings.config.training.val_batch_size == 8 * settings.config.training.batch_size
    # The per-process rate stays in the configuration (checkpoints are stamped with it); the
    # optimizer starts at the rate for 4 processes.
    assert settings.config.model.learning_rate == 0.01
    assert settings.learning_rate == pytest.approx(0.02)
    assert str(settings.choices[-1]).startswith("learning_rate=0.02: 0.01 for 4 processes")
    assert recipe.settle(settings.config, 5_000).learning_rate == 0.01  # one process: as given


def test_settings_cannot_hold_an_unmade_choice() -> None:
    with pytest.raises(ValueError, match="batch_size, limit_train_batches, max_epochs"):
        recipe.Settings(build_config(BASE), 0.01, ())


@pytest.mark.parametrize("name", sorted(PRESET_VALUES))
def test_presets_fix_everything_the_recipe_chooses(name: str) -> None:
    config = build_config({"preset": name}, {}, PRESET_VALUES)
    resolved, choices = recipe.resolve_training(config, windows=12_345)
    assert choices == [] and resolved == config
    # Everything but the target's unit, which is the data's (units.py).
    data = dataclasses.replace(config.data, target_unit=1.0)
    assert recipe.resolve_data(data, pd.DataFrame())[1] == []


# --------------------------------------------------------------------------------------------
# Large batches on GPUs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("windows", "cpu", "gpu"),
    [(3_199, 32, 32), (25_600, 256, 256), (51_200, 256, 512), (10**7, 256, 1024)],
)
def test_gpu_batch_size(windows: int, cpu: int, gpu: int) -> None:
    assert recipe.choose_batch_size(windows).value == cpu
    choice = recipe.choose_batch_size(windows, "gpu")
    assert choice.value == gpu and choice.reason.endswith("within 32-1024 (per GPU)")


def test_warmup_steps() -> None:
    assert recipe.choose_warmup_steps(256, 800, 100).value == 0
    assert recipe.choose_warmup_steps(1024, 800, 100).value == 40  # 5% of the budget
    assert recipe.choose_warmup_steps(1024, 800, 25).value == 25  # within the first epoch
    assert recipe.choose_warmup_steps(512, 10, 5).value == 1


def test_large_panel_on_a_gpu() -> None:
    """The 35,000-series scaling panel (60 months each, as Stallion: over a million windows)
    on one GPU: batch 1024, the learning rate sqrt-scaled to twice the tuned one, warmed up over
    40 of 800 steps; the same panel on a CPU keeps the CPU recipe (batch 256, no warm-up)."""
    config = build_config(BASE)
    gpu = recipe.settle(config, 1_200_000, accelerator="gpu").config
    assert (gpu.training.batch_size, gpu.training.max_epochs, gpu.training.warmup_steps) == (
        1024,
        8,
        40,
    )
    assert gpu.model.learning_rate == pytest.approx(2 * recipe.REFERENCE_LEARNING_RATE)
    cpu = recipe.settle(config, 1_200_000).config
    assert (cpu.training.batch_size, cpu.training.warmup_steps) == (256, 0)
    assert cpu.model.learning_rate == recipe.REFERENCE_LEARNING_RATE


def test_warmup_callback() -> None:
    from tft_sagemaker.trainer import LearningRateWarmup

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    trainer = types.SimpleNamespace(global_step=0, optimizers=[optimizer])
    warmup = LearningRateWarmup(0.02, 4)
    rates = []
    for step in range(6):
        trainer.global_step = step
        warmup.on_train_batch_start(trainer, None, None, step)  # type: ignore[arg-type]
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.005, 0.01, 0.015, 0.02, 0.02, 0.02])
