"""The weight average (`ema_decay`) updated as one lerp over one flat tensor.

Lightning's `WeightAveraging` callback keeps an `AveragedModel`, whose update walks the ~400
parameter tensors in Python and lerps them one by one on CPUs (`_foreach_lerp_` has no CPU
kernel). `FlatEmaModel` keeps the averaged parameters as views of one flat tensor and updates
them with one `cat` of the live parameters and one `lerp_`: the same arithmetic as
`get_ema_multi_avg_fn`, element for element; the state_dict, the callback, its checkpoints and
its swaps for validation are Lightning's.

`FlatWeightAverage`, a callback the speed-up layer adds after the job's
`ExponentialMovingAverage`, adopts that callback's model when `setup` has built it. This reaches
into Lightning (its private `_average_model`) and swaps the class of torch's `AveragedModel`
instance, so `weight_average_guard` checks the versions it was tested with, that Lightning's
callback still builds its model that way, and that the flat update equals torch's bit for bit.
"""

from __future__ import annotations

import functools
import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .gradients import flat_views
from .guards import guard

log = logging.getLogger(__name__)


class FlatEmaModel(AveragedModel):
    """An `AveragedModel` whose parameters are views of one flat tensor (see module docstring).
    Not constructed: `adopt` turns an existing one into it."""

    flat: torch.Tensor
    decay: float
    _shapes: list[torch.Size]
    _live: tuple[nn.Module, list[torch.Tensor]] | None = None

    @staticmethod
    def unsupported(module: nn.Module) -> str | None:
        """Why an average of `module` cannot be flat, or None."""
        params = list(module.parameters())
        if not params:
            return "the model has no parameters"
        if len({(p.dtype, p.device) for p in params}) != 1 or not params[0].is_floating_point():
            return "parameters of several dtypes or devices"
        if any(True for _ in module.buffers()):
            return "the model has buffers"  # averaged or copied by torch's update, not here
        return None

    @classmethod
    def adopt(cls, average: AveragedModel, decay: float) -> str | None:
        """Make `average` one, in place; None when done, else why not (torch's update stays)."""
        reason = cls.unsupported(average.module)
        if reason:
            return reason
        params = list(average.module.parameters())
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        for param, view in zip(params, flat_views(params, flat), strict=True):
            param.data = view
        average.__class__ = cls
        average.flat, average.decay = flat, decay
        average._shapes = [p.shape for p in params]
        return None

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        live = self._live_parameters(model)
        if live is None:
            super().update_parameters(model)
            return
        current = torch.cat([p.reshape(-1) for p in live]).to(self.flat.device)
        if self.n_averaged == 0:
            self.flat.copy_(current)
        else:
            self.flat.lerp_(current, 1 - self.decay)
        self.n_averaged += 1

    def _live_parameters(self, model: nn.Module) -> list[torch.Tensor] | None:
        """The parameters of `model` (walked once per model), or None when their shapes are not
        the averaged ones, in order."""
        if self._live is None or self._live[0] is not model:
            live = list(model.parameters())
            if [p.shape for p in live] != self._shapes:
                return None
            self._live = (model, live)
        return self._live[1]


class FlatWeightAverage(Callback):
    """Adopts the averaged model of `average` (a WeightAveraging with an exponential `decay`)
    once its `setup` has built it."""

    def __init__(self, average: WeightAveraging, decay: float) -> None:
        self.average, self.decay = average, decay

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        model = getattr(self.average, "_average_model", None)
        if stage != "fit" or type(model) is FlatEmaModel:
            return
        reason = (
            FlatEmaModel.adopt(model, self.decay)
            if isinstance(model, AveragedModel)
            else "Lightning's WeightAveraging keeps no _average_model"
        )
        if reason:
            log.info("flat_weight_average fell back: %s", reason)


def _probe() -> str | None:
    """Lightning's WeightAveraging builds its averaged model in `setup`; adopted, it updates
    as torch's AveragedModel does with get_ema_multi_avg_fn, bit for bit."""
    torch.manual_seed(0)
    model = BoringModel()
    average = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.9))
    average.setup(None, model, "fit")  # type: ignore[arg-type]  (unused by setup)
    FlatWeightAverage(average, 0.9).setup(None, model, "fit")  # type: ignore[arg-type]
    flat = getattr(average, "_average_model", None)
    if type(flat) is not FlatEmaModel:
        return "Lightning's WeightAveraging keeps no adoptable _average_model"
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for _ in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape))
        flat.update_parameters(model)
        reference.update_parameters(model)
    pairs = zip(flat.module.parameters(), reference.module.parameters(), strict=True)
    if not all(torch.equal(p, q) for p, q in pairs):
        return "the flat average differs from torch's"
    return None


@functools.cache
def weight_average_guard() -> str | None:
    return guard("torch", "lightning", check=_probe)
