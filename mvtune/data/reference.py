"""The reference loading procedure, written from the spec as a plain baseline for equivalence tests and benchmarks.

It follows what MV-Adapter's ``MultiviewDataset`` does per sample (spec dataset-format §2, §3, §7), one call at
a time and without shortcuts: views are taken by file index (``image_names``), every file is decoded at full
size, colour is resized with PIL's default (bicubic, premultiplied for RGBA), depth is read with OpenCV (channel
0 of BGR order) and resized with INTER_NEAREST, normals with PIL NEAREST, and positions are back-projected on the
integer pixel grid with no half-pixel offset. Our loader (``mvtune.data.loader``) must agree with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

# OpenCV refuses EXR unless this is set before cv2 is imported (spec §2.2 a).
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")

#: Depth values above this are background (multiview.py:259-261).
DEPTH_BACKGROUND = 1000.0
BACKGROUNDS = {"gray": 0.5, "white": 1.0, "black": 0.0}


def load_meta(scene: Path) -> dict:
    return json.loads((Path(scene) / "meta.json").read_text(encoding="utf-8"))


def ortho_scale(meta: dict) -> float:
    """Top-level override, else the first location's value for all views (spec §2.4 fallbacks)."""
    return float(meta["ortho_scale"] if "ortho_scale" in meta else meta["locations"][0]["ortho_scale"])


def load_rgb(path: Path, height: int, width: int, background: float) -> np.ndarray:
    """(3, H, W) float32: PIL default resize (bicubic), /255, composited rgb*a + bg*(1-a)."""
    from PIL import Image

    with Image.open(path) as im:
        rgba = np.asarray(im.resize((width, height)), dtype=np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    return np.transpose(rgb * alpha + background * (1.0 - alpha), (2, 0, 1))


def load_depth(path: Path, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(depth, mask), each (H, W) float32: cv2 read, INTER_NEAREST resize, channel 0, background > 1000 -> 0."""
    import cv2

    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None:
        raise OSError(f"OpenCV cannot read {path}")
    depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)[..., 0]
    mask = (depth <= DEPTH_BACKGROUND).astype(np.float32)
    # Set, not multiplied: an inf background (65535 stored as half) times 0 would be NaN (spec §2.2 d).
    return np.where(mask > 0, depth, 0.0).astype(np.float32), mask


def back_project(depth: np.ndarray, mask: np.ndarray, c2w_blender: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) world points on the integer pixel grid (geometry.py:63-111), zero where the mask is 0."""
    height, width = depth.shape
    c2w = np.asarray(c2w_blender, dtype=np.float32).copy()
    c2w[:3, 1:3] *= -1.0  # Blender -> OpenCV camera (multiview.py:341-342)
    v, u = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    x = (u - width / 2) * scale / width
    y = (v - height / 2) * scale / height
    points = np.stack([x, y, depth, np.ones_like(depth)], axis=-1)
    world = points @ c2w.T
    return world[..., :3] * mask[..., None]


def load_normal(path: Path, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """((3, H, W) float32 composited over 0.5, (H, W) alpha): PIL NEAREST resize, /255."""
    from PIL import Image

    with Image.open(path) as im:
        rgba = np.asarray(im.resize((width, height), Image.NEAREST), dtype=np.float32) / 255.0
    normal, alpha = rgba[..., :3], rgba[..., 3:4]
    return np.transpose(normal * alpha + 0.5 * (1.0 - alpha), (2, 0, 1)), alpha[..., 0]


def plucker_ortho(c2w_blender: np.ndarray) -> np.ndarray:
    """The per-view constant 6-vector [look direction, normalised camera position], encoded (x+1)/2 (spec §3.7)."""
    c2w = np.asarray(c2w_blender, dtype=np.float32)
    look = -c2w[:3, 2] / np.linalg.norm(c2w[:3, 2])
    position = c2w[:3, 3] / np.linalg.norm(c2w[:3, 3])
    return np.clip((np.concatenate([look, position]) + 1.0) / 2.0, 0.0, 1.0)


def reference_sample(
    scene: Path,
    image_names: list[str],
    height: int = 768,
    width: int = 768,
    background: str = "gray",
    geometry: bool = True,
) -> dict[str, np.ndarray]:
    """One sample the reference way: ``rgb`` (V,3,H,W), ``source_rgb`` (V,6,H,W), ``c2w`` (V,4,4) and the masks.

    ``geometry=True`` builds position+normal maps (tg2mv), otherwise Plücker maps (t2mv).
    """
    scene = Path(scene)
    meta = load_meta(scene)
    by_index = {loc["index"]: loc for loc in meta["locations"]}
    scale = ortho_scale(meta)
    bg = BACKGROUNDS[background]
    rgbs, sources, c2ws, position_masks, normal_masks = [], [], [], [], []
    for name in image_names:
        c2w = np.asarray(by_index[name]["transform_matrix"], dtype=np.float32)
        rgbs.append(load_rgb(scene / f"color_{name}.webp", height, width, bg))
        c2ws.append(c2w)
        if geometry:
            depth, mask = load_depth(scene / f"depth_{name}.exr", height, width)
            position = np.clip(back_project(depth, mask, c2w, scale) + 0.5, 0.0, 1.0)
            normal, alpha = load_normal(scene / f"normal_{name}.webp", height, width)
            sources.append(np.concatenate([np.transpose(position, (2, 0, 1)), normal], axis=0))
            position_masks.append(mask)
            normal_masks.append(alpha)
        else:
            plucker = plucker_ortho(c2w)
            sources.append(np.broadcast_to(plucker[:, None, None], (6, height, width)).copy())
    sample = {"rgb": np.stack(rgbs), "source_rgb": np.stack(sources), "c2w": np.stack(c2ws)}
    if geometry:
        sample["position_mask"] = np.stack(position_masks)
        sample["normal_mask"] = np.stack(normal_masks)
    return sample
