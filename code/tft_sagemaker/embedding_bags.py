"""Summing embedding bags as a count matrix times the table, on CPUs.

pytorch-forecasting embeds a categorical group (Stallion's `special_days`: 12 flags per time
step) with a summing `EmbeddingBag`. On CPUs its backward sorts every index of the batch
(46 k for 128 windows of 30 steps) and takes milliseconds per step. The same sums are
`counts @ weight`, with counts[bag, row] = how often `row` occurs in the bag: one scatter_add
and one small matmul, whose backward is one more matmul (tens of microseconds).

`use_count_matmul(model)` swaps the class of each eligible bag (mode "sum"; no padding index,
max_norm, frequency scaling or sparse gradients) to `CountMatmulEmbeddingBag`: the same
parameters and state_dict, the same sums up to float rounding. Other devices keep the library's
kernel, as does any call the count form does not cover (offsets or per-sample weights, 1-D
input).
"""

from __future__ import annotations

import torch
from pytorch_forecasting.models.nn.embeddings import TimeDistributedEmbeddingBag
from torch import nn

__all__ = ["CountMatmulEmbeddingBag", "use_count_matmul"]


class CountMatmulEmbeddingBag(TimeDistributedEmbeddingBag):
    """A `TimeDistributedEmbeddingBag` that sums by `counts @ weight` on CPUs."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() < 2 or x.dtype != torch.long or args or kwargs:
            return super().forward(x, *args, **kwargs)
        bags = x.reshape(-1, x.shape[-1])
        counts = torch.zeros(
            bags.shape[0], self.num_embeddings, dtype=self.weight.dtype, device=x.device
        )
        ones = torch.ones((), dtype=self.weight.dtype, device=x.device).expand(bags.shape)
        counts.scatter_add_(1, bags, ones)
        return (counts @ self.weight).reshape(*x.shape[:-1], -1)


def _eligible(module: nn.Module) -> bool:
    return (
        type(module) is TimeDistributedEmbeddingBag
        and module.mode == "sum"
        and module.padding_idx is None
        and module.max_norm is None
        and not module.scale_grad_by_freq
        and not module.sparse
    )


def use_count_matmul(model: nn.Module) -> int:
    """Swap every eligible embedding bag of `model` in place; returns how many."""
    swapped = 0
    for module in model.modules():
        if _eligible(module):
            module.__class__ = CountMatmulEmbeddingBag
            swapped += 1
    return swapped
