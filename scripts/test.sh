#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest; --fast first runs the inner loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the report test opens the report in a real headless Chromium (Debian's package)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium for the report test..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "could not install chromium; the report test will say so" >&2
fi
# Two pytest processes (pytest-xdist), one per core of the 2-core CI machine: the tests run on one torch
# thread each, so one process leaves a core idle (7m46s against 11m52s here: docs/design.md). A later -n in
# the arguments wins (-n 0: one process, e.g. to debug with -x or --pdb).
workers=(-n "${SPARSEDD_TEST_WORKERS:-2}")
# --fast: the inner loop (no slow, subprocess, browser or GPU test: tests/conftest.py's tiers), under 2 minutes
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not slow and not subprocess and not browser and not gpu" "$@"
fi
exec .venv/bin/python -m pytest -q "${workers[@]}" "$@"
