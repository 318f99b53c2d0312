"""load_mesh on real files and on constructed bad ones: every refusal names the file and the problem."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from mvtune.meshes import (
    NEUTRAL_GREY,
    InvalidGeometryError,
    MeshError,
    MeshReadError,
    NotAMeshError,
    TextureMissingError,
    TextureTooLargeError,
    UnsupportedFormatError,
    load_mesh,
)

TRIANGLE_OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _png(path: Path, size=(4, 4), color=(255, 0, 0, 255)) -> Path:
    Image.new("RGBA", size, color).save(path)
    return path


def _gltf(tmp_path: Path, name="tri.gltf", **extra) -> Path:
    """A minimal one-triangle glTF with an embedded buffer, plus whatever top-level keys the test adds."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32).tobytes()
    indices = np.array([0, 1, 2], np.uint16).tobytes() + b"\0\0"
    blob = positions + indices
    header = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"byteLength": len(blob), "uri": "data:;base64," + base64.b64encode(blob).decode()}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": 36},
            {"buffer": 0, "byteOffset": 36, "byteLength": 6},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"},
        ],
    }
    header.update(extra)
    return _write(tmp_path / name, json.dumps(header))


def _textured_quad(texture: np.ndarray) -> trimesh.Trimesh:
    """A unit quad whose top edge (y = 1) carries v = 1, textured with `texture` (row 0 = top)."""
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    visual = trimesh.visual.TextureVisuals(uv=vertices[:, :2].copy(), material=material)
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


# --- refusals -------------------------------------------------------------------------------------------------


def test_unsupported_extension_lists_supported(tmp_path):
    path = _write(tmp_path / "model.stl", "solid x\nendsolid x\n")
    with pytest.raises(UnsupportedFormatError, match=r"model\.stl.*'\.stl'.*\.glb, \.gltf, \.obj, \.ply"):
        load_mesh(path)


def test_missing_file(tmp_path):
    with pytest.raises(MeshReadError, match=r"nothere\.glb: file not found"):
        load_mesh(tmp_path / "nothere.glb")


def test_truncated_glb(tmp_path):
    good = tmp_path / "good.glb"
    good.write_bytes(trimesh.creation.box().export(file_type="glb"))
    bad = tmp_path / "cut.glb"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MeshReadError, match=r"cut\.glb: truncated GLB"):
        load_mesh(bad)


def test_text_file_named_glb(tmp_path):
    with pytest.raises(MeshReadError, match=r"notes\.glb: not a GLB file"):
        load_mesh(_write(tmp_path / "notes.glb", "just some notes, not a mesh\n"))


def test_text_file_named_obj(tmp_path):
    with pytest.raises(NotAMeshError, match=r"notes\.obj: no geometry found"):
        load_mesh(_write(tmp_path / "notes.obj", "hello\nthis is text\n"))


def test_text_file_named_ply(tmp_path):
    with pytest.raises(MeshReadError, match=r"notes\.ply: cannot parse \.ply file"):
        load_mesh(_write(tmp_path / "notes.ply", "hello\n"))


def test_invalid_gltf_json(tmp_path):
    with pytest.raises(MeshReadError, match=r"bad\.gltf: invalid glTF JSON"):
        load_mesh(_write(tmp_path / "bad.gltf", "{not json"))


def test_point_cloud(tmp_path):
    ply = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    path = _write(tmp_path / "cloud.ply", ply + "0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(NotAMeshError, match=r"cloud\.ply: not a triangle mesh.*PointCloud.*no faces"):
        load_mesh(path)


def test_empty_gltf_scene(tmp_path):
    path = _write(tmp_path / "empty.gltf", json.dumps({"asset": {"version": "2.0"}, "scenes": [{"nodes": []}]}))
    with pytest.raises(NotAMeshError, match=r"empty\.gltf: no geometry found"):
        load_mesh(path)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_vertices(tmp_path, value):
    path = _write(tmp_path / "nan.obj", f"v {value} 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(InvalidGeometryError, match=r"nan\.obj: 1 vertices .* NaN or infinite"):
        load_mesh(path)


def test_face_index_out_of_range_ply(tmp_path):
    ply = (
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n"
    )
    with pytest.raises(InvalidGeometryError, match=r"oor\.ply: face indices out of range.*3 vertices"):
        load_mesh(_write(tmp_path / "oor.ply", ply))


def test_face_index_out_of_range_obj(tmp_path):
    with pytest.raises(InvalidGeometryError, match=r"oor\.obj: face indices out of range"):
        load_mesh(_write(tmp_path / "oor.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n"))


def test_point_sized_object(tmp_path):
    path = _write(tmp_path / "dot.obj", "v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n")
    with pytest.raises(InvalidGeometryError, match=r"dot\.obj: degenerate bounding box.*one point"):
        load_mesh(path)


def test_zero_area_line(tmp_path):
    path = _write(tmp_path / "line.obj", "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    with pytest.raises(InvalidGeometryError, match=r"line\.obj: all 1 faces have zero area"):
        load_mesh(path)


def test_flat_card_is_a_mesh(tmp_path):
    mesh = load_mesh(_write(tmp_path / "card.obj", "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3\nf 1 3 4\n"))
    assert mesh.num_faces == 2
    assert mesh.parts[0].color_factor == NEUTRAL_GREY


def test_obj_missing_material_library(tmp_path):
    path = _write(tmp_path / "m.obj", "mtllib gone.mtl\n" + TRIANGLE_OBJ + "usemtl a\nf 1/1 2/2 3/3\n")
    with pytest.raises(TextureMissingError, match=r"m\.obj: material library 'gone\.mtl' not found"):
        load_mesh(path)


def test_obj_missing_texture(tmp_path):
    _write(tmp_path / "m.mtl", "newmtl a\nKd 1 1 1\nmap_Kd my texture.png\n")
    path = _write(tmp_path / "m.obj", "mtllib m.mtl\n" + TRIANGLE_OBJ + "usemtl a\nf 1/1 2/2 3/3\n")
    with pytest.raises(TextureMissingError, match=r"m\.obj: texture 'my texture\.png' referenced by m\.mtl not found"):
        load_mesh(path)


def test_obj_texture_not_an_image(tmp_path):
    _write(tmp_path / "tex.png", "this is not a png")
    _write(tmp_path / "m.mtl", "newmtl a\nmap_Kd tex.png\n")
    path = _write(tmp_path / "m.obj", "mtllib m.mtl\n" + TRIANGLE_OBJ + "usemtl a\nf 1/1 2/2 3/3\n")
    with pytest.raises(TextureMissingError, match=r"m\.obj: texture 'tex\.png' is not a readable image"):
        load_mesh(path)


def test_obj_texture_too_large(tmp_path):
    _png(tmp_path / "big.png", size=(200, 100))
    _write(tmp_path / "m.mtl", "newmtl a\nmap_Kd big.png\n")
    path = _write(tmp_path / "m.obj", "mtllib m.mtl\n" + TRIANGLE_OBJ + "usemtl a\nf 1/1 2/2 3/3\n")
    message = r"m\.obj: texture 'big\.png' is 200x100 = 20000 pixels, over the limit of 10000"
    with pytest.raises(TextureTooLargeError, match=message):
        load_mesh(path, max_texture_pixels=10_000)
    assert load_mesh(path, max_texture_pixels=20_000).parts[0].texture.shape == (100, 200, 4)


def test_glb_embedded_texture_too_large_and_pil_guard_restored(tmp_path):
    path = tmp_path / "big.glb"
    path.write_bytes(_textured_quad(np.zeros((64, 64, 4), np.uint8)).export(file_type="glb"))
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(TextureTooLargeError, match=r"big\.glb: texture image 0 .* over the limit of 1000"):
        load_mesh(path, max_texture_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == before


def test_pil_refuses_bombs_during_load(tmp_path):
    """Above twice the limit PIL raises while reading the header: reported as too large, not as unreadable."""
    _png(tmp_path / "bomb.png", size=(300, 300))
    _write(tmp_path / "m.mtl", "newmtl a\nmap_Kd bomb.png\n")
    path = _write(tmp_path / "m.obj", "mtllib m.mtl\n" + TRIANGLE_OBJ + "usemtl a\nf 1/1 2/2 3/3\n")
    with pytest.raises(TextureTooLargeError, match=r"m\.obj: texture 'bomb\.png' is over the limit of 1000 pixels"):
        load_mesh(path, max_texture_pixels=1000)


def test_gltf_missing_external_image(tmp_path):
    path = _gltf(tmp_path, images=[{"uri": "missing%20image.png"}])
    with pytest.raises(TextureMissingError, match=r"tri\.gltf: texture image 0 .* missing file 'missing image\.png'"):
        load_mesh(path)


def test_gltf_missing_external_buffer(tmp_path):
    path = _gltf(tmp_path, buffers=[{"byteLength": 42, "uri": "geometry.bin"}])
    with pytest.raises(MeshReadError, match=r"tri\.gltf: buffer 0 refers to missing file 'geometry\.bin'"):
        load_mesh(path)


def test_gltf_external_image_with_space_loads(tmp_path):
    _png(tmp_path / "my image.png")
    assert load_mesh(_gltf(tmp_path, images=[{"uri": "my%20image.png"}])).num_faces == 1


def test_skinned_and_animated_gltf_loads_rest_pose_with_warning(tmp_path):
    path = _gltf(tmp_path, skins=[{"joints": [0]}], animations=[{"channels": [], "samplers": []}])
    mesh = load_mesh(path)
    assert mesh.num_faces == 1
    assert len(mesh.warnings) == 1
    assert "1 skin(s) and 1 animation(s)" in mesh.warnings[0] and "rest pose" in mesh.warnings[0]


def test_every_refusal_is_a_mesh_error():
    for error in (UnsupportedFormatError, MeshReadError, NotAMeshError, InvalidGeometryError,
                  TextureMissingError, TextureTooLargeError):
        assert issubclass(error, MeshError)


# --- what loads and how -----------------------------------------------------------------------------------------


def test_texture_rows_and_uv_convention(tmp_path):
    texture = np.zeros((8, 8, 4), np.uint8)
    texture[:4] = (255, 0, 0, 255)  # top half red
    texture[4:] = (0, 0, 255, 255)
    path = tmp_path / "quad.glb"
    path.write_bytes(_textured_quad(texture).export(file_type="glb"))
    part = load_mesh(path).parts[0]
    assert part.texture.dtype == np.uint8 and part.texture.shape == (8, 8, 4)
    assert tuple(part.texture[0, 0]) == (255, 0, 0, 255)
    top = part.vertices[:, 1] > 0.5
    np.testing.assert_allclose(part.uv[top, 1], 1.0)  # OpenGL: v = 1 is the image's top row
    assert part.color_factor == (1.0, 1.0, 1.0, 1.0)


def test_multi_node_transforms_are_applied(tmp_path):
    scene = trimesh.Scene()
    box = trimesh.creation.box(extents=(1, 1, 1))
    shift = trimesh.transformations.translation_matrix((3, 0, 0))
    scene.add_geometry(box, geom_name="a", node_name="a", transform=shift)
    turn = trimesh.transformations.rotation_matrix(np.pi / 2, (0, 0, 1))
    turn[:3, 3] = (0, -2, 0)
    scene.add_geometry(trimesh.creation.box(extents=(2, 1, 1)), geom_name="b", node_name="b", transform=turn)
    path = tmp_path / "two.glb"
    path.write_bytes(scene.export(file_type="glb"))
    parts = {p.name: p for p in load_mesh(path).parts}
    assert sorted(parts) == ["a", "b"]
    np.testing.assert_allclose(parts["a"].vertices.min(0), (2.5, -0.5, -0.5), atol=1e-6)
    np.testing.assert_allclose(parts["b"].vertices.min(0), (-0.5, -3.0, -0.5), atol=1e-6)  # rotated: long side on Y
    np.testing.assert_allclose(parts["b"].vertices.max(0), (0.5, -1.0, 0.5), atol=1e-6)


def test_mirrored_node_keeps_outward_winding(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.icosphere(subdivisions=1), geom_name="s", node_name="s",
                       transform=np.diag([-1.0, 1.0, 1.0, 1.0]))
    path = tmp_path / "mirror.glb"
    path.write_bytes(scene.export(file_type="glb"))
    part = load_mesh(path).parts[0]
    v, f = part.vertices.astype(float), part.faces.astype(int)
    face_normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (np.einsum("ij,ij->i", face_normals, v[f].mean(1)) > 0).all()
    assert (np.einsum("ij,ij->i", part.normals[f].mean(1), v[f].mean(1)) > 0).all()


def test_file_normals_kept(tmp_path):
    mesh = trimesh.creation.box()
    odd = np.tile([[0.0, 0.6, 0.8]], (len(mesh.vertices), 1))  # unit, but not what trimesh would compute
    mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_normals=odd, process=False)
    path = tmp_path / "n.glb"
    path.write_bytes(mesh.export(file_type="glb"))
    np.testing.assert_allclose(load_mesh(path).parts[0].normals, odd, atol=1e-6)


def test_invalid_file_normals_recomputed_with_warning(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 0\nvn 0 0 0\nvn 0 0 0\nf 1//1 2//2 3//3\n"
    mesh = load_mesh(_write(tmp_path / "zero_n.obj", text))
    np.testing.assert_allclose(np.abs(mesh.parts[0].normals), [[0, 0, 1]] * 3, atol=1e-6)
    assert any("invalid normals" in w for w in mesh.warnings)


def test_missing_normals_computed(tmp_path):
    part = load_mesh(_write(tmp_path / "tri.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")).parts[0]
    np.testing.assert_allclose(part.normals, [[0, 0, 1]] * 3, atol=1e-6)


def test_vertex_colors_from_ply(tmp_path):
    ply = (
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 255 0 0\n1 0 0 0 255 0\n0 1 0 0 0 255\n3 0 1 2\n"
    )
    part = load_mesh(_write(tmp_path / "c.ply", ply)).parts[0]
    assert part.texture is None
    np.testing.assert_array_equal(part.vertex_colors, [[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]])


def test_material_color_without_texture(tmp_path):
    _write(tmp_path / "m.mtl", "newmtl a\nKd 0.2 0.4 0.6\n")
    path = _write(tmp_path / "m.obj", "mtllib m.mtl\n" + TRIANGLE_OBJ + "usemtl a\nf 1/1 2/2 3/3\n")
    part = load_mesh(path).parts[0]
    assert part.texture is None
    np.testing.assert_allclose(part.color_factor, (0.2, 0.4, 0.6, 1.0), atol=1 / 255)


# --- real fixtures ----------------------------------------------------------------------------------------------


def test_duck(shared_meshes):
    mesh = load_mesh(shared_meshes / "Duck.glb")
    assert mesh.num_faces == 4212 and len(mesh.parts) == 1 and mesh.warnings == []
    part = mesh.parts[0]
    assert part.texture.shape == (512, 512, 4) and part.texture.dtype == np.uint8
    assert part.uv.shape == (len(part.vertices), 2) and part.uv.dtype == np.float32
    assert part.vertices.dtype == np.float32 and part.faces.dtype == np.uint32
    np.testing.assert_allclose(np.linalg.norm(part.normals, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mesh.to_frame, np.eye(4))


def test_box_textured(shared_meshes):
    part = load_mesh(shared_meshes / "BoxTextured.glb").parts[0]
    assert len(part.faces) == 12 and part.texture is not None and part.uv is not None


def test_fuze_texture_name_with_space(shared_meshes):
    part = load_mesh(shared_meshes / "fuze.obj").parts[0]
    assert part.texture is not None and part.texture.shape == (1024, 1024, 4)
    assert part.uv.shape == (len(part.vertices), 2)


def test_texture_without_uv_is_ignored_with_warning(tmp_path):
    _png(tmp_path / "t.png")
    _write(tmp_path / "m.mtl", "newmtl a\nmap_Kd t.png\n")
    path = _write(tmp_path / "m.obj", "mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl a\nf 1 2 3\n")
    mesh = load_mesh(path)
    assert mesh.parts[0].texture is None
    assert any("no valid UVs" in w for w in mesh.warnings)
