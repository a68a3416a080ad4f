"""The image's framework module (framework.py) under the real toolkit's `train`, around a
stand-in for the DLC's framework module (TFT_FRAMEWORK_MODULE): a stop to the toolkit's own
process reaches training, and the toolkit exits non-zero with training's cause.

The stand-in sends the stop itself, before it starts its training process, so the moment is
exact on an idle and on a loaded machine. tests/test_stops.py stops real jobs through `train`
without a DLC module (the toolkit's own launch).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import CODE_DIR, VENV_BIN

from tft_sagemaker.sagemaker.framework import INNER_ENV, SELF

pytestmark = pytest.mark.slow  # each test runs the toolkit and a training process

# The DLC's module, as far as the framework module sees it: `main` runs the steps in
# FAKE_STEPS. `stop` sends the toolkit's process (this one) SIGTERM; `train` runs a training
# process (train.py) that waits for a stop, writes its cause and exits 143, and fails as the
# toolkit's launch does when it exits non-zero; `done` runs one that exits 0, `fail` one that
# exits 2 without a cause.
FAKE_DLC = """\
import os, signal, subprocess, sys
from pathlib import Path
from sagemaker_training import errors

def main():
    output = Path(os.environ["SAGEMAKER_BASE_DIR"]) / "output"
    for step in os.environ["FAKE_STEPS"].split(","):
        if step == "stop":
            signal.raise_signal(signal.SIGTERM)  # handled before raise_signal returns
            continue
        script = Path(__file__).with_name("train.py")
        script.write_text(
            "import signal, sys\\n"
            "if sys.argv[1] != 'train': sys.exit(0 if sys.argv[1] == 'done' else 2)\\n"
            "signal.sigwait([signal.SIGTERM])\\n"
            f"open({str(output / 'failure')!r}, 'w').write('Stopped by SIGTERM during training')\\n"
            "sys.exit(143)\\n"
        )
        command = [sys.executable, str(script), step]
        # Blocked from the start (the mask outlives exec): the stop waits for its sigwait.
        block = lambda: signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        code = subprocess.run(command, preexec_fn=block, timeout=60).returncode
        if code:
            raise errors.ExecuteUserScriptError(cmd=" ".join(command), return_code=code)
"""


def run_toolkit(
    tmp_path: Path, steps: str, pending: signal.Signals | None = None
) -> subprocess.CompletedProcess[str]:
    """The toolkit's `train` through the framework module and the stand-in running `steps`.
    `pending`: a stop sent as soon as `train` runs, held back by the signal mask it was started
    with until the framework module takes the stops (whatever the machine's load)."""
    base = tmp_path / "opt_ml"
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({}))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    (config / "inputdataconfig.json").write_text(json.dumps({}))
    (base / "model").mkdir()
    (base / "output" / "data").mkdir(parents=True)
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "fake_dlc.py").write_text(FAKE_DLC)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "TFT_"))}
    process = subprocess.Popen(
        [str(VENV_BIN / "train")],
        env=env
        | {
            "SAGEMAKER_BASE_DIR": str(base),
            "SM_STUDIO_LOCAL_MODE": "true",
            "SAGEMAKER_PROGRAM": "train.py",
            "PYTHONPATH": f"{CODE_DIR}{os.pathsep}{modules}",
            "SAGEMAKER_TRAINING_MODULE": SELF,
            INNER_ENV: "fake_dlc:main",
            "FAKE_STEPS": steps,
        },
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=None
        if pending is None
        else lambda: signal.pthread_sigmask(signal.SIG_BLOCK, [pending]),
    )
    if pending is not None:
        process.send_signal(pending)  # Popen returns once `train` is exec'd: it is pending
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(autouse=True)
def _toolkit() -> None:
    if not (VENV_BIN / "train").is_file():
        pytest.skip("sagemaker-training is not installed")


def test_a_stop_before_training_starts_reaches_it_and_fails_the_toolkit(tmp_path: Path) -> None:
    process = run_toolkit(tmp_path, "stop,train")
    output = tmp_path / "opt_ml" / "output"
    assert process.returncode == 1, process.stderr
    assert (output / "failure").read_text() == "Stopped by SIGTERM during training"
    assert not (output / "success").exists()
    assert "Reporting training FAILURE" in process.stderr


def test_a_job_not_stopped_succeeds_through_the_dlc_module(tmp_path: Path) -> None:
    process = run_toolkit(tmp_path, "done")
    output = tmp_path / "opt_ml" / "output"
    assert process.returncode == 0, process.stderr
    assert (output / "success").exists() and not (output / "failure").exists()


def test_a_training_failure_stays_the_toolkits(tmp_path: Path) -> None:
    """Not stopped: the launch's error reaches the toolkit as it is (ExecuteUserScriptError)."""
    process = run_toolkit(tmp_path, "fail")
    output = tmp_path / "opt_ml" / "output"
    assert process.returncode == 1, process.stderr
    assert "ExecuteUserScriptError" in (output / "failure").read_text()


def test_a_stop_that_training_wrote_no_cause_for_still_has_one(tmp_path: Path) -> None:
    """Training failed without writing a cause (it had not got that far): the stop is it."""
    process = run_toolkit(tmp_path, "stop,fail")
    failure = (tmp_path / "opt_ml" / "output" / "failure").read_text()
    assert process.returncode == 1, process.stderr
    assert failure.startswith("Stopped by SIGTERM before the training processes wrote a cause")
    assert signal.Signals.SIGTERM.name in process.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_while_the_toolkit_starts_is_a_failure_with_a_cause(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A stop that came before the toolkit called the framework module (here: before it ran
    at all, pending) is handled from the module's import on: nothing is launched, and the
    toolkit fails with the cause. Left to the toolkit, a SIGINT inside its `train()` exits 0."""
    process = run_toolkit(tmp_path, "done", pending=signum)
    output = tmp_path / "opt_ml" / "output"
    assert process.returncode == 1, process.stderr
    assert (
        (output / "failure")
        .read_text()
        .startswith(f"Stopped by {signum.name} before the training processes wrote a cause")
    )
    assert not (output / "success").exists()
    assert not (tmp_path / "modules" / "train.py").exists()  # the stand-in launched nothing


@pytest.mark.parametrize("module", [SELF, ""])
def test_the_toolkits_import_of_the_module_takes_the_stops(module: str) -> None:
    """Imported as the toolkit's framework module, it handles the stops from its import on,
    not from `main`: the DLC's module, which `main` imports first, may take a while. Imported
    elsewhere, it leaves the handlers alone."""
    probe = (
        "import signal\n"
        "from tft_sagemaker.sagemaker import framework\n"
        "handlers = {signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}\n"
        "print(all(getattr(h, '__self__', None) is framework.FORWARDER for h in handlers))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "TFT_"))}
    took = subprocess.run(
        [str(VENV_BIN / "python"), "-c", probe],
        env=env | {"PYTHONPATH": str(CODE_DIR), "SAGEMAKER_TRAINING_MODULE": module},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert took == str(module == SELF)
