"""The training job, start to end: configuration → data → dataset → model → trainer → artifacts.

`main` is what SageMaker's `train` runs (through code/train.py). Anything that goes wrong ends
as a one-line cause at the top of /opt/ml/output/failure and a non-zero exit code; input is
validated before any training starts, and the model directory is written only at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pytorch_forecasting import TimeSeriesDataSet

from .artifacts import METRICS_FILE, write_model_artifacts
from .baselines import against_baselines, describe
from .config import JobConfig, build_config, describe_hyperparameters, parse_cli
from .console import setup_logging
from .data import (
    JobData,
    channel_data_files,
    describe_frame,
    find_config_file,
    load_config_file,
    load_job_data,
    read_channel,
)
from .dataset import build_training_dataset, build_validation_dataset, user_names
from .errors import JobError
from .evaluate import forecast, score
from .interpret import InterpretationSum, largest_series
from .loaders import LoaderSettings, make_loader
from .model import JobTemporalFusionTransformer, build_model, scaled_learning_rate
from .predict import PredictionInput, forecast_table, prepare_prediction, write_forecasts
from .presets import PRESET_VALUES
from .recipe import resolve_data, resolve_training
from .report import check_report_series, data_summary, plotted_series, write_job_report
from .sagemaker import stops
from .sagemaker.checkpoints import find_resume_checkpoint, fingerprint
from .sagemaker.failure import write_failure
from .sagemaker.launch_plan import (
    LaunchPlan,
    network_interface,
    plan_launch,
    process_cpus,
    read_resource_config,
    wait_for_hosts,
)
from .sagemaker.metric_lines import format_metric_line
from .sagemaker.paths import JobPaths
from .speedups import engage
from .trainer import MetricLines, build_trainer, log_final_results

log = logging.getLogger("tft_sagemaker")

FORECAST_CHANNEL = "forecast"
FORECAST_FILE = "forecast.parquet"


def load_config(argv: Sequence[str], paths: JobPaths) -> JobConfig:
    # The train channel may hold the configuration file: without it or data, say that first.
    channel_data_files(paths, "train", required=True)
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
        cpus_per_host=process_cpus(),
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
    if plan.num_nodes > 1:
        configured = (read_resource_config(paths.input_config_dir) or {}).get(
            "network_interface_name"
        )
        interface = network_interface(configured, plan.master_addr)
        log.info("network interface: %s (%s)", interface.name or "unset", interface.reason)
        if interface.name:
            os.environ.setdefault("NCCL_SOCKET_IFNAME", interface.name)
            os.environ.setdefault("GLOO_SOCKET_IFNAME", interface.name)
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
        if not plan.distributed:
            raise
        first_line = str(err).strip().splitlines()[0][:300]
        if not dist.is_initialized():  # the process group never formed
            raise JobError(_cluster_not_formed(plan, first_line)) from err
        if not any(marker in str(err).lower() for marker in _PEER_LOST):
            raise
        raise JobError(
            f"Lost a peer of the training group ({plan.world_size} processes on "
            f"{', '.join(plan.hosts)}): this host stopped within collective_timeout_s="
            f"{timeout_s}. The root cause is in the first failing host's log. ({first_line})"
        ) from err


def _cluster_not_formed(plan: LaunchPlan, cause: str) -> str:
    """What was tried, first: which host met which master, where, over which interface."""
    try:
        address = socket.gethostbyname(plan.master_addr)
    except OSError:
        address = "unresolved"
    variable = "NCCL_SOCKET_IFNAME" if plan.backend == "nccl" else "GLOO_SOCKET_IFNAME"
    interface = os.environ.get(variable)
    tried = f"{interface} ({variable})" if interface else f"chosen by {plan.backend}"
    return (
        f"The training cluster did not form: host {plan.current_host} (node {plan.node_rank} "
        f"of {plan.num_nodes}) tried master {plan.master_addr} at {address}:{plan.master_port} "
        f"over interface {tried}: {cause}"
    )


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
    forecast_input: PredictionInput | None  # the `forecast` channel, checked


def build_job(config: JobConfig, plan: LaunchPlan, paths: JobPaths) -> Job:
    """configuration → data → dataset → model → trainer, in every process alike."""
    local_rank = plan.local_rank or int(os.environ.get("LOCAL_RANK", 0))
    setup_logging(rank=plan.node_rank * plan.devices + local_rank)
    log.info("launch plan: %s", json.dumps(plan.summary()))
    log.info("configuration: %s", json.dumps(config.flat()))
    if plan.num_nodes > 1:
        wait_for_hosts(plan.hosts, config.distributed.host_wait_timeout_s)
    _configure_process(plan, paths)  # after the hosts resolve: it looks up the route to the master

    paths.check_writable()
    data = load_job_data(paths, config.data)
    log.info("training data: %s", describe_frame(data.train, config.data))
    data_config, choices = resolve_data(config.data, data.train)
    config = dataclasses.replace(config, data=data_config)
    pl.seed_everything(config.training.seed, workers=True, verbose=False)
    training = build_training_dataset(data.train, config.data)
    validation = build_validation_dataset(training, data.validation, config.data)
    log.info("windows: %d training, %d validation", len(training), len(validation))
    config, training_choices = resolve_training(config, len(training))
    for choice in choices + training_choices:
        log.info("recipe: %s", choice)
    if config.report.report:
        check_report_series(data.validation, config)
    # Checked before training, so that a bad channel costs no training time.
    raw_forecast = read_channel(paths, FORECAST_CHANNEL, required=False)
    forecast_input = (
        None
        if raw_forecast is None
        else prepare_prediction(
            raw_forecast, training.get_parameters(), config.data, data.time_axis, FORECAST_CHANNEL
        )
    )

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
    return Job(
        config, plan, paths, data, training, validation, model, trainer, loaders, forecast_input
    )


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


def evaluate_and_save(job: Job, timings: dict[str, float]) -> dict[str, Any]:
    """Global rank 0: the best checkpoint and the baselines on the validation windows, in one
    process, interpreted in the same pass (unless report=false); then the model directory
    (unless require_beating_baseline holds it back), the `forecast` channel's forecasts, the
    report and the final TensorBoard entries."""
    stops.reached("evaluation")
    config = job.config
    best = Path(job.trainer.checkpoint_callback.best_model_path)
    log.info("evaluating %s on %d validation windows", best.name, len(job.validation))
    # Checkpoints pickle the loss and dataset parameters: this job wrote this one (trusted).
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    best_model = JobTemporalFusionTransformer.load_from_checkpoint(
        best, map_location="cpu", weights_only=False
    )
    device = job.trainer.strategy.root_device
    interpretation = (
        InterpretationSum(
            best_model,
            job.validation,
            largest_series(job.data.validation, config.data),
            config.data.target,
            user_names(config.data),
        )
        if config.report.report
        else None
    )
    predicted = forecast(best_model, job.validation, device=device, observe=interpretation)
    predicted.index = predicted.index.rename(columns=user_names(config.data))  # as in the data
    results = score(predicted, config.model.quantiles)
    baselines_started = time.monotonic()
    comparison = against_baselines(
        predicted,
        job.data.validation,
        config.data,
        config.model.quantiles,
        config.training.baseline_max_series,
        config.training.seed,
    )
    results |= comparison.metrics | {"baselines_s": round(time.monotonic() - baselines_started, 2)}
    (log.info if comparison.beats_baselines else log.warning)("%s", describe(comparison))
    results |= {
        "best_epoch": checkpoint["epoch"],
        "epochs_trained": job.trainer.current_epoch,
        "world_size": job.plan.world_size,
        **timings,
    }
    final = {
        f"final_{k}" if k.startswith("val_") else k: v
        for k, v in results.items()
        if "val_" in k or k in ("baseline_margin", "beats_baselines")
    }
    print(format_metric_line(final), flush=True)
    if config.training.require_beating_baseline and not comparison.beats_baselines:
        # A pipeline that must not ship this model finds none; the figures stay in output/.
        job.paths.output_data_dir.mkdir(parents=True, exist_ok=True)
        (job.paths.output_data_dir / METRICS_FILE).write_text(json.dumps(results, indent=2))
        return results
    history = next(c for c in job.trainer.callbacks if isinstance(c, MetricLines)).history
    report_data = {"history": history, "data": data_summary(job.data, config.data)}
    interpretation_s = 0.0  # the time interpreting and choosing the plotted series takes
    if interpretation is not None:
        started = time.monotonic()
        report_data |= {
            "interpretation": interpretation.result(),
            "series": plotted_series(predicted, job.data.validation, config),
        }
        interpretation_s = interpretation.seconds + time.monotonic() - started
    write_model_artifacts(
        job.paths.model_dir,
        checkpoint,
        job.training.get_parameters(),
        config,
        job.data.time_axis,
        results,
        report_data,
    )
    log.info("model written to %s", job.paths.model_dir)
    if job.forecast_input is not None:
        forecasts = forecast_table(
            best_model,
            job.forecast_input,
            config.data,
            config.model.quantiles,
            job.data.time_axis,
            device=device,
        )
        write_forecasts(forecasts, job.paths.output_data_dir / FORECAST_FILE, config.data)
    figures = (
        write_job_report(job.paths.model_dir, job.paths.output_data_dir, interpretation_s)
        if config.report.report
        else {}
    )
    log_final_results(job.trainer, results["val_MAE"], figures)
    return results


def run(config: JobConfig, plan: LaunchPlan, paths: JobPaths) -> dict[str, Any]:
    started = time.monotonic()
    stops.reached("data preparation")
    job = build_job(config, plan, paths)
    config = job.config  # with the recipe's choices
    resume = (
        find_resume_checkpoint(paths.checkpoint_dir, fingerprint(config))
        if config.training.resume
        else None
    )
    fit_started = time.monotonic()
    fit(job, resume)
    if (signum := stops.received()) is not None:
        raise stops.Stopped(signum)  # after Lightning's last look: every epoch is checkpointed
    results: dict[str, Any] = {}
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
    if results and not results["beats_baselines"] and config.training.require_beating_baseline:
        raise JobError(
            f"require_beating_baseline: the TFT's validation MAE ({results['val_MAE']:.6g}) is "
            f"{results['baseline_margin']:.1%} above the {results['best_baseline']} baseline's "
            "on the same windows; no model was written (figures in output/data/metrics.json)."
        )
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
