"""When a mesh's own UVs are kept, and unwrapping with the face budget (decimate or refuse)."""

from dataclasses import replace

import numpy as np
import pytest
import trimesh

from mvtune.meshes import Mesh, MeshPart, load_mesh, normalize_mesh
from mvtune.texture import unwrap
from mvtune.texture.unwrap import TextureError, UnwrapConfig, check_uvs, prepare_uv_mesh

pytestmark = pytest.mark.gl


def _sphere(subdivisions=3) -> Mesh:
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    part = MeshPart(
        vertices=sphere.vertices.astype(np.float32),
        faces=sphere.faces.astype(np.uint32),
        normals=sphere.vertex_normals.astype(np.float32),
    )
    return Mesh(parts=[part], source="sphere")


def test_uv_rules(ctx, shared_meshes, sample_meshes_dir):
    fuze = load_mesh(shared_meshes / "fuze.obj")
    assert check_uvs(fuze, ctx).usable
    duck = load_mesh(sample_meshes_dir / "duck_yellow.glb")
    check = check_uvs(duck, ctx)
    assert not check.usable and "more than once" in check.reason and check.overlap_fraction > 0.1
    tiled = Mesh(parts=[replace(fuze.parts[0], uv=fuze.parts[0].uv * 3.0)])
    assert "inside [0, 1]" in check_uvs(tiled, ctx).reason
    assert "without UVs" in check_uvs(_sphere(), ctx).reason
    flat = Mesh(parts=[replace(fuze.parts[0], uv=np.zeros_like(fuze.parts[0].uv))])
    assert "degenerate" in check_uvs(flat, ctx).reason


def test_atlas_choice(ctx, shared_meshes, sample_meshes_dir):
    fuze = normalize_mesh(load_mesh(shared_meshes / "fuze.obj"))
    kept, report = prepare_uv_mesh(fuze, UnwrapConfig(), 512, ctx)
    assert report["uvs"] == "kept"
    np.testing.assert_array_equal(kept.uv, fuze.parts[0].uv)
    _, report = prepare_uv_mesh(fuze, UnwrapConfig(uv="unwrap"), 512, ctx)
    assert report["uvs"] == "xatlas" and "uv_check" not in report
    duck = normalize_mesh(load_mesh(sample_meshes_dir / "duck_yellow.glb"))
    with pytest.raises(TextureError, match="uv='keep'"):
        prepare_uv_mesh(duck, UnwrapConfig(uv="keep"), 512, ctx)
    atlas, report = prepare_uv_mesh(duck, UnwrapConfig(), 512, ctx)
    assert report["uvs"] == "xatlas" and atlas.uv.min() >= 0.0 and atlas.uv.max() <= 1.0
    counts = unwrap.uv_coverage_counts(ctx, atlas.uv, atlas.faces, 512)
    assert (counts > 1.5).sum() == 0  # the new atlas never shares a texel


def test_face_budget(ctx, monkeypatch):
    sphere = _sphere(4)  # 5120 faces
    with pytest.raises(TextureError, match="over the face budget of 1000; raise face_budget or allow decimation"):
        prepare_uv_mesh(sphere, UnwrapConfig(face_budget=1000, decimate=False), 256, ctx)
    if unwrap.fast_simplification_available():
        atlas, report = prepare_uv_mesh(sphere, UnwrapConfig(face_budget=1000), 256, ctx)
        assert report["decimated"] and len(atlas.faces) <= 1000
    monkeypatch.setattr(unwrap, "fast_simplification_available", lambda: False)
    with pytest.raises(TextureError, match="fast_simplification"):
        prepare_uv_mesh(sphere, UnwrapConfig(face_budget=1000), 256, ctx)


def test_meshes_without_faces_are_refused(ctx):
    no_faces = MeshPart(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.uint32), np.zeros((3, 3), np.float32))
    empty = Mesh(parts=[no_faces])
    with pytest.raises(TextureError, match="no faces"):
        prepare_uv_mesh(empty, UnwrapConfig(), 256, ctx)
    with pytest.raises(TextureError, match="no faces"):
        prepare_uv_mesh(Mesh(parts=[], source="nothing.glb"), UnwrapConfig(), 256, ctx)
