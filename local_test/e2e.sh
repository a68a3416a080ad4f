#!/usr/bin/env bash
# End-to-end test of the training container (`make e2e`), on a Debian 12 machine, as root, with
# no registry but Debian's archive and PyPI:
#   1. installs and starts the Docker engine (.ci/setup_docker.sh) and the tools venvs
#   2. lints: hadolint (Dockerfiles), shellcheck (shell scripts), `docker compose config`
#   3. builds the debootstrap Debian base, the CPU stand-in for the DLC, the product image;
#      `pip check` in both, and every package the DLC has at the DLC's version
#   4. (a) `train` in one container on local_test data: success file, model, the report in a
#      headless browser, a forecast from the model
#   5. (b) the compose services on CPU: one node, then two nodes (algo-1 + algo-2)
#   6. (b) SageMaker local mode with SDK v3 and v2 (examples/), one and two instances: every
#      container's exit code, and the model archive itself
#   7. (c) build_and_push.sh against a local registry and a moto AWS API; pull by URI, train
#   8. (d) a bad run (no train channel): the cause in output/failure, a non-zero exit
#   9. `docker stop` mid-training (SageMaker's SIGTERM): a checkpoint, then a restart resumes
# and prints timings. Idempotent and quick to rerun: installed packages, images and layers are
# reused. Each run works in fresh copies of local_test/test_dir under
# $TFT_STATE_DIR/e2e/<time>/ (default /var/tmp/tft-sagemaker; the last 3 runs are kept).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STATE_DIR=${TFT_STATE_DIR:-/var/tmp/tft-sagemaker}
export TFT_STATE_DIR=$STATE_DIR
RUN_DIR=$STATE_DIR/e2e/$(date +%Y%m%d-%H%M%S)
LOGS=$RUN_DIR/logs
TOOLS_VENV=$STATE_DIR/tools # moto, the AWS CLI, hadolint, SageMaker SDK v2
SDK3_VENV=$STATE_DIR/tools-sdk3 # SageMaker SDK v3 (the same package name as v2)

DEBIAN_BASE=local/debian:bookworm
CPU_BASE=tft-sagemaker/cpu-base:2.13.0-cpu-py311
IMAGE=tft-sagemaker:local-cpu # the image docker-compose.cpu.yml builds and runs
PROJECT=tft-e2e               # compose project and container name prefix
REGISTRY_ADDR=127.0.0.1:5000
MOTO_ADDR=127.0.0.1:5050
TRAIN_TIMEOUT_S=900
# A quick job. A short collective timeout makes a lost peer fail a two-node run in minutes
# instead of hanging.
QUICK_HYPERPARAMETERS=(max_epochs=2 limit_train_batches=5 hidden_size=8 seed=42 collective_timeout_s=120)
# Log lines of the training code that the checks rely on.
FIRST_STEP_MARKER='batches per epoch' # logged by rank 0 in on_train_start, just before step 1
MODEL_WRITTEN_MARKER='model written to'

ENGINE_STARTED=0
TIMINGS=()

banner() { printf '\n==== [%s] %s ====\n' "$(date +%T)" "$*"; }
info() { printf '  %s\n' "$*"; }
die() { printf '\nE2E ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timing() { TIMINGS+=("$(printf '%-46s %s' "$1" "$2")"); info "timing: $1: $2"; }
show_log() { printf -- '--- last lines of %s ---\n' "$1" >&2; tail -n "${2:-40}" "$1" >&2 || true; }

# Runs a command with its output in $LOGS/NAME.log, shown only on failure.
logged() { # NAME CMD...
    local log=$LOGS/$1.log
    shift
    "$@" >"$log" 2>&1 || { local rc=$?; show_log "$log"; return "$rc"; }
}

# Background services (local registry, moto), stopped by their recorded PID.
start_bg() { # NAME CMD...
    local name=$1
    shift
    stop_bg "$name" # left over from an interrupted run
    "$@" >"$LOGS/$name.log" 2>&1 &
    echo "$! $1" >"$STATE_DIR/$name.pid"
}
stop_bg() { # NAME
    local file=$STATE_DIR/$1.pid pid prog
    [[ -f $file ]] || return 0
    read -r pid prog <"$file"
    # Only if that PID still runs the program we started (PIDs are reused).
    if [[ "$(ps -o args= -p "$pid" 2>/dev/null)" == *"$prog"* ]]; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$file"
}
wait_http() { # URL NAME
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    show_log "$LOGS/$2.log"
    die "$2 did not answer on $1"
}

cleanup() {
    local rc=$?
    set +e
    banner "cleanup"
    docker ps -aq --filter "name=^$PROJECT-" | xargs -r docker rm -f >/dev/null 2>&1
    docker compose -p "$PROJECT" -f docker-compose.yml -f docker-compose.two-node.yml \
        -f docker-compose.cpu.yml down --remove-orphans >/dev/null 2>&1
    stop_bg moto
    stop_bg registry
    rm -rf "$RUN_DIR/registry"
    # The pushed-and-pulled image (pulled images carry no build cache worth keeping).
    docker images -q "$REGISTRY_ADDR/tft-sagemaker" | sort -u | xargs -r docker rmi -f >/dev/null 2>&1
    # Dangling earlier builds of the product image (its layers stay as cache).
    docker image prune -f --filter label=org.opencontainers.image.title=tft-sagemaker >/dev/null 2>&1
    ((ENGINE_STARTED)) && "$ROOT/.ci/setup_docker.sh" stop
    find "$STATE_DIR/e2e" -mindepth 1 -maxdepth 1 -type d | sort | head -n -3 | xargs -r rm -rf
    if ((${#TIMINGS[@]})); then
        banner "timings"
        printf '  %s\n' "${TIMINGS[@]}"
    fi
    if ((rc == 0)); then
        banner "E2E PASSED (work dir: $RUN_DIR)"
    else
        banner "E2E FAILED with exit code $rc (logs: $LOGS)"
    fi
    exit "$rc"
}

# A fresh copy of the test_dir template with the prepared data and the quick hyperparameters.
new_test_dir() { # DEST [no-train]
    local dest=$1
    mkdir -p "$(dirname "$dest")"
    cp -a "$ROOT/local_test/test_dir" "$dest"
    rm -rf "$dest/input/data"
    mkdir -p "$dest/input/data" "$dest/model" "$dest/output/data" "$dest/checkpoints"
    [[ ${2:-} == no-train ]] || cp -a "$RUN_DIR/data/train" "$dest/input/data/train"
    # All values strings, as SageMaker sends them.
    python3 -c 'import json, sys; print(json.dumps(dict(a.split("=", 1) for a in sys.argv[1:]), indent=2))' \
        "${QUICK_HYPERPARAMETERS[@]}" >"$dest/input/config/hyperparameters.json"
}

# `train` in one container, as SageMaker runs it; prints the exit code. Logs (with timestamps)
# in $LOGS/NAME.log.
run_train() { # NAME IMAGE TEST_DIR
    local name=$PROJECT-$1 image=$2 dir=$3 rc
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker run -d --name "$name" --hostname algo-1 --shm-size 2g \
        -v "$dir/input:/opt/ml/input:ro" \
        -v "$dir/output:/opt/ml/output" \
        -v "$dir/model:/opt/ml/model" \
        -v "$dir/checkpoints:/opt/ml/checkpoints" \
        "$image" train >/dev/null
    rc=$(timeout "$TRAIN_TIMEOUT_S" docker wait "$name") || rc=timeout
    docker logs -t "$name" >"$LOGS/$1.log" 2>&1
    [[ $rc != timeout ]] || { docker rm -f "$name" >/dev/null; show_log "$LOGS/$1.log"; die "$name ran over ${TRAIN_TIMEOUT_S}s"; }
    echo "$rc"
}

# Seconds from a container's start to the first log line matching PATTERN (docker logs -t).
seconds_to_log_line() { # CONTAINER LOG PATTERN
    local started line
    started=$(docker inspect -f '{{.State.StartedAt}}' "$1")
    line=$(grep -m 1 -F -- "$3" "$2" | cut -d' ' -f1) || true
    [[ -n $line ]] || { echo "n/a (no '$3' line in $2)"; return; }
    awk -v a="$(date -d "$started" +%s.%N)" -v b="$(date -d "$line" +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'
}

expect_success() { # LABEL RC OUTPUT_DIR MODEL_DIR LOG
    [[ $2 == 0 ]] || { show_log "$5"; die "$1: exit code $2, expected 0"; }
    [[ -f $3/success && ! -e $3/failure ]] || { show_log "$5"; die "$1: no $3/success (or a failure file)"; }
    # (No `| grep -q` under pipefail: the writer's SIGPIPE would fail the pipeline.)
    local files
    files=$(find "$4" -type f ! -name .gitkeep -printf '%f\n' | sort | tr '\n' ' ')
    [[ -n $files ]] || die "$1: nothing written to $4"
    info "$1: exit 0, $3/success, model: $files"
}

mkdir -p "$LOGS"
trap cleanup EXIT

# --------------------------------------------------------------------------------------------
banner "1. engine and tools"
t0=$(now)
"$ROOT/.ci/setup_docker.sh" install
[[ $("$ROOT/.ci/setup_docker.sh" start) == started ]] && ENGINE_STARTED=1
# A venv with the given requirement files, made again only when they changed.
tools_venv() { # DIR REQUIREMENTS...
    local dir=$1 wanted
    shift
    wanted=$(cat "$@")
    [[ -f $dir/requirements.txt && $(cat "$dir/requirements.txt") == "$wanted" ]] && return
    info "tools venv: $dir"
    python3 -m venv --clear "$dir"
    logged "$(basename "$dir")-venv" "$dir/bin/pip" install --quiet "${@/#/-r}"
    printf '%s\n' "$wanted" >"$dir/requirements.txt"
}
tools_venv "$TOOLS_VENV" local_test/e2e-requirements.txt examples/requirements-sdk2.txt
tools_venv "$SDK3_VENV" examples/requirements-sdk3.txt
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}' | sed 's/^/  /'
docker compose version | sed 's/^/  /'
timing "engine + tools ready" "$(since "$t0") s"

# --------------------------------------------------------------------------------------------
banner "2. lint: hadolint, shellcheck, docker compose config"
"$TOOLS_VENV/bin/hadolint" docker/Dockerfile docker/cpu-base/Dockerfile
info "hadolint: docker/Dockerfile docker/cpu-base/Dockerfile clean"
# The project's scripts, tracked or new, not those in ignored folders (venvs, caches).
mapfile -t scripts < <(git ls-files --cached --others --exclude-standard '*.sh' | sort)
shellcheck "${scripts[@]}"
info "shellcheck: ${scripts[*]} clean"

# Each combination must parse, and the GPU reservation must be there exactly where intended.
check_compose() { # EXPECTED_SERVICES EXPECT_GPU FILE...
    local services=$1 gpu=$2 args=() f
    shift 2
    for f in "$@"; do args+=(-f "$f"); done
    docker compose "${args[@]}" config --format json | python3 -c '
import json, sys
services, gpu = sys.argv[1].split(","), sys.argv[2] == "gpu"
config = json.load(sys.stdin)["services"]
assert sorted(config) == sorted(services), f"services {sorted(config)}, expected {services}"
for name, service in config.items():
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    has_gpu = any("gpu" in d.get("capabilities", []) for d in devices)
    assert has_gpu == gpu, f"{name}: GPU reservation {has_gpu}, expected {gpu}"
' "$services" "$gpu" || die "docker compose ${args[*]} config: unexpected result"
    info "compose config ok: $* -> services $services, GPUs: $gpu"
}
check_compose algo-1 gpu docker-compose.yml
check_compose algo-1,algo-2 gpu docker-compose.yml docker-compose.two-node.yml
check_compose algo-1 cpu docker-compose.yml docker-compose.cpu.yml
check_compose algo-1,algo-2 cpu docker-compose.yml docker-compose.two-node.yml docker-compose.cpu.yml

# --------------------------------------------------------------------------------------------
banner "3. images: Debian base, CPU stand-in for the DLC, product image"
t0=$(now)
logged debian-base "$ROOT/docker/cpu-base/make-debian-base.sh" --tag "$DEBIAN_BASE"
timing "Debian base image (debootstrap, or exists)" "$(since "$t0") s"
t0=$(now)
logged cpu-base "$ROOT/docker/cpu-base/build.sh" --tag "$CPU_BASE" --debian-base "$DEBIAN_BASE"
timing "CPU stand-in image build" "$(since "$t0") s"
# The compose build path (BuildKit) that `docker compose up` uses on a workstation.
t0=$(now)
TFT_CPU_IMAGE=$IMAGE TFT_CPU_BASE_IMAGE=$CPU_BASE logged image-build \
    docker compose -p "$PROJECT" -f docker-compose.yml -f docker-compose.cpu.yml build
timing "product image build (compose, BuildKit)" "$(since "$t0") s"
image_size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
base_size=$(docker image inspect -f '{{.Size}}' "$CPU_BASE")
timing "product image size above the base" \
    "$(awk -v a="$image_size" -v b="$base_size" 'BEGIN { printf "%.0f MB (image %.0f MB)", (a - b) / 1e6, a / 1e6 }')"

# Nothing of the DLC changed: `pip check` is clean in both images, and every package the DLC
# has is at the DLC's version in both (the builds enforce it; this says so with the figures).
packages=()
for image in "$CPU_BASE" "$IMAGE"; do
    docker run --rm --entrypoint python "$image" -m pip check >"$LOGS/pip-check.log" 2>&1 \
        || { show_log "$LOGS/pip-check.log"; die "pip check failed in $image"; }
    info "pip check in $image: $(cat "$LOGS/pip-check.log")"
    packages+=("$LOGS/packages-${#packages[@]}.txt")
    docker run --rm --entrypoint python "$image" -m pip list --format=freeze >"${packages[-1]}"
done
python3 - docker/dlc-constraints.txt "${packages[@]}" <<'PY' || die "a package of the DLC changed"
import re, sys

def versions(path):
    pins = (line.strip().split("==") for line in open(path) if "==" in line and line[0] != "#")
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}

dlc, stand_in, image = map(versions, sys.argv[1:])
for label, have in (("CPU stand-in", stand_in), ("product image", image)):
    differ = {n: f"{v} (DLC {dlc[n]})" for n, v in have.items() if n in dlc and v != dlc[n]}
    assert not differ, f"{label}: not the DLC's versions: {differ}"
    print(f"  {label}: {sum(n in dlc for n in have)} packages of the DLC, all at its versions")
print("  package              DLC        stand-in   image")
for name in ("numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "pyyaml", "mlflow",
             "sagemaker-training", "torch", "lightning", "pytorch-forecasting"):
    row = [d.get(name, "-") for d in (dlc, stand_in, image)]
    print(f"  {name:20} {row[0]:10} {row[1]:10} {row[2]}")
PY

# The local_test data, made by local_test/prepare_data.py with the image's own Python stack.
docker run --rm --entrypoint python \
    -v "$ROOT/local_test:/src/local_test:ro" -v "$RUN_DIR/data:/data" \
    "$IMAGE" /src/local_test/prepare_data.py --output /data/train | sed 's/^/  /'

# --------------------------------------------------------------------------------------------
banner "4. (a) train in one container"
dir=$RUN_DIR/single
new_test_dir "$dir"
t0=$(now)
rc=$(run_train single "$IMAGE" "$dir")
timing "single-container training run" "$(since "$t0") s"
expect_success "single run" "$rc" "$dir/output" "$dir/model" "$LOGS/single.log"
timing "container start -> first training step" "$(seconds_to_log_line "$PROJECT-single" "$LOGS/single.log" "$FIRST_STEP_MARKER")"
timing "container start -> first epoch metrics" "$(seconds_to_log_line "$PROJECT-single" "$LOGS/single.log" '[metrics] epoch=0')"
docker rm "$PROJECT-single" >/dev/null
# The job's report opens in a real browser: every figure decodes, nothing loads from outside.
logged report bash local_test/check_report.sh "$dir/output/data/report.html" "$LOGS/report.png" \
    || die "the job's report.html fails in a browser"
info "$(tail -n 1 "$LOGS/report.log")"
# The model artifacts are usable, and `python -m tft_sagemaker.predict` works from any directory.
logged predict docker run --rm --entrypoint python -w / \
    -v "$dir/model:/opt/ml/model:ro" -v "$dir/input:/opt/ml/input:ro" -v "$dir/output:/opt/ml/output" \
    "$IMAGE" -m tft_sagemaker.predict --model /opt/ml/model --data /opt/ml/input/data/train \
    --output /opt/ml/output/data/forecast.parquet
[[ -s $dir/output/data/forecast.parquet ]] || die "predict wrote no forecast"
info "predict from the model: $dir/output/data/forecast.parquet"

# --------------------------------------------------------------------------------------------
# Each run in its own fresh test dir; exit codes of every service, not just the first to stop.
compose_run() { # NAME HOSTS FILE...
    local name=$1 hosts=$2 args=() f host code
    shift 2
    for f in "$@"; do args+=(-f "$f"); done
    dir=$RUN_DIR/$name
    new_test_dir "$dir"
    export TFT_TEST_DIR=$dir TFT_CPU_IMAGE=$IMAGE TFT_CPU_BASE_IMAGE=$CPU_BASE
    t0=$(now)
    timeout "$TRAIN_TIMEOUT_S" docker compose -p "$PROJECT" "${args[@]}" up --no-build \
        --abort-on-container-failure >"$LOGS/$name.log" 2>&1 || true
    timing "compose run: $name" "$(since "$t0") s"
    for host in $hosts; do
        code=$(docker compose -p "$PROJECT" "${args[@]}" ps -a --format '{{.ExitCode}}' "$host")
        expect_success "$name $host" "$code" "$dir/output/$host" "$dir/model" "$LOGS/$name.log"
    done
    local writers
    writers=$(grep -c -F -- "$MODEL_WRITTEN_MARKER" "$LOGS/$name.log" || true)
    [[ $writers == 1 ]] || die "$name: the model was written $writers times, expected once (by the leader)"
    info "$name: one model, written by $(grep -F -- "$MODEL_WRITTEN_MARKER" "$LOGS/$name.log" | cut -d' ' -f1)"
    docker compose -p "$PROJECT" "${args[@]}" down >/dev/null 2>&1
}

banner "5. (b) compose on CPU: one node"
compose_run compose-one-node algo-1 docker-compose.yml docker-compose.cpu.yml
banner "5. (b) compose on CPU: two nodes"
compose_run compose-two-node "algo-1 algo-2" \
    docker-compose.yml docker-compose.two-node.yml docker-compose.cpu.yml

# --------------------------------------------------------------------------------------------
banner "6. (b) SageMaker local mode: SDK v3 and v2 (examples/), one and two instances"
# Each SDK writes its own compose file (algo-1 ... algo-N) and runs the image; no AWS account:
# the examples use dummy keys and opt out of telemetry in local mode. An SDK judges a job by the
# first container to exit: every container's exit code and the model archive itself are checked.
hp_flags=()
for pair in "${QUICK_HYPERPARAMETERS[@]}"; do hp_flags+=(--hp "$pair"); done
sdk_local_run() { # SDK_VERSION INSTANCES
    local sdk=$1 count=$2 name="sdk$1-local-$2" python="$TOOLS_VENV/bin/python" dir containers
    [[ $sdk == 3 ]] && python=$SDK3_VENV/bin/python
    dir=$RUN_DIR/$name
    mkdir -p "$dir"
    docker ps -aq --no-trunc --filter "ancestor=$IMAGE" | sort >"$dir/containers-before"
    t0=$(now)
    (cd "$dir" && env -u AWS_PROFILE -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
        timeout "$TRAIN_TIMEOUT_S" "$python" "$ROOT/examples/launch_sagemaker_v$sdk.py" \
        --local --image-uri "$IMAGE" --instance-count "$count" --train "file://$RUN_DIR/data/train" \
        --output "file://$dir/out" "${hp_flags[@]}") >"$LOGS/$name.log" 2>&1 \
        || { show_log "$LOGS/$name.log"; die "$name: the SDK reported a failure"; }
    timing "SDK v$sdk local mode, $count instance(s)" "$(since "$t0") s"
    # The containers of this run (the SDKs leave them behind): one per instance, all exit 0.
    mapfile -t containers < <(docker ps -aq --no-trunc --filter "ancestor=$IMAGE" | sort \
        | comm -13 "$dir/containers-before" -)
    printf '%s\n' "${containers[@]}" | xargs -r docker inspect -f '{{.Name}} {{.State.ExitCode}}' \
        >"$dir/exit-codes"
    printf '%s\n' "${containers[@]}" | xargs -r docker rm -f >/dev/null
    (($(wc -l <"$dir/exit-codes") == count)) \
        || die "$name: $(wc -l <"$dir/exit-codes") containers, expected $count"
    awk '$2 != 0 { bad = 1 } END { exit bad }' "$dir/exit-codes" \
        || { show_log "$LOGS/$name.log"; die "$name: a container failed: $(tr '\n' ' ' <"$dir/exit-codes")"; }
    info "$name: exit codes $(tr '\n' ' ' <"$dir/exit-codes")"
    python3 - "$(find "$dir/out" -name model.tar.gz)" "$(find "$dir/out" -name output.tar.gz)" \
        "$count" <<'PY' || die "$name: the model archive is not what the job writes"
import json, sys, tarfile

model, output, hosts = sys.argv[1], sys.argv[2], int(sys.argv[3])
expected = ["config.json", "dataset_parameters.pt", "metrics.json", "model.ckpt", "report_data.json"]
with tarfile.open(model) as tar:
    files = sorted(m.name.removeprefix("./") for m in tar.getmembers() if m.isfile())
    assert files == expected, f"{model} holds {files}, expected {expected}"
    metrics = json.load(tar.extractfile(next(m for m in tar if m.name.endswith("metrics.json"))))
# Every host trained: one process group of all of them, one summary per rank.
assert metrics["world_size"] == hosts, f"world_size {metrics['world_size']}, expected {hosts}"
with tarfile.open(output) as tar:
    names = tar.getnames()
summaries = [n for n in names if "training-summary-" in n]
assert len(summaries) == hosts, f"training summaries {summaries}, expected {hosts}"
assert not any(n.endswith("failure") for n in names), f"a failure file in {output}"
assert any(n.endswith("report.html") for n in names), f"no report.html in {output}"
print(f"  model.tar.gz: {' '.join(files)}; world_size {hosts}, val_MAE {metrics['val_MAE']:.3g}")
PY
}
sdk_local_run 3 2
sdk_local_run 3 1
sdk_local_run 2 2
sdk_local_run 2 1

# --------------------------------------------------------------------------------------------
banner "7. (c) build_and_push.sh -> local registry + moto; pull by URI; train"
mkdir -p "$RUN_DIR/registry" "$RUN_DIR/aws" "$RUN_DIR/docker-config"
cat >"$RUN_DIR/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $RUN_DIR/registry
http:
  addr: $REGISTRY_ADDR
EOF
start_bg registry docker-registry serve "$RUN_DIR/registry.yml"
start_bg moto "$TOOLS_VENV/bin/moto_server" -H "${MOTO_ADDR%:*}" -p "${MOTO_ADDR#*:}"
wait_http "http://$REGISTRY_ADDR/v2/" registry
wait_http "http://$MOTO_ADDR/moto-api/" moto
info "registry on $REGISTRY_ADDR, moto on $MOTO_ADDR"
# The region comes from the AWS config file, as on a workstation; dummy keys for moto; a
# private docker config so that no registry login lands in ~/.docker.
printf '[default]\nregion = us-west-2\n' >"$RUN_DIR/aws/config"
push_env=(
    env -u AWS_REGION -u AWS_DEFAULT_REGION -u AWS_PROFILE
    "PATH=$TOOLS_VENV/bin:$PATH"
    "AWS_ENDPOINT_URL=http://$MOTO_ADDR"
    "AWS_CONFIG_FILE=$RUN_DIR/aws/config"
    AWS_SHARED_CREDENTIALS_FILE=/dev/null
    AWS_ACCESS_KEY_ID=e2e-dummy AWS_SECRET_ACCESS_KEY=e2e-dummy
    "DOCKER_CONFIG=$RUN_DIR/docker-config"
)
t0=$(now)
uri=$("${push_env[@]}" ./build_and_push.sh --base-image "$CPU_BASE" --registry "$REGISTRY_ADDR" \
    2>"$LOGS/build_and_push.log") || { show_log "$LOGS/build_and_push.log"; die "build_and_push.sh failed"; }
timing "build_and_push.sh (build + push)" "$(since "$t0") s"
[[ $uri == "$REGISTRY_ADDR/tft-sagemaker:"* ]] || die "build_and_push.sh printed '$uri', expected $REGISTRY_ADDR/tft-sagemaker:TAG"
info "pushed: $uri"
scan=$("${push_env[@]}" aws ecr describe-repositories --repository-names tft-sagemaker \
    --query 'repositories[0].imageScanningConfiguration.scanOnPush' --output text)
[[ $scan == True ]] || die "ECR repository tft-sagemaker: scanOnPush is '$scan'"
info "ECR repository tft-sagemaker created (moto), scan on push: $scan"
docker rmi "$uri" "${uri%:*}:latest" >/dev/null
t0=$(now)
logged pull docker pull "$uri"
timing "docker pull of the pushed image" "$(since "$t0") s"
info "labels: $(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}} revision {{index .Config.Labels "org.opencontainers.image.revision"}}' "$uri")"
dir=$RUN_DIR/pulled
new_test_dir "$dir"
rc=$(run_train pulled "$uri" "$dir")
expect_success "pulled image run" "$rc" "$dir/output" "$dir/model" "$LOGS/pulled.log"
docker rm "$PROJECT-pulled" >/dev/null

# --------------------------------------------------------------------------------------------
banner "8. (d) bad run: no train channel"
dir=$RUN_DIR/no-train
new_test_dir "$dir" no-train
rc=$(run_train no-train "$IMAGE" "$dir")
docker rm "$PROJECT-no-train" >/dev/null
[[ $rc != 0 ]] || die "no-train run: exit code 0, expected a failure"
[[ -s $dir/output/failure ]] || die "no-train run: no $dir/output/failure"
info "exit code $rc; output/failure: $(head -c 300 "$dir/output/failure")"
if ! grep -qi channel "$dir/output/failure" || ! grep -q train "$dir/output/failure"; then
    die "no-train run: output/failure does not name the missing 'train' channel"
fi

# --------------------------------------------------------------------------------------------
banner "9. docker stop (SageMaker's SIGTERM): checkpoint, then a restarted job resumes"
dir=$RUN_DIR/sigterm
new_test_dir "$dir"
python3 - "$dir/input/config/hyperparameters.json" <<'PY'
import json, sys
path = sys.argv[1]
values = json.load(open(path))
values.update(max_epochs="6", limit_train_batches="40", early_stopping_patience="0")
json.dump(values, open(path, "w"), indent=2)
PY
name=$PROJECT-sigterm
docker rm -f "$name" >/dev/null 2>&1 || true
docker run -d --name "$name" --hostname algo-1 --shm-size 2g \
    -v "$dir/input:/opt/ml/input:ro" -v "$dir/output:/opt/ml/output" \
    -v "$dir/model:/opt/ml/model" -v "$dir/checkpoints:/opt/ml/checkpoints" \
    "$IMAGE" train >/dev/null
for _ in $(seq 1 600); do
    docker logs "$name" >"$LOGS/sigterm.log" 2>&1
    grep -qF '[metrics] epoch=0' "$LOGS/sigterm.log" && break
    sleep 0.2
done
t0=$(now)
docker stop -t 110 "$name" >/dev/null # SIGTERM to the first process; SIGKILL after 110 s
timing "docker stop -> container exited" "$(since "$t0") s"
rc=$(docker wait "$name")
docker logs -t "$name" >"$LOGS/sigterm.log" 2>&1
docker rm "$name" >/dev/null
[[ $rc != 0 ]] || { show_log "$LOGS/sigterm.log"; die "stopped run: exit code 0 (it finished before the stop?)"; }
[[ -f $dir/checkpoints/last.ckpt ]] || { show_log "$LOGS/sigterm.log"; die "stopped run: no checkpoints/last.ckpt"; }
grep -q SIGTERM "$dir/output/failure" || { show_log "$LOGS/sigterm.log"; die "stopped run: output/failure does not say SIGTERM"; }
info "stopped: exit code $rc; output/failure: $(head -n 1 "$dir/output/failure")"
rm -f "$dir/output/failure" # SageMaker starts the restarted job with a fresh output dir
rc=$(run_train resumed "$IMAGE" "$dir")
docker rm "$PROJECT-resumed" >/dev/null
expect_success "resumed run" "$rc" "$dir/output" "$dir/model" "$LOGS/resumed.log"
grep -q 'resuming from /opt/ml/checkpoints/last.ckpt' "$LOGS/resumed.log" \
    || { show_log "$LOGS/resumed.log"; die "the restarted run did not resume from the checkpoint"; }
info "the restarted job resumed from checkpoints/last.ckpt and completed"
