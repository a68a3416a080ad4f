#!/usr/bin/env bash
# Every GPU check of the project, as one script for a lent GPU machine (no network there).
# Carry pytorch-forecasting and scikit-base wheels and the Stallion file in .whl/ (git-ignored):
#   pip download --no-deps --only-binary=:all: -d .whl pytorch-forecasting==1.8.0 scikit-base==1.0.2
#   cp ../shared/data/stallion.parquet .whl/
# Writes its figures and logs to $OUT (bench/results/ gets the figures afterwards).
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
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_batches.py -k cuda 2>&1 \
    | tail -3 | tee "$OUT/tests.txt"
timeout 60 python3 bench/gpu_fused_check.py --data "$STALLION_PARQUET" 2>&1 | tail -2 \
    | tee -a "$OUT/tests.txt"

echo "== 2. the training job on the GPU (precision auto -> bf16), Stallion preset, 3 epochs"
base=/tmp/gpu-job
rm -rf "$base" && mkdir -p "$base/input/data/train" "$base/model" "$base/output/data"
cp "$STALLION_PARQUET" "$base/input/data/train/"
SAGEMAKER_BASE_DIR=$base PYTHONPATH=/tmp/site:$PWD/code timeout 150 \
    python3 code/train.py --preset stallion --max_epochs 3 >"$OUT/job.log" 2>&1
echo "job exit code $?"
grep -E '\[metrics\]|launch plan|precision|rank 0/' "$OUT/job.log" | cut -c1-300 | tail -8
cp "$base/model/metrics.json" "$OUT/job_metrics.json" 2>/dev/null

echo "== 3. throughput: the tutorial loop vs this project's path, fp32 and bf16"
PYTHONPATH=/tmp/site timeout 330 python3 bench/throughput.py --data "$STALLION_PARQUET" \
    --epochs 4 --skip-time-to-mae --skip-scaling --output "$OUT/throughput_gpu.json" 2>&1 | tail -14
