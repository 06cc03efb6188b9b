#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, type-check and run the default test suite (a few minutes on
# 2 cores). Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
mypy
python -m pytest -q "$@"
