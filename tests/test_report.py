"""What a job tells about its model: interpretation.json, the figures, report.html, the
`forecast` channel's forecasts and TensorBoard's hp_metric, from the synthetic preset; the
interpretation against pytorch-forecasting's own `interpret_output` on one batch; and, on data
where one known covariate drives the target, that covariate named first."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY, SageMakerDir
from PIL import Image
from test_training_job import HORIZON, future_rows, pack_model

from tft_sagemaker import report
from tft_sagemaker.artifacts import load_trained_model
from tft_sagemaker.evaluate import forecast
from tft_sagemaker.interpret import GROUPS, InterpretationSum, largest_series
from tft_sagemaker.model import logging_metrics
from tft_sagemaker.predict import predict_frame, prepare_prediction

N_SERIES = 30  # small_panel: 3 stores x 10 products
ENCODER = 26  # the synthetic preset's max_encoder_length
NAMED = "store_001/product_03"  # a series named in report_series
FIGURES = {
    "training_curve",
    "static_variables",
    "encoder_variables",
    "decoder_variables",
    "attention",
    "forecast_0_best",
    "forecast_1_median",
    "forecast_2_worst",
    "forecast_3_requested",
}


@dataclass
class Reported:
    job: SageMakerDir
    code: int
    failure: str | None
    panel: pd.DataFrame
    future: pd.DataFrame  # the forecast channel: history and HORIZON empty-target weeks

    @property
    def data_dir(self) -> Path:
        return self.job.output_dir / "data"

    def read_json(self, path: Path) -> Any:
        return json.loads(path.read_text())

    @property
    def report_data(self) -> dict[str, Any]:
        return self.read_json(self.job.model_dir / "report_data.json")

    @property
    def metrics(self) -> dict[str, Any]:
        return self.read_json(self.job.model_dir / "metrics.json")


def run_job(
    root: Path, panel: pd.DataFrame, hyperparameters: dict[str, str], future: pd.DataFrame | None
) -> Reported:
    with pytest.MonkeyPatch.context() as monkeypatch:
        job = SageMakerDir(root / "opt_ml", monkeypatch)
        job.write_data(panel)
        if future is not None:
            job.write_data(future, channel="forecast")
        result = job.run(hyperparameters)
    return Reported(job, result.code, result.failure, panel, future)


def with_future(panel: pd.DataFrame) -> pd.DataFrame:
    history = panel.astype({c: str for c in ("promo", "holiday", "month")})
    return pd.concat([history, future_rows(panel, HORIZON)], ignore_index=True)


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, small_panel: pd.DataFrame) -> Reported:
    """The synthetic preset, two short epochs, a forecast channel and one named series."""
    run = run_job(
        tmp_path_factory.mktemp("reported"),
        small_panel,
        {"preset": "synthetic", **TINY, "max_epochs": "2", "report_series": NAMED},
        with_future(small_panel),
    )
    assert run.code == 0, run.failure
    return run


def assert_shares(shares: dict[str, float], names: list[str]) -> None:
    assert set(shares) == set(names)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(v >= 0 for v in shares.values())
    assert list(shares.values()) == sorted(shares.values(), reverse=True)


# --------------------------------------------------------------------------------------------
# interpretation.json
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_interpretation_json(reported: Reported, small_panel: pd.DataFrame) -> None:
    interpretation = reported.read_json(reported.data_dir / "interpretation.json")
    assert interpretation == reported.report_data["interpretation"]
    assert interpretation["windows"] == N_SERIES
    model = load_trained_model(reported.job.model_dir).model
    variables = {
        "static_variables": model.static_variables,
        "encoder_variables": model.encoder_variables,
        "decoder_variables": model.decoder_variables,
    }
    # The user's columns, and what pytorch-forecasting adds (explained in the JSON).
    assert {"store", "product", "category", "store_size"} <= set(variables["static_variables"])
    assert {"promo", "price", "sales"} <= set(variables["encoder_variables"])
    assert "sales" not in variables["decoder_variables"]
    assert set(interpretation["derived_variables"]) == {
        "relative_time_idx",
        "encoder_length",
        "sales_center",
        "sales_scale",
    }
    for group in GROUPS:
        assert_shares(interpretation[group], variables[group])
    attention = interpretation["attention"]
    assert attention["relative_step"] == list(range(-ENCODER, 0))
    assert sum(attention["weight"]) == pytest.approx(1.0, abs=1e-5)

    totals = small_panel.groupby(["store", "product"], observed=True)["sales"].sum()
    largest = [f"{s}/{p}" for s, p in totals.nlargest(5).index]
    assert [s["series"] for s in interpretation["largest_series"]] == largest
    for series in interpretation["largest_series"]:
        for group in GROUPS:
            assert_shares(series[group], variables[group])
        assert sum(series["attention"]["weight"]) == pytest.approx(1.0, abs=1e-5)


def shares_of(values: torch.Tensor, names: list[str]) -> dict[str, float]:
    return dict(zip(names, (values / values.sum()).tolist(), strict=True))


@pytest.mark.slow
def test_interpretation_is_pytorch_forecastings_in_batches(
    reported: Reported, small_panel: pd.DataFrame
) -> None:
    """The library's interpret_output(reduction="sum") on one batch of every validation window,
    through its own DataLoader, equals the job's figures and a sum over batches of 7."""
    trained = load_trained_model(reported.job.model_dir)
    model = trained.model
    dataset = prepare_prediction(
        small_panel, trained.dataset_parameters, trained.config.data, trained.time_axis
    ).dataset
    x, _ = next(iter(dataset.to_dataloader(train=False, batch_size=N_SERIES)))
    with torch.no_grad():
        library = model.interpret_output(model.eval()(x), reduction="sum")
    names = {
        "static_variables": model.static_variables,
        "encoder_variables": model.encoder_variables,
        "decoder_variables": model.decoder_variables,
    }
    focus = largest_series(small_panel, trained.config.data)
    batched = InterpretationSum(model, dataset, focus, "sales")
    forecast(model, dataset, vectorised=True, batch_size=7, observe=batched)
    for result in (reported.read_json(reported.data_dir / "interpretation.json"), batched.result()):
        for group in GROUPS:
            expected = shares_of(library[group], names[group])
            assert result[group] == pytest.approx(expected, abs=1e-5), group
        expected = (library["attention"] / library["attention"].sum()).tolist()
        assert result["attention"]["weight"] == pytest.approx(expected, abs=1e-5)

    # One series alone: the library on its window only.
    first = batched.result()["largest_series"][0]
    store, product = first["series"].split("/")
    one = prepare_prediction(
        small_panel[small_panel["store"].eq(store) & small_panel["product"].eq(product)],
        trained.dataset_parameters,
        trained.config.data,
        trained.time_axis,
    ).dataset
    x, _ = next(iter(one.to_dataloader(train=False, batch_size=1)))
    with torch.no_grad():
        alone = model.interpret_output(model(x), reduction="sum")
    for group in GROUPS:
        assert first[group] == pytest.approx(shares_of(alone[group], names[group]), abs=1e-5)


# --------------------------------------------------------------------------------------------
# Figures and the page
# --------------------------------------------------------------------------------------------
def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()  # decodes every pixel: a truncated file fails here
    return image


@pytest.mark.slow
def test_figures_decode(reported: Reported) -> None:
    files = sorted((reported.data_dir / "figures").iterdir())
    assert {f.stem for f in files} == FIGURES
    for file in files:
        image = decode_png(file.read_bytes())
        assert image.width >= 600 and image.height >= 250, file.name
        # Not a blank canvas: a drawn figure has many colours.
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 20, file.name


class PageParser(HTMLParser):
    """Every tag, its attributes and its text; checks that elements close in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    assert parser.open == [], f"unclosed elements: {parser.open}"
    return parser


@pytest.mark.slow
def test_report_is_self_contained(reported: Reported) -> None:
    text = (reported.data_dir / "report.html").read_text()
    page = parse_page(text)
    tags = [tag for tag, _ in page.tags]
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(tags)
    assert "url(" not in text  # no stylesheet reference either
    ids = {attrs["id"] for _, attrs in page.tags if "id" in attrs}
    assert {"headline", "training", "interpretation", "forecasts", "configuration", "data"} <= ids
    images = []
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "data", "poster"):
            value = attrs.get(name)
            if value is None:
                continue
            if name == "href":
                assert value.startswith("#") and value[1:] in ids, value
            else:
                assert tag == "img" and name == "src", (tag, name)
                prefix = "data:image/png;base64,"
                assert value.startswith(prefix), value[:40]
                images.append(decode_png(base64.b64decode(value[len(prefix) :])))
    assert len(images) == len(FIGURES)

    words = " ".join(page.text)
    metrics = reported.metrics
    assert f"{metrics['val_MAE']:,.4g}" in words and f"{metrics['baseline_val_MAE']:,.4g}" in words
    assert "saved with this model" not in words  # no section lacks its data
    for series in reported.report_data["series"]:
        assert f"{series['role']}: {series['series']}, MAE" in words
    assert "report_series" in words  # the configuration


@pytest.mark.slow
def test_report_command_writes_the_same_page(reported: Reported, tmp_path: Path) -> None:
    page = (reported.data_dir / "report.html").read_text()
    archive = pack_model(reported.job.model_dir, tmp_path / "model.tar.gz")
    for model in (reported.job.model_dir, archive):
        output = tmp_path / f"{model.name}.html"
        assert report.main([str(model), "--output", str(output)]) == 0
        assert output.read_text() == page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_page_in_a_browser(reported: Reported, tmp_path: Path) -> None:
    """local_test/check_report.sh (what `make e2e` runs on a container's report) passes the
    page, and fails a copy with one image cut short."""

    def check(page: Path) -> subprocess.CompletedProcess[str]:
        command = [str(ROOT / "local_test" / "check_report.sh"), str(page), str(tmp_path / "a.png")]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    page = reported.data_dir / "report.html"
    good = check(page)
    assert good.returncode == 0, good.stderr
    assert f"{len(FIGURES)} images decoded" in good.stdout
    assert decode_png((tmp_path / "a.png").read_bytes()).width == 1280

    text = page.read_text()
    start = text.index("base64,") + len("base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(text[:start] + "iVBORw0KGgo" + text[start + 400 :])
    bad = check(broken)
    assert bad.returncode == 1
    assert "1 image(s) not decoded: ['training curve']" in bad.stderr


# --------------------------------------------------------------------------------------------
# Forecast plots, forecasts, history, data summary, TensorBoard
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_forecast_plots_are_the_best_median_worst_and_named(
    reported: Reported, small_panel: pd.DataFrame
) -> None:
    series = reported.report_data["series"]
    assert [s["role"] for s in series] == ["best", "median", "worst", "requested"]
    assert series[-1]["series"] == NAMED
    # Against per-series errors of the saved model's own forecasts.
    forecasts = predict_frame(load_trained_model(reported.job.model_dir), small_panel)
    errors = (
        (forecasts["prediction"] - forecasts["actual"])
        .abs()
        .groupby(forecasts["store"] + "/" + forecasts["product"])
        .mean()
        .sort_values(kind="stable")
    )
    assert series[0]["series"] == errors.index[0]
    assert series[2]["series"] == errors.index[-1]
    for s in series:
        assert s["mae"] == pytest.approx(errors[s["series"]], rel=1e-4)
        assert len(s["history"]["x"]) == len(s["history"]["y"]) == ENCODER
        assert len(s["forecast"]["actual"]) == HORIZON
        assert set(s["forecast"]["quantiles"]) == {
            "0.02",
            "0.1",
            "0.25",
            "0.5",
            "0.75",
            "0.9",
            "0.98",
        }
        # The history ends the week before the forecast starts.
        last, first = pd.Timestamp(s["history"]["x"][-1]), pd.Timestamp(s["forecast"]["x"][0])
        assert first - last == pd.Timedelta(weeks=1)


@pytest.mark.slow
def test_forecast_channel_is_what_predict_writes(reported: Reported) -> None:
    written = pd.read_parquet(reported.data_dir / "forecast.parquet")
    expected = predict_frame(load_trained_model(reported.job.model_dir), reported.future)
    pd.testing.assert_frame_equal(written, expected, check_exact=False, rtol=1e-5, atol=1e-4)
    assert len(written) == N_SERIES * HORIZON
    quantiles = [f"q{q:g}" for q in (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)]
    assert {"store", "product", "week", "horizon", "prediction", *quantiles} <= set(written)
    assert written["week"].min() > reported.panel["week"].max()
    assert written["actual"].isna().all()


@pytest.mark.slow
def test_history_and_data_summary(reported: Reported) -> None:
    data = reported.report_data
    history = data["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    for entry in history:
        assert {"train_loss", "val_loss", "val_MAE", "lr"} <= set(entry)
    metrics = reported.metrics
    # The epochs validate the TFT on the backtest windows it early-stops on (ensemble=true).
    best = history[metrics["best_epoch"]]["val_MAE"]
    assert best == pytest.approx(metrics["tft_backtest_MAE"], rel=1e-4)
    summary = data["data"]
    assert summary["train"] == {
        "rows": N_SERIES * (60 - HORIZON),
        "series": N_SERIES,
        "first": "2022-01-03",
        "last": str((pd.Timestamp("2022-01-03") + pd.Timedelta(weeks=60 - HORIZON - 1)).date()),
    }
    assert summary["validation"]["rows"] == N_SERIES * 60
    assert (summary["dropped_count"], summary["dropped"]) == (0, [])


@pytest.mark.slow
def test_tensorboard_hp_metric_and_figures(reported: Reported) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(reported.job.output_dir / "tensorboard"))
    accumulator.Reload()
    hp_metric = accumulator.Scalars("hp_metric")
    assert hp_metric[0].value == -1  # Lightning's placeholder when training starts
    assert hp_metric[-1].value == pytest.approx(reported.metrics["val_MAE"], rel=1e-6)
    assert {f"report/{name}" for name in FIGURES} <= set(accumulator.Tags()["images"])


def test_mape_is_logged_only_without_zero_targets(small_panel: pd.DataFrame) -> None:
    from tft_sagemaker.config import build_config
    from tft_sagemaker.dataset import build_training_dataset
    from tft_sagemaker.preparation import prepare_training_frame
    from tft_sagemaker.presets import PRESET_VALUES

    config = build_config({"preset": "synthetic"}, {}, PRESET_VALUES).data
    frame = prepare_training_frame(small_panel, config)[0]
    frames = {
        "positive": frame,
        "a zero": frame.assign(sales=np.where(frame.index == 5, 0.0, frame["sales"])),
    }
    logged = {
        case: [type(m).__name__ for m in logging_metrics(build_training_dataset(f, config))]
        for case, f in frames.items()
    }
    assert logged == {
        "positive": ["SMAPE", "MAE", "RMSE", "MAPE"],
        "a zero": ["SMAPE", "MAE", "RMSE"],
    }


def test_dropped_series_are_listed_with_their_reason(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame
) -> None:
    from tft_sagemaker.config import build_config
    from tft_sagemaker.job_data import load_job_data
    from tft_sagemaker.presets import PRESET_VALUES
    from tft_sagemaker.sagemaker.paths import JobPaths

    first = tiny_panel["store"].eq("store_000") & tiny_panel["product"].eq("product_00")
    short = tiny_panel[~first | (tiny_panel["week"] >= tiny_panel["week"].unique()[50])]
    sm_job.write_data(short)  # store_000/product_00: 10 weeks, shorter than one window
    config = build_config({"preset": "synthetic", "drop_short_series": "true"}, {}, PRESET_VALUES)
    data = load_job_data(JobPaths.from_env({"SAGEMAKER_BASE_DIR": str(sm_job.base)}), config.data)
    summary = report.data_summary(data, config.data)
    # 13 (min encoder) + 1 (min prediction) + 8 (the held-out horizon) steps
    dropped = {"series": "store_000/product_00", "reason": "train: shorter than 22 steps"}
    assert (summary["dropped_count"], summary["dropped"]) == (1, [dropped])
    assert summary["train"]["series"] == summary["validation"]["series"] == N_SERIES - 1

    run = report.SavedRun(config.to_dict(), None, {}, {}, {"data": summary})
    words = " ".join(parse_page(report.render_html(run, {})).text)
    assert "Series dropped: 1." in words
    assert "store_000/product_00 train: shorter than 22 steps" in words


# --------------------------------------------------------------------------------------------
# report=false, and what is refused before training
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_false_skips_it(
    tmp_path: Path, small_panel: pd.DataFrame, capsys: pytest.CaptureFixture
) -> None:
    run = run_job(tmp_path, small_panel, {"preset": "synthetic", **TINY, "report": "false"}, None)
    assert run.code == 0, run.failure
    assert sorted(p.name for p in run.data_dir.iterdir()) == ["training-summary-algo-1-rank0.json"]
    # The model directory still has what a report can show without the data.
    assert set(run.report_data) == {"history", "data"}
    output = tmp_path / "late.html"
    assert report.main([str(run.job.model_dir), "--output", str(output)]) == 0
    words = " ".join(parse_page(output.read_text()).text)
    assert "No interpretation was saved with this model" in words
    assert "No forecast plot data was saved with this model" in words
    assert f"{run.metrics['val_MAE']:,.4g}" in words


@pytest.mark.parametrize(
    ("hyperparameters", "channel", "cause"),
    [
        (
            {"report_series": "store_001/product_99,nowhere"},
            None,
            "report_series names 2 series that are not in the validation data: "
            "store_001/product_99, nowhere; name each by its store/product values joined by "
            "'/', e.g. 'store_000/product_00'.",
        ),
        ({}, "drop", "Channel 'forecast' lacks 1 column(s) required by the configuration: price"),
    ],
    ids=["unknown-series", "bad-forecast-channel"],
)
def test_refused_before_training(
    sm_job: SageMakerDir,
    tiny_panel: pd.DataFrame,
    hyperparameters: dict[str, str],
    channel: str | None,
    cause: str,
) -> None:
    sm_job.write_data(tiny_panel)
    if channel:
        sm_job.write_data(with_future(tiny_panel).drop(columns="price"), channel="forecast")
    result = sm_job.run({"preset": "synthetic", **TINY, **hyperparameters})
    assert result.code == 2
    assert result.failure_line.startswith(cause), result.failure_line
    assert result.model_files == []
    assert not list((sm_job.base / "checkpoints").glob("*.ckpt"))  # no epoch was trained


# --------------------------------------------------------------------------------------------
# A known driver
# --------------------------------------------------------------------------------------------
def driven_panel(n_series: int = 12, steps: int = 48, seed: int = 2) -> pd.DataFrame:
    """The target is 20 x `m_driver` (known in advance, drawn anew every step) plus small
    noise; the other known reals are noise and a weekday that does nothing."""
    rng = np.random.default_rng(seed)
    frames = []
    for series in range(n_series):
        driver = rng.normal(0.0, 1.0, steps)
        frames.append(
            pd.DataFrame(
                {
                    "series": f"s{series:02d}",
                    "t": np.arange(steps),
                    "b_noise": rng.normal(0.0, 1.0, steps),
                    "m_driver": driver,
                    "level": rng.normal(0.0, 1.0, steps),
                    "weekday": rng.choice(list("abcdefg"), steps),
                    "y": 50 + 5 * (series % 3) + 20 * driver + rng.normal(0.0, 1.0, steps),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.mark.slow
def test_the_driving_covariate_comes_first(tmp_path: Path) -> None:
    """`m_driver` is the decoder's second input (weekday, then the reals as configured), the
    third alphabetically or reversed: importances attached to the wrong names, in any of these
    orders, would put another input first."""
    hyperparameters = {
        **TINY,
        "target": "y",
        "group_ids": "series",
        "time_idx": "t",
        "time_varying_known_categoricals": "weekday",
        "time_varying_known_reals": "m_driver,b_noise,level",
        "time_varying_unknown_reals": "y",
        "max_encoder_length": "8",
        "max_prediction_length": "4",
        "add_relative_time_idx": "false",
        "target_normalizer": "standard",
        "dropout": "0",
        "learning_rate": "0.05",
        "max_epochs": "4",
        "limit_train_batches": "16",
        "early_stopping_patience": "0",
    }
    run = run_job(tmp_path, driven_panel(), hyperparameters, None)
    assert run.code == 0, run.failure
    assert run.metrics["val_MAE"] < 0.3 * run.metrics["baseline_val_MAE"]  # it learned the driver
    decoder = run.read_json(run.data_dir / "interpretation.json")["decoder_variables"]
    model = load_trained_model(run.job.model_dir).model
    assert model.decoder_variables == ["weekday", "m_driver", "b_noise", "level"]
    assert list(decoder) == sorted(decoder, key=decoder.get, reverse=True)
    assert next(iter(decoder)) == "m_driver", decoder
    assert decoder["m_driver"] > 0.5, decoder


def test_the_headline_sets_the_tft_beside_every_baseline() -> None:
    from tft_sagemaker.report import _baselines

    metrics = {
        "val_MAE": 46.5,
        "val_MASE": 0.58,
        "baseline_val_MAE": 89.5,
        "baseline_val_MASE": 0.92,
        "seasonal_naive_val_MAE": 104.8,
        "ets_val_MAE": 26.2,
        "theta_val_MAE": 62.8,
        "best_baseline": "ets",
        "baseline_margin": 0.775,
        "beats_baselines": False,
        "classical_windows": 100,
        "validation_windows": 148,
    }
    page = _baselines(metrics)
    assert "does not beat ETS</span>: 77.5% higher MAE" in page
    for label, value in [("naive (last value)", "89.5"), ("seasonal naive", "104.8")]:
        assert f'<td>{label}</td><td class="num">{value}</td>' in page
    assert "a sample of 100 windows" in page
    beaten = _baselines(metrics | {"beats_baselines": True, "baseline_margin": -0.1})
    assert "beats every baseline</span>: 10.0% lower MAE than the strongest, ETS" in beaten
    assert _baselines({"val_MAE": 1.0}) == ""  # a model saved before the baselines
