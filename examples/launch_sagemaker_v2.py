"""Launch the training image as a SageMaker training job (SageMaker Python SDK v2: Estimator).

    pip install -e ".[launch]"                        # sagemaker==2.257.7

    # one GPU instance, then two (the training script forms the cluster itself)
    python examples/launch_sagemaker_v2.py --image-uri URI --role ROLE_ARN \\
        --train s3://BUCKET/tft/data/train --output s3://BUCKET/tft/jobs
    python examples/launch_sagemaker_v2.py ... --instance-count 2 --spot --hp max_epochs=30

    # the PyTorch estimator with the same image, launched by torchrun on every instance
    python examples/launch_sagemaker_v2.py ... --estimator pytorch --instance-count 2

    # hyperparameter tuning: 20 training jobs, 2 at a time, minimising val_MAE
    python examples/launch_sagemaker_v2.py ... --tune 20 --tune-parallel 2

    # SageMaker local mode (Docker; no AWS account needed): an image built locally, 1 or 2 hosts
    python examples/launch_sagemaker_v2.py --local --image-uri tft-sagemaker:local-cpu \\
        --train file://local_test/test_dir/input/data/train --instance-count 2 --hp max_epochs=2

URI is what build_and_push.sh printed. Each cloud job writes under --output/JOB_NAME/:
the model (model.tar.gz), checkpoints/ (synced during the job, restored after a spot
interruption) and tensorboard/. `build_estimator` and `build_tuner` make the requests, which
tests/test_launch_example_v2.py checks without AWS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_common import (
    METRIC_DEFINITIONS,
    OBJECTIVE_TYPE,
    OFFLINE_SDK_CONFIG,
    REPO,
    TENSORBOARD_LOCAL_PATH,
    TUNED_RANGES,
    LaunchSettings,
    build_parser,
    offline_aws_environment,
    settings_from_args,
)

# Local mode: DataLoader workers need more than Docker's default 64 MB of /dev/shm.
LOCAL_SESSION_CONFIG = {"local": {"local_code": True, "container_config": {"shm_size": "2g"}}}


def estimator_kwargs(settings: LaunchSettings, session: Any) -> dict[str, Any]:
    """Keyword arguments shared by both estimators."""
    from sagemaker.debugger import TensorBoardOutputConfig

    kwargs: dict[str, Any] = {
        "image_uri": settings.image_uri,
        "role": settings.role,
        "instance_count": settings.instance_count,
        "instance_type": (
            ("local_gpu" if settings.gpu else "local") if settings.local else settings.instance_type
        ),
        # SageMaker sends every value as a string; say so here rather than rely on str().
        "hyperparameters": {k: str(v) for k, v in settings.hyperparameters.items()},
        "environment": settings.container_environment(),
        "metric_definitions": METRIC_DEFINITIONS,
        "max_run": settings.max_run_s,
        "sagemaker_session": session,
        "base_job_name": "tft",
    }
    if settings.output:
        kwargs["output_path"] = settings.output
    if settings.local:
        return kwargs  # no volumes, spot, checkpoint sync or TensorBoard upload in local mode
    kwargs.update(
        volume_size=settings.volume_size_gb,
        tensorboard_output_config=TensorBoardOutputConfig(
            s3_output_path=f"{settings.job_prefix}/tensorboard",
            container_local_output_path=TENSORBOARD_LOCAL_PATH,
        ),
        # The training writes its own metric lines and TensorBoard files: no Debugger hook
        # or profiler (they would only add rules and uploads to the job).
        debugger_hook_config=False,
        disable_profiler=True,
    )
    if not settings.tune_jobs:
        # /opt/ml/checkpoints is synced here during the job and restored after an
        # interruption. Not for tuning: its training jobs would share one prefix, and each
        # would find the others' checkpoints (of other hyperparameters) at its start.
        kwargs["checkpoint_s3_uri"] = f"{settings.job_prefix}/checkpoints"
    if settings.spot:
        # Spot capacity can be reclaimed at any time; the job resumes from its checkpoints.
        kwargs.update(use_spot_instances=True, max_wait=settings.max_wait_s)
    return kwargs


def build_estimator(settings: LaunchSettings, session: Any, estimator: str = "generic") -> Any:
    """A generic `Estimator`, or the `PyTorch` estimator with torchrun on every instance."""
    kwargs = estimator_kwargs(settings, session)
    if estimator == "generic":
        from sagemaker.estimator import Estimator

        # Runs `train` once per instance; the script forms the cluster itself
        # (master: the first host of resourceconfig.json).
        return Estimator(**kwargs)
    if estimator == "pytorch":
        from sagemaker.pytorch import PyTorch

        # The framework estimator uploads code/ (the same code the image bakes in) and asks
        # the image's launcher for torchrun: one process per GPU on every instance.
        return PyTorch(
            entry_point="train.py",
            source_dir=str(REPO / "code"),
            distribution={"torch_distributed": {"enabled": True}},
            **kwargs,
        )
    raise ValueError(f"unknown estimator {estimator!r}: generic or pytorch")


def build_tuner(settings: LaunchSettings, estimator: Any) -> Any:
    """A `HyperparameterTuner` over TUNED_RANGES that minimises the objective metric."""
    from sagemaker.tuner import CategoricalParameter, ContinuousParameter, HyperparameterTuner

    ranges = {
        name: (
            ContinuousParameter(spec[1], spec[2], scaling_type=spec[3])
            if spec[0] == "continuous"
            else CategoricalParameter(spec[1])
        )
        for name, spec in TUNED_RANGES.items()
    }
    return HyperparameterTuner(
        estimator,
        objective_metric_name=settings.objective,
        objective_type=OBJECTIVE_TYPE,  # the SDK's default is Maximize
        hyperparameter_ranges=ranges,
        metric_definitions=METRIC_DEFINITIONS,
        max_jobs=settings.tune_jobs,
        max_parallel_jobs=settings.tune_parallel,
        base_tuning_job_name="tft-tune",
    )


def inputs(settings: LaunchSettings) -> dict[str, Any]:
    """The channels: URIs (local mode: directories), the train channel in S3 as a TrainingInput
    with its distribution."""
    from sagemaker.inputs import TrainingInput

    channels: dict[str, Any] = dict(settings.channels)
    if not settings.local:
        channels["train"] = TrainingInput(settings.train, distribution=settings.train_distribution)
    return channels


def build_session(settings: LaunchSettings, region: str | None) -> Any:
    """A cloud `Session`, or a `LocalSession` that also works offline with dummy keys."""
    import boto3

    if not settings.local:
        from sagemaker.session import Session

        return Session(boto_session=boto3.Session(region_name=region))
    from sagemaker.local import LocalSession

    offline_aws_environment(region)
    session = LocalSession(
        boto_session=boto3.Session(region_name=region), sagemaker_config=OFFLINE_SDK_CONFIG
    )
    session.config = LOCAL_SESSION_CONFIG
    return session


def parse_args(argv: list[str] | None = None) -> tuple[LaunchSettings, argparse.Namespace]:
    parser = build_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--estimator",
        choices=("generic", "pytorch"),
        default="generic",
        help="generic: Estimator (the script forms the cluster); pytorch: torchrun",
    )
    args = parser.parse_args(argv)
    return settings_from_args(parser, args), args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    estimator = build_estimator(settings, build_session(settings, args.region), args.estimator)
    if settings.tune_jobs:
        tuner = build_tuner(settings, estimator)
        tuner.fit(inputs(settings), job_name=settings.job_name, wait=not args.no_wait)
        if not args.no_wait:
            print(f"best training job: {tuner.best_training_job()}")
        return 0
    estimator.fit(inputs(settings), job_name=settings.job_name, wait=not args.no_wait)
    if not args.no_wait:
        print(f"model: {estimator.model_data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
