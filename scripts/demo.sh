#!/usr/bin/env bash
# The main job on built-in data (see README): set up, then run `mvtune demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/mvtune demo "$@"
