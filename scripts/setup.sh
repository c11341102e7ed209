#!/usr/bin/env bash
# Create .venv (once) with torch and sparsedd installed in editable mode, then print its path.
# TORCH_SPEC picks the torch build (default torch==2.13.0; the package accepts any 2.x >= 2.2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.sparsedd-installed
want="$(cat pyproject.toml | sha256sum | cut -c1-16) ${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
  # torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build here
  "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" >&2
  "$VENV/bin/python" -m pip install -q -e '.[dev]' >&2
  echo "$want" > "$STAMP"
fi
