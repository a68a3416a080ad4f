#!/usr/bin/env bash
# Run the training job through the installed SageMaker training toolkit (`train`), exactly as
# the container does, in a fresh copy of local_test/test_dir (SAGEMAKER_BASE_DIR points there).
#
#   local_test/train_local.sh [--run-dir DIR] [key=value ...]
#
# key=value pairs are added to hyperparameters.json (as strings, as SageMaker sends them).
# Prints "run dir: DIR" at the end; DIR holds output/success (or output/failure) and model/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
run_dir=""
overrides=()
while (($#)); do
  case "$1" in
    --run-dir) run_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
run_dir="${run_dir:-$root/runs/$(date +%Y%m%d-%H%M%S)}"
if [[ -e "$run_dir" ]]; then
  echo "run dir $run_dir exists: choose another (runs never overwrite each other)" >&2
  exit 2
fi
if [[ ! -d "$here/test_dir/input/data/train" ]]; then
  echo "no training data: run 'python local_test/prepare_data.py' first" >&2
  exit 2
fi

mkdir -p "$(dirname "$run_dir")"
cp -r "$here/test_dir" "$run_dir"
mkdir -p "$run_dir/model" "$run_dir/output/data"  # without output/ the toolkit reports success
cp -r "$root/code" "$run_dir/code"
if ((${#overrides[@]})); then
  python - "$run_dir/input/config/hyperparameters.json" "${overrides[@]}" <<'PY'
import json, sys
path, pairs = sys.argv[1], sys.argv[2:]
values = json.load(open(path))
values.update(pair.split("=", 1) for pair in pairs)
json.dump(values, open(path, "w"), indent=2)
PY
fi

export SAGEMAKER_BASE_DIR="$run_dir"
export SM_STUDIO_LOCAL_MODE=true   # else the toolkit waits for host algo-1 to resolve
export SAGEMAKER_PROGRAM=train.py
status=0
train || status=$?
echo "run dir: $run_dir"
if [[ -f "$run_dir/output/failure" ]]; then
  echo "failure: $(head -n 1 "$run_dir/output/failure")" >&2
fi
exit "$status"
