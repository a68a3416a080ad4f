"""The training job, start to end: configuration → data → dataset → model → trainer → artifacts.

`main` is what SageMaker's `train` runs (through code/train.py). Anything that goes wrong ends
as a one-line cause at the top of /opt/ml/output/failure and a non-zero exit code; input is
validated before any training starts, and the model directory is written only at the end.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pytorch_forecasting import TimeSeriesDataSet

from . import stops
from .artifacts import write_model_artifacts
from .checkpoints import find_resume_checkpoint, fingerprint
from .config import JobConfig, build_config, describe_hyperparameters, parse_cli
from .console import setup_logging
from .data import (
    JobData,
    channel_dir,
    describe_frame,
    find_config_file,
    load_config_file,
    load_job_data,
)
from .dataset import build_training_dataset, build_validation_dataset
from .errors import JobError, write_failure
from .evaluate import forecast, score
from .launch import LaunchPlan, plan_launch, read_resource_config, wait_for_hosts
from .loaders import LoaderSettings, make_loader
from .metrics import format_metric_line
from .model import JobTemporalFusionTransformer, build_model, scaled_learning_rate
from .paths import JobPaths
from .presets import PRESET_VALUES
from .speedups import engage
from .trainer import build_trainer

log = logging.getLogger("tft_sagemaker")


def load_config(argv: Sequence[str], paths: JobPaths) -> JobConfig:
    # The train channel may hold the configuration file: without it, say that first.
    channel_dir(paths, "train", required=True)
    hyperparameters = parse_cli(argv)
    config_file = find_config_file(paths, hyperparameters.get("config_file"))
    file_values = load_config_file(config_file) if config_file else {}
    if config_file:
        log.info("configuration file: %s", config_file)
    return build_config(hyperparameters, file_values, PRESET_VALUES, str(config_file))


def plan_for(config: JobConfig, paths: JobPaths) -> LaunchPlan:
    gpus = torch.cuda.device_count() if config.training.accelerator != "cpu" else 0
    return plan_launch(
        os.environ,
        read_resource_config(paths.input_config_dir),
        gpus_per_host=gpus,
        cpus_per_host=os.cpu_count() or 1,
        accelerator=config.training.accelerator,
        devices=config.training.devices,
        backend=config.distributed.backend,
        master_port=config.distributed.master_port,
    )


def _configure_process(plan: LaunchPlan, paths: JobPaths) -> None:
    """Environment every process of the plan needs before the process group forms."""
    # Several processes per host each taking every core is ~10x slower on CPUs.
    torch.set_num_threads(plan.threads_per_process)
    os.environ.setdefault("OMP_NUM_THREADS", str(plan.threads_per_process))
    # A dead peer then fails the collectives at the timeout instead of hanging forever.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    interface = (read_resource_config(paths.input_config_dir) or {}).get("network_interface_name")
    if interface and plan.num_nodes > 1:
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    os.environ.update(plan.lightning_env())
    if plan.backend == "smddp":
        try:
            import smdistributed.dataparallel.torch.torch_smddp  # noqa: F401  (registers smddp)
        except ImportError as err:
            raise JobError(
                "backend=smddp needs smdistributed-dataparallel (SageMaker PyTorch images up to "
                "2.3); use backend=nccl with torch_distributed on current images."
            ) from err


_PEER_LOST = ("closed by peer", "reset by peer", "broken pipe", "timed out", "timeout", "nccl")


@contextmanager
def _peer_failures(plan: LaunchPlan, timeout_s: int) -> Iterator[None]:
    """Turn a collective that broke because another process died into a cause one can act on."""
    try:
        yield
    except (RuntimeError, dist.DistError) as err:
        text = str(err).lower()
        if not plan.distributed or not any(marker in text for marker in _PEER_LOST):
            raise
        first_line = str(err).strip().splitlines()[0][:300]
        raise JobError(
            f"Lost a peer of the training group ({plan.world_size} processes on "
            f"{', '.join(plan.hosts)}): this host stopped within collective_timeout_s="
            f"{timeout_s}. The root cause is in the first failing host's log. ({first_line})"
        ) from err


def _is_launching_process() -> bool:
    """True in the process SageMaker started, before any launcher child exists."""
    return not any(
        k in os.environ for k in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK")
    )


@dataclass
class Job:
    """Everything `fit` needs, built by `build_job` (the benchmarks reuse it as it is)."""

    config: JobConfig
    plan: LaunchPlan
    paths: JobPaths
    data: JobData
    training: TimeSeriesDataSet
    validation: TimeSeriesDataSet
    model: JobTemporalFusionTransformer
    trainer: pl.Trainer
    loaders: LoaderSettings


def build_job(config: JobConfig, plan: LaunchPlan, paths: JobPaths) -> Job:
    """configuration → data → dataset → model → trainer, in every process alike."""
    _configure_process(plan, paths)
    local_rank = plan.local_rank or int(os.environ.get("LOCAL_RANK", 0))
    setup_logging(rank=plan.node_rank * plan.devices + local_rank)
    log.info("launch plan: %s", json.dumps(plan.summary()))
    log.info("configuration: %s", json.dumps(config.flat()))
    if plan.num_nodes > 1:
        wait_for_hosts(plan.hosts, config.distributed.host_wait_timeout_s)

    paths.check_writable()
    data = load_job_data(paths, config.data)
    log.info("training data: %s", describe_frame(data.train, config.data))
    pl.seed_everything(config.training.seed, workers=True, verbose=False)
    training = build_training_dataset(data.train, config.data)
    validation = build_validation_dataset(training, data.validation)
    log.info("windows: %d training, %d validation", len(training), len(validation))

    model = build_model(training, config.model)
    trainer = build_trainer(config, plan, paths, fingerprint(config))
    if trainer.world_size != plan.world_size:
        raise JobError(
            f"Lightning formed a world of {trainer.world_size} processes, the plan has "
            f"{plan.world_size} ({plan.num_nodes} node(s) x {plan.devices} device(s))."
        )
    if trainer.world_size > 1:
        model.hparams.learning_rate = scaled_learning_rate(
            config.model.learning_rate, trainer.world_size, config.training.learning_rate_scaling
        )
        log.info(
            "learning rate %.4g for %d processes (learning_rate_scaling=%s)",
            model.hparams.learning_rate,
            trainer.world_size,
            config.training.learning_rate_scaling,
        )
    speedups = engage(
        config.speedups, model, trainer, {"training": training, "validation": validation}
    )
    log.info(speedups.line())
    loaders = LoaderSettings(
        batch_size=config.training.batch_size,
        val_batch_size=config.training.val_batch_size or 8 * config.training.batch_size,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        seed=config.training.seed,
        fast_batches=config.speedups.fast_batches,
        num_workers=config.training.num_workers,
        device=trainer.strategy.root_device,
        threads_per_process=plan.threads_per_process,
    )
    return Job(config, plan, paths, data, training, validation, model, trainer, loaders)


def fit(job: Job, resume: Path | None = None) -> None:
    model = torch.compile(job.model, dynamic=True) if job.config.training.compile else job.model
    with _peer_failures(job.plan, job.config.distributed.collective_timeout_s):
        job.trainer.fit(
            model,
            train_dataloaders=make_loader(job.training, job.loaders, train=True),
            val_dataloaders=make_loader(job.validation, job.loaders, train=False),
            ckpt_path=resume,
            weights_only=False,  # our own checkpoints pickle the loss and dataset parameters
        )


def evaluate_and_save(job: Job, timings: dict[str, float]) -> dict[str, float]:
    """Global rank 0: the best checkpoint and the Baseline on the validation windows, in one
    process; then the model directory."""
    stops.reached("evaluation")
    best = Path(job.trainer.checkpoint_callback.best_model_path)
    log.info("evaluating %s on %d validation windows", best.name, len(job.validation))
    # Checkpoints pickle the loss and dataset parameters: this job wrote this one (trusted).
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    best_model = JobTemporalFusionTransformer.load_from_checkpoint(
        best, map_location="cpu", weights_only=False
    )
    device = job.trainer.strategy.root_device
    results = score(forecast(best_model, job.validation, device=device), job.config.model.quantiles)
    results |= {
        "best_epoch": checkpoint["epoch"],
        "epochs_trained": job.trainer.current_epoch,
        "world_size": job.plan.world_size,
        **timings,
    }
    write_model_artifacts(
        job.paths.model_dir,
        checkpoint,
        job.training.get_parameters(),
        job.config,
        job.data.time_axis,
        results,
    )
    final = {
        f"final_{k}" if k.startswith("val_") else k: v for k, v in results.items() if "val_" in k
    }
    print(format_metric_line(final), flush=True)
    log.info("model written to %s", job.paths.model_dir)
    return results


def run(config: JobConfig, plan: LaunchPlan, paths: JobPaths) -> dict[str, float]:
    started = time.monotonic()
    stops.reached("data preparation")
    job = build_job(config, plan, paths)
    resume = (
        find_resume_checkpoint(paths.checkpoint_dir, fingerprint(config))
        if config.training.resume
        else None
    )
    fit_started = time.monotonic()
    fit(job, resume)
    if (signum := stops.received()) is not None:
        raise stops.Stopped(signum)  # after Lightning's last look: every epoch is checkpointed
    results: dict[str, float] = {}
    if job.trainer.is_global_zero:
        results = evaluate_and_save(
            job,
            {
                "fit_s": round(time.monotonic() - fit_started, 2),
                "job_s": round(time.monotonic() - started, 2),
            },
        )
    if plan.distributed and dist.is_initialized():
        with _peer_failures(plan, config.distributed.collective_timeout_s):
            dist.barrier()  # every host finishes together (SageMaker local mode needs it)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["--help"], ["-h"]):
        print(describe_hyperparameters())
        return 0
    with stops.handling():
        paths = JobPaths.from_env()
        if _is_launching_process():
            paths.failure_file.unlink(missing_ok=True)  # a stale one from an earlier local run
        try:
            config = load_config(argv, paths)
            paths = JobPaths.from_env(checkpoint_dir=config.training.checkpoint_dir)
            run(config, plan_for(config, paths), paths)
            return 0
        except (SIGTERMException, stops.Stopped) as err:
            cause = stops.cause(paths.checkpoint_dir, saved=isinstance(err, SIGTERMException))
            log.error("job stopped: %s", cause)
            write_failure(paths.failure_file, JobError(cause))
            return stops.exit_code()
        except Exception as err:  # every failure must reach the failure file
            log.error("job failed: %s", err, exc_info=not isinstance(err, JobError))
            write_failure(paths.failure_file, err)
            return 2 if isinstance(err, JobError) else 1
