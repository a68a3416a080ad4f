"""`python -m tft_sagemaker.predict` on bad arguments, files and data: one line `error: ...` on
stderr, exit code 2, and no output file; a series with nothing to forecast is skipped with a
warning, never forecast into its past."""

from __future__ import annotations

import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SYNTHETIC_SHORT, TINY, SageMakerDir, record_error

from tft_sagemaker import predict

HORIZON = 4  # SYNTHETIC_SHORT's max_prediction_length


def assert_predict_error(
    capsys: pytest.CaptureFixture, argv: list[str], *words: str, record: bool = True
) -> str:
    """Exit 2, and the last line on stderr is the one `error: ...` line, holding `words`
    (`record`: a row of docs/errors.md, for cases every machine runs)."""
    output = Path(argv[argv.index("--output") + 1]) if "--output" in argv else None
    existed = output is not None and output.exists()
    code = predict.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    if output is not None and not existed:
        assert not output.exists(), "a failed predict wrote its output"
    if record:
        record_error("predict", errors[0])
    return errors[0]


@pytest.fixture
def files(tmp_path: Path, small_panel: pd.DataFrame) -> dict[str, Path]:
    """A (fake) model directory, a data file and an output path that do exist or may."""
    model = tmp_path / "model"
    model.mkdir()
    data = tmp_path / "data.parquet"
    small_panel.to_parquet(data)
    return {"model": model, "data": data, "output": tmp_path / "out" / "forecast.parquet"}


def args(files: dict[str, Path], **changes: str) -> list[str]:
    values = {k: str(v) for k, v in files.items()} | changes
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", value] if value else [f"--{key}"]
    return argv


# --------------------------------------------------------------------------------------------
# The command line, checked before the model is loaded
# --------------------------------------------------------------------------------------------
def test_required_arguments(capsys: pytest.CaptureFixture) -> None:
    assert_predict_error(
        capsys, [], "error: the following arguments are required: --model, --data, --output"
    )


@pytest.mark.parametrize("option", ["model", "data"])
def test_missing_paths(capsys: pytest.CaptureFixture, files: dict[str, Path], option: str) -> None:
    missing = files[option].with_name("nope")
    argv = args(files, **{option: str(missing)})
    assert_predict_error(capsys, argv, f"error: --{option} {missing} does not exist.")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0", ["--batch-size must be a positive integer, got 0"]),
        ("-3", ["--batch-size must be a positive integer, got -3"]),
        ("ten", ["argument --batch-size: invalid int value: 'ten'"]),
    ],
)
def test_bad_batch_size(
    capsys: pytest.CaptureFixture, files: dict[str, Path], value: str, words: list[str]
) -> None:
    assert_predict_error(capsys, [*args(files), f"--batch-size={value}"], *words)


@pytest.mark.parametrize(
    ("device", "words"),
    [
        ("tpu", ["--device 'tpu' is not a device: use cpu, cuda or cuda:N."]),
        ("cuda", ["--device cuda: this machine has no CUDA GPU; use --device cpu."]),
        ("cuda:0", ["--device cuda:0: this machine has no CUDA GPU"]),
        ("meta", ["--device meta: only cpu, cuda[:N] and mps are supported."]),
    ],
)
def test_devices_that_are_not_there(
    capsys: pytest.CaptureFixture, files: dict[str, Path], device: str, words: list[str]
) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    assert_predict_error(capsys, args(files, device=device), *words)


def test_gpu_index_past_the_gpus(capsys: pytest.CaptureFixture, files: dict[str, Path]) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        pytest.skip("this host has no GPU")
    argv = args(files, device=f"cuda:{count}")
    assert_predict_error(capsys, argv, f"this machine has {count} GPU(s)", record=False)


def test_output_is_a_directory(capsys: pytest.CaptureFixture, files: dict[str, Path]) -> None:
    directory = files["output"].parent
    directory.mkdir()
    argv = args(files, output=str(directory), overwrite="")
    assert_predict_error(capsys, argv, f"error: --output {directory} is a directory: name a file")


def test_output_below_a_file(capsys: pytest.CaptureFixture, files: dict[str, Path]) -> None:
    blocker = files["output"].parent
    blocker.write_text("a file where a folder should be")
    assert_predict_error(
        capsys,
        args(files),
        f"error: --output {files['output']}: {blocker} is a file, not a folder.",
    )


def test_output_exists(capsys: pytest.CaptureFixture, files: dict[str, Path]) -> None:
    files["output"].parent.mkdir()
    files["output"].write_bytes(b"an earlier forecast")
    line = assert_predict_error(capsys, args(files), "exists; pass --overwrite to replace it.")
    assert line == f"error: {files['output']} exists; pass --overwrite to replace it."
    assert files["output"].read_bytes() == b"an earlier forecast"


@pytest.mark.parametrize("name", ["forecast.xlsx", "forecast", "forecast.txt.gz"])
def test_output_in_a_format_predict_does_not_write(
    capsys: pytest.CaptureFixture, files: dict[str, Path], name: str
) -> None:
    output = files["output"].with_name(name)
    suffix = "".join(output.suffixes) or "(no extension)"
    assert_predict_error(
        capsys,
        args(files, output=str(output)),
        f"error: --output {output}: unknown format {suffix}; name a file ending in .parquet, "
        ".pq, .csv, .csv.gz, .csv.bz2, .csv.xz, .json, .jsonl.",
    )


# --------------------------------------------------------------------------------------------
# Model and data files
# --------------------------------------------------------------------------------------------
def test_truncated_model_archive(
    capsys: pytest.CaptureFixture, files: dict[str, Path], tmp_path: Path
) -> None:
    """A model.tar.gz cut short, as an interrupted download leaves it."""
    (files["model"] / "model.ckpt").write_bytes(np.random.default_rng(0).bytes(200_000))
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(files["model"] / "model.ckpt", arcname="model.ckpt")
    archive.write_bytes(archive.read_bytes()[:50_000])
    assert_predict_error(
        capsys,
        args(files, model=str(archive)),
        f"error: --model {archive} cannot be read (",
        "give a complete model.tar.gz or model directory written by a training job",
    )


def test_corrupt_model_directory(capsys: pytest.CaptureFixture, files: dict[str, Path]) -> None:
    for name in ("model.ckpt", "dataset_parameters.pt"):
        (files["model"] / name).write_bytes(b"not a checkpoint")
    (files["model"] / "config.json").write_text('{"config": ')
    assert_predict_error(
        capsys, args(files), f"error: --model {files['model']} cannot be read (JSONDecodeError:"
    )


def test_data_folder_without_data_files(
    capsys: pytest.CaptureFixture, files: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "notes.txt").write_text("no data here")
    assert_predict_error(
        capsys, args(files, data=str(folder)), f"error: --data {folder} holds no parquet or CSV"
    )


# --------------------------------------------------------------------------------------------
# Data that does not fit the trained model
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, small_panel: pd.DataFrame) -> Path:
    """The synthetic preset, short windows, a tiny budget; per-series scaling (group)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        job = SageMakerDir(tmp_path_factory.mktemp("predict") / "opt_ml", monkeypatch)
        job.write_data(small_panel)
        result = job.run({**SYNTHETIC_SHORT, **TINY, "target_normalizer": "group"})
    assert result.code == 0, result.failure
    return job.model_dir


def future(panel: pd.DataFrame, steps: int, series: pd.Series | None = None) -> pd.DataFrame:
    """`steps` weeks after each series' end (or only the `series` rows' series): known
    covariates filled in, the target empty."""
    last = panel.sort_values("week").groupby(["store", "product"], observed=True).tail(1)
    if series is not None:
        last = last[series.loc[last.index]]
    rows = [
        last.assign(week=last["week"] + pd.Timedelta(weeks=step), sales=np.nan)
        for step in range(1, steps + 1)
    ]
    return pd.concat([panel, *rows], ignore_index=True)


def run_predict(
    model_dir: Path, frame: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> list[str]:
    data = tmp_path / "new.parquet"
    frame.to_parquet(data, index=False)
    return [
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--output",
        str(tmp_path / "forecast.parquet"),
    ]


@pytest.mark.slow
def test_series_without_rows_to_forecast_are_skipped(
    model_dir: Path, small_panel: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Future rows for store_000 and store_001 only: store_002 is not forecast into its past."""
    frame = future(small_panel, HORIZON, small_panel["store"].ne("store_002"))
    argv = run_predict(model_dir, frame, tmp_path, capsys)
    assert predict.main(argv) == 0
    out = capsys.readouterr().out
    assert "The prediction data: 10 of 30 series have no rows to forecast" in out
    assert "e.g. store=store_002, product=product_00" in out
    forecasts = pd.read_parquet(tmp_path / "forecast.parquet")
    assert sorted(forecasts["store"].unique()) == ["store_000", "store_001"]
    assert sorted(forecasts["time_idx"].unique()) == list(range(60, 60 + HORIZON))
    assert forecasts["actual"].isna().all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("steps", "words"),
    [
        (2, ["30 series have fewer rows to forecast than max_prediction_length=4", "rows=2"]),
        (6, ["30 series have more rows to forecast than max_prediction_length=4", "rows=6"]),
    ],
)
def test_rows_to_forecast_that_do_not_fill_the_horizon(
    model_dir: Path,
    small_panel: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    steps: int,
    words: list[str],
) -> None:
    argv = run_predict(model_dir, future(small_panel, steps), tmp_path, capsys)
    assert_predict_error(capsys, argv, "error: The prediction data: ", *words)


@pytest.mark.slow
def test_empty_target_inside_the_history(
    model_dir: Path, small_panel: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    frame = future(small_panel, HORIZON)
    frame.loc[5, "sales"] = np.nan
    argv = run_predict(model_dir, frame, tmp_path, capsys)
    assert_predict_error(
        capsys,
        argv,
        "error: The prediction data: 1 row(s) have an empty target 'sales' before the last "
        "known one of their series (e.g. at store=store_000, product=product_00, time_idx=5)",
    )


@pytest.mark.slow
def test_new_series_with_per_series_scaling(
    model_dir: Path, small_panel: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    frame = small_panel.assign(store=small_panel["store"].astype(str).str.replace("0", "9"))
    argv = run_predict(model_dir, frame, tmp_path, capsys)
    assert_predict_error(
        capsys,
        argv,
        "error: The prediction data: 30 series are not in the training data (e.g. "
        "store=store_991, product=product_00;",
        "add their history to the train channel, or set target_normalizer=encoder",
    )


@pytest.mark.slow
def test_known_covariate_missing_in_the_future(
    model_dir: Path, small_panel: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    frame = future(small_panel, HORIZON)
    frame.loc[frame["sales"].isna(), "price"] = np.nan
    argv = run_predict(model_dir, frame, tmp_path, capsys)
    assert_predict_error(
        capsys,
        argv,
        "error: The prediction data: missing or infinite values in real column(s): price (120)",
    )


@pytest.mark.slow
def test_a_category_never_seen_in_training(
    model_dir: Path, small_panel: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A future holiday 'Holiday' the model was never trained on (it would read it as missing)."""
    frame = future(small_panel, HORIZON).astype({"holiday": str})
    frame.loc[frame["sales"].isna() & frame["store"].eq("store_001"), "holiday"] = "Holiday"
    argv = run_predict(model_dir, frame, tmp_path, capsys)
    assert_predict_error(
        capsys,
        argv,
        "error: The prediction data: categories the model never saw in training, which it would "
        "read as missing values: holiday 'Holiday' (40 rows, e.g. at store=store_001, "
        "product=product_00, time_idx=60; it knows 'christmas', ",
        "give values it was trained on, or train it on data that holds these.",
    )


@pytest.mark.slow
def test_the_same_rows_in_a_parquet_and_a_csv(
    model_dir: Path, small_panel: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A folder holding the same rows twice, as a parquet and as a CSV file."""
    folder = tmp_path / "new"
    folder.mkdir()
    small_panel.to_parquet(folder / "panel.parquet", index=False)
    small_panel.to_csv(folder / "panel.csv", index=False)
    argv = ["--model", str(model_dir), "--data", str(folder), "--output", str(tmp_path / "f.pq")]
    assert_predict_error(
        capsys,
        argv,
        "error: The prediction data: 3600 rows share a (group, time) key, e.g. store=store_000, "
        "product=product_00, time_idx=0;",
        "each series needs one row per step (3600 of them are copies of another row: the same "
        "data given twice, in two files or one?).",
    )


@pytest.mark.slow
def test_a_model_archive_with_its_files_one_folder_down(
    model_dir: Path, small_panel: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`tar czf model.tar.gz model/`: the files are found in model/."""
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model_dir, arcname="model")
    argv = run_predict(model_dir, small_panel, tmp_path, capsys)
    argv[argv.index("--model") + 1] = str(archive)
    assert predict.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{archive}: the model's files are in model/" in out
    assert "wrote 120 forecasts for 30 series" in out


def test_a_model_archive_holding_two_models(
    capsys: pytest.CaptureFixture, files: dict[str, Path], tmp_path: Path
) -> None:
    archive = tmp_path / "models.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.ckpt", "dataset_parameters.pt", "config.json"):
            (files["model"] / name).write_bytes(b"")
        tar.add(files["model"], arcname="old")
        tar.add(files["model"], arcname="new")
    assert_predict_error(
        capsys,
        args(files, model=str(archive)),
        f"error: {archive} holds 2 models, in new, old: give the model directory, or the "
        "model.tar.gz, of one of them.",
    )


# --------------------------------------------------------------------------------------------
# Ids and categories against what the model was trained on
# --------------------------------------------------------------------------------------------
@dataclass
class PaddedModel:
    """A model of series ids with leading zeros ('000', '001', '002'), whose 'holiday' takes
    a value only in the held-out last week, and the warnings its job emitted."""

    directory: Path
    panel: pd.DataFrame
    job_warnings: list[str]


# Library notices that say nothing about the user's data (the second: sklearn's, once per
# window of the library's own loader, for target scales given as bare numbers).
UNKNOWN_CLASSES = "unknown classes which were set to NaN"
UNNAMED_FEATURES = "X does not have valid feature names"


def _notices(caught: list[warnings.WarningMessage], *phrases: str) -> list[str]:
    return [str(w.message) for w in caught if any(p in str(w.message) for p in phrases)]


@pytest.fixture(scope="module")
def padded_model(
    tmp_path_factory: pytest.TempPathFactory, small_panel: pd.DataFrame
) -> PaddedModel:
    panel = small_panel.assign(
        store=small_panel["store"].astype(str).str[-3:],
        holiday=small_panel["holiday"].astype(str),
    )
    panel.loc[panel["week"].eq(panel["week"].max()), "holiday"] = "xmas"
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        job = SageMakerDir(tmp_path_factory.mktemp("padded") / "opt_ml", monkeypatch)
        job.write_data(panel)
        result = job.run({**SYNTHETIC_SHORT, **TINY, "target_normalizer": "encoder"})
    assert result.code == 0, result.failure
    return PaddedModel(job.model_dir, panel, _notices(caught, UNKNOWN_CLASSES, UNNAMED_FEATURES))


def predict_recording(argv: list[str]) -> tuple[int, list[str]]:
    """predict's exit code, and the library notices it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = predict.main(argv)
    return code, _notices(caught, UNKNOWN_CLASSES, UNNAMED_FEATURES)


@pytest.mark.slow
def test_predict_on_the_training_data_warns_of_no_unknown_class(
    padded_model: PaddedModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The holiday only the held-out week holds is a category the model knows: neither the job
    nor predict on its training data says "Found 1 unknown classes which were set to NaN"; nor
    does sklearn's per-window notice on the library's loader (the encoder normalizer) reach
    the log."""
    assert padded_model.job_warnings == []
    argv = run_predict(padded_model.directory, padded_model.panel, tmp_path, capsys)
    code, caught = predict_recording(argv)
    assert code == 0 and caught == []
    assert "wrote 120 forecasts for 30 series" in capsys.readouterr().out


@pytest.mark.slow
def test_ids_that_lost_their_leading_zeros_in_a_csv(
    padded_model: PaddedModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The training ids '000', '001', '002' written to a CSV read back as 0, 1, 2."""
    data = tmp_path / "new.csv"
    padded_model.panel.to_csv(data, index=False)
    output = tmp_path / "forecast.parquet"
    argv = ["--model", str(padded_model.directory), "--data", str(data), "--output", str(output)]
    assert predict.main(argv) == 0
    assert (
        "The prediction data: 3 value(s) of 'store' are the training data's with their leading "
        "zeros lost (e.g. 0 for '000', as numbers read from a CSV lose them): read as those"
    ) in capsys.readouterr().out
    forecasts = pd.read_parquet(output)
    assert sorted(forecasts["store"].unique()) == [0, 1, 2]  # as given
    assert len(forecasts[["store", "product"]].drop_duplicates()) == 30


@pytest.mark.slow
def test_new_series_are_named_instead_of_the_librarys_warning(
    padded_model: PaddedModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A store the model never saw (scaled per window, so it may be forecast): named by
    predict, not by pytorch-forecasting's "Found 1 unknown classes"."""
    panel = padded_model.panel
    new = panel[panel["store"].eq("002")].assign(store="003")
    argv = run_predict(padded_model.directory, pd.concat([panel, new]), tmp_path, capsys)
    code, caught = predict_recording(argv)
    assert code == 0 and caught == []
    assert (
        "The prediction data: 10 series are not in the training data (e.g. store=003, "
        "product=product_00; store=003, product=product_01; store=003, product=product_02): the "
        "model knows no 'store' of theirs and forecasts them from their history and covariates "
        "alone"
    ) in capsys.readouterr().out
