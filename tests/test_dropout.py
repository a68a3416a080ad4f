"""dropout / FastDropout: F.dropout's distribution from 16 random bits per element."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tft_sagemaker.speedups.dropout import FastDropout, dropout, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_distribution(p: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(1_000_000) + 0.5
    out = dropout(x, p)
    dropped = out == 0
    # the kept values are x / (1 - p), p rounded to 16 bits
    p16 = round(p * 65536) / 65536
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - p16))
    sigma = math.sqrt(p * (1 - p) / x.numel())
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.01  # unbiased


def test_masks_are_independent_of_position() -> None:
    """Neighbouring elements come from one 64-bit draw: they must still drop independently."""
    torch.manual_seed(0)
    kept = dropout(torch.ones(400_000), 0.5) > 0
    pairs = kept.view(-1, 4).float()
    for i in range(4):
        for j in range(i + 1, 4):
            both = (pairs[:, i] * pairs[:, j]).mean().item()
            assert abs(both - 0.25) < 0.005


def test_gradient_is_the_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 30, 16, requires_grad=True)
    out = dropout(x, 0.2)
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() / (1 - round(0.2 * 65536) / 65536))


def test_seeded_runs_repeat_and_eval_is_identity() -> None:
    x = torch.randn(1000)
    torch.manual_seed(3)
    first = dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3), first)
    assert torch.equal(dropout(x, 0.3, training=False), x)
    assert torch.equal(dropout(x, 0.0), F.dropout(x, 0.0))
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_module_swap() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.2)))
    model.add_module("inplace", nn.Dropout(0.1, inplace=True))
    state = model.state_dict()
    assert use_fast_dropout(model) == 3
    assert all(type(m) is FastDropout for m in model.modules() if isinstance(m, nn.Dropout))
    assert model.state_dict().keys() == state.keys()
    model.eval()
    x = torch.randn(8, 4)
    assert torch.equal(model[1](x), x)
    model.train()
    y = torch.ones(10_000)
    assert 0.05 < (model.inplace(y.clone()) == 0).float().mean() < 0.15  # torch's in-place path
