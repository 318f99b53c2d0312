"""The batch dataset writer: layout, provenance, failures that do not stop the batch, resume after a kill."""

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mvtune.meshes import write_sample_meshes
from mvtune.render.dataset import DONE_MARKER, RenderConfig, render_dataset

RES = 64
REPO = Path(__file__).resolve().parents[1]
META_LOCATION_KEYS = {"index", "projection_type", "ortho_scale", "camera_angle_x", "elevation", "azimuth", "transform_matrix"}


@pytest.fixture(scope="module")
def meshes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("meshes")
    write_sample_meshes(out, count=3)
    return out


def tree_digest(root: Path, skip=("render_summary.json", "render_config.json", "errors.jsonl")) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def test_layout_meta_and_provenance(meshes_dir, tmp_path):
    out = tmp_path / "ds"
    summary = render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES))
    assert (summary.total, summary.rendered, summary.failed) == (3, 3, 0)
    ids = json.loads((out / "scene_list.json").read_text())
    assert len(ids) == 3
    captions = json.loads((out / "captions.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())["objects"]
    for object_id in ids:
        obj = out / object_id[:2] / object_id
        for i in range(10):
            for name in (f"color_{i:04d}.webp", f"depth_{i:04d}.exr", f"normal_{i:04d}.webp"):
                assert (obj / name).is_file(), name
        meta = json.loads((obj / "meta.json").read_text())
        assert set(meta) == {"width", "height", "locations"}
        assert meta["width"] == meta["height"] == RES
        assert [loc["index"] for loc in meta["locations"]] == [f"{i:04d}" for i in range(10)]
        for loc in meta["locations"]:
            assert set(loc) == META_LOCATION_KEYS
            assert np.asarray(loc["transform_matrix"]).shape == (4, 4)
        assert meta["locations"][0]["azimuth"] == pytest.approx(-np.pi / 2)
        assert captions[object_id].strip()
        record = manifest[object_id]
        source = Path(record["source"])
        assert record["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert record["layout"] == "ortho10" and record["resolution"] == RES
        assert record["licence"] and record["concept"] and record["generator"]


def test_rerun_skips_done_objects_and_settings_change_rerenders(meshes_dir, tmp_path):
    out = tmp_path / "ds"
    render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES))
    before = tree_digest(out)
    again = render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES))
    assert (again.rendered, again.skipped) == (0, 3)
    assert tree_digest(out) == before
    changed = render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES + 16), force=True)
    assert changed.rendered == 3
    from PIL import Image

    first = json.loads((out / "scene_list.json").read_text())[0]
    assert Image.open(out / first[:2] / first / "color_0000.webp").size == (RES + 16, RES + 16)


def test_broken_meshes_are_reported_and_the_rest_finish(meshes_dir, tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    good = sorted(meshes_dir.glob("*.glb"))[:2]
    for p in good:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "truncated.glb").write_bytes(good[0].read_bytes()[:200])
    (src / "notamesh.obj").write_text("this is not a mesh\n")
    (src / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    out = tmp_path / "ds"
    result = subprocess.run(
        [sys.executable, "-m", "mvtune.cli", "render", str(src), str(out), "--resolution", str(RES)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 1, result.stderr
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in errors) == ["nan", "notamesh", "truncated"]
    assert all(e["reason"] and e["source"] for e in errors)
    assert len(json.loads((out / "scene_list.json").read_text())) == 2
    assert "3 failed" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_kill_gives_the_same_dataset(meshes_dir, tmp_path, sig):
    reference = tmp_path / "reference"
    render_dataset(RenderConfig(input=meshes_dir, out_dir=reference, resolution=RES))

    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "mvtune.cli", "render", str(meshes_dir), str(out), "--resolution", str(RES)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob(DONE_MARKER)):
        time.sleep(0.02)
    time.sleep(0.05)  # land somewhere inside the next object
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert list(out.rglob(DONE_MARKER)), "the first object never finished"

    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert tree_digest(out) == tree_digest(reference)


def test_parallel_workers_write_the_same_dataset(meshes_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    render_dataset(RenderConfig(input=meshes_dir, out_dir=one, resolution=RES))
    summary = render_dataset(RenderConfig(input=meshes_dir, out_dir=two, resolution=RES, workers=2))
    assert summary.rendered == 3
    assert tree_digest(one) == tree_digest(two)


def test_bad_config_is_refused_before_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mvtune.cli", "render", str(tmp_path), str(tmp_path / "o"), "--layout", "ortho11"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert "layout" in result.stderr and "ortho11" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "mvtune.cli", "render", str(tmp_path / "missing"), str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_failed_rerender_does_not_list_the_stale_render(meshes_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(meshes_dir.glob("*.glb"))[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "ds"
    render_dataset(RenderConfig(input=src, out_dir=out, resolution=RES))
    broken = sorted(src.glob("*.glb"))[0]
    broken.write_bytes(b"not a glb any more")
    summary = render_dataset(RenderConfig(input=src, out_dir=out, resolution=RES))
    assert summary.failed == 1
    ids = json.loads((out / "scene_list.json").read_text())
    assert broken.stem not in ids and len(ids) == 1
    assert broken.stem not in json.loads((out / "manifest.json").read_text())["objects"]
    # a settings change whose re-render fails must not leave the old settings' files listed either
    summary = render_dataset(RenderConfig(input=src, out_dir=out, resolution=RES + 16, max_texture_pixels=1), force=True)
    assert json.loads((out / "scene_list.json").read_text()) == []


def test_kill_while_clearing_an_outdated_object_is_not_taken_for_done(meshes_dir, tmp_path, monkeypatch):
    from mvtune.render import dataset

    reference = tmp_path / "reference"
    render_dataset(RenderConfig(input=meshes_dir, out_dir=reference, resolution=RES))
    out = tmp_path / "ds"
    render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES))

    def killed_rmtree(path, *args, **kwargs):
        # rmtree's order is the directory's: here it reaches the marker last and is killed just before
        for p in Path(path).iterdir():
            if p.name != DONE_MARKER:
                p.unlink()
        raise KeyboardInterrupt

    # a run with another setting is killed while clearing the first object, then the user goes back
    monkeypatch.setattr(dataset.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES + 16), force=True)
    monkeypatch.undo()
    summary = render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES), force=True)
    assert (summary.rendered, summary.skipped) == (1, 2)
    assert tree_digest(out) == tree_digest(reference)


def test_bad_lighting_and_option_names_are_refused_up_front(meshes_dir, tmp_path):
    cmd = [sys.executable, "-m", "mvtune.cli", "render", str(meshes_dir), str(tmp_path / "o")]
    result = subprocess.run([*cmd, "--lighting", "nope.exr"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert "--lighting" in result.stderr and "nope.exr" in result.stderr
    assert not (tmp_path / "o").exists()
    result = subprocess.run([*cmd, "--max-texture-pixels", "0"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "--max-texture-pixels" in result.stderr


def test_editing_a_referenced_texture_or_material_rerenders(tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    (src / "card.obj").write_text(
        "mtllib materials.mtl\nv -0.5 -0.5 0\nv 0.5 -0.5 0\nv 0.5 0.5 0\nv -0.5 0.5 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nusemtl m\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n"
    )
    (src / "materials.mtl").write_text("newmtl m\nmap_Kd tex.png\n")
    Image.new("RGB", (4, 4), (255, 0, 0)).save(src / "tex.png")
    out = tmp_path / "ds"
    cfg = RenderConfig(input=src / "card.obj", out_dir=out, resolution=32, lighting="albedo")
    assert render_dataset(cfg).rendered == 1
    assert render_dataset(cfg).skipped == 1
    Image.new("RGB", (4, 4), (0, 0, 255)).save(src / "tex.png")
    assert render_dataset(cfg).rendered == 1
    color = np.asarray(Image.open(out / "ca" / "card" / "color_0000.webp"))
    assert color[16, 16, 2] > 200 and color[16, 16, 0] < 50
