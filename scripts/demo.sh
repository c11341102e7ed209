#!/usr/bin/env bash
# Set up .venv if needed, then run sparsedd (default: `sparsedd run`, the quick MNIST-1D demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- run; fi
exec .venv/bin/sparsedd "$@"
