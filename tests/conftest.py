"""Shared fixtures: the real test meshes beside the repository, and the generated sample meshes."""

from pathlib import Path

import pytest

SHARED_MESHES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "meshes"


@pytest.fixture(scope="session")
def shared_meshes() -> Path:
    """../shared/fixtures/meshes (real files made by others); skips where a plain clone lacks it."""
    if not SHARED_MESHES.is_dir():
        pytest.skip(f"shared test meshes not found at {SHARED_MESHES}")
    return SHARED_MESHES


@pytest.fixture(scope="session")
def sample_meshes_dir(tmp_path_factory) -> Path:
    """The procedural sample meshes (GLB + caption + provenance), written once per session."""
    from mvtune.meshes.procedural import write_sample_meshes

    out = tmp_path_factory.mktemp("sample_meshes")
    write_sample_meshes(out)
    return out
