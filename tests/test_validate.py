"""Dataset validation catches wrong view layouts, camera-space normals and broken files."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvtune.data.validate import validate_dataset
from mvtune.meshes import write_sample_meshes
from mvtune.render.dataset import RenderConfig, render_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    meshes = tmp_path_factory.mktemp("meshes")
    write_sample_meshes(meshes, count=2)
    out = tmp_path_factory.mktemp("ds") / "ds"
    summary = render_dataset(RenderConfig(input=meshes, out_dir=out, resolution=64))
    assert summary.failed == 0
    return out


@pytest.fixture
def dataset(rendered, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(rendered, copy)
    return copy


def codes(report):
    return {f.code for f in report.errors}


def objects(root):
    return [root / i[:2] / i for i in json.loads((root / "scene_list.json").read_text())]


@pytest.mark.parametrize("variant", ["tg2mv", "t2mv"])
def test_rendered_dataset_is_valid(rendered, variant):
    report = validate_dataset(rendered, variant)
    assert report.ok, [f.message for f in report.errors]
    assert report.objects == 2


def test_side_views_fed_as_top_bottom_are_refused(rendered):
    report = validate_dataset(rendered, "tg2mv", ["0000", "0001", "0002", "0003", "0004", "0005"])
    assert codes(report) == {"view-layout"}
    text = " ".join(f.message for f in report.errors)
    assert "view 0004 is fed as the top view" in text and "azimuth 45.00 deg, elevation 0.00 deg" in text
    assert "view 0005 is fed as the bottom view" in text and "azimuth 315.00 deg" in text
    assert 'fix: use image_names ["0000", "0001", "0002", "0003", "0008", "0009"]' in text


def test_dataset_whose_0004_0005_really_are_top_bottom_is_accepted(dataset):
    for obj in objects(dataset):
        meta = json.loads((obj / "meta.json").read_text())
        locs = {loc["index"]: loc for loc in meta["locations"]}
        for a, b in (("0004", "0008"), ("0005", "0009")):
            locs[a]["transform_matrix"], locs[b]["transform_matrix"] = locs[b]["transform_matrix"], locs[a]["transform_matrix"]
            for kind in ("color_{}.webp", "depth_{}.exr", "normal_{}.webp"):
                pa, pb = obj / kind.format(a), obj / kind.format(b)
                tmp = obj / "swap"
                pa.rename(tmp), pb.rename(pa), tmp.rename(pb)
        (obj / "meta.json").write_text(json.dumps(meta))
    report = validate_dataset(dataset, "tg2mv", ["0000", "0001", "0002", "0003", "0004", "0005"])
    assert report.ok, [f.message for f in report.errors]


def test_top_view_with_wrong_roll_is_refused(dataset):
    obj = objects(dataset)[0]
    meta = json.loads((obj / "meta.json").read_text())
    top = next(loc for loc in meta["locations"] if loc["index"] == "0008")
    c2w = np.asarray(top["transform_matrix"])
    c2w[:3, 0] *= -1  # image-right flipped: a top view rendered with another roll
    c2w[:3, 1] *= -1
    top["transform_matrix"] = c2w.tolist()
    (obj / "meta.json").write_text(json.dumps(meta))
    report = validate_dataset(dataset, "tg2mv")
    assert "view-layout" in codes(report)
    assert any("image-right" in f.message and "0008" in f.message for f in report.errors)


def test_camera_space_normals_are_detected(dataset):
    for obj in objects(dataset):
        meta = json.loads((obj / "meta.json").read_text())
        for loc in meta["locations"]:
            path = obj / f"normal_{loc['index']}.webp"
            rgba = np.asarray(Image.open(path)).copy()
            n = rgba[..., :3].astype(np.float64) / 255 * 2 - 1
            rot = np.asarray(loc["transform_matrix"])[:3, :3]
            cam = n @ rot  # world -> Blender camera axes
            rgba[..., :3] = np.where(rgba[..., 3:] > 0, np.floor(255 * (0.5 * cam + 0.5)).clip(0, 255), 0)
            Image.fromarray(rgba.astype(np.uint8), "RGBA").save(path, lossless=True)
    report = validate_dataset(dataset, "tg2mv")
    assert "camera-space-normals" in codes(report)
    assert any("world-space" in f.message for f in report.errors)


def test_top_view_up_facing_pixels_are_blue(rendered):
    obj = objects(rendered)[0]
    normal = np.asarray(Image.open(obj / "normal_0008.webp"))
    on = normal[..., 3] == 255
    # the sample meshes are seen from above: most of what the top camera sees faces up (+Z -> blue)
    assert np.median(normal[..., 2][on]) > 200


def test_broken_files_and_captions(dataset):
    obj_a, obj_b = objects(dataset)
    (obj_a / "normal_0002.webp").unlink()
    Image.open(obj_b / "color_0001.webp").convert("RGB").save(obj_b / "color_0001.webp", lossless=True)
    captions = json.loads((dataset / "captions.json").read_text())
    del captions[obj_b.name]
    (dataset / "captions.json").write_text(json.dumps(captions))
    report = validate_dataset(dataset, "tg2mv")
    assert {"missing-file", "color-mode", "caption-missing"} <= codes(report)
    assert any("normal_0002.webp" in f.message for f in report.errors)


def test_depth_problems(dataset):
    import OpenEXR

    obj = objects(dataset)[0]
    path = obj / "depth_0000.exr"
    with OpenEXR.File(str(path), separate_channels=True) as f:
        z = f.channels()["R"].pixels.copy()
    z[z > 1000] = 10.0  # background no longer recognisable
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, {"Z": z}).write(str(path))
    report = validate_dataset(dataset, "tg2mv")
    assert {"depth-channels", "depth-background"} <= codes(report)


def test_scene_list_problems(dataset):
    ids = json.loads((dataset / "scene_list.json").read_text())
    (dataset / "scene_list.json").write_text(json.dumps(ids + [ids[0], "../../outside/x"]))
    report = validate_dataset(dataset, "tg2mv")
    assert {"duplicate-id", "path-escape"} <= codes(report)


def test_cli_exit_codes_and_report(dataset, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "mvtune.cli", "dataset", "validate", str(dataset)], capture_output=True, text=True, cwd=REPO
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads((dataset / "validation_report.json").read_text())["ok"] is True
    report_path = tmp_path / "r.json"
    bad = subprocess.run(
        [sys.executable, "-m", "mvtune.cli", "dataset", "validate", str(dataset), "--views",
         "0000,0001,0002,0003,0004,0005", "--report", str(report_path)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert bad.returncode == 1
    assert "0004" in bad.stderr and "FAILED" in bad.stderr
    assert json.loads(report_path.read_text())["counts"]["error:view-layout"] >= 2


def to_camera_space(obj):
    meta = json.loads((obj / "meta.json").read_text())
    for loc in meta["locations"]:
        path = obj / f"normal_{loc['index']}.webp"
        rgba = np.asarray(Image.open(path)).copy()
        n = rgba[..., :3].astype(np.float64) / 255 * 2 - 1
        cam = n @ np.asarray(loc["transform_matrix"])[:3, :3]
        rgba[..., :3] = np.where(rgba[..., 3:] > 0, np.floor(255 * (0.5 * cam + 0.5)).clip(0, 255), 0)
        Image.fromarray(rgba.astype(np.uint8), "RGBA").save(path, lossless=True)


def test_open_single_sided_meshes_are_not_called_camera_space(tmp_path):
    # A vertical card (front face only) and a ground plane (up face only): world-space normals whose back
    # faces show in half the views, as in Blender's renders. Neither may fail validation.
    src = tmp_path / "src"
    src.mkdir()
    (src / "card.obj").write_text("v -0.5 -0.5 0\nv 0.5 -0.5 0\nv 0.5 0.5 0\nv -0.5 0.5 0\nf 1 2 3\nf 1 3 4\n")
    (src / "ground.obj").write_text("v -0.5 0 -0.5\nv 0.5 0 -0.5\nv 0.5 0 0.5\nv -0.5 0 0.5\nf 1 3 2\nf 1 4 3\n")
    out = tmp_path / "ds"
    assert render_dataset(RenderConfig(input=src, out_dir=out, resolution=32)).failed == 0
    (out / "captions.json").write_text(json.dumps({"card": "a card", "ground": "a ground plane"}))
    report = validate_dataset(out, "tg2mv")
    assert report.ok, [f.message for f in report.errors]
    # the card's normals converted to camera space are still caught
    to_camera_space(out / "ca" / "card")
    report = validate_dataset(out, "tg2mv")
    assert [(f.code, f.object_id) for f in report.errors] == [("camera-space-normals", "card")]


def test_rgba_depth_exr_is_read_like_opencv(dataset):
    # Blender may write depth as R, G, B, A (spec §8: 3 or 4 channels); OpenCV's channel 0 is B, not A.
    import OpenEXR

    for obj in objects(dataset):
        for path in obj.glob("depth_*.exr"):
            with OpenEXR.File(str(path), separate_channels=True) as f:
                z = f.channels()["R"].pixels.copy()
            channels = {"R": z, "G": z, "B": z, "A": np.ones_like(z)}
            OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, channels).write(str(path))
    report = validate_dataset(dataset, "tg2mv")
    assert report.ok, [f.message for f in report.errors]
