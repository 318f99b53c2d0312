"""Import downloaded meshes with provenance: Meshy exports, Objaverse's local cache, or any folder of meshes.

``OUT/<id>/mesh.glb`` + ``mesh.txt`` + ``mesh.json``, the layout the generators write, so one `mvtune render`
takes both. Every object is loaded and checked (:func:`~mvtune.meshes.generators.base.check_output`) first; a bad
file is reported in ``import_errors.jsonl`` and the rest import. Objects whose geometry hash (vertices and faces,
not file bytes) matches one already imported, in this run or an earlier one into OUT, are skipped as exact
duplicates.

Objaverse (the ``objaverse`` package's cache, ``~/.objaverse/hf-objaverse-v1``): ``glbs/<group>/<uid>.glb`` and
``metadata/<group>.json.gz``, a gzipped JSON object uid -> Sketchfab annotation (``name``, ``license`` slug such as
"by" or "by-nc", ``user.username``, ``viewerUrl``, ``tags``). Meshy: the exported files, with the task's JSON
(``<stem>.json``: ``prompt``, ``id``, ``name``) beside them when it was saved.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from mvtune.meshes.generators.base import (
    CAPTION_FILE,
    MESH_FILE,
    PROVENANCE_FILE,
    GeneratorError,
    check_output,
    write_provenance,
)
from mvtune.meshes.load import SUPPORTED_EXTENSIONS
from mvtune.storage import atomic_write, sha256_file, write_json


class MeshImportError(Exception):
    """An import that cannot start (missing folder, unknown licence); the message names the option and the fix."""


def geometry_hash(path: Path) -> str:
    """sha256 of the geometry alone (each part's float32 vertices and faces, parts in a canonical order): the same
    object re-exported or re-compressed hashes the same, a moved vertex does not."""
    from mvtune.meshes.load import load_mesh

    parts = []
    for part in load_mesh(path).parts:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(part.vertices, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(part.faces, dtype=np.uint32).tobytes())
        parts.append(digest.hexdigest())
    return hashlib.sha256("".join(sorted(parts)).encode()).hexdigest()


def _licence_id(value) -> str:
    from mvtune.licences import get_licence

    return get_licence(value).id


def _objaverse_objects(root: Path) -> list[dict]:
    """(uid, file, annotation) for every GLB in an objaverse cache folder."""
    base = root / "hf-objaverse-v1" if (root / "hf-objaverse-v1").is_dir() else root
    if not (base / "glbs").is_dir():
        raise MeshImportError(
            f"{root} is not an objaverse cache: no glbs/ folder (expected ~/.objaverse or ~/.objaverse/hf-objaverse-v1, "
            "filled by objaverse.load_objects)"
        )
    glbs = sorted((base / "glbs").glob("*/*.glb"))
    annotations: dict[str, dict] = {}
    # Only the groups that hold downloaded objects, and only their entries: the full metadata is ~800k objects.
    for group in sorted({glb.parent.name for glb in glbs}):
        gz = base / "metadata" / f"{group}.json.gz"
        if not gz.is_file():
            continue
        try:
            with gzip.open(gz, "rt", encoding="utf-8") as f:
                notes = json.load(f)
        except (OSError, ValueError) as exc:
            raise MeshImportError(f"objaverse annotations {gz} cannot be read: {exc}") from None
        annotations.update({g.stem: notes[g.stem] for g in glbs if g.parent.name == group and g.stem in notes})
    objects = []
    for glb in glbs:
        note = annotations.get(glb.stem) or {}
        raw = note.get("license")
        if isinstance(raw, dict):  # some dumps keep Sketchfab's licence object
            raw = raw.get("slug") or raw.get("label")
        user = note.get("user") if isinstance(note.get("user"), dict) else {}
        objects.append({
            "id": glb.stem, "file": glb, "name": note.get("name"), "original_licence": raw,
            "author": user.get("username"), "url": note.get("viewerUrl"),
            "tags": [t.get("name") for t in note.get("tags", []) if isinstance(t, dict)],
        })
    return objects


def _folder_objects(root: Path) -> list[dict]:
    """Every mesh under root; a Meshy task JSON or a ``<mesh>.txt`` caption beside a file is used when present."""
    if not root.is_dir():
        raise MeshImportError(f"import folder {root} does not exist")
    objects, ids = [], set()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS):
        meta = {}
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(meta.get("id") or path.relative_to(root).with_suffix(""))).strip("_.")
        item = base or "mesh"
        if item in ids:
            item = f"{base}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        ids.add(item)
        objects.append({
            "id": item, "file": path, "name": meta.get("name") or path.stem.replace("_", " "),
            "caption": caption or meta.get("prompt") or meta.get("texture_prompt"),
            "task": {k: meta[k] for k in ("id", "prompt", "art_style", "mode", "created_at") if k in meta} or None,
        })
    return objects


def import_meshes(
    input_dir: str | Path, source: str, out_dir: str | Path, licence: str | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Import every mesh of ``input_dir`` into ``out_dir``; returns the summary (also in import_summary.json).

    ``licence`` is every object's licence; for ``objaverse`` the annotation's licence wins and ``licence`` only
    covers objects without one (those become ``unknown`` when it is not given).
    """
    from mvtune.licences import LicenceError

    start = time.perf_counter()
    input_dir, out = Path(input_dir), Path(out_dir)
    source = source.strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", source):
        raise MeshImportError(f"--source must be a short name such as meshy, objaverse or sketchfab, got {source!r}")
    try:
        fallback = _licence_id(licence) if licence is not None else None
    except LicenceError as exc:
        raise MeshImportError(f"--licence: {exc}") from None
    if fallback is None and source != "objaverse":
        raise MeshImportError(f"--licence is required for --source {source} (e.g. CC-BY-4.0 for Meshy free-plan "
                              "exports); only objaverse objects carry their own")
    objects = _objaverse_objects(input_dir) if source == "objaverse" else _folder_objects(input_dir)
    if not objects:
        raise MeshImportError(f"no meshes ({', '.join(SUPPORTED_EXTENSIONS)}) found under {input_dir}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeshImportError(f"cannot write to output folder {out}: {exc}") from None

    known: dict[str, str] = {}  # geometry hash -> id, including objects imported by earlier runs
    for record_path in out.glob(f"*/{PROVENANCE_FILE}"):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            known.setdefault(record["geometry_sha256"], record_path.parent.name)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    imported, skipped, duplicates, errors = 0, 0, [], []
    for done, obj in enumerate(objects, 1):
        item_dir = out / obj["id"]
        try:
            digest = sha256_file(obj["file"])
            previous = _record(item_dir)
            if previous and previous.get("source_sha256") == digest and (item_dir / MESH_FILE).is_file():
                skipped += 1
                continue
            geometry = geometry_hash(obj["file"])
            if geometry in known and known[geometry] != obj["id"]:
                duplicates.append({"id": obj["id"], "file": str(obj["file"]), "duplicate_of": known[geometry]})
                continue
            record = _provenance(obj, source, fallback, digest, geometry)
            _write_item(item_dir, obj["file"], record)
            known[geometry] = obj["id"]
            imported += 1
        except Exception as exc:  # one bad file never stops the import
            reason = str(exc) if isinstance(exc, GeneratorError) else f"{type(exc).__name__}: {exc}"
            errors.append({"id": obj["id"], "file": str(obj["file"]), "reason": reason})
        finally:
            if on_progress:
                on_progress(done, len(objects), obj["id"])
    summary = {
        "source": source, "input": str(input_dir.resolve()), "total": len(objects), "imported": imported,
        "skipped": skipped, "duplicates": duplicates, "failed": len(errors), "errors": errors,
        "seconds": round(time.perf_counter() - start, 3),
    }
    text = "".join(json.dumps(e) + "\n" for e in errors)
    atomic_write(out / "import_errors.jsonl", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    write_json(out / "import_summary.json", summary)
    return summary


def _record(item_dir: Path) -> dict | None:
    try:
        return json.loads((item_dir / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _provenance(obj: dict, source: str, fallback: str | None, digest: str, geometry: str) -> dict:
    from mvtune.licences import LicenceError

    record = {"id": obj["id"], "source": source, "source_file": str(Path(obj["file"]).resolve()),
              "source_sha256": digest, "geometry_sha256": geometry, "generator": f"import:{source}",
              "concept": None, "name": obj.get("name")}
    if source == "objaverse":
        raw = obj.get("original_licence")
        try:
            licence, origin = (_licence_id(raw), "annotation") if raw else (fallback or "unknown", "--licence")
        except LicenceError:  # a Sketchfab licence without an id of ours (by-nd, by-nc-sa, ...): never guessed
            licence, origin = "unknown", "annotation"
        record |= {"licence": licence, "licence_from": origin, "original_licence": raw, "author": obj.get("author"),
                   "url": obj.get("url"), "tags": obj.get("tags"), "uid": obj["id"]}
        caption = obj.get("name")
    else:
        record |= {"licence": fallback, "licence_from": "--licence", "task": obj.get("task")}
        caption = obj.get("caption") or obj.get("name")
    record["caption"] = caption
    return record


def _write_item(item_dir: Path, source: Path, record: dict) -> None:
    """GLB files are copied byte for byte; other formats are converted (textures embedded). The written GLB must
    pass the output checks (a conversion that lost the texture is refused); provenance is written last."""
    import trimesh

    item_dir.mkdir(parents=True, exist_ok=True)
    (item_dir / PROVENANCE_FILE).unlink(missing_ok=True)
    target = item_dir / MESH_FILE
    if source.suffix.lower() == ".glb":
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    else:
        data = trimesh.load(source, process=False, force="scene").export(file_type="glb")
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    try:
        check_output(target)
    except GeneratorError:
        shutil.rmtree(item_dir)
        raise
    names = [MESH_FILE]
    if record.get("caption"):
        caption = record["caption"]
        atomic_write(item_dir / CAPTION_FILE, lambda tmp: Path(tmp).write_text(caption + "\n", encoding="utf-8"))
        names.append(CAPTION_FILE)
    write_provenance(item_dir, names, record)
