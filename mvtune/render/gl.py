"""Headless OpenGL renderer (moderngl on EGL) for colour, depth, normal and position maps.

Per view, two rasterisations of the mesh, which is uploaded once per object:

- a geometry pass, one sample per pixel at the pixel centre (like Blender's passes and nvdiffrast), into two
  targets: float32 (world position, planar depth) and uint8 (encoded world normal, alpha 255); barycentrics
  are clamped to the triangle so sliver triangles cannot extrapolate positions off the surface;
- a colour pass with MSAA in linear float, resolved (alpha = coverage, colour premultiplied), then a full-screen
  pass that un-premultiplies and encodes sRGB into an 8-bit target.

Image row 0 is the top of the image (camera +Y): the projection flips y so GL's first row is the top one and
no copy is needed on readback. The centre of pixel column u is at (u + 0.5 - W/2) * s / W in camera x.
Normals are the interpolated vertex normals, renormalised, in world space and not flipped on back faces
(Blender does not flip them either). Background: colour (0, 0, 0, 0), depth 65535, normal (0, 0, 0, 0),
position 0. All materials are opaque and no faces are culled.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import moderngl
import numpy as np

from mvtune.cameras import View
from mvtune.meshes.mesh import Mesh, MeshPart, srgb_to_linear
from mvtune.render.lighting import easylight_sh

log = logging.getLogger(__name__)

#: Depth written where no surface is hit; the reference loader treats anything above 1000 as background.
BACKGROUND_DEPTH = 65535.0
#: Clip range in front of the camera, in world units beyond the camera distance; a normalised object
#: (unit cube, radius 0.87) is always inside.
CLIP_MARGIN = 2.0
_GL_SRGB8_ALPHA8 = 0x8C43


class RenderError(Exception):
    """The renderer cannot run: no OpenGL context, or a mesh it cannot draw."""


@dataclass
class ViewImages:
    """One view's maps, row 0 = image top."""

    color: np.ndarray  # (H, W, 4) uint8 sRGB, straight alpha = coverage (anti-aliased)
    depth: np.ndarray  # (H, W) float32 planar depth along the view axis, BACKGROUND_DEPTH where empty
    normal: np.ndarray  # (H, W, 4) uint8 floor(255 * (0.5 n + 0.5)) world normal, alpha 255 / 0
    mask: np.ndarray  # (H, W) bool, pixel centre covered
    position: np.ndarray | None = None  # (H, W, 3) float32 world position, 0 where empty


def _has_nvidia_gpu() -> bool:
    return (
        os.path.exists("/dev/nvidia0")
        or shutil.which("nvidia-smi") is not None
        or os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "-1", "NoDevFiles")
    )


def create_context() -> moderngl.Context:
    """A standalone EGL context; warns when a machine with an NVIDIA GPU ends up on a software rasteriser."""
    try:
        ctx = moderngl.create_standalone_context(backend="egl", require=330)
    except Exception as exc:
        raise RenderError(
            f"cannot create a headless OpenGL (EGL) context: {exc}. Install EGL and Mesa: "
            "apt-get install -y --no-install-recommends libegl1 libgl1-mesa-dri libgl1 (Debian/Ubuntu); "
            "on NVIDIA nodes the container needs NVIDIA_DRIVER_CAPABILITIES to include 'graphics'."
        ) from exc
    renderer = ctx.info.get("GL_RENDERER", "?")
    log.info("OpenGL renderer: %s; version: %s", renderer, ctx.info.get("GL_VERSION", "?"))
    if _has_nvidia_gpu() and any(name in renderer.lower() for name in ("llvmpipe", "softpipe")):
        log.warning(
            "This machine has an NVIDIA GPU but OpenGL is rendering on the CPU (%s), which is much slower. "
            "The container must expose graphics capabilities: set NVIDIA_DRIVER_CAPABILITIES=graphics,compute,"
            "utility (or 'all') and make sure the NVIDIA EGL vendor library (libEGL_nvidia) is installed.",
            renderer,
        )
    return ctx


def projection_matrix(view: View) -> np.ndarray:
    """Camera-to-clip matrix, y flipped so that GL's first row is the image's top row."""
    near = 0.01
    far = view.distance + CLIP_MARGIN
    if view.projection == "ORTHO":
        half = view.ortho_scale / 2.0
        proj = np.array(
            [
                [1.0 / half, 0, 0, 0],
                [0, 1.0 / half, 0, 0],
                [0, 0, -2.0 / (far - near), -(far + near) / (far - near)],
                [0, 0, 0, 1.0],
            ]
        )
    else:
        near = max(near, view.distance - CLIP_MARGIN)
        focal = 1.0 / np.tan(view.fov_x / 2.0)
        proj = np.array(
            [
                [focal, 0, 0, 0],
                [0, focal, 0, 0],
                [0, 0, -(far + near) / (far - near), -2.0 * far * near / (far - near)],
                [0, 0, -1.0, 0],
            ]
        )
    proj[1] *= -1.0
    return proj


_VERTEX = """
#version 330
uniform mat4 mvp;
in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;
in vec4 in_color;
out vec3 v_position;
out vec3 v_normal;
out vec2 v_uv;
out vec4 v_color;
void main() {
    v_position = in_position;
    v_normal = in_normal;
    v_uv = in_uv;
    v_color = in_color;
    gl_Position = mvp * vec4(in_position, 1.0);
}
"""

# The geometry pass clamps barycentrics to the triangle: the rasteriser's coverage test (fixed point) and its
# attribute interpolation (float plane equations) disagree on sliver triangles, and plain interpolation can then
# put a pixel's position far off the surface (seen on Duck.glb: 0.29 world units). Depth is rewritten from the
# clamped point so that visibility agrees with what is stored.
_GEOMETRY_GEOMETRY = """
#version 330
layout(triangles) in;
layout(triangle_strip, max_vertices = 3) out;
in vec3 v_position[];
in vec3 v_normal[];
flat out vec3 f_position[3];
flat out vec3 f_normal[3];
out vec3 f_bary;
void main() {
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) {
            f_position[j] = v_position[j];
            f_normal[j] = v_normal[j];
        }
        f_bary = vec3(i == 0, i == 1, i == 2);
        gl_Position = gl_in[i].gl_Position;
        EmitVertex();
    }
}
"""

_GEOMETRY_FRAGMENT = """
#version 330
uniform mat4 mvp;
uniform vec3 camera_position;
uniform vec3 camera_back;
flat in vec3 f_position[3];
flat in vec3 f_normal[3];
in vec3 f_bary;
layout(location = 0) out vec4 out_position_depth;
layout(location = 1) out uvec4 out_normal;
void main() {
    vec3 b = max(f_bary, vec3(0.0));
    b /= b.x + b.y + b.z;
    vec3 p = b.x * f_position[0] + b.y * f_position[1] + b.z * f_position[2];
    vec3 n = normalize(b.x * f_normal[0] + b.y * f_normal[1] + b.z * f_normal[2]);
    vec4 clip = mvp * vec4(p, 1.0);
    gl_FragDepth = 0.5 * clip.z / clip.w + 0.5;
    out_position_depth = vec4(p, dot(camera_position - p, camera_back));
    out_normal = uvec4(uvec3(clamp(floor(255.0 * (0.5 * n + 0.5)), 0.0, 255.0)), 255u);
}
"""

_COLOR_FRAGMENT = """
#version 330
uniform int color_source;  // 0: factor, 1: vertex colours, 2: texture * factor
uniform vec4 color_factor;  // linear
uniform sampler2D base_color;  // sRGB internal format: samples come out linear
uniform bool lit;
uniform vec3 sh[9];
in vec3 v_normal;
in vec2 v_uv;
in vec4 v_color;  // linearised on upload
out vec4 out_color;
vec3 shade(vec3 n) {
    return sh[0] * 0.282095
        + sh[1] * 0.488603 * n.y + sh[2] * 0.488603 * n.z + sh[3] * 0.488603 * n.x
        + sh[4] * 1.092548 * n.x * n.y + sh[5] * 1.092548 * n.y * n.z
        + sh[6] * 0.315392 * (3.0 * n.z * n.z - 1.0)
        + sh[7] * 1.092548 * n.x * n.z + sh[8] * 0.546274 * (n.x * n.x - n.y * n.y);
}
void main() {
    vec3 albedo = color_factor.rgb;
    if (color_source == 2) {
        albedo *= texture(base_color, v_uv).rgb;
    } else if (color_source == 1) {
        albedo = v_color.rgb;
    }
    if (lit) {
        albedo *= max(shade(normalize(v_normal)), vec3(0.0));
    }
    out_color = vec4(albedo, 1.0);
}
"""

_FULLSCREEN_VERTEX = """
#version 330
void main() {
    vec2 corner = vec2(float((gl_VertexID & 1) << 2), float((gl_VertexID & 2) << 1));
    gl_Position = vec4(corner - 1.0, 0.0, 1.0);
}
"""

_ENCODE_FRAGMENT = """
#version 330
uniform sampler2D premultiplied;
out vec4 out_color;
void main() {
    vec4 c = texelFetch(premultiplied, ivec2(gl_FragCoord.xy), 0);
    if (c.a <= 0.0) {
        out_color = vec4(0.0);
        return;
    }
    vec3 linear = clamp(c.rgb / c.a, 0.0, 1.0);
    vec3 srgb = mix(12.92 * linear, 1.055 * pow(linear, vec3(1.0 / 2.4)) - 0.055, step(0.0031308, linear));
    out_color = vec4(srgb, c.a);
}
"""


class _GpuPart:
    """One mesh part's buffers, vertex arrays and texture on the GPU."""

    def __init__(self, ctx: moderngl.Context, part: MeshPart, geometry: moderngl.Program, color: moderngl.Program):
        n = len(part.vertices)
        faces = np.ascontiguousarray(part.faces, dtype=np.uint32)
        if faces.size and int(faces.max()) >= n:
            raise RenderError(f"mesh part {part.name!r}: face index {int(faces.max())} >= {n} vertices")
        self.buffers = [
            ctx.buffer(np.ascontiguousarray(part.vertices, dtype=np.float32)),
            ctx.buffer(np.ascontiguousarray(part.normals, dtype=np.float32)),
        ]
        self.index = ctx.buffer(faces)
        attributes = [(self.buffers[0], "3f", "in_position"), (self.buffers[1], "3f", "in_normal")]
        self.texture = None
        self.color_source = 0
        if part.texture is not None and part.uv is not None:
            self.color_source = 2
            self.buffers.append(ctx.buffer(np.ascontiguousarray(part.uv, dtype=np.float32)))
            attributes.append((self.buffers[-1], "2f", "in_uv"))
            texture = np.ascontiguousarray(np.asarray(part.texture, dtype=np.uint8)[::-1])  # GL rows start at v=0
            h, w = texture.shape[:2]
            self.texture = ctx.texture((w, h), 4, texture, internal_format=_GL_SRGB8_ALPHA8)
            self.texture.build_mipmaps()
            # Trilinear, no anisotropic filtering: on llvmpipe 8x anisotropy doubles the colour pass time.
            self.texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        elif part.vertex_colors is not None:
            self.color_source = 1
            colors = srgb_to_linear(np.asarray(part.vertex_colors, dtype=np.float32) / 255.0)
            self.buffers.append(ctx.buffer(np.ascontiguousarray(colors, dtype=np.float32)))
            attributes.append((self.buffers[-1], "4f", "in_color"))
        self.factor = tuple(float(c) for c in part.color_factor)
        self.geometry_vao = ctx.vertex_array(geometry, [a for a in attributes if a[2] in geometry], self.index, 4)
        self.color_vao = ctx.vertex_array(color, [a for a in attributes if a[2] in color], self.index, 4)

    def release(self) -> None:
        for obj in (self.geometry_vao, self.color_vao, self.index, *self.buffers, self.texture):
            if obj is not None:
                obj.release()


class Renderer:
    """Renders meshes from a list of views. Create once: the context, programs and targets are reused.

    lighting: "studio" (built-in easylight environment), "albedo" (unlit base colour) or a path to an
    equirectangular .exr/.hdr environment map; see mvtune.render.lighting.
    msaa: samples for the colour pass (the geometry passes are never anti-aliased); 0 disables it.
    ctx: share an existing context (several renderers, e.g. studio and albedo, in one process).
    """

    def __init__(
        self,
        resolution: int = 1024,
        lighting: str | Path = "studio",
        msaa: int = 4,
        exposure: float = 1.0,
        ctx: moderngl.Context | None = None,
    ):
        self.resolution = int(resolution)
        self.lighting = str(lighting)
        self._owns_ctx = ctx is None
        self.ctx = ctx or create_context()
        ctx = self.ctx
        self.msaa = min(int(msaa), ctx.max_samples) if msaa > 1 else 0
        if msaa > 1 and self.msaa < msaa:
            log.warning("MSAA %d requested but the GL driver allows %d samples", msaa, self.msaa)
        self.sh = None if self.lighting == "albedo" else easylight_sh(lighting, exposure)
        self.last_timings: dict[str, float] = {}

        with ctx:
            self._create_gl_objects()

    def _create_gl_objects(self) -> None:
        ctx = self.ctx
        self._geometry = ctx.program(
            vertex_shader=_VERTEX, geometry_shader=_GEOMETRY_GEOMETRY, fragment_shader=_GEOMETRY_FRAGMENT
        )
        self._color = ctx.program(vertex_shader=_VERTEX, fragment_shader=_COLOR_FRAGMENT)
        self._encode = ctx.program(vertex_shader=_FULLSCREEN_VERTEX, fragment_shader=_ENCODE_FRAGMENT)
        self._color["lit"].value = self.sh is not None
        if self.sh is not None:
            self._color["sh"].write(np.ascontiguousarray(self.sh, dtype=np.float32).tobytes())
        self._color["base_color"].value = 0
        self._encode["premultiplied"].value = 0
        self._fullscreen = ctx.vertex_array(self._encode, [])

        size = (self.resolution, self.resolution)
        self._position_depth = ctx.renderbuffer(size, 4, dtype="f4")
        self._normal = ctx.renderbuffer(size, 4, dtype="u1")
        geometry_depth = ctx.depth_renderbuffer(size)
        self._geometry_fbo = ctx.framebuffer([self._position_depth, self._normal], geometry_depth)
        # Linear float colour, so that MSAA averages light (not sRGB codes) across the silhouette.
        self._premultiplied = ctx.texture(size, 4, dtype="f4")
        self._premultiplied.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self._resolved_fbo = ctx.framebuffer([self._premultiplied])
        if self.msaa:
            color_targets = [
                ctx.renderbuffer(size, 4, samples=self.msaa, dtype="f4"),
                ctx.depth_renderbuffer(size, samples=self.msaa),
            ]
            self._color_fbo = ctx.framebuffer(color_targets[:1], color_targets[1])
        else:
            color_targets = [ctx.depth_renderbuffer(size)]
            self._color_fbo = ctx.framebuffer([self._premultiplied], color_targets[0])
        srgb = ctx.renderbuffer(size, 4)
        self._srgb_fbo = ctx.framebuffer([srgb])
        self._gl_objects = [
            self._geometry_fbo, self._resolved_fbo, self._color_fbo, self._srgb_fbo, self._fullscreen,
            self._geometry, self._color, self._encode, self._position_depth, self._normal, geometry_depth,
            self._premultiplied, *color_targets, srgb,
        ]  # fmt: skip

    def render(self, mesh: Mesh, views: Sequence[View], position: bool = False) -> list[ViewImages]:
        """All views of one mesh; the mesh is uploaded once and released afterwards."""
        return list(self.render_iter(mesh, views, position))

    def render_iter(self, mesh: Mesh, views: Sequence[View], position: bool = False) -> Iterator[ViewImages]:
        """Like render, one view at a time, so a caller can encode view i while view i+1 renders.

        Seconds spent are summed per stage into `last_timings` (upload, draw, readback).
        """
        drawable = [part for part in mesh.parts if len(part.faces)]
        if not drawable:
            raise RenderError(f"{mesh.source or 'mesh'}: no triangles to render")
        self.last_timings = {"upload": 0.0, "draw": 0.0, "readback": 0.0}
        # Make this renderer's context current: another context created since (in this thread) took over.
        with self.ctx:
            start = time.perf_counter()
            parts = [_GpuPart(self.ctx, part, self._geometry, self._color) for part in drawable]
            self.last_timings["upload"] += time.perf_counter() - start
        try:
            for view in views:
                with self.ctx:
                    start = time.perf_counter()
                    self._draw_view(parts, view)
                    self.ctx.finish()
                    drawn = time.perf_counter()
                    images = self._read(position)
                    self.last_timings["draw"] += drawn - start
                    self.last_timings["readback"] += time.perf_counter() - drawn
                yield images
        finally:
            with self.ctx:
                for part in parts:
                    part.release()

    def _draw_view(self, parts: list[_GpuPart], view: View) -> None:
        ctx = self.ctx
        c2w = view.c2w
        mvp = projection_matrix(view) @ np.linalg.inv(c2w)
        mvp_bytes = np.ascontiguousarray(mvp.T, dtype=np.float32).tobytes()
        ctx.enable_only(moderngl.DEPTH_TEST)

        self._geometry_fbo.use()
        self._geometry_fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self._geometry["mvp"].write(mvp_bytes)
        self._geometry["camera_position"].value = tuple(float(x) for x in c2w[:3, 3])
        self._geometry["camera_back"].value = tuple(float(x) for x in c2w[:3, 2])
        for part in parts:
            part.geometry_vao.render(moderngl.TRIANGLES)

        self._color_fbo.use()
        self._color_fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self._color["mvp"].write(mvp_bytes)
        for part in parts:
            self._color["color_source"].value = part.color_source
            self._color["color_factor"].value = part.factor
            if part.texture is not None:
                part.texture.use(0)
            part.color_vao.render(moderngl.TRIANGLES)
        if self.msaa:
            ctx.copy_framebuffer(self._resolved_fbo, self._color_fbo)

        ctx.disable(moderngl.DEPTH_TEST)
        self._srgb_fbo.use()
        self._premultiplied.use(0)
        self._fullscreen.render(moderngl.TRIANGLES, vertices=3)

    def _read(self, position: bool) -> ViewImages:
        h = w = self.resolution
        color = np.frombuffer(self._srgb_fbo.read(components=4), dtype=np.uint8).reshape(h, w, 4)
        normal = np.frombuffer(self._geometry_fbo.read(components=4, attachment=1, dtype="u1"), dtype=np.uint8)
        normal = normal.reshape(h, w, 4).copy()
        position_depth = np.frombuffer(
            self._geometry_fbo.read(components=4, attachment=0, dtype="f4"), dtype=np.float32
        ).reshape(h, w, 4)
        # Targets are cleared to 0 (an integer target cannot take a float clear value such as 65535);
        # the depth background is filled in here from the coverage.
        mask = normal[..., 3] > 0
        depth = np.where(mask, position_depth[..., 3], np.float32(BACKGROUND_DEPTH)).astype(np.float32)
        return ViewImages(
            color=color.copy(),
            depth=depth,
            normal=normal,
            mask=mask,
            position=position_depth[..., :3].copy() if position else None,
        )

    def release(self) -> None:
        """Free the GL objects; the whole context if this renderer created it."""
        if self._owns_ctx:
            self.ctx.release()
            return
        with self.ctx:
            for obj in self._gl_objects:
                obj.release()
