"""`texture_mesh` end to end: GLB round trip in source coordinates, turntable, record, and refused inputs."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from mvtune import cameras
from mvtune.generate import write_views
from mvtune.generate.conditions import load_normalized
from mvtune.meshes import load_mesh
from mvtune.render import Renderer
from mvtune.texture import BakeOptions, TextureConfig, TextureError, UnwrapConfig, texture_mesh
from mvtune.texture import export

pytestmark = pytest.mark.gl
VIEW_RES = 128


@pytest.fixture(scope="module")
def views_dir(tmp_path_factory, sample_meshes_dir):
    """Albedo renders of the yellow sample duck, recorded like a generate run."""
    mesh_path = sample_meshes_dir / "duck_yellow.glb"
    renderer = Renderer(VIEW_RES, lighting="albedo")
    try:
        renders = renderer.render(load_normalized(mesh_path), cameras.variant_cameras("tg2mv"))
    finally:
        renderer.release()
    out = tmp_path_factory.mktemp("views")
    write_views(out, mesh_path, [r.color for r in renders])
    return out


def _config(tmp_path, sample_meshes_dir, views, **kwargs):
    return TextureConfig(
        mesh=sample_meshes_dir / "duck_yellow.glb", views=views, out=tmp_path / "duck.glb",
        bake=BakeOptions(texture_size=256), turntable_resolution=64, **kwargs,
    )


def test_glb_round_trip_in_source_coordinates(tmp_path, sample_meshes_dir, views_dir):
    record = texture_mesh(_config(tmp_path, sample_meshes_dir, views_dir))
    original = load_mesh(sample_meshes_dir / "duck_yellow.glb")
    textured = load_mesh(tmp_path / "duck.glb")
    assert len(textured.parts) == 1
    part = textured.parts[0]
    assert part.texture is not None and part.texture.shape[:2] == (256, 256) and part.uv is not None
    np.testing.assert_allclose(textured.bounds, original.bounds, atol=1e-5)
    distance, _ = cKDTree(original.vertices).query(part.vertices)
    assert distance.max() < 1e-5  # every exported vertex is an original vertex, in the file's coordinates
    # the baked yellow body survives: the texture's median colour is the duck's yellow
    assert np.abs(np.median(part.texture[..., :3].reshape(-1, 3), axis=0) - [250, 212, 40]).max() < 30

    strip = np.asarray(Image.open(tmp_path / "duck_turntable.png"))
    assert strip.shape == (64, 8 * 64, 3)
    with Image.open(tmp_path / "duck_turntable.gif") as gif:
        assert gif.n_frames == 8
    saved = json.loads((tmp_path / "duck.json").read_text())
    assert saved["bake"]["texel_coverage"] == record["bake"]["texel_coverage"] > 0.8
    assert saved["unwrap"]["uvs"] == "xatlas" and "bake" in saved["timings"]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["duck.glb", "duck.json", "duck_turntable.gif", "duck_turntable.png"]
    # a rerun without previews must not leave the old ones beside the new GLB
    texture_mesh(_config(tmp_path, sample_meshes_dir, views_dir, turntable=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["duck.glb", "duck.json"]


def _copy_views(views_dir, tmp_path):
    copy = tmp_path / "views"
    shutil.copytree(views_dir, copy)
    return copy


def _edit_record(views, change):
    path = views / "generate.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _assert_refused(cfg, match):
    with pytest.raises(TextureError, match=match):
        texture_mesh(cfg)
    assert not cfg.out.exists() and not list(cfg.out.parent.glob(".duck*"))  # nothing written, no temp files


def test_bad_views_are_refused(tmp_path, sample_meshes_dir, views_dir):
    views = _copy_views(views_dir, tmp_path)
    cfg = _config(tmp_path, sample_meshes_dir, views)

    _edit_record(views, lambda r: r.update(views=r["views"][:5]))
    _assert_refused(cfg, "expected the 6 tg2mv views, the record has 5")
    shutil.copy(views_dir / "generate.json", views / "generate.json")

    _edit_record(views, lambda r: r["views"][4].update(elevation=0.0))
    _assert_refused(cfg, "view 4 is at azimuth/elevation")
    shutil.copy(views_dir / "generate.json", views / "generate.json")

    Image.new("RGB", (64, 64)).save(views / "view_0002.png")
    _assert_refused(cfg, "view_0002.png is 64x64, the record says 128x128")
    shutil.copy(views_dir / "view_0002.png", views / "view_0002.png")

    (views / "view_0003.png").unlink()
    _assert_refused(cfg, "cannot read view 3")
    shutil.copy(views_dir / "view_0003.png", views / "view_0003.png")

    other = cfg.model_copy(update={"mesh": sample_meshes_dir / "duck_blue.glb"})
    _assert_refused(other, "not for .*duck_blue.glb")

    (views / "generate.json").unlink()
    _assert_refused(cfg, "no generate.json")


def test_bad_meshes_and_outputs_are_refused(tmp_path, sample_meshes_dir, views_dir):
    cfg = _config(tmp_path, sample_meshes_dir, views_dir)
    _assert_refused(cfg.model_copy(update={"unwrap": UnwrapConfig(face_budget=1000, decimate=False)}), "face budget")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TextureError, match="does not exist"):
        texture_mesh(cfg.model_copy(update={"out": tmp_path / "file" / "duck.glb"}))
    (tmp_path / "folder.glb").mkdir()
    with pytest.raises(TextureError, match="it is a folder"):
        texture_mesh(cfg.model_copy(update={"out": tmp_path / "folder.glb"}))
    with pytest.raises(ValueError, match="exactly one of views"):
        TextureConfig(mesh=cfg.mesh, out=cfg.out)
    with pytest.raises(ValueError, match=".glb"):
        TextureConfig(mesh=cfg.mesh, views=views_dir, out=tmp_path / "x.obj")


def test_a_failure_late_in_the_run_writes_nothing(tmp_path, sample_meshes_dir, views_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("turntable renderer died")

    monkeypatch.setattr(export, "turntable_images", broken)
    with pytest.raises(RuntimeError, match="died"):
        texture_mesh(_config(tmp_path, sample_meshes_dir, views_dir))
    assert list(tmp_path.iterdir()) == []


def test_prompt_generates_the_views_first(tmp_path, sample_meshes_dir, tiny_base):
    from mvtune.generate import ModelConfig, SamplingConfig

    out = tmp_path / "out"
    out.mkdir()
    cfg = TextureConfig(
        mesh=sample_meshes_dir / "duck_blue.glb", prompt="a blue duck", out=out / "duck.glb",
        models=ModelConfig(base_model=tiny_base), sampling=SamplingConfig(steps=2, resolution=64),
        bake=BakeOptions(texture_size=128), turntable=False,
    )
    record = texture_mesh(cfg)
    assert (out / "duck_views" / "generate.json").is_file() and (out / "duck.glb").is_file()
    assert record["generate_record"]["prompt"] == "a blue duck" and "generate" in record["timings"]
    assert not (out / "duck_turntable.png").exists()


def test_prompt_with_models_that_do_not_load_is_a_texture_error(tmp_path, sample_meshes_dir):
    from mvtune.generate import ModelConfig, SamplingConfig

    cfg = TextureConfig(
        mesh=sample_meshes_dir / "duck_blue.glb", prompt="a blue duck", out=tmp_path / "duck.glb",
        models=ModelConfig(base_model=tmp_path / "missing"), sampling=SamplingConfig(steps=2, resolution=64),
    )
    with pytest.raises(TextureError, match="base_model .* does not exist"):  # the CLI reports it, no traceback
        texture_mesh(cfg)
