"""Blender Cycles as a geometric reference (issue 2). For developers: needs the bpy venv from
scripts/setup_blender.sh, which CI does not install, so these tests skip without it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import blender_compare  # noqa: E402
from blender_compare import (  # noqa: E402
    BACKGROUND_DEPTH,
    compare_geometry,
    raycast_orthographic,
    render_with_blender,
)

from mvtune.cameras import ortho10  # noqa: E402

needs_blender = pytest.mark.skipif(
    not blender_compare.blender_available(),
    reason="Blender venv .venv-blender missing: run scripts/setup_blender.sh (bpy 5.0.1, ~1 GB)",
)
RES = 128


def _sphere():
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=3, radius=0.45)
    return np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int64)


def _box():
    import trimesh

    m = trimesh.creation.box(extents=(0.8, 0.6, 1.0))
    # rotate so no face is parallel to any view axis
    rot = trimesh.transformations.euler_matrix(0.3, 0.2, 0.5)
    m.apply_transform(rot)
    return np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int64)


# --- pure-numpy parts: always run ------------------------------------------------------------------------


def test_compare_geometry_identical_and_band():
    views = ortho10()[:2]
    v, f = _sphere()
    d, p, k = raycast_orthographic(v, f, views[0].c2w, views[0].ortho_scale, 64)
    assert k.any() and not k.all()
    assert np.all(d[~k] == BACKGROUND_DEPTH) and np.all(p[~k] == 0)
    r = compare_geometry(d, p, k, d, p, k)
    assert r["depth_median"] == 0 and r["position_max"] == 0 and r["mask_disagreement"] == 0
    # silhouette band excluded: garbage on the outline of the mask is not counted
    d2 = d.copy()
    edge = k & ~blender_compare._erode(k)
    d2[edge] += 1.0
    assert compare_geometry(d, p, k, d2, p, k)["depth_max"] == 0
    # mask disagreement
    k2 = k.copy()
    k2[edge] = False
    r = compare_geometry(d, p, k, d, p, k2)
    assert r["mask_disagreement"] == pytest.approx(edge.sum() / k.sum())


def test_raycast_reference_is_planar_depth():
    """The reference itself: the front view of a sphere centred at the origin, camera at distance 1.5."""
    view = ortho10()[0]
    v, f = _sphere()
    d, p, k = raycast_orthographic(v, f, view.c2w, view.ortho_scale, RES)
    centre = d[RES // 2 - 1 : RES // 2 + 1, RES // 2 - 1 : RES // 2 + 1]
    assert np.allclose(centre, 1.5 - 0.45, atol=2e-3)  # tessellated sphere, so not exact
    # back-projection of depth gives the position (spec §3.3 with pixel centres)
    c2w = view.c2w
    cols, rows = np.meshgrid(np.arange(RES) + 0.5, np.arange(RES) + 0.5)
    s = view.ortho_scale
    x = (cols - RES / 2) * s / RES
    y = (RES / 2 - rows) * s / RES
    pw = c2w[:3, 3] + x[..., None] * c2w[:3, 0] + y[..., None] * c2w[:3, 1] - d[..., None] * c2w[:3, 2]
    assert np.abs(pw[k] - p[k]).max() < 1e-6


def test_missing_venv_names_setup_script(tmp_path):
    v, f = _sphere()
    with pytest.raises(blender_compare.BlenderNotAvailable, match="scripts/setup_blender.sh"):
        render_with_blender(v, f, ortho10()[:1], 16, samples=1, venv=tmp_path / "nope")


# --- Blender ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_blender
@pytest.mark.parametrize("shape", ["sphere", "box"])
def test_blender_matches_exact_raycast(shape):
    v, f = _sphere() if shape == "sphere" else _box()
    views = ortho10()
    out = render_with_blender(v, f, views, RES, samples=1)
    assert out["depth"].shape == (len(views), RES, RES)
    assert out["position"].shape == (len(views), RES, RES, 3)
    assert out["seconds"].shape == (len(views),)
    for i, view in enumerate(views):
        d, p, k = raycast_orthographic(v, f, view.c2w, view.ortho_scale, RES)
        r = compare_geometry(d, p, k, out["depth"][i], out["position"][i], out["mask"][i])
        assert r["pixels_compared"] > 1000, (view.index, r)
        assert r["depth_median"] <= 1e-4, (view.index, r)
        assert r["position_median"] <= 1e-4, (view.index, r)
        assert r["depth_p99"] <= 1e-3, (view.index, r)
        assert r["mask_disagreement"] <= 0.02, (view.index, r)
        bg = ~out["mask"][i]
        assert np.all(out["depth"][i][bg] == BACKGROUND_DEPTH)


def _mvtune_renderer():
    """mvtune's renderer, if it is there and can get a GL context; else None."""
    if importlib.util.find_spec("mvtune.render") is None:
        return None
    try:
        from mvtune.render import Renderer  # type: ignore[attr-defined]
    except ImportError:
        return None
    return Renderer


@pytest.mark.slow
@pytest.mark.gl
@needs_blender
def test_blender_matches_mvtune_renderer():
    Renderer = _mvtune_renderer()
    if Renderer is None:
        pytest.skip("mvtune.render.Renderer not available yet")
    from mvtune.meshes.mesh import Mesh, MeshPart

    v, f = _sphere()
    n = v / np.linalg.norm(v, axis=1, keepdims=True)
    mesh = Mesh(parts=[MeshPart(vertices=v, faces=f.astype(np.uint32), normals=n.astype(np.float32))])
    views = ortho10()
    try:
        renderer = Renderer(RES)
    except Exception as exc:  # no EGL on this machine
        pytest.skip(f"mvtune renderer unavailable here: {exc}")
    try:
        ours = renderer.render(mesh, views, position=True)
    finally:
        renderer.release()
    out = render_with_blender(v, f, views, RES, samples=1)
    for i, img in enumerate(ours):
        ours_mask = np.asarray(img.mask, bool)
        if ours_mask.ndim == 3:
            ours_mask = ours_mask[..., 0]
        r = compare_geometry(img.depth, img.position, ours_mask, out["depth"][i], out["position"][i], out["mask"][i])
        assert r["depth_median"] <= 1e-4, (views[i].index, r)
        assert r["position_median"] <= 1e-4, (views[i].index, r)
        assert r["mask_disagreement"] <= 0.02, (views[i].index, r)
