#!/usr/bin/env bash
# Builds the CPU stand-in for the SageMaker PyTorch training DLC (see Dockerfile beside this).
# The build context is staged in a temporary directory with the CPU torch wheel from the host
# ($PIP_FIND_LINKS) and the DLC's package versions (docker/dlc-constraints.txt), so nothing
# large is written into the repository. The Debian base image is made with make-debian-base.sh
# first if it does not exist.
#
# Usage: docker/cpu-base/build.sh [--tag NAME] [--debian-base IMAGE] [--wheel-dir DIR]
#   --tag NAME            default: tft-sagemaker/cpu-base:2.13.0-cpu-py311
#   --debian-base IMAGE   default: local/debian:bookworm
#   --wheel-dir DIR       where torch-2.13.0+cpu-cp311-*.whl is (default: $PIP_FIND_LINKS,
#                         else /opt/wheels)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TORCH_VERSION=2.13.0
TAG=tft-sagemaker/cpu-base:${TORCH_VERSION}-cpu-py311
DEBIAN_BASE=local/debian:bookworm
WHEEL_DIR=${PIP_FIND_LINKS:-/opt/wheels}
while (($#)); do
    case $1 in
        --tag) TAG=$2; shift 2 ;;
        --debian-base) DEBIAN_BASE=$2; shift 2 ;;
        --wheel-dir) WHEEL_DIR=$2; shift 2 ;;
        -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[cpu-base] %s\n' "$*" >&2; }

shopt -s nullglob
wheels=("${WHEEL_DIR#file://}"/torch-"$TORCH_VERSION"+cpu-cp311-cp311-*.whl)
if ((${#wheels[@]} != 1)); then
    log "error: expected one torch-$TORCH_VERSION+cpu-cp311 wheel in $WHEEL_DIR, found ${#wheels[@]}"
    exit 1
fi

if ! docker image inspect "$DEBIAN_BASE" >/dev/null 2>&1; then
    "$HERE/make-debian-base.sh" --tag "$DEBIAN_BASE"
fi

CONTEXT=$(mktemp -d)
trap 'rm -rf "$CONTEXT"' EXIT
cp "$HERE/Dockerfile" "$HERE/requirements.txt" "$HERE/start_with_right_hostname.sh" \
    "$HERE/../dlc-constraints.txt" "$CONTEXT/"
# A hard link is instant; fall back to a copy across file systems.
ln "${wheels[0]}" "$CONTEXT/" 2>/dev/null || cp "${wheels[0]}" "$CONTEXT/"

log "building $TAG on $DEBIAN_BASE with $(basename "${wheels[0]}")"
docker build \
    --build-arg "DEBIAN_BASE=$DEBIAN_BASE" \
    --build-arg "TORCH_VERSION=$TORCH_VERSION" \
    --tag "$TAG" \
    "$CONTEXT" >&2
log "done: $TAG"
