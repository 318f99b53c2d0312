"""Shared behaviour of the stand-ins: a small sphere, a texture painted from the reference image, test hooks."""

import os
import time
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image


def _consume(variable: str) -> str | None:
    path = os.environ.get(variable)
    if path and Path(path).exists():
        text = Path(path).read_text().strip()
        Path(path).unlink()
        return text
    return None


def check_folder(path) -> None:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"stand-in: model folder {path} not found")


def shape(image) -> trimesh.Trimesh:
    if _consume("HUNYUAN_STANDIN_HANG") is not None:
        time.sleep(3600)
    if not isinstance(image, Image.Image) or image.mode != "RGBA":
        raise TypeError("stand-in shape pipeline expects the RGBA cut-out image")
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    return trimesh.Trimesh(vertices=sphere.vertices, faces=sphere.faces, process=False)


def remove_background(image: Image.Image) -> Image.Image:
    rgba = np.asarray(image.convert("RGBA")).copy()
    rgba[..., 3] = np.where(rgba[..., :3].min(axis=-1) > 250, 0, 255)
    return Image.fromarray(rgba)


def paint(mesh: trimesh.Trimesh, image: Image.Image) -> trimesh.Trimesh:
    """UV by spherical angles; a 32x32 texture tinted by the reference image's mean colour."""
    broken = _consume("HUNYUAN_STANDIN_BREAK")
    v = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces)
    uv = np.stack([np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi) + 0.5, np.arccos(np.clip(v[:, 1] / 0.5, -1, 1)) / np.pi], 1)
    tint = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
    ramp = np.linspace(0.6, 1.0, 32)[:, None, None] * np.ones((32, 32, 1))
    texture = np.clip(ramp * (tint * 0.5 + 100), 0, 255).astype(np.uint8)
    if broken == "flat":
        texture[:] = 128
    if broken == "nan":
        v = v.copy()
        v[0] = np.nan
    if broken == "nofaces":
        faces = np.zeros((0, 3), dtype=np.int64)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    return trimesh.Trimesh(vertices=v, faces=faces, visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
                           process=False)
