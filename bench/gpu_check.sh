#!/usr/bin/env bash
# Every GPU check of the project, as one script for a lent GPU machine (no network there).
# Carry pytorch-forecasting and scikit-base wheels and the Stallion file in .whl/ (git-ignored):
#   pip download --no-deps --only-binary=:all: -d .whl pytorch-forecasting==1.8.0 scikit-base==1.0.2
#   cp ../shared/data/stallion.parquet .whl/
# Writes its figures and logs to $OUT (bench/results/ gets the figures afterwards):
# $OUT/throughput_<gpu>.json is bench/throughput.py's JSON (the CPU bench's fields) with the
# static_shapes step's GPU figures under "gpu_step" (bench/gpu_step.py). The sections' timeouts
# cap it at about 11 minutes (expected: about 6); see the README's "GPU checks".
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 STALLION_PARQUET=$PWD/.whl/stallion.parquet
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import torch, lightning, pytorch_forecasting, pandas as pd
print("torch", torch.__version__, "lightning", lightning.__version__,
      "pytorch-forecasting", pytorch_forecasting.__version__, "pandas", pd.__version__)'
} | tee "$OUT/gpu.txt"

echo "== 1. vectorised batches equal pytorch-forecasting's on the GPU; fused VSN on the GPU"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_batches.py -k cuda 2>&1 \
    | tail -3 | tee "$OUT/tests.txt"
timeout 45 python3 bench/gpu_fused_check.py --data "$STALLION_PARQUET" 2>&1 | tail -2 \
    | tee -a "$OUT/tests.txt"

echo "== 2. static_shapes: equivalence with the library (CPU, float64) and one graph"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_static_shapes.py \
    2>&1 | tail -3 | tee -a "$OUT/tests.txt"

echo "== 3. the step on the GPU: library vs static_shapes per compile_mode; busy share, kernels"
echo "==    per step, host syncs, equivalence on the GPU (tutorial b128 fp32; 35,000 series b1024 bf16)"
timeout 240 python3 bench/gpu_step.py --data "$STALLION_PARQUET" --output "$OUT/gpu_step.json" \
    2>&1 | grep -v Warning | tail -8

echo "== 4. the training job on the GPU (precision auto -> bf16), Stallion preset, 3 epochs"
base=/tmp/gpu-job
rm -rf "$base" && mkdir -p "$base/input/data/train" "$base/model" "$base/output/data"
cp "$STALLION_PARQUET" "$base/input/data/train/"
SAGEMAKER_BASE_DIR=$base PYTHONPATH=/tmp/site:$PWD/code timeout 90 \
    python3 code/train.py --preset stallion --max_epochs 3 >"$OUT/job.log" 2>&1
echo "job exit code $?"
grep -E '\[metrics\]|launch plan|precision|rank 0/' "$OUT/job.log" | cut -c1-300 | tail -8
cp "$base/model/metrics.json" "$OUT/job_metrics.json" 2>/dev/null

echo "== 5. throughput: the tutorial loop vs this project's path, fp32 and bf16"
PYTHONPATH=/tmp/site timeout 120 python3 bench/throughput.py --data "$STALLION_PARQUET" \
    --epochs 3 --skip-time-to-mae --skip-scaling --output "$OUT/throughput_gpu.json" 2>&1 | tail -14
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 \
    | grep -oiE '\b[a-z]{1,2}[0-9]{2,4}\b' | head -1 | tr '[:upper:]' '[:lower:]')
python3 - "$OUT" "$gpu" <<'MERGE'
import json, pathlib, sys
out, gpu = pathlib.Path(sys.argv[1]), sys.argv[2]
merged = {}
for name in ("throughput_gpu.json", "gpu_step.json"):
    if (out / name).exists():
        merged |= json.loads((out / name).read_text())
(out / f"throughput_{gpu}.json").write_text(json.dumps(merged, indent=2) + "\n")
print("wrote", out / f"throughput_{gpu}.json")
MERGE
