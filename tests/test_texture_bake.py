"""Baker accuracy (albedo renders baked back and re-rendered), the UV fill and the baker's input checks."""

import numpy as np
import pytest

from mvtune import cameras
from mvtune.meshes import load_mesh, normalize_mesh
from mvtune.render import Renderer, create_context
from mvtune.texture.bake import BakeOptions, as_render_mesh, bake_texture, psnr_over_covered, push_pull
from mvtune.texture.unwrap import TextureError, UnwrapConfig, prepare_uv_mesh

pytestmark = pytest.mark.gl


def bake_round_trip(mesh_path, view_resolution=384, texture_size=1024):
    mesh = normalize_mesh(load_mesh(mesh_path))
    ctx = create_context()
    try:
        uv_mesh, report = prepare_uv_mesh(mesh, UnwrapConfig(), texture_size, ctx)
        views = cameras.variant_cameras("tg2mv")
        renderer = Renderer(view_resolution, lighting="albedo", ctx=ctx)
        originals = renderer.render(mesh, views)
        result = bake_texture(uv_mesh, views, [o.color for o in originals], BakeOptions(texture_size=texture_size), ctx)
        rebaked = renderer.render(as_render_mesh(uv_mesh, result.texture), views)
    finally:
        ctx.release()
    return psnr_over_covered(originals, rebaked), result, report


def test_albedo_views_bake_back_onto_the_meshes_own_uvs(shared_meshes):
    (psnr, used), result, report = bake_round_trip(shared_meshes / "fuze.obj")
    assert report["uvs"] == "kept"
    assert result.stats["texel_coverage"] > 0.99 and used > 0.95
    assert psnr >= 30.0, f"PSNR {psnr:.1f} dB over {used:.1%} of the object pixels"


def test_albedo_views_bake_back_onto_an_xatlas_atlas(sample_meshes_dir):
    (psnr, used), result, report = bake_round_trip(sample_meshes_dir / "duck_yellow.glb")
    assert report["uvs"] == "xatlas"  # the sample duck's eyes and feathers share texels
    assert result.stats["texel_coverage"] > 0.8 and used > 0.95
    assert psnr >= 30.0, f"PSNR {psnr:.1f} dB over {used:.1%} of the object pixels"
    assert result.texture.shape == (1024, 1024, 3) and result.seen.sum() <= result.covered.sum()


def test_push_pull_keeps_known_texels_and_fills_the_rest():
    rng = np.random.default_rng(0)
    color = rng.random((37, 50, 3)).astype(np.float32)
    known = rng.random((37, 50)) < 0.05
    filled = push_pull(color * known[..., None], known)
    np.testing.assert_array_equal(filled[known], color[known])
    assert np.isfinite(filled).all() and filled.min() >= 0.0 and filled.max() <= 1.0
    flat = push_pull(np.full((16, 16, 3), 0.25, np.float32) * known[:16, :16, None], known[:16, :16])
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)  # a constant stays constant
    only = np.zeros((37, 50), bool)
    only[:5] = True
    partial = push_pull(color * known[..., None], known, fill=only)
    np.testing.assert_array_equal(partial[~only & ~known], 0.0)  # texels outside `fill` are left alone


def test_push_pull_pads_an_island_with_its_own_colour():
    color = np.zeros((8, 8, 3), np.float32)
    island = np.zeros((8, 8), bool)
    island[2:4, 2:4] = True
    color[2:4, 2:4] = [1.0, 0.5, 0.25]
    np.testing.assert_allclose(push_pull(color, island), np.broadcast_to([1.0, 0.5, 0.25], color.shape), atol=1e-6)


def test_view_checks(sample_meshes_dir):
    mesh = normalize_mesh(load_mesh(sample_meshes_dir / "duck_blue.glb"))
    ctx = create_context()
    try:
        uv_mesh, _ = prepare_uv_mesh(mesh, UnwrapConfig(), 64, ctx)
        views = cameras.variant_cameras("tg2mv")
        good = [np.zeros((32, 32, 3), np.uint8)] * 6
        with pytest.raises(TextureError, match="5 view images for 6 cameras"):
            bake_texture(uv_mesh, views, good[:5], BakeOptions(texture_size=64), ctx)
        with pytest.raises(TextureError, match="differ in size"):
            mixed = good[:5] + [np.zeros((16, 16, 3), np.uint8)]
            bake_texture(uv_mesh, views, mixed, BakeOptions(texture_size=64), ctx)
        with pytest.raises(TextureError, match="square"):
            bake_texture(uv_mesh, views, [np.zeros((32, 16, 3), np.uint8)] * 6, BakeOptions(texture_size=64), ctx)
        with pytest.raises(TextureError, match="uint8"):
            bake_texture(uv_mesh, views, [np.zeros((32, 32), np.uint8)] * 6, BakeOptions(texture_size=64), ctx)
    finally:
        ctx.release()
