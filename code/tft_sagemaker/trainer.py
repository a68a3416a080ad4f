"""Configuration + launch plan → Lightning Trainer, with the callbacks the job relies on.

- metric lines SageMaker can parse (rank 0, once per epoch);
- early stopping and the best checkpoint on the synchronised `val_loss`;
- epoch checkpoints (a bounded number, plus `last.ckpt`) for spot resume, and a checkpoint when
  SageMaker sends SIGTERM (Lightning stops every rank at the same batch);
- the position of the training loader, so a mid-epoch resume skips what was trained.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    WeightAveraging,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image
from torch.optim.swa_utils import get_ema_multi_avg_fn

from . import STARTED
from .errors import writing
from .loaders import ShardedBatchSampler
from .recipe import Settings
from .sagemaker import stops
from .sagemaker.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    STAMP,
    AtomicCheckpointIO,
    RelocatableModelCheckpoint,
)
from .sagemaker.cluster import SageMakerEnvironment
from .sagemaker.launch_plan import LaunchPlan
from .sagemaker.metric_lines import format_metric_line
from .sagemaker.paths import JobPaths

log = logging.getLogger(__name__)

MONITOR = "val_loss"


class MetricLines(Callback):
    """Prints `[metrics] epoch=... train_loss=... val_loss=... val_MAE=...` after each epoch,
    and keeps those values in `history` for the report's training curve, in the data's unit
    (the model logs them in its own: `unit` times smaller, `units.py`). The history is
    checkpointed with the callback, so a resumed job reports the epochs before it too; as the
    epoch's checkpoints are saved when validation ends, the validation values are recorded
    then, and the epoch's entry is completed when it ends."""

    # Logged values in the target's unit (SMAPE and the learning rate have none).
    IN_TARGET_UNIT = ("train_loss", "val_loss", "val_MAE", "val_RMSE")

    def __init__(self, unit: float = 1.0) -> None:
        self.started = time.monotonic()
        self.unit = unit
        self.history: list[dict[str, float]] = []

    def _in_data_unit(self, values: dict[str, float | None]) -> dict[str, float | None]:
        return {
            k: v * self.unit if k in self.IN_TARGET_UNIT and v is not None else v
            for k, v in values.items()
        }

    def _record(self, values: dict[str, float | None]) -> None:
        entry = {k: v for k, v in self._in_data_unit(values).items() if v is not None}
        if self.history and self.history[-1]["epoch"] == entry["epoch"]:
            self.history[-1] |= entry
        else:
            self.history.append(entry)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        names = ("val_loss", "val_MAE", "val_SMAPE", "val_RMSE")
        self._record(
            {"epoch": trainer.current_epoch} | {n: float(metrics[n]) for n in names if n in metrics}
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics

        def value(name: str) -> float | None:
            return float(metrics[name]) if name in metrics else None

        values = {
            "epoch": trainer.current_epoch,
            "train_loss": value("train_loss_epoch"),
            "val_loss": value("val_loss"),
            "val_MAE": value("val_MAE"),
            "val_SMAPE": value("val_SMAPE"),
            "val_RMSE": value("val_RMSE"),
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
            "elapsed_s": time.monotonic() - self.started,
        }
        self._record(values)
        print(format_metric_line(self._in_data_unit(values)), flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class LoaderPosition(Callback):
    """Keeps the training sampler's epoch and position (checkpointed with it) in step with
    training. Lightning calls `set_epoch` only on a loader's `sampler`, not its batch sampler."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = trainer.train_dataloader.batch_sampler
        if isinstance(sampler, ShardedBatchSampler):
            sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        sampler = trainer.train_dataloader.batch_sampler
        if isinstance(sampler, ShardedBatchSampler):
            sampler.trained = batch_idx + 1


class TrainingSummary(Callback):
    """Per process, what it trained on in each epoch: batches, windows, and a checksum of the
    window indices (their sum and sum of squares), from which one can check that the ranks
    together covered every window exactly once; and a hash of the weights at the epoch's end.
    Written to output/data after each epoch, one file per rank named after its host."""

    def __init__(self, directory: Path, host: str) -> None:
        self.directory, self.host = directory, host
        self.epochs: dict[int, dict[str, int]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._record(trainer)  # the interrupted epoch, as far as it got

    def _record(self, trainer: pl.Trainer) -> None:
        sampler = trainer.train_dataloader.batch_sampler if trainer.train_dataloader else None
        if not isinstance(sampler, ShardedBatchSampler):
            return
        windows = sampler.trained_windows().astype(np.int64)
        # The sampler's epoch, not the trainer's: a stop at an epoch's end is recorded after
        # the trainer has counted that epoch as done.
        weights = hashlib.sha256()
        for tensor in trainer.lightning_module.state_dict().values():
            weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        self.epochs[sampler.epoch] = {
            "batches": sampler.trained - sampler.resumed_at,
            "windows": len(windows),
            "index_sum": int(windows.sum()),
            "index_square_sum": int((windows * windows).sum()),
            "weights_sha256": weights.hexdigest(),  # the same on every rank: one model
        }
        summary = {
            "host": self.host,
            "node_rank": trainer.node_rank,
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "total_windows": sampler.total_windows,
            "epochs": self.epochs,
        }
        path = self.directory / f"training-summary-{self.host}-rank{trainer.global_rank}.json"
        partial = path.with_name(f".{path.name}.partial")
        with writing("the training summary", path):
            self.directory.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(summary, indent=2))
            os.replace(partial, path)


class CheckpointOnSigterm(Callback):
    """SageMaker sends SIGTERM on StopTrainingJob and spot interruption, SIGKILL 120 s later:
    save where training stands, so the restarted job loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)
            log.warning(
                "SIGTERM: saved %s at epoch %d, step %d",
                self.path,
                trainer.current_epoch,
                trainer.global_step,
            )


class StopPhases(Callback):
    """Names the phases of training for stops.py: where a stop hit, and rehearsed stops."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stops.reached("epoch start", trainer.current_epoch)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stops.reached("training", trainer.current_epoch, batch_idx)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            stops.reached("validation", trainer.current_epoch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stops.reached("epoch end", trainer.current_epoch)


class LearningRateWarmup(Callback):
    """The learning rate rises linearly to `learning_rate` over the first `steps` optimizer
    steps (step k of them at (k + 1) / steps of it); from then on the schedule is the model's.
    Follows the global step, so a resumed job continues where it stopped."""

    def __init__(self, learning_rate: float, steps: int) -> None:
        self.learning_rate = learning_rate
        self.steps = steps

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step < self.steps:
            rate = self.learning_rate * (trainer.global_step + 1) / self.steps
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = rate


class Fingerprint(Callback):
    """Stamps checkpoints with the settings they are only valid for (checked before resume)."""

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = fingerprint

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[STAMP] = self.fingerprint


class TrainingClock(Callback):
    """When this process's first training batch started (seconds since the job's code started:
    what a user waits before training begins), and the seconds spent training since then,
    validation passes between training batches excluded."""

    def __init__(self) -> None:
        self.first_step_s: float | None = None
        self._first = self._last = self._validation_started = 0.0
        self._validating = self._pending = 0.0  # validation before / after the last batch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if self.first_step_s is None:
            self.first_step_s, self._first = now - STARTED, now
        self._validating, self._pending = self._validating + self._pending, 0.0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._last = time.monotonic()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.first_step_s is not None:  # not the sanity check before training
            self._pending += time.monotonic() - self._validation_started

    @property
    def training_s(self) -> float:
        return max(0.0, self._last - self._first - self._validating)


class ExtensionTimeLimit(Callback):
    """An epoch past the first `budget` (of the `extend_epochs` that may follow while the
    validation improves: early stopping ends them) begins only while training has taken at
    most `limit_s` (since it started here, a resumed job since its resume), on every rank alike."""

    def __init__(self, budget: int, limit_s: float) -> None:
        self.budget, self.limit_s = budget, limit_s
        self._started = time.monotonic()
        self._extended = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = trainer.current_epoch + 1  # done, this one included
        if epochs < self.budget or epochs >= (trainer.max_epochs or 0) or trainer.should_stop:
            return
        taken = time.monotonic() - self._started
        if trainer.strategy.reduce_boolean_decision(taken > self.limit_s, all=False):
            log.info(
                "training: stops after %d epochs (the budget's %d and %d more): %.0f s of "
                "training > extend_time_limit_s=%g",
                epochs,
                self.budget,
                epochs - self.budget,
                taken,
                self.limit_s,
            )
            trainer.should_stop = True
        elif not self._extended:
            self._extended = True
            log.info(
                "training: goes on past the budget's %d epochs: the validation still improves "
                "(up to %d epochs, early stopping ends them)",
                self.budget,
                trainer.max_epochs,
            )


class RankReport(Callback):
    """Logs what each rank trains on, so a wrong world size shows at once."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = trainer.train_dataloader.batch_sampler
        windows = len(sampler.shard()) if isinstance(sampler, ShardedBatchSampler) else None
        log.info(
            "rank %d/%d (node %d, local %d): %s batches per epoch, %s windows",
            trainer.global_rank,
            trainer.world_size,
            trainer.node_rank,
            trainer.local_rank,
            trainer.num_training_batches,
            windows,
        )


class JobTensorBoardLogger(TensorBoardLogger):
    """TensorBoard's writer fails in its own thread (a full disk) and raises the bare OSError at
    the next write, anywhere in training: here every write names the logs' directory."""

    @property
    def experiment(self) -> Any:
        with writing("the TensorBoard logs", Path(self.log_dir)):
            return super().experiment

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        with writing("the TensorBoard logs", Path(self.log_dir)):
            super().log_metrics(metrics, step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        with writing("the TensorBoard logs", Path(self.log_dir)):
            super().log_hyperparams(params, *args, **kwargs)

    def save(self) -> None:
        with writing("the TensorBoard logs", Path(self.log_dir)):
            super().save()

    def finalize(self, status: str) -> None:
        with writing("the TensorBoard logs", Path(self.log_dir)):
            super().finalize(status)


class ExponentialMovingAverage(WeightAveraging):
    """An exponential moving average of the weights, updated after every optimizer step.
    Validation, checkpoints (hence early stopping, the best model and the learning-rate
    schedule) and the final model see the averaged weights, which are far less noisy from
    epoch to epoch than the raw ones."""

    def __init__(self, decay: float) -> None:
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    if accelerator == "gpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _strategy(plan: LaunchPlan, timeout_s: int) -> str | DDPStrategy:
    if not plan.distributed:
        return "auto"
    return DDPStrategy(
        cluster_environment=SageMakerEnvironment(plan),
        process_group_backend=plan.backend,
        timeout=timedelta(seconds=timeout_s),
    )


def build_trainer(
    settings: Settings,
    plan: LaunchPlan,
    paths: JobPaths,
    fingerprint: dict[str, Any],
) -> pl.Trainer:
    config = settings.config
    training = config.training
    checkpoint_dir = paths.checkpoint_dir
    callbacks: list[Callback] = [
        MetricLines(config.data.resolved_target_unit),
        LoaderPosition(),
        TrainingSummary(paths.output_data_dir, plan.current_host),
        RankReport(),
        TrainingClock(),
        Fingerprint(fingerprint),
        CheckpointOnSigterm(checkpoint_dir / LAST_CHECKPOINT),
        StopPhases(),
        RelocatableModelCheckpoint(
            dirpath=checkpoint_dir,
            filename=BEST_CHECKPOINT,
            monitor=MONITOR,
            mode="min",
            save_top_k=1,
            enable_version_counter=False,
        ),
        # Keeps the newest `keep_checkpoints` epochs (and last.ckpt) for resuming.
        RelocatableModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="epoch={epoch}",
            auto_insert_metric_name=False,
            monitor="epoch",
            mode="max",
            save_top_k=training.keep_checkpoints,
            save_last=True,
        ),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if training.warmup_steps:  # 0: none
        callbacks.append(LearningRateWarmup(settings.learning_rate, training.warmup_steps))
    if config.model.ema_decay:  # 0: off
        callbacks.append(ExponentialMovingAverage(config.model.ema_decay))
    if training.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(
                monitor=MONITOR,
                mode="min",
                patience=training.early_stopping_patience,
                min_delta=training.early_stopping_min_delta,
            )
        )
    if training.extend_epochs:  # after early stopping: it sees that epoch's decision
        callbacks.append(ExtensionTimeLimit(training.max_epochs, training.extend_time_limit_s))
    return pl.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=_strategy(plan, config.distributed.collective_timeout_s),
        precision=resolve_precision(training.precision, plan.accelerator),
        max_epochs=training.max_epochs + training.extend_epochs,
        limit_train_batches=training.limit_train_batches,
        gradient_clip_val=training.gradient_clip_val or None,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=JobTensorBoardLogger(save_dir=paths.tensorboard_dir, name="", version=""),
        default_root_dir=checkpoint_dir,
        use_distributed_sampler=False,  # loaders.py shards the windows itself
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=True,
        log_every_n_steps=50,
        num_sanity_val_steps=1,
    )


def log_final_results(trainer: pl.Trainer, val_mae: float, figures: dict[str, bytes]) -> None:
    """After the final evaluation: its validation MAE as `hp_metric`, the HParams view's column
    (Lightning wrote a -1 placeholder there when training started), so runs and tuning trials
    compare in one table; and the report's figures (PNG) as images."""
    if not isinstance(trainer.logger, TensorBoardLogger):
        return
    writer = trainer.logger.experiment  # reopens the event file that Lightning closed
    with writing("the TensorBoard logs", Path(trainer.logger.log_dir)):
        writer.add_scalar("hp_metric", val_mae, trainer.global_step)
        for name, png in figures.items():
            image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            writer.add_image(f"report/{name}", image, trainer.global_step, dataformats="HWC")
        writer.close()
