"""Dataset validation: catch, before any training, the mistakes that silently ruin a fine-tune.

The checks follow what MV-Adapter's loader and attention actually assume (spec dataset-format §1-§4):
the files each variant reads exist and decode to the right channels, the views fed to the model have the
poses the attention layout was trained on (tg2mv: front, right, back, left, top, bottom, with the top/bottom
roll of §4.1), normals are world-space, depth marks the background with values > 1000, captions are there,
ids are unique, no scene path leaves the dataset root, and no source mesh (nor a near-duplicate of one) is in two
splits.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from PIL import Image

from mvtune import cameras

#: Depth values above this are background (the reference loader's rule).
DEPTH_BACKGROUND = 1000.0
#: Mean cosine between world normals and the direction to the camera, over object pixels, below which
#: normals are not world-space; camera-space normals score about 0 here and about 1 in camera space.
NORMAL_FACING_MIN = 0.2
#: How much better |facing| must be in camera space than in world space to call normals camera-space
#: (about 0.67 vs 0.5 for camera-space normals of a closed object; equal for a flat card or ground plane).
NORMAL_FRAME_MARGIN = 0.08


@dataclass
class Finding:
    level: Literal["error", "warning"]
    code: str
    message: str
    object_id: str | None = None


@dataclass
class ValidationReport:
    root: str
    variant: str
    image_names: list[str]
    objects: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, level, code, message, object_id=None) -> None:
        self.findings.append(Finding(level, code, message, object_id))

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "variant": self.variant,
            "image_names": self.image_names,
            "objects": self.objects,
            "ok": self.ok,
            "counts": dict(Counter(f"{f.level}:{f.code}" for f in self.findings)),
            "findings": [asdict(f) for f in self.findings],
        }


def read_scene_list(path: Path, root: Path | None = None) -> list[str]:
    """JSON array of strings or a TXT file with one entry per line (spec §1.2). With ``root``, entries that
    would leave it are refused (SceneEntryError, a ValueError)."""
    path = Path(path)
    if path.suffix == ".json":
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"scene list {path} must be a JSON array of strings")
    elif path.suffix == ".txt":
        entries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ValueError(f"scene list {path}: expected .json or .txt")
    if root is not None:
        check_scene_entries(Path(root), entries, where=f"scene list {path}")
    return entries


class SceneEntryError(ValueError):
    """A scene-list entry that would leave the dataset root (absolute, ``..``, a link out): never read."""


def scene_dir(root: Path, entry: str) -> Path:
    """The folder of a scene-list entry, by the reference path rule (entries with a '/' are paths relative to
    root, bare ids live in root/id[:2]/id), and the one place every reader turns entries into folders: an entry
    that would leave root is refused (SceneEntryError), never rewritten (``/etc`` is not ``etc``)."""
    root = Path(root)
    if not isinstance(entry, str) or not entry.strip("/ "):
        raise SceneEntryError(f"scene entry {entry!r} is empty or not a string")
    if PurePosixPath(entry).is_absolute() or Path(entry).is_absolute() or ".." in PurePosixPath(entry).parts:
        raise SceneEntryError(
            f"scene entry {entry!r} points outside the dataset root {root}; entries are ids or paths relative to it"
        )
    directory = root / entry if "/" in entry else root / entry[:2] / entry
    if not directory.resolve().is_relative_to(root.resolve()):
        raise SceneEntryError(f"scene entry {entry!r} resolves to {directory.resolve()}, outside the dataset root {root}")
    return directory


def check_scene_entries(root: Path, entries: list[str], where: str = "scene list") -> None:
    """Refuse a list with any entry outside root, naming them all (scene_dir decides)."""
    bad = []
    for entry in entries:
        try:
            scene_dir(root, entry)
        except SceneEntryError:
            bad.append(entry)
    if bad:
        shown = ", ".join(repr(e) for e in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise SceneEntryError(
            f"{where}: {len(bad)} entries point outside the dataset root {root} ({shown}); entries must be ids or "
            "paths relative to the root"
        )


def scene_id(entry: str) -> str:
    return entry.rstrip("/").split("/")[-1]


def view_pose(location: dict) -> tuple[float, float]:
    """(user azimuth, elevation) in degrees of a meta.json location, from its camera-to-world matrix."""
    return cameras.pose_from_c2w(np.asarray(location["transform_matrix"], dtype=np.float64))


def describe_pose(pose: tuple[float, float]) -> str:
    return f"azimuth {pose[0]:.2f} deg, elevation {pose[1]:.2f} deg"


def check_view_layout(meta: dict, variant: str, image_names: list[str]) -> list[str]:
    """Problems with feeding ``image_names`` to ``variant``: missing views, wrong poses, wrong roll.

    Each message names the view, the angles found and the fix. Shared by validation and training start-up.
    """
    spec = cameras.variant_views(variant)
    if len(image_names) != len(spec.poses):
        return [f"{variant} takes {len(spec.poses)} views ({', '.join(spec.names)}), got {len(image_names)}"]
    by_index = {str(loc.get("index")): loc for loc in meta.get("locations", [])}
    problems = []
    for position, (name, expected, index) in enumerate(zip(spec.names, spec.poses, image_names)):
        loc = by_index.get(index)
        if loc is None:
            problems.append(f"view {index} ({name}, position {position}) is not in meta.json")
            continue
        found = view_pose(loc)
        if not cameras.poses_match(found, expected):
            suggestion = _find_index(by_index, expected)
            fix = f"; the {name} view is {suggestion} in this dataset" if suggestion else ""
            problems.append(
                f"view {index} is fed as the {name} view (position {position}), which {variant} expects at "
                f"{describe_pose(expected)}, but it has {describe_pose(found)}{fix}"
            )
            continue
        roll = roll_problem(np.asarray(loc["transform_matrix"], dtype=np.float64), expected)
        if roll:
            problems.append(f"view {index} ({name}): {roll}")
    if problems:
        fixed = [_find_index(by_index, pose) for pose in spec.poses]
        if all(fixed):
            problems.append(f"fix: use image_names {json.dumps(fixed)} for {variant} on this dataset")
    return problems


def _find_index(by_index: dict, pose: tuple[float, float]) -> str | None:
    """The index of the view that has this pose, if any."""
    for index, loc in by_index.items():
        if "transform_matrix" in loc and cameras.poses_match(view_pose(loc), pose):
            return index
    return None


def roll_problem(c2w: np.ndarray, pose: tuple[float, float]) -> str | None:
    """Right/up axes must match the reference construction; at the poles this fixes the image roll (§4.1)."""
    expected = cameras.View("", pose[0], pose[1]).c2w
    for col, axis in ((0, "image-right"), (1, "image-up")):
        found = c2w[:3, col] / max(np.linalg.norm(c2w[:3, col]), 1e-12)
        if float(found @ expected[:3, col]) < 0.99:
            return (
                f"{axis} axis is {np.round(found, 3).tolist()} but the model expects "
                f"{np.round(expected[:3, col], 3).tolist()} (the roll of spec §4.1)"
            )
    return None


def normal_frame_scores(normal_rgba: np.ndarray, c2w: np.ndarray) -> tuple[float, float, float, float]:
    """Facing cosine of the decoded normals read as world-space and as camera-space: means of the cosine and of
    its absolute value (back faces of open or single-sided meshes face away but still lie along the view axis)."""
    mask = normal_rgba[..., 3] > 0
    if not mask.any():
        return float("nan"), float("nan"), float("nan"), float("nan")
    n = normal_rgba[..., :3][mask].astype(np.float32) / 255.0 * 2.0 - 1.0
    to_camera = np.asarray(c2w, dtype=np.float64)[:3, 2]  # Blender camera +Z points back at the viewer
    world = n @ to_camera
    camera = n[:, 2]
    return float(np.mean(world)), float(np.mean(camera)), float(np.mean(np.abs(world))), float(np.mean(np.abs(camera)))


def _exr_channels(path: Path) -> tuple[list[str], np.ndarray]:
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as f:
        channels = f.channels()
        names = sorted(channels)
        # The channel the reference loader reads: OpenCV orders colour EXRs B, G, R(, A), so index 0 is B
        # (not the alphabetically first name, which is A in an RGBA file).
        first = channels["B" if "B" in channels else names[0]].pixels.copy()
    return names, first


class NotADatasetError(Exception):
    """The folder holds no dataset at all, so there is nothing to report on (and no report is written into it)."""


def ensure_dataset(root: Path, scene_list: Path | None = None) -> None:
    """Refuse a folder that is not a dataset: no scene list (and none given) and no object with a meta.json."""
    root = Path(root)
    if not root.is_dir():
        raise NotADatasetError(f"dataset root {root} is not a folder")
    if scene_list is not None or (root / "scene_list.json").is_file():
        return
    if next(root.glob("*/*/meta.json"), None) is None:
        raise NotADatasetError(
            f"{root} is not a dataset: it has no scene_list.json and no <id[:2]>/<id>/meta.json folders; render "
            "one with `mvtune render MESHES DATASET`, or pass --scene-list"
        )


def validate_dataset(
    root: Path,
    variant: str = "tg2mv",
    image_names: list[str] | None = None,
    scene_list: Path | None = None,
    captions: Path | None = None,
    check_pixels: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Check a dataset for one model variant; never raises for dataset problems, reports them instead."""
    root = Path(root)
    spec = cameras.variant_views(variant)
    names = list(image_names or spec.ortho10_indices)
    report = ValidationReport(str(root), variant, names)
    scene_list = Path(scene_list) if scene_list else root / "scene_list.json"
    captions = Path(captions) if captions else root / "captions.json"

    if not root.is_dir():
        report.add("error", "missing-root", f"dataset root {root} is not a folder")
        return report
    try:
        entries = read_scene_list(scene_list)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        report.add("error", "scene-list", f"cannot read scene list {scene_list}: {exc}")
        return report
    caption_db = _read_captions(captions, report)

    ids = [scene_id(e) for e in entries]
    for dup, count in Counter(ids).items():
        if count > 1:
            report.add("error", "duplicate-id", f"id {dup} appears {count} times in {scene_list.name}", dup)
    if caption_db is not None:
        _check_captions(ids, caption_db, report)

    from mvtune.data.splits import check_leakage, near_duplicate_leaks  # splits builds on this module

    for problem in check_leakage(root):
        report.add("error", "split-leakage", problem)
    if check_pixels:  # near-duplicates are found by decoding the front and top renders
        for problem in near_duplicate_leaks(root):
            report.add("error", "near-duplicate-leakage", problem)

    for done, entry in enumerate(entries, 1):
        object_id = scene_id(entry)
        try:
            directory = scene_dir(root, entry)
        except SceneEntryError as exc:
            report.add("error", "path-escape", str(exc), object_id)
            continue
        report.objects += 1
        _check_object(directory, object_id, variant, names, check_pixels, report)
        if on_progress:
            on_progress(done, len(entries))
    return report


def _read_captions(path: Path, report: ValidationReport) -> dict | None:
    if not path.exists():
        report.add("error", "captions", f"captions file {path} is missing (pass --captions if it lives elsewhere)")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        report.add("error", "captions", f"cannot read captions {path}: {exc}")
        return None
    if not isinstance(data, dict):
        report.add("error", "captions", f"captions {path} must be a JSON object id -> caption")
        return None
    return data


def _check_captions(ids: list[str], db: dict, report: ValidationReport) -> None:
    texts = []
    for object_id in ids:
        caption = db.get(object_id)
        if caption is None:
            report.add("error", "caption-missing", f"no caption for {object_id}", object_id)
            continue
        options = caption if isinstance(caption, list) else [caption]
        if not all(isinstance(c, str) for c in options):
            report.add("error", "caption-type", f"caption of {object_id} must be a string or a list of strings", object_id)
            continue
        if not any(c.strip() for c in options):
            report.add("warning", "caption-empty", f"empty caption for {object_id}", object_id)
        texts.extend(c.strip() for c in options if c.strip())
    repeated = {t: n for t, n in Counter(texts).items() if n > 1}
    for text, count in repeated.items():
        report.add("warning", "caption-duplicate", f"caption {text!r} is used by {count} objects")


def _check_object(directory, object_id, variant, names, check_pixels, report) -> None:
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.add("error", "missing-file", f"{meta_path} is missing", object_id)
        return
    except (OSError, json.JSONDecodeError) as exc:
        report.add("error", "bad-meta", f"{meta_path} cannot be read: {exc}", object_id)
        return
    try:
        problems = check_view_layout(meta, variant, names)
    except (KeyError, TypeError, ValueError) as exc:
        report.add("error", "bad-meta", f"{meta_path} does not follow the meta.json schema: {exc}", object_id)
        return
    for problem in problems:
        report.add("error", "view-layout", f"{object_id}: {problem}", object_id)

    modalities = ["color"] if variant == "t2mv" else ["color", "depth", "normal"]
    by_index = {str(loc.get("index")): loc for loc in meta.get("locations", [])}
    scores = []
    for index in names:
        paths = {m: directory / (f"depth_{index}.exr" if m == "depth" else f"{m}_{index}.webp") for m in modalities}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            report.add("error", "missing-file", f"missing {', '.join(missing)}", object_id)
            continue
        try:
            with Image.open(paths["color"]) as im:
                if im.mode != "RGBA":
                    report.add("error", "color-mode", f"{paths['color']} is {im.mode}, the loader needs RGBA", object_id)
        except Exception as exc:
            report.add("error", "unreadable", f"{paths['color']}: {exc}", object_id)
        if variant == "t2mv" or not check_pixels:
            continue
        try:
            with Image.open(paths["normal"]) as im:
                if im.mode != "RGBA":
                    report.add("error", "normal-mode", f"{paths['normal']} is {im.mode}, the loader needs RGBA", object_id)
                    continue
                normal = np.asarray(im)
            channels, depth = _exr_channels(paths["depth"])
        except Exception as exc:
            report.add("error", "unreadable", f"{directory} view {index}: {exc}", object_id)
            continue
        if len(channels) < 3:
            report.add(
                "error", "depth-channels",
                f"{paths['depth']} has channels {channels}; the reference loader needs >= 3 equal channels",
                object_id,
            )
        background = normal[..., 3] == 0
        if depth.shape == background.shape and background.any():
            bg_min = float(np.min(depth[background]))
            if not bg_min > DEPTH_BACKGROUND:
                report.add(
                    "error", "depth-background",
                    f"{paths['depth']}: background depth goes down to {bg_min:g}; it must be > {DEPTH_BACKGROUND:g}",
                    object_id,
                )
        if index in by_index and "transform_matrix" in by_index[index]:
            scores.append((index, *normal_frame_scores(normal, by_index[index]["transform_matrix"])))
    _check_normal_frame(scores, object_id, report)


def _check_normal_frame(scores, object_id, report) -> None:
    valid = [s for s in scores if np.isfinite(s[1])]
    if not valid:
        return
    world, camera, world_abs, camera_abs = (float(np.mean([s[k] for s in valid])) for k in range(1, 5))
    if world >= NORMAL_FACING_MIN:
        return
    # Signed scores alone cannot tell camera-space normals from back faces (a single-sided card seen from
    # behind, a ground plane seen from below): only call it camera-space when the normals line up with the
    # view axis clearly better in camera space than in world space.
    if camera_abs > world_abs + NORMAL_FRAME_MARGIN:
        report.add(
            "error", "camera-space-normals",
            f"{object_id}: normal maps look camera-space (facing score {camera:.2f} in camera space vs "
            f"{world:.2f} in world space); MV-Adapter needs world-space normals, e.g. up-facing pixels blue in the "
            "top view. Re-render with mvtune render.",
            object_id,
        )
    else:
        report.add(
            "warning", "normals",
            f"{object_id}: normals mostly face away from the cameras (world-space facing score {world:.2f}): "
            "an open or single-sided mesh seen from behind, or inverted normals",
            object_id,
        )
