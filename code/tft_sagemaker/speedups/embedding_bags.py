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
input). `embedding_bags_guard` checks the versions this was tested with and compares both forms,
outputs and weight gradients, on a library-built bag in float64.
"""

from __future__ import annotations

import functools

import torch
from pytorch_forecasting.models.nn.embeddings import TimeDistributedEmbeddingBag
from torch import nn

from .guards import guard

__all__ = ["CountMatmulEmbeddingBag", "embedding_bags_guard", "use_count_matmul"]


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


def _probe() -> str | None:
    """A summing bag as pytorch-forecasting builds one, library and count form on the same
    indices (over time and not): equal sums and weight gradients in float64."""
    generator = torch.Generator().manual_seed(0)
    library = TimeDistributedEmbeddingBag(7, 3, mode="sum", batch_first=True).double()
    swapped = TimeDistributedEmbeddingBag(7, 3, mode="sum", batch_first=True).double()
    swapped.load_state_dict(library.state_dict())
    if use_count_matmul(swapped) != 1:
        return "pytorch-forecasting's summing embedding bag is no longer eligible"
    for shape in ((4, 5, 6), (4, 6)):
        x = torch.randint(0, 7, shape, generator=generator)
        expected, actual = library(x), swapped(x)
        expected.square().sum().backward()
        actual.square().sum().backward()
        if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=1e-12):
            return "count sums differ from the library's embedding bag"
        if not torch.allclose(swapped.weight.grad, library.weight.grad, rtol=1e-12):
            return "count gradients differ from the library's embedding bag"
    return None


@functools.cache
def embedding_bags_guard() -> str | None:
    return guard("torch", "pytorch-forecasting", check=_probe)
