"""TimeSeriesDataSet → Temporal Fusion Transformer (pytorch-forecasting's `from_dataset`)."""

from __future__ import annotations

from typing import Any

from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.metrics import QuantileLoss

from .config import ModelConfig


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


def build_model(dataset: TimeSeriesDataSet, config: ModelConfig) -> TemporalFusionTransformerDDP:
    # Fused Adam/AdamW/SGD updates all parameters in one kernel instead of several per tensor.
    return TemporalFusionTransformerDDP.from_dataset(
        dataset,
        hidden_size=config.hidden_size,
        attention_head_size=config.attention_head_size,
        hidden_continuous_size=config.hidden_continuous_size,
        lstm_layers=config.lstm_layers,
        dropout=config.dropout,
        loss=QuantileLoss(quantiles=config.quantiles),
        learning_rate=config.learning_rate,
        optimizer=config.optimizer,
        optimizer_params={"fused": True},
        weight_decay=config.weight_decay,
        reduce_on_plateau_patience=config.reduce_on_plateau_patience,
        log_interval=-1,
    )
