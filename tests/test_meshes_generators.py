"""Mesh generation runs (procedural backend): item folders, provenance, resume, shards, guard, broken outputs."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from mvtune.meshes import load_mesh
from mvtune.meshes.generators import BACKENDS, GeneratorError, generate_meshes, get_backend
from mvtune.meshes.generators.base import check_output, in_shard, item_seed, parse_shard
from mvtune.meshes.generators.run import GenerateMeshesConfig, is_done
from mvtune.meshes.procedural import KITS, design_duck, themed_scene
from mvtune.prompts import write_prompt_rows


def _row(item, concept="firefighter", prompt=None, **extra):
    return {"id": item, "concept": concept, "subject": "duck", "attributes": {}, "style": None,
            "prompt": prompt or f"a {concept} duck, item {item}", "seed": 0, **extra}


def _run(tmp_path, rows, out="out", **kwargs):
    prompts = tmp_path / "prompts.jsonl"
    write_prompt_rows(prompts, rows)
    cfg = GenerateMeshesConfig(backend="procedural", prompts=prompts, out_dir=tmp_path / out, **kwargs)
    return generate_meshes(cfg)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One run over every kit plus a guarded prompt, an overridden one and an unknown concept."""
    tmp = tmp_path_factory.mktemp("gen")
    rows = [_row(f"{kit.replace(' ', '_')}-{k}", kit) for kit in KITS for k in range(2)]
    rows += [
        _row("helmet-hint", "firefighter", attributes={"helmet": "a yellow fire helmet", "tools": "holding a fire hose"}),
        _row("guarded", prompt="Mario as a firefighter duck"),
        _row("overridden", prompt="Mario as a firefighter duck", override="Mario"),
        _row("pirate-0", "pirate"),
    ]
    summary = _run(tmp, rows, devices=["cpu", "cpu"])
    return tmp, rows, summary


def test_items_written_with_caption_and_provenance(generated):
    tmp, rows, summary = generated
    out = tmp / "out"
    assert summary["total"] == len(rows) == 2 * len(KITS) + 4
    assert summary["generated"] == len(rows) - 2 and summary["failed"] == 2
    row = rows[0]
    item = out / row["id"]
    record = json.loads((item / "mesh.json").read_text())
    seed = item_seed(0, row)
    duck = design_duck("firefighter", seed, {})
    assert (item / "mesh.txt").read_text() == duck.caption() + "\n"
    assert record["backend"] == "procedural" and record["licence"] == "CC0-1.0"
    assert record["model"] == "mvtune themed ducks" and record["version"] == "1"
    assert record["prompt_row"] == row and record["seed"] == seed and record["override"] is None
    assert record["concept"] == "firefighter" and record["visible_attributes"] == duck.attributes()
    assert record["files"]["mesh.glb"]["sha256"] == hashlib.sha256((item / "mesh.glb").read_bytes()).hexdigest()
    mesh = load_mesh(item / "mesh.glb")
    assert {p.name for p in mesh.parts} == {"duck", "kit"}
    assert all(p.texture is not None and p.uv is not None for p in mesh.parts)
    assert not (out / ".staging").exists()


def test_hint_override_and_guard(generated):
    tmp, _, _ = generated
    out = tmp / "out"
    hinted = (out / "helmet-hint" / "mesh.txt").read_text()
    assert "yellow firefighter helmet" in hinted and "holding a hose nozzle" in hinted
    assert json.loads((out / "overridden" / "mesh.json").read_text())["override"] == "Mario"
    errors = {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"guarded", "pirate-0"}
    assert errors["guarded"]["stage"] == "guard" and "'Mario'" in errors["guarded"]["reason"]
    assert errors["pirate-0"]["stage"] == "generate"
    assert "no procedural kit for concept 'pirate'" in errors["pirate-0"]["reason"]
    assert not (out / "guarded").exists() and not (out / "pirate-0").exists()


def test_rerun_skips_done_and_redoes_damaged(generated):
    tmp, rows, _ = generated
    out = tmp / "out"
    victim = out / rows[1]["id"] / "mesh.glb"
    original = victim.read_bytes()
    victim.write_bytes(original[:100])  # a torn file: its size no longer matches the provenance
    assert not is_done(victim.parent)
    summary = _run(tmp, rows)
    assert summary["skipped"] == len(rows) - 3 and summary["generated"] == 1 and summary["failed"] == 2
    assert victim.read_bytes() == original  # same seed, same bytes


def test_shards_partition_without_overlap(tmp_path):
    ids = [f"item-{k}" for k in range(300)]
    owners = [[i for i in range(3) if in_shard(item, (i, 3))] for item in ids]
    assert all(len(o) == 1 for o in owners)
    assert {o[0] for o in owners} == {0, 1, 2}
    rows = [_row(f"rubber-{k}", "rubber duck") for k in range(6)]
    made = []
    for index in range(2):
        summary = _run(tmp_path, rows, shard=f"{index}/2")
        made.append({p.name for p in (tmp_path / "out").iterdir() if (p / "mesh.json").exists()} - set().union(*made))
        assert summary["generated"] == len(made[-1]) and (tmp_path / "out" / f"errors.shard-{index}-of-2.jsonl").exists()
    assert made[0].isdisjoint(made[1]) and made[0] | made[1] == {r["id"] for r in rows}


def test_config_refusals(tmp_path):
    with pytest.raises(GeneratorError, match="unknown backend 'hunyuan3d-21'.*did you mean 'hunyuan3d-2.1'"):
        get_backend("hunyuan3d-21")
    for shard in ("3/3", "1-2", "0/0"):
        with pytest.raises(GeneratorError, match="--shard must look like i/n"):
            parse_shard(shard)
    with pytest.raises(GeneratorError, match="procedural options: base_model: Extra inputs"):
        _run(tmp_path, [_row("a-0")], options={"base_model": "x"})
    write_prompt_rows(tmp_path / "bad.jsonl", [_row("../escape")])
    with pytest.raises(GeneratorError, match="usable as folder names.*'../escape'"):
        generate_meshes(GenerateMeshesConfig(backend="procedural", prompts=tmp_path / "bad.jsonl", out_dir=tmp_path / "o"))
    with pytest.raises(GeneratorError, match="does not exist"):
        generate_meshes(GenerateMeshesConfig(backend="procedural", prompts=tmp_path / "none.jsonl", out_dir=tmp_path / "o"))
    assert set(BACKENDS) == {"procedural", "hunyuan3d-2.1", "hunyuan3d-2"}


def _glb(path, vertices, faces, texture=None, uv=None):
    if texture is None:
        visual = trimesh.visual.ColorVisuals()
    else:
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual, process=False)
    path.write_bytes(trimesh.Scene(mesh).export(file_type="glb"))
    return path


def test_check_output_catches_broken_meshes(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    uv = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], float)
    good = np.random.default_rng(0).integers(0, 255, (8, 8, 4), dtype=np.uint8)
    good[..., 3] = 255
    assert check_output(_glb(tmp_path / "good.glb", v, f, good, uv))["faces"] == 4
    nan = v.copy()
    nan[1] = np.nan
    flat = np.full((8, 8, 4), 200, np.uint8)
    clear = good.copy()
    clear[..., 3] = 0
    cases = {
        "vertices of part .* are NaN": _glb(tmp_path / "nan.glb", nan, f, good, uv),
        "no geometry found|no faces": _glb(tmp_path / "nofaces.glb", v, np.zeros((0, 3), int), good, uv),
        "empty texture \\(one flat colour": _glb(tmp_path / "flat.glb", v, f, flat, uv),
        "fully transparent texture": _glb(tmp_path / "clear.glb", v, f, clear, uv),
        "no texture and no vertex colours": _glb(tmp_path / "plain.glb", v, f),
    }
    for pattern, path in cases.items():
        with pytest.raises(GeneratorError, match=f"broken output: .*({pattern})"):
            check_output(path)


def test_themed_ducks_distinct_deterministic_and_captioned_exactly():
    hashes = set()
    for seed in range(25):
        for kit in KITS:
            duck = design_duck(kit, seed)
            assert duck == design_duck(kit, seed)
            scene = themed_scene(duck)
            hashes.add(hashlib.sha256(scene.export(file_type="glb")).hexdigest())
            found, caption = duck.attributes(), duck.caption()
            assert ("kit" in scene.geometry) == any(k in found for k in ("helmet", "vest", "back", "tool"))
            assert ("helmet" in found) == (duck.headwear is not None) == bool(KITS[kit].headwear)
            for phrase in found.values():
                assert phrase in caption
            assert ("reflective stripes" in caption) == (duck.garment == "vest")
            assert ("apron" in caption) == (duck.garment == "apron")
            assert ("holding" in caption) == (duck.tool is not None)
            for colour in (duck.headwear_colour, duck.garment_colour, duck.back_colour):
                assert colour != duck.body_colour  # every stated part stands out from the body
    assert len(hashes) == 25 * len(KITS)


def test_cli_generate_and_import(tmp_path, cli):
    write_prompt_rows(tmp_path / "p.jsonl", [_row("astronaut-0", "astronaut"), _row("pirate-0", "pirate")])
    result = cli("meshes", "generate", "--backend", "procedural", "--prompts", tmp_path / "p.jsonl",
                 "--out", tmp_path / "m", expect=1)
    assert "2 items: 1 generated" in result.stderr and "no procedural kit for concept 'pirate'" in result.stderr
    result = cli("meshes", "generate", "--backend", "procedual", "--prompts", tmp_path / "p.jsonl",
                 "--out", tmp_path / "m", expect=2)
    assert "did you mean 'procedural'" in result.stderr and "Traceback" not in result.stderr
    result = cli("meshes", "import", tmp_path / "m", "--source", "meshy", "--out", tmp_path / "i", expect=2)
    assert "--licence is required" in result.stderr
    cli("meshes", "import", tmp_path / "m", "--source", "mine", "--licence", "CC0-1.0", "--out", tmp_path / "i")
    (record_path,) = (tmp_path / "i").glob("*/mesh.json")
    record = json.loads(record_path.read_text())
    assert record["licence"] == "CC0-1.0" and record["source"] == "mine"


@pytest.mark.gl
def test_generated_folder_renders_with_its_provenance(generated, tmp_path):
    from mvtune.render.dataset import RenderConfig, render_dataset

    tmp, rows, _ = generated
    summary = render_dataset(RenderConfig(input=tmp / "out", out_dir=tmp_path / "ds", resolution=32, layout="0:0"))
    assert summary.failed == 0 and summary.rendered == len(rows) - 2
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())["objects"]
    by_source = {Path(entry["source"]).parent.name: entry for entry in manifest.values()}
    assert all(Path(entry["source"]).parent.name == object_id for object_id, entry in manifest.items())  # item ids
    entry = by_source[rows[0]["id"]]
    assert entry["licence"] == "CC0-1.0" and entry["concept"] == "firefighter"
    assert entry["caption"] == (tmp / "out" / rows[0]["id"] / "mesh.txt").read_text().strip()
