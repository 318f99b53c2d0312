#!/usr/bin/env bash
# Create the Blender-as-a-module venv used by benchmarks/blender_render.py.
#
#   scripts/setup_blender.sh            # creates <repo>/.venv-blender (idempotent)
#   BLENDER_VENV=/path scripts/setup_blender.sh
#
# bpy 5.0.1 needs CPython 3.11 exactly (~370 MB wheel, ~1 GB venv) and pins numpy 1.26,
# so it lives in its own venv and is only ever run as a subprocess, never imported by mvtune.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BLENDER_VENV:-$REPO/.venv-blender}"
BPY_VERSION="${BPY_VERSION:-5.0.1}"

die() { echo "setup_blender.sh: ERROR: $*" >&2; exit 1; }

# Already done?
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$BPY_VERSION" <<'PY' 2>/dev/null; then
import sys, importlib.metadata as md
assert md.version("bpy") == sys.argv[1]
import bpy, numpy, OpenEXR  # noqa: F401
PY
    echo "setup_blender.sh: $VENV already has bpy==$BPY_VERSION (nothing to do)"
    exit 0
fi

# Find a Python 3.11 interpreter (bpy 5.0 wheels are cp311 only).
PY311="${PYTHON311:-}"
if [ -z "$PY311" ]; then
    for cand in python3.11 /usr/bin/python3.11 /usr/local/bin/python3.11; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2]==(3,11)' 2>/dev/null; then
            PY311="$(command -v "$cand")"; break
        fi
    done
fi
if [ -z "$PY311" ] && command -v uv >/dev/null 2>&1; then
    PY311="$(uv python find 3.11 2>/dev/null || true)"
fi
if [ -n "$PY311" ] && ! "$PY311" -c 'import sys; assert sys.version_info[:2]==(3,11)' 2>/dev/null; then
    die "$PY311 is not a working CPython 3.11 (bpy==$BPY_VERSION needs exactly 3.11)"
fi
[ -n "$PY311" ] || die "no Python 3.11 found (bpy==$BPY_VERSION needs CPython 3.11). Install it (e.g. 'pyenv install 3.11', 'uv python install 3.11' or apt python3.11) or set PYTHON311=/path/to/python3.11."

echo "setup_blender.sh: using $PY311 ($("$PY311" --version 2>&1))"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY311" -m venv "$VENV" || die "could not create venv at $VENV (on Debian/Ubuntu: apt-get install python3.11-venv)"
fi
"$VENV/bin/python" -c 'import sys; assert sys.version_info[:2]==(3,11), sys.version' \
    || die "$VENV exists but is not Python 3.11; remove it and re-run"

"$VENV/bin/python" -m pip install --upgrade --quiet pip || die "pip upgrade failed"
echo "setup_blender.sh: installing bpy==$BPY_VERSION (large download, ~370 MB) ..."
"$VENV/bin/python" -m pip install --progress-bar off "bpy==$BPY_VERSION" \
    || die "pip install bpy==$BPY_VERSION failed (needs network access to PyPI, Linux x86_64/glibc and ~1 GB disk)"
# numpy comes with bpy (pinned); OpenEXR is used to read the multilayer EXR passes back.
# Keep bpy's pinned numpy: constrain it to the version bpy brought in.
NUMPY_VERSION="$("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
"$VENV/bin/python" -m pip install --progress-bar off OpenEXR "numpy==$NUMPY_VERSION" || die "pip install OpenEXR failed"

# Smoke test: import bpy headless and check Cycles is there.
"$VENV/bin/python" - <<'PY' || die "bpy installed but failed to import (missing system libs? try apt-get install libxi6 libxxf86vm1 libxfixes3 libxrender1 libgl1 libsm6)"
import bpy, numpy
print("setup_blender.sh: bpy", bpy.app.version_string, "numpy", numpy.__version__)
assert "cycles" in bpy.context.preferences.addons.keys(), "Cycles add-on not enabled"
bpy.context.scene.render.engine = "CYCLES"
assert bpy.context.scene.render.engine == "CYCLES"
PY
echo "setup_blender.sh: done -> $VENV"
