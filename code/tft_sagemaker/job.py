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
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pytorch_forecasting import TimeSeriesDataSet

from . import STARTED
from .artifacts import METRICS_FILE, planned_writes, write_model_artifacts
from .baselines import (
    BaselineForecasts,
    Comparison,
    baseline_forecasts,
    describe,
    score_baselines,
)
from .channels import channel_data_files, read_channel
from .combination import (
    CLASSICAL_MEMBERS,
    TFT,
    BacktestMembers,
    Combination,
    apply_to_baselines,
    backtest_members,
    choose,
    describe_shipped,
)
from .combination import describe as describe_combination
from .config import DataConfig, JobConfig, describe_hyperparameters, job_season, load_config
from .console import setup_logging
from .dataset import (
    build_columnar_training,
    build_columnar_validation,
    known_categories,
    user_names,
)
from .errors import JobError, writing
from .evaluate import Forecast, forecast, same_keys, score
from .fits_ahead import (
    FitsAhead,
    backtest_histories,
    classical_everywhere,
    classical_windows,
    start_fits_ahead,
    validation_histories,
)
from .host_panel import HostPanel, Prepared, bytes_per_row, release_pages
from .interpret import InterpretationSum, largest_of, largest_totals, series_names
from .job_data import (
    BACKTEST_MAX_SERIES,
    Backtest,
    JobData,
    carve_backtest,
    describe_frame,
    lean,
    load_job_data,
)
from .loaders import HostWindows, LoaderSettings, make_loader
from .memory import check_host_memory, process_memory_available
from .model import JobTemporalFusionTransformer, build_model, check_model_fits, load_model
from .predict import PredictionInput, forecast_table, prepare_prediction, write_forecasts
from .presets import PRESET_VALUES
from .recipe import Settings, resolve_data, settle
from .report import (
    check_report_series,
    data_summary,
    merged_summary,
    plotted_series,
    plotted_windows,
    write_job_report,
)
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
from .sagemaker.paths import SHARDED, JobPaths
from .shares import Agreement, Hosts, everyone, from_zero, merged_normalizer, to_zero
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
    hosts: Hosts  # this host's share, and the exchange with the others (kept open to the end)
    data: JobData | None  # this host's share, in its first process only (the others map it)
    training: TimeSeriesDataSet
    validation: TimeSeriesDataSet
    # ensemble=true: the backtest windows, which the TFT early-stops on and the combination's
    # weights are chosen on (None: the TFT alone, early-stopped on the validation windows)
    backtest: TimeSeriesDataSet | None
    windows: dict[str, HostWindows]  # of the training and validation datasets on every host
    parameters: dict[str, Any]  # the training dataset's, with every host's series scales
    model: JobTemporalFusionTransformer
    trainer: pl.Trainer
    loaders: LoaderSettings
    speedups: Report  # what the speed-up layer engaged, batching of each dataset included
    fingerprint: dict[str, Any]  # what checkpoints are stamped with and resumed by
    forecast_input: PredictionInput | None  # the `forecast` channel, checked
    ahead: FitsAhead | None = None  # the evaluation's classical fits, started with the datasets

    @property
    def config(self) -> JobConfig:
        return self.settings.config


def prepare_data(
    config: JobConfig, plan: LaunchPlan, paths: JobPaths, hosts: Hosts
) -> tuple[JobData | None, Prepared]:
    """data → datasets, once per host: the host's first process reads, validates and builds
    them into the host's panel (host_panel.py), the others map it (and get no JobData). On
    several hosts, of the host's share, with what the hosts agree on (shares.py).

    A panel this host prepared before is taken as it is; on several hosts that holds only when
    every host takes its own (the same inputs everywhere): a host that prepares anew waits for
    the others' agreement until collective_timeout_s. A host that fails to prepare fails the
    others with its cause."""
    panel = HostPanel.for_job(paths, config.data, config.training.ensemble)
    if plan.local_rank != 0:
        return None, panel.wait(config.distributed.collective_timeout_s)
    with hosts.telling_the_others(), panel.preparing():
        data = load_job_data(paths, config.data, hosts)
        log.info("training data: %s", describe_frame(data.train, config.data))
        data_config, choices = resolve_data(config.data, data.train, hosts.gather)
        if config.report.report:
            check_report_series(
                data.validation, dataclasses.replace(config, data=data_config), hosts.gather
            )
        carved = carve(data.train, data_config, config.training.ensemble, hosts)
        if panel.complete():
            log.info("data: the panel this host prepared before, in %s", panel.directory)
            return lean(kept_for_evaluation(data, data_config, carved), data_config), panel.load()
        agreement = Agreement(hosts.gather) if hosts.nodes > 1 else None
        categories = known_categories([data.train, data.validation], data_config)
        if agreement is not None:
            categories = agreement.categories(categories)
        # Each frame is made when its dataset is built and let go after, as are the pages of
        # the panel written (`release`): the host's peak is then the largest of them, not
        # their sum. JobData keeps only the rows and columns read later (`kept_for_evaluation`,
        # `lean`): the panel holds the rest. The training frame goes before its dataset is
        # built: its `fit` rows and the backtest series' rows are all that is read of it (at
        # 20 million rows the host's peak was the training frame, its `fit` copy and the
        # arrays being written).
        fit = data.train if carved is None else data.train[carved.fit]
        windows = None if carved is None else data.train[carved.windows]
        data = kept_for_evaluation(data, data_config, carved)
        training = build_columnar_training(
            fit, data_config, panel.allocate("training"), categories, agreement
        )
        del fit
        panel.release()
        log.info("memory: %s", bytes_per_row(training))
        backtest = (
            None
            if windows is None
            else build_columnar_validation(
                training, windows, data_config, panel.allocate("backtest")
            )
        )
        del windows
        validation = build_columnar_validation(
            training, data.validation, data_config, panel.allocate("validation")
        )
        data = lean(data, data_config, ["validation"])
        panel.release()
        panel.publish(Prepared(data_config, choices, training, validation, backtest))
    # Mapped afresh, as the host's other processes map it: the pages written stay in the page
    # cache, and this process holds only those it reads again (not the whole panel, nor the
    # windows' index in its own memory).
    return data, panel.load()


def carve(train: pd.DataFrame, config: DataConfig, ensemble: bool, hosts: Hosts) -> Backtest | None:
    """ensemble=true: the backtest windows of this host's series, of at most its share of
    BACKTEST_MAX_SERIES series; None where any host has no series long enough for one (every
    host then trains on every training row and ships the TFT alone)."""
    if not ensemble:
        return None
    sample = -(-BACKTEST_MAX_SERIES // hosts.nodes)
    carved = carve_backtest(train, config, sample)
    short = [n for n, has in enumerate(hosts.gather("backtest", carved is not None)) if not has]
    if short:
        log.warning(
            "ensemble: %sno series is long enough for a backtest window of %d steps before "
            "its validation window: the TFT alone is shipped",
            "" if hosts.nodes == 1 else f"on node(s) {', '.join(map(str, short))}, ",
            config.max_prediction_length,
        )
        return None
    assert carved is not None
    if carved.series > sample:
        log.info(
            "ensemble: the backtest windows of %d of the %d series that have one%s (a fixed "
            "sample: enough for the weights and early stopping); every series trains "
            "without its backtest steps",
            sample,
            carved.series,
            "" if hosts.nodes == 1 else " on this host",
        )
    return carved


def kept_for_evaluation(data: JobData, config: DataConfig, carved: Backtest | None) -> JobData:
    """What a host's first process keeps of the training rows once the panel holds their
    datasets: the summary of what was read, and only the rows of the backtest's series, lean
    (the combination's histories; none without a backtest). The validation frame stays whole
    (the baselines' histories) until its dataset is built. At 20 million rows the lean
    training frame alone is about 0.6 GB."""
    summary = data_summary(data, config)
    kept = lean(data, config, ["train"])
    train = kept.train[carved.windows] if carved is not None else kept.train.iloc[:0]
    return dataclasses.replace(kept, train=train, summary=summary)


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
    sharded = paths.distribution("train") == SHARDED
    hosts = Hosts.of_job(plan, sharded, config.distributed.collective_timeout_s)
    if plan.num_nodes > 1:
        log.info(
            "hosts: this host trains on %s",
            "the files of its shard (ShardedByS3Key)"
            if sharded
            else f"the series whose id hash falls to node {plan.node_rank} of {plan.num_nodes}",
        )
    data, prepared = prepare_data(config, plan, paths, hosts)
    training, validation, backtest = prepared.training, prepared.validation, prepared.backtest
    own = {"training": training, "validation": validation, "backtest": backtest}
    counts = hosts.gather("windows", [0 if d is None else len(d) for d in own.values()])
    windows = {
        name: HostWindows(tuple(c[i] for c in counts), plan.node_rank)
        for i, (name, dataset) in enumerate(own.items())
        if dataset is not None  # a backtest on every host or on none (`carve`)
    }
    log.info(
        "windows: %d training, %d validation%s%s",
        windows["training"].total,
        windows["validation"].total,
        f" ({len(training)} and {len(validation)} on this host)" if plan.num_nodes > 1 else "",
        ""
        if backtest is None
        else f", {windows['backtest'].total} backtest (the TFT early-stops there)",
    )
    parameters = training.get_parameters()
    parameters["target_normalizer"] = merged_normalizer(
        parameters["target_normalizer"], hosts.gather
    )
    pl.seed_everything(config.training.seed, workers=True, verbose=False)
    settings = settle(
        dataclasses.replace(config, data=prepared.config),
        windows["training"].total,
        plan.world_size,
        prepared.choices,
        plan.accelerator,
    )
    config = settings.config
    for choice in settings.choices:
        log.info("recipe: %s", choice)
    # The evaluation's classical fits, in worker processes while the job gets ready and trains.
    ahead = start_fits_ahead(
        config, plan, hosts, data, validation, backtest, windows.get("backtest")
    )
    # Checked before training, so that a bad channel costs no training time.
    # Only the host's first process has the data (global rank 0, which publishes, among them).
    raw_forecast = None if data is None else read_channel(paths, FORECAST_CHANNEL, required=False)
    forecast_input = (
        None
        if data is None or raw_forecast is None
        else prepare_prediction(
            raw_forecast, parameters, config.data, data.time_axis, FORECAST_CHANNEL
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
    if backtest is not None:
        datasets["backtest"] = backtest
    if forecast_input is not None:
        datasets[FORECAST_CHANNEL] = forecast_input.dataset
    speedups = engage(config.speedups, model, trainer, datasets)
    log.info(speedups.line())
    loaders = LoaderSettings(
        batch_size=config.training.batch_size,
        val_batch_size=config.training.val_batch_size,
        rank=trainer.local_rank,
        world_size=plan.devices,
        seed=config.training.seed,
        num_workers=config.training.num_workers,
        device=trainer.strategy.root_device,
        threads_per_process=plan.threads_per_process,
    )
    return Job(
        settings,
        plan,
        paths,
        hosts,
        data,
        training,
        validation,
        backtest,
        windows,
        parameters,
        model,
        trainer,
        loaders,
        speedups,
        stamp,
        forecast_input,
        ahead,
    )


def fit(job: Job, resume: Path | None = None) -> None:
    model = torch.compile(job.model, dynamic=True) if job.config.training.compile else job.model
    early = "validation" if job.backtest is None else "backtest"  # the windows it early-stops on
    with cluster_failures(job.plan, job.config.distributed.collective_timeout_s):
        job.trainer.fit(
            model,
            train_dataloaders=make_loader(
                job.training,
                job.loaders,
                train=True,
                vectorised=job.speedups.vectorised["training"],
                hosts=job.windows["training"],
            ),
            val_dataloaders=make_loader(
                job.validation if job.backtest is None else job.backtest,
                job.loaders,
                train=False,
                vectorised=job.speedups.vectorised[early],
                hosts=job.windows[early],
            ),
            ckpt_path=resume,
            weights_only=False,  # our own checkpoints pickle the loss and dataset parameters
        )
    # The evaluation reads the validation and backtest windows only: the training windows'
    # pages that training read leave this process (every process maps them).
    release_pages(job.training)


@dataclass
class Evaluation:
    """The best checkpoint scored on every validation window, beside the baselines, and the
    forecast shipped: the combination (ensemble=true) or the TFT alone."""

    checkpoint: dict[str, Any]  # the best checkpoint's contents (the saved model is made of it)
    model: JobTemporalFusionTransformer  # loaded from it, as `predict` loads a saved model
    forecast: Forecast  # the shipped forecast of the validation windows, in the data's names
    combination: Combination | None  # what made it (None: the TFT alone)
    comparison: Comparison  # the shipped forecast against the baselines on the same windows
    metrics: dict[str, Any]  # metrics.json
    interpretation: InterpretationSum | None  # summed in the same pass (report=true)
    data_summary: dict[str, Any]  # of every host's data
    plotted_rows: pd.DataFrame | None  # validation rows of the series the report plots

    @property
    def beats_baselines(self) -> bool:
        return self.comparison.beats_baselines


@dataclass
class RankShare:
    """One process's part of the final evaluation: the forecasts of its share of its host's
    validation windows and its interpretation sums; from a host's first process (the one with
    the host's data) also the baselines' forecasts of every window of the host and its data
    summary."""

    forecast: Forecast
    interpretation: dict[str, Any] | None  # InterpretationSum.state()
    focus: list[str]  # the series interpreted one by one (the same on every rank)
    baselines: BaselineForecasts | None
    baselines_s: float
    data_summary: dict[str, Any] | None


def _rows_of(frame: pd.DataFrame, names: list[str] | None, config: DataConfig) -> pd.DataFrame:
    """The rows of the series `names` (as series_names writes them) in `frame`. Each series is
    named once, not each row: a name per row of a panel of millions is gigabytes of strings."""
    if names is None:
        return frame.iloc[:0]
    keys = pd.MultiIndex.from_frame(frame[config.group_ids])
    series = keys.unique()
    named = series_names(series.to_frame(index=False), config.group_ids).isin(names)
    return frame[keys.isin(series[named.to_numpy()])]


def evaluate_share(
    job: Job, model: JobTemporalFusionTransformer, combination: Combination | None = None
) -> tuple[RankShare, InterpretationSum | None]:
    """Every process: its share of the final evaluation (`RankShare`), and its interpretation
    sums (report=true). The interpreted series and the classical baselines' sample are agreed
    across hosts, so that the shares add up to one process's evaluation of every window.
    `combination`: where ETS and Theta are among its members, they forecast every window (the
    combination is shipped for every window)."""
    config, data = job.config, job.config.data
    focus = None
    if job.data is not None:  # the largest series of every host
        focus = largest_of(job.hosts.gather("largest", largest_totals(job.data.validation, data)))
    focus = from_zero(focus)
    interpretation = (
        InterpretationSum(model, job.validation, focus, data.target, user_names(data))
        if config.report.report
        else None
    )
    share = forecast(
        model,
        job.validation,
        job.speedups.vectorised["validation"],
        device=job.trainer.strategy.root_device,
        observe=interpretation,
        unit=data.resolved_target_unit,
        share=(job.loaders.rank, job.loaders.world_size),
    )
    share.index = share.index.rename(columns=user_names(data))  # as in the data
    state = None if interpretation is None else interpretation.state()
    keys = everyone((share.keys, share.actuals.shape[1]))
    if job.data is None:
        return RankShare(share, state, focus, None, 0.0, None), interpretation
    # The host's first process: the baselines of every window of its host.
    started = time.monotonic()
    devices = job.plan.devices
    hosts = [  # every host's windows: its processes' shares one after the other
        tuple(np.concatenate(k) for k in zip(*(c for c, _ in keys[r : r + devices]), strict=True))
        for r in range(0, len(keys), devices)
    ]
    node = job.plan.node_rank
    horizon = max(h for _, h in keys)
    max_series = config.training.baseline_max_series
    everywhere = combination is not None and any(
        n in combination.candidates for n in CLASSICAL_MEMBERS
    )
    fit = (
        np.arange(len(hosts[node][0]))
        if everywhere
        else classical_windows(hosts, node, max_series, config.training.seed)
    )
    baselines = baseline_forecasts(
        validation_histories(job.data, job.validation, hosts[node], data),
        horizon,
        job_season(data),
        fit,
        classical=everywhere or max_series > 0,
        processes=devices,  # the host's other processes wait for it
        fits=None if job.ahead is None else job.ahead.take_validation(hosts, horizon, fit),
    )
    summary = job.data.summary
    seconds = time.monotonic() - started
    return RankShare(share, state, focus, baselines, seconds, summary), interpretation


def choose_combination(job: Job, model: JobTemporalFusionTransformer) -> tuple[Combination, float]:
    """ensemble=true: every process forecasts its share of its host's backtest windows with the
    TFT, each host's first process forecasts the host's windows with the other members (from
    its training rows), and global rank 0 chooses the weights on every host's windows; every
    process gets the combination (the host's first processes forecast their validation windows
    with its members), rank 0 with the seconds it took."""
    assert job.backtest is not None
    started = time.monotonic()
    config, data = job.config, job.config.data
    season = job_season(data)
    share = forecast(
        model,
        job.backtest,
        job.speedups.vectorised["backtest"],
        device=job.trainer.strategy.root_device,
        unit=data.resolved_target_unit,
        share=(job.loaders.rank, job.loaders.world_size),
    )
    share.index = share.index.rename(columns=user_names(data))
    members = None
    if job.data is not None:  # the host's first process: it holds the host's training rows
        keys, longest, histories = backtest_histories(job.data, job.backtest, data)
        horizon = max(job.hosts.gather("backtest horizon", longest))
        fits = None if job.ahead is None else job.ahead.take_backtest(keys, horizon)
        classical = classical_everywhere(config, job.windows["backtest"])
        # The host's other processes wait for it.
        members = (
            keys,
            backtest_members(histories, horizon, season, classical, job.plan.devices, fits),
        )
    gathered = to_zero((share, members))
    combination = None
    if gathered is not None:
        devices = job.plan.devices
        hosts = [  # each host's windows in one process's order, in node order
            Forecast.concat([s for s, _ in gathered[r : r + devices]])
            for r in range(0, len(gathered), devices)
        ]
        whole = Forecast.concat([h.take(h.order()) for h in hosts])
        parts = [m for _, m in gathered if m is not None]
        keys = tuple(np.concatenate(k) for k in zip(*(k for k, _ in parts), strict=True))
        if not same_keys([whole.keys], [keys]):
            raise RuntimeError("the backtest's forecasts and its members' are of other windows")
        combination = choose(
            whole.quantiles.numpy(),
            BacktestMembers.concat([m for _, m in parts]),
            whole.actuals.numpy(),
            whole.lengths.numpy(),
            season,
            config.model.quantiles,
        )
        log.info("%s", describe_combination(combination))
    return from_zero(combination), time.monotonic() - started


def _tft_metrics(tft: dict[str, Any], comparison: Comparison) -> dict[str, Any]:
    """The TFT alone's figures under `tft_` names, beside the shipped forecast's."""
    own = {f"tft_{k}": v for k, v in tft.items() if k.startswith("val_")}
    return own | {
        "tft_val_MASE": comparison.metrics["val_MASE"],
        "tft_best_baseline": comparison.best_baseline,
        "tft_baseline_margin": comparison.margin,
        "tft_beats_baselines": comparison.beats_baselines,
    }


def evaluate(job: Job, timings: dict[str, float]) -> Evaluation | None:
    """Every process forecasts its share of the validation windows with the best checkpoint,
    and each host's first process forecasts the host's windows with the baselines
    (`evaluate_share`); global rank 0 gathers the shares, scores them as one process would
    score every window, prints the final metric line and returns the evaluation (the other
    ranks None). With ensemble=true the combination's weights are chosen on the backtest windows
    first (`choose_combination`), and the combination is scored beside the TFT alone, its
    classical members' forecasts those of the baselines; the classical fits started before
    training (`job.ahead`, fits_ahead.py) are taken where they are those of these windows."""
    config = job.config
    quantiles = config.model.quantiles
    zero = job.trainer.is_global_zero
    best = Path(job.trainer.checkpoint_callback.best_model_path)
    if zero:
        stops.reached("evaluation")  # a rehearsed stop at evaluation hits one process
        log.info(
            "evaluating %s on %d validation windows", best.name, job.windows["validation"].total
        )
    # The best checkpoint is on the first host's disk: the other processes get its bytes.
    content = from_zero(best.read_bytes() if zero else None) if job.plan.world_size > 1 else best
    checkpoint, model = load_model(content, config.speedups)
    chosen = None if job.backtest is None else choose_combination(job, model)
    combination = None if chosen is None else chosen[0]
    share, interpretation = evaluate_share(job, model, combination)
    gathered = to_zero(share)
    if not zero:  # the rows of the series rank 0 plots
        plotted = from_zero(None)
        to_zero(None if job.data is None else _rows_of(job.data.validation, plotted, config.data))
        return None
    assert job.data is not None and gathered is not None  # rank 0 is a host's first process
    whole = Forecast.concat([p.forecast for p in gathered])
    hosts = [p for p in gathered if p.baselines is not None]  # in node order
    order = whole.order() if len(hosts) > 1 else np.arange(len(whole.index))
    tft = whole.take(order)
    forecasts = BaselineForecasts.concat([p.baselines for p in hosts], order)
    predicted = tft  # the shipped forecast
    if combination is not None:
        predicted = apply_to_baselines(combination, tft, forecasts)

    def against(result: Forecast) -> Comparison:
        return score_baselines(
            tft=result.quantiles[..., list(quantiles).index(0.5)].numpy(),
            naive=tft.baseline.numpy(),
            actuals=tft.actuals.numpy(),
            lengths=tft.lengths.numpy(),
            forecasts=forecasts,
        )

    comparison = against(predicted)
    tft_comparison = comparison if combination is None else against(tft)
    metrics = score(predicted, quantiles) | comparison.metrics
    metrics |= _tft_metrics(score(tft, quantiles), tft_comparison)
    metrics["baselines_s"] = round(max(p.baselines_s for p in hosts), 2)
    if combination is None:
        (log.info if comparison.beats_baselines else log.warning)("%s", describe(comparison))
        metrics["shipped"] = "tft"
    else:
        log.info("%s", describe(tft_comparison))
        (log.info if comparison.beats_baselines else log.warning)(
            "%s", describe_shipped(comparison, combination)
        )
        assert job.backtest is not None and chosen is not None
        metrics |= {
            "shipped": "ensemble",
            "ensemble_weights": combination.weights,
            **{f"weight_{n}": combination.weights.get(n, 0.0) for n in combination.candidates},
            "backtest_MAE": combination.backtest,
            "tft_backtest_MAE": combination.backtest[TFT],
            "backtest_windows": job.windows["backtest"].total,
            "backtest_origins": combination.origins,
            "tft_evidence": combination.evidence,
            "backtest_s": round(chosen[1], 2),
        }
    plotted = None
    if interpretation is not None:
        for other in gathered[1:]:
            interpretation.add(other.interpretation, share.focus)
        names = series_names(predicted.index, config.data.group_ids)
        plotted = sorted({names.iloc[i] for i in plotted_windows(predicted, config)})
    plotted = from_zero(plotted)
    rows = to_zero(_rows_of(job.data.validation, plotted, config.data))
    metrics |= {
        "best_epoch": checkpoint["epoch"],
        "epochs_trained": job.trainer.current_epoch,
        "world_size": job.plan.world_size,
        **timings,
    }
    final = {
        f"final_{k}" if k.startswith("val_") else k: v
        for k, v in metrics.items()
        if "val_" in k
        or k.startswith("weight_")
        or k in ("baseline_margin", "beats_baselines", "tft_baseline_margin", "tft_beats_baselines")
    }
    print(format_metric_line(final), flush=True)
    return Evaluation(
        checkpoint,
        model,
        predicted,
        combination,
        comparison,
        metrics,
        interpretation,
        merged_summary([p.data_summary for p in hosts]),
        None
        if plotted is None
        else pd.concat([r for r in rows or [] if r is not None], ignore_index=True),
    )


def publish(job: Job, evaluation: Evaluation) -> None:
    """The model directory, the `forecast` channel's forecasts, the report and the final
    TensorBoard entries, from the evaluation of the best checkpoint."""
    config, data = job.config, job.data
    assert data is not None  # global rank 0 is a host's first process
    history = next(c for c in job.trainer.callbacks if isinstance(c, MetricLines)).history
    report_data = {"history": history, "data": evaluation.data_summary}
    interpretation_s = 0.0  # the time interpreting and choosing the plotted series takes
    if evaluation.interpretation is not None:
        started = time.monotonic()
        report_data |= {
            "interpretation": evaluation.interpretation.result(),
            "series": plotted_series(evaluation.forecast, evaluation.plotted_rows, config),
        }
        interpretation_s = evaluation.interpretation.seconds + time.monotonic() - started
    write_model_artifacts(
        job.paths.model_dir,
        evaluation.checkpoint,
        job.parameters,
        config,
        data.time_axis,
        evaluation.metrics,
        report_data,
        evaluation.combination,
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
            combination=evaluation.combination,
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
    shipped = "TFT's" if evaluation.combination is None else "shipped forecast's (the combination)"
    return JobError(
        f"require_beating_baseline: the {shipped} validation MAE ({metrics['val_MAE']:.6g}) is "
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
    clock = next(c for c in job.trainer.callbacks if isinstance(c, TrainingClock))
    timings = {
        "fit_s": round(time.monotonic() - fit_started, 2),
        "job_s": round(time.monotonic() - started, 2),
        # Since the job's code started: its first training step, and the end of training.
        "first_step_s": None if clock.first_step_s is None else round(clock.first_step_s, 2),
        "trained_s": round(time.monotonic() - STARTED, 2),
        "training_s": round(clock.training_s, 2),  # training batches, validation excluded
    }
    with cluster_failures(plan, job.config.distributed.collective_timeout_s):
        evaluation = evaluate(job, timings)  # every host its share; global rank 0 the whole
    if evaluation is not None:
        metrics = evaluation.metrics
        if job.config.training.require_beating_baseline and not evaluation.beats_baselines:
            refused = hold_back(job, evaluation)
        else:
            publish(job, evaluation)
    if plan.distributed and dist.is_initialized():
        with cluster_failures(plan, job.config.distributed.collective_timeout_s):
            dist.barrier()  # every host finishes together (SageMaker local mode needs it)
        # Left to the interpreter's exit, gloo's worker threads aborted a host's process after
        # its work was done (exit 134, "terminate called without an active exception" in the
        # two-node compose run; pytorch/pytorch#190489).
        dist.destroy_process_group()
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
