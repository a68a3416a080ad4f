"""The training job end to end, in-process through `tft_sagemaker.job.main`: what a successful
run leaves in model/ and output/, what it prints for SageMaker's metric regexes, datasets
described by configuration alone, an explicit validation channel, and predictions from the
saved artifact in a fresh process that reproduce the job's validation metrics."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CODE_DIR, TINY, SageMakerDir
from reference import tutorial_features  # bench/reference.py: the tutorial, as its docs write it

from tft_sagemaker import predict
from tft_sagemaker.artifacts import load_trained_model
from tft_sagemaker.config import build_config
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES, STALLION_SPECIAL_DAYS
from tft_sagemaker.sagemaker.failure import FAILURE_LIMIT
from tft_sagemaker.sagemaker.metric_lines import METRIC_DEFINITIONS

MODEL_FILES = {
    "model.ckpt",
    "dataset_parameters.pt",
    "config.json",
    "metrics.json",
    "report_data.json",
}
SCORES = ("val_MAE", "val_SMAPE", "val_RMSE", "val_quantile_loss")
EPOCHS = 2
HORIZON = 8  # the synthetic preset's max_prediction_length
N_SERIES = 30  # small_panel: 3 stores x 10 products


@dataclass
class Trained:
    job: SageMakerDir
    code: int
    failure: str | None
    model_files: list[str]
    stdout: str
    data_file: Path

    @property
    def metrics(self) -> dict[str, float]:
        return json.loads((self.job.model_dir / "metrics.json").read_text())


def run_capturing(job: SageMakerDir, hyperparameters: dict[str, str]) -> tuple[object, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = job.run(hyperparameters)
    return result, stdout.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_panel: pd.DataFrame) -> Trained:
    """The built-in synthetic data, the synthetic preset, a tiny model, two short epochs."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        job = SageMakerDir(tmp_path_factory.mktemp("trained") / "opt_ml", monkeypatch)
        data_file = job.write_data(small_panel)
        result, stdout = run_capturing(
            job, {"preset": "synthetic", **TINY, "max_epochs": str(EPOCHS)}
        )
    return Trained(job, *result, stdout=stdout, data_file=data_file)


def metric_values(stdout: str) -> dict[str, list[float]]:
    """Every metric SageMaker would extract from this log, line by line, with its regexes."""
    values: dict[str, list[float]] = {d["Name"]: [] for d in METRIC_DEFINITIONS}
    for line in stdout.splitlines():
        for definition in METRIC_DEFINITIONS:
            values[definition["Name"]] += [float(v) for v in re.findall(definition["Regex"], line)]
    return values


# --------------------------------------------------------------------------------------------
# (1) A successful run: artifacts, metrics, metric lines, TensorBoard
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_successful_run_writes_the_model_directory(trained: Trained) -> None:
    assert trained.code == 0, trained.failure
    assert trained.failure is None
    assert set(trained.model_files) == MODEL_FILES  # and nothing else (no staging left over)
    assert not (trained.job.output_dir / "failure").exists()

    checkpoint = torch.load(
        trained.job.model_dir / "model.ckpt", map_location="cpu", weights_only=False
    )
    assert "state_dict" in checkpoint and "hyper_parameters" in checkpoint
    assert "optimizer_states" not in checkpoint  # inference does not need it
    # Epoch checkpoints stay in the checkpoint dir, which SageMaker syncs separately.
    assert (trained.job.base / "checkpoints" / "last.ckpt").is_file()

    saved = json.loads((trained.job.model_dir / "config.json").read_text())
    assert saved["config"]["data"]["preset"] == "synthetic"
    assert saved["config"]["data"]["target"] == "sales"
    assert saved["config"]["training"]["max_epochs"] == EPOCHS
    assert saved["config"]["model"]["hidden_size"] == 8
    assert saved["time_axis"] == {"freq": "W-MON", "origin": "2022-01-03T00:00:00"}
    assert set(saved["versions"]) == {"torch", "lightning", "pytorch-forecasting", "pandas"}


@pytest.mark.slow
def test_metrics_json(trained: Trained) -> None:
    metrics = trained.metrics
    for name in SCORES:
        for key in (name, f"baseline_{name}"):
            assert key in metrics, key
            assert math.isfinite(metrics[key]) and metrics[key] >= 0, key
    assert metrics["validation_windows"] == N_SERIES
    assert metrics["validation_points"] == N_SERIES * HORIZON
    assert metrics["epochs_trained"] == EPOCHS
    assert metrics["best_epoch"] in range(EPOCHS)
    assert metrics["world_size"] == 1
    # Since the job's code started: the first step, then the end of training; training alone
    # (validation passes excluded) is part of the fit.
    assert 0 < metrics["first_step_s"] < metrics["trained_s"]
    assert 0 < metrics["training_s"] < metrics["fit_s"]


@pytest.mark.slow
def test_metric_lines_parse_with_the_metric_definitions(trained: Trained) -> None:
    assert len(METRIC_DEFINITIONS) <= 40  # SageMaker's limits
    assert all(len(d["Regex"]) <= 500 for d in METRIC_DEFINITIONS)
    values = metric_values(trained.stdout)

    # One per epoch, and nothing else in the log matches.
    assert values["epoch"] == [float(e) for e in range(EPOCHS)]
    for name in ("train_loss", "val_loss", "val_MAE", "val_SMAPE", "val_RMSE", "lr"):
        assert len(values[name]) == EPOCHS, name
        assert all(math.isfinite(v) for v in values[name]), name
    assert all(v > 0 for v in values["train_loss"] + values["val_loss"])

    # The final line, once, equal to metrics.json (printed with 6 significant digits).
    metrics = trained.metrics
    for name in ("final_val_MAE", "final_val_SMAPE", "final_val_RMSE", "final_val_quantile_loss"):
        assert values[name] == [pytest.approx(metrics[name.removeprefix("final_")], rel=1e-5)]
    assert values["baseline_val_MAE"] == [pytest.approx(metrics["baseline_val_MAE"], rel=1e-5)]
    final_lines = [
        line for line in trained.stdout.splitlines() if line.startswith("[metrics] final_")
    ]
    assert len(final_lines) == 1
    for name in SCORES:
        assert f" baseline_{name}=" in final_lines[0]

    # The best checkpoint's forecast of the backtest windows (the combination's, ensemble=true)
    # reproduces that epoch's logged val_MAE; the shipped forecast and the TFT's are reported.
    best = metrics["best_epoch"]
    assert values["val_MAE"][best] == pytest.approx(metrics["tft_backtest_MAE"], rel=1e-4)
    assert values["tft_val_MAE"] == [pytest.approx(metrics["tft_val_MAE"], rel=1e-5)]
    assert values["weight_tft"] == [pytest.approx(metrics["weight_tft"], rel=1e-5)]


@pytest.mark.slow
def test_tensorboard_events(trained: Trained) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    directory = trained.job.output_dir / "tensorboard"
    events = list(directory.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event files under {directory}"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"val_loss", "val_MAE", "train_loss_epoch", "learning_rate"} <= tags, tags
    assert len(accumulator.Scalars("val_loss")) == EPOCHS


@pytest.mark.slow
def test_tensorboard_hparams_name_the_encoders(trained: Trained) -> None:
    """hparams.yaml names the normaliser and encoders by their settings:
    PyYAML's dump of their per-series statistics was megabytes and seconds per model on large
    panels. The checkpoint shipped keeps them whole: `predict` needs their statistics."""
    import yaml
    from pytorch_forecasting.data.encoders import GroupNormalizer

    text = (trained.job.output_dir / "tensorboard" / "hparams.yaml").read_text()
    assert "pytorch_forecasting.data.encoders" not in text  # no object dumps of them
    hparams = yaml.unsafe_load(text)
    assert hparams["output_transformer"].startswith("GroupNormalizer("), hparams
    assert "NaNLabelEncoder(" in str(hparams["dataset_parameters"]["categorical_encoders"])
    checkpoint = torch.load(trained.job.model_dir / "model.ckpt", weights_only=False)
    normalizer = checkpoint["hyper_parameters"]["output_transformer"]
    assert isinstance(normalizer, GroupNormalizer) and len(normalizer.norm_) > 0


@pytest.mark.slow
def test_failure_while_writing_the_model_leaves_no_partial_model(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk after training: exit 2, a cause that names the model directory, and the
    files already staged (model.ckpt, dataset_parameters.pt) do not reach model/."""

    def disk_full() -> dict[str, str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tft_sagemaker.artifacts._versions", disk_full)
    sm_job.write_data(tiny_panel)
    result = sm_job.run({"preset": "synthetic", **TINY})
    assert result.code == 2
    assert result.failure_line.startswith(
        f"Could not write the model to {sm_job.model_dir}: No space left on device (errno 28)."
    ), result.failure_line
    assert len(result.failure) <= FAILURE_LIMIT
    assert result.model_files == []


# --------------------------------------------------------------------------------------------
# (2) Another dataset, another frequency, by configuration alone
# --------------------------------------------------------------------------------------------
def daily_frame(n_shops: int = 2, n_skus: int = 2, days: int = 56, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2023-03-01", periods=days, freq="D")
    frames = []
    for shop in range(n_shops):
        for sku in range(n_skus):
            price = rng.uniform(2.0, 4.0, days).round(2)
            weekend = dates.dayofweek >= 5
            units = (20 + 5 * sku) * (1.4 if shop else 1.0) * np.where(weekend, 1.5, 1.0)
            units = (units * (3.0 / price) * rng.lognormal(0, 0.1, days)).round(1)
            frames.append(
                pd.DataFrame(
                    {
                        "shop_id": f"shop-{shop}",
                        "sku_code": f"SKU{sku:03d}",
                        "day": dates,
                        "units": units,
                        "unit_price": price,
                        "weekday": dates.day_name(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


DAILY_CONFIG = """\
# The schema of this dataset; the training budget comes from the hyperparameters.
group_ids: [shop_id, sku_code]
date_column: day
freq: D
static_categoricals: [shop_id, sku_code]
time_varying_known_categoricals: [weekday]
time_varying_known_reals: [time_idx, unit_price]
time_varying_unknown_reals: [units]
max_encoder_length: 14
"""


@pytest.mark.slow
def test_daily_dataset_with_other_columns_by_configuration(sm_job: SageMakerDir) -> None:
    frame = daily_frame()
    sm_job.write_data(frame)
    (sm_job.channel("train") / "tft_config.yaml").write_text(DAILY_CONFIG)
    # As a framework estimator encodes them (JSON strings), and one overriding the file.
    result = sm_job.run(
        {**TINY, "target": '"units"', "max_prediction_length": "7", "max_encoder_length": "10"}
    )
    assert result.code == 0, result.failure
    assert set(result.model_files) == MODEL_FILES

    saved = json.loads((sm_job.model_dir / "config.json").read_text())
    data = saved["config"]["data"]
    assert data["preset"] is None
    assert (data["target"], data["date_column"], data["freq"]) == ("units", "day", "D")
    assert data["group_ids"] == ["shop_id", "sku_code"]
    assert data["max_encoder_length"] == 10  # the hyperparameter wins over the file
    assert saved["time_axis"] == {"freq": "D", "origin": "2023-03-01T00:00:00"}
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["validation_windows"] == 4
    assert metrics["validation_points"] == 4 * 7

    # The forecasts map back to calendar days: the last week of each series.
    forecasts = predict.predict_frame(load_trained_model(sm_job.model_dir), frame)
    assert len(forecasts) == 4 * 7
    last_week = sorted(frame["day"].unique())[-7:]
    assert str(last_week[0].date()) == "2023-04-19"
    for _, series in forecasts.groupby(["shop_id", "sku_code"]):
        assert list(series["day"]) == list(last_week)
        assert list(series["horizon"]) == list(range(1, 8))
    mae = (forecasts["prediction"] - forecasts["actual"]).abs().mean()
    assert mae == pytest.approx(metrics["val_MAE"], rel=1e-4)


# --------------------------------------------------------------------------------------------
# (3) An explicit validation channel instead of the holdout
# --------------------------------------------------------------------------------------------
def split_horizon(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, the last HORIZON rows) of every series."""
    ordered = frame.sort_values(["store", "product", "week"])
    last = ordered.groupby(["store", "product"], observed=True).cumcount(ascending=False)
    return ordered[last >= HORIZON], ordered[last < HORIZON]


@pytest.mark.slow
def test_validation_channel_replaces_the_holdout(
    sm_job: SageMakerDir, small_panel: pd.DataFrame, trained: Trained
) -> None:
    """History in train, the horizon rows alone in validation: the same windows as the holdout
    of the full data, so the same run gives the same metrics."""
    history, horizon = split_horizon(small_panel)
    sm_job.write_data(history)
    sm_job.write_data(horizon, channel="validation")
    result = sm_job.run({"preset": "synthetic", **TINY, "max_epochs": str(EPOCHS)})
    assert result.code == 0, result.failure
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["validation_windows"] == N_SERIES
    for name in SCORES:
        assert metrics[name] == pytest.approx(trained.metrics[name], rel=1e-5), name
        assert metrics[f"baseline_{name}"] == pytest.approx(
            trained.metrics[f"baseline_{name}"], rel=1e-5
        )


@pytest.mark.slow
def test_validation_channel_of_some_series(sm_job: SageMakerDir, small_panel: pd.DataFrame) -> None:
    """Only the series in the validation channel are validated; a holdout would take all 30
    (and the train channel keeps its last weeks for training)."""
    history, horizon = split_horizon(small_panel)
    some = horizon[horizon["store"].eq("store_001")]
    sm_job.write_data(history)
    sm_job.write_data(some, channel="validation", name="part-0.parquet")
    result = sm_job.run({"preset": "synthetic", **TINY})
    assert result.code == 0, result.failure
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["validation_windows"] == 10
    assert metrics["validation_points"] == 10 * HORIZON


# --------------------------------------------------------------------------------------------
# (4)-(6) Predictions from the saved artifact
# --------------------------------------------------------------------------------------------
def predict_in_subprocess(model: Path, data: Path, output: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(CODE_DIR), "OMP_NUM_THREADS": "1"}
    env.pop("SAGEMAKER_BASE_DIR", None)
    command = [sys.executable, "-m", "tft_sagemaker.predict"]
    command += ["--model", str(model), "--data", str(data), "--output", str(output)]
    process = subprocess.run(
        command, env=env, cwd=output.parent, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-2000:]
    return process


def pack_model(model_dir: Path, archive: Path) -> Path:
    """model.tar.gz as SageMaker packs /opt/ml/model: the directory's files at the root."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)))
    return archive


def assert_reproduces_val_mae(forecasts: pd.DataFrame, metrics: dict[str, float]) -> None:
    known = forecasts.dropna(subset=["actual"])
    assert len(known) == N_SERIES * HORIZON
    mae = (known["prediction"] - known["actual"]).abs().mean()
    assert mae == pytest.approx(metrics["val_MAE"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True], ids=["model-dir", "model.tar.gz"])
def test_predict_in_a_fresh_process_reproduces_val_mae(
    trained: Trained, tmp_path: Path, packed: bool
) -> None:
    model = trained.job.model_dir
    if packed:
        model = pack_model(model, tmp_path / "model.tar.gz")
        with tarfile.open(model) as tar:
            assert sorted(tar.getnames()) == sorted(MODEL_FILES)
    output = tmp_path / "out.parquet"
    process = predict_in_subprocess(model, trained.data_file, output)
    assert f"wrote {N_SERIES * HORIZON} forecasts for {N_SERIES} series" in process.stdout

    forecasts = pd.read_parquet(output)
    expected = ["store", "product", "week", "time_idx", "horizon", "prediction", "actual"]
    assert set(expected) <= set(forecasts.columns)
    quantiles = [f"q{q:g}" for q in (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)]
    assert set(quantiles) <= set(forecasts.columns)
    assert (forecasts["prediction"] == forecasts["q0.5"]).all()
    assert sorted(forecasts["horizon"].unique()) == list(range(1, HORIZON + 1))
    assert sorted(forecasts["time_idx"].unique()) == list(range(60 - HORIZON, 60))
    last_weeks = pd.date_range("2022-01-03", periods=60, freq="W-MON")[-HORIZON:]
    assert sorted(forecasts["week"].unique()) == list(last_weeks)
    assert_reproduces_val_mae(forecasts, trained.metrics)
    assert not list(tmp_path.glob(".*.partial"))


def future_rows(frame: pd.DataFrame, steps: int) -> pd.DataFrame:
    """`steps` weeks after each series' end: known covariates filled in, the target empty."""
    last = frame.sort_values("week").groupby(["store", "product"], observed=True).tail(1)
    rows = []
    for step in range(1, steps + 1):
        week = last["week"] + pd.Timedelta(weeks=step)
        rows.append(
            last.assign(
                week=week,
                sales=np.nan,
                discount_pct=0.0,
                promo="-",
                holiday="none",
                month=week.dt.month.astype(str),
            )
        )
    return pd.concat(rows, ignore_index=True)


@pytest.mark.slow
def test_predict_future_rows_with_an_empty_target(
    trained: Trained, small_panel: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    future = future_rows(small_panel, HORIZON)
    data = pd.concat(
        [small_panel.astype({c: str for c in ("promo", "holiday", "month")}), future],
        ignore_index=True,
    )
    data_file = tmp_path / "new.parquet"
    data.to_parquet(data_file, index=False)
    output = tmp_path / "forecast.parquet"
    argv = ["--model", str(trained.job.model_dir), "--data", str(data_file)]
    assert predict.main([*argv, "--output", str(output)]) == 0
    assert f"wrote {N_SERIES * HORIZON} forecasts" in capsys.readouterr().out

    forecasts = pd.read_parquet(output)
    assert len(forecasts) == N_SERIES * HORIZON
    assert sorted(forecasts["time_idx"].unique()) == list(range(60, 60 + HORIZON))
    assert sorted(forecasts["week"].unique()) == sorted(future["week"].unique())
    assert forecasts["actual"].isna().all()
    assert np.isfinite(forecasts["prediction"]).all()
    assert (forecasts["prediction"] >= 0).all()  # softplus: sales are never negative
    series = forecasts[["store", "product"]].drop_duplicates()
    assert len(series) == N_SERIES


@pytest.mark.slow
def test_predict_refuses_to_overwrite(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "out.parquet"
    output.write_bytes(b"an earlier forecast")
    argv = ["--model", str(trained.job.model_dir), "--data", str(trained.data_file)]
    assert predict.main([*argv, "--output", str(output)]) == 2
    assert f"{output} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert output.read_bytes() == b"an earlier forecast"

    assert predict.main([*argv, "--output", str(output), "--overwrite"]) == 0
    assert_reproduces_val_mae(pd.read_parquet(output), trained.metrics)


@pytest.mark.slow
def test_predict_writes_the_format_its_output_names(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The same forecasts as parquet, CSV (gzip), JSON records and JSON lines."""
    argv = ["--model", str(trained.job.model_dir), "--data", str(trained.data_file)]
    readers = {
        "out.parquet": pd.read_parquet,
        "out.csv.gz": lambda path: pd.read_csv(path, parse_dates=["week"]),
        "out.json": lambda path: pd.read_json(path, orient="records", convert_dates=["week"]),
        "out.jsonl": lambda path: pd.read_json(path, lines=True, convert_dates=["week"]),
    }
    read = {}
    for name, reader in readers.items():
        assert predict.main([*argv, "--output", str(tmp_path / name)]) == 0
        read[name] = reader(tmp_path / name)
    capsys.readouterr()
    assert (tmp_path / "out.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip's magic number
    assert (tmp_path / "out.json").read_text().startswith('[{"store":"store_000"')
    expected = read.pop("out.parquet")
    expected["week"] = expected["week"].astype("datetime64[ns]")
    for name, frame in read.items():
        frame["week"] = frame["week"].dt.tz_localize(None).astype("datetime64[ns]")
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False, obj=name)


def test_predict_rejects_something_that_is_not_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    pd.DataFrame({"x": [1.0]}).to_parquet(tmp_path / "x.parquet")
    argv = ["--data", str(tmp_path / "x.parquet"), "--output", str(tmp_path / "o.parquet")]
    assert predict.main(["--model", str(tmp_path / "model"), *argv]) == 2
    assert "missing model.ckpt, dataset_parameters.pt" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert predict.main(["--model", str(tmp_path / "notes.txt"), *argv]) == 2
    assert "neither a model directory nor a model.tar.gz" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


# --------------------------------------------------------------------------------------------
# (7) Stallion: the tutorial's features, and the published naive baseline
# --------------------------------------------------------------------------------------------
def test_stallion_feature_engineering(stallion_path: Path) -> None:
    raw = pd.read_parquet(stallion_path)
    config = build_config({"preset": "stallion"}, {}, PRESET_VALUES).data
    ours = prepare_training_frame(raw, config)[0]
    theirs = tutorial_features(raw)

    assert len(ours) == 21_000
    sizes = ours.groupby(["agency", "sku"], observed=True)["time_idx"].agg(["size", "min", "max"])
    assert len(sizes) == 350
    assert (sizes["size"] == 60).all() and (sizes["min"] == 0).all() and (sizes["max"] == 59).all()
    assert set(config.required_columns) <= set(ours.columns)

    numeric = ["time_idx", "log_volume", "avg_volume_by_sku", "avg_volume_by_agency"]
    for column in numeric:
        np.testing.assert_allclose(ours[column].to_numpy(float), theirs[column].to_numpy(float))
    for column in ["month", "agency", "sku", *STALLION_SPECIAL_DAYS]:
        assert isinstance(ours[column].dtype, pd.CategoricalDtype), column
        assert list(ours[column].astype(str)) == list(theirs[column].astype(str)), column
    assert set(ours["easter_day"].astype(str)) == {"-", "easter_day"}
    assert set(ours["month"].astype(str)) == {str(m) for m in range(1, 13)}


@pytest.mark.slow
def test_stallion_run_reports_the_published_baseline(
    sm_job: SageMakerDir, stallion_path: Path
) -> None:
    shutil.copy(stallion_path, sm_job.channel("train") / "stallion.parquet")
    result = sm_job.run({"preset": "stallion", **TINY, "batch_size": "64"})
    assert result.code == 0, result.failure
    assert set(result.model_files) == MODEL_FILES
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    assert metrics["validation_windows"] == 350
    assert metrics["validation_points"] == 350 * 6
    assert round(metrics["baseline_val_MAE"], 1) == 293.0
    assert math.isfinite(metrics["val_MAE"])


@pytest.mark.slow
def test_weight_averaging_saves_the_average(
    sm_job: SageMakerDir, small_panel: pd.DataFrame
) -> None:
    """With ema_decay, validation, the best checkpoint and the saved model are the averaged
    weights: the artifact reproduces the reported metrics, and carries no raw weights."""
    data_file = sm_job.write_data(small_panel)
    result = sm_job.run({"preset": "synthetic", **TINY, "max_epochs": "2", "ema_decay": "0.5"})
    assert result.code == 0, result.failure
    metrics = json.loads((sm_job.model_dir / "metrics.json").read_text())
    checkpoint = torch.load(sm_job.model_dir / "model.ckpt", weights_only=False)
    assert "current_model_state" not in checkpoint and "averaging_state" not in checkpoint
    trained = load_trained_model(sm_job.model_dir)
    forecasts = predict.predict_frame(trained, pd.read_parquet(data_file))
    assert_reproduces_val_mae(forecasts, metrics)
