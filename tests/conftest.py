"""Shared fixtures: an `/opt/ml`-shaped base directory, and the training job run in-process.

    def test_something(sm_job, tiny_panel):
        sm_job.write_data(tiny_panel)                   # input/data/train/data.parquet
        result = sm_job.run({"preset": "synthetic", **TINY})
        assert result.code == 0 and result.failure is None

`sm_job.run` writes the hyperparameters to input/config/hyperparameters.json (every value a
string, as SageMaker does), turns them into the command line the toolkit would build (sorted
`--key value` pairs) and calls `tft_sagemaker.job.main` with SAGEMAKER_BASE_DIR pointing at the
base directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CODE_DIR = ROOT / "code"
VENV_BIN = Path(sys.executable).parent

# The smallest model and budget that still trains: use with every job that is meant to train.
TINY: dict[str, str] = {
    "max_epochs": "1",
    "limit_train_batches": "2",
    "batch_size": "32",
    "hidden_size": "8",
    "attention_head_size": "1",
    "hidden_continuous_size": "4",
}
# The synthetic preset with short windows, for panels of a few dozen weeks.
SYNTHETIC_SHORT: dict[str, str] = {
    "preset": "synthetic",
    "max_encoder_length": "12",
    "min_encoder_length": "6",
    "max_prediction_length": "4",
}


class JobRun(NamedTuple):
    """What a finished job left behind."""

    code: int
    failure: str | None  # text of output/failure, None when the file does not exist
    model_files: list[str]  # everything under model/, relative, sorted (folders end in /)

    @property
    def failure_line(self) -> str:
        assert self.failure is not None, "the job wrote no failure file"
        return self.failure.splitlines()[0]


def to_cli(hyperparameters: Mapping[str, Any]) -> list[str]:
    """The command line the toolkit builds: keys sorted, `--key value`."""
    argv: list[str] = []
    for key in sorted(hyperparameters):
        argv += [f"--{key}", str(hyperparameters[key])]
    return argv


def files_under(directory: Path) -> list[str]:
    """Everything under `directory`, relative and sorted; folders end in '/' (so that an empty
    list means an empty directory, without even a leftover staging folder)."""
    if not directory.is_dir():
        return []
    return sorted(
        f"{p.relative_to(directory)}{'/' if p.is_dir() else ''}" for p in directory.rglob("*")
    )


class SageMakerDir:
    """A fresh `/opt/ml` tree: input/config/*.json, input/data/<channel>/, model/, output/data/."""

    def __init__(self, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.base = base
        self.monkeypatch = monkeypatch
        for directory in (self.config_dir, self.data_dir, self.model_dir, self.output_dir / "data"):
            directory.mkdir(parents=True, exist_ok=True)
        self._write_json(
            "resourceconfig.json",
            {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"},
        )
        self._write_json("inputdataconfig.json", {})
        self._write_json("hyperparameters.json", {})

    # -- layout ----------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def data_dir(self) -> Path:
        return self.base / "input" / "data"

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    def _write_json(self, name: str, value: Any) -> None:
        (self.config_dir / name).write_text(json.dumps(value, indent=2))

    # -- input -----------------------------------------------------------------------------
    def channel(self, name: str) -> Path:
        """The channel's directory (created, and declared in inputdataconfig.json)."""
        directory = self.data_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        declared = json.loads((self.config_dir / "inputdataconfig.json").read_text())
        declared.setdefault(
            name,
            {
                "TrainingInputMode": "File",
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None",
            },
        )
        self._write_json("inputdataconfig.json", declared)
        return directory

    def write_data(
        self, frame: pd.DataFrame, channel: str = "train", name: str = "data.parquet"
    ) -> Path:
        path = self.channel(channel) / name
        if name.endswith(".csv"):
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return path

    def write_hyperparameters(self, hyperparameters: Mapping[str, Any]) -> None:
        """hyperparameters.json as SageMaker writes it: every value a string."""
        self._write_json("hyperparameters.json", {k: str(v) for k, v in hyperparameters.items()})

    # -- running ---------------------------------------------------------------------------
    def result(self, code: int) -> JobRun:
        failure = self.failure_file.read_text() if self.failure_file.exists() else None
        return JobRun(code, failure, files_under(self.model_dir))

    def run(
        self, hyperparameters: Mapping[str, Any] | None = None, argv: list[str] | None = None
    ) -> JobRun:
        """`main()` in this process; `argv` (verbatim) instead of the hyperparameters' CLI."""
        hyperparameters = dict(hyperparameters or {})
        self.write_hyperparameters(hyperparameters)
        return run_main(self.base, self.monkeypatch, argv or to_cli(hyperparameters), self)

    def toolkit_env(self) -> dict[str, str]:
        """Environment of the real toolkit (`train`), as local_test/train_local.sh sets it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
        env |= {
            "SAGEMAKER_BASE_DIR": str(self.base),
            "SM_STUDIO_LOCAL_MODE": "true",  # else the toolkit waits for algo-1 to resolve
            "SAGEMAKER_PROGRAM": "train.py",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
        }
        return env

    def run_toolkit(
        self, hyperparameters: Mapping[str, Any], timeout: float = 240
    ) -> tuple[JobRun, subprocess.CompletedProcess[str]]:
        """The SageMaker training toolkit's `train` as a subprocess, with the code in $BASE/code."""
        if not (VENV_BIN / "train").is_file():
            pytest.skip(f"no `train` beside {sys.executable}: sagemaker-training is not installed")
        self.write_hyperparameters(hyperparameters)
        code_dir = self.base / "code"
        if not code_dir.exists():
            shutil.copytree(
                CODE_DIR, code_dir, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        process = subprocess.run(
            [str(VENV_BIN / "train")],
            env=self.toolkit_env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return self.result(process.returncode), process


@contextmanager
def process_state_kept() -> Iterator[None]:
    """Leaves the process as it was: the job sets OMP_NUM_THREADS, PL_GLOBAL_SEED, torch's
    threads and the root logger."""
    environ, threads = dict(os.environ), torch.get_num_threads()
    handlers = logging.getLogger().handlers[:]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        logging.getLogger().handlers[:] = handlers


def sagemaker_environment(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SAGEMAKER_BASE_DIR at `base`, and none of the variables of an enclosing job."""
    for key in list(os.environ):
        if key.startswith("SM_") or key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))


def run_main(
    base: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], layout: SageMakerDir
) -> JobRun:
    """Run `tft_sagemaker.job.main(argv)` against `base`, leaving the process as it was."""
    from tft_sagemaker.job import main

    sagemaker_environment(base, monkeypatch)
    with process_state_kept():
        code = main(argv)
    return layout.result(code)


@pytest.fixture
def sm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SageMakerDir:
    """A fresh `/opt/ml`-shaped base directory in tmp_path (no channels yet)."""
    return SageMakerDir(tmp_path / "opt_ml", monkeypatch)


@pytest.fixture(scope="session")
def small_panel() -> pd.DataFrame:
    """The built-in synthetic panel, small: 30 series (3 stores x 10 products) x 60 weeks."""
    from tft_sagemaker.synthetic import make_panel

    return make_panel(n_stores=3, n_weeks=60)


@pytest.fixture
def tiny_panel(small_panel: pd.DataFrame) -> pd.DataFrame:
    """A copy of `small_panel` the test may modify."""
    return small_panel.copy()


@pytest.fixture(scope="session")
def stallion_path() -> Path:
    """The real Stallion file (env STALLION_PARQUET); skips the test when it is not given."""
    value = os.environ.get("STALLION_PARQUET")
    if not value:
        pytest.skip("STALLION_PARQUET is not set (path of the Stallion parquet file)")
    path = Path(value)
    if not path.is_file():
        pytest.skip(f"STALLION_PARQUET={value} does not exist")
    return path
