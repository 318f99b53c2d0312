"""The GL renderer against the dataset conventions (spec dataset-format §2, §3.3, §3.4, §4.1, §8)."""

import logging
import math

import numpy as np
import pytest
import trimesh

from mvtune import cameras
from mvtune.cameras import View
from mvtune.meshes.mesh import Mesh, MeshPart
from mvtune.render import gl
from mvtune.render.gl import BACKGROUND_DEPTH, Renderer, RenderError

pytestmark = pytest.mark.gl

RES = 160
RADIUS = 0.45


def sphere_part(radius=RADIUS, center=(0.0, 0.0, 0.0), subdivisions=4, **colour) -> MeshPart:
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = s.vertices.astype(np.float32)
    n = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return MeshPart(v + np.asarray(center, np.float32), s.faces.astype(np.uint32), n, **colour)


def uv_for(part: MeshPart) -> np.ndarray:
    d = part.normals
    return np.stack([np.arctan2(d[:, 1], d[:, 0]) / (2 * np.pi) + 0.5, np.arccos(np.clip(d[:, 2], -1, 1)) / np.pi], 1)


def flat_texture(rgb, size=16) -> np.ndarray:
    tex = np.empty((size, size, 4), np.uint8)
    tex[...] = (*rgb, 255)
    return tex


@pytest.fixture(scope="module")
def studio(ctx):
    return Renderer(RES, lighting="studio", ctx=ctx)


@pytest.fixture(scope="module")
def albedo(ctx):
    return Renderer(RES, lighting="albedo", ctx=ctx)


@pytest.fixture(scope="module")
def sphere_mesh():
    part = sphere_part(subdivisions=5)
    part.uv = uv_for(part).astype(np.float32)
    part.texture = flat_texture((180, 180, 180))
    return Mesh([part])


@pytest.fixture(scope="module")
def sphere_renders(studio, sphere_mesh):
    return studio.render(sphere_mesh, cameras.ortho10(), position=True)


def distance_to_surface(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, k: int = 16) -> np.ndarray:
    """Exact point-to-mesh distance without rtree: nearest-centroid candidates first, brute force where unsure."""
    from scipy.spatial import cKDTree
    from trimesh.triangles import closest_point

    triangles = vertices[faces].astype(np.float64)
    _, candidates = cKDTree(triangles.mean(axis=1)).query(points, k=k)
    repeated = np.repeat(points, k, axis=0)
    closest = closest_point(triangles[candidates.ravel()], repeated)
    distance = np.linalg.norm(closest - repeated, axis=1).reshape(-1, k).min(axis=1)
    for i in np.flatnonzero(distance > 1e-6):
        everywhere = closest_point(triangles, np.repeat(points[i : i + 1], len(triangles), axis=0))
        distance[i] = np.linalg.norm(everywhere - points[i], axis=1).min()
    return distance


def backproject(depth: np.ndarray, view: View, centre_offset: float = 0.5) -> np.ndarray:
    """Spec §3.3's orthographic back-projection; centre_offset 0.5 = true pixel centres, 0 = the loader's grid."""
    h, w = depth.shape
    s = view.ortho_scale
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    xc = (u + centre_offset - w / 2) * s / w
    yc = (v + centre_offset - h / 2) * s / h
    c2w_cv = view.c2w.copy()
    c2w_cv[:3, 1:3] *= -1.0
    cam = np.stack([xc, yc, depth.astype(np.float64), np.ones_like(xc)], axis=-1)
    return (cam @ c2w_cv.T)[..., :3]


def test_depth_back_projects_onto_the_sphere(sphere_renders, sphere_mesh):
    pixel = 1.1 / RES
    part = sphere_mesh.parts[0]
    rng = np.random.default_rng(0)
    for view, images in zip(cameras.ortho10(), sphere_renders):
        m = images.mask
        assert m.any()
        points = backproject(images.depth, view)
        radial = np.abs(np.linalg.norm(points[m], axis=1) - RADIUS)
        assert radial.max() < 0.05 * pixel, view.index  # icosphere facets deviate ~1e-4 from the sphere
        assert np.allclose(images.position[m], points[m], atol=1e-4)
        sample = points[m][rng.choice(int(m.sum()), 200, replace=False)]
        assert distance_to_surface(part.vertices, part.faces, sample).max() < 1e-5
        # The reference loader's integer grid (no +0.5) is off by exactly half a pixel in x and y.
        shift = np.linalg.norm(backproject(images.depth, view, 0.0)[m] - points[m], axis=1)
        assert np.allclose(shift, math.hypot(0.5 * pixel, 0.5 * pixel), atol=1e-6)


def test_mask_is_pixel_centre_coverage(sphere_renders):
    h = w = RES
    v, u = np.mgrid[0:h, 0:w]
    r = np.hypot((u + 0.5 - w / 2) * 1.1 / w, (v + 0.5 - h / 2) * 1.1 / h)
    images = sphere_renders[0]
    certain = np.abs(r - RADIUS) > 0.01  # the icosphere's silhouette is a polygon
    assert np.array_equal(images.mask[certain], (r < RADIUS)[certain])


def test_backgrounds_and_alpha(sphere_renders):
    for images in sphere_renders:
        m = images.mask
        assert set(np.unique(images.normal[..., 3])) == {0, 255}
        assert np.array_equal(images.normal[..., 3] == 255, m)
        assert np.all(images.normal[~m] == 0)
        assert np.all(images.depth[~m] == BACKGROUND_DEPTH) and images.depth.dtype == np.float32
        assert np.all(images.position[~m] == 0.0)
        alpha = images.color[..., 3]
        assert np.all(alpha[m] > 0)
        assert np.any((alpha > 0) & (alpha < 255)), "colour silhouette is not anti-aliased"
        assert np.all(images.color[alpha == 0] == 0)


def test_world_space_normals_in_front_and_top_views(ctx):
    box = trimesh.creation.box(extents=(0.8, 0.6, 0.7))
    # Split vertices per face so normals are the face normals (a flat-shaded box).
    v = box.vertices[box.faces].reshape(-1, 3).astype(np.float32)
    n = np.repeat(box.face_normals, 3, axis=0).astype(np.float32)
    f = np.arange(len(v), dtype=np.uint32).reshape(-1, 3)
    renders = Renderer(RES, ctx=ctx).render(Mesh([MeshPart(v, f, n)]), cameras.ortho10())
    c = RES // 2
    front, top = renders[0].normal[c, c], renders[8].normal[c, c]
    assert tuple(front) == (127, 0, 127, 255)  # n = (0, -1, 0): G = 0 in the front view
    assert tuple(top) == (127, 127, 255, 255)  # n = (0, 0, 1): blue from the top


def test_image_orientation_matches_the_reference_table(sphere_renders):
    """Front view: +Z at the image top, +X on the right; top view: object front (-Y) at the top, +X on the left."""
    c = RES // 2
    front, top = sphere_renders[0].position, sphere_renders[8].position
    assert front[RES // 4, c, 2] > 0.2 and front[3 * RES // 4, c, 2] < -0.2
    assert front[c, 3 * RES // 4, 0] > 0.2 and front[c, RES // 4, 0] < -0.2
    assert top[RES // 4, c, 1] < -0.2 and top[3 * RES // 4, c, 1] > 0.2
    assert top[c, 3 * RES // 4, 0] < -0.2 and top[c, RES // 4, 0] > 0.2
    bottom = sphere_renders[9].position
    assert bottom[RES // 4, c, 1] > 0.2 and bottom[c, 3 * RES // 4, 0] < -0.2


# spec §4.1: (user azimuth, elevation) -> image right, image up in world axes
AXES = [
    ((0, 0), (1, 0, 0), (0, 0, 1)),
    ((90, 0), (0, 1, 0), (0, 0, 1)),
    ((180, 0), (-1, 0, 0), (0, 0, 1)),
    ((270, 0), (0, -1, 0), (0, 0, 1)),
    ((180, 89.99), (-1, 0, 0), (0, -1, 0)),
    ((180, -89.99), (-1, 0, 0), (0, 1, 0)),
]


@pytest.mark.parametrize("pose,right,up", AXES)
def test_image_axes_follow_the_reference_table(studio, sphere_mesh, pose, right, up):
    """Column u sits at (u + 0.5 - W/2) s/W along image-right, row v at (H/2 - v - 0.5) s/H along image-up."""
    view = View("x", *pose)
    assert np.allclose(view.c2w[:3, 0], right, atol=1e-3) and np.allclose(view.c2w[:3, 1], up, atol=1e-3)
    images = studio.render(sphere_mesh, [view], position=True)[0]
    v, u = np.nonzero(images.mask)
    p = images.position[v, u]
    s = view.ortho_scale
    assert np.allclose(p @ np.array(right, float), (u + 0.5 - RES / 2) * s / RES, atol=1e-3)
    assert np.allclose(p @ np.array(up, float), (RES / 2 - v - 0.5) * s / RES, atol=1e-3)


def test_perspective_depth_is_planar(studio):
    view = View("0000", 30.0, 20.0, projection="PERSP", distance=3.0)
    images = studio.render(Mesh([sphere_part(subdivisions=5)]), [view], position=True)[0]
    m = images.mask
    h, w = m.shape
    v, u = np.mgrid[0:h, 0:w]
    t = math.tan(view.fov_x / 2)
    z = images.depth.astype(np.float64)
    cam = np.stack([(u + 0.5 - w / 2) / (w / 2) * t * z, -(v + 0.5 - h / 2) / (h / 2) * t * z, -z], -1)
    points = cam @ view.c2w[:3, :3].T + view.c2w[:3, 3]
    assert np.abs(np.linalg.norm(points[m], axis=1) - RADIUS).max() < 1e-3
    assert np.allclose(images.position[m], points[m], atol=1e-4)


def test_albedo_mode_returns_base_colours_of_each_part(albedo):
    textured = sphere_part(0.2, (-0.25, 0.0, 0.0), texture=flat_texture((200, 120, 30)))
    textured.uv = uv_for(textured).astype(np.float32)
    coloured = sphere_part(0.2, (0.25, 0.0, 0.0))
    coloured.vertex_colors = np.tile(np.array([[20, 90, 240, 255]], np.uint8), (len(coloured.vertices), 1))
    flat = sphere_part(0.15, (0.0, 0.0, 0.3), color_factor=(0.5, 0.25, 1.0, 1.0))
    images = albedo.render(Mesh([textured, coloured, flat]), [cameras.ortho10()[0]])[0]
    c = RES // 2
    dx = int(round(0.25 / 1.1 * RES))
    dz = int(round(0.3 / 1.1 * RES))

    def patch(row, col):
        return images.color[row - 3 : row + 4, col - 3 : col + 4].reshape(-1, 4).astype(int)

    assert np.abs(patch(c, c - dx) - [200, 120, 30, 255]).max() <= 1
    assert np.abs(patch(c, c + dx) - [20, 90, 240, 255]).max() <= 1
    # the factor is linear (glTF): 0.5 -> 188, 0.25 -> 137 in sRGB
    assert np.abs(patch(c - dz, c) - [188, 137, 255, 255]).max() <= 1


def test_studio_lighting_is_soft_and_keeps_albedo(sphere_renders):
    # grey 180 albedo; the key light comes from the front-top-left
    images = sphere_renders[0]
    lum = images.color[..., :3].astype(float).mean(-1)
    inside = images.mask & (images.color[..., 3] == 255)
    normals = images.normal[..., :3].astype(float) / 127.5 - 1.0
    key = np.array([-0.45, -0.75, 0.55]) / np.linalg.norm([-0.45, -0.75, 0.55])
    facing = normals @ key
    assert lum[inside & (facing > 0.9)].mean() > lum[inside & (facing < 0.0)].mean() + 25
    assert lum[inside].min() > 0.45 * 180  # no crushed blacks
    assert lum[inside].max() <= 181


def test_white_sphere_brightness(ctx):
    renderer = Renderer(RES, ctx=ctx)
    part = sphere_part(color_factor=(1.0, 1.0, 1.0, 1.0))
    means = []
    for images in renderer.render(Mesh([part]), cameras.ortho10()):
        inside = images.mask & (images.color[..., 3] == 255)
        means.append(images.color[inside, :3].mean() / 255.0)
    assert 0.8 <= np.mean(means) <= 0.95
    assert means[0] == max(means[:8])  # the front view faces the key light


def test_context_errors_name_the_packages(monkeypatch):
    def fail(*args, **kwargs):
        raise Exception("no EGL")

    monkeypatch.setattr(gl.moderngl, "create_standalone_context", fail)
    with pytest.raises(RenderError, match="libegl1 libgl1-mesa-dri libgl1"):
        gl.create_context()


def test_warns_when_a_gpu_machine_renders_on_llvmpipe(monkeypatch, caplog):
    monkeypatch.setattr(gl, "_has_nvidia_gpu", lambda: True)
    with caplog.at_level(logging.INFO, logger="mvtune.render.gl"):
        ctx = gl.create_context()
    renderer = ctx.info["GL_RENDERER"].lower()
    ctx.release()
    assert "OpenGL renderer" in caplog.text
    if "llvmpipe" in renderer or "softpipe" in renderer:
        assert "NVIDIA_DRIVER_CAPABILITIES=graphics" in caplog.text


@pytest.mark.parametrize("name", ["Duck.glb", "objaverse_ac9d4e4f.glb"])
def test_real_mesh_depth_lies_on_its_surface(shared_meshes, studio, name):
    from mvtune.meshes import load_mesh, normalize_mesh

    mesh = normalize_mesh(load_mesh(shared_meshes / name))
    views = cameras.ortho10()
    renders = studio.render(mesh, views)
    vertices, faces = [], []
    offset = 0
    for part in mesh.parts:
        vertices.append(part.vertices)
        faces.append(part.faces.astype(np.int64) + offset)
        offset += len(part.vertices)
    vertices, faces = np.concatenate(vertices), np.concatenate(faces)
    pixel = 1.1 / RES
    rng = np.random.default_rng(0)
    for view, images in zip(views, renders):
        m = images.mask
        assert m.sum() > 100, view.index
        points = backproject(images.depth, view)[m]
        assert np.abs(points).max() < 0.5 + 1e-4, view.index  # every pixel inside the normalised unit cube
        sample = points[rng.choice(len(points), min(200, len(points)), replace=False)]
        assert distance_to_surface(vertices, faces, sample).max() < 0.01 * pixel, view.index


def test_rendering_is_deterministic(studio, sphere_mesh, sphere_renders):
    again = studio.render(sphere_mesh, [cameras.ortho10()[4]], position=True)[0]
    first = sphere_renders[4]
    for name in ("color", "depth", "normal", "mask", "position"):
        assert np.array_equal(getattr(again, name), getattr(first, name)), name


def test_untextured_part_renders_neutral_grey(tmp_path):
    from mvtune.meshes import load_mesh, normalize_mesh

    path = tmp_path / "plain.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    mesh = normalize_mesh(load_mesh(path))
    image = Renderer(64, lighting="albedo").render(mesh, cameras.ortho10()[:1])[0]
    rgb = image.color[..., :3][image.color[..., 3] == 255]
    assert rgb.size and np.all(np.abs(rgb.astype(int) - 128) <= 1)
