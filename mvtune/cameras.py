"""Camera layouts and the world frame: the one source of truth for every stage.

World frame (spec dataset-format §0, §4.1): Z up, object front facing -Y, object normalised into the unit cube.
Azimuths as users write them ("user azimuth", 0 = front) become world azimuths (counted from +X towards +Y)
by subtracting 90 degrees. Camera-to-world matrices use Blender's camera convention: columns are image-right,
image-up, back (the camera looks along -Z) and the camera position.

The renderer, the dataset validator, the loader and inference all import the layouts from here, so a view
called "top" means the same pose everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Projection = Literal["ORTHO", "PERSP"]

#: Blender's ortho_scale used by MV-Adapter's data and inference: the view spans [-0.55, 0.55] world units.
ORTHO_SCALE = 1.1
#: Horizontal field of view (radians) of a 50 mm lens on a 32 mm sensor, as written into meta.json.
DEFAULT_FOV_X = 2.0 * math.atan(16.0 / 50.0)
#: Camera distance of the reference orthographic renders; for orthographic views it only matters for clipping.
ORTHO_DISTANCE = 1.5
#: Elevation used for the top/bottom views: exactly +-90 makes the look-at roll undefined.
POLE_ELEVATION = 89.99
#: User azimuth minus this is the world azimuth (the reference's "forward issue" shift).
AZIMUTH_SHIFT_DEG = 90.0


@dataclass(frozen=True)
class View:
    """One camera: its file index, the pose in user degrees and the projection."""

    index: str
    azimuth: float  # user azimuth, degrees (0 = front)
    elevation: float  # degrees, positive looks down from above
    projection: Projection = "ORTHO"
    ortho_scale: float = ORTHO_SCALE
    fov_x: float = DEFAULT_FOV_X  # radians, used for PERSP
    distance: float = ORTHO_DISTANCE

    @property
    def world_azimuth(self) -> float:
        """World azimuth in radians, as stored in meta.json (not wrapped, like the reference)."""
        return math.radians(self.azimuth - AZIMUTH_SHIFT_DEG)

    @property
    def c2w(self) -> np.ndarray:
        return c2w_from_angles(self.world_azimuth, math.radians(self.elevation), self.distance)


def c2w_from_angles(world_azimuth: float, elevation: float, distance: float) -> np.ndarray:
    """Camera-to-world (Blender camera axes) of a camera looking at the origin with world-up +Z."""
    position = distance * np.array(
        [
            math.cos(elevation) * math.cos(world_azimuth),
            math.cos(elevation) * math.sin(world_azimuth),
            math.sin(elevation),
        ]
    )
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0] = right
    c2w[:3, 1] = up
    c2w[:3, 2] = -forward
    c2w[:3, 3] = position
    return c2w


def pose_from_c2w(c2w: np.ndarray) -> tuple[float, float]:
    """(user azimuth, elevation) in degrees of a camera looking at the origin, recovered from its c2w."""
    position = np.asarray(c2w, dtype=np.float64)[:3, 3]
    distance = float(np.linalg.norm(position))
    elevation = math.degrees(math.asin(np.clip(position[2] / distance, -1.0, 1.0)))
    world_az = math.degrees(math.atan2(position[1], position[0]))
    return wrap_degrees(world_az + AZIMUTH_SHIFT_DEG), elevation


def plucker_vectors(c2w: np.ndarray) -> np.ndarray:
    """t2mv camera conditioning (spec §3.7): per view the constant [look direction, unit camera position],
    encoded (x + 1) / 2 into [0, 1]; (V, 6) from (V, 4, 4) Blender camera-to-world matrices."""
    c2w = np.asarray(c2w, dtype=np.float64)
    look = -c2w[:, :3, 2] / np.linalg.norm(c2w[:, :3, 2], axis=-1, keepdims=True)
    position = c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=-1, keepdims=True)
    return np.clip((np.concatenate([look, position], axis=-1) + 1.0) / 2.0, 0.0, 1.0)


def wrap_degrees(angle: float) -> float:
    """Angle in [0, 360)."""
    wrapped = angle % 360.0
    return 0.0 if math.isclose(wrapped, 360.0) else wrapped


def angle_difference(a: float, b: float) -> float:
    """Smallest absolute difference between two angles in degrees."""
    d = abs(wrap_degrees(a) - wrap_degrees(b))
    return min(d, 360.0 - d)


# Objaverse-Ortho10View: (index, user azimuth, elevation). 0006/0007 at 135/225 are our choice (unverified
# upstream, spec §4.2); the others are fixed by MV-Adapter's configs and inference cameras.
_ORTHO10 = [
    ("0000", 0.0, 0.0),
    ("0001", 90.0, 0.0),
    ("0002", 180.0, 0.0),
    ("0003", 270.0, 0.0),
    ("0004", 45.0, 0.0),
    ("0005", 315.0, 0.0),
    ("0006", 135.0, 0.0),
    ("0007", 225.0, 0.0),
    ("0008", 180.0, POLE_ELEVATION),
    ("0009", 180.0, -POLE_ELEVATION),
]

#: Rand6View-style random perspective views: our documented choice, the official parameters are unpublished.
RAND6_ELEVATION_RANGE = (-10.0, 40.0)
RAND6_DISTANCE = 3.0


def ortho10() -> list[View]:
    """The 10 orthographic views of Objaverse-Ortho10View, in file-index order."""
    return [View(index, az, el) for index, az, el in _ORTHO10]


def rand6(seed: int) -> list[View]:
    """Six random perspective views (azimuth uniform, elevation in RAND6_ELEVATION_RANGE), reproducible by seed."""
    rng = np.random.default_rng(seed)
    azimuths = rng.uniform(0.0, 360.0, size=6)
    elevations = rng.uniform(*RAND6_ELEVATION_RANGE, size=6)
    return [
        View(f"{i:04d}", float(az), float(el), projection="PERSP", distance=RAND6_DISTANCE)
        for i, (az, el) in enumerate(zip(azimuths, elevations))
    ]


def custom(poses: list[tuple[float, float, Projection]]) -> list[View]:
    """Views from (user azimuth, elevation, projection) triples, indexed 0000, 0001, ..."""
    views = []
    for i, (az, el, projection) in enumerate(poses):
        if projection not in ("ORTHO", "PERSP"):
            raise ValueError(f"view {i}: projection must be ORTHO or PERSP, got {projection!r}")
        if abs(el) > 90.0:
            raise ValueError(f"view {i}: elevation {el} is outside [-90, 90]")
        if abs(el) == 90.0:
            el = math.copysign(POLE_ELEVATION, el)
        distance = ORTHO_DISTANCE if projection == "ORTHO" else RAND6_DISTANCE
        views.append(View(f"{i:04d}", float(az), float(el), projection=projection, distance=distance))
    return views


def layout(name: str, seed: int = 0) -> list[View]:
    """A layout by name: 'ortho10', 'rand6' (seeded) or a custom spec 'az:el[:ORTHO|PERSP],az:el,...'."""
    if name == "ortho10":
        return ortho10()
    if name == "rand6":
        return rand6(seed)
    if ":" in name:
        poses = []
        for item in name.split(","):
            parts = item.strip().split(":")
            if len(parts) not in (2, 3):
                raise ValueError(f"custom view {item!r}: expected 'azimuth:elevation[:ORTHO|PERSP]'")
            projection = parts[2].upper() if len(parts) == 3 else "ORTHO"
            poses.append((float(parts[0]), float(parts[1]), projection))
        return custom(poses)
    raise ValueError(f"unknown layout {name!r}: use ortho10, rand6 or 'az:el[:proj],...'")


# What each model variant feeds its attention, in the order its processor assumes (spec §4.2-§4.5).
@dataclass(frozen=True)
class VariantViews:
    names: tuple[str, ...]  # role of each position
    poses: tuple[tuple[float, float], ...]  # (user azimuth, elevation) degrees
    ortho10_indices: tuple[str, ...]  # where Objaverse-Ortho10View stores them


VARIANTS: dict[str, VariantViews] = {
    "tg2mv": VariantViews(
        names=("front", "right", "back", "left", "top", "bottom"),
        poses=((0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0), (180.0, POLE_ELEVATION), (180.0, -POLE_ELEVATION)),
        ortho10_indices=("0000", "0001", "0002", "0003", "0008", "0009"),
    ),
    "t2mv": VariantViews(
        names=("front", "front-right", "right", "back", "left", "front-left"),
        poses=((0.0, 0.0), (45.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0), (315.0, 0.0)),
        ortho10_indices=("0000", "0004", "0001", "0002", "0003", "0005"),
    ),
}

#: Poses match when azimuth and elevation agree within this many degrees.
POSE_TOLERANCE_DEG = 0.5


def variant_views(variant: str) -> VariantViews:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}: expected one of {sorted(VARIANTS)}") from None


def poses_match(found: tuple[float, float], expected: tuple[float, float], tol: float = POSE_TOLERANCE_DEG) -> bool:
    """Same pose up to tol degrees; at the poles the azimuth still matters (it sets the image roll)."""
    return abs(found[1] - expected[1]) <= tol and angle_difference(found[0], expected[0]) <= tol


def variant_cameras(variant: str) -> list[View]:
    """The variant's views as orthographic cameras (inference renders its condition maps with these)."""
    spec = variant_views(variant)
    return [View(f"{i:04d}", az, el) for i, (az, el) in enumerate(spec.poses)]
