"""FlatGradients: one buffer behind every `.grad`; zeroing and clipping as torch does them."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import warnings

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from conftest import CODE_DIR
from torch import nn
from torch.utils.data import DataLoader

from tft_sagemaker.config import build_config
from tft_sagemaker.dataset import build_training_dataset
from tft_sagemaker.model import build_model
from tft_sagemaker.preparation import prepare_training_frame
from tft_sagemaker.presets import PRESET_VALUES
from tft_sagemaker.recipe import settle
from tft_sagemaker.speedups.gradients import FlatGradients


class SmallNet(nn.Sequential):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.unused = nn.Linear(2, 2)  # trainable, never gets a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[2](self[1](self[0](x)))


def small_net() -> SmallNet:
    return SmallNet()


def backward(net: nn.Module, scale: float = 1.0) -> None:
    torch.manual_seed(1)
    (net(torch.randn(16, 4)).pow(2).sum() * scale).backward()


def test_attach_makes_views_of_one_buffer() -> None:
    net = small_net()
    assert FlatGradients.attach(net.parameters()) is None  # no gradient yet
    backward(net)
    flat = FlatGradients.attach(net.parameters())
    assert flat is not None and flat.intact()
    used = [p for p in net.parameters() if p.grad is not None]
    assert len(flat.parameters) == len(used) == 4 and flat.buffer.numel() == 4 * 8 + 8 + 8 * 3 + 3
    assert all(p.grad.untyped_storage().data_ptr() == flat.buffer.data_ptr() for p in used)
    assert net.unused.weight.grad is None and flat.buffer.abs().sum() == 0


def test_backward_accumulates_into_the_views_and_zero_clears_them() -> None:
    net, reference = small_net(), small_net()
    backward(net)
    flat = FlatGradients.attach(net.parameters())
    backward(net)
    backward(reference)
    assert flat.intact()
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    flat.zero_()
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())


@pytest.mark.parametrize("scale", [1.0, 1e-4])  # clipped, and below the norm: untouched
def test_clip_equals_torch(scale: float) -> None:
    net = small_net()
    backward(net)
    flat = FlatGradients.attach(net.parameters())
    backward(net, scale)
    reference = copy.deepcopy(net)
    for p, q in zip(reference.parameters(), net.parameters(), strict=True):
        p.grad = None if q.grad is None else q.grad.clone()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    norm = flat.clip_norm_(0.5)
    torch.testing.assert_close(norm, expected)
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad)
    clipped = torch.linalg.vector_norm(flat.buffer).item()
    assert clipped == pytest.approx(min(expected.item(), 0.5), rel=1e-5)


def test_replaced_gradients_are_noticed() -> None:
    net = small_net()
    backward(net)
    flat = FlatGradients.attach(net.parameters())
    net[0].weight.grad = None
    assert not flat.intact()
    flat = FlatGradients.attach(net.parameters())
    assert flat is not None and flat.intact()
    net.unused(torch.randn(1, 2)).sum().backward()  # a parameter outside the buffer gets one
    assert not flat.intact()


def test_mixed_dtypes_are_not_flattened() -> None:
    net = small_net()
    net[2].double()
    for parameter in net.parameters():
        parameter.grad = torch.zeros_like(parameter)
    assert FlatGradients.attach(net.parameters()) is None


# ---------------------------------------------------------------------------------------------
# In the job's model: the same training as Lightning's own zeroing and clipping
# ---------------------------------------------------------------------------------------------
def fit_steps(panel: pd.DataFrame, flat: bool) -> nn.Module:
    config = build_config({"preset": "synthetic", "dropout": "0"}, {}, PRESET_VALUES)
    frame = prepare_training_frame(panel, config.data)[0]
    dataset = build_training_dataset(frame, config.data)
    torch.manual_seed(0)
    model = build_model(dataset, settle(config, len(dataset))).double()
    model.flat_gradients_on = flat  # what the speed-up layer switches on
    loader = dataset.to_dataloader(train=False, batch_size=32, num_workers=0)
    batches = [
        (
            {k: v.double() if v.is_floating_point() else v for k, v in x.items()},
            (y[0].double(), y[1]),
        )
        for x, y in list(loader)[:6]
    ]
    trainer = pl.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        accelerator="cpu",
        gradient_clip_val=0.1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    assert (model._flat_gradients is not None) == flat
    return model


def test_training_matches_lightnings_path(small_panel: pd.DataFrame) -> None:
    flat = fit_steps(small_panel, True)
    plain = fit_steps(small_panel, False)
    assert flat._flat_gradients.intact()
    for (name, p), (_, q) in zip(flat.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------------------------
# Under DDP (two real gloo processes): the views survive and hold the averaged gradients
# ---------------------------------------------------------------------------------------------
DDP_WORKER = """
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from tft_sagemaker.speedups.gradients import FlatGradients

rank, port = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group(
    "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
    timeout=timedelta(seconds=60),
)
torch.manual_seed(0)  # the same initial weights on both ranks
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
ddp = nn.parallel.DistributedDataParallel(model)
flat = None
for step in range(3):
    flat = flat or FlatGradients.attach(model.parameters())
    if flat is not None:
        flat.zero_()
    torch.manual_seed(10 * rank + step)  # each rank its own batch
    ddp(torch.randn(8, 4)).pow(2).sum().backward()
assert flat is not None and flat.intact()
total = flat.buffer.clone()
dist.all_reduce(total)
torch.testing.assert_close(flat.buffer, total / 2)  # already the average
dist.barrier()  # neither rank tears its connections down while the other still uses them
dist.destroy_process_group()
print("ok", rank, flush=True)
os._exit(0)  # gloo's threads can abort the interpreter's own teardown
"""


@pytest.mark.slow  # two processes
def test_views_hold_ddp_reduced_gradients() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(CODE_DIR)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DDP_WORKER, str(rank), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0 and f"ok {rank}" in output, output[-2000:]
