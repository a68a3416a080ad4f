"""The training job, start to end:
configuration → data → dataset → settings → model → trainer → fit → evaluation → publication.

`main` is what SageMaker's `train` runs (through code/train.py). Anything that goes wrong ends
as a one-line cause at the top of /opt/ml/output/failure and a non-zero exit code; input is
validated before any training starts, and the model directory is written only at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pytorch_forecasting import TimeSeriesDataSet

from . import STARTED
from .artifacts import METRICS_FILE, planned_writes, write_model_artifacts
from .baselines import Comparison, against_baselines, describe
from .channels import channel_data_files, read_channel
from .config import JobConfig, describe_hyperparameters, load_config
from .console import setup_logging
from .dataset import (
    build_columnar_training,
    build_columnar_validation,
    known_categories,
    user_names,
)
from .errors import JobError, writing
from .evaluate import Forecast, forecast, score
from .host_panel import HostPanel, Prepared, bytes_per_row
from .interpret import InterpretationSum, largest_series
from .job_data import JobData, describe_frame, load_job_data
from .loaders import LoaderSettings, make_loader
from .memory import check_host_memory, process_memory_available
from .model import JobTemporalFusionTransformer, build_model, check_model_fits, load_model
from .predict import PredictionInput, forecast_table, prepare_prediction, write_forecasts
from .presets import PRESET_VALUES
from .recipe import Settings, resolve_data, settle
from .report import check_report_series, data_summary, plotted_series, write_job_report
from .sagemaker import failure, stops
from .sagemaker.checkpoints import find_resume_checkpoint, fingerprint
from .sagemaker.cluster import cluster_failures, configure_process, wait_for_hosts
from .sagemaker.launch_plan import (
    LaunchPlan,
    launched_by_launcher,
    plan_launch,
    process_cpus,
    read_resource_config,
)
from .sagemaker.metric_lines import format_metric_line
from .sagemaker.paths import JobPaths
from .speedups import Report, engage
from .trainer import MetricLines, TrainingClock, build_trainer, log_final_results

log = logging.getLogger("tft_sagemaker")

FORECAST_CHANNEL = "forecast"
FORECAST_FILE = "forecast.parquet"


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


@dataclass
class Job:
    """Everything `fit`, `evaluate` and `publish` need, built by `build_job` (the benchmarks
    reuse it as it is)."""

    settings: Settings
    plan: LaunchPlan
    paths: JobPaths
    data: JobData | None  # in the host's first process only (the others map its panel)
    training: TimeSeriesDataSet
    validation: TimeSeriesDataSet
    model: JobTemporalFusionTransformer
    trainer: pl.Trainer
    loaders: LoaderSettings
    speedups: Report  # what the speed-up layer engaged, batching of each dataset included
    fingerprint: dict[str, Any]  # what checkpoints are stamped with and resumed by
    forecast_input: PredictionInput | None  # the `forecast` channel, checked

    @property
    def config(self) -> JobConfig:
        return self.settings.config


def prepare_data(
    config: JobConfig, plan: LaunchPlan, paths: JobPaths
) -> tuple[JobData | None, Prepared]:
    """data → datasets, once per host: the host's first process reads, validates and builds
    them into the host's panel (host_panel.py), the others map it (and get no JobData)."""
    panel = HostPanel.for_job(paths, config.data)
    if plan.local_rank != 0:
        return None, panel.wait(config.distributed.collective_timeout_s)
    with panel.preparing():
        data = load_job_data(paths, config.data)
        log.info("training data: %s", describe_frame(data.train, config.data))
        data_config, choices = resolve_data(config.data, data.train)
        if config.report.report:
            check_report_series(data.validation, dataclasses.replace(config, data=data_config))
        if panel.complete():
            log.info("data: the panel this host prepared before, in %s", panel.directory)
            return data, panel.load()
        categories = known_categories([data.train, data.validation], data_config)
        training = build_columnar_training(
            data.train, data_config, panel.allocate("training"), categories
        )
        log.info("memory: %s", bytes_per_row(training))
        validation = build_columnar_validation(
            training, data.validation, data_config, panel.allocate("validation")
        )
        prepared = Prepared(data_config, choices, training, validation)
        panel.publish(prepared)
    return data, prepared


def build_job(config: JobConfig, plan: LaunchPlan, paths: JobPaths) -> Job:
    """configuration → data → dataset → settings → model → trainer, in every process alike."""
    setup_logging(rank=plan.global_rank)
    log.info("launch plan: %s", json.dumps(plan.summary()))
    log.info("configuration: %s", json.dumps(config.flat()))
    if plan.num_nodes > 1:
        wait_for_hosts(plan.hosts, config.distributed.host_wait_timeout_s)
    configure_process(plan)  # after the hosts resolve: it looks up the route to the master

    paths.check_writable()
    check_host_memory(paths, plan, config.training.memory_limit_gb)  # before reading the data
    data, prepared = prepare_data(config, plan, paths)
    training, validation = prepared.training, prepared.validation
    log.info("windows: %d training, %d validation", len(training), len(validation))
    pl.seed_everything(config.training.seed, workers=True, verbose=False)
    settings = settle(
        dataclasses.replace(config, data=prepared.config),
        len(training),
        plan.world_size,
        prepared.choices,
        plan.accelerator,
    )
    config = settings.config
    for choice in settings.choices:
        log.info("recipe: %s", choice)
    # Checked before training, so that a bad channel costs no training time.
    # Only the host's first process has the data (global rank 0, which publishes, among them).
    raw_forecast = None if data is None else read_channel(paths, FORECAST_CHANNEL, required=False)
    forecast_input = (
        None
        if data is None or raw_forecast is None
        else prepare_prediction(
            raw_forecast, training.get_parameters(), config.data, data.time_axis, FORECAST_CHANNEL
        )
    )

    check_model_fits(
        training, settings, *process_memory_available(plan, config.training.memory_limit_gb)
    )
    model = build_model(training, settings)
    if plan.global_rank == 0:  # the one process that writes checkpoints, logs and the model
        paths.check_room(planned_writes(model, training.get_parameters(), config, paths))
    stamp = fingerprint(config)
    trainer = build_trainer(settings, plan, paths, stamp)
    datasets = {"training": training, "validation": validation}
    if forecast_input is not None:
        datasets[FORECAST_CHANNEL] = forecast_input.dataset
    speedups = engage(config.speedups, model, trainer, datasets)
    log.info(speedups.line())
    loaders = LoaderSettings(
        batch_size=config.training.batch_size,
        val_batch_size=config.training.val_batch_size,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        seed=config.training.seed,
        num_workers=config.training.num_workers,
        device=trainer.strategy.root_device,
        threads_per_process=plan.threads_per_process,
    )
    return Job(
        settings,
        plan,
        paths,
        data,
        training,
        validation,
        model,
        trainer,
        loaders,
        speedups,
        stamp,
        forecast_input,
    )


def fit(job: Job, resume: Path | None = None) -> None:
    model = torch.compile(job.model, dynamic=True) if job.config.training.compile else job.model
    with cluster_failures(job.plan, job.config.distributed.collective_timeout_s):
        job.trainer.fit(
            model,
            train_dataloaders=make_loader(
                job.training,
                job.loaders,
                train=True,
                vectorised=job.speedups.vectorised["training"],
            ),
            val_dataloaders=make_loader(
                job.validation,
                job.loaders,
                train=False,
                vectorised=job.speedups.vectorised["validation"],
            ),
            ckpt_path=resume,
            weights_only=False,  # our own checkpoints pickle the loss and dataset parameters
        )


@dataclass
class Evaluation:
    """The best checkpoint scored on every validation window, beside the baselines."""

    checkpoint: dict[str, Any]  # the best checkpoint's contents (the saved model is made of it)
    model: JobTemporalFusionTransformer  # loaded from it, as `predict` loads a saved model
    forecast: Forecast  # the validation windows' forecasts, in the data's names
    comparison: Comparison  # against the baselines on the same windows
    metrics: dict[str, Any]  # metrics.json
    interpretation: InterpretationSum | None  # summed in the same pass (report=true)

    @property
    def beats_baselines(self) -> bool:
        return self.comparison.beats_baselines


def evaluate(job: Job, timings: dict[str, float]) -> Evaluation:
    """Global rank 0: the best checkpoint and the baselines on the validation windows, in one
    process, interpreted in the same pass (unless report=false); prints the final metric line."""
    stops.reached("evaluation")
    config, data = job.config, job.data
    assert data is not None  # global rank 0 is a host's first process
    best = Path(job.trainer.checkpoint_callback.best_model_path)
    log.info("evaluating %s on %d validation windows", best.name, len(job.validation))
    checkpoint, model = load_model(best, config.speedups)
    interpretation = (
        InterpretationSum(
            model,
            job.validation,
            largest_series(data.validation, config.data),
            config.data.target,
            user_names(config.data),
        )
        if config.report.report
        else None
    )
    predicted = forecast(
        model,
        job.validation,
        job.speedups.vectorised["validation"],
        device=job.trainer.strategy.root_device,
        observe=interpretation,
        unit=config.data.resolved_target_unit,
    )
    predicted.index = predicted.index.rename(columns=user_names(config.data))  # as in the data
    metrics = score(predicted, config.model.quantiles)
    baselines_started = time.monotonic()
    comparison = against_baselines(
        predicted,
        data.validation,
        config.data,
        config.model.quantiles,
        config.training.baseline_max_series,
        config.training.seed,
        processes=process_cpus(),  # the host's other processes wait for this one
    )
    metrics |= comparison.metrics | {"baselines_s": round(time.monotonic() - baselines_started, 2)}
    (log.info if comparison.beats_baselines else log.warning)("%s", describe(comparison))
    metrics |= {
        "best_epoch": checkpoint["epoch"],
        "epochs_trained": job.trainer.current_epoch,
        "world_size": job.plan.world_size,
        **timings,
    }
    final = {
        f"final_{k}" if k.startswith("val_") else k: v
        for k, v in metrics.items()
        if "val_" in k or k in ("baseline_margin", "beats_baselines")
    }
    print(format_metric_line(final), flush=True)
    return Evaluation(checkpoint, model, predicted, comparison, metrics, interpretation)


def publish(job: Job, evaluation: Evaluation) -> None:
    """The model directory, the `forecast` channel's forecasts, the report and the final
    TensorBoard entries, from the evaluation of the best checkpoint."""
    config, data = job.config, job.data
    assert data is not None  # global rank 0 is a host's first process
    history = next(c for c in job.trainer.callbacks if isinstance(c, MetricLines)).history
    report_data = {"history": history, "data": data_summary(data, config.data)}
    interpretation_s = 0.0  # the time interpreting and choosing the plotted series takes
    if evaluation.interpretation is not None:
        started = time.monotonic()
        report_data |= {
            "interpretation": evaluation.interpretation.result(),
            "series": plotted_series(evaluation.forecast, data.validation, config),
        }
        interpretation_s = evaluation.interpretation.seconds + time.monotonic() - started
    write_model_artifacts(
        job.paths.model_dir,
        evaluation.checkpoint,
        job.training.get_parameters(),
        config,
        data.time_axis,
        evaluation.metrics,
        report_data,
    )
    log.info("model written to %s", job.paths.model_dir)
    if job.forecast_input is not None:
        forecasts = forecast_table(
            evaluation.model,
            job.forecast_input,
            config.data,
            config.model.quantiles,
            data.time_axis,
            job.speedups.vectorised[FORECAST_CHANNEL],
            device=job.trainer.strategy.root_device,
        )
        write_forecasts(forecasts, job.paths.output_data_dir / FORECAST_FILE, config.data)
    figures = (
        write_job_report(job.paths.model_dir, job.paths.output_data_dir, interpretation_s)
        if config.report.report
        else {}
    )
    log_final_results(job.trainer, evaluation.metrics["val_MAE"], figures)


def hold_back(job: Job, evaluation: Evaluation) -> JobError:
    """require_beating_baseline refused the model: its figures go to output/data (where a
    pipeline that must not ship it finds them, and no model), and the cause is returned."""
    path = job.paths.output_data_dir / METRICS_FILE
    with writing("the metrics", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(evaluation.metrics, indent=2))
    metrics = evaluation.metrics
    return JobError(
        f"require_beating_baseline: the TFT's validation MAE ({metrics['val_MAE']:.6g}) is "
        f"{metrics['baseline_margin']:.1%} above the {metrics['best_baseline']} baseline's "
        "on the same windows; no model was written (figures in output/data/metrics.json)."
    )


def run(config: JobConfig, plan: LaunchPlan, paths: JobPaths) -> dict[str, Any]:
    started = time.monotonic()
    stops.reached("data preparation")
    job = build_job(config, plan, paths)
    resume = (
        find_resume_checkpoint(paths.checkpoint_dir, job.fingerprint)
        if job.config.training.resume
        else None
    )
    if resume is not None:
        resume.check_fits(job.model.state_dict(), job.training.get_parameters())
    fit_started = time.monotonic()
    fit(job, None if resume is None else resume.path)
    if (signum := stops.received()) is not None:
        raise stops.Stopped(signum)  # after Lightning's last look: every epoch is checkpointed
    refused: JobError | None = None
    metrics: dict[str, Any] = {}
    if job.trainer.is_global_zero:
        clock = next(c for c in job.trainer.callbacks if isinstance(c, TrainingClock))
        timings = {
            "fit_s": round(time.monotonic() - fit_started, 2),
            "job_s": round(time.monotonic() - started, 2),
            # Since the job's code started: its first training step, and the end of training.
            "first_step_s": None if clock.first_step_s is None else round(clock.first_step_s, 2),
            "trained_s": round(time.monotonic() - STARTED, 2),
            "training_s": round(clock.training_s, 2),  # training batches, validation excluded
        }
        evaluation = evaluate(job, timings)
        metrics = evaluation.metrics
        if job.config.training.require_beating_baseline and not evaluation.beats_baselines:
            refused = hold_back(job, evaluation)
        else:
            publish(job, evaluation)
    if plan.distributed and dist.is_initialized():
        with cluster_failures(plan, job.config.distributed.collective_timeout_s):
            dist.barrier()  # every host finishes together (SageMaker local mode needs it)
    if refused is not None:
        raise refused
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["--help"], ["-h"]):
        print(describe_hyperparameters())
        return 0
    with stops.handling():
        paths = JobPaths.from_env()
        if not launched_by_launcher(os.environ):
            paths.failure_file.unlink(missing_ok=True)  # a stale one from an earlier local run
        failure.reserve(paths.failure_file)
        try:
            stops.rehearse(os.environ)
            # The train channel may hold the configuration file: without it or data, say that.
            channel_data_files(paths, "train", required=True)
            config, config_file = load_config(argv, paths.channels, PRESET_VALUES)
            if config_file:
                log.info("configuration file: %s", config_file)
            paths = paths.with_checkpoint_dir(config.training.checkpoint_dir)
            run(config, plan_for(config, paths), paths)
            return 0
        except (SIGTERMException, stops.Stopped) as err:
            cause = stops.cause(paths.checkpoint_dir, saved=isinstance(err, SIGTERMException))
            log.error("job stopped: %s", cause)
            failure.write_failure(paths.failure_file, JobError(cause))
            return stops.exit_code()
        except Exception as err:  # every failure must reach the failure file
            log.error("job failed: %s", err, exc_info=not isinstance(err, JobError))
            failure.write_failure(paths.failure_file, err)
            return 2 if isinstance(err, JobError) else 1
        finally:
            failure.release(paths.failure_file)
