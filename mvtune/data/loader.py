"""The training loader: MV-Adapter's multi-view samples, with views chosen by camera pose.

A sample is what MV-Adapter's ``MultiviewDataset`` returns (spec dataset-format §2-§3, checked against
``mvtune.data.reference``): ``rgb`` composited on the background, ``source_rgb`` = position map then normal map
(tg2mv) or Plücker maps (t2mv), the Blender ``c2w`` and the prompt. Unlike the reference, the views come from
the poses in meta.json, matched against the variant's layout in ``mvtune.cameras``, never from file indices:
a dataset that numbers its views differently still feeds the attention the right view in each slot.

Speed levers (see benchmarks/RESULTS.md): only the variant's views are decoded, depth reads one EXR channel,
back-projection runs in torch, and an optional cache (``mvtune.data.cache``) stores the resized arrays.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mvtune import cameras
from mvtune.data import augment, cache
# The roll rule and the background threshold are the validator's, so validation and loading cannot disagree.
from mvtune.data.validate import (
    DEPTH_BACKGROUND, SceneEntryError, check_scene_entries, read_scene_list, roll_problem, scene_dir, scene_id,
)

log = logging.getLogger(__name__)

BACKGROUNDS = {"gray": 0.5, "white": 1.0, "black": 0.0}


class DatasetError(Exception):
    """An object or dataset the loader cannot use; the message names the file or object and what to do."""


@dataclass
class ViewArrays:
    """One object's chosen views at training resolution, before the float stage (also what the cache stores)."""

    color: np.ndarray  # (V, 4, H, W) uint8 RGBA planes (planar so the float stage reads contiguous memory)
    c2w: np.ndarray  # (V, 4, 4) float32, Blender camera axes
    ortho_scale: float
    indices: list[str]  # file index of each view, in layout order
    depth: np.ndarray | None = None  # (V, H, W) float32, 0 on the background
    mask: np.ndarray | None = None  # (V, H, W) uint8, depth <= 1000
    normal: np.ndarray | None = None  # (V, 4, H, W) uint8 RGBA planes, PIL nearest resize
    mirrored: bool = False  # images mirrored in world X; the normal map's X still needs flipping

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"color": self.color, "c2w": self.c2w}
        if self.depth is not None:
            out |= {"depth": self.depth, "mask": self.mask, "normal": self.normal}
        return out


def select_views(meta: dict, variant: str, where: str) -> list[dict]:
    """meta.json locations for the variant's views, in layout order, matched by pose and roll.

    ``where`` names the object in the error, which lists the missing poses and the poses that are there.
    """
    spec = cameras.variant_views(variant)
    # Positions are back-projected orthographically, so a PERSP view at the right pose is not a match.
    candidates = []
    for loc in meta.get("locations", []):
        if "transform_matrix" in loc and "index" in loc and loc.get("projection_type", "ORTHO") != "PERSP":
            c2w = np.asarray(loc["transform_matrix"], dtype=np.float64)
            candidates.append((loc, c2w, cameras.pose_from_c2w(c2w)))
    found, missing = [], []
    for name, pose in zip(spec.names, spec.poses):
        match = next(
            (
                loc
                for loc, c2w, loc_pose in candidates
                if cameras.poses_match(loc_pose, pose) and roll_problem(c2w, pose) is None
            ),
            None,
        )
        if match is None:
            missing.append(f"{name} (azimuth {pose[0]:g}, elevation {pose[1]:g})")
        found.append(match)
    if missing:
        present = ", ".join(f"{loc['index']}: az {a:.1f} el {e:.1f}" for loc, _, (a, e) in candidates)
        raise DatasetError(
            f"{where}: no view with the pose (and roll) {variant} needs for {'; '.join(missing)}; "
            f"views present: [{present or 'none'}]. Re-render it with the ortho10 layout (mvtune render)."
        )
    return found


def _read(path: Path, what: str, reader):
    if not path.is_file():
        raise DatasetError(f"{path} is missing ({what}); re-render the object or load with on_error='skip'")
    try:
        return reader(path)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"{path} cannot be read as {what}: {type(exc).__name__}: {exc}; re-render the object or load with "
            "on_error='skip'"
        ) from None


def _color(path: Path, height: int, width: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "RGBA":
            raise DatasetError(f"{path} is {im.mode}; colour images must be RGBA (alpha is the object mask)")
        return np.asarray(im.resize((width, height))).transpose(2, 0, 1)  # PIL default: bicubic, premultiplied


def _normal(path: Path, height: int, width: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "RGBA":
            raise DatasetError(f"{path} is {im.mode}; normal images must be RGBA (alpha is the object mask)")
        return np.asarray(im.resize((width, height), Image.NEAREST)).transpose(2, 0, 1)


def _depth(path: Path, height: int, width: int) -> np.ndarray:
    """OpenCV's channel 0 (B of BGR) of the EXR, resized with OpenCV's nearest rule like the reference."""
    import cv2
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as f:
        channels = f.channels()
        if "B" in channels:
            depth = channels["B"].pixels
        elif len(channels) == 1:
            depth = next(iter(channels.values())).pixels
        else:
            raise DatasetError(f"{path} has channels {sorted(channels)}; depth must be in R, G and B")
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != (height, width):
        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
    return depth


def read_views(directory: Path, object_id: str, variant: str, height: int, width: int) -> ViewArrays:
    """Decode and resize the variant's views of one object, chosen by pose."""
    meta_path = directory / "meta.json"
    meta = _read(meta_path, "meta.json", lambda p: json.loads(p.read_text(encoding="utf-8")))
    try:
        locations = select_views(meta, variant, f"{object_id} ({meta_path})")
        scale = float(meta["ortho_scale"] if "ortho_scale" in meta else meta["locations"][0]["ortho_scale"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DatasetError(f"{meta_path} does not follow the meta.json schema (spec §2.4): {exc}") from None
    indices = [str(loc["index"]) for loc in locations]
    c2w = np.stack([np.asarray(loc["transform_matrix"], dtype=np.float32) for loc in locations])

    def each(kind: str, suffix: str, what: str, reader) -> np.ndarray:
        files = [directory / f"{kind}_{i}.{suffix}" for i in indices]
        return np.stack([_read(path, what, lambda p: reader(p, height, width)) for path in files])

    views = ViewArrays(color=each("color", "webp", "RGBA WebP", _color), c2w=c2w, ortho_scale=scale, indices=indices)
    if variant == "tg2mv":
        depth = each("depth", "exr", "EXR depth", _depth)
        mask = depth <= DEPTH_BACKGROUND
        views.depth = np.where(mask, depth, 0.0).astype(np.float32)
        views.mask = mask.astype(np.uint8)
        views.normal = each("normal", "webp", "RGBA WebP normal map", _normal)
    return views


def source_files(directory: Path, variant: str, indices: list[str]) -> list[Path]:
    files = [directory / "meta.json"] + [directory / f"color_{i}.webp" for i in indices]
    if variant == "tg2mv":
        files += [directory / f"depth_{i}.exr" for i in indices] + [directory / f"normal_{i}.webp" for i in indices]
    return files


def position_maps(
    depth: torch.Tensor, mask: torch.Tensor, c2w: torch.Tensor, scale: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(V, 3, H, W) encoded positions clamp(P + 0.5, 0, 1) on the reference's integer pixel grid (spec §3.3-§3.4).

    Written in place into ``out`` with broadcast row/column terms: this runs for every sample, so it avoids
    full-size temporaries.
    """
    views, height, width = depth.shape
    x = (torch.arange(width, dtype=torch.float32) - width / 2) * (scale / width)
    y = (torch.arange(height, dtype=torch.float32) - height / 2) * (scale / height)
    right, up, back, origin = (c2w[:, :3, k, None, None] for k in range(4))
    if out is None:
        out = torch.empty(views, 3, height, width)
    # OpenCV camera = Blender columns 1 and 2 negated: P = C + x*right - y*up - z*back
    torch.mul(depth[:, None], -back, out=out)
    out.add_(right * x + origin).sub_(up * y[:, None])
    out.mul_(mask[:, None]).add_(0.5).clamp_(0.0, 1.0)
    return out


def plucker_maps(c2w: torch.Tensor, height: int, width: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(V, 6, H, W): per view the constant [look direction, normalised camera position], encoded (x+1)/2 (§3.7).

    Broadcast straight into ``out`` (allocated when None), with no full-size temporary.
    """
    values = torch.from_numpy(cameras.plucker_vectors(c2w.numpy())).float()
    if out is None:
        out = torch.empty(len(values), 6, height, width)
    return out.copy_(values[:, :, None, None].expand(-1, -1, height, width))


def _background(value) -> tuple[float, float, float] | None:
    """A fixed RGB background, or None for 'random' (drawn per sample)."""
    if value == "random":
        return None
    if isinstance(value, str):
        if value not in BACKGROUNDS:
            raise ValueError(f"background {value!r}: use gray, white, black, random, a float or an RGB triple")
        return (BACKGROUNDS[value],) * 3
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    rgb = tuple(float(v) for v in value)
    if len(rgb) != 3:
        raise ValueError(f"background {value!r}: an RGB triple needs 3 values")
    return rgb


def _output(*shape: int) -> torch.Tensor:
    """An output tensor; inside a DataLoader worker it is allocated in shared memory, which saves the copy
    into shared memory that sending a 127 MB sample to the main process would otherwise cost."""
    tensor = torch.empty(*shape)
    return tensor.share_memory_() if torch.utils.data.get_worker_info() is not None else tensor


class MultiviewDataset(Dataset):
    """MV-Adapter training samples from an Ortho10View-style dataset (ours or the official one).

    ``scene_list``: JSON/TXT path or a list of entries (ids, or paths relative to ``root``). ``captions``: JSON
    path or dict id -> caption or list of captions; None reads ``root/captions.json``. A missing caption is an
    error unless ``allow_missing_captions`` (then the prompt is ""). ``background``: gray/white/black, a value,
    an RGB triple, or "random" (one colour per sample; geometry maps keep 0.5). ``mirror_prob``: chance of the
    left-right mirroring augmentation. ``on_error="skip"`` replaces an unreadable object by the next readable
    one (logged, counted in ``skipped``) so a DataLoader keeps going. Indices ``>= len`` encode the epoch
    (``epoch * len + i``, see ``EpochSampler``) so per-epoch caption choices are reproducible in any worker.
    """

    def __init__(
        self,
        root: str | Path,
        scene_list: str | Path | list[str],
        variant: str = "tg2mv",
        height: int = 768,
        width: int = 768,
        captions: str | Path | dict | None = None,
        background: str | float | tuple = "gray",
        *,
        on_error: Literal["raise", "skip"] = "raise",
        cache_dir: str | Path | None = None,
        caption_templates: str | Path | None = None,
        allow_missing_captions: bool = False,
        mirror_prob: float = 0.0,
        seed: int = 0,
    ):
        self.root = Path(root)
        cameras.variant_views(variant)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if isinstance(scene_list, (str, Path)):
            try:
                self.entries = read_scene_list(Path(scene_list))
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read scene list {scene_list}: {exc}") from None
        else:
            self.entries = list(scene_list)
        if not self.entries:
            raise DatasetError(
                f"scene list {scene_list if isinstance(scene_list, (str, Path)) else '(list)'} is empty; for a split "
                "file, re-split with larger fractions (`mvtune dataset split DIR --val F --test F`) or add objects"
            )
        try:  # every entry up front: a training run must not meet `../` or `/etc` at step 900
            check_scene_entries(self.root, self.entries, where=f"scene list {scene_list if isinstance(scene_list, (str, Path)) else '(list)'}")
        except SceneEntryError as exc:
            raise DatasetError(str(exc)) from None
        self.ids = [scene_id(e) for e in self.entries]
        self.variant = variant
        self.height, self.width = height, width
        self.background = _background(background)
        self.on_error = on_error
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.mirror_prob = mirror_prob
        self.seed = seed
        self.captions = augment.CaptionSampler.load(
            captions if captions is not None else self.root / "captions.json",
            self.ids,
            templates=caption_templates,
            allow_missing=allow_missing_captions,
            seed=seed,
        )
        # Shared with DataLoader workers, so the count in the main process is the total. Created in the spawn
        # context: a fork-context lock cannot be sent to spawn/forkserver workers, a spawn one works with all.
        self._skipped = multiprocessing.get_context("spawn").Value("i", 0)
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def skipped(self) -> int:
        """How many times an unreadable object was replaced (over all workers)."""
        return self._skipped.value

    def load_views(self, i: int) -> ViewArrays:
        """The resized arrays of object i, from the cache when it is valid (and written to it otherwise)."""
        directory, object_id = scene_dir(self.root, self.entries[i]), self.ids[i]
        if not directory.is_dir():
            raise DatasetError(
                f"{object_id}: object folder {directory} does not exist (scene list entry {self.entries[i]!r})"
            )
        if self.cache_dir is None:
            return read_views(directory, object_id, self.variant, self.height, self.width)
        path = cache.cache_file(self.cache_dir, object_id, self.variant, self.height, self.width)
        settings = {"variant": self.variant, "height": self.height, "width": self.width}

        def expected(meta: dict[str, str]) -> str:
            """Fingerprint of the files the cached entry was built from (its view indices are in its metadata)."""
            return cache.fingerprint(source_files(directory, self.variant, json.loads(meta["indices"])), **settings)

        hit = cache.read_cache(path, expected)
        if hit is not None:
            arrays, meta = hit
            return ViewArrays(ortho_scale=float(meta["ortho_scale"]), indices=json.loads(meta["indices"]), **arrays)
        views = read_views(directory, object_id, self.variant, self.height, self.width)
        files = source_files(directory, self.variant, views.indices)
        cache.write_cache(
            path,
            views.arrays(),
            {
                "fingerprint": cache.fingerprint(files, **settings),
                "indices": json.dumps(views.indices),
                "ortho_scale": repr(views.ortho_scale),
            },
        )
        return views

    def sample(self, i: int, epoch: int = 0) -> dict:
        """Object i as a training sample; raises DatasetError naming the file when it cannot be read."""
        views = self.load_views(i)
        rng = np.random.default_rng([self.seed, epoch, i])
        if self.mirror_prob > 0 and rng.random() < self.mirror_prob:
            views = augment.mirror_views(views, self.variant)
        background = self.background if self.background is not None else augment.random_background(rng)
        n_views = len(views.indices)
        rgb, source = _output(n_views, 3, self.height, self.width), _output(n_views, 6, self.height, self.width)
        color = torch.from_numpy(views.color)
        alpha = color[:, 3:4].float().mul_(1.0 / 255.0)
        # rgb*a + bg*(1-a) == (rgb - bg)*a + bg, in place on the output
        bg = torch.tensor(background, dtype=torch.float32)[None, :, None, None]
        rgb.copy_(color[:, :3]).mul_(1.0 / 255.0).sub_(bg).mul_(alpha).add_(bg)
        c2w = torch.from_numpy(views.c2w)
        if views.depth is not None:
            depth, mask = torch.from_numpy(views.depth), torch.from_numpy(views.mask)
            position_maps(depth, mask, c2w, views.ortho_scale, out=source[:, :3])
            normal = torch.from_numpy(views.normal)
            normal_alpha = normal[:, 3:4].float().mul_(1.0 / 255.0)
            normals = source[:, 3:]
            normals.copy_(normal[:, :3]).mul_(1.0 / 255.0).sub_(0.5).mul_(normal_alpha).add_(0.5)
            if views.mirrored:
                normals[:, 0].neg_().add_(1.0)  # n_x -> -n_x; 1 - v keeps the 0.5 background
        else:
            plucker_maps(c2w, self.height, self.width, out=source)
        return {
            "rgb": rgb,
            "source_rgb": source,
            "c2w": c2w,
            "prompt": self.captions.sample(self.ids[i], epoch, i),
            "id": self.ids[i],
        }

    def __getitem__(self, index: int) -> dict:
        epoch, i = divmod(int(index), len(self))
        try:
            return self.sample(i, epoch)
        except DatasetError as exc:
            if self.on_error == "raise":
                raise
            first = exc
        self._note_skip(i, first)
        for step in range(1, len(self)):
            j = (i + step) % len(self)
            if j in self._bad:
                continue
            try:
                return self.sample(j, epoch)
            except DatasetError as exc:
                self._note_skip(j, exc)
        raise DatasetError(f"no readable object left in {self.root} (all {len(self)} failed); last error: {first}")

    def _note_skip(self, i: int, exc: Exception) -> None:
        self._bad.add(i)
        with self._skipped.get_lock():
            self._skipped.value += 1
        log.warning("skipping %s: %s", self.ids[i], exc)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_bad"] = set()
        return state


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices offset by ``epoch * len`` so the dataset knows the epoch in every worker.

    Lightning calls ``set_epoch`` on the train sampler at the start of each epoch.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0):
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = range(self.size)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        offset = self.epoch * self.size
        return iter([offset + int(i) for i in order])


def collate_multiview(samples: list[dict]) -> dict:
    """Flatten views into the batch axis, (B*V, C, H, W), and add SDXL micro-conditioning (spec model §6).

    Per-object entries (``prompt``, ``time_ids``) stay per object: the system encodes the prompt once and
    repeats embeddings and time ids ``num_views`` times (repeat_interleave) to match the flattened images.
    """
    num_views = samples[0]["rgb"].shape[0]
    if any(s["rgb"].shape[0] != num_views for s in samples):
        raise DatasetError("samples in one batch have different view counts")
    rgb = torch.cat([s["rgb"] for s in samples])
    height, width = rgb.shape[-2:]
    size = torch.tensor([height, width], dtype=torch.float32)
    original = size.expand(len(samples), 2)
    crop = torch.zeros(len(samples), 2)
    return {
        "rgb": rgb,
        "source_rgb": torch.cat([s["source_rgb"] for s in samples]),
        "c2w": torch.cat([s["c2w"] for s in samples]),
        "prompt": [s["prompt"] for s in samples],
        "id": [s["id"] for s in samples],
        "num_views": num_views,
        "original_size": original.clone(),
        "crops_coords_top_left": crop,
        "target_size": original.clone(),
        "time_ids": torch.cat([original, crop, original], dim=1),
    }


class MultiviewDataModule(L.LightningDataModule):
    """Train/val/test loaders over the split files written by ``mvtune.data.splits.split_dataset``.

    ``splits`` maps a split name to a scene list (path or ids); by default ``root/split_<name>.json``.
    Augmentations (``train_background``, ``mirror_prob``, caption templates and per-epoch caption choice) apply
    to the train split only; val/test use the gray background and the first caption option of epoch 0.
    """

    def __init__(
        self,
        root: str | Path,
        variant: str = "tg2mv",
        height: int = 768,
        width: int = 768,
        batch_size: int = 1,
        num_workers: int = 4,
        captions: str | Path | dict | None = None,
        cache_dir: str | Path | None = None,
        splits: dict[str, str | Path | list[str]] | None = None,
        train_background: str | float | tuple = "gray",
        mirror_prob: float = 0.0,
        caption_templates: str | Path | None = None,
        allow_missing_captions: bool = False,
        on_error: Literal["raise", "skip"] = "raise",
        seed: int = 0,
    ):
        super().__init__()
        from mvtune.data.splits import SPLIT_FILES

        self.root = Path(root)
        self.splits = splits or {name: self.root / file for name, file in SPLIT_FILES.items()}
        self.common = dict(
            variant=variant, height=height, width=width, captions=captions, cache_dir=cache_dir,
            allow_missing_captions=allow_missing_captions, on_error=on_error, seed=seed,
        )
        self.train_options = dict(
            background=train_background, mirror_prob=mirror_prob, caption_templates=caption_templates
        )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.datasets: dict[str, MultiviewDataset] = {}

    def _dataset(self, name: str) -> MultiviewDataset:
        if name not in self.datasets:
            scene_list = self.splits.get(name)
            if scene_list is None or (isinstance(scene_list, (str, Path)) and not Path(scene_list).exists()):
                raise DatasetError(
                    f"no {name} split for {self.root} (looked for {scene_list}); run `mvtune dataset split "
                    f"{self.root}` first"
                )
            extra = self.train_options if name == "train" else {}
            self.datasets[name] = MultiviewDataset(self.root, scene_list, **self.common, **extra)
        return self.datasets[name]

    def setup(self, stage: str | None = None) -> None:
        names = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(stage, ["train", "val", "test"])
        for name in names:
            self._dataset(name)

    def _loader(self, name: str) -> DataLoader:
        dataset = self._dataset(name)
        # Only train draws per-epoch choices; val/test indices stay < len, i.e. always epoch 0.
        sampler = EpochSampler(len(dataset), shuffle=True, seed=self.seed) if name == "train" else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_multiview,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
