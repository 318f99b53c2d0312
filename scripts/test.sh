#!/usr/bin/env bash
# Set up, then run the test suite (fast tests; pass --all to include the slow ones, or any pytest options).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A one-node Slurm on localhost for the preemption/requeue tests (they skip with a reason without it).
export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "[test] installing slurm-wlm and munge for the Slurm integration tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  else
    echo "[test] slurm-wlm/munge not installed and not root: the Slurm tests will be skipped" >&2
  fi
fi
# Debian's chromium for the evaluation report test (driven by playwright; it skips with a reason without it).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "[test] installing chromium for the report browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "[test] chromium not installed and not root: the report browser test will be skipped" >&2
  fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "${1:-}" = "--all" ]; then shift; exec .venv/bin/python -m pytest "$@"; fi
exec .venv/bin/python -m pytest -m "not slow" "$@"
