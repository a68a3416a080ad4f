"""Dropout with a cheaper random mask on CPUs.

On CPUs `F.dropout` draws its mask with `bernoulli_`, one generator call per element: in a TFT
training step (18 dropouts) that op alone took about 5% of the profiled time.
`dropout` draws 64 random bits per 4 elements instead and keeps an element when its 16 bits
(as a signed int16) are at or above a threshold. The drop probability is p rounded to a
multiple of 2^-16 (|change| <= 7.6e-6), and kept elements are scaled by 1 / (1 - that p), so
the output's expectation is the input, as with `F.dropout`. Random draws come from torch's
default generator: seeded runs repeat. Other devices, and p outside (2^-17, 1 - 2^-17), use
`F.dropout`.

`use_fast_dropout(model)` swaps every plain `nn.Dropout` of a model to `FastDropout`: no
parameters, nothing in the state_dict changes. `dropout_guard` checks the torch version this was
tested with and draws a mask: the rate and the scaling must be the ones above.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .guards import guard

__all__ = ["FastDropout", "dropout", "dropout_guard", "use_fast_dropout"]

_LEVELS = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the mask drawn 16 bits per element on CPUs."""
    threshold = round(p * _LEVELS)
    if not training or x.device.type != "cpu" or not 0 < threshold < _LEVELS:
        return F.dropout(x, p, training)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    draws = bits.view(torch.int16)[:n].view(x.shape)  # uniform over the 2^16 int16 values
    mask = (draws >= threshold - _LEVELS // 2).to(x.dtype).mul_(_LEVELS / (_LEVELS - threshold))
    return x * mask


class FastDropout(nn.Dropout):
    """An `nn.Dropout` whose CPU training forward is `dropout` above."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(input)
        return dropout(input, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every plain `nn.Dropout` of `model` in place; returns how many."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            swapped += 1
    return swapped


def _dropout_error(module: nn.Module, name: str) -> str | None:
    """Why `module` is not dropout at rate 0.25 (within 6 standard deviations over 2^18
    elements) with kept elements scaled by 4/3 and eval mode passing through, or None."""
    x = torch.ones(1 << 18)
    module.train()
    out = module(x)
    rate = (out == 0).double().mean().item()
    if abs(rate - 0.25) > 6 * math.sqrt(0.25 * 0.75 / x.numel()):
        return f"{name} drops {rate:.4f} for p 0.25"
    if not torch.equal(out[out != 0], torch.full_like(out[out != 0], 4 / 3)):
        return f"{name} does not scale kept elements by 1 / (1 - p)"
    module.eval()
    if not torch.equal(module(x), x):
        return f"{name} does not pass the input through in eval mode"
    return None


def _probe() -> str | None:
    """The library's nn.Dropout and its swapped FastDropout: the same rate and scaling."""
    torch.manual_seed(0)  # (guards.probe restores torch's random state)
    library, swapped = nn.Dropout(0.25), nn.Dropout(0.25)
    use_fast_dropout(swapped)
    if type(swapped) is not FastDropout or swapped.p != 0.25 or swapped.inplace:
        return "nn.Dropout no longer swaps to FastDropout"
    return _dropout_error(library, "nn.Dropout") or _dropout_error(swapped, "FastDropout")


@functools.cache
def dropout_guard() -> str | None:
    return guard("torch", check=_probe)
