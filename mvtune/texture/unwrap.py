"""One UV atlas for the whole mesh: keep the mesh's UVs when they can hold a baked texture, else unwrap with xatlas.

Baking writes one colour per texel, so a texel must belong to exactly one surface point, and the exported GLB has
a single baseColor texture shared by every part. Existing UVs are therefore *usable* only when

- every part has UVs (a part without them would get no texture);
- at least `MIN_INSIDE` of the UV area lies inside [0, 1]² (wrapping/tiling UVs would sample the texture twice);
- at most `MAX_OVERLAP` of the covered texels are covered more than once, counted over all parts together on a
  `OVERLAP_RESOLUTION`² grid (mirrored halves, stacked parts and per-part atlases all overlap);
- the UV area is not degenerate.

Otherwise the parts are merged and unwrapped with xatlas. xatlas gets slow and memory-hungry on huge meshes, so
meshes over `face_budget` faces are decimated first (quadric decimation through trimesh, which needs the
`fast_simplification` package); without it, or with decimation switched off, they are refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import moderngl
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mvtune.meshes import Mesh

MIN_INSIDE = 0.99
MAX_OVERLAP = 0.02
OVERLAP_RESOLUTION = 1024


class TextureError(Exception):
    """Texturing cannot run on this input: the message names the file or view and what to change."""


@dataclass
class UVMesh:
    """The single-part, UV-mapped mesh that is baked and exported; vertices in the canonical frame."""

    vertices: np.ndarray  # (N, 3) float32
    faces: np.ndarray  # (F, 3) uint32
    normals: np.ndarray  # (N, 3) float32 unit
    uv: np.ndarray  # (N, 2) float32, OpenGL convention (v = 0 at the texture's bottom row)
    to_frame: np.ndarray = field(default_factory=lambda: np.eye(4))  # source -> canonical, from the Mesh
    source: str = ""


@dataclass
class UVCheck:
    usable: bool
    reason: str
    inside_fraction: float = 0.0
    overlap_fraction: float = 0.0


class UnwrapConfig(BaseModel):
    """How the atlas is made."""

    model_config = ConfigDict(extra="forbid")

    uv: Literal["auto", "keep", "unwrap"] = "auto"  # auto: keep usable UVs, else unwrap
    face_budget: int = Field(200_000, ge=100)
    decimate: bool = True  # over-budget meshes: decimate (True) or refuse (False)
    padding: int = Field(4, ge=0, le=64)  # texels between xatlas charts at the bake resolution


def merged_arrays(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """All parts as one (vertices, faces, normals, uv or None); uv is None unless every part has UVs."""
    vertices, faces, normals, uvs, offset = [], [], [], [], 0
    for part in mesh.parts:
        vertices.append(part.vertices)
        faces.append(part.faces.astype(np.int64) + offset)
        normals.append(part.normals)
        uvs.append(part.uv)
        offset += len(part.vertices)
    if not vertices:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), np.zeros((0, 3), np.float32), None
    uv = np.concatenate(uvs).astype(np.float32) if all(u is not None for u in uvs) else None
    return (
        np.concatenate(vertices).astype(np.float32),
        np.concatenate(faces).astype(np.uint32),
        np.concatenate(normals).astype(np.float32),
        uv,
    )


_COUNT_VERTEX = """
#version 330
in vec2 in_uv;
void main() { gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0); }
"""
_COUNT_FRAGMENT = """
#version 330
out vec4 out_count;
void main() { out_count = vec4(1.0, 0.0, 0.0, 1.0); }
"""


def uv_coverage_counts(ctx: moderngl.Context, uv: np.ndarray, faces: np.ndarray, resolution: int) -> np.ndarray:
    """(R, R) float32: how many triangles cover each texel centre (additive blending on the GL device).

    GL's fill rule assigns a shared edge to one triangle only, so a clean atlas counts 0 or 1 everywhere.
    """
    with ctx:
        program = ctx.program(vertex_shader=_COUNT_VERTEX, fragment_shader=_COUNT_FRAGMENT)
        target = ctx.renderbuffer((resolution, resolution), 4, dtype="f4")
        fbo = ctx.framebuffer([target])
        vbo = ctx.buffer(np.ascontiguousarray(uv, dtype=np.float32))
        ibo = ctx.buffer(np.ascontiguousarray(faces, dtype=np.uint32))
        vao = ctx.vertex_array(program, [(vbo, "2f", "in_uv")], ibo, 4)
        try:
            fbo.use()
            fbo.clear(0.0, 0.0, 0.0, 0.0)
            ctx.enable_only(moderngl.BLEND)
            ctx.blend_func = moderngl.ONE, moderngl.ONE
            vao.render(moderngl.TRIANGLES)
            ctx.finish()
            data = np.frombuffer(fbo.read(components=4, dtype="f4"), dtype=np.float32)
        finally:
            ctx.disable(moderngl.BLEND)
            for obj in (vao, ibo, vbo, fbo, target, program):
                obj.release()
    return data.reshape(resolution, resolution, 4)[..., 0].copy()


def check_uvs(mesh: Mesh, ctx: moderngl.Context) -> UVCheck:
    """Whether the mesh's own UVs can hold one baked texture (rules in the module docstring)."""
    missing = [p.name or str(i) for i, p in enumerate(mesh.parts) if p.uv is None]
    if missing:
        return UVCheck(False, f"parts without UVs: {missing}")
    _, faces, _, uv = merged_arrays(mesh)
    corners = uv[faces.astype(np.int64)]  # (F, 3, 2)
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    total = float(area.sum())
    if not np.isfinite(total) or total < 1e-8:
        return UVCheck(False, f"degenerate UVs (total UV area {total:.3g})")
    inside_faces = np.all((corners >= -1e-4) & (corners <= 1.0 + 1e-4), axis=(1, 2))
    inside = float(area[inside_faces].sum() / total)
    if inside < MIN_INSIDE:
        return UVCheck(False, f"only {inside:.1%} of the UV area is inside [0, 1]", inside)
    counts = uv_coverage_counts(ctx, uv, faces, OVERLAP_RESOLUTION)
    covered = int((counts > 0.5).sum())
    overlap = float((counts > 1.5).sum() / max(covered, 1))
    if overlap > MAX_OVERLAP:
        return UVCheck(False, f"{overlap:.1%} of the covered texels are used more than once", inside, overlap)
    return UVCheck(True, "usable", inside, overlap)


def fast_simplification_available() -> bool:
    try:
        import fast_simplification  # noqa: F401
    except ImportError:
        return False
    return True


def decimate(vertices: np.ndarray, faces: np.ndarray, face_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadric decimation to at most `face_count` faces; returns (vertices, faces, vertex normals)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)  # merge split vertices first
    simplified = mesh.simplify_quadric_decimation(face_count=face_count)
    return (
        simplified.vertices.astype(np.float32),
        simplified.faces.astype(np.uint32),
        simplified.vertex_normals.astype(np.float32),
    )


def unwrap(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, texture_size: int, padding: int):
    """xatlas charts packed for a `texture_size`² texture; returns (vertices, faces, normals, uv) with split seams."""
    try:
        import xatlas
    except ImportError as exc:
        raise TextureError("this mesh needs a UV unwrap, which needs the 'xatlas' package (pip install xatlas)") from exc

    atlas = xatlas.Atlas()
    atlas.add_mesh(
        np.ascontiguousarray(vertices, dtype=np.float32),
        np.ascontiguousarray(faces, dtype=np.uint32),
        np.ascontiguousarray(normals, dtype=np.float32),
    )
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vmapping, new_faces, uv = atlas[0]
    return vertices[vmapping], new_faces.astype(np.uint32), normals[vmapping], uv.astype(np.float32)


def prepare_uv_mesh(mesh: Mesh, cfg: UnwrapConfig, texture_size: int, ctx: moderngl.Context) -> tuple[UVMesh, dict]:
    """The atlas mesh to bake, and a report (which UVs, why, face counts, unwrap seconds)."""
    start = time.perf_counter()
    name = mesh.source or "mesh"
    if mesh.num_faces == 0:
        raise TextureError(f"{name}: the mesh has no faces, there is nothing to texture")
    vertices, faces, normals, uv = merged_arrays(mesh)
    report: dict = {"faces_in": int(len(faces))}
    check = check_uvs(mesh, ctx) if cfg.uv != "unwrap" else None
    if check is not None:
        report["uv_check"] = {
            "usable": check.usable,
            "reason": check.reason,
            "inside_fraction": round(check.inside_fraction, 4),
            "overlap_fraction": round(check.overlap_fraction, 4),
        }
    if cfg.uv == "keep" and not check.usable:
        raise TextureError(f"{name}: uv='keep' but the mesh's UVs cannot hold a baked texture: {check.reason}")
    if check is not None and check.usable:
        report.update(uvs="kept", faces_out=int(len(faces)), seconds=round(time.perf_counter() - start, 3))
        return UVMesh(vertices, faces, normals, uv, np.asarray(mesh.to_frame), mesh.source), report

    if len(faces) > cfg.face_budget:
        if not cfg.decimate:
            raise TextureError(
                f"{name}: {len(faces)} faces is over the face budget of {cfg.face_budget}; raise face_budget or "
                "allow decimation"
            )
        if not fast_simplification_available():
            raise TextureError(
                f"{name}: {len(faces)} faces is over the face budget of {cfg.face_budget} and decimation needs the "
                "'fast_simplification' package (pip install fast_simplification), or raise face_budget"
            )
        vertices, faces, normals = decimate(vertices, faces, cfg.face_budget)
        report["decimated"] = True
    vertices, faces, normals, uv = unwrap(vertices, faces, normals, texture_size, cfg.padding)
    report.update(uvs="xatlas", faces_out=int(len(faces)), seconds=round(time.perf_counter() - start, 3))
    return UVMesh(vertices, faces, normals, uv, np.asarray(mesh.to_frame), mesh.source), report
