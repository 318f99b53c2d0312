"""Blender Cycles as a geometric reference for mvtune's renderer (issue 2).

`render_with_blender` runs benchmarks/blender_render.py inside the bpy venv that scripts/setup_blender.sh creates
(bpy 5.0.1 pins numpy 1.26 and CPython 3.11, so it cannot live in the project venv); `compare_geometry`
measures how well two renders' depth and position maps agree.

Conventions of what `render_with_blender` returns (matching mvtune's renderer):
- row 0 is the top of the image (camera +Y side), column 0 its left (camera -X side);
- depth is planar depth along the view axis in world units, background 65535 (Blender itself writes 1e10);
- position is world XYZ, background 0;
- depth/position of pixel (u, v) are point samples at its centre (u + 0.5, v + 0.5) (Cycles writes them from
  the first sample, which it puts at the filter centre; measured offset +0.0005 px in x and y).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BLENDER_SCRIPT = Path(__file__).resolve().parent / "blender_render.py"
#: Background depth in our files (spec dataset-format §8); Blender's own value is 1e10.
BACKGROUND_DEPTH = 65535.0
#: Blender depth values at or above this are background.
BLENDER_BACKGROUND_THRESHOLD = 1e9


class BlenderNotAvailable(RuntimeError):
    """The bpy venv is missing or broken."""


def blender_python(venv: str | os.PathLike | None = None) -> Path:
    """The bpy venv's interpreter: $MVTUNE_BLENDER_VENV, else <repo>/.venv-blender."""
    venv = Path(venv or os.environ.get("MVTUNE_BLENDER_VENV") or REPO / ".venv-blender")
    return venv / "bin" / "python"


def blender_available(venv: str | os.PathLike | None = None) -> bool:
    return blender_python(venv).is_file()


def _view_dict(view: Any) -> dict:
    """mvtune.cameras.View, or a dict with index, c2w and ortho_scale (optionally projection, fov_x)."""
    if isinstance(view, dict):
        d = dict(view)
        d["c2w"] = np.asarray(d["c2w"], dtype=np.float64).reshape(4, 4).tolist()
        d.setdefault("projection", "ORTHO")
        d.setdefault("ortho_scale", 1.1)
        d["index"] = str(d["index"])
        return d
    return {
        "index": str(view.index),
        "c2w": np.asarray(view.c2w, dtype=np.float64).tolist(),
        "ortho_scale": float(view.ortho_scale),
        "projection": str(getattr(view, "projection", "ORTHO")),
        "fov_x": float(getattr(view, "fov_x", 0.0)),
    }


def geometry_from_mesh(mesh: Any) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (N,3) float32, faces (F,3) int64) of all parts of an mvtune Mesh, concatenated.

    For `render_with_blender(*geometry_from_mesh(mesh), views, ...)`; textures are per part, so pass uv/texture
    only for single-part meshes (e.g. `mesh.parts[0].uv`, `.texture`); they affect timing, not geometry.
    """
    vs, fs, offset = [], [], 0
    for part in mesh.parts:
        vs.append(np.asarray(part.vertices, dtype=np.float32))
        fs.append(np.asarray(part.faces, dtype=np.int64) + offset)
        offset += len(part.vertices)
    if not vs:
        raise ValueError("mesh has no parts")
    return np.concatenate(vs), np.concatenate(fs)


def render_with_blender(
    vertices: np.ndarray,
    faces: np.ndarray,
    views: Iterable[Any],
    resolution: int,
    samples: int = 16,
    *,
    uv: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    threads: int = 0,
    denoise: bool = False,
    save_color: bool = False,
    venv: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
    timeout: float | None = None,
    verbose: bool = False,
) -> dict:
    """Render depth and position of the given triangles with Blender Cycles (CPU) from each view.

    vertices (N,3) are used exactly as given (cast to float32, which is what Blender stores), so pass the
    already-normalised mesh both renderers see. uv (N,2, v up) and texture (H,W,4 uint8, row 0 top) give
    Blender a textured material so its timing reflects a textured render; they do not affect the geometry.

    Returns a dict:
        index     list[str]            view indices, in order
        depth     (V,H,W) float32      planar depth, background 65535
        position  (V,H,W,3) float32    world XYZ, background 0
        mask      (V,H,W) bool         pixel's first sample hit the mesh
        alpha     (V,H,W) float32      Cycles' anti-aliased coverage (all samples)
        color     (V,H,W,4) float16    linear RGBA, only with save_color
        seconds   (V,) float64         wall time of each view's render call (incl. writing its EXR)
        cpu_seconds (V,) float64       CPU time (all threads) of each view's render call; on a busy machine
                                       cpu_seconds / threads estimates the wall time an idle one would take
        seconds_per_view  float        mean of `seconds`
        cpu_seconds_per_view float     mean of `cpu_seconds`
        setup_seconds     float        scene and mesh construction inside Blender
        wall_seconds      float        the whole subprocess, including Blender start-up
        info      dict                 timing.json written by Blender (version, threads, samples, ...)
    """
    py = blender_python(venv)
    if not py.is_file():
        raise BlenderNotAvailable(
            f"Blender venv not found ({py} is missing). Create it with `scripts/setup_blender.sh` "
            "(installs bpy==5.0.1 into .venv-blender; ~370 MB download), or set MVTUNE_BLENDER_VENV."
        )
    view_dicts = [_view_dict(v) for v in views]
    if not view_dicts:
        raise ValueError("no views to render")

    vertices = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    faces = np.ascontiguousarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError("face indices out of range")
    if len(vertices) >= 2**31:
        raise ValueError("too many vertices for Blender")

    tmp = tempfile.TemporaryDirectory(prefix="mvtune-blender-", dir=workdir)
    try:
        tmpdir = Path(tmp.name)
        arrays = {"vertices": vertices, "faces": faces.astype(np.int32)}
        if uv is not None and texture is not None:
            arrays["uv"] = np.ascontiguousarray(uv, dtype=np.float32).reshape(-1, 2)
            arrays["texture"] = np.ascontiguousarray(texture, dtype=np.uint8)
        np.savez(tmpdir / "mesh.npz", **arrays)
        out_dir = tmpdir / "out"
        job = {
            "mesh": str(tmpdir / "mesh.npz"),
            "views": view_dicts,
            "resolution": int(resolution),
            "samples": int(samples),
            "output_dir": str(out_dir),
            "threads": int(threads),
            "denoise": bool(denoise),
            "save_color": bool(save_color),
        }
        (tmpdir / "job.json").write_text(json.dumps(job))

        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(py), str(BLENDER_SCRIPT), str(tmpdir / "job.json")],
            stdout=None if verbose else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            cwd=str(tmpdir),
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = (proc.stdout or "")[-4000:]
            raise RuntimeError(
                f"Blender render failed (exit {proc.returncode}) using {py}.\n{tail}\n"
                "If bpy is broken, re-create the venv with `scripts/setup_blender.sh`."
            )
        info = json.loads((out_dir / "timing.json").read_text())

        res = int(resolution)
        n = len(view_dicts)
        result: dict[str, Any] = {
            "index": [v["index"] for v in view_dicts],
            "depth": np.empty((n, res, res), np.float32),
            "position": np.empty((n, res, res, 3), np.float32),
            "mask": np.empty((n, res, res), bool),
            "alpha": np.empty((n, res, res), np.float32),
        }
        if save_color:
            result["color"] = np.empty((n, res, res, 4), np.float16)
        for i, v in enumerate(view_dicts):
            with np.load(out_dir / f"view_{v['index']}.npz") as d:
                depth = d["depth"]
                mask = depth < BLENDER_BACKGROUND_THRESHOLD
                result["mask"][i] = mask
                result["depth"][i] = np.where(mask, depth, np.float32(BACKGROUND_DEPTH))
                result["position"][i] = np.where(mask[..., None], d["position"], np.float32(0.0))
                result["alpha"][i] = d["alpha"]
                if save_color:
                    result["color"][i] = d["color"]
        secs = np.array([pv["render_s"] for pv in info["views"]], dtype=np.float64)
        result["seconds"] = secs
        result["seconds_per_view"] = float(secs.mean())
        result["cpu_seconds"] = np.array([pv["render_cpu_s"] for pv in info["views"]], dtype=np.float64)
        result["cpu_seconds_per_view"] = float(result["cpu_seconds"].mean())
        result["setup_seconds"] = float(info["setup_s"])
        result["wall_seconds"] = wall
        result["info"] = info
        return result
    finally:
        tmp.cleanup()


# ----------------------------------------------------------------------------------------------------------
# Comparison


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion over the last two axes (pixels outside the image count as background)."""
    m = np.asarray(mask, dtype=bool)
    pad = [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(m, pad, constant_values=False)
    h, w = m.shape[-2:]
    out = np.ones_like(m)
    for dy in range(3):
        for dx in range(3):
            out &= p[..., dy : dy + h, dx : dx + w]
    return out


def compare_geometry(
    ours_depth: np.ndarray,
    ours_position: np.ndarray,
    ours_mask: np.ndarray,
    bl_depth: np.ndarray,
    bl_position: np.ndarray,
    bl_mask: np.ndarray,
    tolerance: float = 1e-5,
) -> dict:
    """Agreement of two renders' depth (…,H,W) and position (…,H,W,3) maps; one view or a stack of views.

    Statistics are over pixels covered in both masks, excluding a 1-pixel silhouette band (pixels whose 3x3
    neighbourhood is not entirely covered in both). Position difference is the Euclidean norm of the XYZ
    difference. Mask disagreement is |ours xor blender| / |ours or blender| (and over all pixels).
    `*_frac_over_tol`: fraction of compared pixels whose difference exceeds `tolerance` (the issue's 1e-5);
    those are mostly pixels on interior depth discontinuities (self-occlusion edges), where a tiny shift of
    the sample point changes which surface is hit.
    """
    ours_mask = np.asarray(ours_mask, dtype=bool)
    bl_mask = np.asarray(bl_mask, dtype=bool)
    if ours_mask.shape != bl_mask.shape:
        raise ValueError(f"mask shapes differ: {ours_mask.shape} vs {bl_mask.shape}")
    both = ours_mask & bl_mask
    interior = _erode(both)

    d_ours = np.asarray(ours_depth, dtype=np.float64)
    d_bl = np.asarray(bl_depth, dtype=np.float64)
    p_ours = np.asarray(ours_position, dtype=np.float64)
    p_bl = np.asarray(bl_position, dtype=np.float64)
    dd = np.abs(d_ours - d_bl)[interior]
    dp = np.linalg.norm(p_ours - p_bl, axis=-1)[interior]

    union = ours_mask | bl_mask
    xor = ours_mask ^ bl_mask

    def stats(x: np.ndarray) -> tuple[float, float, float]:
        if x.size == 0:
            return float("nan"), float("nan"), float("nan")
        return float(np.median(x)), float(np.percentile(x, 99)), float(x.max())

    dmed, dp99, dmax = stats(dd)
    pmed, pp99, pmax = stats(dp)
    return {
        "pixels_compared": int(interior.sum()),
        "depth_median": dmed,
        "depth_p99": dp99,
        "depth_max": dmax,
        "position_median": pmed,
        "position_p99": pp99,
        "position_max": pmax,
        "tolerance": float(tolerance),
        "depth_frac_over_tol": float((dd > tolerance).mean()) if dd.size else float("nan"),
        "position_frac_over_tol": float((dp > tolerance).mean()) if dp.size else float("nan"),
        "mask_disagreement": float(xor.sum() / max(int(union.sum()), 1)),
        "mask_disagreement_image": float(xor.mean()) if xor.size else 0.0,
        "mask_pixels_ours": int(ours_mask.sum()),
        "mask_pixels_blender": int(bl_mask.sum()),
    }


# ----------------------------------------------------------------------------------------------------------
# Exact CPU reference (orthographic), for tests without either renderer


def raycast_orthographic(
    vertices: np.ndarray, faces: np.ndarray, c2w: np.ndarray, ortho_scale: float, resolution: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact depth/position/mask of a triangle mesh at pixel centres, float64; slow, for small meshes/images.

    Same conventions as render_with_blender: row 0 = image top, pixel centre (u + 0.5, v + 0.5), depth along
    the view axis with background 65535, position world XYZ with background 0.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    w2c = np.linalg.inv(c2w)
    v = np.asarray(vertices, dtype=np.float32).astype(np.float64)
    vc = v @ w2c[:3, :3].T + w2c[:3, 3]
    res = int(resolution)
    px = res / float(ortho_scale)  # pixels per world unit
    # image coordinates (continuous, pixel centres at integer + 0.5)
    col = vc[:, 0] * px + res / 2.0
    row = res / 2.0 - vc[:, 1] * px
    depth_v = -vc[:, 2]
    zbuf = np.full((res, res), np.inf)
    for tri in np.asarray(faces, dtype=np.int64).reshape(-1, 3):
        x, y, z = col[tri], row[tri], depth_v[tri]
        c0, c1 = int(max(np.floor(x.min() - 0.5), 0)), int(min(np.ceil(x.max() - 0.5), res - 1))
        r0, r1 = int(max(np.floor(y.min() - 0.5), 0)), int(min(np.ceil(y.max() - 0.5), res - 1))
        if c0 > c1 or r0 > r1:
            continue
        area = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
        if area == 0.0:
            continue
        gx, gy = np.meshgrid(np.arange(c0, c1 + 1) + 0.5, np.arange(r0, r1 + 1) + 0.5)
        w0 = ((x[1] - gx) * (y[2] - gy) - (x[2] - gx) * (y[1] - gy)) / area
        w1 = ((x[2] - gx) * (y[0] - gy) - (x[0] - gx) * (y[2] - gy)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        zz = w0 * z[0] + w1 * z[1] + w2 * z[2]
        sub = zbuf[r0 : r1 + 1, c0 : c1 + 1]
        upd = inside & (zz < sub) & (zz > 0)
        sub[upd] = zz[upd]
    mask = np.isfinite(zbuf)
    cols, rows = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5)
    xc = (cols - res / 2.0) / px
    yc = (res / 2.0 - rows) / px
    zc = -np.where(mask, zbuf, 0.0)
    pc = np.stack([xc, yc, zc], axis=-1)
    position = pc @ c2w[:3, :3].T + c2w[:3, 3]
    position[~mask] = 0.0
    depth = np.where(mask, zbuf, BACKGROUND_DEPTH)
    return depth.astype(np.float32), position.astype(np.float32), mask


if __name__ == "__main__":  # tiny smoke run: python benchmarks/blender_compare.py [resolution]
    sys.path.insert(0, str(REPO))
    import trimesh

    from mvtune.cameras import ortho10

    res = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    m = trimesh.creation.icosphere(subdivisions=2, radius=0.45)
    vs = ortho10()
    out = render_with_blender(m.vertices, m.faces, vs, res, samples=1)
    for i, v in enumerate(vs):
        d, p, k = raycast_orthographic(m.vertices, m.faces, v.c2w, v.ortho_scale, res)
        r = compare_geometry(d, p, k, out["depth"][i], out["position"][i], out["mask"][i])
        print(v.index, f"{out['seconds'][i]:.3f}s", {k2: (f"{x:.2e}" if isinstance(x, float) else x) for k2, x in r.items()})
