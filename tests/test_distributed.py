"""Distributed and fault-tolerant training with real processes (gloo on this CPU machine).

Each "host" is a process tree of its own, started the way the image starts it (supervisor →
SageMaker toolkit `train` → code/train.py), with its own /opt/ml (SAGEMAKER_BASE_DIR) whose
resourceconfig.json names the job's hosts. Host names are `127.0.0.1` and `localhost`, which
resolve on any machine, so the cluster forms over loopback exactly as it would across hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tft_sagemaker import predict
from tft_sagemaker.artifacts import load_trained_model
from tft_sagemaker.config import build_config
from tft_sagemaker.dataset import build_training_dataset
from tft_sagemaker.job_data import carve_backtest, split_holdout
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import resolve_data
from tft_sagemaker.synthetic import make_panel

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ["127.0.0.1", "localhost"]  # ranked in this order (node 0, node 1)
QUICK = {
    "preset": "synthetic",
    "hidden_size": "8",
    "attention_head_size": "1",
    "hidden_continuous_size": "4",
    "batch_size": "64",
    "max_epochs": "3",
    "collective_timeout_s": "30",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def panel():
    return make_panel(n_stores=4, n_products=10, n_weeks=60, seed=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_host(
    root: Path,
    panel,
    hosts: list[str],
    current: str,
    hps: dict[str, str],
    files: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """One host's /opt/ml: the whole panel in its train channel (FullyReplicated), or only
    `files` (its ShardedByS3Key share)."""
    base = root / current
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": current, "hosts": hosts, "network_interface_name": "lo"})
    )
    distribution = "FullyReplicated" if files is None else "ShardedByS3Key"
    (config / "inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "File", "S3DistributionType": distribution}})
    )
    (base / "input" / "data" / "train").mkdir(parents=True)
    for name, frame in (files or {"data.parquet": panel}).items():
        frame.to_parquet(base / "input" / "data" / "train" / name)
    (base / "model").mkdir()
    (base / "output" / "data").mkdir(parents=True)
    shutil.copytree(ROOT / "code", base / "code", ignore=shutil.ignore_patterns("__pycache__"))
    return base


def start(base: Path) -> subprocess.Popen:
    """One host: the supervisor (the image's `train`) over the real toolkit."""
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_PROGRAM": "train.py",
        # The toolkit would wait up to 15 minutes for algo-N names to resolve; the job's own,
        # bounded wait (host_wait_timeout_s) still checks the hosts.
        "SM_STUDIO_LOCAL_MODE": "true",
        "PYTHONPATH": str(ROOT / "code"),
        "PYTHONUNBUFFERED": "1",
    }
    log = (base / "job.log").open("w")
    toolkit = str(Path(sys.executable).parent / "train")
    return subprocess.Popen(
        [sys.executable, "-m", "tft_sagemaker.sagemaker.supervise", toolkit],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def summaries(*bases: Path) -> list[dict]:
    files = sorted(f for b in bases for f in (b / "output" / "data").glob("training-summary-*"))
    return [json.loads(f.read_text()) for f in files]


def panel_windows(panel: pd.DataFrame, hps: dict[str, str]) -> int:
    """Training windows of the whole panel, as one process builds them (with ensemble=true,
    without each series' backtest steps)."""
    config = build_config(hps, None, PRESET_VALUES)
    frame, _ = prepare_training_frame(panel, config.data)
    frame = split_holdout(frame, config.data)
    data = resolve_data(config.data, frame)[0]
    carved = carve_backtest(frame, data) if config.training.ensemble else None
    return len(build_training_dataset(frame if carved is None else frame[carved.fit], data))


def assert_epochs_cover_every_window_once(parts: list[dict]) -> None:
    total = parts[0]["total_windows"]
    assert {p["total_windows"] for p in parts} == {total}
    everything = np.arange(total, dtype=np.int64)
    epochs = {e for p in parts for e in p["epochs"]}
    assert epochs, "no epoch was trained"
    for epoch in epochs:
        assert all(epoch in p["epochs"] for p in parts), "ranks stopped at different epochs"
        seen = [p["epochs"][epoch] for p in parts]
        assert len({s["batches"] for s in seen}) == 1, "ranks ran different batch counts"
        assert sum(s["windows"] for s in seen) == total
        assert sum(s["index_sum"] for s in seen) == int(everything.sum())
        assert sum(s["index_square_sum"] for s in seen) == int((everything**2).sum())
        assert len({s["weights_sha256"] for s in seen}) == 1, "the ranks' models differ"


def assert_one_interpretation_of_every_series(bases: list[Path], panel) -> None:
    """Global rank 0 alone interprets the best model, over every series' validation window
    (each rank trained on a shard of them), and writes the one report."""
    written = [f for b in bases for f in (b / "output" / "data").glob("interpretation*.json")]
    assert written == [bases[0] / "output" / "data" / "interpretation.json"]
    assert [f for b in bases for f in (b / "output" / "data").glob("*.html")] == [
        bases[0] / "output" / "data" / "report.html"
    ]
    series = panel[["store", "product"]].drop_duplicates().shape[0]
    assert json.loads(written[0].read_text())["windows"] == series


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def failure(base: Path) -> str:
    path = base / "output" / "failure"
    return path.read_text() if path.exists() else ""


def test_single_process_sees_every_window(tmp_path, panel):
    base = make_host(tmp_path, panel, ["algo-1"], "algo-1", QUICK)
    assert finish(start(base)) == 0, (base / "job.log").read_text()[-3000:]
    (summary,) = summaries(base)
    assert summary["world_size"] == 1
    assert_epochs_cover_every_window_once([summary])


def test_two_nodes_train_as_one(tmp_path, panel):
    hps = {
        **QUICK,
        "master_port": str(free_port()),
        "max_epochs": "6",
        "early_stopping_patience": "1",
    }
    bases = [make_host(tmp_path, panel, HOSTS, host, hps) for host in HOSTS]
    procs = [start(b) for b in bases]
    codes = [finish(p) for p in procs]
    assert codes == [0, 0], [(b / "job.log").read_text()[-3000:] for b in bases]

    parts = summaries(*bases)
    assert [p["global_rank"] for p in parts] == [0, 1]
    assert {p["world_size"] for p in parts} == {2}
    assert_epochs_cover_every_window_once(parts)
    # Only global rank 0 writes the model; it reloads and forecasts.
    assert sorted(os.listdir(bases[0] / "model")) == [
        "config.json",
        "dataset_parameters.pt",
        "metrics.json",
        "model.ckpt",
        "report_data.json",
    ]
    assert os.listdir(bases[1] / "model") == []
    assert_one_interpretation_of_every_series(bases, panel)
    trained = load_trained_model(bases[0] / "model")
    assert trained.metrics["world_size"] == 2
    assert trained.metrics["val_MAE"] < trained.metrics["baseline_val_MAE"]
    for base in bases:
        assert (base / "output" / "success").exists()


def test_two_devices_on_one_node(tmp_path, panel):
    hps = {**QUICK, "devices": "2", "master_port": str(free_port())}
    base = make_host(tmp_path, panel, ["algo-1"], "algo-1", hps)
    assert finish(start(base)) == 0, (base / "job.log").read_text()[-3000:]
    parts = summaries(base)
    assert [(p["global_rank"], p["world_size"]) for p in parts] == [(0, 2), (1, 2)]
    assert_epochs_cover_every_window_once(parts)
    # One preparation on the host: the second process maps it and never reads the channel.
    log = (base / "job.log").read_text()
    assert log.count("training data: ") == 1
    assert log.count("data: prepared once for this host") == 1
    assert log.count("data: mapped from") == 1
    assert (base / "model" / "model.ckpt").exists()
    assert_one_interpretation_of_every_series([base], panel)


def test_a_dead_node_fails_the_other_within_the_timeout(tmp_path, panel):
    timeout = 30
    hps = {
        **QUICK,
        "master_port": str(free_port()),
        "max_epochs": "200",
        "collective_timeout_s": str(timeout),
    }
    bases = [make_host(tmp_path, panel, HOSTS, host, hps) for host in HOSTS]
    leader, worker = (start(b) for b in bases)
    wait_for(lambda: summaries(bases[1]), 240, "the worker to finish an epoch")
    os.killpg(worker.pid, signal.SIGKILL)  # the whole host: supervisor, toolkit, script
    # Without collective_timeout_s the leader would wait 30 minutes (torch's default): `finish`
    # gives up on it long before that. Its cause names the timeout that ended it.
    code = finish(leader, timeout=timeout + 90)
    assert code != 0
    cause = failure(bases[0]).splitlines()[0]
    assert cause.startswith("Lost a peer of the training group (2 processes"), cause
    assert f"collective_timeout_s={timeout}" in cause
    assert os.listdir(bases[0] / "model") == []


def test_two_hosts_on_a_sharded_channel_train_on_their_files(tmp_path):
    panel = make_panel(n_stores=4, n_products=4, n_weeks=40, seed=3)  # small: the machine is shared
    # Two processes per host: the second maps the host's panel and forecasts its share. The
    # second processes start after the first have prepared: on a busy machine, later than 30 s.
    hps = {
        **QUICK,
        "devices": "2",
        "master_port": str(free_port()),
        "max_epochs": "2",
        "collective_timeout_s": "180",
    }
    stores = sorted(panel["store"].unique())
    halves = [panel[panel["store"].isin(stores[i::2])] for i in range(2)]
    bases = [
        make_host(tmp_path, panel, HOSTS, host, hps, files={f"part-{i}.parquet": halves[i]})
        for i, host in enumerate(HOSTS)
    ]
    procs = [start(b) for b in bases]
    codes = [finish(p, timeout=900) for p in procs]
    assert codes == [0, 0], [(b / "job.log").read_text()[-3000:] for b in bases]

    for base, half in zip(bases, halves, strict=True):
        log = (base / "job.log").read_text()
        assert f"channel 'train': {len(half)} rows from 1 file(s)" in log
        assert "the files of its shard (ShardedByS3Key)" in log
    parts = summaries(*bases)
    assert [p["global_rank"] for p in parts] == [0, 1, 2, 3]
    # The hosts' windows together are the whole panel's, each trained on once per epoch, by
    # one model.
    assert parts[0]["total_windows"] == panel_windows(panel, hps)
    assert_epochs_cover_every_window_once(parts)
    assert_one_interpretation_of_every_series(bases, panel)

    # The shipped forecast is the combination, its weights chosen on every host's backtest
    # windows (one per series).
    metrics = json.loads((bases[0] / "model" / "metrics.json").read_text())
    series = panel[["store", "product"]].drop_duplicates().shape[0]
    assert metrics["shipped"] == "ensemble"
    assert metrics["backtest_windows"] == series
    assert sum(metrics["ensemble_weights"].values()) == pytest.approx(1.0)
    # The final evaluation gathered from both hosts is the saved model's on every series in one
    # process (the predict command, which also needs every host's series scales, and refits the
    # combination's classical members on every series' history).
    assert metrics["validation_windows"] == series
    output = tmp_path / "forecasts.parquet"
    data = tmp_path / "panel.parquet"
    panel.to_parquet(data)
    assert (
        predict.main(
            ["--model", str(bases[0] / "model"), "--data", str(data), "--output", str(output)]
        )
        == 0
    )
    known = pd.read_parquet(output).dropna(subset=["actual"])
    assert len(known) == series * int(PRESET_VALUES["synthetic"]["max_prediction_length"])
    mae = (known["prediction"] - known["actual"]).abs().mean()
    assert mae == pytest.approx(metrics["val_MAE"], rel=1e-5)
