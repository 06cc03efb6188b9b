#!/usr/bin/env bash
# Create ./.venv (if missing) and install relpsp with every extra. Safe to run again.
# torch==2.13.0 goes first: it is the CPU build these machines carry; a bare `torch` would pull a
# multi-GB CUDA build. relpsp's own requirement is a range that 2.13.0 satisfies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# a missing or broken environment (a venv whose creation failed, an interpreter link gone) is rebuilt
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1 || [ ! -f .venv/bin/activate ]; then
  "$PY" -m venv --clear .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev]'
