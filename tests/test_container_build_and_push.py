"""build_and_push.sh against fake `docker` and `aws` commands: the calls it makes, what it
prints, its errors, and that the registry password only ever travels on a pipe.

No Docker engine or AWS account is needed; local_test/e2e.sh runs the script for real against
a local registry and a moto AWS API.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test runs the script (processes)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "build_and_push.sh"
TOKEN = "s3cr3t-registry-token"
ACCOUNT = "111122223333"
DLC = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch:2.13.0-cu133-amzn2023-sagemaker"
# What the script needs besides docker and aws.
TOOLS = ("bash", "dirname", "sed", "mktemp", "rm", "tr", "head", "git", "cat", "env")

FAKE_DOCKER = r"""#!/bin/bash
echo "docker $*" >>"$FAKE_LOG"
case $1 in
    info) exit "${FAKE_DOCKER_INFO_RC:-0}" ;;
    login) echo "stdin=$(cat)" >>"$FAKE_STDIN_LOG"; echo "Login Succeeded" ;;
    build) echo "Successfully built 0123456789ab" ;;
    push) echo "digest: sha256:0000 size: 1" ;;
esac
"""

FAKE_AWS = r"""#!/bin/bash
echo "aws $*" >>"$FAKE_LOG"
case "$1 $2" in
    "configure get") [[ -n ${FAKE_REGION:-} ]] && echo "$FAKE_REGION" || exit 1 ;;
    "sts get-caller-identity")
        if [[ -n ${FAKE_STS_ERROR:-} ]]; then echo "$FAKE_STS_ERROR" >&2; exit 253; fi
        echo 111122223333 ;;
    "ecr get-login-password") echo "s3cr3t-registry-token" ;;
    "ecr describe-repositories")
        [[ -n ${FAKE_REPO_EXISTS:-} ]] && exit 0
        echo "An error occurred (RepositoryNotFoundException) when calling the" \
            "DescribeRepositories operation: repository not found" >&2
        exit 254 ;;
    "ecr create-repository") echo '{"repository": {}}' ;;
esac
"""


@pytest.fixture
def sandbox(tmp_path):
    """A PATH with fake docker and aws and the few real tools the script uses, nothing else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        if real is None:
            pytest.skip(f"{tool} not installed")
        (bin_dir / tool).symlink_to(real)
    for name, text in (("docker", FAKE_DOCKER), ("aws", FAKE_AWS)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_STDIN_LOG": str(tmp_path / "stdin.log"),
        "FAKE_REGION": "eu-west-1",
    }
    return bin_dir, env, tmp_path


def run(env, *args, **extra_env):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def calls(tmp_path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_help():
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: ./build_and_push.sh")
    for option in ("--name", "--tag", "--region", "--base-image", "--registry"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "missing_tool", "extra_env", "message"),
    [
        (["--bogus"], None, {}, "unknown argument: --bogus"),
        ([], "docker", {}, "docker not found"),
        ([], None, {"FAKE_DOCKER_INFO_RC": "1"}, "cannot reach the Docker engine"),
        ([], "aws", {}, "AWS CLI (aws) is not installed"),
    ],
    ids=["unknown-argument", "no-docker", "engine-down", "no-aws-cli"],
)
def test_clear_errors(sandbox, args, missing_tool, extra_env, message):
    bin_dir, env, _ = sandbox
    if missing_tool:
        (bin_dir / missing_tool).unlink()
    result = run(env, *args, **extra_env)
    assert result.returncode != 0
    assert message in result.stderr


def test_not_logged_in(sandbox):
    _, env, tmp_path = sandbox
    result = run(env, FAKE_STS_ERROR="Unable to locate credentials.")
    assert result.returncode != 0
    assert "not logged in" in result.stderr
    assert "Unable to locate credentials." in result.stderr
    assert not any(c.startswith("docker build") for c in calls(tmp_path))


def test_no_region(sandbox):
    _, env, _ = sandbox
    result = run(env, FAKE_REGION="")
    assert result.returncode != 0
    assert "no AWS region" in result.stderr


def test_default_build_and_push_to_ecr(sandbox):
    _, env, tmp_path = sandbox
    result = run(env)
    assert result.returncode == 0, result.stderr
    registry = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
    # Only the image URI on stdout, so that URI=$(./build_and_push.sh) works.
    uri = result.stdout.strip()
    assert re.fullmatch(rf"{re.escape(registry)}/tft-sagemaker:([0-9a-f]{{7,}}(-dirty)?|dev)", uri)
    tag = uri.rsplit(":", 1)[1]

    log = calls(tmp_path)
    assert "aws sts get-caller-identity --region eu-west-1 --query Account --output text" in log
    # The DLC registry (to pull the base), then the account's registry; passwords on stdin.
    logins = [c for c in log if c.startswith("docker login")]
    assert logins == [
        "docker login --username AWS --password-stdin 763104351884.dkr.ecr.eu-west-1.amazonaws.com",
        f"docker login --username AWS --password-stdin {registry}",
    ]
    assert (tmp_path / "stdin.log").read_text().splitlines() == [f"stdin={TOKEN}"] * 2
    create = [c for c in log if c.startswith("aws ecr create-repository")]
    assert create == [
        "aws ecr create-repository --region eu-west-1 --repository-name tft-sagemaker "
        "--image-scanning-configuration scanOnPush=true"
    ]
    (build,) = [c for c in log if c.startswith("docker build")]
    assert "--pull" in build.split()
    assert f"--build-arg BASE_IMAGE={DLC}" in build
    assert "--build-arg REGION=eu-west-1" in build
    assert "--build-arg VERSION=0.1.0" in build
    assert f"--file {ROOT}/docker/Dockerfile" in build
    assert f"--tag {uri} --tag {registry}/tft-sagemaker:latest" in build
    assert build.endswith(f" {ROOT}")
    assert [c for c in log if c.startswith("docker push")] == [
        f"docker push {uri}",
        f"docker push {registry}/tft-sagemaker:latest",
    ]
    assert tag in result.stderr  # the estimator hint
    # The password was never an argument, and never printed.
    assert TOKEN not in "\n".join(log)
    assert TOKEN not in result.stdout + result.stderr


def test_local_base_registry_override_and_existing_repository(sandbox):
    _, env, tmp_path = sandbox
    result = run(
        env,
        "--name",
        "my-tft",
        "--tag",
        "v1",
        "--region",
        "us-west-2",
        "--base-image",
        "tft-sagemaker/cpu-base:2.13.0-cpu-py311",
        "--registry",
        "127.0.0.1:5000",
        FAKE_REPO_EXISTS="1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "127.0.0.1:5000/my-tft:v1\n"
    log = calls(tmp_path)
    # A local base is neither logged in to nor pulled; the override registry is logged in to.
    assert [c for c in log if c.startswith("docker login")] == [
        "docker login --username AWS --password-stdin 127.0.0.1:5000"
    ]
    assert not any(c.startswith("aws ecr create-repository") for c in log)
    (build,) = [c for c in log if c.startswith("docker build")]
    assert "--pull" not in build.split()
    assert "--build-arg BASE_IMAGE=tft-sagemaker/cpu-base:2.13.0-cpu-py311" in build
    assert "--build-arg REGION=us-west-2" in build


def test_environment_variables_configure_it(sandbox):
    _, env, tmp_path = sandbox
    result = run(
        env,
        IMAGE_NAME="env-name",
        IMAGE_TAG="env-tag",
        AWS_REGION="ap-south-1",
        REGISTRY="127.0.0.1:5000",
        BASE_IMAGE="local/base:1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "127.0.0.1:5000/env-name:env-tag\n"
    assert not any(c.startswith("aws configure") for c in calls(tmp_path))


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    scripts = [
        SCRIPT,
        ROOT / "local_test" / "e2e.sh",
        ROOT / ".ci" / "setup_docker.sh",
        *sorted((ROOT / "docker" / "cpu-base").glob("*.sh")),
    ]
    result = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stdout
