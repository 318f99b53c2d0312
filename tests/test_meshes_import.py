"""`mvtune meshes import`: Objaverse's cache with its annotations, Meshy exports, duplicates and bad files."""

import gzip
import json

import pytest
import trimesh

from mvtune.meshes import load_mesh
from mvtune.meshes.importers import MeshImportError, geometry_hash, import_meshes
from mvtune.meshes.procedural import design_duck, sample_mesh, themed_scene


def _glb(path, scene):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(scene.export(file_type="glb"))
    return path


@pytest.fixture
def objaverse_cache(tmp_path):
    """~/.objaverse/hf-objaverse-v1 as the objaverse package lays it out: glbs/<group>/<uid>.glb, metadata/<group>.json.gz."""
    base = tmp_path / ".objaverse" / "hf-objaverse-v1"
    glbs = base / "glbs" / "000-001"
    _glb(glbs / "aaa111.glb", sample_mesh("duck_yellow"))
    _glb(glbs / "bbb222.glb", themed_scene(design_duck("firefighter", 1)))
    _glb(glbs / "ccc333.glb", themed_scene(design_duck("astronaut", 2)))
    # Same geometry as aaa111, other colours, so other bytes: an exact geometric duplicate.
    _glb(glbs / "ddd444.glb", sample_mesh("duck_blue"))
    _glb(glbs / "eee555.glb", themed_scene(design_duck("rubber duck", 5)))
    (glbs / "fff666.glb").write_bytes(b"glTF-but-truncated")
    notes = {
        "aaa111": {"uid": "aaa111", "name": "Yellow Duck", "license": "by", "user": {"username": "ann"},
                   "viewerUrl": "https://sketchfab.com/3d-models/aaa111", "tags": [{"name": "duck"}]},
        "bbb222": {"uid": "bbb222", "name": "Fire Duck", "license": "by-nc", "user": {"username": "bob"}},
        "ccc333": {"uid": "ccc333", "name": "Space Duck", "license": "by-nd"},
        "ddd444": {"uid": "ddd444", "name": "Blue Duck", "license": "cc0"},
        "fff666": {"uid": "fff666", "name": "Broken", "license": "cc0"},
    }
    (base / "metadata").mkdir()
    with gzip.open(base / "metadata" / "000-001.json.gz", "wt", encoding="utf-8") as f:
        json.dump(notes, f)
    return tmp_path / ".objaverse"


def test_objaverse_licences_names_duplicates_and_errors(objaverse_cache, tmp_path):
    out = tmp_path / "imported"
    summary = import_meshes(objaverse_cache, "objaverse", out)
    assert (summary["imported"], summary["failed"]) == (4, 1)
    assert summary["duplicates"] == [{"id": "ddd444", "file": str(objaverse_cache / "hf-objaverse-v1" / "glbs" /
                                                                 "000-001" / "ddd444.glb"), "duplicate_of": "aaa111"}]
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/mesh.json")}
    assert {k: (r["licence"], r["licence_from"]) for k, r in records.items()} == {
        "aaa111": ("CC-BY-4.0", "annotation"), "bbb222": ("CC-BY-NC-4.0", "annotation"),
        "ccc333": ("unknown", "annotation"), "eee555": ("unknown", "--licence"),
    }
    first = records["aaa111"]
    assert (first["name"], first["author"], first["tags"], first["source"]) == ("Yellow Duck", "ann", ["duck"], "objaverse")
    assert first["original_licence"] == "by" and first["url"].endswith("aaa111")
    assert (out / "aaa111" / "mesh.txt").read_text() == "Yellow Duck\n"
    assert first["geometry_sha256"] == geometry_hash(out / "aaa111" / "mesh.glb")
    error = json.loads((out / "import_errors.jsonl").read_text())
    assert error["id"] == "fff666" and "fff666.glb" in error["reason"]
    again = import_meshes(objaverse_cache, "objaverse", out, licence="CC0-1.0")
    assert (again["imported"], again["skipped"], len(again["duplicates"])) == (0, 4, 1)


def test_meshy_exports_glb_and_obj(tmp_path):
    exports = tmp_path / "meshy"
    _glb(exports / "fire_duck.glb", themed_scene(design_duck("firefighter", 7)))
    task = {"id": "018f-task", "prompt": "a firefighter duck", "art_style": "realistic"}
    (exports / "fire_duck.json").write_text(json.dumps(task))
    obj_dir = exports / "obj_export"
    obj_dir.mkdir()
    trimesh.load(_glb(tmp_path / "src.glb", themed_scene(design_duck("astronaut", 3))), force="mesh").export(
        obj_dir / "astro.obj")
    out = tmp_path / "out"
    summary = import_meshes(exports, "meshy", out, licence="cc-by")
    assert summary["imported"] == 2 and summary["failed"] == 0, summary["errors"]
    task = json.loads((out / "018f-task" / "mesh.json").read_text())
    assert task["licence"] == "CC-BY-4.0" and task["task"]["prompt"] == "a firefighter duck"
    assert (out / "018f-task" / "mesh.txt").read_text() == "a firefighter duck\n"
    converted = load_mesh(out / "obj_export_astro" / "mesh.glb")
    assert converted.parts[0].texture is not None  # the OBJ's material texture survived the conversion


def test_refusals(tmp_path, objaverse_cache):
    (tmp_path / "plain").mkdir()
    _glb(tmp_path / "plain" / "a.glb", sample_mesh("duck_red"))
    with pytest.raises(MeshImportError, match="--licence is required for --source meshy"):
        import_meshes(tmp_path / "plain", "meshy", tmp_path / "o")
    with pytest.raises(MeshImportError, match="--licence: unknown licence 'cc-by-4'"):
        import_meshes(tmp_path / "plain", "meshy", tmp_path / "o", licence="cc-by-4")
    with pytest.raises(MeshImportError, match="not an objaverse cache"):
        import_meshes(tmp_path / "plain", "objaverse", tmp_path / "o")
    with pytest.raises(MeshImportError, match="does not exist"):
        import_meshes(tmp_path / "missing", "sketchfab", tmp_path / "o", licence="CC0-1.0")
