"""Hunyuan3D backends against stand-in packages (tests/hunyuan_standin): the real orchestration, worker, timeout,
output checks and provenance, with the tiny SDXL drawing the reference images (resume is backend-independent and
tested with the procedural backend)."""

import json
import shutil
from pathlib import Path

import pytest

from mvtune.meshes import load_mesh
from mvtune.meshes.generators import GeneratorError, generate_meshes
from mvtune.meshes.generators.run import GenerateMeshesConfig
from mvtune.prompts import write_prompt_rows

STANDIN = Path(__file__).parent / "hunyuan_standin"
FAST = {"image_steps": 2, "image_size": 64, "shape_steps": 2, "octree_resolution": 32}


def _rows(count):
    return [{"id": f"firefighter-{k:04d}", "concept": "firefighter", "subject": "duck", "attributes": {},
             "style": None, "prompt": f"a firefighter duck number {k}", "seed": k} for k in range(count)]


def _weights(tmp_path, model, folders):
    for name in folders:
        (tmp_path / "weights" / model / name).mkdir(parents=True)
    return tmp_path / "weights"


def _config(tmp_path, backend, options, **kwargs):
    write_prompt_rows(tmp_path / "prompts.jsonl", _rows(kwargs.pop("count", 3)))
    return GenerateMeshesConfig(backend=backend, prompts=tmp_path / "prompts.jsonl", out_dir=tmp_path / "out",
                                options=options, **kwargs)


def test_hunyuan2_timeout_broken_output_and_provenance(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(STANDIN))
    (tmp_path / "hang").write_text("")
    (tmp_path / "break").write_text("nan")
    monkeypatch.setenv("HUNYUAN_STANDIN_HANG", str(tmp_path / "hang"))
    monkeypatch.setenv("HUNYUAN_STANDIN_BREAK", str(tmp_path / "break"))
    weights = _weights(tmp_path, "tencent/Hunyuan3D-2",
                       ("hunyuan3d-dit-v2-0", "hunyuan3d-paint-v2-0-turbo", "hunyuan3d-delight-v2-0"))
    cfg = _config(tmp_path, "hunyuan3d-2", {"base_model": str(tiny_base), "weights": str(weights), **FAST},
                  timeout=30, count=4)
    summary = generate_meshes(cfg)
    # Item 0 hangs (killed after the timeout, a fresh worker takes over), item 1 comes out with NaN vertices.
    stages = {e["id"]: e["stage"] for e in summary["errors"]}
    assert stages == {"firefighter-0000": "timeout", "firefighter-0001": "check"}, summary["errors"]
    assert "NaN" in summary["errors"][1]["reason"]
    assert summary["generated"] == 2
    item = tmp_path / "out" / "firefighter-0002"
    record = json.loads((item / "mesh.json").read_text())
    assert record["licence"] == "tencent-hunyuan-community"
    assert (record["backend"], record["model"], record["version"]) == ("hunyuan3d-2", "tencent/Hunyuan3D-2", "2.0")
    assert record["prompt"] == "a firefighter duck number 2" and record["override"] is None
    assert (item / "mesh.txt").read_text() == "a firefighter duck number 2\n"
    assert set(record["files"]) == {"mesh.glb", "mesh.txt", "reference.png"}
    assert load_mesh(item / "mesh.glb").parts[0].texture is not None
    assert not (tmp_path / "out" / "firefighter-0000").exists() and not (tmp_path / "out" / "firefighter-0001").exists()


@pytest.mark.slow
def test_hunyuan21_checkout_layout(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(STANDIN))  # standin_mesh; hy3dshape/hy3dpaint come from the checkout
    repo = tmp_path / "Hunyuan3D-2.1"
    shutil.copytree(STANDIN / "Hunyuan3D-2.1", repo)
    (repo / "hy3dpaint" / "ckpt").mkdir()
    (repo / "hy3dpaint" / "ckpt" / "RealESRGAN_x4plus.pth").write_bytes(b"stand-in")
    _weights(tmp_path, "tencent/Hunyuan3D-2.1", ("hunyuan3d-dit-v2-1", "hunyuan3d-paintpbr-v2-1"))
    monkeypatch.chdir(tmp_path)  # relative folders must survive the worker's move into the checkout
    cfg = _config(tmp_path, "hunyuan3d-2.1", {"base_model": str(tiny_base), "weights": "weights",
                                              "repo": "Hunyuan3D-2.1", **FAST}, count=1)
    summary = generate_meshes(cfg)
    assert summary["generated"] == 1, summary["errors"]
    item = tmp_path / "out" / "firefighter-0000"
    assert sorted(p.name for p in item.iterdir()) == ["mesh.glb", "mesh.json", "mesh.txt", "reference.png"]
    assert json.loads((item / "mesh.json").read_text())["version"] == "2.1"


def test_missing_package_gives_install_steps(tmp_path, tiny_base, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    weights = _weights(tmp_path, "tencent/Hunyuan3D-2",
                       ("hunyuan3d-dit-v2-0", "hunyuan3d-paint-v2-0-turbo", "hunyuan3d-delight-v2-0"))
    cfg = _config(tmp_path, "hunyuan3d-2", {"base_model": str(tiny_base), "weights": str(weights), **FAST}, count=1)
    with pytest.raises(GeneratorError, match="cannot import hy3dgen.*git clone https://github.com/Tencent-Hunyuan"):
        generate_meshes(cfg)


def test_preflight_lists_every_missing_folder(tmp_path):
    cfg = _config(tmp_path, "hunyuan3d-2.1", {"base_model": str(tmp_path / "nosdxl"), "weights": str(tmp_path / "w")})
    with pytest.raises(GeneratorError) as info:
        generate_meshes(cfg)
    message = str(info.value)
    for expected in ("not a diffusers SDXL folder", "hunyuan3d-dit-v2-1, hunyuan3d-paintpbr-v2-1",
                     "huggingface-cli download tencent/Hunyuan3D-2.1", "--hunyuan-repo must name"):
        assert expected in message
    assert not (tmp_path / "out" / "logs").exists()  # refused before any worker or folder
