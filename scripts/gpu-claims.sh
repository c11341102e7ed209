#!/usr/bin/env bash
# Issue 14's paper-MNIST evidence on a lent GPU, inside one device call of at most 10 minutes:
# paper-mnist-lenet with 5 seeds at full length (25,000 LeNet epochs, the 5 seeds batched and each
# step replayed as a CUDA graph), then claims 4-6 on it, its 5-seed figure, curve and phases.
# Everything is resumable: a second call on the same (still warm) machine continues from ROOT.
# The time left after that goes to benchmarks/gpu_check.py (issue 12's captured-vs-eager checks).
# Measured on an H100 (2026-11-26, a call cut short): one level of the 5 seeds (5 x 200 epochs) in 22 s,
# so the run takes about 9.5 min: one call of BUDGET=575 nearly finishes it, a second call does the rest.
# That session's first call spent its whole 9.5 min before level 0's first stage, most likely in the
# sparse crossover measurement that --sparse auto no longer makes on a GPU (the second call started at once).
#
#   OUT=/tmp/out DATA_DIR=.gpudata BUDGET=575 bash scripts/gpu-claims.sh
#
# ../shared does not travel to the device machine: copy ../shared/data/mnist to .gpudata/mnist here
# (ignored through .git/info/exclude, with runs-gpu) and name .gpudata in the device call's carry.
#
# Environment: OUT (results; default gpu-claims), ROOT (the store; default runs-gpu), DATA_DIR (a folder
# holding mnist/), BUDGET (seconds this call may take in all), DEVICE (default cuda), EXTRA (more
# arguments for run and claims, e.g. "--set train.epochs=1 --set prune.levels=2" for a CPU smoke test).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-claims}
ROOT=${ROOT:-runs-gpu}
BUDGET=${BUDGET:-560}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
EXTRA=${EXTRA:-}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
DATA=${DATA_DIR:+--data-dir $DATA_DIR}
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
# each command prints every thread's stack 15 s before its time is up, so a stall says where it was
sdd() { local t; t=$(left); [ "$t" -gt 20 ] || { echo "no time left for: $*" >&2; return 124; }
        timeout "$t" "$PYTHON" -c 'import faulthandler, sys
faulthandler.dump_traceback_later(float(sys.argv[1]), exit=False)
sys.argv = ["sparsedd", *sys.argv[2:]]
from sparsedd.cli import main
raise SystemExit(main())' "$((t - 15))" "$@"; }
X="--root $ROOT --device $DEVICE --capture on --batch on $DATA $EXTRA"  # no terminal: one line per finished stage

"$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' \
  | tee "$OUT/device.txt"
echo "== run ($(left) s left)"
sdd run --preset paper-mnist-lenet --seeds 5 $X 2>&1 | tee -a "$OUT/run.log" | tail -n 40
[ "${PIPESTATUS[0]}" = 0 ] || { echo "run not finished; call again to continue"; exit 3; }
echo "== claims 4-6 ($(left) s left)"
sdd claims --preset paper-mnist-lenet --seeds 5 --only 4,5,6 --workers 8 $X --format json \
  > "$OUT/claims.json.tmp" 2> "$OUT/claims.log" || { tail -n 20 "$OUT/claims.log"; echo "claims not finished; call again"; exit 3; }
mv "$OUT/claims.json.tmp" "$OUT/paper-mnist-lenet-4-5-6.json"
sdd claims --preset paper-mnist-lenet --seeds 5 --only 4,5,6 --workers 8 $X --format markdown \
  > "$OUT/paper-mnist-lenet-4-5-6.md" 2>> "$OUT/claims.log"
cat "$OUT/paper-mnist-lenet-4-5-6.md"
run=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["runs"]["base"])' "$OUT/paper-mnist-lenet-4-5-6.json")
sdd plot "$run" --root "$ROOT" --out "$OUT/paper-mnist-lenet-5seeds.png"
sdd show "$run" --root "$ROOT" --format markdown > "$OUT/paper-mnist-lenet-5seeds-curve.md"
sdd show "$run" --root "$ROOT" --format json > "$OUT/paper-mnist-lenet-5seeds-curve.json"
sdd analyze "$run" phases --root "$ROOT" --format json > "$OUT/paper-mnist-lenet-5seeds-phases.json"
cat "$OUT/paper-mnist-lenet-5seeds-curve.md"
echo "== evidence done ($(left) s left); gpu_check with the rest"
t=$(left)
if [ "$DEVICE" = cuda ] && [ "$t" -gt 60 ]; then
  timeout "$t" "$PYTHON" benchmarks/gpu_check.py $DATA --out "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
  tail -n 5 "$OUT/gpu_check.log"
fi
echo "done: $OUT"
