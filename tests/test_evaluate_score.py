"""`mvtune score`: geometric consistency, silhouettes and the views folder, on albedo renders of procedural ducks.

Renders of a textured mesh are consistent by construction (albedo colour does not depend on the view), so the
score must be near zero there and must rise when a view is rolled or taken from another object.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvtune import cameras
from mvtune.evaluate.score import (
    BACKGROUND,
    ScoreError,
    _pixel_projection,
    error_map_picture,
    read_views,
    score_views,
)
from mvtune.generate.conditions import condition_maps, load_normalized
from mvtune.generate.run import write_views

pytestmark = pytest.mark.gl

RESOLUTION = 128


def _composite(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * alpha + np.asarray(BACKGROUND) * 255.0 * (1.0 - alpha)).astype(np.uint8)


@pytest.fixture(scope="module")
def renderers(ctx):
    from mvtune.render import Renderer

    colour = Renderer(RESOLUTION, lighting="albedo", msaa=4, ctx=ctx)
    geometry = Renderer(RESOLUTION, lighting="albedo", msaa=0, ctx=ctx)
    yield colour, geometry
    colour.release()
    geometry.release()


@pytest.fixture(scope="module")
def duck_views(tmp_path_factory, sample_meshes_dir, renderers) -> dict:
    """The yellow duck's tg2mv albedo renders as a run folder, and the blue-hatted wizard's views for swapping in."""
    colour, _ = renderers
    tg2mv = cameras.variant_cameras("tg2mv")
    mesh_path = sample_meshes_dir / "duck_yellow.glb"
    rgba = [im.color for im in colour.render(load_normalized(mesh_path), tg2mv)]
    folder = tmp_path_factory.mktemp("views") / "duck_yellow"
    write_views(folder, mesh_path, rgba)
    other = [_composite(im.color) for im in colour.render(load_normalized(sample_meshes_dir / "duck_wizard.glb"), tg2mv)]
    return {"mesh": mesh_path, "folder": folder, "rgba": rgba, "other": other}


def _pairs_with(result: dict, view: int) -> list[dict]:
    return [p for p in result["consistency"]["pairs"] if p["pixels"] and view in (p["src"], p["dst"])]


def test_renders_of_a_textured_mesh_are_consistent(duck_views, renderers):
    views = read_views(duck_views["folder"])
    result = score_views(duck_views["mesh"], views, renderer=renderers[1])
    c = result["consistency"]
    assert c["mae"] < 3.0 and c["psnr"] > 28.0
    assert c["pixels"] > 0.3 * 6 * RESOLUTION**2 * 0.4  # a good part of the object is compared
    assert len(c["pairs"]) == 30
    seen = {(p["src"], p["dst"]) for p in c["pairs"] if p["pixels"]}
    # side views see each other's flanks, opposite views (front/back, right/left, top/bottom) nothing
    assert (0, 1) in seen and (1, 0) in seen and (4, 0) in seen
    assert not seen & {(0, 2), (2, 0), (1, 3), (3, 1), (4, 5), (5, 4)}
    assert max(p["mae"] for p in c["pairs"] if p["pixels"]) < 6.0
    assert sum(p["pixels"] for p in c["pairs"]) == c["pixels"]
    assert min(result["silhouette"]["iou"]) > 0.95
    assert result["clip_t"] == {}
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN/inf anywhere


def test_a_rolled_view_is_inconsistent(duck_views, renderers):
    views = read_views(duck_views["folder"])
    good = score_views(duck_views["mesh"], views, renderer=renderers[1])
    rolled = list(views)
    rolled[1] = np.ascontiguousarray(np.rot90(views[1], 2))
    bad = score_views(duck_views["mesh"], rolled, renderer=renderers[1])
    assert bad["consistency"]["mae"] > 4 * good["consistency"]["mae"]
    assert bad["consistency"]["psnr"] < good["consistency"]["psnr"] - 8.0
    assert min(p["mae"] for p in _pairs_with(bad, 1)) > 8.0
    # pairs that do not involve the rolled view are untouched
    untouched = [(g, b) for g, b in zip(good["consistency"]["pairs"], bad["consistency"]["pairs"]) if 1 not in (g["src"], g["dst"])]
    assert all(g == b for g, b in untouched)


def test_another_objects_view_is_inconsistent(duck_views, renderers):
    views = read_views(duck_views["folder"])
    good = score_views(duck_views["mesh"], views, renderer=renderers[1])
    swapped = list(views)
    swapped[3] = duck_views["other"][3]
    bad = score_views(duck_views["mesh"], swapped, renderer=renderers[1])
    assert bad["consistency"]["mae"] > 3 * good["consistency"]["mae"]
    assert np.mean([p["mae"] for p in _pairs_with(bad, 3)]) > 10.0
    assert bad["silhouette"]["iou"][3] < good["silhouette"]["iou"][3]


def test_error_maps_show_where_views_disagree(duck_views, renderers):
    views = read_views(duck_views["folder"])
    good = np.zeros((6, RESOLUTION, RESOLUTION), np.float32)
    result = score_views(duck_views["mesh"], views, renderer=renderers[1], error_maps=good)
    assert np.isnan(good[0][duck_views["rgba"][0][..., 3] == 0]).all()  # background: nothing compared
    assert np.isfinite(good[0]).sum() > 0.3 * np.count_nonzero(duck_views["rgba"][0][..., 3])
    assert np.nanmean(good) < 3.0
    rolled = list(views)
    rolled[1] = np.ascontiguousarray(np.rot90(views[1], 2))
    bad = np.zeros_like(good)
    score_views(duck_views["mesh"], rolled, renderer=renderers[1], error_maps=bad)
    assert np.nanmean(bad[1]) > 4 * np.nanmean(good[1])
    np.testing.assert_array_equal(np.isnan(bad), np.isnan(good))  # same co-visible pixels, other colours
    # back and front are seen by the right view: their errors rise too, where the right view sees them
    assert np.nanmean(bad[0]) > np.nanmean(good[0])
    picture = error_map_picture(rolled, bad)
    assert picture.shape == (2 * RESOLUTION, 6 * RESOLUTION, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[:RESOLUTION, RESOLUTION : 2 * RESOLUTION], rolled[1])
    assert picture[RESOLUTION:, RESOLUTION : 2 * RESOLUTION, 0].mean() > picture[RESOLUTION:, :RESOLUTION, 0].mean()
    assert result["consistency"]["mae"] < 3.0
    with pytest.raises(ScoreError, match="error_maps must be a C-contiguous float32 array"):
        score_views(duck_views["mesh"], views, renderer=renderers[1], error_maps=np.zeros((6, 8, 8), np.float32))


def test_silhouette_of_an_empty_view_is_zero(duck_views, renderers):
    views = read_views(duck_views["folder"])
    views[2] = np.full_like(views[2], 128)  # background grey only
    result = score_views(duck_views["mesh"], views, renderer=renderers[1])
    assert result["silhouette"]["iou"][2] == 0.0
    assert result["silhouette"]["iou"][0] > 0.95


def test_projection_maps_each_view_onto_its_own_pixels(sample_meshes_dir, renderers):
    """The camera maths: a view's position map projected into the same view lands on the pixel centre it came
    from, at the depth the renderer stored."""
    cond = condition_maps(load_normalized(sample_meshes_dir / "duck_firefighter.glb"), RESOLUTION, renderer=renderers[1])
    rows, cols = np.mgrid[0:RESOLUTION, 0:RESOLUTION]
    for v, view in enumerate(cond.views):
        a, b = _pixel_projection(view, RESOLUTION)
        on = cond.mask[v]
        points = cond.position[v].transpose(1, 2, 0)[on] - 0.5
        col, row, depth = (points @ a + b).T
        np.testing.assert_allclose(col, cols[on], atol=0.02)
        np.testing.assert_allclose(row, rows[on], atol=0.02)
        np.testing.assert_allclose(depth, cond.depth[v][on], atol=2e-3)


def test_read_views_composites_rgba_over_the_background(duck_views):
    views = read_views(duck_views["folder"])
    assert len(views) == 6 and all(v.shape == (RESOLUTION, RESOLUTION, 3) and v.dtype == np.uint8 for v in views)
    empty = duck_views["rgba"][0][..., 3] == 0
    assert np.all(views[0][empty] == 128)
    white = read_views(duck_views["folder"], background=(1.0, 1.0, 1.0))
    assert np.all(white[0][empty] == 255)


def _copy_views(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_bad_views_folders_name_the_problem(duck_views, tmp_path):
    with pytest.raises(ScoreError, match="does not exist"):
        read_views(tmp_path / "missing")
    five = _copy_views(duck_views["folder"], tmp_path / "five")
    (five / "view_0005.png").unlink()
    with pytest.raises(ScoreError, match=r"expected the 6 tg2mv views.*found 5"):
        read_views(five)
    small = _copy_views(duck_views["folder"], tmp_path / "small")
    Image.new("RGB", (64, 64)).save(small / "view_0002.png")
    with pytest.raises(ScoreError, match=r"view_0002.png is 64x64.*view_0000.png is 128x128"):
        read_views(small)
    wide = _copy_views(duck_views["folder"], tmp_path / "wide")
    Image.new("RGB", (128, 96)).save(wide / "view_0000.png")
    with pytest.raises(ScoreError, match="view_0000.png is 128x96; tg2mv views are square"):
        read_views(wide)
    record = _copy_views(duck_views["folder"], tmp_path / "record")
    data = json.loads((record / "generate.json").read_text())
    (record / "generate.json").write_text(json.dumps({**data, "resolution": 256}))
    with pytest.raises(ScoreError, match="generate.json: record says variant 'tg2mv' at 256px"):
        read_views(record)


def test_bad_inputs_to_score_views_name_the_item(duck_views, renderers, tmp_path):
    views = read_views(duck_views["folder"])
    with pytest.raises(ScoreError, match="needs 6 views, got 5"):
        score_views(duck_views["mesh"], views[:5])
    with pytest.raises(ScoreError, match="view 4: expected 128x128x3 uint8"):
        score_views(duck_views["mesh"], views[:4] + [views[4][:64, :64]] + views[5:])
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"not a mesh at all")
    with pytest.raises(ScoreError, match=f"mesh {broken}"):
        score_views(broken, views, renderer=renderers[1])
    with pytest.raises(ScoreError, match=f"mesh {tmp_path / 'nothing.glb'}"):
        score_views(tmp_path / "nothing.glb", views, renderer=renderers[1])
    with pytest.raises(ScoreError, match="renderer is at 128px, the views at 64px"):
        score_views(duck_views["mesh"], [v[::2, ::2].copy() for v in views], renderer=renderers[1])


class _FixedScorer:
    """Every image has the same feature; the text feature is at a known angle: CLIP-T is known exactly."""

    logit_scale = 100.0

    def __init__(self, name: str, cos: float):
        self.name, self.cos = name, cos

    def image_features(self, images):
        return np.tile(np.array([[1.0, 0.0]], np.float32), (len(images), 1))

    def text_features(self, texts):
        return np.tile(np.array([[self.cos, np.sqrt(1 - self.cos**2)]], np.float32), (len(texts), 1))


def test_clip_t_per_scorer_when_a_prompt_is_given(duck_views, renderers):
    scorers = [_FixedScorer("a", 0.3), _FixedScorer("b", -0.5)]
    result = score_views(duck_views["mesh"], duck_views["folder"], prompt="a duck", scorers=scorers, renderer=renderers[1])
    assert set(result["clip_t"]) == {"a", "b"}
    np.testing.assert_allclose(result["clip_t"]["a"]["per_view"], [30.0] * 6, atol=1e-4)
    assert result["clip_t"]["b"]["mean"] == pytest.approx(-50.0, abs=1e-4)
    with pytest.raises(ScoreError, match="scorer names must be distinct"):
        score_views(duck_views["mesh"], duck_views["folder"], prompt="p", scorers=[scorers[0], scorers[0]])


def test_cli_score_table_and_errors(cli, duck_views, tmp_path):
    picture = tmp_path / "out" / "errors.png"
    table = cli("score", "--mesh", duck_views["mesh"], "--views", duck_views["folder"], "--image", picture)
    assert "all pairs" in table.stderr and "silhouette IoU" in table.stderr
    assert Image.open(picture).size == (6 * RESOLUTION, 2 * RESOLUTION)
    failed = cli("score", "--mesh", duck_views["mesh"], "--views", tmp_path / "nope", expect=2)
    assert f"views folder {tmp_path / 'nope'} does not exist" in failed.stderr
    missing = tmp_path / "noclip"
    failed = cli("score", "--mesh", duck_views["mesh"], "--views", duck_views["folder"], "--prompt", "p", "--clip", missing, expect=2)
    assert f"CLIP folder {missing} does not exist" in failed.stderr


@pytest.mark.slow
def test_cli_tiny_clip_and_score_json(cli, duck_views, tmp_path):
    tiny = tmp_path / "clip"
    cli("tiny-model", tiny, "--clip")
    out = tmp_path / "score.json"
    result = cli(
        "score", "--mesh", duck_views["mesh"], "--views", duck_views["folder"], "--prompt", "a yellow duck",
        "--clip", f"tiny={tiny}", "--json", "--out", out,
    )  # fmt: skip
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["consistency"]["mae"] < 3.0 and len(printed["clip_t"]["tiny"]["per_view"]) == 6
