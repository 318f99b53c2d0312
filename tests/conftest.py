"""Shared fixtures: the files in ../shared, the generated sample meshes, a rendered duck dataset, a saved tiny SDXL,
a GL context and a `mvtune` CLI runner."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MESHES = SHARED / "fixtures" / "meshes"
USER_YAML = SHARED / "examples" / "user-tg2mv-finetune.yaml"


@pytest.fixture(scope="session")
def shared_meshes() -> Path:
    """../shared/fixtures/meshes (real files made by others); skips where a plain clone lacks it."""
    if not SHARED_MESHES.is_dir():
        pytest.skip(f"shared test meshes not found at {SHARED_MESHES}")
    return SHARED_MESHES


@pytest.fixture(scope="session")
def user_yaml() -> Path:
    """The users' example training config in ../shared/examples; skips where it is absent."""
    if not USER_YAML.is_file():
        pytest.skip(f"users' example config not found at {USER_YAML}")
    return USER_YAML


@pytest.fixture(scope="session")
def sample_meshes_dir(tmp_path_factory) -> Path:
    """The procedural sample meshes (GLB + caption + provenance), written once per session."""
    from mvtune.meshes.procedural import write_sample_meshes

    out = tmp_path_factory.mktemp("sample_meshes")
    write_sample_meshes(out)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random SDXL saved as a local diffusers folder (what `mvtune tiny-model` writes), read-only."""
    from mvtune.models import build_tiny_sdxl

    path = tmp_path_factory.mktemp("tiny") / "sdxl"
    build_tiny_sdxl(path, seed=0)
    return path


@pytest.fixture(scope="module")
def ducks(tmp_path_factory) -> Path:
    """The 7 procedural ducks rendered at 64 px (Ortho10View layout) with train/val/test splits; per module,
    since some tests touch its files."""
    from mvtune.data.splits import split_dataset
    from mvtune.meshes import write_sample_meshes
    from mvtune.render.dataset import RenderConfig, render_dataset

    base = tmp_path_factory.mktemp("ducks")
    write_sample_meshes(base / "meshes")
    summary = render_dataset(RenderConfig(input=base / "meshes", out_dir=base / "ds", resolution=64))
    assert summary.failed == 0, summary.errors
    split_dataset(base / "ds", val=0.2, test=0.2, seed=0)
    return base / "ds"


@pytest.fixture(scope="module")
def ctx():
    """One standalone GL context per module."""
    from mvtune.render import create_context

    context = create_context()
    yield context
    context.release()


def _run_cli(*args, expect=0, timeout=600):
    result = subprocess.run(
        [sys.executable, "-m", "mvtune.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=timeout
    )
    assert result.returncode == expect, result.stderr[-3000:]
    return result


@pytest.fixture
def cli():
    """`cli("render", src, out, expect=0)`: run `python -m mvtune.cli` from the repository, check the exit code."""
    return _run_cli
