"""Launch the training image as a SageMaker training job (SageMaker Python SDK v3: ModelTrainer).

    pip install -r examples/requirements-sdk3.txt     # sagemaker==3.27.0, in its own venv

    # one GPU instance, then two (the training script forms the cluster itself)
    python examples/launch_sagemaker_v3.py --image-uri URI --role ROLE_ARN \\
        --train s3://BUCKET/tft/data/train --output s3://BUCKET/tft/jobs
    python examples/launch_sagemaker_v3.py ... --instance-count 2 --spot --hp max_epochs=30

    # hyperparameter tuning: 20 training jobs, 2 at a time, minimising val_MAE
    python examples/launch_sagemaker_v3.py ... --tune 20 --tune-parallel 2

    # SageMaker local mode (Docker; no AWS account needed): an image built locally, 1 or 2 hosts
    python examples/launch_sagemaker_v3.py --local --image-uri tft-sagemaker:local-cpu \\
        --train local_test/test_dir/input/data/train --instance-count 2 --hp max_epochs=2

URI is what build_and_push.sh printed. Each cloud job writes under --output/JOB_NAME/: the model
(model.tar.gz), checkpoints/ (synced during the job, restored after a spot interruption) and
tensorboard/. `build_trainer` and `build_tuner` make the requests, which
tests/test_launch_example_v3.py checks without AWS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_common import (
    CHECKPOINT_LOCAL_PATH,
    METRIC_DEFINITIONS,
    OBJECTIVE_TYPE,
    OFFLINE_SDK_CONFIG,
    TENSORBOARD_LOCAL_PATH,
    TUNED_RANGES,
    LaunchSettings,
    build_parser,
    offline_aws_environment,
    settings_from_args,
)


def build_session(settings: LaunchSettings, region: str | None) -> Any:
    """A SageMaker `Session`; in local mode offline: telemetry off, dummy keys if none are set."""
    import boto3
    from sagemaker.core.helper.session_helper import Session

    if not settings.local:
        return Session(boto_session=boto3.Session(region_name=region))
    offline_aws_environment(region)
    return Session(
        boto_session=boto3.Session(region_name=region), sagemaker_config=OFFLINE_SDK_CONFIG
    )


def build_trainer(settings: LaunchSettings, session: Any) -> Any:
    """A `ModelTrainer` for the image: SageMaker runs its default command (`train`) once per
    instance, and the training script forms the cluster itself (master: the first host)."""
    from sagemaker.core.shapes import MetricDefinition
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        OutputDataConfig,
        StoppingCondition,
        TensorBoardOutputConfig,
    )
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    output: dict[str, Any] = {}
    if settings.local:
        # Local mode writes the model (compressed_artifacts/model.tar.gz) under this directory.
        root = (settings.output or ".").removeprefix("file://")
        output["local_container_root"] = str(Path(root).resolve())
        compute = Compute(
            instance_type="local_gpu" if settings.gpu else "local_cpu",
            instance_count=settings.instance_count,
        )
        stopping = StoppingCondition(max_runtime_in_seconds=settings.max_run_s)
    else:
        prefix = settings.job_prefix  # OUTPUT/JOB_NAME (an error without --output)
        compute = Compute(
            instance_type=settings.instance_type,
            instance_count=settings.instance_count,
            volume_size_in_gb=settings.volume_size_gb,
            # Spot capacity can be reclaimed at any time; the job resumes from its checkpoints.
            enable_managed_spot_training=settings.spot or None,
        )
        stopping = StoppingCondition(
            max_runtime_in_seconds=settings.max_run_s,
            max_wait_time_in_seconds=settings.max_wait_s if settings.spot else None,
        )
        output["output_data_config"] = OutputDataConfig(s3_output_path=settings.output)
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER if settings.local else Mode.SAGEMAKER_TRAINING_JOB,
        sagemaker_session=session,
        role=settings.role,
        training_image=settings.image_uri,
        # The job's name starts with it, as do its checkpoint and TensorBoard prefixes.
        base_job_name=settings.job_name,
        compute=compute,
        stopping_condition=stopping,
        # SageMaker sends every value as a string; say so here rather than rely on the SDK.
        hyperparameters={k: str(v) for k, v in settings.hyperparameters.items()},
        environment=settings.container_environment(),
        **output,
    ).with_metric_definitions(
        [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in METRIC_DEFINITIONS]
    )
    if settings.local:
        return trainer  # no spot, checkpoint sync or TensorBoard upload in local mode
    if not settings.tune_jobs:
        # /opt/ml/checkpoints is synced here during the job and restored after an
        # interruption. Not for tuning: its training jobs would share one prefix, and each
        # would find the others' checkpoints (of other hyperparameters) at its start.
        trainer.with_checkpoint_config(
            CheckpointConfig(s3_uri=f"{prefix}/checkpoints", local_path=CHECKPOINT_LOCAL_PATH)
        )
    return trainer.with_tensorboard_output_config(
        TensorBoardOutputConfig(
            s3_output_path=f"{prefix}/tensorboard", local_path=TENSORBOARD_LOCAL_PATH
        )
    )


def build_tuner(settings: LaunchSettings, trainer: Any) -> Any:
    """A `HyperparameterTuner` over TUNED_RANGES that minimises the objective metric."""
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter
    from sagemaker.train.tuner import HyperparameterTuner

    ranges = {
        name: (
            ContinuousParameter(spec[1], spec[2], scaling_type=spec[3])
            if spec[0] == "continuous"
            else CategoricalParameter(spec[1])
        )
        for name, spec in TUNED_RANGES.items()
    }
    return HyperparameterTuner(
        model_trainer=trainer,
        objective_metric_name=settings.objective,
        objective_type=OBJECTIVE_TYPE,  # the SDK's default is Maximize
        hyperparameter_ranges=ranges,
        # The tuner reads the training jobs' logs with its own copy of the definitions.
        metric_definitions=METRIC_DEFINITIONS,
        max_jobs=settings.tune_jobs,
        max_parallel_jobs=settings.tune_parallel,
        base_tuning_job_name="tft-tune",
    )


def input_data(settings: LaunchSettings) -> list[Any]:
    """The channels; in local mode a path (file:// or plain) to a directory on this machine."""
    from sagemaker.core.training.configs import InputData, S3DataSource

    def source(name: str, uri: str) -> Any:
        if settings.local:
            return uri.removeprefix("file://")
        if name == "train":
            return S3DataSource(
                s3_data_type="S3Prefix",
                s3_uri=uri,
                s3_data_distribution_type=settings.train_distribution,
            )
        return uri

    return [
        InputData(channel_name=name, data_source=source(name, uri))
        for name, uri in settings.channels.items()
    ]


def tuning_inputs(settings: LaunchSettings) -> list[Any]:
    """The channels for a tuning job: its tuner reads an InputData's source as a URI only, and
    takes Channels as they are (the train channel's distribution included)."""
    from sagemaker.core.shapes import Channel, DataSource, S3DataSource

    return [
        Channel(
            channel_name=name,
            data_source=DataSource(
                s3_data_source=S3DataSource(
                    s3_data_type="S3Prefix",
                    s3_uri=uri,
                    s3_data_distribution_type=(
                        settings.train_distribution if name == "train" else "FullyReplicated"
                    ),
                )
            ),
        )
        for name, uri in settings.channels.items()
    ]


def parse_args(argv: list[str] | None = None) -> tuple[LaunchSettings, argparse.Namespace]:
    parser = build_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    return settings_from_args(parser, args), args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    trainer = build_trainer(settings, build_session(settings, args.region))
    if settings.tune_jobs:
        tuner = build_tuner(settings, trainer)
        tuner.tune(
            inputs=tuning_inputs(settings), job_name=settings.job_name, wait=not args.no_wait
        )
        if not args.no_wait:
            print(f"best training job: {tuner.best_training_job()}")
        return 0
    trainer.train(input_data_config=input_data(settings), wait=not args.no_wait)
    if not args.no_wait and not settings.local:
        print(f"model: {trainer._latest_training_job.model_artifacts.s3_model_artifacts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
