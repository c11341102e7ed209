#!/usr/bin/env bash
# The GPU checks of issue 12 in one run, for a machine with a CUDA build of torch (sized for under
# 10 minutes on one H100/H200; never run on a GPU yet, so not measured): captured vs eager training
# (weights, repeatability, seconds per epoch; one LeNet, 8 stacked, ResNet-18), conv nets side by
# side against one by one and timed for K = 2..4, compact and batched MLP equality, then the preset
# bench rows (with the captured ceiling) and the LeNet/MLP suite with its captured columns. Its CPU smoke test: tests/test_gpu_check.py.
# Results go to $OUT (default gpu-check/); paste the figures into docs/performance.md with the card's name.
#
#   OUT=/tmp/out DATA_DIR=../shared/data bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
DATA=${DATA_DIR:+--data-dir $DATA_DIR}
"$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' | tee "$OUT/device.txt"
"$PYTHON" benchmarks/gpu_check.py $DATA --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
for capture in off on; do
  "$PYTHON" -m sparsedd.cli bench --preset paper-cifar10-resnet18 --device cuda --batches 30 --warmup 5 \
    --set train.precision=bf16 --channels-last --capture $capture --ks 2,3,4 --format json \
    > "$OUT/bench-resnet18-bf16-cl-capture-$capture.json"
done
"$PYTHON" -m sparsedd.cli bench --preset paper-mnist-lenet --device cuda --batches 100 --warmup 10 --capture on \
  $DATA --format json > "$OUT/bench-lenet-capture-on.json"
"$PYTHON" -m sparsedd.cli bench --device cuda --rounds 1 $DATA --out "$OUT/bench-suite.json" | tee "$OUT/bench-suite.txt"
echo "done: $OUT"
