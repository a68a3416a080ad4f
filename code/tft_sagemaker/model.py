"""TimeSeriesDataSet → Temporal Fusion Transformer (pytorch-forecasting's `from_dataset`)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from pytorch_forecasting import TemporalFusionTransformer, TimeSeriesDataSet
from pytorch_forecasting.data.encoders import NaNLabelEncoder, TorchNormalizer
from pytorch_forecasting.metrics import MAE, MAPE, RMSE, SMAPE, QuantileLoss
from torch import nn

from .config import SpeedupConfig
from .errors import ConfigError
from .recipe import Settings
from .speedups import engage
from .speedups.gradients import FlatGradientHooks
from .speedups.static_shapes import StaticShapeHooks

log = logging.getLogger(__name__)


def _as_repr(dumper: yaml.Dumper, value: Any) -> yaml.Node:
    return dumper.represent_str(repr(value))


# pytorch-forecasting checks that each hyperparameter can be written as YAML by writing it
# (`BaseModel.__init__`, every model built or loaded), and Lightning writes them to
# TensorBoard's hparams.yaml. The target normaliser and the dataset parameters hold a fitted
# statistic and a label per series: at 50,000 series PyYAML took 1.6 s per model to write
# them (3 s more for hparams.yaml, before the first step), growing with the series. In YAML
# they are their repr (class and settings, as `GroupNormalizer(groups=['shop'], ...)`);
# checkpoints pickle them whole, as before.
for _encoder in (TorchNormalizer, NaNLabelEncoder):
    yaml.add_multi_representer(_encoder, _as_repr)


class SyncedTemporalFusionTransformer(TemporalFusionTransformer):
    """pytorch-forecasting's TFT, with its logged metrics synchronised across ranks.

    pytorch-forecasting logs `val_loss` and its metrics without `sync_dist`, so under DDP each
    rank's EarlyStopping, ModelCheckpoint and ReduceLROnPlateau would act on its own shard of the
    validation set and the replicas would drift apart. Lightning's synchronised mean weights
    each rank by its batch sizes, so the logged values equal the full-set values (and the
    printed train_loss is the global one). Outside DDP, `sync_dist` does nothing.
    """

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("sync_dist", True)
        super().log(name, value, *args, **kwargs)


class JobTemporalFusionTransformer(
    StaticShapeHooks, FlatGradientHooks, SyncedTemporalFusionTransformer
):
    """The TFT this job trains and loads: synchronised metrics, the speed-up layer's gradient
    hooks (Lightning's own zeroing and clipping until `speedups.engage` switches them on) and
    static-shape training step (GPUs; the library's step until switched on), and
    the learning rate logged as `learning_rate`. Its checkpoints are plain pytorch-forecasting
    ones: they load into `TemporalFusionTransformer`, and any checkpoint of the library's TFT
    (or of this class under its earlier names) loads into this one."""

    def configure_optimizers(self) -> Any:
        """pytorch-forecasting's optimizer and scheduler; the scheduler named for
        LearningRateMonitor, whose TensorBoard tag would otherwise be `lr-<optimizer class>`."""
        configuration = super().configure_optimizers()
        if configuration.get("lr_scheduler"):
            configuration["lr_scheduler"]["name"] = "learning_rate"
        return configuration


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


def build_model(dataset: TimeSeriesDataSet, settings: Settings) -> JobTemporalFusionTransformer:
    """The TFT for `dataset`, as the library builds it (the speed-up layer engages later)."""
    config = settings.config.model
    # Fused Adam/AdamW/SGD updates all parameters in one kernel instead of several per tensor.
    return JobTemporalFusionTransformer.from_dataset(
        dataset,
        hidden_size=config.hidden_size,
        attention_head_size=config.attention_head_size,
        hidden_continuous_size=config.hidden_continuous_size,
        lstm_layers=config.lstm_layers,
        dropout=config.dropout,
        loss=QuantileLoss(quantiles=config.quantiles),
        logging_metrics=logging_metrics(dataset),
        learning_rate=settings.learning_rate,
        optimizer=config.optimizer,
        optimizer_params={"fused": True},
        weight_decay=config.weight_decay,
        reduce_on_plateau_patience=config.reduce_on_plateau_patience,
        log_interval=-1,
    )


# What training holds per parameter: the fp32 weight, its gradient and the optimizer's two
# moments (Adam, AdamW; SGD fewer), and the weight average's copy when ema_decay is on.
BYTES_PER_PARAMETER, EMA_BYTES_PER_PARAMETER = 16, 4
# Tensors a training step keeps per window, time step and hidden unit for the backward pass,
# at the least: each variable's embedding and selection, and about ten more layers of hidden
# width (LSTM gates, gated residual networks, attention, output); attention keeps its weights.
HIDDEN_TENSORS_PER_STEP = 10


def check_model_fits(
    dataset: TimeSeriesDataSet, settings: Settings, available: int, source: str
) -> None:
    """Refuse, before any weight is allocated, a model whose training cannot fit in the memory
    a process has (`available` bytes, `source` says whose): the parameters are counted
    exactly on a model built on torch's meta device, which allocates nothing; a training step's
    activations are a lower bound."""
    with torch.device("meta"):
        model = build_model(dataset, settings)
    parameters = sum(p.numel() for p in model.parameters())
    config, training = settings.config.model, settings.config.training
    per_parameter = BYTES_PER_PARAMETER + (EMA_BYTES_PER_PARAMETER if config.ema_decay else 0)
    weights = parameters * per_parameter
    hidden = int(model.hparams.hidden_size)
    variables = len(model.encoder_variables) + len(model.decoder_variables)
    encoder, decoder = dataset.max_encoder_length, dataset.max_prediction_length
    batch = int(training.batch_size)
    steps = encoder + decoder
    activations = (
        4
        * batch
        * (
            steps * hidden * (variables + HIDDEN_TENSORS_PER_STEP)
            + int(model.hparams.attention_head_size) * decoder * steps
        )
    )
    if weights + activations <= available:
        return
    raise ConfigError(
        f"The model cannot train in {available / 1e9:.1f} GB ({source}): hidden_size={hidden}, "
        f"hidden_continuous_size={model.hparams.hidden_continuous_size}, "
        f"lstm_layers={config.lstm_layers} make {parameters:,} parameters "
        f"({weights / 1e9:.1f} GB with gradients and optimizer state), and batch_size={batch} "
        f"windows of {steps} steps need at least {activations / 1e9:.1f} GB per step. Lower "
        "hidden_size or batch_size, or use an instance with more memory."
    )


def load_model(
    source: Path | bytes, switches: SpeedupConfig
) -> tuple[dict[str, Any], JobTemporalFusionTransformer]:
    """A checkpoint this project wrote (the job's best, or a saved model.ckpt; a file or its
    bytes) as its contents and as the model in eval mode with the speed-up layer engaged: how
    the final evaluation and `predict` both load a model, so that they forecast alike. The
    file is read once."""
    content = io.BytesIO(source.read_bytes() if isinstance(source, Path) else source)
    # Checkpoints pickle the loss and dataset parameters; this project wrote them (trusted).
    checkpoint = torch.load(content, map_location="cpu", weights_only=False)
    content.seek(0)
    model = JobTemporalFusionTransformer.load_from_checkpoint(
        content, map_location="cpu", weights_only=False
    ).eval()
    engage(switches, model)  # the same results, faster
    return checkpoint, model
