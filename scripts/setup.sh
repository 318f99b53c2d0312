#!/usr/bin/env bash
# Set up mvtune on a fresh Debian/Ubuntu machine: system GL packages (as root), a virtualenv in .venv,
# and the package with its model/test extras. Idempotent: a rerun with unchanged requirements is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless OpenGL through EGL (Mesa llvmpipe on CPU; NVIDIA's EGL is used automatically where present).
APT_PACKAGES=(libegl1 libgl1 libgl1-mesa-dri)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[setup] missing system packages: ${missing[*]}" >&2
    echo "[setup] install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "[setup] mvtune needs Python >= 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv

# Reinstall only when the requirements change.
stamp=.venv/.mvtune-requirements
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing mvtune and its dependencies into .venv (CPU torch pinned by constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  PIP_CONSTRAINT="$PWD/constraints.txt" .venv/bin/python -m pip install -q -e '.[model,test]'
  echo "$want" > "$stamp"
fi
