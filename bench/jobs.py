"""What the benchmarks share: the machine they ran on, and the real training job run as a process.

`run_training_job` runs code/train.py as SageMaker's toolkit would (one process, a fresh
/opt/ml-shaped directory, every hyperparameter a `--key value` pair), its log in job.log, and
returns the metrics.json the job wrote.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def train_channel(base: Path) -> Path:
    """A fresh /opt/ml-shaped directory at `base`; returns its train channel to fill."""
    train = base / "input" / "data" / "train"
    train.mkdir(parents=True)
    (base / "model").mkdir()
    (base / "output" / "data").mkdir(parents=True)
    return train


def run_training_job(
    base: Path,
    hyperparameters: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    watch: Callable[[int], AbstractContextManager[Any]] | None = None,
) -> dict[str, Any]:
    """The training job on `base` (from `train_channel`); its metrics.json. Its output goes to
    `base/job.log`; `watch(pid)`, if given, is entered while the job runs (a memory sampler).
    A failed job ends the benchmark with its cause, after the tail of its log."""
    args = [a for key, value in sorted(hyperparameters.items()) for a in (f"--{key}", value)]
    log = base / "job.log"
    with log.open("w") as output:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "code" / "train.py"), *args],
            env={
                **os.environ,
                "SAGEMAKER_BASE_DIR": str(base),
                "PYTHONPATH": str(ROOT / "code"),
                **(env or {}),
            },
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        with watch(proc.pid) if watch else nullcontext():
            proc.wait()
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-6000:])
        raise SystemExit(f"{base.name} failed: {(base / 'output' / 'failure').read_text()}")
    return json.loads((base / "model" / "metrics.json").read_text())
