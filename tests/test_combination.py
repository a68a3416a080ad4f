"""The shipped forecast: the TFT combined with the classical models (combination.py).

Pure tests on arrays, then jobs: the weights never see the validation windows, `predict` on the
saved model reproduces the shipped forecast's validation MAE, and ensemble=false trains and
ships the TFT exactly as before the combination existed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, SageMakerDir
from test_beating_baselines import SCHEMA, weekly_panel

from tft_sagemaker import predict
from tft_sagemaker.artifacts import load_trained_model
from tft_sagemaker.baselines import Comparison, baseline_forecasts, window_histories
from tft_sagemaker.combination import (
    EVIDENCE_T,
    TFT,
    BacktestMembers,
    Combination,
    apply,
    apply_to_baselines,
    backtest_members,
    choose,
    classical_weights,
    combine,
    describe_shipped,
    earlier_windows,
    origins,
    select_weights,
    spreads,
    tft_share,
)
from tft_sagemaker.config import DataConfig
from tft_sagemaker.evaluate import Forecast
from tft_sagemaker.job import carve, kept_for_evaluation
from tft_sagemaker.job_data import JobData, carve_backtest
from tft_sagemaker.report import data_summary
from tft_sagemaker.shares import Hosts

QUANTILES = [0.1, 0.5, 0.9]


def test_greedy_selection_picks_the_better_member_and_mixes_opposite_errors() -> None:
    actuals = np.zeros((4, 3))
    lengths = np.full(4, 3)
    good, bad = actuals + 0.1, actuals + 5.0
    assert select_weights({"a": bad, "b": good}, actuals, lengths) == {"b": 1.0}
    # Errors of opposite sign cancel in an equal mix.
    mix = select_weights({"a": actuals + 1.0, "b": actuals - 1.0}, actuals, lengths)
    assert mix["a"] == pytest.approx(0.52) and mix["b"] == pytest.approx(0.48)
    assert sum(mix.values()) == pytest.approx(1.0)


def test_a_combination_of_one_model_is_that_model() -> None:
    rng = np.random.default_rng(0)
    tft = np.sort(rng.normal(size=(5, 4, 3)), axis=-1).astype(np.float32)
    alone = Combination({TFT: 1.0}, None, QUANTILES, {}, {})
    assert np.array_equal(combine(alone, tft, {}, np.ones(5)), tft)
    point = rng.normal(size=(5, 4))
    spread = [[-1.0, 0.0, 2.0]] * 4
    ets = Combination({"ets": 1.0}, None, QUANTILES, {"ets": spread}, {})
    out = combine(ets, tft, {"ets": point}, np.full(5, 0.5))
    assert np.array_equal(out[..., 1], point)  # the median is the point forecast
    assert np.allclose(out[..., 0], point - 0.5) and np.allclose(out[..., 2], point + 1.0)


def test_a_combination_that_is_one_baseline_is_called_that_baseline() -> None:
    """Shipped ETS alone ties ETS: the line says what was shipped, not "train longer"."""
    tie = Comparison({}, False, "ets", 0.0)
    ets = Combination({"ets": 1.0}, None, QUANTILES, {}, {})
    assert describe_shipped(tie, ets).startswith("the shipped forecast is the ets baseline alone")
    mixed = Combination({"ets": 0.6, TFT: 0.4}, None, QUANTILES, {}, {})
    worse = Comparison({}, False, "ets", 0.05)
    assert describe_shipped(worse, mixed).startswith(
        "the shipped forecast (the combination) does not beat the ets baseline: its validation "
        "MAE is 5.0% higher"
    )


def test_the_backtest_windows_of_many_series_are_a_fixed_sample() -> None:
    """Every series long enough leaves its backtest steps out of training; the windows are
    those of a fixed sample of them (the same every time)."""
    config = DataConfig(target="y", group_ids=["s"], max_encoder_length=4, max_prediction_length=2)
    frame = pd.DataFrame(
        {"s": np.repeat(np.arange(30), 12), "time_idx": np.tile(np.arange(12), 30), "y": 1.0}
    )
    frame = frame[(frame["s"] != 0) | (frame["time_idx"] < 4)]  # series 0: too short
    whole = carve_backtest(frame, config)
    sampled = carve_backtest(frame, config, max_series=10)
    assert whole is not None and sampled is not None
    assert whole.series == sampled.series == 29
    np.testing.assert_array_equal(sampled.fit, whole.fit)
    assert sampled.fit.sum() == len(frame) - 29 * 2
    chosen = frame[sampled.windows]["s"].unique()
    assert len(chosen) == 10 and 0 not in chosen
    np.testing.assert_array_equal(sampled.windows, whole.windows & frame["s"].isin(chosen))
    again = carve_backtest(frame, config, max_series=10)
    assert again is not None
    np.testing.assert_array_equal(again.windows, sampled.windows)


def test_a_host_keeps_of_the_training_rows_only_the_backtest_series() -> None:
    """Once the panel holds the datasets, rank 0 keeps the training rows of the backtest's
    sampled series alone (their histories choose the weights), lean, and none without a
    backtest; the data summary is still that of every row read."""
    config = DataConfig(target="y", group_ids=["s"], max_encoder_length=4, max_prediction_length=2)
    train = pd.DataFrame(
        {
            "s": np.repeat(np.arange(30), 12),
            "time_idx": np.tile(np.arange(12), 30),
            "y": np.arange(360.0),
            "x": 1.0,  # a covariate: the datasets hold it
        }
    )
    data = JobData(train, train.copy(), None)
    carved = carve_backtest(train, config, max_series=10)
    assert carved is not None
    kept = kept_for_evaluation(data, config, carved)
    chosen = train[carved.windows]["s"].unique()
    assert len(chosen) == 10
    pd.testing.assert_frame_equal(
        kept.train, train[train["s"].isin(chosen)][["s", "time_idx", "y"]]
    )
    assert kept.summary == data_summary(data, config)
    assert kept.summary["train"]["series"] == 30
    pd.testing.assert_frame_equal(kept.validation, data.validation)  # its dataset is built after
    alone = kept_for_evaluation(data, config, None)
    assert alone.train.empty and list(alone.train.columns) == ["s", "time_idx", "y"]
    assert alone.summary == kept.summary


def test_classical_quantiles_come_from_the_backtest_errors() -> None:
    errors = np.linspace(-1.0, 1.0, 101)[:, None] * np.array([[1.0, 2.0]])
    found = spreads(np.zeros((101, 2)), errors, np.full(101, 2), np.ones(101), QUANTILES)
    assert found[:, 1] == pytest.approx([0.0, 0.0])  # centred on the point
    assert found[:, 2] == pytest.approx([0.8, 1.6])  # wider where the errors are


def test_choose_weights_the_member_that_forecasts_the_backtest() -> None:
    """A seasonal panel: the TFT's forecast is off by a level, seasonal naive is exact."""
    season, horizon = 4, 4
    pattern = np.array([1.0, 5.0, 2.0, 8.0])
    histories = [np.tile(pattern, 6) * (i + 1) for i in range(6)]
    actuals = np.stack([pattern * (i + 1) for i in range(6)])
    tft = np.repeat((actuals + 3.0)[..., None], 3, axis=-1)
    tft[..., 0] -= 1.0
    tft[..., 2] += 1.0
    members = backtest_members(histories, horizon, season, classical=True)
    chosen = choose(tft, members, actuals, np.full(6, horizon), season, QUANTILES)
    assert chosen.weights == {"seasonal_naive": 1.0}
    assert chosen.backtest["seasonal_naive"] == 0.0 == chosen.backtest["shipped"]
    assert set(chosen.candidates) == {TFT, "naive", "seasonal_naive", "ets", "theta"}
    assert chosen.origins == 4  # histories of 24 steps: origins at 24, 20, 16 and 12 (of >= 10)
    assert list(chosen.spreads) == ["seasonal_naive"]
    assert Combination.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen


def test_earlier_origins_are_cut_from_the_history_before_the_backtest_window() -> None:
    assert origins(1) == origins(8) == 6 and origins(50) == 4 and origins(200) == 1
    history = np.arange(20.0)
    before, actuals, reached = earlier_windows([history, history[:7]], 3, 4, None)
    # 3 steps back each time while 2 horizons (6 steps) of history are left; the short series
    # has only its own backtest window.
    assert [len(h) for h in before] == [17, 14, 11]
    assert actuals.tolist() == [[17, 18, 19], [14, 15, 16], [11, 12, 13]]
    assert reached == 4
    assert earlier_windows([history], 3, 1, None)[2] == 1  # one origin: the TFT's


def test_a_classical_mix_is_kept_only_where_it_is_clearly_better_than_its_best_member() -> None:
    rng = np.random.default_rng(0)
    actuals = rng.normal(size=(40, 4))
    lengths = np.full(40, 4)
    noise = rng.choice([-1.0, 1.0], size=(40, 4))
    # Opposite errors on every window: the mix is exact, far better than either.
    mixed = classical_weights({"a": actuals + noise, "b": actuals - noise}, actuals, lengths)
    assert mixed == {"a": 0.52, "b": 0.48}
    # Errors that agree, opposite on two windows only: the better member alone.
    points = {"a": actuals + 1.05 * noise, "b": actuals + noise}
    points["a"][:2] = actuals[:2] - noise[:2]
    assert len(select_weights(points, actuals, lengths)) == 2  # the greedy mix would take both
    assert classical_weights(points, actuals, lengths) == {"b": 1.0}


def test_the_tft_keeps_a_share_only_where_it_is_clearly_better() -> None:
    rng = np.random.default_rng(0)
    actuals = rng.normal(size=(40, 4))
    lengths = np.full(40, 4)
    classical = actuals + rng.choice([-1.0, 1.0], size=(40, 4))
    # Better on every series: the TFT gets the whole weight.
    share, evidence = tft_share(actuals + 0.1, classical, actuals, lengths)
    assert share == 1.0 and evidence >= EVIDENCE_T
    # Better on average only through one series, 1.5 x worse on the others: no share.
    lucky = actuals + 1.5 * (classical - actuals)
    lucky[0, 0], classical[0, 0] = actuals[0, 0] - 40.0, actuals[0, 0] + 80.0
    share, evidence = tft_share(lucky, classical, actuals, lengths)
    assert share == 0.0 and 0 < evidence < EVIDENCE_T
    # No evidence from one window.
    assert tft_share(actuals[:1], classical[:1], actuals[:1], lengths[:1]) == (0.0, 0.0)


def test_hosts_choose_the_weights_one_process_would_choose_on_every_window() -> None:
    """Each host's first process forecasts its series' backtest windows with the members; the
    weights chosen on the hosts' parts together are those chosen on every series at once."""
    rng = np.random.default_rng(1)
    season, horizon = 4, 4
    pattern = np.array([1.0, 5.0, 2.0, 8.0])
    histories = [
        np.tile(pattern, 5) * (i + 1) + rng.normal(scale=0.5, size=20) + 0.3 * np.arange(20)
        for i in range(8)
    ]
    actuals = np.stack([pattern * (i + 1) + 6.0 + rng.normal(scale=0.5, size=4) for i in range(8)])
    tft = np.repeat((actuals + rng.normal(scale=0.3, size=actuals.shape))[..., None], 3, -1)
    tft[..., 0] -= 1.0
    tft[..., 2] += 1.0
    lengths = np.full(8, horizon)
    whole = choose(
        tft, backtest_members(histories, horizon, season, True), actuals, lengths, season, QUANTILES
    )
    parts = BacktestMembers.concat(
        [backtest_members(h, horizon, season, True) for h in (histories[:3], histories[3:])]
    )
    assert parts.reached == whole.origins > 1  # earlier origins on both hosts
    assert choose(tft, parts, actuals, lengths, season, QUANTILES) == whole
    assert set(whole.weights) == {TFT, "ets"}  # a mix: the TFT's share and a classical one


def _two_series() -> tuple[pd.DataFrame, DataConfig, Forecast]:
    data = DataConfig(target="y", group_ids=["g"], time_idx="t")
    frame = pd.DataFrame(
        {"g": ["a"] * 8 + ["b"] * 8, "t": list(range(8)) * 2, "y": [*range(8), *range(8, 0, -1)]}
    )
    index = pd.DataFrame({"t": [6, 6], "g": ["a", "b"]})
    tft = Forecast(
        index,
        torch.zeros(2, 2, 3),
        torch.zeros(2, 2),
        torch.zeros(2, 2),
        torch.full((2,), 2),
        torch.tensor([[0], [1]]),  # the series' codes
        unit=1000.0,
    )
    return frame, data, tft


def test_apply_refits_the_classical_members_on_the_history_given() -> None:
    frame, data, tft = _two_series()
    naive = Combination({"naive": 1.0}, None, QUANTILES, {"naive": [[0.0] * 3] * 2}, {})
    combined = apply(naive, tft, frame, data)
    assert combined.quantiles[..., 1].tolist() == [[5.0, 5.0], [3.0, 3.0]]
    assert combined.unit == 1000.0  # SMAPE is scored in the model's unit


def test_the_job_combines_its_baselines_forecasts_as_predict_refits_them() -> None:
    """The job's shipped forecast takes its members' forecasts from the baselines of the same
    windows; `predict` refits them from the histories: the same quantiles, exactly."""
    frame, data, tft = _two_series()
    tft.quantiles = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)
    spread = [[-0.5, 0.0, 0.7]] * 2
    combination = Combination(
        {TFT: 0.2, "naive": 0.3, "seasonal_naive": 0.1, "ets": 0.25, "theta": 0.15},
        3,
        QUANTILES,
        {m: spread for m in ("naive", "seasonal_naive", "ets", "theta")},
        {},
    )
    histories = window_histories(frame, tft.index, data.group_ids, data.time_idx, data.target)
    baselines = baseline_forecasts(histories, 2, 3, np.arange(2), classical=True)
    shipped = apply_to_baselines(combination, tft, baselines).quantiles
    refitted = apply(combination, tft, frame, data).quantiles
    assert torch.equal(shipped, refitted)
    assert not torch.equal(shipped, tft.quantiles)


class _TwoHosts(Hosts):
    """This host among two; the other host's value is `other`."""

    def __init__(self, other: object) -> None:
        super().__init__(node=0, nodes=2)
        self.other = other

    def gather(self, name: str, value: object) -> list:
        return [value, self.other]


def test_every_host_carves_a_backtest_or_none_does(caplog: pytest.LogCaptureFixture) -> None:
    config = DataConfig(target="y", group_ids=["s"], max_encoder_length=4, max_prediction_length=2)
    frame = pd.DataFrame(
        {"s": np.repeat(np.arange(3), 12), "time_idx": np.tile(np.arange(12), 3), "y": 1.0}
    )
    alone = carve(frame, config, True, Hosts())
    assert alone is not None and alone.series == 3
    assert carve(frame, config, False, Hosts()) is None
    both = carve(frame, config, True, _TwoHosts(True))
    assert both is not None
    np.testing.assert_array_equal(both.windows, alone.windows)
    # The other host has no series long enough: neither host early-stops on a backtest.
    assert carve(frame, config, True, _TwoHosts(False)) is None
    assert "ensemble: on node(s) 1, no series is long enough" in caplog.text


def _weights(sm_job: SageMakerDir, frame: pd.DataFrame) -> dict:
    sm_job.write_data(frame)
    result = sm_job.run({**SCHEMA, **TINY})
    assert result.code == 0, result.failure
    return json.loads((sm_job.model_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_weights_are_chosen_without_the_validation_windows(
    sm_job: SageMakerDir, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the validated week changes: the TFT (early-stopped on the backtest) and the weights
    stay the same, while the validation scores move."""
    panel = weekly_panel()
    first = _weights(sm_job, panel)
    last_week = panel["day"] > panel["day"].max() - pd.Timedelta(days=7)
    changed = panel.assign(units=panel["units"].where(~last_week, panel["units"] * 3 + 5))
    other = SageMakerDir(tmp_path_factory.mktemp("changed") / "opt_ml", monkeypatch)
    second = _weights(other, changed)
    assert first["shipped"] == second["shipped"] == "ensemble"
    assert first["ensemble_weights"] == second["ensemble_weights"]
    assert first["backtest_MAE"] == second["backtest_MAE"]
    assert first["val_MAE"] != second["val_MAE"]
    # The models that know the weekly season (seasonal naive, ETS and Theta, deseasonalised)
    # forecast this panel all but perfectly, to the noise: the combination ships them.
    assert first["weight_tft"] == first["weight_naive"] == 0
    assert first["val_MAE"] < 0.2 * first["tft_val_MAE"]
    assert first["tft_beats_baselines"] is False


@pytest.mark.slow
def test_predict_on_the_saved_model_reproduces_the_shipped_forecast(
    sm_job: SageMakerDir, tmp_path
) -> None:
    panel = weekly_panel()
    metrics = _weights(sm_job, panel)
    trained = load_trained_model(sm_job.model_dir)
    assert trained.combination is not None
    assert trained.combination.weights == metrics["ensemble_weights"]
    forecasts = predict.predict_frame(trained, panel)
    mae = (forecasts["prediction"] - forecasts["actual"]).abs().mean()
    assert mae == pytest.approx(metrics["val_MAE"], rel=1e-4)  # float32 forecasts
    tft_alone = predict.forecast_table(
        trained.model,
        predict.prepare_prediction(
            panel, trained.dataset_parameters, trained.config.data, trained.time_axis
        ),
        trained.config.data,
        trained.config.model.quantiles,
        trained.time_axis,
        vectorised=False,
    )
    tft_mae = (tft_alone["prediction"] - tft_alone["actual"]).abs().mean()
    assert tft_mae == pytest.approx(metrics["tft_val_MAE"], rel=1e-4)
    quantiles = [c for c in forecasts.columns if c.startswith("q")]
    assert (np.diff(forecasts[quantiles].to_numpy(), axis=1) >= 0).all()  # still ordered


@pytest.mark.slow
def test_ensemble_false_ships_the_tft_trained_on_every_training_row(
    sm_job: SageMakerDir,
) -> None:
    sm_job.write_data(weekly_panel())
    result = sm_job.run({**SCHEMA, **TINY, "ensemble": "false"})
    assert result.code == 0, result.failure
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["shipped"] == "tft"
    assert metrics["val_MAE"] == metrics["tft_val_MAE"]
    assert "ensemble_weights" not in metrics and "backtest_s" not in metrics
    assert load_trained_model(sm_job.model_dir).combination is None
