"""Batch rendering of a mesh collection into an Objaverse-Ortho10View-style dataset.

Layout written (spec dataset-format §1, §2): ``OUT/<id[:2]>/<id>/{color,depth,normal}_NNNN.*`` + ``meta.json``,
plus ``scene_list.json`` (ids), ``captions.json`` (id -> caption), ``manifest.json`` (provenance per object),
``errors.jsonl`` (one line per mesh that failed), ``render_config.json`` and ``render_summary.json``.

Crash safety: every file is written atomically, and an object counts as done only when its marker file
(written last) exists and records the same source hash and settings. A rerun removes whatever a killed run
left in unfinished object folders and renders them again, so an interrupted run plus a rerun gives the same
dataset as one uninterrupted run. The top-level files are rebuilt from the per-object records at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
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
from mvtune.meshes.load import DEFAULT_MAX_TEXTURE_PIXELS, SUPPORTED_EXTENSIONS
from mvtune.storage import sha256_file, write_json

log = logging.getLogger(__name__)

DONE_MARKER = ".mvtune-done.json"
OBJECT_RECORD = "provenance.json"
SCENE_LIST = "scene_list.json"
CAPTIONS = "captions.json"
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
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

    def settings(self) -> dict:
        """The subset that changes rendered files: a done marker is valid only for the same settings."""
        return {
            "renderer": f"mvtune {__version__}",
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
    """Readable, unique, filesystem-safe ids from file stems; clashes get a short hash of the full path."""
    ids: dict[str, Path] = {}
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_") or "mesh"
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
    marker = obj_dir / DONE_MARKER
    try:
        record = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("source_sha256") == digest and record.get("settings") == settings


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
    mesh = normalize_mesh(load_mesh(src, max_texture_pixels=cfg.max_texture_pixels), up=cfg.up)
    views = cameras.layout(cfg.layout, seed=cfg.seed)

    obj_dir = object_dir(cfg.out_dir, object_id)
    if obj_dir.exists():  # leftovers of an interrupted or outdated render
        # Marker first: rmtree's order is arbitrary, and a kill mid-rmtree must not leave a "done" folder.
        (obj_dir / DONE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(obj_dir)
    obj_dir.mkdir(parents=True)
    write_object_views(_worker_renderer(cfg), mesh, views, obj_dir, cfg.position)

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
    write_json(obj_dir / OBJECT_RECORD, record)
    write_json(obj_dir / DONE_MARKER, {"source_sha256": digest, "settings": cfg.settings()})
    return record


def _render_task(cfg: RenderConfig, object_id: str, src: Path, digest: str) -> tuple[str, dict | None, str | None]:
    try:
        return object_id, render_object(cfg, object_id, src, digest), None
    except Exception as exc:  # one bad mesh must never stop the batch
        return object_id, None, f"{type(exc).__name__}: {exc}"


# ---- driver side -------------------------------------------------------------------------------------------


def render_dataset(cfg: RenderConfig, on_progress: Callable[[int, int, str], None] | None = None) -> Summary:
    """Render every mesh of ``cfg.input`` that is not already done; returns counts and the failures."""
    start = time.perf_counter()
    meshes = assign_ids(discover_meshes(cfg.input))
    out = cfg.out_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "render_config.json", json.loads(cfg.model_dump_json()))
    except OSError as exc:
        raise DatasetWriteError(f"cannot write to output folder {out}: {exc}") from None
    for leftover in out.glob(".*.tmp"):  # temp files of a run killed mid-write (see storage.atomic_write)
        leftover.unlink(missing_ok=True)
    captions_override = _load_captions(cfg.captions) if cfg.captions else {}

    summary = Summary(total=len(meshes))
    errors_path = out / ERRORS
    errors_path.write_text("")
    todo: list[tuple[str, Path, str]] = []
    digests: dict[str, str] = {}
    for object_id, src in meshes.items():
        try:
            digest = source_hash(src)
        except OSError as exc:
            _record_error(summary, errors_path, object_id, src, f"cannot read source: {exc}")
            continue
        digests[object_id] = digest
        if is_done(object_dir(out, object_id), digest, cfg.settings()):
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
            _record_error(summary, errors_path, object_id, meshes[object_id], error)
        if on_progress:
            on_progress(done_count, summary.total, object_id)

    if cfg.workers == 1:
        for object_id, src, digest in todo:
            finished(*_render_task(cfg, object_id, src, digest))
    else:
        _render_in_pool(cfg, todo, finished)

    _write_index(cfg, meshes, captions_override, digests)
    summary.seconds = round(time.perf_counter() - start, 3)
    write_json(out / "render_summary.json", summary.to_json())
    return summary


def _render_in_pool(cfg: RenderConfig, todo: list[tuple[str, Path, str]], finished) -> None:
    """Parallel workers, each with its own GL context; objects in flight when a worker dies are retried."""
    attempts = {object_id: 0 for object_id, _, _ in todo}
    pending = list(todo)
    while pending:
        retry: list[tuple[str, Path, str]] = []
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=get_context("spawn")) as pool:
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
        pending = retry


def _record_error(summary: Summary, errors_path: Path, object_id: str, src: Path, reason: str) -> None:
    summary.failed += 1
    entry = {"id": object_id, "source": str(src), "reason": reason}
    summary.errors.append(entry)
    with open(errors_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    log.error("%s (%s): %s", object_id, src, reason)


def _load_captions(path: Path) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetWriteError(f"captions file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DatasetWriteError(f"captions file {path} must map ids (or mesh file names) to caption strings")
    return data


def _write_index(
    cfg: RenderConfig, meshes: dict[str, Path], captions_override: dict[str, str], digests: dict[str, str]
) -> None:
    """Rebuild scene list, captions and manifest from the per-object records of every done object.

    Only renders of the current source bytes and settings count: an object whose re-render failed this run
    keeps its old folder on disk but must not be listed with stale files.
    """
    out = cfg.out_dir
    ids, captions, manifest = [], {}, {}
    for object_id, src in meshes.items():
        obj_dir = object_dir(out, object_id)
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
    write_json(out / SCENE_LIST, ids)
    write_json(out / CAPTIONS, captions)
    write_json(out / MANIFEST, {"mvtune_version": __version__, "objects": manifest})
