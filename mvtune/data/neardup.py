"""Near-duplicate objects: fingerprints that find copies of one mesh even when no provenance links them.

The team's ten colour-jittered copies of each duck leaked across train and test because their sidecars were
lost. A fingerprint per object catches such copies from the data itself:
- perceptual hashes (64-bit DCT hashes) of its front and top renders, each taken twice: on the silhouette
  (alpha) and on the world-space normal map. Both ignore colour on purpose: recolouring, jitter and texture
  edits leave them unchanged, while a different shape changes them;
- a geometry fingerprint of the source mesh in the canonical frame: bounding-box extents and a histogram of
  surface distances from the centroid (seeded, area-weighted samples), so re-exported or re-meshed copies match.
Two objects are near-duplicates when their hashes differ in at most ``max_hash_bits`` bits and, where both have
one, their geometry fingerprints are within ``max_geometry_distance``; groups are the connected components.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvtune.data.validate import read_scene_list, scene_dir, scene_id, view_pose

log = logging.getLogger(__name__)

CACHE = "near_duplicates.json"
FINGERPRINT_VERSION = 1
#: Of the 256 hash bits (2 views x silhouette + normals x 64): copies of one mesh differ in 0-4 (anti-aliasing
#: of a re-export); different ducks of the procedural set differ in 30 or more.
MAX_HASH_BITS = 16
#: Geometry fingerprint distance (L1 over extents and the normalised radial histogram) for "same shape".
MAX_GEOMETRY_DISTANCE = 0.12
_HASH_SIZE, _DCT_SIZE = 8, 32
_RADIAL_BINS, _SAMPLES = 16, 4096


class NearDuplicateError(Exception):
    """Fingerprints cannot be computed or read; the message names the object or file."""


@dataclass
class Fingerprint:
    id: str
    stamp: str  # sizes and mtimes of the files it was computed from: a changed file recomputes it
    front: str | None  # hex, silhouette hash + normal hash (128 bits)
    top: str | None
    geometry: list[float] | None


# ---- hashes --------------------------------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)


_DCT = _dct_matrix(_DCT_SIZE)


def phash(gray: np.ndarray) -> int:
    """64-bit perceptual hash of a float image: signs of its low DCT frequencies against their median."""
    small = np.asarray(Image.fromarray(gray.astype(np.float32), "F").resize((_DCT_SIZE, _DCT_SIZE), Image.BILINEAR))
    low = (_DCT @ small @ _DCT.T)[:_HASH_SIZE, :_HASH_SIZE].ravel()
    bits = low > np.median(low[1:])  # the DC term sets the median off for every image alike
    return int("".join("1" if b else "0" for b in bits), 2)


def view_hash(color_path: Path, normal_path: Path) -> str:
    """Silhouette hash and normal-map hash of one view, as 32 hex digits."""
    alpha = np.asarray(Image.open(color_path).convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
    normal = np.asarray(Image.open(normal_path).convert("RGB"), dtype=np.float32) / 255.0
    # background to mid-grey in both, so only the object's shape and surface orientation count
    shade = np.where(alpha > 0.5, normal @ np.array([0.3, 0.5, 0.2], dtype=np.float32), 0.5)
    return f"{phash(alpha):016x}{phash(shade):016x}"


def _front_and_top(meta: dict) -> tuple[str | None, str | None]:
    """View indices closest to the front (0, 0) and the top (highest elevation above 60 deg) of a meta.json."""
    poses = {}
    for location in meta.get("locations", []):
        try:
            poses[str(location["index"])] = view_pose(location)
        except (KeyError, TypeError, ValueError):
            continue
    if not poses:
        return None, None
    front = min(poses, key=lambda i: abs(((poses[i][0] + 180) % 360) - 180) + abs(poses[i][1]))
    top = max(poses, key=lambda i: poses[i][1])
    return front, (top if poses[top][1] > 60 else None)


# ---- geometry ------------------------------------------------------------------------------------------------


def geometry_fingerprint(mesh_path: Path, up: str = "y") -> list[float]:
    """Extents (3) and a radial surface histogram (16) of the mesh in the canonical frame."""
    from mvtune.meshes import load_mesh, normalize_mesh

    mesh = normalize_mesh(load_mesh(mesh_path), up=up)
    triangles = np.concatenate([part.vertices[part.faces.astype(np.int64)] for part in mesh.parts if len(part.faces)])
    vertices = triangles.reshape(-1, 3)
    extents = vertices.max(0) - vertices.min(0)
    area = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    if not np.isfinite(area).all() or area.sum() <= 0:
        raise NearDuplicateError(f"{mesh_path}: no surface area to fingerprint")
    rng = np.random.default_rng(0)  # the same samples for the same mesh
    chosen = rng.choice(len(triangles), size=_SAMPLES, p=area / area.sum())
    u, v = rng.random((2, _SAMPLES, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    tri = triangles[chosen]
    points = tri[:, 0] + u * (tri[:, 1] - tri[:, 0]) + v * (tri[:, 2] - tri[:, 0])
    radius = np.linalg.norm(points - points.mean(0), axis=1)
    hist, _ = np.histogram(radius, bins=_RADIAL_BINS, range=(0.0, 0.9))
    return [round(float(x), 5) for x in (*extents, *(hist / _SAMPLES))]


def geometry_distance(a: list[float], b: list[float]) -> float:
    a_, b_ = np.asarray(a), np.asarray(b)
    return float(np.abs(a_[:3] - b_[:3]).sum() + np.abs(a_[3:] - b_[3:]).sum())


# ---- per object and per dataset ------------------------------------------------------------------------------


def _stamp(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        try:
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{path.name}:-")
    return f"v{FINGERPRINT_VERSION}|" + "|".join(parts)


def fingerprint_object(obj_dir: Path, object_id: str, source: str | None = None, up: str = "y",
                       cached: dict | None = None) -> Fingerprint:
    """The fingerprint of one rendered object (``cached`` is reused when its files did not change)."""
    try:
        meta = json.loads((obj_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NearDuplicateError(f"{object_id}: cannot read {obj_dir / 'meta.json'}: {exc}") from None
    front, top = _front_and_top(meta)
    files = [obj_dir / f"{kind}_{index}.webp" for index in (front, top) if index for kind in ("color", "normal")]
    source_path = Path(source) if source else None
    stamp = _stamp(files + ([source_path] if source_path else []))
    if cached and cached.get("stamp") == stamp:
        return Fingerprint(**cached)
    hashes = {}
    for name, index in (("front", front), ("top", top)):
        if index is None:
            hashes[name] = None
            continue
        try:
            hashes[name] = view_hash(obj_dir / f"color_{index}.webp", obj_dir / f"normal_{index}.webp")
        except OSError as exc:
            raise NearDuplicateError(f"{object_id}: cannot read view {index}: {exc}") from None
    geometry = None
    if source_path is not None and source_path.is_file():
        try:
            geometry = geometry_fingerprint(source_path, up)
        except Exception as exc:  # a mesh that no longer loads still has its render hashes
            log.warning("near-duplicates: no geometry fingerprint for %s (%s): %s", object_id, source_path, exc)
    return Fingerprint(object_id, stamp, hashes["front"], hashes["top"], geometry)


def read_cache(root: Path) -> dict[str, dict]:
    try:
        data = json.loads((Path(root) / CACHE).read_text(encoding="utf-8"))
        return data["objects"] if data.get("version") == FINGERPRINT_VERSION else {}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {}


def fingerprint_dataset(
    root: str | Path,
    ids: list[str] | None = None,
    manifest: dict | None = None,
    write_cache: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Fingerprint], list[str]]:
    """Fingerprints of the dataset's objects (default: its scene list), reusing ``near_duplicates.json``.

    Returns (fingerprints, problems); an object that cannot be fingerprinted is a problem, not an exception.
    """
    from mvtune.storage import write_json

    root = Path(root)
    if ids is None:
        ids = [scene_id(e) for e in read_scene_list(root / "scene_list.json")]
    if manifest is None:
        try:
            manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8")).get("objects", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            manifest = {}
    cache = read_cache(root)
    prints, problems = {}, []
    for done, object_id in enumerate(ids, 1):
        record = manifest.get(object_id) or {}
        try:
            prints[object_id] = fingerprint_object(scene_dir(root, object_id), object_id, record.get("source"),
                                                   record.get("up", "y"), cache.get(object_id))
        except NearDuplicateError as exc:
            problems.append(str(exc))
        if on_progress:
            on_progress(done, len(ids))
    if write_cache:
        try:
            write_json(root / CACHE, {"version": FINGERPRINT_VERSION,
                                      "objects": {i: asdict(f) for i, f in prints.items()}})
        except OSError as exc:  # a read-only dataset only loses the cache
            log.info("near-duplicates: cache not written (%s)", exc)
    return prints, problems


def _bits(fingerprints: list[Fingerprint]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32) uint8 hash bytes and (n, 2) masks of which views each object has."""
    data = np.zeros((len(fingerprints), 32), dtype=np.uint8)
    have = np.zeros((len(fingerprints), 2), dtype=bool)
    for row, fp in enumerate(fingerprints):
        for col, value in enumerate((fp.front, fp.top)):
            if value:
                data[row, col * 16:(col + 1) * 16] = np.frombuffer(bytes.fromhex(value), dtype=np.uint8)
                have[row, col] = True
    return data, have


_POPCOUNT = np.array([bin(k).count("1") for k in range(256)], dtype=np.uint16)


def _candidates(data: np.ndarray, have: np.ndarray, max_hash_bits: int) -> np.ndarray:
    """(m, 2) index pairs i < j that share at least one hash band: a superset of the pairs within
    ``max_hash_bits`` (pigeonhole: each view's 128 bits are cut into max_hash_bits // 2 + 1 bands, more bands
    than a near pair can differ in), so the exact check runs on few pairs instead of all n^2 / 2."""
    bits = np.unpackbits(data, axis=1)
    bands = max_hash_bits // 2 + 1
    pairs: set[tuple[int, int]] = set()
    for view in (0, 1):
        edges = np.linspace(view * 128, (view + 1) * 128, bands + 1).astype(int)
        rows = np.nonzero(have[:, view])[0]
        for lo, hi in zip(edges[:-1], edges[1:]):
            buckets: dict[bytes, list[int]] = {}
            for row, key in zip(rows, np.packbits(bits[rows, lo:hi], axis=1)):
                buckets.setdefault(key.tobytes(), []).append(int(row))
            for members in buckets.values():
                pairs.update((members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members)))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def near_duplicate_pairs(
    fingerprints: dict[str, Fingerprint],
    max_hash_bits: int = MAX_HASH_BITS,
    max_geometry_distance: float = MAX_GEOMETRY_DISTANCE,
) -> list[tuple[str, str, int, float | None]]:
    """(id a, id b, hash bits apart, geometry distance or None) of every near-duplicate pair, a < b."""
    ids = sorted(fingerprints)
    prints = [fingerprints[i] for i in ids]
    data, have = _bits(prints)
    candidates = _candidates(data, have, max_hash_bits)
    if not len(candidates):
        return []
    i, j = candidates[:, 0], candidates[:, 1]
    xor = np.bitwise_xor(data[i], data[j])
    shared = have[i] & have[j]  # compare only the views both objects have
    per_view = np.stack([_POPCOUNT[xor[:, :16]].sum(1), _POPCOUNT[xor[:, 16:]].sum(1)], axis=1)
    views = shared.sum(1)
    # a threshold per 256 bits, scaled to the views compared
    distance = np.where(views > 0, (per_view * shared).sum(1) * 2 // np.maximum(views, 1), 10**6)
    pairs = []
    for k in np.nonzero(distance <= max_hash_bits)[0]:
        a, b = prints[int(i[k])], prints[int(j[k])]
        geometry = None
        if a.geometry and b.geometry:
            geometry = geometry_distance(a.geometry, b.geometry)
            if geometry > max_geometry_distance:
                continue
        pairs.append((a.id, b.id, int(distance[k]), geometry))
    return pairs


def near_duplicate_groups(fingerprints: dict[str, Fingerprint], **thresholds) -> list[list[str]]:
    """Connected components of the near-duplicate pairs with two or more members, largest first."""
    parent = {i: i for i in fingerprints}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _, _ in near_duplicate_pairs(fingerprints, **thresholds):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for object_id in sorted(fingerprints):
        groups.setdefault(find(object_id), []).append(object_id)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
