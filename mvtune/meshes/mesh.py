"""The in-memory mesh every stage after import works with: flat arrays per material part, in one frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Colour factor of parts with no texture, no vertex colours and no material colour. Factors are linear
#: (glTF baseColorFactor), so this is the linear value that displays as sRGB 0.5 grey.
NEUTRAL_GREY = (0.214, 0.214, 0.214, 1.0)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] values to linear (float32)."""
    values = np.asarray(values, dtype=np.float32)
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """Linear [0, 1] values to sRGB-encoded ones (float32)."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.where(values <= 0.0031308, 12.92 * values, 1.055 * values ** (1.0 / 2.4) - 0.055).astype(np.float32)


class MeshError(Exception):
    """A mesh that cannot be imported; the message names the file and what is wrong with it."""


@dataclass
class MeshPart:
    """One material's worth of triangles, vertices already transformed into the mesh's frame.

    Colour sources, in order of precedence: `texture` sampled at `uv` (times `color_factor`), else
    `vertex_colors`, else `color_factor` alone. Texture and vertex colours are sRGB-encoded; `color_factor` is linear.
    """

    vertices: np.ndarray  # (N, 3) float32
    faces: np.ndarray  # (F, 3) uint32, indices into vertices
    normals: np.ndarray  # (N, 3) float32 unit vertex normals
    uv: np.ndarray | None = None  # (N, 2) float32, OpenGL convention: v = 0 at the image's bottom row
    texture: np.ndarray | None = None  # (H, W, 4) uint8 RGBA, row 0 = top of the image, factor NOT applied
    vertex_colors: np.ndarray | None = None  # (N, 4) uint8 RGBA
    color_factor: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # glTF baseColorFactor (linear RGBA)
    name: str = ""


@dataclass
class Mesh:
    """A whole object: its parts, where it came from, and the transform that brought it into this frame."""

    parts: list[MeshPart]
    source: str = ""
    #: 4x4 matrix mapping the source file's coordinates to the current frame (identity right after loading
    #: a file's scene graph; set by normalisation so the texture stage can undo it).
    to_frame: np.ndarray = field(default_factory=lambda: np.eye(4))
    warnings: list[str] = field(default_factory=list)

    @property
    def vertices(self) -> np.ndarray:
        return np.concatenate([p.vertices for p in self.parts], axis=0)

    @property
    def num_faces(self) -> int:
        return int(sum(len(p.faces) for p in self.parts))

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) min and max corner of the actual vertices."""
        v = self.vertices
        return np.stack([v.min(axis=0), v.max(axis=0)])
