"""A job whose TFT does not beat its baselines says so, and fails when it must not ship
(shipping the TFT alone, ensemble=false; test_combination.py ships the combination).

The panel repeats a weekly pattern with a little noise, so the seasonal naive forecast is all
but perfect: a TFT given a budget of two batches cannot come near it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, SageMakerDir
from test_training_job import metric_values, run_capturing

SCHEMA = {
    "target": "units",
    "group_ids": "shop",
    "date_column": "day",
    "freq": "D",
    "time_varying_unknown_reals": "units",
    "max_encoder_length": "14",
    "max_prediction_length": "7",
}
SHOPS = 8


def weekly_panel(days: int = 63) -> pd.DataFrame:
    week = np.array([5.0, 6.0, 7.0, 6.0, 9.0, 14.0, 12.0])
    dates = pd.date_range("2024-01-01", periods=days, freq="D")
    noise = np.random.default_rng(0).normal(0.0, 0.01, (SHOPS, days))
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "shop": f"shop-{i}",
                    "day": dates,
                    "units": (i + 1) * np.resize(week, days) + noise[i],
                }
            )
            for i in range(SHOPS)
        ],
        ignore_index=True,
    )


@pytest.mark.slow
def test_a_model_worse_than_a_baseline_is_reported(sm_job: SageMakerDir) -> None:
    sm_job.write_data(weekly_panel())
    result, stdout = run_capturing(sm_job, {**SCHEMA, **TINY, "ensemble": "false"})
    assert result.code == 0, result.failure
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["seasonal_naive_val_MAE"] < 0.05
    assert metrics["beats_baselines"] is False
    # Seasonal naive and ETS (which fits the season) are both all but perfect.
    best = metrics["best_baseline"]
    assert best in ("seasonal_naive", "ets")
    assert metrics["baseline_margin"] > 1.0  # more than twice the best baseline's MAE
    assert metrics["classical_windows"] == metrics["validation_windows"] == SHOPS
    warnings = [line for line in stdout.splitlines() if " WARNING " in line]
    assert any(f"does not beat the {best} baseline" in line for line in warnings)
    values = metric_values(stdout)
    assert values["beats_baselines"] == [0.0]
    assert values["baseline_margin"] == [pytest.approx(metrics["baseline_margin"], rel=1e-5)]
    assert values["final_val_MASE"] == [pytest.approx(metrics["val_MASE"], rel=1e-5)]


@pytest.mark.slow
def test_require_beating_baseline_fails_and_writes_no_model(sm_job: SageMakerDir) -> None:
    sm_job.write_data(weekly_panel())
    result = sm_job.run({**SCHEMA, **TINY, "ensemble": "false", "require_beating_baseline": "true"})
    assert result.code == 2
    assert result.failure_line.startswith("require_beating_baseline: the TFT's validation MAE")
    assert "baseline's on the same windows; no model was written" in result.failure_line
    assert result.model_files == []  # nothing a pipeline could ship
    metrics = json.loads((sm_job.output_dir / "data" / "metrics.json").read_text())
    assert metrics["beats_baselines"] is False and metrics["val_MAE"] > 0


CLASSICAL_FIGURES = ("ets_val_MAE", "theta_val_MAE", "ets_val_MASE", "backtest_MAE")


@pytest.mark.slow
def test_the_job_fits_the_classical_models_ahead_in_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's classical fits (the backtest's and the baselines', ensemble=true) start in
    worker processes before training, whatever this machine's cores, and the evaluation takes
    them: each fit is that of one process, so its figures are those of a job that fits them all
    in its own process after training."""
    from tft_sagemaker import baselines

    figures = {}
    for workers in (1, 0):
        monkeypatch.setattr(baselines, "_worker_count", lambda *args, n=workers, **kw: n)
        job = SageMakerDir(tmp_path / f"workers-{workers}", monkeypatch)
        job.write_data(weekly_panel())
        result, stdout = run_capturing(job, {**SCHEMA, **TINY})
        assert result.code == 0, result.failure
        spread = [line for line in stdout.splitlines() if "classical fits:" in line]
        if workers:
            assert len(spread) == 2, stdout  # the validation windows, then the backtest's
            assert all("(1 workers on idle cores, started before training" in s for s in spread)
            assert "fitting them now" not in stdout
        else:
            assert spread == [], stdout
        metrics = json.loads((job.model_dir / "metrics.json").read_text())
        figures[workers] = {k: metrics[k] for k in CLASSICAL_FIGURES} | {
            k: v for k, v in metrics.items() if k.startswith("weight_")
        }
    assert figures[1] == figures[0]
    assert figures[1]["ets_val_MAE"] < 0.05  # the weekly pattern: ETS fits its season
