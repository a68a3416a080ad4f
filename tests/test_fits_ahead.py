"""The evaluation's classical fits started before training (fits_ahead.py): fitted in worker
processes as one process fits them, taken only for the windows they were computed for, and the
baselines' sample over several hosts that of one process over every window. The job takes
them: test_beating_baselines.py::test_the_job_fits_the_classical_models_ahead_in_worker_processes;
the windows' keys equal the library's batches': test_batches.py::test_window_keys_*."""

from __future__ import annotations

import numpy as np
import pytest
from test_baselines import random_walks

from tft_sagemaker import baselines
from tft_sagemaker.baselines import ClassicalFits, classical_forecast, classical_sample
from tft_sagemaker.evaluate import window_order
from tft_sagemaker.fits_ahead import FitsAhead, Validation, classical_windows


def test_fits_ahead_are_all_in_workers_and_those_of_one_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    histories = random_walks(9)
    monkeypatch.setattr(baselines, "_worker_count", lambda fits, processes, ahead=False: 2)
    with caplog.at_level("INFO", logger="tft_sagemaker.baselines"):
        fits = ClassicalFits(["ets", "theta"], histories, 4, 4, ahead=True)
    assert fits.started
    assert "9 windows x ets/theta in 2 processes (2 workers on idle cores, started before" in (
        caplog.text
    )
    result = fits.result()
    for name in ("ets", "theta"):
        forecast, fallbacks = classical_forecast(name, histories, 4, 4)
        np.testing.assert_array_equal(result[name][0], forecast)
        assert result[name][1] == fallbacks


def test_without_an_idle_core_nothing_starts_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baselines.os, "sched_getaffinity", lambda pid: {0, 1})
    assert not ClassicalFits(["theta"], random_walks(600), 3, None, processes=2, ahead=True).started
    # An idle core: a worker, however few the fits (no process waits for it to start).
    assert baselines._worker_count(2, 1, ahead=True) == 1
    assert baselines._worker_count(2, 1) == 0


def test_fits_for_other_windows_are_not_taken(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(baselines, "_worker_count", lambda fits, processes, ahead=False: 1)
    keys = (np.arange(3), np.arange(3)[:, None])
    fits = ClassicalFits(["theta"], random_walks(3), 3, None, ahead=True)
    ahead = FitsAhead(Validation([keys], 3, np.arange(3), fits), None)
    moved = (keys[0] + 1, keys[1])
    with caplog.at_level("WARNING", logger="tft_sagemaker.fits_ahead"):
        assert ahead.take_validation([moved], 3, np.arange(3)) is None
    assert "assumed other validation windows than the evaluation's; fitting them now" in (
        caplog.text
    )
    assert all(w.process is None or w.process.poll() is not None for w, _ in fits._workers)
    assert ahead.take_validation([keys], 3, np.arange(3)) is None  # taken once, whatever came


def test_the_baselines_sample_over_hosts_is_one_process_sample() -> None:
    """Each host's windows (in its order) fitted: together one process's sample of every
    window in its order (`window_order`), whichever host holds them."""
    rng = np.random.default_rng(0)
    codes = rng.permutation(40)[:, None]
    times = rng.integers(0, 5, 40)
    hosts = [(times[:15], codes[:15]), (times[15:], codes[15:])]
    chosen = [classical_windows(hosts, node, 10, seed=3) for node in range(2)]
    together = np.concatenate([chosen[0], chosen[1] + 15])
    order = window_order(times, codes)
    assert sorted(together) == sorted(order[classical_sample(40, 10, 3)])
    assert len(classical_windows(hosts[:1], 0, 10, seed=3)) == 10
