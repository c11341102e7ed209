#!/usr/bin/env bash
# The evidence of issue 14 (docs/results/claims.md): the paper's six claims measured over 5 seeds,
# on the quick MNIST-1D preset and on the paper's own MNIST setting. Not run by the tests.
#
# Resumable: every command reuses the finished stages in $ROOT and continues partial ones from
# their checkpoints, so after an interruption (Ctrl-C, a crash, a reboot) run this script again.
#
#   bash scripts/claims-evidence.sh                 # step 1 and 2 (the MNIST-1D claims; LeNet 5 seeds + claims 4-6)
#   STEPS=1 bash scripts/claims-evidence.sh         # only the MNIST-1D claims (about 1-2 h on 2 CPU cores)
#   STEPS=2 DATA_DIR=../shared/data bash scripts/claims-evidence.sh   # only paper-mnist-lenet
#   FULL=1 bash scripts/claims-evidence.sh          # step 2 with all six claims on paper-mnist-lenet
#
# Environment: ROOT (results; default runs-claims), DATA_DIR (a folder holding mnist/; default
# ../shared/data when it exists), OUT (where the JSON and Markdown rows go; default docs/results/claims),
# SPARSEDD (the command; default .venv/bin/sparsedd), PYTHON (default .venv/bin/python), DEVICE (default auto: cuda where there is one),
# EXTRA (more arguments for every run and claims command, e.g. "--set train.epochs=2" for a smoke test
# with another ROOT and OUT; the evidence is the script without it).
#
# Cost (estimates from measured single runs, docs/results/mnist1d-quick.md and paper-mnist-lenet.md).
# Step 1: 5 runs (base, +0.2 label noise, random pruning, lr-rewind, half the training set) x 5 seeds,
# each a 27-level curve of 100-epoch MNIST-1D trainings (135-180 s per seed on the 2-core machine), so
# about 60-75 min of one core, plus re-dense (5 trainings), reinit (8 levels x 5 seeds) and the
# sharpness of 27 levels x 5 seeds on 2,048 examples: about 1 to 2 hours on 2 cores with 2 workers.
# Step 2: paper-mnist-lenet with 5 seeds is 25 levels x 200 epochs x 5 seeds = 25,000 LeNet epochs (one
# seed took 1 h 42 min of training on the 2-core machine: about 8.5 h for five; much less on a GPU),
# then claims 4, 5 and 6 on that run: re-dense 5 x 200 epochs and reinit 8 levels x 5 seeds x 200
# epochs (8,000 more epochs, each level's seeds stacked: 100 min measured, docs/results/claims.md). FULL=1 adds the four other runs claims 1-3 need: about five
# times step 2's training (a GPU job).
set -euo pipefail
cd "$(dirname "$0")/.."
SPARSEDD=${SPARSEDD:-.venv/bin/sparsedd}
PYTHON=${PYTHON:-.venv/bin/python}
ROOT=${ROOT:-runs-claims}
OUT=${OUT:-docs/results/claims}
DEVICE=${DEVICE:-auto}
EXTRA=${EXTRA:-}
STEPS=${STEPS:-1 2}
if [ -z "${DATA_DIR:-}" ] && [ -d ../shared/data/mnist ]; then DATA_DIR=../shared/data; fi
DATA=${DATA_DIR:+--data-dir $DATA_DIR}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

claims() {  # claims NAME ARGS...: the table on the terminal, JSON and Markdown rows into $OUT/NAME.*
  local name=$1; shift
  "$SPARSEDD" claims --root "$ROOT" --device "$DEVICE" $DATA $EXTRA "$@" --format json > "$OUT/$name.json.tmp"
  mv "$OUT/$name.json.tmp" "$OUT/$name.json"
  "$SPARSEDD" claims --root "$ROOT" --device "$DEVICE" $DATA $EXTRA "$@" --no-progress --format markdown \
    > "$OUT/$name.md"
  cat "$OUT/$name.md"
}

for step in $STEPS; do
  case $step in
    1)
      echo "== step 1: sparsedd claims --preset mnist1d-quick --seeds 5" >&2
      start=$(date +%s)
      claims mnist1d-quick --preset mnist1d-quick --seeds 5
      echo "step 1: $(( $(date +%s) - start )) s (this call; reused stages cost nothing)" | tee "$OUT/mnist1d-quick.time"
      ;;
    2)
      echo "== step 2: paper-mnist-lenet, 5 seeds at full length" >&2
      start=$(date +%s)
      "$SPARSEDD" run --preset paper-mnist-lenet --seeds 5 --root "$ROOT" --device "$DEVICE" $DATA $EXTRA
      if [ "${FULL:-0}" = 1 ]; then
        name=paper-mnist-lenet
        claims $name --preset paper-mnist-lenet --seeds 5
      else  # the claims the 5-seed run alone supports (no other run is trained)
        name=paper-mnist-lenet-4-5-6
        claims $name --preset paper-mnist-lenet --seeds 5 --only 4,5,6
      fi
      run=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["runs"]["base"])' "$OUT/$name.json")
      "$SPARSEDD" plot "$run" --root "$ROOT" --out "$OUT/paper-mnist-lenet-5seeds.png"
      "$SPARSEDD" show "$run" --root "$ROOT" --format markdown > "$OUT/paper-mnist-lenet-5seeds-curve.md"
      "$SPARSEDD" analyze "$run" phases --root "$ROOT" --format json > "$OUT/paper-mnist-lenet-5seeds-phases.json"
      echo "step 2: $(( $(date +%s) - start )) s (this call)" | tee "$OUT/paper-mnist-lenet.time"
      ;;
    *) echo "unknown step $step (1 or 2)" >&2; exit 2 ;;
  esac
done
