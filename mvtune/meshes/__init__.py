"""Mesh import, the canonical frame and built-in sample meshes: the first stage of the data path."""

from mvtune.meshes.frame import canonical_transform, normalize_mesh
from mvtune.meshes.load import (
    DEFAULT_MAX_TEXTURE_PIXELS,
    SUPPORTED_EXTENSIONS,
    InvalidGeometryError,
    MeshReadError,
    NotAMeshError,
    TextureMissingError,
    TextureTooLargeError,
    UnsupportedFormatError,
    load_mesh,
)
from mvtune.meshes.mesh import NEUTRAL_GREY, Mesh, MeshError, MeshPart
from mvtune.meshes.procedural import SAMPLE_NAMES, sample_mesh, write_sample_meshes

__all__ = [
    "DEFAULT_MAX_TEXTURE_PIXELS",
    "NEUTRAL_GREY",
    "SAMPLE_NAMES",
    "SUPPORTED_EXTENSIONS",
    "InvalidGeometryError",
    "Mesh",
    "MeshError",
    "MeshPart",
    "MeshReadError",
    "NotAMeshError",
    "TextureMissingError",
    "TextureTooLargeError",
    "UnsupportedFormatError",
    "canonical_transform",
    "load_mesh",
    "normalize_mesh",
    "sample_mesh",
    "write_sample_meshes",
]
