"""Per-view files and meta.json (spec dataset-format §2.1-§2.4, §8)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mvtune import cameras
from mvtune.render import files
from mvtune.storage import write_json


def fake_render(res=96, seed=0):
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:res, 0:res]
    inside = np.hypot(u - res / 2, v - res / 2) < res / 3
    color = rng.integers(0, 256, (res, res, 4), dtype=np.uint8)
    color[..., 3] = np.where(inside, 255, 0)
    color[~inside, :3] = 0
    normal = rng.integers(0, 256, (res, res, 4), dtype=np.uint8)
    normal[..., 3] = np.where(inside, 255, 0)
    normal[~inside, :3] = 0
    depth = np.where(inside, rng.uniform(1.0, 2.0, (res, res)), 65535.0).astype(np.float32)
    return color, normal, depth


def test_webp_round_trips_exactly_and_deterministically(tmp_path):
    color, normal, _ = fake_render()
    files.write_color_webp(tmp_path / "color_0000.webp", color)
    files.write_normal_webp(tmp_path / "normal_0000.webp", normal)
    files.write_normal_webp(tmp_path / "again.webp", normal)
    files.write_color_webp(tmp_path / "again_color.webp", color)
    got = files.read_webp_rgba(tmp_path / "color_0000.webp")
    assert np.array_equal(got[..., 3], color[..., 3])
    visible = color[..., 3] > 0
    assert np.array_equal(got[visible], color[visible])
    assert np.array_equal(files.read_webp_rgba(tmp_path / "normal_0000.webp"), normal)  # background RGB too
    assert (tmp_path / "normal_0000.webp").read_bytes() == (tmp_path / "again.webp").read_bytes()
    assert (tmp_path / "color_0000.webp").read_bytes() == (tmp_path / "again_color.webp").read_bytes()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["again.webp", "again_color.webp", "color_0000.webp", "normal_0000.webp"]  # no temp files


def test_depth_exr_has_three_equal_float32_channels(tmp_path):
    import OpenEXR

    _, _, depth = fake_render()
    files.write_depth_exr(tmp_path / "depth_0000.exr", depth)
    files.write_depth_exr(tmp_path / "again.exr", depth)
    with OpenEXR.File(str(tmp_path / "depth_0000.exr")) as f:
        rgb = np.array(f.channels()["RGB"].pixels)
    assert rgb.dtype == np.float32 and rgb.shape == depth.shape + (3,)
    for c in range(3):
        assert np.array_equal(rgb[..., c], depth)
    assert np.array_equal(files.read_depth_exr(tmp_path / "depth_0000.exr"), depth)
    assert (tmp_path / "depth_0000.exr").read_bytes() == (tmp_path / "again.exr").read_bytes()


def test_position_exr_round_trip(tmp_path):
    import OpenEXR

    position = np.random.default_rng(1).uniform(-0.5, 0.5, (32, 48, 3)).astype(np.float32)
    files.write_position_exr(tmp_path / "position_0000.exr", position)
    with OpenEXR.File(str(tmp_path / "position_0000.exr")) as f:
        assert np.array_equal(np.array(f.channels()["RGB"].pixels), position)


def test_opencv_reads_depth_like_the_reference_loader(tmp_path):
    """MV-Adapter reads depth with cv2.imread(IMREAD_UNCHANGED)[..., 0]; OpenCV needs the env var set first."""
    pytest.importorskip("cv2")
    _, _, depth = fake_render()
    files.write_depth_exr(tmp_path / "depth_0000.exr", depth)
    np.save(tmp_path / "expected.npy", depth)
    script = (
        "import cv2, numpy as np, sys\n"
        "d = cv2.imread(sys.argv[1], cv2.IMREAD_UNCHANGED)\n"
        "assert d.ndim == 3 and d.shape[2] == 3 and d.dtype == np.float32, (d.shape, d.dtype)\n"
        "assert np.array_equal(d[..., 0], np.load(sys.argv[2]))\n"
        "mask = (d[..., 0:1] <= 1000).astype(np.float32)\n"
        "assert mask.sum() == (np.load(sys.argv[2]) < 1000).sum()\n"
    )
    env = dict(os.environ, OPENCV_IO_ENABLE_OPENEXR="1")
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "depth_0000.exr"), str(tmp_path / "expected.npy")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "color_0000.webp"
    target.write_bytes(b"old")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        files.atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["color_0000.webp"]


def test_writers_reject_wrong_shapes(tmp_path):
    with pytest.raises(ValueError):
        files.write_color_webp(tmp_path / "c.webp", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError):
        files.write_depth_exr(tmp_path / "d.exr", np.zeros((8, 8, 3), np.float32))


def test_meta_has_exactly_the_reference_schema():
    views = cameras.ortho10()
    meta = files.build_meta(views, 1024)
    assert list(meta) == ["width", "height", "locations"]
    assert meta["width"] == 1024 and meta["height"] == 1024
    keys = ["index", "projection_type", "ortho_scale", "camera_angle_x", "elevation", "azimuth", "transform_matrix"]
    for view, loc in zip(views, meta["locations"], strict=True):
        assert list(loc) == keys
        assert loc["index"] == view.index and len(loc["index"]) == 4
        assert loc["projection_type"] == "ORTHO"
        assert loc["ortho_scale"] == 1.1
        assert loc["camera_angle_x"] == pytest.approx(2 * math.atan(16 / 50))
        assert loc["elevation"] == pytest.approx(math.radians(view.elevation))
        assert loc["azimuth"] == pytest.approx(math.radians(view.azimuth - 90.0))
        assert np.allclose(loc["transform_matrix"], view.c2w)
        assert all(isinstance(row, list) and len(row) == 4 for row in loc["transform_matrix"])
    assert meta["locations"][0]["azimuth"] == pytest.approx(-math.pi / 2)  # user front 0 deg, not wrapped
    assert meta["locations"][3]["azimuth"] == pytest.approx(math.radians(180.0))
    assert json.loads(json.dumps(meta)) == meta


def test_write_view_files_writes_the_dataset_names(tmp_path):
    from mvtune.render.gl import ViewImages

    color, normal, depth = fake_render()
    images = ViewImages(color=color, depth=depth, normal=normal, mask=normal[..., 3] > 0)
    timings = files.write_view_files(tmp_path, "0008", images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["color_0008.webp", "depth_0008.exr", "normal_0008.webp"]
    assert set(timings) == {"webp_color", "webp_normal", "exr_depth"}
    write_json(tmp_path / "meta.json", files.build_meta(cameras.ortho10(), 96))
    assert json.loads((tmp_path / "meta.json").read_text())["locations"][8]["index"] == "0008"


def test_written_files_get_normal_permissions_not_mkstemps_0600(tmp_path):
    # A dataset is often rendered by one account and read by another (training jobs): files follow the umask.
    color, normal, depth = fake_render(res=16)
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    written = [
        files.write_color_webp(tmp_path / "color_0000.webp", color),
        files.write_normal_webp(tmp_path / "normal_0000.webp", normal),
        files.write_depth_exr(tmp_path / "depth_0000.exr", depth),
        write_json(tmp_path / "meta.json", files.build_meta(cameras.ortho10(), 16)),
    ]
    for path in written:
        assert path.stat().st_mode & 0o777 == expected, path.name
