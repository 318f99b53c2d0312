"""Batch rendering of a mesh collection into an Objaverse-Ortho10View-style dataset.

Layout written (spec dataset-format §1, §2): ``OUT/<id[:2]>/<id>/{color,depth,normal}_NNNN.*`` + ``meta.json``,
plus ``scene_list.json`` (ids), ``captions.json`` (id -> caption), ``manifest.json`` (provenance per object),
``errors.jsonl`` (one line per mesh that failed), ``render_config.json`` and ``render_summary.json``.

Crash safety: one writer per dataset (mvtune.storage.folder_lock; a second render fails at once naming the
holder, or waits with ``wait=True``). Each object is rendered into a private ``.<id>.partial`` folder that is
renamed into place when complete, and counts as done only when its marker (written last) records the same
source hash and settings and lists every file with its size. A rerun removes what a killed run left and renders
those objects again, so an interrupted run plus a rerun gives the same dataset as one uninterrupted run.
The top-level files are rebuilt from the per-object records at the end, in input order.

Shards (``shard=(i, n)``, Slurm array tasks): shard i renders the meshes at input positions k with k % n == i,
holding the dataset lock in shared mode and its own shard lock, so shards of one dataset run together but never
touch each other's objects; its index files go to ``.shards/<i>-of-<n>/``. ``merge_shards`` then writes the
top-level index files, byte-identical to those of one unsharded render of the same meshes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mvtune import __version__, cameras
from mvtune.meshes.load import (
    COLOR_RULES_VERSION, DEFAULT_MAX_TEXTURE_PIXELS, DEFAULT_MAX_TOTAL_TEXTURE_PIXELS, SUPPORTED_EXTENSIONS,
)
from mvtune.shards import shard_positions
from mvtune.storage import (
    DONE_MARKER, FolderLockedError, atomic_write, done_marker_ok, folder_lock, sha256_file, write_done_marker,
    write_json,
)

log = logging.getLogger(__name__)

OBJECT_RECORD = "provenance.json"
SCENE_LIST = "scene_list.json"
CAPTIONS = "captions.json"
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
RENDER_CONFIG = "render_config.json"
SHARDS_DIR = ".shards"
#: Written last into a shard's folder: which shard, its object positions, its config. Present = shard complete.
SHARD_RECORD = "shard.json"
#: A worker process that dies (e.g. a driver crash) takes its in-flight objects down; retry them this often.
MAX_ATTEMPTS = 3


class DatasetWriteError(Exception):
    """The batch cannot start (bad input path, unwritable output); per-mesh failures go to errors.jsonl instead."""


class RenderConfig(BaseModel):
    """Everything that decides the bytes of a rendered dataset; printed into OUT/render_config.json."""

    model_config = ConfigDict(extra="forbid")

    input: Path
    out_dir: Path
    layout: str = "ortho10"
    resolution: int = Field(1024, ge=16, le=8192)
    workers: int = Field(1, ge=1, le=256)
    captions: Path | None = None
    lighting: str = "studio"
    up: Literal["y", "z"] = "y"
    seed: int = 0
    position: bool = False
    max_texture_pixels: int = Field(DEFAULT_MAX_TEXTURE_PIXELS, ge=1)
    max_total_texture_pixels: int = Field(DEFAULT_MAX_TOTAL_TEXTURE_PIXELS, ge=1)
    #: Let meshes read files outside their own folder (an MTL's ``../`` texture, an absolute mtllib).
    allow_outside_files: bool = False
    #: (i, n): render only shard i of n (input positions k with k % n == i); None renders everything.
    shard: tuple[int, int] | None = None

    @field_validator("shard", mode="before")
    @classmethod
    def _parse_shard(cls, value):
        from mvtune.shards import parse_shard

        return parse_shard(value)

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str) -> str:
        cameras.layout(value)  # raises ValueError naming the problem
        return value

    @field_validator("lighting")
    @classmethod
    def _known_lighting(cls, value: str) -> str:
        # Checked here, not in the workers: a bad path would otherwise fail every mesh one by one.
        if value in ("studio", "albedo"):
            return value
        path = Path(value)
        if path.suffix.lower() not in (".exr", ".hdr"):
            raise ValueError(f"{value!r} is not 'studio', 'albedo' or an .exr/.hdr environment map")
        if not path.is_file():
            raise ValueError(f"environment map {value} not found")
        return value

    def record(self) -> dict:
        """The config as written to render_config.json; the shard is left out, so the shards of one render
        and an unsharded render of the same meshes write the same file."""
        return json.loads(self.model_dump_json(exclude={"shard"}))

    def settings(self) -> dict:
        """The subset that changes rendered files: a done marker is valid only for the same settings."""
        return {
            "renderer": f"mvtune {__version__}",
            "color_rules": COLOR_RULES_VERSION,
            "layout": self.layout,
            "resolution": self.resolution,
            "lighting": self.lighting,
            "up": self.up,
            "seed": self.seed,
            "position": self.position,
        }


@dataclass
class Summary:
    total: int = 0
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("total", "rendered", "skipped", "failed", "seconds")} | {
            "errors": self.errors
        }


def discover_meshes(input_path: Path) -> list[Path]:
    """A mesh file, a folder (searched recursively) or a list file with one path per line (relative to it)."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise DatasetWriteError(f"input {input_path} does not exist")
    if input_path.is_dir():
        found = sorted(p for p in input_path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
        if not found:
            raise DatasetWriteError(f"no meshes ({', '.join(SUPPORTED_EXTENSIONS)}) found under {input_path}")
        return found
    if input_path.suffix.lower() in SUPPORTED_EXTENSIONS:
        return [input_path]
    if input_path.suffix.lower() in (".txt", ".lst", ".list"):
        paths = []
        for line in input_path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                paths.append(p if p.is_absolute() else input_path.parent / p)
        if not paths:
            raise DatasetWriteError(f"list file {input_path} names no meshes")
        return paths
    raise DatasetWriteError(
        f"input {input_path}: expected a mesh ({', '.join(SUPPORTED_EXTENSIONS)}), a folder or a .txt list of paths"
    )


def assign_ids(paths: Iterable[Path]) -> dict[str, Path]:
    """Readable, unique, filesystem-safe ids from file stems; clashes get a short hash of the full path.

    A generated or imported item (`<item id>/mesh.glb`, mvtune.meshes.generators) is named by its folder."""
    from mvtune.meshes.generators.base import MESH_FILE

    ids: dict[str, Path] = {}
    for path in paths:
        stem = path.parent.name if path.name == MESH_FILE else path.stem
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "mesh"
        candidate = base
        if candidate in ids:
            candidate = f"{base}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
        ids[candidate] = path
    return ids


def object_dir(root: Path, object_id: str) -> Path:
    return root / object_id[:2] / object_id


def source_files(path: Path) -> list[Path]:
    """The mesh file plus the files it references (OBJ: MTL and its maps; .gltf: buffers and images), so that
    editing a texture re-renders the object; a GLB embeds them in its own bytes."""
    files = [path]
    suffix = path.suffix.lower()
    referenced: list[Path] = []
    try:
        if suffix == ".obj":
            referenced += [path.with_name(path.name + ".mtl"), path.with_suffix(".mtl")]
            for line in path.read_text(errors="replace").splitlines():
                if line.strip().startswith("mtllib"):
                    referenced.append(path.parent / line.strip()[6:].strip())
            for mtl in [p for p in referenced if p.is_file()]:
                for line in mtl.read_text(errors="replace").splitlines():
                    key, _, name = line.strip().partition(" ")
                    if key.lower().startswith("map_") and name.strip():
                        referenced.append(mtl.parent / name.strip())
        elif suffix == ".gltf":
            header = json.loads(path.read_text(encoding="utf-8"))
            for item in header.get("buffers", []) + header.get("images", []):
                uri = item.get("uri") if isinstance(item, dict) else None
                if isinstance(uri, str) and uri and not uri.startswith("data:"):
                    referenced.append(path.parent / unquote(uri))
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # the loader reports unreadable files with a better message
    for p in referenced:
        if p.is_file() and p not in files:
            files.append(p)
    return files


def source_hash(path: Path) -> str:
    """sha256 over the mesh file and the files it references: the done-marker key and the split grouping key."""
    files = source_files(path)
    if len(files) == 1:
        return sha256_file(path)
    digest = hashlib.sha256()
    for p in files:
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()


def read_sidecars(path: Path) -> tuple[str | None, dict]:
    """Caption from ``<mesh>.txt`` and provenance fields from ``<mesh>.json`` (either ``stem.*`` or ``name.*``)."""
    caption = None
    meta: dict = {}
    for candidate in (path.with_suffix(".txt"), path.with_name(path.name + ".txt")):
        if candidate.exists():
            caption = candidate.read_text(encoding="utf-8").strip()
            break
    for candidate in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if candidate.exists():
            try:
                meta = json.loads(candidate.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"sidecar {candidate} is not valid JSON: {exc}") from None
            if not isinstance(meta, dict):
                raise ValueError(f"sidecar {candidate} must hold a JSON object")
            break
    return caption, meta


def is_done(obj_dir: Path, digest: str, settings: dict) -> bool:
    """Marker present, same source and settings, and every file it lists still there with its size."""
    return done_marker_ok(obj_dir, {"source_sha256": digest, "settings": settings})


def _private_dirs(obj_dir: Path) -> tuple[Path, Path]:
    """(folder an object is rendered into, folder its outdated render is moved to before deletion)."""
    return obj_dir.parent / f".{obj_dir.name}.partial", obj_dir.parent / f".{obj_dir.name}.old"


def _clear_leftovers(obj_dir: Path) -> None:
    for leftover in _private_dirs(obj_dir):
        if leftover.exists():
            shutil.rmtree(leftover)


# ---- worker side -------------------------------------------------------------------------------------------

_renderers: dict[tuple[int, str], object] = {}


def _worker_renderer(cfg: RenderConfig):
    """One GL context per process and settings, created on first use and reused for every object."""
    key = (cfg.resolution, cfg.lighting)
    if key not in _renderers:
        from mvtune.render.gl import Renderer

        for old in _renderers.values():  # one live context per process is enough
            old.release()
        _renderers.clear()
        _renderers[key] = Renderer(resolution=cfg.resolution, lighting=cfg.lighting)
    return _renderers[key]


def write_object_views(renderer, mesh, views, obj_dir: Path, position: bool = False, encode_threads: int = 2) -> dict:
    """Render `views` and write their files plus meta.json into obj_dir; returns seconds per stage.

    Encoding (WebP, EXR) runs in threads while the next view renders: Pillow and OpenEXR release the GIL,
    and encoding is about half the work per object on a software GL renderer.
    """
    from concurrent.futures import ThreadPoolExecutor

    from mvtune.render import files

    timings: dict[str, float] = {}

    def add(stage_seconds: dict[str, float]) -> None:
        for key, seconds in stage_seconds.items():
            timings[key] = timings.get(key, 0.0) + seconds

    images = renderer.render_iter(mesh, views, position=position)
    if encode_threads > 0:
        with ThreadPoolExecutor(encode_threads) as pool:
            futures = [pool.submit(files.write_view_files, obj_dir, v.index, im, position) for v, im in zip(views, images)]
            for future in futures:
                add(future.result())
    else:
        for view, image in zip(views, images):
            add(files.write_view_files(obj_dir, view.index, image, position))
    write_json(obj_dir / "meta.json", files.build_meta(views, renderer.resolution))
    return {**renderer.last_timings, **timings}


def render_object(cfg: RenderConfig, object_id: str, src: Path, digest: str) -> dict:
    """Render one mesh into its object folder; returns its provenance record. Raises on any failure."""
    from mvtune.meshes import load_mesh, normalize_mesh

    caption, sidecar = read_sidecars(src)
    mesh = load_mesh(
        src, max_texture_pixels=cfg.max_texture_pixels, max_total_texture_pixels=cfg.max_total_texture_pixels,
        allow_outside=cfg.allow_outside_files,
    )
    mesh = normalize_mesh(mesh, up=cfg.up)
    views = cameras.layout(cfg.layout, seed=cfg.seed)

    obj_dir = object_dir(cfg.out_dir, object_id)
    partial, old = _private_dirs(obj_dir)
    _clear_leftovers(obj_dir)
    partial.mkdir(parents=True)
    write_object_views(_worker_renderer(cfg), mesh, views, partial, cfg.position)

    record = {
        "id": object_id,
        "source": str(src.resolve()),
        "source_sha256": digest,
        "group": sidecar.get("group", digest),
        "parent": sidecar.get("parent"),
        "concept": sidecar.get("concept"),
        "licence": sidecar.get("licence", sidecar.get("license")),
        "generator": sidecar.get("generator"),
        "caption": caption,
        "warnings": list(mesh.warnings),
        "to_canonical": mesh.to_frame.tolist(),
        **cfg.settings(),
    }
    write_json(partial / OBJECT_RECORD, record)
    write_done_marker(partial, sorted(p.name for p in partial.iterdir()), {"source_sha256": digest, "settings": cfg.settings()})
    if obj_dir.exists():  # an outdated render: out of the way first, deleted once the new one is in place
        # Marker first, so that nothing can take the moved-aside folder for a done object.
        (obj_dir / DONE_MARKER).unlink(missing_ok=True)
        os.rename(obj_dir, old)
    os.rename(partial, obj_dir)
    if old.exists():
        shutil.rmtree(old)
    return record


def _render_task(cfg: RenderConfig, object_id: str, src: Path, digest: str) -> tuple[str, dict | None, str | None]:
    try:
        return object_id, render_object(cfg, object_id, src, digest), None
    except Exception as exc:  # one bad mesh must never stop the batch
        return object_id, None, f"{type(exc).__name__}: {exc}"


#: prctl(2) option: the signal the kernel sends a process when its parent dies.
PR_SET_PDEATHSIG = 1


def _worker_init(parent_pid: int) -> None:
    """Bind a render worker's life to its parent's: a killed parent must not leave workers writing into the
    dataset while the next run (which gets the lock as soon as the parent is gone) renders the same objects."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    else:  # no parent-death signal: watch the parent instead
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.2)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    # Ctrl-C reaches the whole process group: the parent decides, and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---- driver side -------------------------------------------------------------------------------------------


def shard_dir(out_dir: Path, shard: tuple[int, int]) -> Path:
    """Where shard i of n keeps its index files (scene list, captions, manifest, errors, shard record)."""
    return Path(out_dir) / SHARDS_DIR / f"{shard[0]}-of-{shard[1]}"


#: Settings a user chooses; a dataset rendered with other values would be re-rendered as a whole.
USER_SETTINGS = ("layout", "resolution", "lighting", "up", "seed", "position")


def settings_change(cfg: RenderConfig) -> str | None:
    """How the dataset's recorded settings (render_config.json) differ from cfg's, or None (same, or new folder)."""
    try:
        previous = json.loads((cfg.out_dir / RENDER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    current = cfg.record()
    changes = [f"{key} {previous.get(key)!r} -> {current[key]!r}" for key in USER_SETTINGS
               if key in previous and previous[key] != current[key]]
    return ", ".join(changes) or None


def render_dataset(
    cfg: RenderConfig, on_progress: Callable[[int, int, str], None] | None = None, *, wait: bool = False,
    force: bool = False,
) -> Summary:
    """Render every mesh of ``cfg.input`` (or of its shard) that is not already done; returns counts and failures.

    Holds the dataset lock for the whole run (shared with other shards when ``cfg.shard`` is set); a held lock
    raises DatasetWriteError naming its holder, or is waited for with ``wait``. SIGTERM, like Ctrl-C, stops the
    workers and raises KeyboardInterrupt; finished objects are kept. A dataset rendered with other settings is
    refused (it would be re-rendered as a whole) unless ``force``.
    """
    start = time.perf_counter()
    meshes = assign_ids(discover_meshes(cfg.input))
    out = cfg.out_dir
    change = settings_change(cfg)
    if change and not force:
        raise DatasetWriteError(
            f"{out} was rendered with other settings ({change}); rendering into it would re-render every object. "
            "Pass --force to re-render it with the new settings, or choose a new output folder"
        )
    if change:
        log.warning("%s: settings changed (%s): every object is re-rendered", out, change)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetWriteError(f"cannot write to output folder {out}: {exc}") from None
    what = f"mvtune render {cfg.input}" + (f" --shard {cfg.shard[0]}/{cfg.shard[1]}" if cfg.shard else "")
    with contextlib.ExitStack() as held:
        try:
            if cfg.shard is None:
                held.enter_context(folder_lock(out, what, wait=wait))
            else:
                held.enter_context(folder_lock(out, what, shared=True, wait=wait))
                held.enter_context(folder_lock(out, what, name=f"shard-{cfg.shard[0]}-of-{cfg.shard[1]}", wait=wait))
        except FolderLockedError as exc:
            raise DatasetWriteError(str(exc)) from None
        with _sigterm_interrupts():
            summary = _render_locked(cfg, meshes, on_progress)
    summary.seconds = round(time.perf_counter() - start, 3)
    index_dir = out if cfg.shard is None else shard_dir(out, cfg.shard)
    write_json(index_dir / "render_summary.json", summary.to_json())
    return summary


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (Slurm's scancel, a pipeline's cancel) takes the Ctrl-C path: workers stopped, no half objects."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _render_locked(cfg: RenderConfig, meshes: dict[str, Path], on_progress) -> Summary:
    out = cfg.out_dir
    index_dir = out if cfg.shard is None else shard_dir(out, cfg.shard)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        if cfg.shard is None:
            write_json(out / RENDER_CONFIG, cfg.record())
        else:
            (index_dir / SHARD_RECORD).unlink(missing_ok=True)  # unfinished until this run writes it again
    except OSError as exc:
        raise DatasetWriteError(f"cannot write to output folder {out}: {exc}") from None
    for leftover in index_dir.glob(".*.tmp"):  # temp files of a run killed mid-write (see storage.atomic_write)
        leftover.unlink(missing_ok=True)
    captions_override = _load_captions(cfg.captions) if cfg.captions else {}

    positions = {object_id: k for k, object_id in enumerate(meshes)}
    items = list(meshes.items())
    owned = dict(items[k] for k in shard_positions(len(items), cfg.shard))
    summary = Summary(total=len(owned))
    errors: dict[str, dict] = {}
    todo: list[tuple[str, Path, str]] = []
    digests: dict[str, str] = {}
    for object_id, src in owned.items():
        obj_dir = object_dir(out, object_id)
        _clear_leftovers(obj_dir)  # of a killed run; only this run (or shard) writes this object
        try:
            digest = source_hash(src)
        except OSError as exc:
            _record_error(summary, errors, object_id, src, f"cannot read source: {exc}")
            continue
        digests[object_id] = digest
        if is_done(obj_dir, digest, cfg.settings()):
            summary.skipped += 1
        else:
            todo.append((object_id, src, digest))

    done_count = summary.skipped + summary.failed

    def finished(object_id: str, record: dict | None, error: str | None) -> None:
        nonlocal done_count
        done_count += 1
        if error is None:
            summary.rendered += 1
        else:
            _record_error(summary, errors, object_id, owned[object_id], error)
        if on_progress:
            on_progress(done_count, summary.total, object_id)

    if cfg.workers == 1:
        for object_id, src, digest in todo:
            finished(*_render_task(cfg, object_id, src, digest))
    else:
        _render_in_pool(cfg, todo, finished)

    # Input order, not completion order: the same meshes give the same errors.jsonl however they were scheduled.
    summary.errors = [errors[object_id] for object_id in owned if object_id in errors]
    ids, captions, manifest = _index_entries(cfg, owned, captions_override, digests)
    _write_index_files(index_dir, ids, captions, manifest, summary.errors)
    if cfg.shard is not None:
        write_json(index_dir / SHARD_RECORD, {
            "shard": list(cfg.shard),
            "meshes": len(meshes),
            "positions": {object_id: positions[object_id] for object_id in owned},
            "config": cfg.record(),
        })
    return summary


def _render_in_pool(cfg: RenderConfig, todo: list[tuple[str, Path, str]], finished) -> None:
    """Parallel workers, each with its own GL context; objects in flight when a worker dies are retried."""
    attempts = {object_id: 0 for object_id, _, _ in todo}
    pending = list(todo)
    while pending:
        retry: list[tuple[str, Path, str]] = []
        pool = ProcessPoolExecutor(
            max_workers=cfg.workers, mp_context=get_context("spawn"), initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        try:
            futures: dict[Future, tuple[str, Path, str]] = {
                pool.submit(_render_task, cfg, *task): task for task in pending
            }
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in done:
                    task = futures[future]
                    try:
                        finished(*future.result())
                    except BrokenProcessPool:
                        attempts[task[0]] += 1
                        if attempts[task[0]] >= MAX_ATTEMPTS:
                            finished(task[0], None, "worker process died while rendering this mesh")
                        else:
                            retry.append(task)
        except BaseException:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)
        pending = retry


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel queued objects and end the running workers now (shutdown alone would let them finish the queue).

    concurrent.futures has no public way to stop busy workers before Python 3.14 (terminate_workers), hence
    the private process table.
    """
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(10)


def _record_error(summary: Summary, errors: dict[str, dict], object_id: str, src: Path, reason: str) -> None:
    summary.failed += 1
    errors[object_id] = {"id": object_id, "source": str(src), "reason": reason}
    log.error("%s (%s): %s", object_id, src, reason)


def _load_captions(path: Path) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetWriteError(f"captions file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DatasetWriteError(f"captions file {path} must map ids (or mesh file names) to caption strings")
    return data


def _index_entries(
    cfg: RenderConfig, meshes: dict[str, Path], captions_override: dict[str, str], digests: dict[str, str]
) -> tuple[list[str], dict[str, str], dict[str, dict]]:
    """Scene list, captions and manifest entries of every done object, from the per-object records.

    Only renders of the current source bytes and settings count: an object whose re-render failed this run
    keeps its old folder on disk but must not be listed with stale files.
    """
    ids, captions, manifest = [], {}, {}
    for object_id, src in meshes.items():
        obj_dir = object_dir(cfg.out_dir, object_id)
        if object_id not in digests or not is_done(obj_dir, digests[object_id], cfg.settings()):
            continue
        record = json.loads((obj_dir / OBJECT_RECORD).read_text())
        ids.append(object_id)
        manifest[object_id] = record
        caption = next(
            (captions_override[k] for k in (object_id, src.name, src.stem) if k in captions_override),
            record.get("caption"),
        )
        if caption is not None:
            captions[object_id] = caption
    return ids, captions, manifest


def _write_index_files(
    folder: Path, ids: list[str], captions: dict[str, str], manifest: dict[str, dict], errors: list[dict]
) -> None:
    write_json(folder / SCENE_LIST, ids)
    write_json(folder / CAPTIONS, captions)
    write_json(folder / MANIFEST, {"mvtune_version": __version__, "objects": manifest})
    text = "".join(json.dumps(entry) + "\n" for entry in errors)
    atomic_write(folder / ERRORS, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def merge_shards(out_dir: str | Path, *, wait: bool = False) -> dict:
    """Assemble the top-level scene_list.json, captions.json, manifest.json, errors.jsonl and render_config.json
    of a dataset rendered with ``--shard i/n`` from its shards' index files, byte-identical to an unsharded
    render of the same meshes. Every shard 0..n-1 must have finished; returns counts."""
    out = Path(out_dir)
    root = out / SHARDS_DIR
    folders = sorted(p for p in root.glob("*-of-*") if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise DatasetWriteError(f"{out} has no shard outputs ({root}/<i>-of-<n>/); render with --shard i/n first")
    counts = sorted({p.name.split("-of-", 1)[1] for p in folders})
    if len(counts) != 1:
        raise DatasetWriteError(
            f"{root} holds shards of different splits ({', '.join(p.name for p in folders)}); delete the folders "
            "of the split you no longer use and merge again"
        )
    n = int(counts[0])
    try:
        with folder_lock(out, f"mvtune dataset merge {out}", wait=wait):
            return _merge_locked(out, [shard_dir(out, (i, n)) for i in range(n)])
    except FolderLockedError as exc:
        raise DatasetWriteError(str(exc)) from None


def _merge_locked(out: Path, folders: list[Path]) -> dict:
    missing = [f.name for f in folders if not (f / SHARD_RECORD).is_file()]
    if missing:
        raise DatasetWriteError(
            f"shards {', '.join(missing)} in {out / SHARDS_DIR} are missing or unfinished; run (or rerun) "
            "`mvtune render INPUT OUT --shard i/n` for them, then merge"
        )
    records = [json.loads((f / SHARD_RECORD).read_text(encoding="utf-8")) for f in folders]
    for folder, record in zip(folders, records):
        if record["config"] != records[0]["config"] or record["meshes"] != records[0]["meshes"]:
            raise DatasetWriteError(
                f"shard {folder.name} was rendered with other settings or input than shard {folders[0].name} "
                f"(see {SHARD_RECORD} in each); rerun it with the same options"
            )
    positions: dict[str, int] = {}
    captions: dict[str, str] = {}
    manifest: dict[str, dict] = {}
    ids: list[str] = []
    errors: list[dict] = []
    for folder, record in zip(folders, records):
        positions |= record["positions"]
        ids += json.loads((folder / SCENE_LIST).read_text(encoding="utf-8"))
        captions |= json.loads((folder / CAPTIONS).read_text(encoding="utf-8"))
        manifest |= json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["objects"]
        errors += [json.loads(line) for line in (folder / ERRORS).read_text(encoding="utf-8").splitlines() if line]
    ids.sort(key=positions.__getitem__)
    errors.sort(key=lambda entry: positions[entry["id"]])
    _write_index_files(
        out, ids, {i: captions[i] for i in ids if i in captions}, {i: manifest[i] for i in ids}, errors
    )
    write_json(out / RENDER_CONFIG, records[0]["config"])
    return {"shards": len(folders), "objects": len(ids), "failed": len(errors)}
