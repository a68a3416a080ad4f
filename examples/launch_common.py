"""What the SDK v3 and v2 launchers share: a launch's settings and command line, where a job's
checkpoints and TensorBoard files go, the tuning search space, and what local mode needs.

Nothing here imports the SageMaker SDK: v3 and v2 are the same package name (`sagemaker`) and
never share an environment, so each launcher turns these settings into its own SDK's objects.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "code"))

from tft_sagemaker.sagemaker.launch_plan import HOSTS_PER_MACHINE_VAR  # noqa: E402
from tft_sagemaker.sagemaker.metric_lines import METRIC_DEFINITIONS  # noqa: E402

# Where the training code writes TensorBoard event files and checkpoints (the SDKs' defaults).
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# The SDK's telemetry and its S3/STS look-ups switched off, so local mode runs offline.
OFFLINE_SDK_CONFIG = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}
DUMMY_ROLE = "arn:aws:iam::111122223333:role/local-mode-dummy"

# Hyperparameter tuning: the metric SageMaker ranks jobs by (the latest value a job printed;
# `final_val_MAE` is the saved model's own) and the search space. Each launcher makes its SDK's
# ParameterRange objects from these.
OBJECTIVE_METRIC = "val_MAE"
OBJECTIVE_TYPE = "Minimize"
TUNED_RANGES: dict[str, tuple] = {
    "learning_rate": ("continuous", 0.001, 0.03, "Logarithmic"),
    "dropout": ("continuous", 0.05, 0.3, "Linear"),
    "hidden_size": ("categorical", ["16", "32", "64"]),
}


SHARDED = "ShardedByS3Key"  # S3DataDistributionType: each instance its share of the files


@dataclass
class LaunchSettings:
    """What a launch needs; `job_name` also names the job's checkpoint and TensorBoard prefix."""

    image_uri: str
    role: str
    train: str  # s3://... (or file://... in local mode): the `train` channel
    validation: str | None = None  # optional `validation` channel
    # S3DataDistributionType of the train channel: each instance gets only its share of the
    # files (ShardedByS3Key) and trains on their series, instead of every file (FullyReplicated).
    shard_train: bool = False
    output: str | None = None  # s3://BUCKET/PREFIX (or file://DIR in local mode)
    instance_type: str = "ml.g5.2xlarge"
    instance_count: int = 1
    local: bool = False  # SageMaker local mode: Docker on this machine, no AWS account
    gpu: bool = False  # local mode on GPUs
    spot: bool = False
    max_run_s: int = 4 * 3600
    volume_size_gb: int = 30
    hyperparameters: dict[str, str] = field(default_factory=dict)
    tune_jobs: int = 0  # > 0: a hyperparameter tuning job of that many training jobs
    tune_parallel: int = 2
    objective: str = OBJECTIVE_METRIC
    job_name: str = field(default_factory=lambda: time.strftime("tft-%Y%m%d-%H%M%S"))

    @property
    def job_prefix(self) -> str:
        """OUTPUT/JOB_NAME: where the job's checkpoints and TensorBoard files go."""
        if not self.output:
            raise ValueError("--output s3://BUCKET/PREFIX is needed for a job in the cloud")
        return f"{self.output.rstrip('/')}/{self.job_name}"

    @property
    def max_wait_s(self) -> int:
        """Managed spot: how long to wait for capacity and interruptions, run time included."""
        return 2 * self.max_run_s

    @property
    def train_distribution(self) -> str:
        return SHARDED if self.shard_train else "FullyReplicated"

    @property
    def channels(self) -> dict[str, str]:
        return {"train": self.train} | ({"validation": self.validation} if self.validation else {})

    def container_environment(self) -> dict[str, str]:
        """Environment for the training containers: local mode runs every instance on this one
        machine, and each must size its threads to its share of the cores."""
        if self.local and self.instance_count > 1:
            return {HOSTS_PER_MACHINE_VAR: str(self.instance_count)}
        return {}


def offline_aws_environment(region: str | None) -> None:
    """Local mode calls no AWS API, but both SDKs make boto3 clients that need keys and a
    region to exist: dummy ones, for every client of this process, unless real ones are set."""
    import boto3

    session = boto3.Session(region_name=region)
    os.environ.setdefault("AWS_DEFAULT_REGION", session.region_name or "us-east-1")
    if session.get_credentials() is None:
        os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "local-mode"


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--image-uri", required=True, help="the image (build_and_push.sh)")
    parser.add_argument(
        "--role", default=DUMMY_ROLE, help="SageMaker execution role ARN (any ARN in local mode)"
    )
    parser.add_argument("--train", required=True, help="train channel: s3://... or file://...")
    parser.add_argument("--validation", help="optional validation channel")
    parser.add_argument(
        "--shard-train",
        action="store_true",
        help="S3DataDistributionType=ShardedByS3Key for train: each instance gets its share of "
        "the files (give at least one file per instance) and trains on their series",
    )
    parser.add_argument("--output", help="s3://BUCKET/PREFIX, or file://DIR in local mode")
    parser.add_argument("--instance-type", default="ml.g5.2xlarge")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--spot", action="store_true", help="managed spot training")
    parser.add_argument("--max-run-hours", type=float, default=4.0)
    parser.add_argument("--local", action="store_true", help="SageMaker local mode (CPU)")
    parser.add_argument("--gpu", action="store_true", help="with --local: on GPUs")
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument(
        "--hp", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter"
    )
    parser.add_argument(
        "--tune",
        type=int,
        default=0,
        metavar="JOBS",
        help=f"a hyperparameter tuning job of JOBS training jobs over {', '.join(TUNED_RANGES)}",
    )
    parser.add_argument("--tune-parallel", type=int, default=2, help="tuning jobs at a time")
    parser.add_argument(
        "--objective",
        default=OBJECTIVE_METRIC,
        choices=[d["Name"] for d in METRIC_DEFINITIONS if d["Name"].startswith(("val_", "final_"))],
        help="tuning objective (minimised)",
    )
    parser.add_argument("--no-wait", action="store_true", help="return once the job started")
    return parser


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> LaunchSettings:
    hyperparameters = {}
    for pair in args.hp:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--hp expects KEY=VALUE, got {pair!r}")
        hyperparameters[key] = value
    if args.tune and args.local:
        parser.error("--tune runs in SageMaker only (local mode has no tuning jobs)")
    return LaunchSettings(
        image_uri=args.image_uri,
        role=args.role,
        train=args.train,
        validation=args.validation,
        shard_train=args.shard_train,
        output=args.output,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        local=args.local,
        gpu=args.gpu,
        spot=args.spot,
        max_run_s=int(args.max_run_hours * 3600),
        hyperparameters=hyperparameters,
        tune_jobs=args.tune,
        tune_parallel=args.tune_parallel,
        objective=args.objective,
    )
