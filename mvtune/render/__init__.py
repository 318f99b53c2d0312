"""Render meshes into MV-Adapter's per-view maps (colour, depth, world normal, position) and files."""

from mvtune.render.files import (
    build_meta,
    read_depth_exr,
    read_webp_rgba,
    write_color_webp,
    write_depth_exr,
    write_normal_webp,
    write_position_exr,
    write_view_files,
)
from mvtune.render.gl import BACKGROUND_DEPTH, Renderer, RenderError, ViewImages, create_context
from mvtune.render.lighting import LightingError, easylight_sh

__all__ = [
    "BACKGROUND_DEPTH",
    "LightingError",
    "RenderError",
    "Renderer",
    "ViewImages",
    "build_meta",
    "create_context",
    "easylight_sh",
    "read_depth_exr",
    "read_webp_rgba",
    "write_color_webp",
    "write_depth_exr",
    "write_normal_webp",
    "write_position_exr",
    "write_view_files",
]
