"""Mesh import, the canonical frame and built-in sample meshes: the first stage of the data path.

The names below load their module on first access, so ``mvtune.meshes.mesh`` (the ``Mesh`` dataclasses, which
the renderer imports) does not pull in trimesh; ``from mvtune.meshes import load_mesh`` works as usual.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "canonical_transform": "mvtune.meshes.frame",
    "normalize_mesh": "mvtune.meshes.frame",
    "DEFAULT_MAX_TEXTURE_PIXELS": "mvtune.meshes.load",
    "SUPPORTED_EXTENSIONS": "mvtune.meshes.load",
    "InvalidGeometryError": "mvtune.meshes.load",
    "MeshReadError": "mvtune.meshes.load",
    "NotAMeshError": "mvtune.meshes.load",
    "TextureMissingError": "mvtune.meshes.load",
    "TextureTooLargeError": "mvtune.meshes.load",
    "UnsupportedFormatError": "mvtune.meshes.load",
    "load_mesh": "mvtune.meshes.load",
    "NEUTRAL_GREY": "mvtune.meshes.mesh",
    "Mesh": "mvtune.meshes.mesh",
    "MeshError": "mvtune.meshes.mesh",
    "MeshPart": "mvtune.meshes.mesh",
    "SAMPLE_NAMES": "mvtune.meshes.procedural",
    "sample_mesh": "mvtune.meshes.procedural",
    "write_sample_meshes": "mvtune.meshes.procedural",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mvtune.meshes' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
