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
import re
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


# --------------------------------------------------------------------------------------------
# The bad-input table, docs/errors.md: every case a rejection helper accepted, with the first
# line the user sees. A run checks the rows of the tests it ran against the committed table
# and fails when they differ; TFT_ERRORS_DOC=write (make docs-errors) rewrites them instead.
# --------------------------------------------------------------------------------------------
ERRORS_DOC = ROOT / "docs" / "errors.md"
ERRORS_DOC_SECTIONS = {
    "job": "Training job: the first line of `output/failure` (exit code 2, `model/` left empty)",
    "predict": "`python -m tft_sagemaker.predict`: the line on stderr (exit code 2)",
}
_ERRORS_HEADER = """\
# Bad input and what it says

Every row is a test: the input it gives and the first line of the error it asserts, as the
user sees it (temporary paths shown as `/opt/ml` or `<tmp>`). Generated from the tests by
`make docs-errors`; `make test` fails when a row no longer matches its test.
"""
_recorded: dict[str, list[tuple[str, str]]] = {}  # test id → (section, message), in order
_cases: dict[str, str] = {}  # test id → the input, from its docstring or name, for every test
_passed: set[str] = set()
_basetemp: list[Path] = []


def record_error(section: str, message: str) -> None:
    """Record the current test's error message as a row of the table (once it passed its
    assertions)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    for base in _basetemp:
        message = re.sub(re.escape(str(base)) + r"/[^/\s]+/opt_ml", "/opt/ml", message)
        message = re.sub(re.escape(str(base)) + r"/[^/\s]+", "<tmp>", message)
    _recorded.setdefault(test, []).append((section, message))


@pytest.fixture(autouse=True)
def _rank_zero_restored() -> Iterator[None]:
    """A trainer built for a plan whose process is not rank 0 (tests/test_cluster.py) sets
    Lightning's process-wide rank, which silences the loggers of every later in-process job:
    restored after each test."""
    import lightning.pytorch.utilities.rank_zero as trainer_rank
    import lightning_utilities.core.rank_zero as utilities_rank

    holders = (trainer_rank.rank_zero_only, utilities_rank.rank_zero_only)
    ranks = [getattr(holder, "rank", 0) for holder in holders]
    yield
    for holder, rank in zip(holders, ranks, strict=True):
        holder.rank = rank


@pytest.fixture(autouse=True, scope="session")
def _errors_doc_paths(tmp_path_factory: pytest.TempPathFactory) -> None:
    _basetemp.append(tmp_path_factory.getbasetemp().resolve())


def _case(item: pytest.Item) -> str:
    function = getattr(item, "function", None)
    doc = ((function.__doc__ if function else None) or "").strip().split("\n\n")[0]
    name = item.originalname.removeprefix("test_").replace("_", " ")  # type: ignore[attr-defined]
    case = " ".join(doc.split()) if doc else name
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return case
    # The parameters that make the case, not those that say what to expect.
    params = {k: v for k, v in callspec.params.items() if k not in ("words", "expected")}
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or callspec.id
    return f"{case}: {shown}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _cases.update({item.nodeid: _case(item) for item in items if hasattr(item, "originalname")})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        _passed.add(report.nodeid)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _read_errors_doc() -> dict[str, list[tuple[str, str]]]:
    """test id → its rows, from the committed table."""
    rows: dict[str, list[tuple[str, str]]] = {}
    section = ""
    if not ERRORS_DOC.is_file():
        return rows
    titles = {title: key for key, title in ERRORS_DOC_SECTIONS.items()}
    for line in ERRORS_DOC.read_text().splitlines():
        if line.startswith("## "):
            section = titles.get(line[3:], line[3:])
        match = re.fullmatch(r"\| (.*) \| (.*) \| `(.+)` \|", line)
        if match:
            message = match[2].replace("\\|", "|")
            rows.setdefault(match[3], []).append((section, message))
    return rows


def _write_errors_doc(rows: dict[str, list[tuple[str, str]]], order: list[str]) -> None:
    position = {test: i for i, test in enumerate(order)}
    lines = [_ERRORS_HEADER]
    for key, title in ERRORS_DOC_SECTIONS.items():
        lines += [f"## {title}", "", "| input | message | test |", "| --- | --- | --- |"]
        for test in sorted(rows, key=lambda t: (t.split("::")[0], position.get(t, 0), t)):
            for section, message in rows[test]:
                if section == key:
                    case = _cases.get(test, test.split("::")[-1])
                    lines.append(f"| {_cell(case)} | {_cell(message)} | `{test}` |")
        lines.append("")
    ERRORS_DOC.write_text("\n".join(lines))


def _complete_files(config: pytest.Config) -> set[str]:
    """Test files this session collected whole (not only the tests named `file::test`)."""
    root = config.rootpath
    partial = {
        str(Path(arg.split("::")[0]).resolve().relative_to(root))
        for arg in config.args
        if "::" in arg
    }
    return {test.split("::")[0] for test in _cases} - partial


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    committed = _read_errors_doc()
    complete = _complete_files(session.config)
    # Rows stay unless their test passed without recording, or is gone from a file collected
    # whole; recorded rows replace them.
    current = {
        test: rows
        for test, rows in committed.items()
        if (test in _cases and test not in _passed)
        or (test not in _cases and test.split("::")[0] not in complete)
    }
    current |= _recorded
    if os.environ.get("TFT_ERRORS_DOC") == "write":
        _write_errors_doc(current, list(_cases))
        return
    stale = sorted(t for t in set(current) | set(committed) if current.get(t) != committed.get(t))
    if stale and exitstatus == pytest.ExitCode.OK:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_line(
                f"docs/errors.md is out of date for {len(stale)} test(s), e.g. {stale[0]}: "
                "run `make docs-errors` and commit it.",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
