"""Built-in sample ducks: written with sidecars, byte-deterministic, and read back as designed."""

import json
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from mvtune.meshes import load_mesh, normalize_mesh
from mvtune.meshes.procedural import GENERATOR, LICENCE, SAMPLE_NAMES, SAMPLES, sample_mesh, write_sample_meshes


def test_all_samples_written_with_sidecars(sample_meshes_dir):
    assert 6 <= len(SAMPLES) <= 8
    for spec in SAMPLES:
        glb = sample_meshes_dir / f"{spec.name}.glb"
        assert glb.is_file()
        assert glb.with_suffix(".txt").read_text() == spec.caption + "\n"
        record = json.loads(glb.with_suffix(".json").read_text())
        assert record == {
            "name": spec.name, "concept": spec.concept, "caption": spec.caption,
            "licence": LICENCE, "generator": GENERATOR,
        }


def test_count_limits_output(tmp_path):
    paths = write_sample_meshes(tmp_path, count=2)
    assert [p.stem for p in paths] == list(SAMPLE_NAMES[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}{ext}" for n in SAMPLE_NAMES[:2] for ext in (".glb", ".txt", ".json")
    )


def test_deterministic_across_processes(tmp_path, sample_meshes_dir):
    code = "import sys; from mvtune.meshes.procedural import write_sample_meshes; write_sample_meshes(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    for path in sample_meshes_dir.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize("spec", SAMPLES, ids=SAMPLE_NAMES)
def test_reload_as_designed(sample_meshes_dir, spec):
    mesh = load_mesh(sample_meshes_dir / f"{spec.name}.glb")
    assert mesh.warnings == []
    assert 2000 <= mesh.num_faces <= 8000
    parts = {p.name: p for p in mesh.parts}
    duck = parts["duck"]
    if spec.vertex_colored:
        assert duck.texture is None and duck.vertex_colors.shape == (len(duck.vertices), 4)
    else:
        assert duck.texture.shape == (256, 256, 4) and duck.uv.shape == (len(duck.vertices), 2)
        assert duck.vertex_colors is None
    hats = {"firefighter": {"helmet"}, "astronaut": {"helmet", "visor"}, "wizard": {"hat"}, None: set()}[spec.hat]
    assert set(parts) - {"duck"} == hats
    for name in hats:
        assert parts[name].texture is None and parts[name].vertex_colors is None
        assert parts[name].color_factor != (1.0, 1.0, 1.0, 1.0)
    # Normals come from the file (analytic), point outwards and agree with the face winding.
    v, f = duck.vertices.astype(float), duck.faces.astype(int)
    face_normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (np.einsum("ij,ij->i", face_normals, duck.normals[f].mean(1)) > 0).all()


def test_duck_faces_front_after_normalisation(sample_meshes_dir):
    """Beak at world -Y (the front camera sees it), head near the top, the whole duck in the unit cube."""
    mesh = normalize_mesh(load_mesh(sample_meshes_dir / "duck_yellow.glb"))
    duck = mesh.parts[0]
    tip = np.argmin(duck.vertices[:, 1])
    row = int((1.0 - duck.uv[tip, 1]) * 256)
    col = int(duck.uv[tip, 0] * 256)
    r, g, b, _ = duck.texture[row, col].astype(int)
    assert r > 1.4 * g and g > 2 * b  # orange (the beak; its tip sits on the darker mouth line), not yellow
    assert duck.vertices[tip, 2] > 0.1  # at the front-top, not at belly height
    low, high = mesh.bounds
    assert float((high - low).max()) == pytest.approx(1.0)


def test_sample_mesh_returns_scene_and_rejects_unknown():
    scene = sample_mesh("duck_astronaut")
    assert isinstance(scene, trimesh.Scene)
    assert sorted(scene.geometry) == ["duck", "helmet", "visor"]
    with pytest.raises(KeyError, match="unknown sample mesh 'goose'"):
        sample_mesh("goose")
