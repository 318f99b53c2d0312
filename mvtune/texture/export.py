"""`mvtune texture`: views of a mesh -> a textured GLB in the mesh's own coordinates, plus a turntable preview.

Outputs, each written atomically, the record last: ``OUT.glb`` (one mesh, one PBR material with the baked
baseColor texture, metallic 0, roughness 0.9 like the reference), ``OUT_turntable.png`` (8 views in a strip),
``OUT_turntable.gif`` and ``OUT.json`` (config, UV report, bake statistics, timings). Input problems raise
`TextureError` before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mvtune import cameras
from mvtune.cameras import View
from mvtune.generate.run import RECORD, VARIANT, GenerateConfig, GenerateError, ModelConfig, SamplingConfig, generate
from mvtune.render import Renderer
from mvtune.storage import FolderLockedError, atomic_write, folder_lock, sha256_file, write_json
from mvtune.texture.bake import BakeOptions, as_render_mesh, bake_texture
from mvtune.texture.unwrap import TextureError, UnwrapConfig, UVMesh, prepare_uv_mesh

#: Turntable: 8 orthographic views, 45 degrees apart, slightly from above, on a white background.
TURNTABLE_AZIMUTHS = tuple(range(0, 360, 45))
TURNTABLE_ELEVATION = 20.0


class TextureConfig(BaseModel):
    """One `mvtune texture` run: `views` (a generate run folder) or `prompt` (+ `models`) to generate them first."""

    model_config = ConfigDict(extra="forbid")

    mesh: Path
    out: Path  # .glb
    views: Path | None = None
    prompt: str | None = None
    models: ModelConfig | None = None  # needed with `prompt`
    sampling: SamplingConfig = SamplingConfig()  # with `prompt`
    seed: int = 0
    unwrap: UnwrapConfig = UnwrapConfig()
    bake: BakeOptions = BakeOptions()
    image_format: Literal["png", "jpeg"] = "png"  # texture encoding inside the GLB
    turntable: bool = True
    turntable_resolution: int = Field(256, ge=16, le=2048)

    @model_validator(mode="after")
    def _views_or_prompt(self) -> "TextureConfig":
        if (self.views is None) == (self.prompt is None):
            raise ValueError("give exactly one of views (a generate run folder) or prompt (to generate them)")
        if self.prompt is not None and self.models is None:
            raise ValueError("prompt needs models (base model, adapter, LoRA) to generate the views")
        if self.out.suffix.lower() != ".glb":
            raise ValueError(f"out must be a .glb file, got {self.out}")
        return self


#: Views larger than this are refused from their image header, before any pixel is decoded (a 164 KB PNG can
#: claim 13000² pixels, 1.9 GB once decoded).
MAX_VIEW_PIXELS = 4096 * 4096


class TextureInputError(TextureError):
    """A view image the user passed is unusable (unreadable, oversized, wrong size): the CLI exits 2."""


def read_views(views_dir: Path, mesh_path: Path) -> tuple[list[View], list[np.ndarray], dict]:
    """The six views of a generate run folder, checked against its record and against the mesh file."""
    views_dir = Path(views_dir)
    record_path = views_dir / RECORD
    if not record_path.is_file():
        raise TextureError(f"{views_dir}: no {RECORD}; pass the folder `mvtune generate` wrote")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        entries = record["views"]
        resolution = int(record["resolution"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TextureError(f"{record_path}: unreadable generate record ({type(exc).__name__}: {exc})") from None
    expected = cameras.variant_cameras(VARIANT)
    if record.get("variant") != VARIANT or len(entries) != len(expected):
        raise TextureError(
            f"{record_path}: expected the {len(expected)} {VARIANT} views, the record has {len(entries)} "
            f"({record.get('variant')!r})"
        )
    digest = record.get("mesh", {}).get("sha256")
    if digest != sha256_file(Path(mesh_path)):
        raise TextureError(
            f"{views_dir} was generated for {record.get('mesh', {}).get('path')!r}, not for {mesh_path} "
            "(sha256 differs); generate views for this mesh first"
        )
    views, images = [], []
    for i, (entry, view) in enumerate(zip(entries, expected)):
        found = (float(entry.get("azimuth", np.nan)), float(entry.get("elevation", np.nan)))
        if not cameras.poses_match(found, (view.azimuth, view.elevation)):
            raise TextureError(
                f"{record_path}: view {i} is at azimuth/elevation {found}, the {VARIANT} layout needs "
                f"{(view.azimuth, view.elevation)}"
            )
        path = views_dir / str(entry.get("file", ""))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by size
                with Image.open(path) as im:  # reads the header only; pixels are decoded by convert()
                    width, height = im.size
                    if (width, height) != (resolution, resolution) or width * height > MAX_VIEW_PIXELS:
                        raise TextureInputError(
                            f"{path} is {width}x{height}, the record says {resolution}x{resolution}"
                            + (f" (views above {MAX_VIEW_PIXELS} pixels are refused)" if width * height > MAX_VIEW_PIXELS else "")
                        )
                    image = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA") else "RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise TextureInputError(f"{path}: cannot read view {i} ({type(exc).__name__}: {exc})") from None
        views.append(view)
        images.append(image)
    return views, images, record


def source_frame(mesh: UVMesh) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and unit normals mapped back to the source file's coordinates (inverse of `to_frame`)."""
    to_frame = np.asarray(mesh.to_frame, dtype=np.float64)
    inverse = np.linalg.inv(to_frame)
    vertices = mesh.vertices.astype(np.float64) @ inverse[:3, :3].T + inverse[:3, 3]
    normals = mesh.normals.astype(np.float64) @ to_frame[:3, :3]  # inverse-transpose of the inverse map
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return vertices, normals


def glb_bytes(mesh: UVMesh, texture: np.ndarray, image_format: str = "png") -> bytes:
    """The textured mesh as GLB bytes, in source coordinates."""
    import trimesh

    vertices, normals = source_frame(mesh)
    image = Image.fromarray(texture)
    if image_format == "jpeg":  # trimesh keeps JPEG-format images as JPEG
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        image = Image.open(io.BytesIO(buffer.getvalue()))
    material = trimesh.visual.material.PBRMaterial(
        name="baked", baseColorTexture=image, metallicFactor=0.0, roughnessFactor=0.9
    )
    geometry = trimesh.Trimesh(
        vertices=vertices,
        faces=mesh.faces.astype(np.int64),
        vertex_normals=normals,
        visual=trimesh.visual.TextureVisuals(uv=mesh.uv, material=material),
        process=False,
    )
    scene = trimesh.Scene()
    scene.add_geometry(geometry, geom_name="textured", node_name="textured")
    return scene.export(file_type="glb")


def turntable_images(mesh: UVMesh, texture: np.ndarray, resolution: int, ctx=None) -> list[np.ndarray]:
    """8 lit views around the textured canonical-frame mesh, composited on white (RGB uint8)."""
    views = cameras.custom([(float(a), TURNTABLE_ELEVATION, "ORTHO") for a in TURNTABLE_AZIMUTHS])
    renderer = Renderer(resolution, lighting="studio", ctx=ctx)
    try:
        renders = renderer.render(as_render_mesh(mesh, texture), views)
    finally:
        renderer.release()
    out = []
    for render in renders:
        alpha = render.color[..., 3:4].astype(np.float32) / 255.0
        rgb = render.color[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        out.append(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    return out


def _check_writable(out: Path) -> None:
    parent = out.resolve().parent
    if not parent.is_dir():
        raise TextureError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise TextureError(f"cannot write {out}: folder {parent} is not writable")
    if out.exists() and out.is_dir():
        raise TextureError(f"cannot write {out}: it is a folder")


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _write_image(path: Path, image: Image.Image, **kwargs) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, **kwargs))


def output_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("")
    return {
        "glb": out,
        "record": stem.with_name(stem.name + ".json"),
        "turntable_png": stem.with_name(stem.name + "_turntable.png"),
        "turntable_gif": stem.with_name(stem.name + "_turntable.gif"),
        "views": stem.with_name(stem.name + "_views"),
    }


def texture_mesh(cfg: TextureConfig) -> dict:
    """Run the texture stage; returns the record written next to the GLB. One run per output at a time: a second
    texture run for the same OUT fails at once naming the first (its outputs would mix)."""
    out = Path(cfg.out)
    _check_writable(out)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock(out.parent, f"mvtune texture --out {out}", name=f"texture-{out.stem}"))
        except FolderLockedError as exc:
            raise TextureError(str(exc)) from None
        return _texture_mesh(cfg)


def _texture_mesh(cfg: TextureConfig) -> dict:
    from mvtune.generate.conditions import load_normalized
    from mvtune.meshes import MeshError
    from mvtune.render import create_context

    start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(cfg.out)
    paths = output_paths(out)
    _check_writable(out)
    if not Path(cfg.mesh).is_file():
        raise TextureError(f"mesh {cfg.mesh} does not exist")

    views_dir = cfg.views
    if cfg.prompt is not None:
        views_dir = paths["views"]
        try:
            generate(
                GenerateConfig(
                    mesh=cfg.mesh,
                    prompt=cfg.prompt,
                    out_dir=views_dir,
                    seed=cfg.seed,
                    models=cfg.models,
                    sampling=cfg.sampling,
                )
            )
        except GenerateError as exc:  # a bad mesh or models: the texture stage's own input error
            raise TextureError(str(exc)) from exc
        timings["generate"] = time.perf_counter() - start
    views, images, record = read_views(views_dir, cfg.mesh)
    try:
        mesh = load_normalized(cfg.mesh, up=record.get("mesh", {}).get("up", "y"))
    except MeshError as exc:
        raise TextureError(f"{cfg.mesh}: {exc}") from exc

    ctx = create_context()
    try:
        t = time.perf_counter()
        uv_mesh, unwrap_report = prepare_uv_mesh(mesh, cfg.unwrap, cfg.bake.texture_size, ctx)
        timings["unwrap"] = time.perf_counter() - t
        t = time.perf_counter()
        result = bake_texture(uv_mesh, views, images, cfg.bake, ctx=ctx)
        timings["bake"] = time.perf_counter() - t
        t = time.perf_counter()
        glb = glb_bytes(uv_mesh, result.texture, cfg.image_format)
        timings["encode_glb"] = time.perf_counter() - t
        strip = None
        if cfg.turntable:
            t = time.perf_counter()
            strip = turntable_images(uv_mesh, result.texture, cfg.turntable_resolution, ctx)
            timings["turntable"] = time.perf_counter() - t
    finally:
        ctx.release()

    _write_bytes(paths["glb"], glb)
    files = {"glb": paths["glb"].name}
    if strip is not None:
        _write_image(paths["turntable_png"], Image.fromarray(np.concatenate(strip, axis=1)), format="PNG")
        frames = [Image.fromarray(im) for im in strip]
        _write_image(
            paths["turntable_gif"],
            frames[0],
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=250,
            loop=0,
        )
        files.update(turntable_png=paths["turntable_png"].name, turntable_gif=paths["turntable_gif"].name)
    else:  # an earlier run's previews would no longer show this GLB
        paths["turntable_png"].unlink(missing_ok=True)
        paths["turntable_gif"].unlink(missing_ok=True)
    timings["total"] = time.perf_counter() - start
    summary = {
        # Sampling settings only when this run sampled; given views were made as their own record says.
        "config": cfg.model_dump(mode="json", exclude=None if cfg.prompt is not None else {"sampling", "models", "seed"}),
        "views": str(views_dir),
        "generate_record": {k: record.get(k) for k in ("prompt", "seed", "models", "sampling", "resolution", "source")},
        "unwrap": unwrap_report,
        "bake": result.stats,
        "files": files,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    write_json(paths["record"], summary)
    return summary
