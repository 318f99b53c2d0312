#!/usr/bin/env bash
# Set up, then run the test suite (fast tests; pass --all to include the slow ones, or any pytest options).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "${1:-}" = "--all" ]; then shift; exec .venv/bin/python -m pytest "$@"; fi
exec .venv/bin/python -m pytest -m "not slow" "$@"
