"""The speed-up layer: each lever taken by the job's own model, and every lever falling back,
with its reason in the one log line, when the library parts it replaces have changed."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, SageMakerDir, process_state_kept, sagemaker_environment
from pytorch_forecasting import TimeSeriesDataSet
from pytorch_forecasting.models.nn.embeddings import TimeDistributedEmbeddingBag
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    AddNorm,
    VariableSelectionNetwork,
)
from torch import nn
from torch.utils.data import DataLoader

from tft_sagemaker.config import build_config
from tft_sagemaker.dataset import build_training_dataset
from tft_sagemaker.job import Job, build_job, fit, plan_for
from tft_sagemaker.loaders import make_loader
from tft_sagemaker.model import build_model
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import settle
from tft_sagemaker.sagemaker.paths import JobPaths
from tft_sagemaker.speedups import (
    CPU_LEVERS,
    GUARDS,
    LEVERS,
    Outcome,
    Report,
    allocator,
    engage,
    guards,
)
from tft_sagemaker.speedups.batches import WindowBatcher
from tft_sagemaker.speedups.dropout import FastDropout
from tft_sagemaker.speedups.embedding_bags import CountMatmulEmbeddingBag
from tft_sagemaker.speedups.variable_selection import FusedVariableSelectionNetwork

# The synthetic preset with what every lever applies to: a group of categoricals (embedded by
# a summing bag) and weight averaging.
HYPERPARAMETERS = {
    "preset": "synthetic",
    **TINY,
    "ema_decay": "0.9",
    "time_varying_known_categoricals": '["promo", "calendar"]',
    "variable_groups": '{"calendar": ["holiday", "month"]}',
}


def speedup_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if "speed-ups " in line]
    assert len(lines) == 1, lines
    return "speed-ups " + lines[0].split("speed-ups ", 1)[1]


STATES = "engaged|fell back|off"
LEVER = re.compile(
    rf"(?:(?P<state>{STATES}): |, )(?P<lever>{'|'.join(LEVERS)})(?: \((?P<note>.*?)\))?"
    rf"(?=, (?:{'|'.join(LEVERS)})\b|; (?:{STATES}): |$)"
)


def levers_in(line: str, state: str) -> dict[str, str]:
    """{lever: note} of one part (`engaged`, `fell back` or `off`) of the speed-ups line."""
    found, current = {}, None
    for match in LEVER.finditer(line):
        current = match["state"] or current
        if current == state:
            found[match["lever"]] = match["note"] or ""
    return found


# --------------------------------------------------------------------------------------------
# Every lever, taken by the job's own model (build_job on the synthetic preset, two steps)
# --------------------------------------------------------------------------------------------
class FlatSteps(pl.Callback):
    """Whether each training step's gradients were views of the flat buffer."""

    def __init__(self) -> None:
        self.steps: list[bool] = []

    def on_train_batch_end(self, trainer: pl.Trainer, model: Any, *args: Any) -> None:
        flat = model._flat_gradients
        self.steps.append(flat is not None and flat.intact())


@dataclass
class Built:
    job: Job
    line: str
    loader: DataLoader
    flat_steps: list[bool]

    @property
    def engaged(self) -> dict[str, str]:
        return levers_in(self.line, "engaged")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, small_panel: pd.DataFrame) -> Built:
    stdout = io.StringIO()
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        process_state_kept(),
        contextlib.redirect_stdout(stdout),
    ):
        layout = SageMakerDir(tmp_path_factory.mktemp("speedups") / "opt_ml", monkeypatch)
        layout.write_data(small_panel)
        sagemaker_environment(layout.base, monkeypatch)
        paths = JobPaths.from_env()
        config = build_config(HYPERPARAMETERS, None, PRESET_VALUES)
        job = build_job(config, plan_for(config, paths), paths)
        loader = make_loader(
            job.training, job.loaders, train=True, vectorised=job.speedups.vectorised["training"]
        )
        flat_steps = FlatSteps()
        job.trainer.callbacks.append(flat_steps)
        fit(job)
    return Built(job, speedup_line(stdout.getvalue()), loader, flat_steps.steps)


def test_every_lever_engages(built: Built) -> None:
    assert list(built.engaged) == list(CPU_LEVERS), built.line
    assert levers_in(built.line, "off") == {"static_shapes": "static_shapes=false"}


def test_fast_batches(built: Built) -> None:
    assert isinstance(built.loader.dataset.batcher, WindowBatcher)
    assert not isinstance(built.loader.dataset, TimeSeriesDataSet)


def test_fast_batches_with_an_encoder_normalizer(
    tmp_path: Path, small_panel: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drifting series get a target normalized per window (the recipe's `encoder`): the job's
    loaders still assemble their batches by gathers, fitting it window by window."""
    stdout = io.StringIO()
    with process_state_kept(), contextlib.redirect_stdout(stdout):
        layout = SageMakerDir(tmp_path / "opt_ml", monkeypatch)
        layout.write_data(small_panel)
        sagemaker_environment(layout.base, monkeypatch)
        paths = JobPaths.from_env()
        hyperparameters = {**HYPERPARAMETERS, "target_normalizer": "encoder"}
        config = build_config(hyperparameters, None, PRESET_VALUES)
        job = build_job(config, plan_for(config, paths), paths)
    assert all(job.speedups.vectorised.values()), speedup_line(stdout.getvalue())
    assert "fast_batches" in levers_in(speedup_line(stdout.getvalue()), "engaged")


def test_fused_variable_selection(built: Built) -> None:
    networks = [m for m in built.job.model.modules() if isinstance(m, VariableSelectionNetwork)]
    assert len(networks) == 3
    assert all(type(m) is FusedVariableSelectionNetwork for m in networks)
    assert built.engaged["fused_variable_selection"] == "3 networks"


def test_fast_embedding_bags(built: Built) -> None:
    assert type(built.job.model.input_embeddings["calendar"]) is CountMatmulEmbeddingBag
    assert built.engaged["fast_embedding_bags"] == "1 bag"


def test_fast_dropout(built: Built) -> None:
    dropouts = [m for m in built.job.model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is FastDropout for m in dropouts)
    assert built.engaged["fast_dropout"] == f"{len(dropouts)} modules"


def test_flat_gradients(built: Built) -> None:
    """The buffer is attached at the second step's zeroing, when the first backward pass has
    shown which parameters get a gradient (Lightning releases them before validation)."""
    model = built.job.model
    assert model.flat_gradients_on and built.flat_steps == [False, True]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(model._flat_gradients.parameters) == len(trainable) > 100


def test_allocator_thresholds(built: Built) -> None:
    assert "allocator_thresholds" in built.engaged


# --------------------------------------------------------------------------------------------
# Changed libraries: every lever falls back, the job trains as the library's path does
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_guards() -> Iterator[None]:
    """Guards run once per process: again, before and after the test."""
    for check in GUARDS.values():
        check.cache_clear()  # type: ignore[attr-defined]
    yield
    for check in GUARDS.values():
        check.cache_clear()  # type: ignore[attr-defined]


def change_the_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part a lever replaces, changed as a new release might change it; the library's
    own path still works."""
    # pytorch-forecasting: a window's reals come out scaled
    getitem = TimeSeriesDataSet.__getitem__

    def scaled_window(self: TimeSeriesDataSet, idx: int) -> Any:
        x, y = getitem(self, idx)
        return {**x, "x_cont": x["x_cont"] * 0.5}, y

    monkeypatch.setattr(TimeSeriesDataSet, "__getitem__", scaled_window)
    # pytorch-forecasting: the add & norm of a GRN weighs its skip connection
    add_norm = AddNorm.forward
    monkeypatch.setattr(AddNorm, "forward", lambda self, x, skip: add_norm(self, x, 0.5 * skip))
    # pytorch-forecasting: embedding bags average instead of summing
    bag = TimeDistributedEmbeddingBag.forward
    monkeypatch.setattr(
        TimeDistributedEmbeddingBag, "forward", lambda self, x: bag(self, x) / x.shape[-1]
    )

    # torch: dropout no longer rescales what it keeps
    monkeypatch.setattr(
        nn.Dropout, "forward", lambda self, x: F.dropout(x, self.p, self.training) * (1 - self.p)
    )

    # Lightning: the zeroing hook takes one more argument
    def optimizer_zero_grad(
        self: pl.LightningModule,
        epoch: int,
        batch_idx: int,
        optimizer: torch.optim.Optimizer,
        set_to_none: bool = True,
    ) -> None:
        optimizer.zero_grad(set_to_none=set_to_none)

    monkeypatch.setattr(pl.LightningModule, "optimizer_zero_grad", optimizer_zero_grad)

    # the C library is not glibc (only the allocator's view: other libraries load theirs)
    def no_glibc() -> None:
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(allocator, "load_libc", no_glibc)


@pytest.mark.usefixtures("fresh_guards")
def test_changed_libraries_fall_back(
    tmp_path: Path, small_panel: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    change_the_libraries(monkeypatch)
    runs: dict[str, dict[str, float]] = {}
    lines: dict[str, str] = {}
    switched_off = {lever: "false" for lever in LEVERS}
    for name, extra in {"levers on": {}, "levers off": switched_off}.items():
        layout = SageMakerDir(tmp_path / name.replace(" ", "_"), monkeypatch)
        layout.write_data(small_panel)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            result = layout.run({**HYPERPARAMETERS, **extra})
        assert result.code == 0, result.failure
        lines[name] = speedup_line(stdout.getvalue())
        metrics = json.loads((layout.model_dir / "metrics.json").read_text())
        runs[name] = {k: v for k, v in metrics.items() if not k.endswith("_s")}  # not timings

    line = lines["levers on"]
    assert levers_in(line, "engaged") == {}, line
    fell_back = levers_in(line, "fell back")
    assert list(fell_back) == list(CPU_LEVERS), line
    assert levers_in(line, "off") == {"static_shapes": "static_shapes=false"}
    assert fell_back["fast_batches"].startswith("batches differ from the library's")
    assert fell_back["fused_variable_selection"] == (
        "fused outputs differ from the library's VariableSelectionNetwork"
    )
    assert fell_back["fast_embedding_bags"] == "count sums differ from the library's embedding bag"
    assert fell_back["fast_dropout"] == "nn.Dropout does not scale kept elements by 1 / (1 - p)"
    assert fell_back["flat_gradients"].startswith("LightningModule.optimizer_zero_grad(")
    assert fell_back["allocator_thresholds"] == "the C library is not glibc"
    assert list(levers_in(lines["levers off"], "off")) == list(LEVERS)
    # Falling back is running the library's path: the same training, to the last bit.
    assert runs["levers on"] == runs["levers off"]


@pytest.mark.usefixtures("fresh_guards")
def test_untested_versions_fall_back(
    small_panel: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(guards.TESTED, "torch", ("1.0",))
    config = build_config({"preset": "synthetic"}, None, PRESET_VALUES)
    frame = prepare_training_frame(small_panel, config.data)[0]
    dataset = build_training_dataset(frame, config.data)
    model = build_model(dataset, settle(config, len(dataset)))
    report = engage(config.speedups, model)
    reason = f"torch {torch.__version__}: written and tested against 1.0"
    assert report.outcomes == {
        "fused_variable_selection": Outcome("fell back", reason),
        "fast_embedding_bags": Outcome("fell back", reason),
        "fast_dropout": Outcome("fell back", reason),
    }
    assert not any(isinstance(m, FusedVariableSelectionNetwork) for m in model.modules())


def test_report_line() -> None:
    report = Report(
        {
            "fast_batches": Outcome("engaged", "per window for validation: why"),
            "flat_gradients": Outcome("engaged"),
            "fast_embedding_bags": Outcome("off", "fast_embedding_bags=false"),
        }
    )
    assert report.line() == (
        "speed-ups engaged: fast_batches (per window for validation: why), flat_gradients; "
        "off: fast_embedding_bags (fast_embedding_bags=false)"
    )
    assert Report().line() == "speed-ups engaged: none"
    assert levers_in(report.line(), "engaged") == {
        "fast_batches": "per window for validation: why",
        "flat_gradients": "",
    }


# --------------------------------------------------------------------------------------------
# Allocator thresholds (allocator.py)
# --------------------------------------------------------------------------------------------
class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.gnu_get_libc_version = lambda: b"2.36"

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.mark.parametrize(
    ("env", "expected", "reason"),
    [
        ({}, [(-3, 256 << 20), (-1, 1 << 30)], None),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, [], "MALLOC_TRIM_THRESHOLD_ is set"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"}, [], "GLIBC_TUNABLES is set"),
        ({"LD_PRELOAD": "libjemalloc.so.2"}, [], "LD_PRELOAD is set"),
    ],
    ids=["default", "user-threshold", "tunables", "preloaded"],
)
def test_keep_freed_memory(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    expected: list[tuple[int, int]],
    reason: str | None,
) -> None:
    libc = FakeLibc()
    for name in allocator._USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(allocator, "load_libc", lambda: libc)
    assert allocator.keep_freed_memory() == reason
    assert libc.calls == expected


def test_keep_freed_memory_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    del libc.gnu_get_libc_version  # musl, for instance
    for name in allocator._USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "load_libc", lambda: libc)
    assert allocator.keep_freed_memory() == "the C library is not glibc"
    assert libc.calls == []
