"""Launch the training image as a SageMaker training job (SageMaker Python SDK v2).

    pip install -e ".[launch]"                        # sagemaker==2.257.7

    # one GPU instance, then two (the training script forms the cluster itself)
    python examples/launch_sagemaker.py --image-uri URI --role ROLE_ARN \\
        --train s3://BUCKET/tft/data/train --output s3://BUCKET/tft/jobs
    python examples/launch_sagemaker.py ... --instance-count 2 --spot --hp max_epochs=30

    # the PyTorch estimator with the same image, launched by torchrun on every instance
    python examples/launch_sagemaker.py ... --estimator pytorch --instance-count 2

    # SageMaker local mode (Docker; no AWS account needed): an image built locally
    python examples/launch_sagemaker.py --local --image-uri tft-sagemaker:local-cpu \\
        --train file://local_test/test_dir/input/data/train --hp max_epochs=2

URI is what build_and_push.sh printed. Each cloud job writes under --output/JOB_NAME/:
the model (model.tar.gz), checkpoints/ (synced during the job, restored after a spot
interruption) and tensorboard/. The estimators are built by `build_estimator`, which
tests/test_launch_example.py checks without AWS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "code"))

from tft_sagemaker.metrics import METRIC_DEFINITIONS  # noqa: E402

# Where the training code writes TensorBoard event files (the SDK's default local path).
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"
LOCAL_INSTANCE_TYPES = ("local", "local_gpu")
# Local mode: DataLoader workers need more than Docker's default 64 MB of /dev/shm; the SDK's
# telemetry and its S3/STS look-ups are switched off, so it runs offline with dummy keys.
LOCAL_SESSION_CONFIG = {"local": {"local_code": True, "container_config": {"shm_size": "2g"}}}
OFFLINE_SDK_CONFIG = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}


@dataclass
class LaunchSettings:
    """What a launch needs; `job_name` also names the job's checkpoint and TensorBoard prefix."""

    image_uri: str
    role: str
    train: str  # s3://... (or file://... in local mode): the `train` channel
    validation: str | None = None  # optional `validation` channel
    output: str | None = None  # s3://BUCKET/PREFIX (or file://DIR in local mode)
    instance_type: str = "ml.g5.2xlarge"
    instance_count: int = 1
    estimator: str = "generic"  # "generic": Estimator; "pytorch": PyTorch + torch_distributed
    spot: bool = False
    max_run_s: int = 4 * 3600
    volume_size_gb: int = 30
    hyperparameters: dict[str, str] = field(default_factory=dict)
    job_name: str = field(default_factory=lambda: time.strftime("tft-%Y%m%d-%H%M%S"))

    @property
    def local(self) -> bool:
        return self.instance_type in LOCAL_INSTANCE_TYPES


def estimator_kwargs(settings: LaunchSettings, session: Any) -> dict[str, Any]:
    """Keyword arguments shared by both estimators."""
    from sagemaker.debugger import TensorBoardOutputConfig

    kwargs: dict[str, Any] = {
        "image_uri": settings.image_uri,
        "role": settings.role,
        "instance_count": settings.instance_count,
        "instance_type": settings.instance_type,
        # SageMaker sends every value as a string; say so here rather than rely on str().
        "hyperparameters": {k: str(v) for k, v in settings.hyperparameters.items()},
        "metric_definitions": METRIC_DEFINITIONS,
        "max_run": settings.max_run_s,
        "sagemaker_session": session,
        "base_job_name": "tft",
    }
    if settings.output:
        kwargs["output_path"] = settings.output
    if settings.local:
        return kwargs  # no volumes, spot, checkpoint sync or TensorBoard upload in local mode
    if not settings.output:
        raise ValueError("--output s3://BUCKET/PREFIX is needed for a job in the cloud")
    job_prefix = f"{settings.output.rstrip('/')}/{settings.job_name}"
    kwargs.update(
        volume_size=settings.volume_size_gb,
        # /opt/ml/checkpoints is synced here during the job and restored after an interruption.
        checkpoint_s3_uri=f"{job_prefix}/checkpoints",
        tensorboard_output_config=TensorBoardOutputConfig(
            s3_output_path=f"{job_prefix}/tensorboard",
            container_local_output_path=TENSORBOARD_LOCAL_PATH,
        ),
        # The training writes its own metric lines and TensorBoard files: no Debugger hook
        # or profiler (they would only add rules and uploads to the job).
        debugger_hook_config=False,
        disable_profiler=True,
    )
    if settings.spot:
        # Spot capacity can be reclaimed at any time; the job resumes from its checkpoints.
        kwargs.update(use_spot_instances=True, max_wait=2 * settings.max_run_s)
    return kwargs


def build_estimator(settings: LaunchSettings, session: Any) -> Any:
    """A generic `Estimator`, or the `PyTorch` estimator with torchrun on every instance."""
    kwargs = estimator_kwargs(settings, session)
    if settings.estimator == "generic":
        from sagemaker.estimator import Estimator

        # Runs `train` once per instance; the script forms the cluster itself
        # (master: the first host of resourceconfig.json).
        return Estimator(**kwargs)
    if settings.estimator == "pytorch":
        from sagemaker.pytorch import PyTorch

        # The framework estimator uploads code/ (the same code the image bakes in) and asks
        # the image's launcher for torchrun: one process per GPU on every instance.
        return PyTorch(
            entry_point="train.py",
            source_dir=str(REPO / "code"),
            distribution={"torch_distributed": {"enabled": True}},
            **kwargs,
        )
    raise ValueError(f"unknown estimator {settings.estimator!r}: generic or pytorch")


def build_session(settings: LaunchSettings, region: str | None) -> Any:
    """A cloud `Session`, or a `LocalSession` that also works offline with dummy keys."""
    import boto3

    boto_session = boto3.Session(region_name=region)
    if not settings.local:
        from sagemaker.session import Session

        return Session(boto_session=boto_session)
    from sagemaker.local import LocalSession

    if boto_session.get_credentials() is None or boto_session.region_name is None:
        # Local mode calls no AWS API, but the SDK creates boto3 clients of its own, which need
        # keys and a region to exist: dummy ones, for every client of this process.
        os.environ.setdefault("AWS_DEFAULT_REGION", boto_session.region_name or "us-east-1")
        if boto_session.get_credentials() is None:
            os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "local-mode"
        boto_session = boto3.Session(region_name=region)
    session = LocalSession(boto_session=boto_session, sagemaker_config=OFFLINE_SDK_CONFIG)
    session.config = LOCAL_SESSION_CONFIG
    return session


def parse_args(argv: list[str] | None = None) -> tuple[LaunchSettings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--image-uri", required=True, help="the image (build_and_push.sh)")
    parser.add_argument(
        "--role",
        default="arn:aws:iam::111122223333:role/local-mode-dummy",
        help="SageMaker execution role ARN (any ARN in local mode)",
    )
    parser.add_argument("--train", required=True, help="train channel: s3://... or file://...")
    parser.add_argument("--validation", help="optional validation channel")
    parser.add_argument("--output", help="s3://BUCKET/PREFIX, or file://DIR in local mode")
    parser.add_argument("--instance-type", default="ml.g5.2xlarge")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--estimator", choices=("generic", "pytorch"), default="generic")
    parser.add_argument("--spot", action="store_true", help="managed spot training")
    parser.add_argument("--max-run-hours", type=float, default=4.0)
    parser.add_argument("--local", action="store_true", help="SageMaker local mode (CPU)")
    parser.add_argument("--gpu", action="store_true", help="with --local: local_gpu")
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument(
        "--hp", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter"
    )
    parser.add_argument("--no-wait", action="store_true", help="return once the job started")
    args = parser.parse_args(argv)
    hyperparameters = {}
    for pair in args.hp:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--hp expects KEY=VALUE, got {pair!r}")
        hyperparameters[key] = value
    instance_type = ("local_gpu" if args.gpu else "local") if args.local else args.instance_type
    settings = LaunchSettings(
        image_uri=args.image_uri,
        role=args.role,
        train=args.train,
        validation=args.validation,
        output=args.output,
        instance_type=instance_type,
        instance_count=args.instance_count,
        estimator=args.estimator,
        spot=args.spot,
        max_run_s=int(args.max_run_hours * 3600),
        hyperparameters=hyperparameters,
    )
    return settings, args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    estimator = build_estimator(settings, build_session(settings, args.region))
    inputs = {"train": settings.train}
    if settings.validation:
        inputs["validation"] = settings.validation
    estimator.fit(inputs, job_name=settings.job_name, wait=not args.no_wait)
    if not args.no_wait:
        print(f"model: {estimator.model_data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
