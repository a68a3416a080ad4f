"""LeanFusedAdam: torch's fused Adam/AdamW update, bit for bit, without per-step bookkeeping."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from tft_sagemaker.gradients import FlatGradients
from tft_sagemaker.optimizer import LeanFusedAdam


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)
    )


def batch(step: int) -> torch.Tensor:
    return torch.randn(32, 5, generator=torch.Generator().manual_seed(step))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range, flat: bool) -> None:
    grads = None
    for step in steps:
        if flat and grads is None and all(p.grad is not None for p in model.parameters()):
            grads = FlatGradients.attach(model.parameters())
        if grads is not None:
            grads.zero_()
        else:
            optimizer.zero_grad()
        model(batch(step)).pow(2).mean().backward()
        optimizer.step()


def assert_identical(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("flat", [True, False], ids=["flat-grads", "plain-grads"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"weight_decay": 0.01}, {"weight_decay": 0.01, "decoupled_weight_decay": True}],
    ids=["adam", "adam-l2", "adamw"],
)
def test_same_update_as_torch(kwargs: dict, flat: bool) -> None:
    reference, lean = net(), net()
    expected = torch.optim.Adam(reference.parameters(), lr=0.01, fused=True, **kwargs)
    optimizer = LeanFusedAdam(lean.parameters(), lr=0.01, fused=True, **kwargs)
    train(reference, expected, range(6), flat=False)
    train(lean, optimizer, range(6), flat=flat)
    assert optimizer._lean is not None  # the lean path ran
    assert_identical(lean, reference)
    for p, q in zip(lean.parameters(), reference.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[p][key], expected.state[q][key])


def test_first_step_and_hooks_run_once() -> None:
    model = net()
    optimizer = LeanFusedAdam(model.parameters(), lr=0.01, fused=True)
    calls = []
    optimizer.register_step_post_hook(lambda *_: calls.append(1))
    torch.optim.Adam(nn.Linear(1, 1).parameters())  # torch now wraps Adam.step as well
    train(model, optimizer, range(3), flat=True)
    assert len(calls) == 3


def test_closure_loss_is_returned() -> None:
    model = net()
    optimizer = LeanFusedAdam(model.parameters(), lr=0.01, fused=True)
    train(model, optimizer, range(2), flat=False)

    seen = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model(batch(9)).pow(2).mean()
        loss.backward()
        seen.append(loss)
        return loss

    assert optimizer.step(closure) is seen[0]
    assert optimizer._lean is not None


def test_parameter_without_gradient_falls_back() -> None:
    """torch skips a parameter without a gradient; the lean path must not update it."""
    reference, lean = net(), net()
    expected = torch.optim.Adam(reference.parameters(), lr=0.01, fused=True)
    optimizer = LeanFusedAdam(lean.parameters(), lr=0.01, fused=True)
    for model, opt in ((reference, expected), (lean, optimizer)):
        train(model, opt, range(3), flat=False)
        opt.zero_grad()
        # only the last layer gets gradients
        model[4](torch.randn(4, 16, generator=torch.Generator().manual_seed(0))).sum().backward()
        opt.step()
    assert optimizer._lean is None
    assert_identical(lean, reference)


def test_grad_scaler_and_unsupported_settings_fall_back() -> None:
    model = net()
    optimizer = LeanFusedAdam(model.parameters(), lr=0.01, fused=True, amsgrad=True)
    train(model, optimizer, range(3), flat=False)
    assert optimizer._lean is None
    optimizer = LeanFusedAdam(model.parameters(), lr=0.01, fused=True)
    train(model, optimizer, range(2), flat=False)
    optimizer.grad_scale = torch.ones(())
    assert not optimizer._lean_ready()


def test_state_dict_is_plain_adam() -> None:
    """Saved mid-run, loaded into torch's Adam or back into LeanFusedAdam: the same run."""
    lean = net()
    optimizer = LeanFusedAdam(lean.parameters(), lr=0.01, fused=True)
    train(lean, optimizer, range(3), flat=True)
    buffer = io.BytesIO()
    torch.save({"model": lean.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(lean, optimizer, range(3, 6), flat=True)

    for cls in (torch.optim.Adam, LeanFusedAdam):
        buffer.seek(0)
        saved = torch.load(buffer)
        steps = [s["step"] for s in saved["optimizer"]["state"].values()]
        assert len({id(step) for step in steps}) == len(steps)  # not one shared counter
        resumed = net()
        resumed.load_state_dict(saved["model"])
        restored = cls(resumed.parameters(), lr=0.01, fused=True)
        restored.load_state_dict(saved["optimizer"])
        train(resumed, restored, range(3, 6), flat=True)
        assert_identical(resumed, lean)


def test_deepcopy_keeps_working() -> None:
    model = net()
    optimizer = LeanFusedAdam(model.parameters(), lr=0.01, fused=True)
    train(model, optimizer, range(3), flat=False)
    clone = copy.deepcopy(model)
    assert_identical(clone, model)
