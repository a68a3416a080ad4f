"""examples/launch_sagemaker_v3.py (SDK v3) builds the ModelTrainer and the tuner we document,
without touching AWS.

SDK v3 cannot share an environment with v2 (both are the package `sagemaker`): `make test` runs
this file in its own venv (.venv-sdk3, from examples/requirements-sdk3.txt) with
`--noconftest`; in the project venv it is skipped. The cloud cases go as far as the HTTP request
to SageMaker: every AWS request of the test's boto3 session is answered by a recorder, which
refuses any operation but those expected, and any other network connection fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("sagemaker.train", reason="needs SDK v3: `make test` runs it in .venv-sdk3")
boto3 = pytest.importorskip("boto3")
from botocore.awsrequest import AWSResponse  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IMAGE = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/tft-sagemaker:abc1234"
ROLE = "arn:aws:iam::111122223333:role/SageMakerRole"
OUTPUT = "s3://bucket/tft/jobs"
# The answers the recorder gives, by operation; any other operation fails the test.
ANSWERS = {
    "CreateTrainingJob": {"TrainingJobArn": "arn:aws:sagemaker:eu-west-1:111122223333:job/x"},
    "CreateHyperParameterTuningJob": {
        "HyperParameterTuningJobArn": "arn:aws:sagemaker:eu-west-1:111122223333:tuning/x"
    },
}


@pytest.fixture(scope="module")
def example():
    path = EXAMPLES / "launch_sagemaker_v3.py"
    spec = importlib.util.spec_from_file_location("launch_sagemaker_v3", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else ''}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **kwargs):
        yield self.data


@pytest.fixture
def requests(example, monkeypatch):
    """A cloud `Session` on dummy keys whose AWS requests are recorded, not sent:
    (operation, request body) in order."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    # The role check (IAM SimulatePrincipalPolicy) is the SDK's own business, not the request's.
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    session = example.build_session(settings(example), "eu-west-1")
    recorded: list[tuple[str, dict]] = []

    def answer(request, **kwargs):
        operation = request.headers.get("X-Amz-Target", b"").decode().rpartition(".")[2]
        body = json.loads(request.body)
        recorded.append((operation, body))
        if operation == "DescribeTrainingJob":
            reply = {
                "TrainingJobName": body["TrainingJobName"],
                "TrainingJobArn": ANSWERS["CreateTrainingJob"]["TrainingJobArn"],
                "TrainingJobStatus": "InProgress",
                "SecondaryStatus": "Starting",
                "CreationTime": 0,
                "AlgorithmSpecification": {"TrainingInputMode": "File"},
                "ResourceConfig": {"VolumeSizeInGB": 30},
                "StoppingCondition": {},
            }
        elif operation == "DescribeHyperParameterTuningJob":
            reply = {"HyperParameterTuningJobName": body["HyperParameterTuningJobName"]}
        elif operation in ANSWERS:
            reply = ANSWERS[operation]
        else:
            raise AssertionError(f"unexpected AWS request {operation or request.url}")
        return AWSResponse(request.url, 200, {}, _Body(json.dumps(reply).encode()))

    session.boto_session.events.register("before-send", answer)
    return session, recorded


def settings(example, **overrides):
    values = dict(
        image_uri=IMAGE,
        role=ROLE,
        train="s3://bucket/tft/data/train",
        output=OUTPUT,
        job_name="tft-test-job",
        hyperparameters={"max_epochs": "30", "hidden_size": "32"},
    )
    values.update(overrides)
    return example.LaunchSettings(**values)


def sent(recorded, operation):
    bodies = [body for name, body in recorded if name == operation]
    assert len(bodies) == 1, f"{operation}: {len(bodies)} requests"
    return bodies[0]


@pytest.mark.parametrize("count", [1, 2])
def test_training_job_request(example, requests, count):
    session, recorded = requests
    launch = settings(example, instance_count=count, validation="s3://bucket/tft/data/val")
    example.build_trainer(launch, session).train(
        input_data_config=example.input_data(launch), wait=False
    )
    request = sent(recorded, "CreateTrainingJob")

    assert request["TrainingJobName"].startswith("tft-test-job")
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == example.METRIC_DEFINITIONS
    # The image's own command (`train`) runs: no SDK entry point or drivers channel.
    assert "ContainerEntrypoint" not in request["AlgorithmSpecification"]
    assert request["ResourceConfig"]["InstanceCount"] == count
    assert request["RoleArn"] == ROLE
    assert request["HyperParameters"] == {"max_epochs": "30", "hidden_size": "32"}
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == {"train", "validation"}
    assert channels["train"]["DataSource"]["S3DataSource"]["S3Uri"] == launch.train
    assert request["OutputDataConfig"]["S3OutputPath"] == OUTPUT
    assert request["CheckpointConfig"] == {
        "S3Uri": f"{OUTPUT}/tft-test-job/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"{OUTPUT}/tft-test-job/tensorboard",
        "LocalPath": "/opt/ml/output/tensorboard",
    }
    assert "EnableManagedSpotTraining" not in request
    assert not request.get("Environment")  # SageMaker gives each instance its own machine


def test_managed_spot(example, requests):
    session, recorded = requests
    launch = settings(example, spot=True, max_run_s=3600)
    example.build_trainer(launch, session).train(
        input_data_config=example.input_data(launch), wait=False
    )
    request = sent(recorded, "CreateTrainingJob")
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 3600,
        "MaxWaitTimeInSeconds": 7200,
    }
    assert request["CheckpointConfig"]["S3Uri"] == f"{OUTPUT}/tft-test-job/checkpoints"


def test_tuning_job_request(example, requests):
    session, recorded = requests
    launch = settings(example, instance_count=2, spot=True, tune_jobs=12, tune_parallel=3)
    tuner = example.build_tuner(launch, example.build_trainer(launch, session))
    tuner.tune(inputs=example.tuning_inputs(launch), job_name="tft-tune-test", wait=False)
    request = sent(recorded, "CreateHyperParameterTuningJob")

    config = request["HyperParameterTuningJobConfig"]
    assert request["HyperParameterTuningJobName"] == "tft-tune-test"
    objective = {"MetricName": "val_MAE", "Type": "Minimize"}
    assert config["HyperParameterTuningJobObjective"] == objective
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    ranges = config["ParameterRanges"]
    assert {r["Name"]: r["ScalingType"] for r in ranges["ContinuousParameterRanges"]} == {
        "learning_rate": "Logarithmic",
        "dropout": "Linear",
    }
    assert ranges["CategoricalParameterRanges"] == [
        {"Name": "hidden_size", "Values": ["16", "32", "64"]}
    ]
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    # The tuner reads the objective from the log with these regexes.
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == (example.METRIC_DEFINITIONS)
    # The tuned hyperparameters are the tuner's; the others stay as given (strings).
    assert definition["StaticHyperParameters"] == {"max_epochs": "30"}
    assert definition["ResourceConfig"]["InstanceCount"] == 2
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"]["MaxWaitTimeInSeconds"] == launch.max_wait_s
    # Parallel training jobs must not share (and resume from) one checkpoint prefix.
    assert "CheckpointConfig" not in definition


@pytest.mark.parametrize(("flags", "count"), [([], 1), ([], 2), (["--gpu"], 1)])
def test_local_mode_offline(example, monkeypatch, tmp_path, flags, count):
    from sagemaker.train.model_trainer import Mode

    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_DEFAULT_REGION")
    for name in (*names, "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credentials anywhere
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    argv = ["--local", *flags, "--image-uri", "tft-sagemaker:local-cpu", "--train", "file:///d"]
    launch, args = example.parse_args(
        [*argv, "--instance-count", str(count), "--output", f"file://{tmp_path}", "--hp", "seed=7"]
    )
    trainer = example.build_trainer(launch, example.build_session(launch, args.region))
    assert trainer.training_mode == Mode.LOCAL_CONTAINER
    assert trainer.compute.instance_type == ("local_gpu" if flags else "local_cpu")
    assert trainer.compute.instance_count == count
    assert trainer.hyperparameters == {"seed": "7"}
    assert trainer.local_container_root == str(tmp_path)  # model: compressed_artifacts/
    assert [(c.channel_name, c.data_source) for c in example.input_data(launch)] == [
        ("train", "/d")
    ]
    # Every host of a local job runs on this machine: each sizes its threads to its share.
    assert trainer.environment == ({"TFT_HOSTS_PER_MACHINE": "2"} if count == 2 else {})
    # Nothing that local mode cannot do.
    assert not trainer.compute.enable_managed_spot_training
    assert trainer.checkpoint_config is None


def test_cloud_job_needs_an_output_path(example, requests):
    session, _ = requests
    with pytest.raises(ValueError, match="--output"):
        example.build_trainer(settings(example, output=None), session)


@pytest.mark.parametrize(
    "flags", [["--hp", "max_epochs"], ["--local", "--tune", "4"], ["--objective", "epoch"]]
)
def test_bad_flags_are_refused(example, flags):
    with pytest.raises(SystemExit):
        example.parse_args(["--image-uri", "x", "--train", "s3://b/t", *flags])


@pytest.mark.parametrize(
    ("shard", "distribution"), [(False, "FullyReplicated"), (True, "ShardedByS3Key")]
)
def test_the_train_channel_can_be_sharded(example, requests, shard, distribution):
    session, recorded = requests
    launch = settings(example, instance_count=2, shard_train=shard, validation="s3://b/val")
    example.build_trainer(launch, session).train(
        input_data_config=example.input_data(launch), wait=False
    )
    channels = {c["ChannelName"]: c for c in sent(recorded, "CreateTrainingJob")["InputDataConfig"]}
    train = channels["train"]["DataSource"]["S3DataSource"]
    assert (train["S3Uri"], train["S3DataDistributionType"]) == (launch.train, distribution)
    assert channels["validation"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/val"
    # The tuner's training jobs get the same channels.
    launch = settings(example, instance_count=2, shard_train=shard, tune_jobs=2, tune_parallel=1)
    tuner = example.build_tuner(launch, example.build_trainer(launch, session))
    tuner.tune(inputs=example.tuning_inputs(launch), job_name="tft-tune-shard", wait=False)
    definition = sent(recorded, "CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    train = definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    assert (train["S3Uri"], train["S3DataDistributionType"]) == (launch.train, distribution)
