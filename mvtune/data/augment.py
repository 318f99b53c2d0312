"""Augmentations: what each one changes, and what it must never change.

Invariants for all of them (the model was trained on exactly these conventions, spec dataset-format §3-§4):
the camera layout (which pose sits in which view slot, the top/bottom roll), the geometry encoding (positions
clamp(P+0.5, 0, 1) in world XYZ, normals n*0.5+0.5 in world XYZ) and the 0.5 background of both geometry maps.

- ``augment_meshes`` (``mvtune augment``): texture-space colour jitter before rendering. Hue, saturation and
  brightness of every texture, vertex colour and material colour of a mesh are changed, so all views of the
  new object change together. Geometry, UVs and the file's frame are untouched, so renders of the copy have the
  same depth, normal and position maps. Each copy is a new object whose sidecar carries the source's ``group``
  (so splits keep it with its source) and ``parent`` = the source id; colour words in its caption are rewritten
  to the jittered hue or flagged for review.
- ``random_background`` (loader ``background="random"``): the colour ``rgb`` is composited on, one per sample.
  Only ``rgb`` changes; geometry maps keep 0.5.
- ``CaptionSampler``: a caption per object per epoch, drawn from a list and expanded by templates and synonyms
  from a YAML file, reproducible from (seed, epoch, index). Missing captions are an error unless allowed.
- ``mirror_views`` (loader ``mirror_prob``): the object reflected through world X (x -> -x). The front, back,
  top and bottom images are mirrored in place; the +X-camera and -X-camera images (and in t2mv 45/315) swap
  slots, each mirrored; the position map's X becomes 1 - v (via the mirrored depth, back-projected with each
  slot's own camera) and the normal map's X becomes 1 - v. Cameras and the slot order stay as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np

from mvtune import cameras
from mvtune.storage import FolderLockedError, folder_lock

log = logging.getLogger(__name__)


class AugmentError(Exception):
    """Augmentation cannot run (bad input, unusable caption settings); the message names the file."""


# ---- load-time --------------------------------------------------------------------------------------------


def random_background(rng: np.random.Generator) -> tuple[float, float, float]:
    """A uniform random RGB background in [0, 1]."""
    return tuple(float(v) for v in rng.uniform(0.0, 1.0, 3))


def mirror_permutation(variant: str) -> list[int]:
    """For each view slot, the slot whose image becomes it after mirroring world X: user azimuth a -> -a."""
    poses = cameras.variant_views(variant).poses
    perm = []
    for azimuth, elevation in poses:
        target = (cameras.wrap_degrees(-azimuth), elevation)
        match = [j for j, pose in enumerate(poses) if cameras.poses_match(pose, target)]
        if not match:
            raise AugmentError(f"variant {variant}: no view mirrors azimuth {azimuth:g}, so it cannot be mirrored")
        perm.append(match[0])
    return perm


def mirror_views(views, variant: str):
    """The object mirrored through world X, as a new ViewArrays (images flipped, side views swapped)."""
    perm = mirror_permutation(variant)

    def flip(a):
        return None if a is None else np.ascontiguousarray(a[perm][..., ::-1])  # last axis is image x

    return dataclasses.replace(
        views,
        color=flip(views.color),
        depth=flip(views.depth),
        mask=flip(views.mask),
        normal=flip(views.normal),
        indices=[views.indices[j] for j in perm],
        mirrored=not views.mirrored,
    )


class CaptionSampler:
    """Captions per object: one string or a list; one option per (epoch, index), expanded by templates/synonyms.

    Template YAML: ``templates: ["{caption}", "a 3D model of {caption}"]`` and ``synonyms: {toy: [figurine]}``
    (whole words, case-insensitive; the original word stays one of the choices).
    """

    def __init__(self, captions: dict[str, list[str]], templates: list[str], synonyms: dict[str, list[str]], seed: int):
        self.captions, self.templates, self.synonyms, self.seed = captions, templates, synonyms, seed

    @classmethod
    def load(cls, captions, ids: list[str], templates=None, allow_missing: bool = False, seed: int = 0):
        from mvtune.data.loader import DatasetError

        data: dict = {}
        if isinstance(captions, dict):
            data = captions
        elif Path(captions).exists():
            try:
                data = json.loads(Path(captions).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DatasetError(f"captions file {captions}: {exc}") from None
            if not isinstance(data, dict):
                raise DatasetError(f"captions file {captions} must be a JSON object id -> caption or list of captions")
        elif not allow_missing:
            raise DatasetError(
                f"captions file {captions} does not exist; pass captions=... or allow_missing_captions=True "
                "to train with empty prompts"
            )
        options: dict[str, list[str]] = {}
        for key, value in data.items():
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) for v in values):
                where = "captions" if isinstance(captions, dict) else f"captions file {captions}"
                raise DatasetError(f"{where}: caption of {key} must be a string or a non-empty list of strings")
            options[key] = values
        missing = [i for i in ids if i not in options]
        if missing and not allow_missing:
            raise DatasetError(
                f"{len(missing)} objects have no caption (e.g. {', '.join(missing[:5])}); add them to the captions "
                "file or pass allow_missing_captions=True"
            )
        tpl, syn = ["{caption}"], {}
        if templates is not None:
            tpl, syn = _read_templates(Path(templates))
        return cls(options, tpl, syn, seed)

    def options(self, object_id: str) -> list[str]:
        return self.captions.get(object_id, [""])

    def sample(self, object_id: str, epoch: int, index: int) -> str:
        rng = np.random.default_rng([self.seed, epoch, index, 1])  # its own stream, apart from image augments
        options = self.options(object_id)
        caption = options[int(rng.integers(len(options)))]
        if not caption:
            return caption
        text = self.templates[int(rng.integers(len(self.templates)))].format(caption=caption)
        for word, alternatives in self.synonyms.items():
            choices = [word, *alternatives]
            text = re.sub(
                rf"\b{re.escape(word)}\b",
                lambda m: choices[int(rng.integers(len(choices)))],
                text,
                flags=re.IGNORECASE,
            )
        return text


def _read_templates(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    from mvtune.config_files import read_yaml_mapping

    data = read_yaml_mapping(path, "caption templates", AugmentError)
    templates = data.get("templates", ["{caption}"])
    synonyms = data.get("synonyms", {})
    if not isinstance(templates, list) or not all(isinstance(t, str) and "{caption}" in t for t in templates):
        raise AugmentError(f"{path}: 'templates' must be a list of strings that each contain {{caption}}")
    if not isinstance(synonyms, dict) or not all(isinstance(v, list) for v in synonyms.values()):
        raise AugmentError(f"{path}: 'synonyms' must map a word to a list of words")
    return templates, {str(k): [str(x) for x in v] for k, v in synonyms.items()}


# ---- mesh colour jitter (before rendering) ----------------------------------------------------------------

#: Named hues (degrees) that a caption's colour word is re-mapped between.
COLOUR_HUES = {"red": 0, "orange": 30, "yellow": 60, "green": 120, "cyan": 180, "blue": 230, "purple": 275, "pink": 330}
#: Words whose meaning a hue shift changes in ways a name swap cannot express: flagged for review instead.
AMBIGUOUS_COLOURS = {
    "brown", "gold", "golden", "beige", "tan", "maroon", "navy", "turquoise", "lime", "teal", "violet",
    "magenta", "crimson", "scarlet", "olive", "bronze", "copper", "colorful", "colourful", "rainbow",
}


def jitter_rgb(rgb: np.ndarray, hue: float, saturation: float, brightness: float) -> np.ndarray:
    """Shift hue by ``hue`` turns and scale saturation/value, on uint8 sRGB colours (..., 3)."""
    x = rgb.astype(np.float32) / 255.0
    maxc, minc = x.max(-1), x.min(-1)
    v = maxc
    delta = maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(delta, 1e-12)
    h = np.where(maxc == r, (g - b) / safe, np.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    h = (h + hue) % 1.0
    s = np.clip(s * saturation, 0.0, 1.0)
    v = np.clip(v * brightness, 0.0, 1.0)
    i = np.floor(h * 6.0).astype(np.int32) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    out = np.select(
        [i[..., None] == k for k in range(6)],
        [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))],
    )
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


#: Pixels converted at a time. jitter_rgb's float32 temporaries take ~100 bytes per pixel, so a chunk bounds them
#: to ~100 MiB whatever the texture size; the texture itself is held as uint8 (4 bytes per texel, plus trimesh's
#: decoded copy and the re-encoded PNG).
JITTER_CHUNK_PIXELS = 1 << 20


def _jitter_in_place(colours: np.ndarray, params: dict) -> None:
    """Jitter uint8 (..., 3 or 4) colours in place, chunk by chunk; alpha kept."""
    flat = colours.reshape(-1, colours.shape[-1])  # a view: colours is C-contiguous
    for start in range(0, len(flat), JITTER_CHUNK_PIXELS):
        block = flat[start : start + JITTER_CHUNK_PIXELS]
        block[:, :3] = jitter_rgb(block[:, :3], params["hue"], params["saturation"], params["brightness"])


def _jitter_colours(colours: np.ndarray, params: dict) -> np.ndarray:
    """uint8 (..., 3 or 4) colours jittered; alpha kept."""
    out = np.array(colours, dtype=np.uint8, copy=True, order="C")
    _jitter_in_place(out, params)
    return out


def _jitter_image(image, params: dict):
    from PIL import Image

    mode = "RGBA" if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else "RGB"
    pixels = np.array(image.convert(mode))  # the one writable uint8 copy
    _jitter_in_place(pixels, params)
    return Image.fromarray(pixels, mode)


def jitter_scene(scene, params: dict) -> int:
    """Jitter every colour source of a trimesh Scene in place; returns how many sources changed."""
    from trimesh.visual import ColorVisuals, TextureVisuals
    from trimesh.visual.material import PBRMaterial, SimpleMaterial

    changed = 0
    for geometry in scene.geometry.values():
        visual = getattr(geometry, "visual", None)
        if isinstance(visual, TextureVisuals) and visual.material is not None:
            material = visual.material
            if isinstance(material, PBRMaterial):
                if material.baseColorTexture is not None:
                    material.baseColorTexture = _jitter_image(material.baseColorTexture, params)
                    changed += 1
                if material.baseColorFactor is not None:
                    material.baseColorFactor = _jitter_colours(np.asarray(material.baseColorFactor), params)
                    changed += 1
            elif isinstance(material, SimpleMaterial):
                if material.image is not None:
                    material.image = _jitter_image(material.image, params)
                    changed += 1
                material.diffuse = _jitter_colours(np.asarray(material.diffuse), params)
                changed += 1
        elif isinstance(visual, ColorVisuals) and visual.kind in ("vertex", "face"):
            if visual.kind == "vertex":
                visual.vertex_colors = _jitter_colours(visual.vertex_colors, params)
            else:
                visual.face_colors = _jitter_colours(visual.face_colors, params)
            changed += 1
    return changed


def adjust_caption(caption: str, hue_turns: float, saturation: float) -> tuple[str, list[str]]:
    """The caption with its colour words moved by the hue shift, and reasons to review it (empty if none)."""
    review = []
    if saturation < 0.4 and re.search(rf"\b({'|'.join(COLOUR_HUES)})\b", caption, re.IGNORECASE):
        review.append(f"saturation x{saturation:.2f} may wash out the colours the caption names")

    def swap(match: re.Match) -> str:
        word = match.group(0)
        hue = (COLOUR_HUES[word.lower()] + hue_turns * 360.0) % 360.0
        new = min(COLOUR_HUES, key=lambda name: cameras.angle_difference(COLOUR_HUES[name], hue))
        return new.capitalize() if word[0].isupper() else new

    text = re.sub(rf"\b({'|'.join(COLOUR_HUES)})\b", swap, caption, flags=re.IGNORECASE)
    for word in AMBIGUOUS_COLOURS:
        if re.search(rf"\b{word}\b", caption, re.IGNORECASE) and abs(hue_turns) * 360.0 > 10.0:
            review.append(f"colour word {word!r} may no longer fit after a {hue_turns * 360.0:+.0f} deg hue shift")
    return text, review


def augment_meshes(
    input: str | Path,
    out_dir: str | Path,
    copies: int = 1,
    hue: float = 0.1,
    saturation: float = 0.3,
    brightness: float = 0.2,
    seed: int = 0,
) -> dict:
    """Write ``copies`` colour-jittered GLB copies of every mesh under ``input`` into ``out_dir``.

    Per copy: hue shift uniform in [-hue, hue] turns, saturation and brightness factors uniform in [1-x, 1+x].
    Writes ``<parent id>_aug<k>.glb`` with ``.json`` (group, parent, concept, licence, augmentation) and ``.txt``
    (caption with colour words adjusted) sidecars, and ``augment_report.json``; returns that report.
    """
    from mvtune.render.dataset import assign_ids, discover_meshes

    if copies < 1:
        raise AugmentError(f"copies must be >= 1, got {copies}")
    try:
        sources = assign_ids(discover_meshes(Path(input)))
    except Exception as exc:
        raise AugmentError(str(exc)) from None
    out = Path(out_dir)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock(out, f"mvtune augment {input}"))
        except FolderLockedError as exc:
            raise AugmentError(str(exc)) from None
        return _augment_locked(sources, input, out, copies, hue, saturation, brightness, seed)


def _augment_locked(sources: dict, input, out: Path, copies: int, hue: float, saturation: float, brightness: float,
                    seed: int) -> dict:
    import trimesh

    from mvtune.meshes import MeshError, load_mesh
    from mvtune.render.dataset import read_sidecars, source_hash
    from mvtune.storage import atomic_write, write_json

    for leftover in out.glob(".*.tmp"):  # temp files of a run killed mid-write
        leftover.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    report = {"input": str(input), "out_dir": str(out), "seed": seed, "objects": [], "failed": []}
    for parent_id, src in sources.items():
        try:
            caption, sidecar = read_sidecars(src)
            group = sidecar.get("group") or source_hash(src)
        except (OSError, ValueError) as exc:
            report["failed"].append({"source": str(src), "reason": str(exc)})
            continue
        try:
            load_mesh(src)  # the loader's checks and messages, the ones `render` gives (trimesh's are raw)
        except MeshError as exc:
            report["failed"].append({"source": str(src), "reason": str(exc)})
            log.error("augment %s", exc)
            continue
        for k in range(copies):
            params = {
                "hue": float(rng.uniform(-hue, hue)),
                "saturation": float(rng.uniform(1 - saturation, 1 + saturation)),
                "brightness": float(rng.uniform(1 - brightness, 1 + brightness)),
            }
            object_id = f"{parent_id}_aug{k}"
            try:
                scene = trimesh.load(str(src), force="scene", process=False)
                changed = jitter_scene(scene, params)
                glb = scene.export(file_type="glb")
                entry = {"id": object_id, "parent": parent_id, "source": str(src), "augmentation": params,
                         "colour_sources": changed, "review": []}
                if changed == 0:
                    entry["review"].append("mesh has no textures or colours: the copy looks like its source")
                if caption is not None:
                    new_caption, review = adjust_caption(caption, params["hue"], params["saturation"])
                    text = new_caption + "\n"
                    atomic_write(out / f"{object_id}.txt", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
                    entry |= {"caption_before": caption, "caption_after": new_caption}
                    entry["review"] += review
                write_json(out / f"{object_id}.json", {
                    "group": group,
                    "parent": parent_id,
                    "concept": sidecar.get("concept"),
                    "licence": sidecar.get("licence", sidecar.get("license")),
                    "generator": "mvtune augment colour-jitter",
                    "augmentation": params,
                })
                # The mesh last and atomic: `mvtune render` picks up any .glb, and must never find a torn one or
                # one without its group/parent sidecar (that copy could land in another split than its source).
                atomic_write(out / f"{object_id}.glb", lambda tmp: Path(tmp).write_bytes(glb))
            except Exception as exc:  # one unreadable mesh must not stop the batch
                report["failed"].append({"source": str(src), "reason": f"{type(exc).__name__}: {exc}"})
                log.error("augment %s: %s", src, exc)
                break
            report["objects"].append(entry)
    report["needs_review"] = [e["id"] for e in report["objects"] if e["review"]]
    write_json(out / "augment_report.json", report)
    return report
