"""The image's supervisor: the exit status and the cause it leaves after a stop (a signal to it)
whose moment decides the outcome.

A stop that reaches the job before it has finished is a failure with a cause; one that comes
once the toolkit has reported success changes nothing. SageMaker's local mode (docker compose
`--abort-on-container-exit`) stops every container as soon as the first one exits: on two
instances the leader, still exiting after its success, is stopped when the other host ends.
The stand-in for the toolkit signals the supervisor itself, before or after it reports, so the
moment is exact on an idle and on a loaded machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CODE_DIR

from tft_sagemaker.sagemaker.supervise import outcome

# A stand-in for the toolkit's `train` (the supervisor knows the toolkit by that name). Its steps,
# in the order given: `stop` sends the supervisor SIGTERM (pending there when os.kill returns),
# `train` runs a training process (train.py) that waits for a stop, writes its cause and exits
# 143, `success` reports success. It exits 0, as the toolkit does after a success (and on SIGINT),
# or 1 when its training process failed.
FAKE_TOOLKIT = """\
import os, signal, subprocess, sys
from pathlib import Path
output = Path(os.environ["SAGEMAKER_BASE_DIR"]) / "output"
for step in sys.argv[1:]:
    if step == "success":
        (output / "success").touch()
    elif step == "stop":
        os.kill(os.getppid(), signal.SIGTERM)
    elif step == "train":
        script = Path(__file__).with_name("train.py")
        script.write_text(
            "import signal, sys\\n"
            "signal.sigwait([signal.SIGTERM])\\n"
            f"open({str(output / 'failure')!r}, 'w').write('Stopped by SIGTERM during training')\\n"
            "sys.exit(143)\\n"
        )
        # Blocked from the start (the mask outlives exec): the stop waits for its sigwait.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        if subprocess.run([sys.executable, str(script)], timeout=30).returncode:
            sys.exit(1)
"""


def run_supervised(tmp_path: Path, *steps: str) -> subprocess.CompletedProcess[str]:
    base = tmp_path / "opt_ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps({}))
    (base / "output" / "data").mkdir(parents=True)
    toolkit = tmp_path / "bin" / "train"
    toolkit.parent.mkdir()
    toolkit.write_text(FAKE_TOOLKIT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "TFT_"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tft_sagemaker.sagemaker.supervise",
            sys.executable,
            str(toolkit),
            *steps,
        ],
        env=env | {"SAGEMAKER_BASE_DIR": str(base), "PYTHONPATH": str(CODE_DIR)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_stop_after_the_reported_success_leaves_the_success(tmp_path: Path) -> None:
    process = run_supervised(tmp_path, "success", "stop")
    output = tmp_path / "opt_ml" / "output"
    assert process.returncode == 0, process.stderr
    assert "SIGTERM came after the job had finished and reported success" in process.stderr
    assert (output / "success").exists() and not (output / "failure").exists()


def test_a_stop_while_training_starts_reaches_training_once_it_runs(tmp_path: Path) -> None:
    """The toolkit forwards nothing: without the supervisor's pursuit, training would wait on."""
    process = run_supervised(tmp_path, "stop", "train", "success")
    output = tmp_path / "opt_ml" / "output"
    assert process.returncode == 128 + signal.SIGTERM, process.stderr
    failure = (output / "failure").read_text()
    assert failure == "Stopped by SIGTERM during training", process.stderr
    assert not (output / "success").exists()


@pytest.mark.parametrize(
    ("stopping", "code", "files", "expected", "cause"),
    [
        ([], 0, ["success"], 0, None),
        ([signal.SIGTERM], 0, ["success"], 0, None),  # came after the success
        ([signal.SIGINT], 0, [], 130, "Stopped by SIGINT before"),  # the toolkit's 0 on SIGINT
        # The stop reached training: its cause stands, whatever the toolkit reported after it.
        ([signal.SIGTERM], 0, ["success", "failure"], 143, "Stopped by SIGTERM during training"),
        ([signal.SIGTERM], 1, ["success"], 143, "Stopped by SIGTERM before"),
        ([], 0, [], 1, "The training toolkit exited 0 without reporting success"),
        ([], 0, ["success", "failure"], 1, "Stopped by SIGTERM during training"),
        ([], 2, [], 2, None),
    ],
)
def test_the_exit_status_and_the_cause(
    tmp_path: Path,
    stopping: list[int],
    code: int,
    files: list[str],
    expected: int,
    cause: str | None,
) -> None:
    for name in files:  # a failure file as a stopped training process writes it
        (tmp_path / name).write_text("Stopped by SIGTERM during training of epoch 1; saved ...")
    assert outcome(code, stopping, tmp_path, toolkit=True) == expected
    failure = tmp_path / "failure"
    if cause is None:
        assert not failure.exists()
    else:
        assert failure.read_text().startswith(cause)


def test_a_stop_fails_a_command_that_is_not_the_toolkit(tmp_path: Path) -> None:
    """Without the toolkit there is no output/success to tell a finished job by."""
    (tmp_path / "success").touch()
    assert outcome(0, [signal.SIGTERM], tmp_path, toolkit=False) == 143
    assert (tmp_path / "failure").read_text().startswith("Stopped by SIGTERM before")
