"""examples/launch_sagemaker_v2.py (SDK v2) builds the estimators and the tuner we document,
without touching AWS.

The cloud cases go as far as the CreateTrainingJob / CreateHyperParameterTuningJob request: the
SDK's SageMaker client is replaced by a recorder, and any attempt to open a network connection
fails the test. tests/test_launch_example_v3.py does the same for SDK v3.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from unittest import mock

import pytest

sagemaker = pytest.importorskip("sagemaker", reason="needs the launch extra (sagemaker==2.257.7)")
boto3 = pytest.importorskip("boto3")

from tft_sagemaker.sagemaker.launch_plan import HOSTS_PER_MACHINE_VAR  # noqa: E402
from tft_sagemaker.sagemaker.metric_lines import METRIC_DEFINITIONS  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "launch_sagemaker_v2.py"
IMAGE = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/tft-sagemaker:abc1234"
ROLE = "arn:aws:iam::111122223333:role/SageMakerRole"
OUTPUT = "s3://bucket/tft/jobs"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("launch_sagemaker_v2", EXAMPLE)
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


@pytest.fixture
def cloud_session(example, monkeypatch):
    """A real `sagemaker.Session` on dummy keys whose SageMaker client only records calls."""
    # The SDK also makes boto3 clients of its own, from the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    boto_session = boto3.Session(
        aws_access_key_id="dummy", aws_secret_access_key="dummy", region_name="eu-west-1"
    )
    session = sagemaker.session.Session(
        boto_session=boto_session,
        sagemaker_client=mock.MagicMock(),
        sagemaker_config=example.OFFLINE_SDK_CONFIG,
    )
    session.sagemaker_client.describe_training_job.return_value = {}
    return session


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


def create_training_job_request(estimator, launch, inputs=None):
    estimator.fit(inputs or {"train": launch.train}, job_name=launch.job_name, wait=False)
    client = estimator.sagemaker_session.sagemaker_client
    client.create_training_job.assert_called_once()
    return client.create_training_job.call_args.kwargs


@pytest.mark.parametrize("count", [1, 2])
def test_generic_estimator_request(example, cloud_session, count):
    launch = settings(example, instance_count=count, validation="s3://bucket/tft/data/val")
    estimator = example.build_estimator(launch, cloud_session)
    assert type(estimator) is sagemaker.estimator.Estimator
    request = create_training_job_request(
        estimator, launch, {"train": launch.train, "validation": launch.validation}
    )

    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert request["ResourceConfig"]["InstanceCount"] == count
    assert request["RoleArn"] == ROLE
    # A generic estimator sends the hyperparameters as they are: strings, no sagemaker_* keys,
    # so the image's launcher runs the script once per host.
    assert request["HyperParameters"] == {"max_epochs": "30", "hidden_size": "32"}
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == {"train", "validation"}
    assert channels["train"]["DataSource"]["S3DataSource"]["S3Uri"] == launch.train
    assert request["OutputDataConfig"]["S3OutputPath"] == OUTPUT
    assert request["CheckpointConfig"]["S3Uri"] == f"{OUTPUT}/tft-test-job/checkpoints"
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"{OUTPUT}/tft-test-job/tensorboard",
        "LocalPath": "/opt/ml/output/tensorboard",
    }
    assert "EnableManagedSpotTraining" not in request
    assert not request.get("Environment")  # SageMaker gives each instance its own machine


def test_managed_spot(example, cloud_session):
    launch = settings(example, spot=True, max_run_s=3600)
    request = create_training_job_request(example.build_estimator(launch, cloud_session), launch)
    assert request["EnableManagedSpotTraining"] is True
    stopping = request["StoppingCondition"]
    assert stopping["MaxRuntimeInSeconds"] == 3600
    assert stopping["MaxWaitTimeInSeconds"] >= stopping["MaxRuntimeInSeconds"]
    assert request["CheckpointConfig"]["S3Uri"].startswith(OUTPUT)


def test_metric_regexes_read_the_training_log(example):
    import re

    line = "[metrics] epoch=3 train_loss=41.2 val_loss=38.9 val_MAE=270.1 lr=0.001"
    final = "[metrics] final_val_MAE=268.5 baseline_val_MAE=400"
    found = {}
    for definition in example.METRIC_DEFINITIONS:
        for text in (line, final):
            match = re.search(definition["Regex"], text)
            if match:
                found[definition["Name"]] = float(match.group(1))
    assert found["val_MAE"] == 270.1  # not final_val_MAE's value
    assert found["final_val_MAE"] == 268.5
    assert found["epoch"] == 3


def test_pytorch_estimator_uses_torch_distributed(example, cloud_session):
    launch = settings(example, instance_count=2)
    estimator = example.build_estimator(launch, cloud_session, "pytorch")
    assert type(estimator) is sagemaker.pytorch.PyTorch
    assert estimator.image_uri == IMAGE
    assert estimator.distribution == {"torch_distributed": {"enabled": True}}
    assert Path(estimator.source_dir, estimator.entry_point).is_file()
    hyperparameters = estimator.hyperparameters()
    # The launcher flag that makes the image's toolkit start torchrun on every instance.
    assert hyperparameters["sagemaker_torch_distributed_enabled"] == "true"
    # Framework estimators JSON-encode the values (the training code accepts both forms).
    assert hyperparameters["max_epochs"] == '"30"'
    assert estimator.metric_definitions == METRIC_DEFINITIONS
    assert estimator.checkpoint_s3_uri == f"{OUTPUT}/tft-test-job/checkpoints"


def test_unknown_estimator_is_rejected(example, cloud_session):
    with pytest.raises(ValueError, match="unknown estimator"):
        example.build_estimator(settings(example), cloud_session, "keras")


def test_cloud_job_needs_an_output_path(example, cloud_session):
    with pytest.raises(ValueError, match="--output"):
        example.build_estimator(settings(example, output=None), cloud_session)


# The SDK runs local_gpu on one instance only ("Distributed Training in Local GPU is not
# supported"): a two-node GPU run on one machine is the compose path.
@pytest.mark.parametrize(
    ("flags", "instance_type", "count"),
    [([], "local", 1), ([], "local", 2), (["--gpu"], "local_gpu", 1)],
)
def test_local_mode_offline(example, monkeypatch, flags, instance_type, count):
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_DEFAULT_REGION")
    for name in (*names, "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credentials anywhere
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    argv = ["--local", *flags, "--image-uri", "tft-sagemaker:local-cpu", "--train", "file:///d"]
    launch, args = example.parse_args(
        [*argv, "--instance-count", str(count), "--hp", "max_epochs=2", "--hp", "seed=7"]
    )
    session = example.build_session(launch, args.region)
    assert isinstance(session, sagemaker.local.LocalSession)
    assert session.config["local"]["container_config"]["shm_size"] == "2g"
    estimator = example.build_estimator(launch, session)
    assert estimator.instance_type == instance_type
    assert estimator.instance_count == count
    assert estimator.hyperparameters() == {"max_epochs": "2", "seed": "7"}
    # Every host of a local job runs on this machine: each sizes its threads to its share.
    assert estimator.environment == ({HOSTS_PER_MACHINE_VAR: "2"} if count == 2 else {})
    # Nothing that local mode cannot do.
    assert not estimator.use_spot_instances
    assert estimator.checkpoint_s3_uri is None
    assert estimator.tensorboard_output_config is None


def test_tuner_request(example, cloud_session):
    launch = settings(example, instance_count=2, spot=True, tune_jobs=12, tune_parallel=3)
    tuner = example.build_tuner(launch, example.build_estimator(launch, cloud_session))
    tuner.fit({"train": launch.train}, job_name="tft-tune-test", wait=False)
    client = cloud_session.sagemaker_client
    client.create_hyper_parameter_tuning_job.assert_called_once()
    request = client.create_hyper_parameter_tuning_job.call_args.kwargs
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
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    # The tuned hyperparameters are the tuner's; the others stay as given (strings).
    assert definition["StaticHyperParameters"]["max_epochs"] == "30"
    assert "hidden_size" not in definition["StaticHyperParameters"]
    assert definition["HyperParameterTuningResourceConfig"]["InstanceCount"] == 2
    assert definition["EnableManagedSpotTraining"] is True
    # Parallel training jobs must not share (and resume from) one checkpoint prefix.
    assert "CheckpointConfig" not in definition


@pytest.mark.parametrize(
    "flags", [["--hp", "max_epochs"], ["--local", "--tune", "4"], ["--objective", "epoch"]]
)
def test_bad_flags_are_refused(example, flags):
    with pytest.raises(SystemExit):
        example.parse_args(["--image-uri", "x", "--train", "s3://b/t", *flags])


@pytest.mark.parametrize(
    ("shard", "distribution"), [(False, "FullyReplicated"), (True, "ShardedByS3Key")]
)
def test_the_train_channel_can_be_sharded(example, cloud_session, shard, distribution):
    launch = settings(example, instance_count=2, shard_train=shard, validation="s3://b/val")
    estimator = example.build_estimator(launch, cloud_session)
    request = create_training_job_request(estimator, launch, example.inputs(launch))
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    train = channels["train"]["DataSource"]["S3DataSource"]
    assert (train["S3Uri"], train["S3DataDistributionType"]) == (launch.train, distribution)
    assert channels["validation"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/val"
