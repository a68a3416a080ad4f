#!/usr/bin/env bash
# Run the training job as the image does: the image's supervisor around the installed SageMaker
# training toolkit (`train`), in a fresh copy of local_test/test_dir (SAGEMAKER_BASE_DIR points
# there).
#
#   local_test/train_local.sh [--run-dir DIR] [--template DIR] [key=value ...]
#
# key=value pairs are added to hyperparameters.json (as strings, as SageMaker sends them).
# --template: the /opt/ml-shaped directory to copy (default local_test/test_dir).
# Prints "run dir: DIR" at the end; DIR holds output/success (or output/failure) and model/.
# Ctrl-C or `kill` (SIGINT, SIGTERM) stops the job as SageMaker's StopTrainingJob does: it
# saves a checkpoint, writes output/failure, and this script exits non-zero after it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
run_dir=""
template="$here/test_dir"
overrides=()
while (($#)); do
  case "$1" in
    --run-dir) run_dir="$2"; shift 2 ;;
    --template) template="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
run_dir="${run_dir:-$root/runs/$(date +%Y%m%d-%H%M%S)}"
if [[ -e "$run_dir" ]]; then
  echo "run dir $run_dir exists: choose another (runs never overwrite each other)" >&2
  exit 2
fi
if [[ ! -d "$template/input/data/train" ]]; then
  echo "no training data: run 'python local_test/prepare_data.py' first" >&2
  exit 2
fi

mkdir -p "$(dirname "$run_dir")"
cp -r "$template" "$run_dir"
mkdir -p "$run_dir/model" "$run_dir/output/data"  # without output/ the toolkit reports success
cp -r "$root/code" "$run_dir/code"
export SAGEMAKER_BASE_DIR="$run_dir"
export SM_STUDIO_LOCAL_MODE=true   # else the toolkit waits for host algo-1 to resolve
export SAGEMAKER_PROGRAM=train.py
# The framework module the image names: the toolkit's own process passes stops on, waits for
# training and fails with its cause (code/tft_sagemaker/sagemaker/framework.py).
export SAGEMAKER_TRAINING_MODULE="${SAGEMAKER_TRAINING_MODULE:-tft_sagemaker.sagemaker.framework:main}"
export PYTHONPATH="$run_dir/code${PYTHONPATH:+:$PYTHONPATH}"

report() {
  echo "run dir: $run_dir"
  if [[ -f "$run_dir/output/failure" ]]; then
    echo "failure: $(head -n 1 "$run_dir/output/failure")" >&2
  fi
}

# What the toolkit reads first (the JSON files, the stop rehearsal): a one-line cause, not a
# traceback, before the overrides are merged in.
status=0
python -m tft_sagemaker.sagemaker.preflight || status=$?
if ((status)); then report; exit "$status"; fi
if ((${#overrides[@]})); then
  python - "$run_dir/input/config/hyperparameters.json" "${overrides[@]}" <<'PY'
import json, sys
path, pairs = sys.argv[1], sys.argv[2:]
values = json.load(open(path))
values.update(pair.split("=", 1) for pair in pairs)
json.dump(values, open(path, "w"), indent=2)
PY
fi

# In the background, so that the traps below run while it works: bash runs a trap only once
# the foreground command has ended.
python -m tft_sagemaker.sagemaker.supervise train &
job=$!
trap 'kill -s INT "$job" 2>/dev/null || true' INT
trap 'kill -s TERM "$job" 2>/dev/null || true' TERM
wait "$job" || status=$?
while kill -0 "$job" 2>/dev/null; do  # a signal interrupted the wait: wait for the job itself
  status=0
  wait "$job" || status=$?
done
report
exit "$status"
