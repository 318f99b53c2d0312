"""The canonical frame (spec dataset-format §3.6, §4.1): Z up, front on -Y, bounding box centred, longest side 1.

Every stage (renderer, inference, texture baking) calls `normalize_mesh`, so they all see the object in the
same place; `Mesh.to_frame` keeps the full transform so baked textures can be mapped back to the source file.

Default up axis per format: glTF/GLB are Y-up with the front on +Z by the glTF spec. OBJ and PLY have no
convention; we default to Y-up as well, like MV-Adapter's reference loader and most DCC exporters, and callers
pass `up="z"` for Z-up sources. Y-up sources are rotated (x, y, z) -> (x, -z, y), exactly as Blender's glTF
importer does, so glTF +Z (front) lands on world -Y and glTF +Y on world +Z.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from mvtune.meshes.mesh import Mesh, MeshError

UpAxis = Literal["y", "z"]

#: Rotation taking each supported source up axis to world +Z (front: glTF +Z -> world -Y).
_UP_ROTATIONS: dict[str, np.ndarray] = {
    "y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    "z": np.eye(3),
}


def canonical_transform(bounds: np.ndarray, up: UpAxis = "y") -> np.ndarray:
    """4x4 source -> world matrix for a box with these (2, 3) min/max corners: rotate, centre, scale to 1."""
    if up not in _UP_ROTATIONS:
        raise ValueError(f"up must be one of {sorted(_UP_ROTATIONS)}, got {up!r}")
    rotation = _UP_ROTATIONS[up]
    corners = np.asarray(bounds, dtype=np.float64) @ rotation.T
    # An axis permutation (with sign flips) keeps the box axis-aligned, so two corners still bound it.
    low, high = corners.min(axis=0), corners.max(axis=0)
    longest = float((high - low).max())
    if not np.isfinite(longest) or longest <= 0.0:
        raise MeshError(f"cannot normalise a bounding box with longest side {longest}")
    scale = 1.0 / longest
    matrix = np.eye(4)
    matrix[:3, :3] = scale * rotation
    matrix[:3, 3] = -scale * (low + high) / 2.0
    return matrix


def normalize_mesh(mesh: Mesh, up: UpAxis = "y") -> Mesh:
    """A new mesh in the canonical frame; `to_frame` then maps the original source coordinates to it.

    The input is left untouched. Calling it on an already normalised mesh needs `up="z"`, else it rotates again.
    """
    matrix = canonical_transform(mesh.bounds, up)
    rotation = _UP_ROTATIONS[up]
    parts = []
    for part in mesh.parts:
        vertices = part.vertices.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
        # Uniform scale and translation leave normals alone; only the rotation applies.
        normals = part.normals.astype(np.float64) @ rotation.T
        parts.append(
            replace(
                part,
                vertices=vertices.astype(np.float32),
                normals=normals.astype(np.float32),
                faces=part.faces.copy(),
                uv=None if part.uv is None else part.uv.copy(),
                vertex_colors=None if part.vertex_colors is None else part.vertex_colors.copy(),
            )
        )
    return Mesh(
        parts=parts,
        source=mesh.source,
        to_frame=matrix @ np.asarray(mesh.to_frame, dtype=np.float64),
        warnings=list(mesh.warnings),
    )
