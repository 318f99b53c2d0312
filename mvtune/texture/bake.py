"""Back-project multi-view images onto a UV atlas (spec dataset-format §6.5), on the renderer's GL device.

1. Rasterise the atlas in UV space (gl_Position = uv * 2 - 1) into float targets: per texel the world position
   and normal at the texel centre, and whether a triangle covers it.
2. Render each view's depth with `Renderer` at the view resolution, mark depth edges (silhouettes and jumps)
   and the distance of every pixel to the nearest edge.
3. Project every covered texel into every view (orthographic, pixel centres at (u + 1/2) s / W like the
   renderer). A view sees the texel when the texel faces it (cos > `min_cos`), lands on the object, and its
   depth agrees with the view's depth within a slope-aware tolerance. Its colour is sampled bilinearly from
   premultiplied colour, so background pixels never bleed in.
4. Blend with weights cos^k times a ramp on the distance to depth edges (view colours are least reliable at
   silhouettes and occlusion boundaries); normalise across views.
5. Fill texels no view sees by push-pull in UV space, then pad every texel outside the islands by a second
   push-pull from the islands: the ring next to an island gets that island's colours, so bilinear and
   mipmapped sampling never reach the background across a seam.

All per-texel work is vectorised numpy over the covered texels; the only Python loops run over views and
pyramid levels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import moderngl
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from mvtune.cameras import View
from mvtune.meshes import Mesh, MeshPart
from mvtune.render import Renderer
from mvtune.texture.unwrap import TextureError, UVMesh


class BakeOptions(BaseModel):
    """Baker settings; defaults follow the reference (cos^3 weights, grazing cut-off) with soft edge weights."""

    model_config = ConfigDict(extra="forbid")

    texture_size: int = Field(2048, ge=16, le=8192)
    cos_power: float = Field(3.0, ge=0.0)
    min_cos: float = Field(0.1, ge=0.0, lt=1.0)  # views more grazing than this never contribute
    edge_falloff_px: float = Field(6.0, ge=0.0)  # weight ramps from `edge_min_weight` to 1 over this many pixels
    edge_min_weight: float = Field(0.02, gt=0.0, le=1.0)
    edge_depth_px: float = Field(8.0, gt=0.0)  # a depth jump of this many pixel widths is an occlusion edge
    depth_tolerance_px: float = Field(1.5, gt=0.0)  # visibility tolerance, in pixel widths, plus the slope term


@dataclass
class BakeResult:
    texture: np.ndarray  # (S, S, 3) uint8, image rows (row 0 = top = v 1)
    covered: np.ndarray  # (S, S) bool, texel centre on a triangle (image rows)
    seen: np.ndarray  # (S, S) bool, covered and seen by at least one view (image rows)
    stats: dict = field(default_factory=dict)


_UV_VERTEX = """
#version 330
in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;
out vec3 v_position;
out vec3 v_normal;
void main() {
    v_position = in_position;
    v_normal = in_normal;
    gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0);
}
"""
_UV_FRAGMENT = """
#version 330
in vec3 v_position;
in vec3 v_normal;
layout(location = 0) out vec4 out_position;
layout(location = 1) out vec4 out_normal;
void main() {
    out_position = vec4(v_position, 1.0);
    out_normal = vec4(normalize(v_normal), 1.0);
}
"""


def rasterize_uv(ctx: moderngl.Context, mesh: UVMesh, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position (S,S,3), normal (S,S,3), covered (S,S)) per texel centre, GL rows (row 0 = v 0)."""
    with ctx:
        program = ctx.program(vertex_shader=_UV_VERTEX, fragment_shader=_UV_FRAGMENT)
        targets = [ctx.renderbuffer((size, size), 4, dtype="f4") for _ in range(2)]
        fbo = ctx.framebuffer(targets)
        buffers = [
            ctx.buffer(np.ascontiguousarray(a, dtype=np.float32)) for a in (mesh.vertices, mesh.normals, mesh.uv)
        ]
        ibo = ctx.buffer(np.ascontiguousarray(mesh.faces, dtype=np.uint32))
        vao = ctx.vertex_array(
            program,
            [(buffers[0], "3f", "in_position"), (buffers[1], "3f", "in_normal"), (buffers[2], "2f", "in_uv")],
            ibo,
            4,
        )
        try:
            fbo.use()
            fbo.clear(0.0, 0.0, 0.0, 0.0)
            ctx.enable_only(moderngl.NOTHING)
            vao.render(moderngl.TRIANGLES)
            ctx.finish()
            position = np.frombuffer(fbo.read(components=4, attachment=0, dtype="f4"), np.float32)
            normal = np.frombuffer(fbo.read(components=4, attachment=1, dtype="f4"), np.float32)
        finally:
            for obj in (vao, ibo, *buffers, fbo, *targets, program):
                obj.release()
    position = position.reshape(size, size, 4)
    normal = normal.reshape(size, size, 4)
    return position[..., :3], normal[..., :3], position[..., 3] > 0.5


def as_render_mesh(mesh: UVMesh, texture: np.ndarray | None = None) -> Mesh:
    """The atlas mesh as a one-part `Mesh` for the renderer (grey, or with a texture in image rows)."""
    part = MeshPart(
        vertices=mesh.vertices, faces=mesh.faces, normals=mesh.normals, uv=mesh.uv, texture=texture, name="atlas"
    )
    if texture is not None and texture.shape[-1] == 3:
        part.texture = np.concatenate([texture, np.full(texture.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    return Mesh(parts=[part], source=mesh.source, to_frame=mesh.to_frame)


def edge_distance(depth: np.ndarray, mask: np.ndarray, jump: float) -> np.ndarray:
    """(H, W) float32 distance in pixels from each pixel to the nearest silhouette or depth-jump pixel."""
    padded = np.pad(np.where(mask, depth, np.inf), 1, mode="constant", constant_values=np.inf)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(depth.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[dy : dy + depth.shape[0], dx : dx + depth.shape[1]]
        with np.errstate(invalid="ignore"):
            edge |= ~(np.abs(neighbour - centre) <= jump)  # inf - inf is nan: background pairs are no edge
    edge &= mask  # object pixels next to a depth jump or the background
    if not edge.any():
        return np.full(depth.shape, np.float32(1e6), np.float32)
    return ndimage.distance_transform_edt(~edge).astype(np.float32)


def _bilinear_premultiplied(premultiplied: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """(M, 4) bilinear samples of an (H, W, 4) float image at continuous pixel coords (centres at integers)."""
    h, w = premultiplied.shape[:2]
    x0 = np.floor(px).astype(np.int64)
    y0 = np.floor(py).astype(np.int64)
    fx = (px - x0).astype(np.float32)[:, None]
    fy = (py - y0).astype(np.float32)[:, None]
    x0c, x1c = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    y0c, y1c = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    flat = premultiplied.reshape(-1, 4)
    top = flat[y0c * w + x0c] * (1 - fx) + flat[y0c * w + x1c] * fx
    bottom = flat[y1c * w + x0c] * (1 - fx) + flat[y1c * w + x1c] * fx
    return top * (1 - fy) + bottom * fy


def _reduce(color: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pull step: 2x2 weighted sums, renormalised so a block with any known texel has weight 1 (its mean)."""
    h, w = weight.shape
    if h % 2 or w % 2:
        color = np.pad(color, ((0, h % 2), (0, w % 2), (0, 0)))
        weight = np.pad(weight, ((0, h % 2), (0, w % 2)))
    c = color[0::2, 0::2] + color[1::2, 0::2] + color[0::2, 1::2] + color[1::2, 1::2]
    w = weight[0::2, 0::2] + weight[1::2, 0::2] + weight[0::2, 1::2] + weight[1::2, 1::2]
    scale = np.minimum(w, 1.0) / np.maximum(w, 1e-12)
    return c * scale[..., None], np.minimum(w, 1.0)


def push_pull(color: np.ndarray, known: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """Fill texels from a weighted image pyramid (Gortler et al. 1996); known texels are kept.

    `fill` (default: every unknown texel) limits which texels get a value. The pyramid starts at half
    resolution and the full-resolution push is a gather for the filled texels only: a texel next to known
    ones gets the mean of the known texels in its 2x2 block, farther ones coarser averages.
    """
    known = np.asarray(known, bool)
    levels = [_reduce(color * known[..., None], known.astype(np.float32))]
    while max(levels[-1][1].shape) > 1:
        levels.append(_reduce(*levels[-1]))
    c = levels[-1][0]
    for fine_c, fine_w in reversed(levels[:-1]):
        h, w = fine_w.shape
        up = np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)[:h, :w]
        c = fine_c + (1.0 - fine_w)[..., None] * up
    out = color.copy()
    iy, ix = np.nonzero(~known if fill is None else (np.asarray(fill, bool) & ~known))
    out[iy, ix] = c[iy // 2, ix // 2]
    return out


def check_views(views: Sequence[View], images: Sequence[np.ndarray]) -> int:
    """The common square resolution of the view images; TextureError for any mismatch."""
    if len(views) != len(images):
        raise TextureError(f"{len(images)} view images for {len(views)} cameras")
    if not images:
        raise TextureError("no view images to bake")
    sizes = {np.asarray(im).shape[:2] for im in images}
    if len(sizes) != 1:
        raise TextureError(f"view images differ in size: {sorted(sizes)}")
    (h, w), = sizes
    if h != w:
        raise TextureError(f"view images must be square (the cameras are), got {w}x{h}")
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] not in (3, 4) or im.dtype != np.uint8:
            raise TextureError(f"view {i}: expected (H, W, 3|4) uint8, got {im.shape} {im.dtype}")
    return h


def bake_texture(
    mesh: UVMesh,
    views: Sequence[View],
    images: Sequence[np.ndarray],
    options: BakeOptions = BakeOptions(),
    ctx: moderngl.Context | None = None,
) -> BakeResult:
    """Bake sRGB view images (RGB, or RGBA with coverage alpha) of the canonical-frame mesh into its atlas.

    RGB images get the rendered object mask as alpha, so a generated image's background never enters the texture.
    """
    resolution = check_views(views, images)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    renderer = Renderer(resolution, lighting="albedo", msaa=0, ctx=ctx)
    try:
        size = options.texture_size
        position, normal, covered = rasterize_uv(renderer.ctx, mesh, size)
        timings["uv_raster"] = time.perf_counter() - start
        t = time.perf_counter()
        renders = renderer.render(as_render_mesh(mesh), views)
        timings["view_depth"] = time.perf_counter() - t
    finally:
        renderer.release()

    t = time.perf_counter()
    texel = np.flatnonzero(covered.ravel())
    p = position.reshape(-1, 3)[texel]
    n = normal.reshape(-1, 3)[texel]
    color_sum = np.zeros((len(texel), 3), np.float32)
    weight_sum = np.zeros(len(texel), np.float32)
    per_view_seen = []
    for view, image, render in zip(views, images, renders):
        c2w = view.c2w.astype(np.float32)
        back, origin = c2w[:3, 2], c2w[:3, 3]
        pixel = view.ortho_scale / resolution
        # Texels facing away from the view are most of the rejections: drop them before any other work.
        cos = n @ back
        idx = np.flatnonzero(cos > options.min_cos)
        cos = cos[idx]
        camera = (p[idx] - origin) @ c2w[:3, :3]  # (x right, y up, z back) in camera axes
        # Continuous pixel coordinates with pixel centres on integers (centre of column u at (u + 1/2) s / W).
        px = camera[:, 0] / pixel + (resolution / 2.0 - 0.5)
        py = (resolution / 2.0 - 0.5) - camera[:, 1] / pixel
        inside = (px > -0.5) & (px < resolution - 0.5) & (py > -0.5) & (py < resolution - 0.5)
        flat = np.rint(py).astype(np.int64).clip(0, resolution - 1) * resolution
        flat += np.rint(px).astype(np.int64).clip(0, resolution - 1)
        tangent = np.sqrt(np.maximum(1.0 - cos**2, 0.0)) / cos  # |cos| can round past 1
        tolerance = pixel * (options.depth_tolerance_px + 0.71 * tangent)
        visible = inside & render.mask.reshape(-1)[flat] & (-camera[:, 2] - render.depth.reshape(-1)[flat] < tolerance)
        keep = np.flatnonzero(visible)

        rgba = np.asarray(image)
        alpha = rgba[..., 3].astype(np.float32) / 255.0 if rgba.shape[2] == 4 else render.mask.astype(np.float32)
        premultiplied = np.empty(alpha.shape + (4,), np.float32)
        premultiplied[..., :3] = rgba[..., :3] * (alpha / 255.0)[..., None]
        premultiplied[..., 3] = alpha
        sample = _bilinear_premultiplied(premultiplied, px[keep], py[keep])
        ok = sample[:, 3] > 1e-3
        keep, sample = keep[ok], sample[ok]
        distance = edge_distance(render.depth, render.mask, options.edge_depth_px * pixel).reshape(-1)[flat[keep]]
        ramp = np.clip(distance / max(options.edge_falloff_px, 1e-6), options.edge_min_weight, 1.0)
        w = cos[keep] ** options.cos_power * ramp
        target = idx[keep]
        color_sum[target] += w[:, None] * (sample[:, :3] / sample[:, 3:4])
        weight_sum[target] += w
        per_view_seen.append(int(len(target)))
    timings["project_blend"] = time.perf_counter() - t

    t = time.perf_counter()
    seen_texel = weight_sum > 0
    if not seen_texel.any():
        raise TextureError("no texel is visible in any view: the views do not show this mesh")
    color = np.zeros((size * size, 3), np.float32)
    seen = np.zeros(size * size, bool)
    color[texel[seen_texel]] = color_sum[seen_texel] / weight_sum[seen_texel, None]
    seen[texel[seen_texel]] = True
    color = color.reshape(size, size, 3)
    seen = seen.reshape(size, size)
    # Unseen surface texels from seen ones, then the gutter around the islands from the whole surface.
    filled = push_pull(color, seen, fill=covered) if not seen_texel.all() else color
    filled = push_pull(filled, covered)
    timings["fill_pad"] = time.perf_counter() - t

    texture = np.clip(np.rint(filled * 255.0), 0, 255).astype(np.uint8)
    timings["total"] = time.perf_counter() - start
    stats = {
        "texture_size": size,
        "view_resolution": resolution,
        "covered_texels": int(covered.sum()),
        "seen_texels": int(seen.sum()),
        "texel_coverage": float(seen.sum() / max(covered.sum(), 1)),
        "texels_per_view": per_view_seen,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    # GL rows start at v = 0; images start at the top.
    return BakeResult(texture[::-1].copy(), covered[::-1].copy(), seen[::-1].copy(), stats)


def psnr_over_covered(originals, rebaked) -> tuple[float, float]:
    """PSNR (dB) of re-rendered views against the originals over pixels fully on the object in both, and the
    fraction of object pixels that comparison used: the baker's accuracy measure (test and benchmark)."""
    squared, count, on_object = 0.0, 0, 0
    for a, b in zip(originals, rebaked):
        both = (a.color[..., 3] == 255) & (b.color[..., 3] == 255)
        diff = a.color[..., :3][both].astype(np.float64) - b.color[..., :3][both]
        squared += float((diff**2).sum())
        count += diff.size
        on_object += int(a.mask.sum())
    return 10.0 * np.log10(255.0**2 / max(squared / max(count, 1), 1e-12)), count / 3 / max(on_object, 1)
