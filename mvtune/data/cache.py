"""Preprocessed cache: one object's views at training resolution in a safetensors file, so decoding and resizing
the 1024² files happens once instead of every epoch.

Each file holds exactly what the loader would compute before its float stage: colour and normal RGBA as uint8
(after the reference's PIL resizes), depth as float32 and its mask (after the OpenCV nearest resize), the
chosen views' camera-to-world matrices and the ortho scale. Rebuilding from it is therefore bit-identical to
loading the files. A file is valid only for the same source files (path, size, mtime), the same resolution,
variant and format version; anything else is rebuilt on the next read. About 42 MB per tg2mv object at 768².
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Bump when the cached arrays change meaning.
CACHE_VERSION = "2"


def cache_file(cache_dir: Path, object_id: str, variant: str, height: int, width: int) -> Path:
    """One file per object and training shape, so runs at other sizes or variants can share a cache folder."""
    return Path(cache_dir) / f"{variant}-{height}x{width}" / object_id[:2] / f"{object_id}.safetensors"


def fingerprint(files: list[Path], **settings) -> str:
    """Changes when any source file is rewritten or a setting that shapes the arrays changes."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True).encode())
    for path in files:
        st = os.stat(path)
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_cache(
    path: Path, expected: str | Callable[[dict[str, str]], str]
) -> tuple[dict[str, np.ndarray], dict] | None:
    """The arrays and metadata, or None when the file is absent, stale or unreadable.

    ``expected`` is the fingerprint, or a function of the file's metadata giving it (when the source files
    depend on what was cached), so a hit opens the file once.
    """
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != (expected(meta) if callable(expected) else expected):
                return None
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception:  # a torn, foreign or outdated file is just a miss; it gets rewritten
        return None


def write_cache(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Atomic write, so concurrent DataLoader workers never read half a file."""
    from safetensors.numpy import save_file

    from mvtune.storage import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def build_cache(
    root: str | Path,
    cache_dir: str | Path,
    scene_list: str | Path | None = None,
    variant: str = "tg2mv",
    height: int = 768,
    width: int = 768,
    on_progress=None,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Fill the cache for every object of a dataset (or of its shard) ahead of training; returns counts and
    the failures.

    Objects already cached with the same files and settings are only checked, so a rerun is cheap. One build
    per cache folder at a time (DatasetError naming the holder), or the shards of one build together (each
    takes the scene-list positions k % n == i, one file per object, so they never write the same file);
    training readers may fill it meanwhile (every file is written atomically).
    """
    from mvtune.data.loader import DatasetError
    from mvtune.storage import FolderLockedError, folder_lock

    what = f"mvtune dataset cache {root}" + (f" --shard {shard[0]}/{shard[1]}" if shard else "")
    try:
        with contextlib.ExitStack() as held:
            held.enter_context(folder_lock(cache_dir, what, shared=shard is not None))
            if shard is not None:
                held.enter_context(folder_lock(cache_dir, what, name=f"shard-{shard[0]}-of-{shard[1]}"))
            return _build_cache(Path(root), cache_dir, scene_list, variant, height, width, on_progress, shard)
    except FolderLockedError as exc:
        raise DatasetError(str(exc)) from None


def _build_cache(root: Path, cache_dir, scene_list, variant: str, height: int, width: int, on_progress,
                 shard) -> dict:
    from mvtune.data.loader import MultiviewDataset
    from mvtune.shards import shard_positions

    dataset = MultiviewDataset(
        root, scene_list or root / "scene_list.json", variant=variant, height=height, width=width,
        cache_dir=cache_dir, allow_missing_captions=True,
    )
    mine = shard_positions(len(dataset), shard)
    done, problems = 0, []
    for count, i in enumerate(mine, 1):
        try:
            dataset.load_views(i)
            done += 1
        except Exception as exc:  # reported, so one bad object does not stop the batch
            problems.append({"id": dataset.ids[i], "reason": str(exc)})
        if on_progress:
            on_progress(count, len(mine))
    return {"cached": done, "failed": len(problems), "errors": problems, "cache_dir": str(cache_dir)}
