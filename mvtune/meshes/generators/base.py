"""What every mesh generator shares: the backend interface, the per-item output contract and its checks.

A backend is one module exposing a ``BACKEND`` object with the attributes of :class:`Backend`. The orchestration
in :mod:`mvtune.meshes.generators.run` never imports a backend's models itself: it starts worker processes
(:mod:`mvtune.meshes.generators.worker`) that call ``Backend.load`` and then ``Runner.generate`` once per item, so a
backend's path manipulation, CUDA state or a hung model stays out of the orchestrating process.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

MESH_FILE = "mesh.glb"
CAPTION_FILE = "mesh.txt"
PROVENANCE_FILE = "mesh.json"
#: Item ids become folder names: the prompt rows' ids ("firefighter-0003") already look like this.
ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class GeneratorError(Exception):
    """A generation run that cannot start or an item that cannot be made; the message names the item or option."""


class Runner(Protocol):
    """A loaded backend inside a worker: makes one item at a time."""

    def generate(self, row: dict, seed: int, out_dir: Path) -> dict:
        """Write ``out_dir/mesh.glb``; return ``{"caption": str, "provenance": {...}}`` (extra JSON fields)."""


class Backend(Protocol):
    """One mesh generator. ``describe`` and ``preflight`` run in the orchestrator (cheap, no model imports);
    ``load`` runs in a worker process, once per worker."""

    name: str
    licence: str  # a licence id of mvtune.licences
    Options: type[BaseModel]

    def describe(self, options: BaseModel) -> dict:
        """``{"model": ..., "version": ...}`` for the provenance of every item."""

    def preflight(self, options: BaseModel) -> None:
        """Raise GeneratorError (with the fix) for missing folders or settings before any worker starts."""

    def load(self, options: BaseModel, device: str) -> Runner:
        """Import the backend's packages and load its models on ``device``; raise GeneratorError with install
        steps when they are missing."""


def item_seed(base_seed: int, row: dict) -> int:
    """The seed of one item: stable across reruns, shards and row order, different per item and per --seed."""
    key = f"{base_seed}:{row['id']}:{row.get('seed')}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % (2**31)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> (i, n); None -> the whole set (0, 1)."""
    from mvtune.shards import parse_shard as parse

    try:
        return parse(text) or (0, 1)
    except ValueError as exc:
        raise GeneratorError(f"--{exc}") from None


def in_shard(item_id: str, shard: tuple[int, int]) -> bool:
    """Shard membership by a hash of the id, so shards never overlap and do not depend on row order."""
    index, count = shard
    return count == 1 or int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) % count == index


def write_provenance(item_dir: Path, names: list[str], record: dict) -> None:
    """The item's provenance, written last, so it is its done marker: it lists the item's files with size and
    sha256 (generators and importers write the same record)."""
    from mvtune.storage import sha256_file, write_json

    files = {name: {"bytes": (item_dir / name).stat().st_size, "sha256": sha256_file(item_dir / name)} for name in names}
    write_json(item_dir / PROVENANCE_FILE, record | {"files": files})


def is_done(item_dir: Path) -> bool:
    """The provenance file exists and every file it lists is there with its recorded size."""
    import json

    from mvtune.storage import sizes_match

    try:
        files = json.loads((item_dir / PROVENANCE_FILE).read_text(encoding="utf-8"))["files"]
        return sizes_match({name: entry["bytes"] for name, entry in files.items()}, item_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def check_output(path: Path) -> dict[str, Any]:
    """Refuse a broken generator output before it reaches a dataset: no faces, NaN vertices, no texture or an
    empty one (zero pixels, fully transparent, or one flat colour). Returns a few statistics for provenance."""
    from mvtune.meshes.load import load_mesh
    from mvtune.meshes.mesh import MeshError

    try:
        mesh = load_mesh(path)
    except MeshError as exc:
        raise GeneratorError(f"broken output: {exc}") from None
    textured = [p for p in mesh.parts if p.texture is not None]
    if not textured and not any(p.vertex_colors is not None for p in mesh.parts):
        raise GeneratorError(f"broken output: {path} has no texture and no vertex colours (untextured mesh)")
    for part in textured:
        texture = part.texture
        if texture.size == 0:
            raise GeneratorError(f"broken output: {path} part {part.name!r} has an empty (0-pixel) texture")
        if not texture[..., 3].any():
            raise GeneratorError(f"broken output: {path} part {part.name!r} has a fully transparent texture")
        if (texture == texture.reshape(-1, 4)[0]).all():
            raise GeneratorError(
                f"broken output: {path} part {part.name!r} has an empty texture (one flat colour "
                f"{tuple(int(c) for c in texture.reshape(-1, 4)[0])})"
            )
    return {
        "faces": mesh.num_faces,
        "vertices": int(sum(len(p.vertices) for p in mesh.parts)),
        "parts": len(mesh.parts),
        "textures": [list(p.texture.shape[:2]) for p in textured],
        "bounds": np.round(mesh.bounds, 6).tolist(),
    }
