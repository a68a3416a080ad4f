"""The target's unit changes nothing but the unit of forecasts and errors: the pure steps over
1e-12..1e12 (the unit the recipe chooses, its other choices, the baselines, the scores), and a
slow test training the same panel in three units, 1e-9 apart and 1e12 apart."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SageMakerDir

from tft_sagemaker import recipe
from tft_sagemaker.artifacts import load_trained_model
from tft_sagemaker.baselines import classical_forecast, compare
from tft_sagemaker.config import build_config
from tft_sagemaker.evaluate import Forecast, score
from tft_sagemaker.predict import predict_frame
from tft_sagemaker.units import in_model_unit, target_spread, unit_for

SCALES = [10.0**k for k in range(-12, 13, 3)]


def daily_panel(scale: float, series: int = 6, days: int = 80, seed: int = 0) -> pd.DataFrame:
    """Daily series with a weekly season around levels of 20 to 80, times `scale`."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2023-01-02", periods=days, freq="D")
    frames = []
    for i in range(series):
        season = 1 + 0.3 * np.sin(2 * np.pi * np.arange(days) / 7 + rng.uniform(0, 6))
        units = rng.uniform(20, 80) * season * rng.lognormal(0, 0.1, days)
        frames.append(pd.DataFrame({"series": f"s{i}", "date": dates, "units": units * scale}))
    return pd.concat(frames, ignore_index=True)


DAILY = {
    "target": "units",
    "group_ids": "series",
    "date_column": "date",
    "freq": "D",
    "time_varying_unknown_reals": "units",
}


def with_time_idx(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(time_idx=frame.groupby("series").cumcount())


# --------------------------------------------------------------------------------------------
# Pure steps, 1e-12..1e12
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", SCALES)
def test_the_model_sees_the_same_values_in_any_unit(scale: float) -> None:
    frame = with_time_idx(daily_panel(1.0))
    scaled = frame.assign(units=frame["units"] * scale)
    spread = target_spread(frame, ["series"], "units")
    assert 10 <= spread < 100 and unit_for(spread) == 1.0  # this panel: as it is
    assert target_spread(scaled, ["series"], "units") == pytest.approx(spread * scale)
    unit = unit_for(target_spread(scaled, ["series"], "units"))
    assert unit == pytest.approx(scale, rel=1e-12)
    seen = in_model_unit(scaled, "units", unit)["units"]
    np.testing.assert_allclose(seen, frame["units"], rtol=1e-12)


@pytest.mark.parametrize("spread", [0.0, float("nan"), 1e-300, 3e-9, 10.0, 99.9, 100.0, 7e15])
def test_unit_for_any_spread(spread: float) -> None:
    unit = unit_for(spread)
    assert unit > 0 and np.log10(unit) == round(np.log10(unit))  # a power of ten
    if np.isfinite(spread) and spread > 0:
        assert 10 <= spread / unit < 100
    else:
        assert unit == 1.0


def test_a_panel_of_constant_series_and_one_of_zeros() -> None:
    frame = with_time_idx(daily_panel(1.0)).assign(units=3e-7)
    assert target_spread(frame, ["series"], "units") == pytest.approx(3e-7)
    assert target_spread(frame.assign(units=0.0), ["series"], "units") == 0.0


@pytest.mark.parametrize("scale", SCALES)
def test_recipe_choices_do_not_depend_on_the_unit(scale: float) -> None:
    frame = with_time_idx(daily_panel(1.0))
    config = build_config({**DAILY, "max_encoder_length": "14"}).data

    def choices(frame: pd.DataFrame) -> dict[str, object]:
        resolved, made = recipe.resolve_data(config, frame)
        assert resolved.target_unit == made[0].value
        return {c.name: c.value for c in made}

    plain = choices(frame)
    scaled = choices(frame.assign(units=frame["units"] * scale))
    assert scaled.pop("target_unit") == pytest.approx(scale * plain.pop("target_unit"))
    assert scaled == plain


@pytest.mark.parametrize("name", ["ets", "theta"])
@pytest.mark.parametrize("scale", [1e-12, 1e-9, 1e12])
def test_classical_baselines_forecast_in_the_series_unit(name: str, scale: float) -> None:
    frame = daily_panel(1.0)
    histories = [g.to_numpy()[:-7] for _, g in frame.groupby("series")["units"]]
    plain, plain_fallbacks = classical_forecast(name, histories, 7, 7)
    scaled, fallbacks = classical_forecast(name, [h * scale for h in histories], 7, 7)
    assert fallbacks == plain_fallbacks == 0
    np.testing.assert_allclose(scaled / scale, plain, rtol=1e-4)


@pytest.mark.parametrize("scale", SCALES)
def test_scores_and_comparisons_in_any_unit(scale: float) -> None:
    rng = np.random.default_rng(1)
    actuals = rng.uniform(20, 80, (5, 7))
    tft = actuals * rng.lognormal(0, 0.1, actuals.shape)
    naive = actuals * rng.lognormal(0, 0.3, actuals.shape)
    histories = [rng.uniform(20, 80, 30) for _ in range(5)]
    lengths = np.full(5, 7)

    def scored(c: float) -> tuple[dict[str, float], dict]:
        forecast = Forecast(
            index=pd.DataFrame({"series": range(5)}),
            quantiles=torch.tensor(tft * c, dtype=torch.float32).unsqueeze(-1),
            baseline=torch.tensor(naive * c, dtype=torch.float32),
            actuals=torch.tensor(actuals * c, dtype=torch.float32),
            lengths=torch.tensor(lengths),
            codes=torch.arange(5)[:, None],
            unit=unit_for(c * 30.0),
        )
        comparison = compare(
            tft * c, naive * c, actuals * c, lengths, [h * c for h in histories], 7, 5
        )
        return score(forecast, [0.5]), comparison.metrics

    (plain, plain_comparison), (metrics, comparison) = scored(1.0), scored(scale)
    for name in ("val_SMAPE", "baseline_val_SMAPE"):
        assert metrics[name] == pytest.approx(plain[name], rel=1e-5)
    for name in ("val_MAE", "val_RMSE", "val_quantile_loss", "baseline_val_MAE"):
        assert metrics[name] == pytest.approx(plain[name] * scale, rel=1e-5)
    assert comparison["best_baseline"] == plain_comparison["best_baseline"]
    for name in ("baseline_margin", "val_MASE", "ets_val_MASE", "theta_val_MASE"):
        assert comparison[name] == pytest.approx(plain_comparison[name], rel=1e-4)
    assert comparison["theta_val_MAE"] == pytest.approx(
        plain_comparison["theta_val_MAE"] * scale, rel=1e-4
    )


# --------------------------------------------------------------------------------------------
# The job, in three units
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_same_panel_in_three_units_trains_the_same_model(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The panel in units 1e-9 and 1e12 apart: the same recipe, the same relative errors, and
    forecasts (the job's `forecast` channel and `predict`) in the data's unit."""
    hyperparameters = {
        **DAILY,
        "max_encoder_length": "14",
        "max_prediction_length": "7",
        "max_epochs": "2",
        "limit_train_batches": "4",
        "hidden_size": "8",
        "attention_head_size": "1",
        "hidden_continuous_size": "4",
        "baseline_max_series": "6",
        "report": "false",
    }
    runs = {}
    for scale in (1e-9, 1.0, 1e12):
        job = SageMakerDir(tmp_path_factory.mktemp("units") / "opt_ml", monkeypatch)
        frame = daily_panel(scale)
        job.write_data(frame)
        job.write_data(frame, channel="forecast")
        result = job.run(hyperparameters)
        assert result.code == 0, result.failure
        # Every choice made, the recipe's among them.
        saved = json.loads((job.model_dir / "config.json").read_text())["config"]
        metrics = json.loads((job.model_dir / "metrics.json").read_text())
        channel = pd.read_parquet(job.output_dir / "data" / "forecast.parquet")
        predicted = predict_frame(load_trained_model(job.model_dir), frame)
        runs[scale] = (saved, metrics, channel, predicted)

    (saved, metrics, channel, predicted) = runs[1.0]
    assert saved["data"].pop("target_unit") == 1.0
    for scale in (1e-9, 1e12):
        s_saved, s_metrics, s_channel, s_predicted = runs[scale]
        assert s_saved["data"].pop("target_unit") == pytest.approx(scale)
        assert s_saved == saved
        assert s_metrics["val_SMAPE"] == pytest.approx(metrics["val_SMAPE"], rel=0.01)
        assert s_metrics["val_MASE"] == pytest.approx(metrics["val_MASE"], rel=0.01)
        for name in ("val_MAE", "baseline_val_MAE", "theta_val_MAE"):
            assert s_metrics[name] == pytest.approx(metrics[name] * scale, rel=0.01)
        for plain, scaled in ((channel, s_channel), (predicted, s_predicted)):
            np.testing.assert_allclose(scaled["prediction"], plain["prediction"] * scale, rtol=0.01)
            np.testing.assert_allclose(scaled["actual"], plain["actual"] * scale, rtol=1e-6)
