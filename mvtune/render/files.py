"""Per-view files in the MV-Adapter dataset format (spec dataset-format §2, §8) and meta.json.

- colour_NNNN.webp: lossless RGBA WebP, straight alpha;
- normal_NNNN.webp: lossless RGBA WebP written with exact=True, so RGB under alpha 0 stays as rendered;
- depth_NNNN.exr: float32 R, G, B all equal to depth (OpenCV's reader takes channel 0; one channel would break
  the reference loader, spec §2.2), ZIP compression;
- meta.json: exactly BPY's schema (spec §2.4).

Every write goes through mvtune.storage.atomic_write, so a killed job never leaves a half-written file under
the final name. The same input always gives the same bytes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from mvtune.cameras import View
from mvtune.storage import atomic_write

#: Lossless WebP settings chosen by measurement (benchmarks/RESULTS.md, "Render (issue 2)"). Lossless
#: "quality" is encoder effort. At 1024², method 0 quality 75 encodes 3-5x faster than method >= 1 and ~1.6x
#: faster than method 0 quality 100, for files ~10% larger than q100; the depth EXR outweighs both WebPs anyway.
WEBP_LOSSLESS = {"lossless": True, "quality": 75, "method": 0}
#: ZIP (zlib, 16 scanlines per block): small and deterministic; see RESULTS.md for the alternatives measured.
EXR_COMPRESSION = "ZIP_COMPRESSION"


def _check_rgba(rgba: np.ndarray, what: str) -> np.ndarray:
    rgba = np.asarray(rgba)
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"{what}: expected (H, W, 4) uint8 RGBA, got {rgba.shape} {rgba.dtype}")
    return np.ascontiguousarray(rgba)


def write_color_webp(path: str | Path, rgba: np.ndarray) -> Path:
    """Colour render as lossless RGBA WebP."""
    image = Image.fromarray(_check_rgba(rgba, str(path)), "RGBA")
    return atomic_write(path, lambda tmp: image.save(tmp, format="WEBP", **WEBP_LOSSLESS))


def write_normal_webp(path: str | Path, rgba: np.ndarray) -> Path:
    """Normal map as lossless RGBA WebP, every value exact (also RGB under alpha 0)."""
    image = Image.fromarray(_check_rgba(rgba, str(path)), "RGBA")
    return atomic_write(path, lambda tmp: image.save(tmp, format="WEBP", exact=True, **WEBP_LOSSLESS))


def read_webp_rgba(path: str | Path) -> np.ndarray:
    """(H, W, 4) uint8 RGBA of a WebP (or any image Pillow reads)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA")).copy()


def _write_exr_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    import OpenEXR

    header = {"compression": getattr(OpenEXR, EXR_COMPRESSION), "type": OpenEXR.scanlineimage}
    channels = {"RGB": np.ascontiguousarray(rgb, dtype=np.float32)}
    return atomic_write(path, lambda tmp: OpenEXR.File(header, channels).write(tmp))


def write_depth_exr(path: str | Path, depth: np.ndarray) -> Path:
    """Depth (H, W) as float32 EXR with R = G = B = depth."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"{path}: expected (H, W) depth, got shape {depth.shape}")
    return _write_exr_rgb(path, np.repeat(depth[..., None], 3, axis=2))


def write_position_exr(path: str | Path, position: np.ndarray) -> Path:
    """World position (H, W, 3) as float32 EXR, R, G, B = world X, Y, Z."""
    position = np.asarray(position, dtype=np.float32)
    if position.ndim != 3 or position.shape[2] != 3:
        raise ValueError(f"{path}: expected (H, W, 3) positions, got shape {position.shape}")
    return _write_exr_rgb(path, position)


def read_depth_exr(path: str | Path) -> np.ndarray:
    """(H, W) float32 depth from the R channel of an RGB(A) EXR (or its only channel)."""
    import OpenEXR

    with OpenEXR.File(str(path)) as f:
        channels = f.channels()
        for name in ("RGB", "RGBA"):
            if name in channels:
                return np.array(channels[name].pixels[..., 0], dtype=np.float32)
        name = "R" if "R" in channels else next(iter(channels))
        return np.array(channels[name].pixels, dtype=np.float32)


def build_meta(views: Sequence[View], resolution: int) -> dict:
    """meta.json content with BPY's schema (spec §2.4); locations in render order."""
    return {
        "width": int(resolution),
        "height": int(resolution),
        "locations": [
            {
                "index": view.index,
                "projection_type": view.projection,
                "ortho_scale": float(view.ortho_scale),
                "camera_angle_x": float(view.fov_x),
                "elevation": float(np.radians(view.elevation)),
                "azimuth": float(view.world_azimuth),
                "transform_matrix": np.asarray(view.c2w, dtype=np.float64).tolist(),
            }
            for view in views
        ],
    }


def write_view_files(out_dir: str | Path, index: str, images, position: bool = False) -> dict[str, float]:
    """color_/normal_/depth_ (and position_ if asked) files of one view; returns seconds spent per file kind."""
    out_dir = Path(out_dir)
    timings = {}
    start = time.perf_counter()
    write_color_webp(out_dir / f"color_{index}.webp", images.color)
    timings["webp_color"] = time.perf_counter() - start
    start = time.perf_counter()
    write_normal_webp(out_dir / f"normal_{index}.webp", images.normal)
    timings["webp_normal"] = time.perf_counter() - start
    start = time.perf_counter()
    write_depth_exr(out_dir / f"depth_{index}.exr", images.depth)
    timings["exr_depth"] = time.perf_counter() - start
    if position and images.position is not None:
        start = time.perf_counter()
        write_position_exr(out_dir / f"position_{index}.exr", images.position)
        timings["exr_position"] = time.perf_counter() - start
    return timings
