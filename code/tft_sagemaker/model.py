"""TimeSeriesDataSet → Temporal Fusion Transformer (pytorch-forecasting's `from_dataset`)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.metrics import MAE, MAPE, RMSE, SMAPE, QuantileLoss
from torch import nn

from .config import ModelConfig
from .dropout import use_fast_dropout
from .embedding_bags import use_count_matmul
from .fused import fuse_variable_selection
from .gradients import FlatGradients
from .optimizer import LeanFusedAdam

log = logging.getLogger(__name__)


class TemporalFusionTransformerDDP(TemporalFusionTransformer):
    """pytorch-forecasting's TFT, with its logged metrics synchronised across ranks.

    pytorch-forecasting logs `val_loss` and its metrics without `sync_dist`, so under DDP each
    rank's EarlyStopping, ModelCheckpoint and ReduceLROnPlateau would act on its own shard of the
    validation set and the replicas would drift apart. Lightning's synchronised mean weights
    each rank by its batch sizes, so the logged values equal the full-set values (and the
    printed train_loss is the global one). Outside DDP, `sync_dist` does nothing.
    Checkpoints load into the plain `TemporalFusionTransformer` as well.
    """

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("sync_dist", True)
        super().log(name, value, *args, **kwargs)

    _flat_gradients: FlatGradients | None = None

    def configure_optimizers(self) -> Any:
        """pytorch-forecasting's optimizer and scheduler, with its Adam/AdamW built as
        LeanFusedAdam (optimizer.py): the same update, less per-step bookkeeping on CPUs.
        The hyperparameters still say "adam": checkpoints stay plain."""
        name = self.hparams.optimizer
        if self.optimizer != name or name not in ("adam", "adamw"):
            return super().configure_optimizers()
        self.optimizer = partial(LeanFusedAdam, decoupled_weight_decay=name == "adamw")
        try:
            return super().configure_optimizers()
        finally:
            self.optimizer = name

    def optimizer_zero_grad(
        self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer
    ) -> None:
        """Zero the gradients as one flat buffer (gradients.py), attached after the first
        backward pass has shown which parameters get one."""
        flat = self._flat_gradients
        if flat is None or not flat.intact():
            flat = self._flat_gradients = FlatGradients.attach(self.parameters())
        if flat is None:
            optimizer.zero_grad()
        else:
            flat.zero_()

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Norm clipping as one norm and one scale of the flat gradient buffer, else in a few
        multi-tensor ops (Lightning's default loops over the ~400 parameter tensors)."""
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            flat = self._flat_gradients
            if flat is not None and flat.intact():
                flat.clip_norm_(gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val, foreach=True)
        else:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )


def logging_metrics(dataset: TimeSeriesDataSet) -> nn.ModuleList:
    """pytorch-forecasting's metrics for the TFT (SMAPE, MAE, RMSE, MAPE), without MAPE when a
    training target is 0: it divides by the actual, so it reads in the millions on such data
    (Stallion: 34 million) and says nothing. SMAPE stays as the relative error."""
    metrics: list[nn.Module] = [SMAPE(), MAE(), RMSE()]
    zeros = int(sum(int((t == 0).sum()) for t in dataset.data["target"]))
    if zeros:
        log.info("val_MAPE not logged: %d training targets are 0 (MAPE divides by them)", zeros)
    else:
        metrics.append(MAPE())
    return nn.ModuleList(metrics)


def build_model(
    dataset: TimeSeriesDataSet, config: ModelConfig, fused: bool = True
) -> TemporalFusionTransformerDDP:
    """The TFT for `dataset`; `fused`: variable selection as batched ops (fused.py)."""
    # Fused Adam/AdamW/SGD updates all parameters in one kernel instead of several per tensor.
    model = TemporalFusionTransformerDDP.from_dataset(
        dataset,
        hidden_size=config.hidden_size,
        attention_head_size=config.attention_head_size,
        hidden_continuous_size=config.hidden_continuous_size,
        lstm_layers=config.lstm_layers,
        dropout=config.dropout,
        loss=QuantileLoss(quantiles=config.quantiles),
        logging_metrics=logging_metrics(dataset),
        learning_rate=config.learning_rate,
        optimizer=config.optimizer,
        optimizer_params={"fused": True},
        weight_decay=config.weight_decay,
        reduce_on_plateau_patience=config.reduce_on_plateau_patience,
        log_interval=-1,
    )
    use_fast_paths(model, fused)
    return model


def use_fast_paths(model: torch.nn.Module, fused: bool = True) -> None:
    """Swap in the equivalent faster modules, in place: count-matmul embedding bags
    (embedding_bags.py), cheaper dropout masks (dropout.py) and, with `fused`, batched
    variable selection (fused.py)."""
    use_count_matmul(model)
    use_fast_dropout(model)
    if fused:
        fuse_variable_selection(model)


def scaled_learning_rate(learning_rate: float, world_size: int, rule: str) -> float:
    """The learning rate for `world_size` data-parallel processes, each with the batch size
    `learning_rate` was chosen for: the global batch grows with the world, and so, by `rule`,
    does the step (sqrt: the usual safe choice for Adam; linear: Goyal et al. for SGD)."""
    factor = {"none": 1.0, "sqrt": world_size**0.5, "linear": float(world_size)}[rule]
    return learning_rate * factor
