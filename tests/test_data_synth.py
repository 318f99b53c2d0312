"""A small analytic dataset writer for the data tests and the loader benchmark, in the exact on-disk format.

Objects are a few coloured spheres, ray-cast orthographically from the Ortho10View cameras of
``mvtune.cameras``: colour is 2x2 supersampled (soft alpha at silhouettes, like a real render), depth is the
planar distance along the view axis with background 65535, normals are world-space. ``mirror=True`` writes the
object reflected through the world X axis, which the mirroring augmentation must reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import OpenEXR
from PIL import Image

from mvtune import cameras

BACKGROUND_DEPTH = 65535.0

# (centre, radius, RGB): deliberately asymmetric in X so mirroring is visible.
SPHERES = [
    ((0.0, 0.0, 0.0), 0.3, (200, 60, 40)),
    ((0.25, -0.15, 0.1), 0.15, (40, 180, 60)),
    ((-0.1, 0.2, 0.3), 0.12, (50, 70, 220)),
]


def object_spheres(seed: int, mirror: bool = False):
    rng = np.random.default_rng(seed)
    out = []
    for centre, radius, colour in SPHERES:
        c = np.array(centre) + (rng.uniform(-0.05, 0.05, 3) if seed else 0.0)
        if mirror:
            c = c * np.array([-1.0, 1.0, 1.0])
        out.append((c, radius, np.array(colour, dtype=np.float64)))
    return out


def _cast(view: cameras.View, spheres, res: int, sub: int):
    """Per (sub-)pixel centre: depth (inf if missed), world normal, colour."""
    c2w = view.c2w
    right, up, back, origin = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3]
    n = res * sub
    coords = (np.arange(n) + 0.5) / n * view.ortho_scale - view.ortho_scale / 2
    x = coords[None, :]
    y = -coords[:, None]  # row 0 is the top of the image
    ray_o = origin + x[..., None] * right + y[..., None] * up
    ray_d = -back
    depth = np.full((n, n), np.inf)
    normal = np.zeros((n, n, 3))
    colour = np.zeros((n, n, 3))
    for centre, radius, rgb in spheres:
        oc = ray_o - centre
        b = oc @ ray_d
        disc = b * b - (np.sum(oc * oc, axis=-1) - radius * radius)
        hit = disc >= 0
        t = np.where(hit, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
        closer = t < depth
        depth = np.where(closer, t, depth)
        p = ray_o + t[..., None] * ray_d
        nrm = (p - centre) / radius
        normal = np.where(closer[..., None], nrm, normal)
        # light symmetric in X, so the mirrored object's render is the exact mirror image
        shade = 0.55 + 0.45 * np.clip(nrm @ np.array([0.0, -0.5, 0.8]), 0, 1)
        colour = np.where(closer[..., None], rgb * shade[..., None], colour)
    return depth, normal, colour


def render_view(view: cameras.View, spheres, res: int):
    with np.errstate(invalid="ignore"):
        depth, normal, _ = _cast(view, spheres, res, 1)
        depth_ss, _, colour_ss = _cast(view, spheres, res, 2)
    cover = np.isfinite(depth_ss).reshape(res, 2, res, 2).mean(axis=(1, 3))
    summed = (colour_ss * np.isfinite(depth_ss)[..., None]).reshape(res, 2, res, 2, 3).sum(axis=(1, 3))
    rgb = np.where(cover[..., None] > 0, summed / np.maximum(cover * 4, 1e-9)[..., None], 0)
    color = np.dstack([np.clip(rgb, 0, 255), cover * 255]).round().astype(np.uint8)
    alpha = color[..., 3] > 0
    hit = np.isfinite(depth)
    depth = np.where(hit, depth, BACKGROUND_DEPTH).astype(np.float32)
    n_enc = np.floor(255 * (0.5 * normal + 0.5)).clip(0, 255).astype(np.uint8)
    normal_img = np.dstack([np.where(alpha[..., None], n_enc, 0), np.where(alpha, 255, 0)]).astype(np.uint8)
    return color, depth, normal_img


def write_depth_exr(path: Path, depth: np.ndarray) -> None:
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    channels = {c: depth for c in ("R", "G", "B")}
    with OpenEXR.File(header, channels) as f:
        f.write(str(path))


def write_object(directory: Path, res: int, seed: int = 0, mirror: bool = False, views=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    spheres = object_spheres(seed, mirror)
    views = views or cameras.ortho10()
    locations = []
    for view in views:
        color, depth, normal = render_view(view, spheres, res)
        # lossless at low effort: same pixels as quality 100, much faster to write
        Image.fromarray(color, "RGBA").save(directory / f"color_{view.index}.webp", lossless=True, quality=0)
        Image.fromarray(normal, "RGBA").save(directory / f"normal_{view.index}.webp", lossless=True, quality=0)
        write_depth_exr(directory / f"depth_{view.index}.exr", depth)
        locations.append(
            {
                "index": view.index,
                "projection_type": view.projection,
                "ortho_scale": view.ortho_scale,
                "camera_angle_x": view.fov_x,
                "elevation": np.radians(view.elevation),
                "azimuth": view.world_azimuth,
                "transform_matrix": view.c2w.tolist(),
            }
        )
    (directory / "meta.json").write_text(json.dumps({"width": res, "height": res, "locations": locations}))


def write_dataset(root: Path, ids: list[str], res: int = 64, groups: dict | None = None, concepts: dict | None = None,
                  views=None) -> Path:
    """Objects plus scene_list.json, captions.json and a manifest like the renderer's."""
    root.mkdir(parents=True, exist_ok=True)
    records = {}
    for seed, object_id in enumerate(ids):
        write_object(root / object_id[:2] / object_id, res, seed=seed, views=views)
        group = (groups or {}).get(object_id, f"sha-{object_id}")
        records[object_id] = {"id": object_id, "source_sha256": f"sha-{object_id}", "group": group,
                              "concept": (concepts or {}).get(object_id), "parent": None}
    (root / "scene_list.json").write_text(json.dumps(ids))
    (root / "captions.json").write_text(json.dumps({i: f"a red toy {i}" for i in ids}))
    (root / "manifest.json").write_text(json.dumps({"mvtune_version": "test", "objects": records}))
    return root


def test_synthetic_dataset_passes_validation(tmp_path):
    from mvtune.data.validate import validate_dataset

    root = write_dataset(tmp_path / "ds", ["obj_a", "obj_b"], res=32)
    report = validate_dataset(root, variant="tg2mv")
    assert report.ok, [f.message for f in report.errors]
