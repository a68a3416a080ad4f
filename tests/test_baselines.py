"""Baselines on the validation windows: equal to hand-computed values on a small panel."""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
import pytest

from tft_sagemaker import baselines
from tft_sagemaker.config import season_length


@pytest.mark.parametrize(
    ("freq", "season"),
    [
        ("MS", 12),
        ("ME", 12),
        ("QS", 4),
        ("QS-JAN", 4),
        ("W-MON", 52),
        ("W", 52),
        ("D", 7),
        ("B", 5),
        ("h", 24),
        ("2MS", 6),
        ("3D", None),  # 7 days is not a whole number of 3-day steps
        ("YS", None),
        ("min", None),
        (None, None),
        ("not-a-frequency", None),
    ],
)
def test_season_length(freq: str | None, season: int | None) -> None:
    assert season_length(freq) == season


def test_window_histories_stop_before_each_window_and_fill_gaps_forward() -> None:
    frame = pd.DataFrame(
        {
            "shop": ["a"] * 5 + ["b"] * 4,
            "time_idx": [0, 1, 3, 4, 5, 2, 3, 4, 5],  # a has no step 2
            "y": [1.0, 2.0, 4.0, 5.0, 6.0, 10.0, 11.0, 12.0, 13.0],
        }
    )
    index = pd.DataFrame({"time_idx": [5, 4], "shop": ["a", "b"]})
    a, b = baselines.window_histories(frame, index, ["shop"], "time_idx", "y")
    np.testing.assert_array_equal(a, [1.0, 2.0, 2.0, 4.0, 5.0])
    np.testing.assert_array_equal(b, [10.0, 11.0])


def test_window_histories_of_unsorted_rows_of_several_group_columns() -> None:
    frame = pd.DataFrame(
        {
            "shop": pd.Categorical(["x", "x", "y", "x", "y", "x", "y"]),
            "item": [1, 2, 1, 1, 1, 2, 1],
            "time_idx": [3, 1, 5, 1, 4, 2, 6],  # (x, 1) has no step 2
            "y": [4.0, 20.0, 50.0, 1.0, 40.0, 30.0, 60.0],
        }
    )
    index = pd.DataFrame(
        {"time_idx": [4, 6, 5, 3], "shop": ["x", "y", "x", "x"], "item": ["1", "1", "2", "2"]}
    )
    xa, y1, x2, x2_early = baselines.window_histories(
        frame, index, ["shop", "item"], "time_idx", "y"
    )
    np.testing.assert_array_equal(xa, [1.0, 1.0, 4.0])  # steps 1-3, the gap filled forward
    np.testing.assert_array_equal(y1, [40.0, 50.0])
    # A window after the series' last row: its last value carried up to the window.
    np.testing.assert_array_equal(x2, [20.0, 30.0, 30.0, 30.0])
    np.testing.assert_array_equal(x2_early, [20.0, 30.0])


# Two series, season 2, horizon 3 (the second window forecasts 2 steps only).
HISTORIES = [np.array([1.0, 3.0, 2.0, 4.0]), np.array([10.0, 10.0, 12.0])]
ACTUALS = np.array([[3.0, 5.0, 4.0], [14.0, 11.0, 0.0]])
LENGTHS = np.array([3, 2])


def test_seasonal_naive_repeats_the_last_season() -> None:
    forecast = baselines.seasonal_naive(HISTORIES, horizon=3, season=2)
    np.testing.assert_array_equal(forecast, [[2.0, 4.0, 2.0], [10.0, 12.0, 10.0]])
    short = baselines.seasonal_naive([np.array([1.0])], horizon=2, season=2)
    assert np.isnan(short).all()


def test_mase_scales() -> None:
    scales = baselines.mase_scales([*HISTORIES, np.full(6, 7.0)], season=2)
    # a: |2-1|, |4-3| → 1 (two seasons); b: shorter than two seasons, lag 1: |0|, |2| → 1;
    # a constant history has no scale.
    np.testing.assert_allclose(scales[:2], [1.0, 1.0])
    assert np.isnan(scales[2])


def test_compare_on_a_hand_computed_panel() -> None:
    naive = np.array([[4.0, 4.0, 4.0], [12.0, 12.0, 12.0]])
    tft = np.array([[3.0, 5.0, 5.0], [13.0, 12.0, 99.0]])  # step 3 of b is padding
    result = baselines.compare(tft, naive, ACTUALS, LENGTHS, HISTORIES, season=2, max_series=0)
    m = result.metrics
    # Point errors: TFT a: 0, 0, 1; b: 1, 1 → MAE 3/5. Window MAEs 1/3 and 1, scales 1, 1.
    assert m["val_MASE"] == pytest.approx((1 / 3 + 1) / 2)
    # Naive a: 1, 1, 0; b: 2, 1 → MAE 5/5 = 1; seasonal naive a: 1, 1, 2; b: 4, 1 → 9/5.
    assert m["baseline_val_MASE"] == pytest.approx((2 / 3 + 3 / 2) / 2)
    assert m["seasonal_naive_val_MAE"] == pytest.approx(9 / 5)
    assert m["seasonal_naive_val_MASE"] == pytest.approx((4 / 3 + 5 / 2) / 2)
    assert "ets_val_MAE" not in m and "classical_windows" not in m  # max_series=0
    # The TFT fares worst against naive: 0.6 / 1.0 - 1.
    assert (result.best_baseline, result.beats_baselines) == ("naive", True)
    assert result.margin == pytest.approx(-0.4)
    assert m["baseline_margin"] == pytest.approx(-0.4) and m["beats_baselines"] is True
    assert "beats every baseline" in baselines.describe(result)

    # A forecast worse than the seasonal naive one on the same windows is reported as such.
    worse = tft + np.array([[0.0], [3.0]])  # b: errors 2, 4 → MAE (1 + 6) / 5 = 1.4
    result = baselines.compare(worse, naive, ACTUALS, LENGTHS, HISTORIES, season=2, max_series=0)
    assert (result.best_baseline, result.beats_baselines) == ("naive", False)
    assert result.margin == pytest.approx(0.4)
    assert "does not beat the naive baseline" in baselines.describe(result)
    assert "40.0% higher" in baselines.describe(result)


def test_compare_scores_the_classical_models_on_the_same_sample_of_windows() -> None:
    rng = np.random.default_rng(0)
    n, horizon = 12, 2
    histories = [np.full(30, float(level)) for level in range(1, n + 1)]
    actuals = np.array([[h[-1], h[-1]] for h in histories]) + rng.normal(0, 0.1, (n, horizon))
    naive = np.array([[h[-1], h[-1]] for h in histories])
    lengths = np.full(n, horizon)
    result = baselines.compare(
        naive + 0.5, naive, actuals, lengths, histories, season=None, max_series=5, seed=3
    )
    m = result.metrics
    assert m["classical_windows"] == 5
    # A constant history: ETS and Theta forecast the constant, i.e. the naive forecast, on the
    # 5 sampled windows, and the TFT (off by 0.5 everywhere) loses to all of them.
    sample = np.sort(np.random.default_rng(3).choice(n, size=5, replace=False))
    naive_on_sample = np.abs(actuals[sample] - naive[sample]).mean()
    for name in ("ets", "theta"):
        assert m[f"{name}_val_MAE"] == pytest.approx(naive_on_sample, rel=1e-4), name
    assert not result.beats_baselines and result.margin > 0
    assert "seasonal_naive_val_MAE" not in m  # no season


def test_classical_models_fall_back_to_the_last_value_on_too_short_histories() -> None:
    for name in baselines.CLASSICAL_MODELS:
        forecast, fallbacks = baselines.classical_forecast(
            name, [np.array([5.0, 6.0]), np.linspace(1.0, 40.0, 40)], horizon=3, season=None
        )
        assert fallbacks == 1, name
        np.testing.assert_array_equal(forecast[0], [6.0, 6.0, 6.0])
        # A straight line: both continue upwards from its last value.
        assert (np.diff(forecast[1]) > 0).all() and forecast[1][0] > 40.0, name


def random_walks(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.cumsum(rng.normal(size=int(rng.integers(12, 40)))) + 50 for _ in range(n)]


def test_classical_fits_in_worker_processes_equal_one_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Split over this process and two workers, each series is fitted as in one process."""
    histories = random_walks(13)
    alone = {
        n: baselines.classical_forecast(n, histories, 4, 4) for n in baselines.CLASSICAL_MODELS
    }
    monkeypatch.setattr(baselines, "_worker_count", lambda fits, processes, ahead=False: 2)
    with caplog.at_level("INFO", logger="tft_sagemaker.baselines"):
        spread = baselines.classical_forecasts(list(alone), histories, 4, 4)
    assert "13 windows x ets/theta in 3 processes (this one, 2 workers" in caplog.text
    assert "failed" not in caplog.text
    for name, (forecast, fallbacks) in alone.items():
        np.testing.assert_array_equal(spread[name][0], forecast)
        assert spread[name][1] == fallbacks


# A worker that writes the fits of its first `written` blocks of 2 windows, 1000 higher (so that
# they can be told apart), and then fits nothing more until it is stopped.
SLOW_WORKER = """\
import pickle, sys, time
from tft_sagemaker.baselines import _fit_part
names, histories, horizon, season = pickle.load(sys.stdin.buffer)
for start in range(0, 2 * {written}, 2):
    fits = _fit_part(names, histories[start : start + 2], horizon, season)
    pickle.dump({{n: (f + 1000, k) for n, (f, k) in fits.items()}}, sys.stdout.buffer)
    sys.stdout.buffer.flush()
time.sleep(3600)
"""


@pytest.mark.parametrize("written", [0, 2, 5])
def test_this_process_fits_the_blocks_a_worker_has_not_reached(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, written: int
) -> None:
    """Waiting for a worker, this process fits its blocks from the last one back until they
    meet the worker's: the worker's blocks are taken as it wrote them, the rest fitted here, in
    the windows' order; the worker is stopped, and none of it is a failure."""
    histories = random_walks(9)  # 5 blocks of 2 windows (the last one of 1)
    alone, fallbacks = baselines.classical_forecast("theta", histories, 3, None)
    monkeypatch.setattr(baselines, "_BLOCK", 2)
    monkeypatch.setattr(baselines, "_worker_count", lambda fits, processes, ahead=False: 1)
    slow = [sys.executable, "-c", SLOW_WORKER.format(written=written)]
    monkeypatch.setattr(baselines, "_AHEAD_WORKER", slow)
    fits = baselines.ClassicalFits(["theta"], histories, 3, None, ahead=True)
    worker = fits._workers[0][0]
    while len(worker.fitted) < written:  # what the worker writes, this process has read
        assert worker.reading, worker.failure()
        time.sleep(0.01)
    with caplog.at_level("WARNING", logger="tft_sagemaker.baselines"):
        result = fits.result()
    assert "failed" not in caplog.text
    assert worker.process is not None and worker.process.poll() is not None  # stopped
    expected = alone.copy()
    expected[: 2 * written] += 1000
    np.testing.assert_array_equal(result["theta"][0], expected)
    assert result["theta"][1] == fallbacks


def test_a_failed_worker_leaves_its_part_to_this_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    histories = random_walks(6)
    alone, fallbacks = baselines.classical_forecast("theta", histories, 3, None)
    monkeypatch.setattr(baselines, "_worker_count", lambda fits, processes, ahead=False: 1)
    failing = [sys.executable, "-c", "import sys; print('out of memory', file=sys.stderr); exit(3)"]
    monkeypatch.setattr(baselines, "_WORKER", failing)
    fits = baselines.ClassicalFits(["theta"], histories, 3, None)
    worker = fits._workers[0][0]
    assert worker.process is not None
    worker.process.wait()  # failed before this process asks for the fits
    with caplog.at_level("WARNING", logger="tft_sagemaker.baselines"):
        spread = fits.result()
    assert "a worker process failed (exit 3: out of memory); this process fits its part" in (
        caplog.text
    )
    np.testing.assert_array_equal(spread["theta"][0], alone)
    assert spread["theta"][1] == fallbacks


@pytest.mark.parametrize(
    ("fits", "cores", "processes", "workers"),
    [
        (1000, 2, 1, 1),
        (1000, 2, 2, 0),  # the other process keeps its core
        (1000, 64, 8, 4),
        (5000, 64, 8, 8),
        (300, 64, 1, 0),
        (1000, 1, 1, 0),
    ],
)
def test_workers_follow_the_fits_and_the_idle_cores(
    monkeypatch: pytest.MonkeyPatch, fits: int, cores: int, processes: int, workers: int
) -> None:
    monkeypatch.setattr(baselines.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert baselines._worker_count(fits, processes) == workers
