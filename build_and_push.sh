#!/usr/bin/env bash
# Builds the training image (docker/Dockerfile) and pushes it to Amazon ECR, creating the
# repository if needed. Prints the image URI to use as an estimator's image_uri on stdout (the
# last line); everything else goes to stderr, so `URI=$(./build_and_push.sh)` works.
#
# Usage: ./build_and_push.sh [options]
#   -n, --name NAME         ECR repository and image name   (env IMAGE_NAME; default tft-sagemaker)
#   -t, --tag TAG           image tag (env IMAGE_TAG; default: the git short SHA, with "-dirty"
#                           when the work tree has uncommitted changes; "dev" without commits).
#                           "latest" is pushed too.
#   -r, --region REGION     AWS region (env AWS_REGION or AWS_DEFAULT_REGION; default: the AWS
#                           CLI's configured region)
#   -b, --base-image IMAGE  base image (env BASE_IMAGE; default: the SageMaker PyTorch DLC that
#                           docker/Dockerfile names, in REGION). Pin a digest with
#                           763104351884.dkr.ecr.REGION.amazonaws.com/pytorch@sha256:...
#       --registry HOST     push to HOST instead of ACCOUNT.dkr.ecr.REGION.amazonaws.com
#                           (env REGISTRY; e.g. 127.0.0.1:5000 for a local registry in tests)
#   -h, --help              this text
# The AWS CLI's own settings apply (AWS_PROFILE, credentials, and AWS_ENDPOINT_URL for a local
# AWS API stand-in such as moto_server). Needs: docker (engine running), the AWS CLI, git.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DLC_ACCOUNT_PATTERN='^[0-9]{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/'

log() { printf '[build_and_push] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '6,20p' "$0" | sed 's/^# \{0,1\}//'; }

IMAGE_NAME=${IMAGE_NAME:-tft-sagemaker}
IMAGE_TAG=${IMAGE_TAG:-}
REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
BASE_IMAGE=${BASE_IMAGE:-}
REGISTRY=${REGISTRY:-}
while (($#)); do
    case $1 in
        -n | --name) IMAGE_NAME=${2:?$1 needs a value}; shift 2 ;;
        -t | --tag) IMAGE_TAG=${2:?$1 needs a value}; shift 2 ;;
        -r | --region) REGION=${2:?$1 needs a value}; shift 2 ;;
        -b | --base-image) BASE_IMAGE=${2:?$1 needs a value}; shift 2 ;;
        --registry) REGISTRY=${2:?$1 needs a value}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# --- prerequisites -------------------------------------------------------------------------
command -v docker >/dev/null || die "docker not found: install Docker (or run .ci/setup_docker.sh install)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine: is it running, and may this user use it?"
command -v aws >/dev/null || die "the AWS CLI (aws) is not installed: https://aws.amazon.com/cli/"

if [[ -z $REGION ]]; then
    REGION=$(aws configure get region 2>/dev/null || true)
fi
[[ -n $REGION ]] || die "no AWS region: pass --region, set AWS_REGION, or run 'aws configure'"

sts_err=$(mktemp)
trap 'rm -f "$sts_err"' EXIT
if ! ACCOUNT=$(aws sts get-caller-identity --region "$REGION" --query Account --output text 2>"$sts_err"); then
    die "the AWS CLI is not logged in ($(tr '\n' ' ' <"$sts_err")); run 'aws configure' or 'aws sso login'"
fi
REGISTRY=${REGISTRY:-$ACCOUNT.dkr.ecr.$REGION.amazonaws.com}

# --- what to build -------------------------------------------------------------------------
git_in_repo() { git -C "$REPO_ROOT" "$@" 2>/dev/null; }
VCS_REF=$(git_in_repo rev-parse HEAD || echo unknown)
if [[ -z $IMAGE_TAG ]]; then
    if IMAGE_TAG=$(git_in_repo rev-parse --short HEAD); then
        [[ -z $(git_in_repo status --porcelain --untracked-files=no) ]] || IMAGE_TAG+=-dirty
    else
        IMAGE_TAG=dev
    fi
fi
if [[ -z $BASE_IMAGE ]]; then
    # The Dockerfile's default, with its ${REGION} filled in: the tag is pinned in one place.
    BASE_IMAGE=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO_ROOT/docker/Dockerfile" | head -n 1)
    BASE_IMAGE=${BASE_IMAGE//\$\{REGION\}/$REGION}
fi
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml" | head -n 1)
# The source URL without any credentials that a clone URL may carry (https://user:token@host/...).
SOURCE=$(git_in_repo remote get-url origin | sed -E 's#(://)[^/@]+@#\1#' || true)
IMAGE_URI=$REGISTRY/$IMAGE_NAME:$IMAGE_TAG

# --- registries ----------------------------------------------------------------------------
# Passwords go from the AWS CLI to docker through a pipe only: never echoed or stored in a variable.
ecr_login() { # REGION HOST
    log "docker login $2"
    aws ecr get-login-password --region "$1" | docker login --username AWS --password-stdin "$2" >&2 \
        || die "docker login to $2 failed (see above)"
}

pull_args=()
if [[ $BASE_IMAGE =~ $DLC_ACCOUNT_PATTERN ]]; then
    ecr_login "${BASH_REMATCH[1]}" "${BASE_IMAGE%%/*}"
    pull_args=(--pull) # DLC tags are re-published with security patches: take the current one
fi
ecr_login "$REGION" "$REGISTRY"

describe_err=$(aws ecr describe-repositories --region "$REGION" --repository-names "$IMAGE_NAME" 2>&1 >/dev/null) || {
    [[ $describe_err == *RepositoryNotFoundException* ]] || die "aws ecr describe-repositories: $describe_err"
    log "creating ECR repository $IMAGE_NAME (scan on push)"
    aws ecr create-repository --region "$REGION" --repository-name "$IMAGE_NAME" \
        --image-scanning-configuration scanOnPush=true >/dev/null
}

# --- build and push ------------------------------------------------------------------------
log "building $IMAGE_URI on $BASE_IMAGE"
docker build "${pull_args[@]}" \
    --file "$REPO_ROOT/docker/Dockerfile" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "REGION=$REGION" \
    --build-arg "VERSION=$VERSION" \
    --build-arg "VCS_REF=$VCS_REF" \
    --build-arg "SOURCE=$SOURCE" \
    --tag "$IMAGE_URI" \
    --tag "$REGISTRY/$IMAGE_NAME:latest" \
    "$REPO_ROOT" >&2

for ref in "$IMAGE_URI" "$REGISTRY/$IMAGE_NAME:latest"; do
    log "pushing $ref"
    docker push "$ref" >&2
done

log "done. Use it in an estimator: Estimator(image_uri=\"$IMAGE_URI\", ...)"
echo "$IMAGE_URI"
