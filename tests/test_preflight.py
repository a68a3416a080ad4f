"""What the training toolkit reads before the job's code runs, checked first by the image's
supervisor and by local_test/train_local.sh (sagemaker/preflight.py): each fault ends with a
one-line cause in output/failure and exit code 2, and the toolkit is never started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    CODE_DIR,
    ROOT,
    SYNTHETIC_SHORT,
    TINY,
    VENV_BIN,
    SageMakerDir,
    record_error,
)

from tft_sagemaker.sagemaker.preflight import HYPERPARAMETER_BYTES, MAX_ARG_STRLEN

HP = {**SYNTHETIC_SHORT, **TINY}
TRAILING_COMMA = '{\n  "preset": "synthetic",\n  "max_epochs": "1",\n}\n'


def supervise(job: SageMakerDir, **env: str) -> tuple[int, str]:
    """The image's command (supervisor → toolkit) on `job`; the toolkit is a stand-in that
    records that it ran: none of these cases may get that far."""
    ran = job.base / "toolkit-ran"
    toolkit = job.base / "bin" / "train"
    toolkit.parent.mkdir()
    toolkit.write_text(f"#!/bin/sh\ntouch {ran}\n")
    toolkit.chmod(0o755)
    process = subprocess.run(
        [sys.executable, "-m", "tft_sagemaker.sagemaker.supervise", str(toolkit)],
        env={**job.toolkit_env(), "PYTHONPATH": str(CODE_DIR), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not ran.exists(), "the toolkit was started"
    return process.returncode, process.stderr


def assert_refused(job: SageMakerDir, code: int, stderr: str, who: str = "supervise") -> str:
    assert code == 2, stderr
    line = job.failure_file.read_text().splitlines()[0]
    assert f"{who}: {line}" in stderr, stderr
    record_error("job", line)
    return line


def test_a_trailing_comma_in_hyperparameters_json(sm_job: SageMakerDir) -> None:
    """hyperparameters.json with a trailing comma, under the image's supervisor."""
    (sm_job.config_dir / "hyperparameters.json").write_text(TRAILING_COMMA)
    line = assert_refused(sm_job, *supervise(sm_job))
    assert line.startswith(f"{sm_job.config_dir}/hyperparameters.json is not valid JSON ("), line
    assert line.endswith(
        "line 4 column 1 (char 48); a trailing comma?): fix the file, for example with "
        "`python -m json.tool hyperparameters.json`."
    ), line


def test_a_resource_config_that_is_not_an_object(sm_job: SageMakerDir) -> None:
    """resourceconfig.json holding a list."""
    (sm_job.config_dir / "resourceconfig.json").write_text('["algo-1"]')
    line = assert_refused(sm_job, *supervise(sm_job))
    assert line == (
        f"{sm_job.config_dir}/resourceconfig.json holds a JSON list, not an object of names and "
        "values."
    )


def test_a_hyperparameter_of_390000_characters(sm_job: SageMakerDir) -> None:
    """A 390,000-character hyperparameter (report_series naming thousands of series)."""
    sm_job.write_hyperparameters({**HP, "report_series": "x" * 390_000})
    line = assert_refused(sm_job, *supervise(sm_job))
    assert line.startswith("The hyperparameters take 390,"), line
    assert (
        "bytes encoded (the longest, report_series, 390,000 characters): the training toolkit "
        f"passes them to the script in one command line and one environment variable, which "
        f"Linux limits to {MAX_ARG_STRLEN:,} bytes each ({HYPERPARAMETER_BYTES:,} left for them)."
    ) in line, line


def test_hyperparameters_just_under_the_limit_are_passed(sm_job: SageMakerDir) -> None:
    """The limit is not stricter than it must be: the largest hyperparameters it accepts reach
    the script through the real toolkit (a stand-in script that prints what it got)."""
    if not (VENV_BIN / "train").is_file():
        pytest.skip("sagemaker-training is not installed")
    encoded = len(json.dumps({"long": ""}, separators=(",", ":")))
    sm_job.write_hyperparameters({"long": "x" * (HYPERPARAMETER_BYTES - encoded)})
    (sm_job.base / "code").mkdir()
    (sm_job.base / "code" / "train.py").write_text(
        "import sys\nprint('argument characters', len(sys.argv[-1]))\n"
    )
    process = subprocess.run(
        [sys.executable, "-m", "tft_sagemaker.sagemaker.supervise", str(VENV_BIN / "train")],
        env={**sm_job.toolkit_env(), "PYTHONPATH": str(CODE_DIR)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = process.stdout + process.stderr
    assert process.returncode == 0, log[-3000:]
    assert f"argument characters {HYPERPARAMETER_BYTES - encoded}" in log, log[-3000:]


def test_a_misspelt_stop_phase_under_the_supervisor(sm_job: SageMakerDir) -> None:
    """TFT_STOP_AT=trainig@1 (a typo), under the image's supervisor."""
    line = assert_refused(sm_job, *supervise(sm_job, TFT_STOP_AT="trainig@1"))
    assert line.startswith("TFT_STOP_AT='trainig@1': no phase 'trainig'; PHASE[@EPOCH[.BATCH]]")


def test_a_misspelt_stop_phase_in_the_job(
    sm_job: SageMakerDir, tiny_panel: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TFT_STOP_AT=trainig@1 (a typo), the job started without the supervisor."""
    sm_job.write_data(tiny_panel)
    monkeypatch.setenv("TFT_STOP_AT", "trainig@1")
    result = sm_job.run(HP)
    assert result.code == 2, result.failure
    assert result.failure_line == (
        "TFT_STOP_AT='trainig@1': no phase 'trainig'; PHASE[@EPOCH[.BATCH]] with a phase of: "
        "data preparation, training, validation, epoch end, epoch start, evaluation, artifacts."
    )
    record_error("job", result.failure_line)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        pytest.param(
            "TFT_STOP_AT",
            "training@one",
            "TFT_STOP_AT='training@one': PHASE[@EPOCH[.BATCH]]",
            id="epoch",
        ),
        pytest.param(
            "TFT_STOP_AT",
            "training@.3",
            "TFT_STOP_AT='training@.3': PHASE[@EPOCH[.BATCH]]",
            id="batch-without-epoch",
        ),
        pytest.param(
            "TFT_STOP_SIGNAL",
            "SIGKILL",
            "TFT_STOP_SIGNAL='SIGKILL': SIGTERM or SIGINT.",
            id="signal",
        ),
        pytest.param(
            "TFT_STOP_TARGET",
            "parent",
            "TFT_STOP_TARGET='parent': one of self, supervisor, leader, group.",
            id="target",
        ),
    ],
)
def test_a_stop_rehearsal_that_does_not_parse(
    sm_job: SageMakerDir, variable: str, value: str, expected: str
) -> None:
    env = {"TFT_STOP_AT": "training@1", variable: value}
    line = assert_refused(sm_job, *supervise(sm_job, **env))
    assert line.startswith(expected), line


def test_train_local_sh_checks_hyperparameters_json_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hyperparameters.json with a trailing comma, run with local_test/train_local.sh (which
    edits that file with key=value overrides: it checks it first)."""
    template = SageMakerDir(tmp_path / "template", monkeypatch)
    template.channel("train")
    (template.config_dir / "hyperparameters.json").write_text(TRAILING_COMMA)
    run_dir = tmp_path / "run"
    process = subprocess.run(
        [
            "bash",
            str(ROOT / "local_test" / "train_local.sh"),
            "--template",
            str(template.base),
            "--run-dir",
            str(run_dir),
            "max_epochs=2",
        ],
        env=template.toolkit_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 2, process.stderr
    line = (run_dir / "output" / "failure").read_text().splitlines()[0]
    assert line.startswith(f"{run_dir}/input/config/hyperparameters.json is not valid JSON ("), line
    assert f"failure: {line}" in process.stderr, process.stderr
    assert "Traceback" not in process.stderr, process.stderr
    assert not (run_dir / "output" / "success").exists()
    record_error("job", line)
