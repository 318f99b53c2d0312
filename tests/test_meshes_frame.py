"""The canonical frame: Z up, glTF front (+Z) on world -Y, bounding box centred, longest side 1."""

import numpy as np
import pytest

from mvtune.meshes import Mesh, MeshError, MeshPart, canonical_transform, load_mesh, normalize_mesh


def _apply(matrix, points):
    return np.asarray(points, float) @ matrix[:3, :3].T + matrix[:3, 3]


def _mesh(vertices, normals=None) -> Mesh:
    vertices = np.asarray(vertices, np.float32)
    faces = np.array([[0, 1, 2]] * (len(vertices) // 3) or [[0, 1, 2]], np.uint32)
    if normals is None:
        normals = np.tile([[0.0, 0.0, 1.0]], (len(vertices), 1))
    return Mesh(parts=[MeshPart(vertices, faces, np.asarray(normals, np.float32))], source="test")


# A glTF-style box: 4 wide (X), 2 tall (Y), 1 deep (Z), off-centre. Front is +Z, up is +Y.
BOX = np.array([[1.0, 3.0, -1.0], [5.0, 5.0, 0.0], [1.0, 5.0, 0.0]])


def test_canonical_transform_gltf_axes():
    m = canonical_transform(np.array([BOX.min(0), BOX.max(0)]), up="y")
    centre = BOX.min(0) + (BOX.max(0) - BOX.min(0)) / 2
    np.testing.assert_allclose(_apply(m, centre), 0, atol=1e-12)
    front, top = centre + (0, 0, 0.5), centre + (0, 1, 0)  # glTF front face centre, top face centre
    np.testing.assert_allclose(_apply(m, front), (0, -0.125, 0), atol=1e-12)  # front -> world -Y
    np.testing.assert_allclose(_apply(m, top), (0, 0, 0.25), atol=1e-12)  # up -> world +Z
    np.testing.assert_allclose(np.linalg.det(m[:3, :3]), 0.25**3)  # a rotation times scale 1/4, no mirror


def test_canonical_transform_z_up_keeps_axes():
    m = canonical_transform(np.array([[0, 0, 0], [2, 1, 1]]), up="z")
    np.testing.assert_allclose(m[:3, :3], np.eye(3) / 2)
    np.testing.assert_allclose(m[:3, 3], (-0.5, -0.25, -0.25))


def test_canonical_transform_rejects_bad_input():
    with pytest.raises(ValueError, match="up must be one of"):
        canonical_transform(np.array([[0, 0, 0], [1, 1, 1]]), up="x")
    with pytest.raises(MeshError, match="longest side"):
        canonical_transform(np.array([[1, 1, 1], [1, 1, 1]]))


def test_normalize_mesh_frame_and_inverse():
    mesh = _mesh(BOX, normals=[[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    before = mesh.parts[0].vertices.copy()
    out = normalize_mesh(mesh)
    np.testing.assert_array_equal(mesh.parts[0].vertices, before)  # input untouched
    np.testing.assert_array_equal(mesh.to_frame, np.eye(4))
    low, high = out.bounds
    np.testing.assert_allclose(low + high, 0, atol=1e-6)
    assert float((high - low).max()) == pytest.approx(1.0)
    # The glTF front normal (+Z) faces world -Y, glTF up (+Y) becomes +Z; +X stays +X.
    np.testing.assert_allclose(out.parts[0].normals, [[0, -1, 0], [0, 0, 1], [1, 0, 0]], atol=1e-7)
    recovered = _apply(np.linalg.inv(out.to_frame), out.vertices)
    np.testing.assert_allclose(recovered, before, atol=1e-5)


def test_normalize_twice_with_z_is_identity_and_composes():
    once = normalize_mesh(_mesh(BOX))
    twice = normalize_mesh(once, up="z")
    np.testing.assert_allclose(twice.vertices, once.vertices, atol=1e-6)
    np.testing.assert_allclose(twice.to_frame, once.to_frame, atol=1e-6)


def test_normalize_keeps_colours_and_warnings():
    mesh = _mesh(BOX)
    mesh.parts[0].uv = np.zeros((3, 2), np.float32)
    mesh.warnings.append("note")
    out = normalize_mesh(mesh)
    assert out.parts[0].uv is not mesh.parts[0].uv and out.parts[0].uv.shape == (3, 2)
    assert out.warnings == ["note"] and out.source == "test"


def test_objaverse_truck_is_already_canonical(shared_meshes):
    """MV-Adapter's demo mesh is pre-normalised: ours only rotates it into the Z-up world."""
    mesh = load_mesh(shared_meshes / "objaverse_ac9d4e4f.glb")
    low, high = mesh.bounds
    assert float(np.abs(mesh.vertices).max()) == pytest.approx(0.5, abs=1e-4)
    np.testing.assert_allclose(low + high, 0, atol=1e-4)
    out = normalize_mesh(mesh)
    low, high = out.bounds
    assert float((high - low).max()) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(low + high, 0, atol=1e-6)
    # Same box up to the axis swap: glTF depth (Z, truck length) is world Y, glTF height (Y) is world Z.
    x, y, z = mesh.vertices.T
    np.testing.assert_allclose(out.vertices, np.stack([x, -z, y], 1), atol=1e-4)

