"""tg2mv condition maps (position + normal) of a mesh, from the same renderer and cameras as the training data.

Inference and training maps agree by construction: the mesh goes through `normalize_mesh`, the views are
`cameras.variant_cameras(variant)`, and the maps come from `Renderer`'s geometry pass, encoded like the loader
(spec dataset-format §3.3, §5.4): position clamp(P + 0.5, 0, 1), normal floor(255 (n/2 + 1/2)) / 255, both
0.5 on the background.

Two deliberate differences from the training loader, both documented in docs/texture.md:

- positions are sampled at pixel centres (like MV-Adapter's inference and nvdiffrast), whereas the loader
  back-projects depth on the integer grid, half a pixel off: 0.5 * 1.1 / R world units per image axis
  (7.2e-4 at R = 768);
- normals are the renderer's 8-bit world normals, identical to the training files, not the reference
  inference's float normals (at most 1/255 apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvtune import cameras
from mvtune.cameras import View
from mvtune.meshes import Mesh, load_mesh, normalize_mesh
from mvtune.render import Renderer


@dataclass
class ConditionMaps:
    """The pipeline input (V, 6, H, W) float32 in [0, 1] and what it was rendered from."""

    maps: np.ndarray
    views: list[View]
    mask: np.ndarray  # (V, H, W) bool, pixel centre on the object
    depth: np.ndarray  # (V, H, W) float32 planar depth, BACKGROUND_DEPTH off the object

    @property
    def position(self) -> np.ndarray:
        return self.maps[:, :3]

    @property
    def normal(self) -> np.ndarray:
        return self.maps[:, 3:]


def condition_maps(
    mesh: Mesh, resolution: int = 768, variant: str = "tg2mv", renderer: Renderer | None = None
) -> ConditionMaps:
    """Render the variant's views of an already normalised mesh into condition maps.

    Pass a `renderer` at `resolution` to reuse its GL context across meshes.
    """
    views = cameras.variant_cameras(variant)
    own = renderer is None
    renderer = renderer or Renderer(resolution, lighting="albedo", msaa=0)
    if renderer.resolution != resolution:
        raise ValueError(f"renderer resolution {renderer.resolution} != requested {resolution}")
    try:
        images = renderer.render(mesh, views, position=True)
    finally:
        if own:
            renderer.release()
    mask = np.stack([im.mask for im in images])
    position = np.stack([im.position for im in images])
    normal = np.stack([im.normal[..., :3] for im in images]).astype(np.float32) / 255.0
    position = np.where(mask[..., None], np.clip(position + 0.5, 0.0, 1.0), 0.5)
    normal = np.where(mask[..., None], normal, 0.5)
    maps = np.concatenate([position, normal], axis=-1).transpose(0, 3, 1, 2)
    return ConditionMaps(
        maps=np.ascontiguousarray(maps, dtype=np.float32),
        views=views,
        mask=mask,
        depth=np.stack([im.depth for im in images]),
    )


def load_normalized(path: str | Path, up: str = "y") -> Mesh:
    """A mesh file in the canonical frame, exactly as the dataset renderer sees it."""
    return normalize_mesh(load_mesh(path), up=up)


def to_loader_grid(position_maps: np.ndarray, views: list[View], resolution: int) -> np.ndarray:
    """Shift pixel-centre position maps onto the training loader's integer grid (-1/2 pixel in x and y).

    Only for comparing with the loader: on the object, loader = P - (s/2R) right + (s/2R) up (spec §3.4).
    """
    out = position_maps.copy()
    for i, view in enumerate(views):
        c2w = view.c2w
        step = view.ortho_scale / (2.0 * resolution)
        shift = -step * c2w[:3, 0] + step * c2w[:3, 1]
        out[i] = out[i] + shift[:, None, None].astype(np.float32)
    return out
