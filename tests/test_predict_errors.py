"""`python -m tft_sagemaker.predict` on bad arguments, files and data: one line `error: ...` on
stderr, exit code 2, and no output file; a series with nothing to forecast is skipped with a
warning, never forecast into its past."""

from __future__ import annotations

import tarfile
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
