"""2D image datasets for concept LoRAs: images + captions, aspect-ratio buckets, SDXL size conditioning.

A dataset is a folder of PNG/JPEG/WebP images (searched recursively) with a caption sidecar `<stem>.txt` beside
each image, or a JSONL file of `{"image": path, "caption": text}` rows (paths relative to the file).

Each image goes to the bucket (height, width), both multiples of 64 with about `resolution**2` pixels, whose
aspect ratio is closest to its own; it is resized to cover the bucket and cropped (randomly or centred). SDXL's
micro-conditioning then describes that real crop, as diffusers' SDXL training scripts do:
`time_ids = (original h, original w, crop top, crop left, bucket h, bucket w)`, the crop corner in the resized
image. A horizontal flip mirrors the crop, so its corner becomes `resized w - left - bucket w`.
Every random choice of a sample comes from a generator seeded by (seed, epoch, index), so a resumed run sees
the same crops, flips and captions as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIX = ".txt"
BUCKET_STEP = 64  # SDXL's VAE downsamples by 8 and the UNet by 8 more; diffusers/kohya buckets use 64


class ImageDatasetError(Exception):
    """An image dataset that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str | None  # None: no caption sidecar / field
    height: int
    width: int


def _caption_sidecar(image: Path) -> str | None:
    sidecar = image.with_suffix(CAPTION_SUFFIX)
    if not sidecar.is_file():
        return None
    return sidecar.read_text(encoding="utf-8").strip()


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) after EXIF orientation, from the header only."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
    return height, width


def list_images(source: Path) -> list[tuple[Path, str | None]]:
    """(image path, caption or None) of a folder with sidecars or of a JSONL file, in a stable order."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return [(p, _caption_sidecar(p)) for p in files]
    if source.suffix.lower() == ".jsonl" and source.is_file():
        rows = []
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImageDatasetError(f"{source}:{n}: not valid JSON ({exc})") from None
            if not isinstance(row, dict) or not row.get("image"):
                raise ImageDatasetError(f"{source}:{n}: a row needs 'image' (and 'caption'), got {row!r}")
            image = Path(row["image"])
            caption = row.get("caption")
            rows.append((image if image.is_absolute() else source.parent / image, None if caption is None else str(caption)))
        return rows
    raise ImageDatasetError(f"{source}: expected a folder of images with .txt captions or a .jsonl file of (image, caption)")


def scan_images(source: Path) -> list[ImageItem]:
    """Every image with its caption and size; raises ImageDatasetError listing unreadable images, missing
    captions and an empty dataset at once (`mvtune dataset validate` reports more)."""
    items, problems = [], []
    for path, caption in list_images(source):
        try:
            height, width = _image_size(path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            problems.append(f"{path}: not a readable image ({exc})")
            continue
        if caption is None:
            problems.append(f"{path}: no caption (write {path.with_suffix(CAPTION_SUFFIX).name} or a 'caption' field)")
            continue
        items.append(ImageItem(path, caption, height, width))
    if not items and not problems:
        problems.append(f"{source}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images found")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ImageDatasetError("image dataset problems (see `mvtune dataset validate`):\n  - " + "\n  - ".join(shown))
    return items


# ---- buckets and crops -------------------------------------------------------------------------------------


def bucket_sizes(resolution: int, max_aspect: float = 2.0, step: int = BUCKET_STEP) -> list[tuple[int, int]]:
    """(height, width) buckets: for each width a multiple of `step`, the largest height (a multiple of `step`)
    that keeps the area within resolution**2, limited to aspect ratios up to `max_aspect` either way."""
    if resolution % step:
        raise ImageDatasetError(f"resolution {resolution} must be a multiple of {step} for aspect-ratio buckets")
    area = resolution * resolution
    buckets = set()
    width = step
    while width <= area // step:
        height = (area // width) // step * step
        if height >= step and max(height / width, width / height) <= max_aspect:
            buckets.add((height, width))
        width += step
    return sorted(buckets, key=lambda hw: (hw[1] / hw[0], hw))


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (in log ratio: 2:1 and 1:2 are equally far
    from 1:1); ties go to the larger area."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda hw: (abs(math.log(hw[1] / hw[0]) - ratio), -hw[0] * hw[1]))


@dataclass(frozen=True)
class Crop:
    """How one image becomes a bucket-sized sample, and the SDXL time ids that describe it."""

    original: tuple[int, int]  # (h, w) of the file
    resized: tuple[int, int]  # (h, w) after the cover resize
    top: int
    left: int  # in the resized image, after the flip
    bucket: tuple[int, int]
    flip: bool

    @property
    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        return (*self.original, self.top, self.left, *self.bucket)


def plan_crop(
    original: tuple[int, int], bucket: tuple[int, int], rng: np.random.Generator | None, flip: bool = False
) -> Crop:
    """Resize to cover the bucket (aspect kept), then a random crop (`rng`) or the centred one (`rng` None)."""
    (h, w), (bh, bw) = original, bucket
    scale = max(bh / h, bw / w)
    rh, rw = max(bh, round(h * scale)), max(bw, round(w * scale))
    if rng is None:
        top, left = int(round((rh - bh) / 2.0)), int(round((rw - bw) / 2.0))
    else:
        top, left = int(rng.integers(0, rh - bh + 1)), int(rng.integers(0, rw - bw + 1))
    if flip:
        left = rw - left - bw
    return Crop(original=(h, w), resized=(rh, rw), top=top, left=left, bucket=(bh, bw), flip=flip)


def load_rgb(path: Path) -> Image.Image:
    """The image upright (EXIF), in RGB; transparency is composited over white (concept art often has none
    drawn behind the subject, and black would teach a dark background)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P", "PA"):
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, image).convert("RGB")
        return image.convert("RGB")


def apply_crop(image: Image.Image, crop: Crop) -> np.ndarray:
    """(bucket h, bucket w, 3) uint8: resize, flip, then crop at the (flipped) corner."""
    rh, rw = crop.resized
    image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    if crop.flip:
        image = ImageOps.mirror(image)
    bh, bw = crop.bucket
    return np.asarray(image.crop((crop.left, crop.top, crop.left + bw, crop.top + bh)))


# ---- captions ----------------------------------------------------------------------------------------------


def caption_for_step(
    caption: str, rng: np.random.Generator, dropout: float = 0.0, shuffle_tags: bool = False, keep_tokens: int = 0
) -> str:
    """Caption dropout (to "", the unconditional prompt) and a shuffle of comma-separated tags that keeps the
    first `keep_tokens` tags (the trigger phrase) in place, as kohya's trainer does."""
    if dropout > 0 and rng.random() < dropout:
        return ""
    if not shuffle_tags:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    order = rng.permutation(len(rest))
    return ", ".join(kept + [rest[i] for i in order])


# ---- dataset and batches -----------------------------------------------------------------------------------


class ImageDataset:
    """Image samples {"rgb" [3, h, w] float in [0, 1], "prompt", "time_ids" [6], "id"}; index = epoch * len + i
    (see EpochSampler), so every worker knows the epoch its random choices belong to."""

    def __init__(
        self,
        source: Path,
        resolution: int,
        buckets: bool = True,
        max_aspect: float = 2.0,
        random_crop: bool = True,
        flip_prob: float = 0.0,
        caption_dropout: float = 0.0,
        shuffle_tags: bool = False,
        keep_tokens: int = 0,
        seed: int = 0,
    ):
        self.source = Path(source)
        self.items = scan_images(self.source)
        sizes = bucket_sizes(resolution, max_aspect) if buckets else [(resolution, resolution)]
        self.buckets = [nearest_bucket(item.height, item.width, sizes) for item in self.items]
        self.random_crop, self.flip_prob, self.seed = random_crop, flip_prob, seed
        self.caption_dropout, self.shuffle_tags, self.keep_tokens = caption_dropout, shuffle_tags, keep_tokens
        root = self.source if self.source.is_dir() else self.source.parent
        self.ids = [_item_id(item.path, root) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def crop(self, i: int, epoch: int = 0) -> tuple[Crop, np.random.Generator]:
        rng = np.random.default_rng([self.seed, epoch, i])
        flip = self.flip_prob > 0 and rng.random() < self.flip_prob
        item = self.items[i]
        return plan_crop((item.height, item.width), self.buckets[i], rng if self.random_crop else None, flip), rng

    def sample(self, i: int, epoch: int = 0) -> dict:
        import torch

        crop, rng = self.crop(i, epoch)
        item = self.items[i]
        try:
            pixels = apply_crop(load_rgb(item.path), crop)
        except (OSError, ValueError) as exc:
            raise ImageDatasetError(f"{item.path}: cannot be read ({exc})") from exc
        prompt = caption_for_step(item.caption or "", rng, self.caption_dropout, self.shuffle_tags, self.keep_tokens)
        return {
            "rgb": torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0,
            "prompt": prompt,
            "time_ids": torch.tensor(crop.time_ids, dtype=torch.float32),
            "id": self.ids[i],
        }

    def __getitem__(self, index: int) -> dict:
        epoch, i = divmod(int(index), len(self))
        return self.sample(i, epoch)


def _item_id(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).with_suffix("").as_posix()
    except ValueError:
        return path.with_suffix("").as_posix()


def collate_images(samples: list[dict]) -> dict:
    """Stack same-bucket samples; `reg` marks prior-preservation (class) images."""
    import torch

    shapes = {tuple(s["rgb"].shape) for s in samples}
    if len(shapes) > 1:
        raise ImageDatasetError(f"one batch mixes image sizes {sorted(shapes)}; batches must come from one bucket")
    return {
        "rgb": torch.stack([s["rgb"] for s in samples]),
        "prompt": [s["prompt"] for s in samples],
        "time_ids": torch.stack([s["time_ids"] for s in samples]),
        "id": [s["id"] for s in samples],
        "reg": torch.tensor([bool(s.get("reg", False)) for s in samples]),
    }


class BucketBatchSampler:
    """Batches of one bucket each, in an order that is a pure function of (seed, epoch); shards batches across
    DDP ranks and can skip the batches of one epoch a resumed run already consumed.

    `buckets_for_epoch(epoch)` gives the bucket of every index for that epoch (a prior mix's class slots walk
    through the class images, so their buckets may change between epochs). Yielded indices carry the epoch
    (`epoch * size + i`), like EpochSampler's.
    """

    def __init__(self, size: int, buckets_for_epoch, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        from mvtune.data.loader import EpochSampler

        self.size, self.buckets_for_epoch, self.batch_size, self.seed = size, buckets_for_epoch, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        # The epoch's shuffled order; Lightning calls set_epoch on `batch_sampler.sampler` each epoch.
        self.sampler = EpochSampler(size, shuffle=True, seed=seed)
        self.skip: tuple[int, int] | None = None  # (epoch, batches of this rank already done)
        if not self._batches(0):
            counts = {}
            for bucket in buckets_for_epoch(0):
                counts[bucket] = counts.get(bucket, 0) + 1
            raise ImageDatasetError(
                f"no bucket holds data.batch_size={batch_size} images (images per bucket: "
                f"{ {f'{h}x{w}': n for (h, w), n in sorted(counts.items())} }); lower data.batch_size or set "
                "data.images.buckets=false"
            )

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _batches(self, epoch: int) -> list[list[int]]:
        """Epoch-offset indices grouped into full single-bucket batches, the batches in a seeded order."""
        buckets = self.buckets_for_epoch(epoch)
        self.sampler.set_epoch(epoch)
        groups: dict[tuple[int, int], list[int]] = {}
        for index in self.sampler:
            groups.setdefault(buckets[index % self.size], []).append(index)
        batches = [
            members[k : k + self.batch_size]
            for _, members in sorted(groups.items())
            for k in range(0, len(members) - self.batch_size + 1, self.batch_size)
        ]
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
        return [batches[int(j)] for j in order]

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        batches = self._batches(epoch)
        if self.num_replicas > 1:
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches = (batches * math.ceil(total / len(batches)))[:total][self.rank :: self.num_replicas]
        return batches

    def __len__(self) -> int:
        return len(self._rank_batches(self.epoch))

    def __iter__(self):
        # A generator, so the order is read at the first batch: Lightning creates the iterator before it calls
        # set_epoch, and a resumed run must see the restored epoch.
        batches = self._rank_batches(self.epoch)
        if self.skip is not None and self.skip[0] == self.epoch:
            batches = batches[self.skip[1] :]
            self.skip = None
        yield from batches


# ---- validation (`mvtune dataset validate` on an image dataset) ----------------------------------------------

#: Below this side an image cannot fill even the smallest bucket; below `min_side` it is upscaled a lot.
MIN_USABLE_SIDE = BUCKET_STEP
#: Perceptual hashes this close (of 64 bits) are the same picture (resized, recompressed, lightly edited).
DUPLICATE_BITS = 4


def is_image_dataset(source: Path) -> bool:
    """A .jsonl file, or a folder with images that is not a rendered multi-view dataset."""
    source = Path(source)
    if source.is_file():
        return source.suffix.lower() == ".jsonl"
    if not source.is_dir() or (source / "scene_list.json").exists() or (source / "manifest.json").exists():
        return False
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in source.rglob("*"))


def validate_images(source: Path, min_side: int = 512, on_progress=None):
    """Findings on an image dataset: unreadable, too small or tiny images, missing or empty captions,
    duplicates by perceptual hash, captions that name a protected term (the prompt guard's list)."""
    from mvtune.data.neardup import phash
    from mvtune.data.validate import ValidationReport
    from mvtune.prompts.guard import find_protected

    source = Path(source)
    report = ValidationReport(root=str(source), variant="images", image_names=[])
    try:
        rows = list_images(source)
    except ImageDatasetError as exc:
        report.add("error", "not_a_dataset", str(exc))
        return report
    report.objects = len(rows)
    if not rows:
        report.add("error", "empty", f"{source}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images found")
    hashes: list[tuple[int, str]] = []
    for n, (path, caption) in enumerate(rows):
        name = str(path.relative_to(source) if source.is_dir() else path)
        try:
            image = load_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            report.add("error", "unreadable", f"{path}: not a readable image ({exc})", name)
            continue
        side = min(image.size)
        if side < MIN_USABLE_SIDE:
            report.add("error", "too_small", f"{image.size[0]}x{image.size[1]}: smaller than {MIN_USABLE_SIDE} px, no bucket fits", name)
        elif side < min_side:
            report.add("warning", "tiny", f"{image.size[0]}x{image.size[1]}: shorter side under {min_side} px, upscaled in training", name)
        if caption is None:
            report.add("error", "missing_caption", f"no caption: write {path.with_suffix(CAPTION_SUFFIX).name} or a 'caption' field", name)
        elif not caption.strip():
            report.add("warning", "empty_caption", "the caption is empty (trains as the unconditional prompt)", name)
        else:
            term = find_protected(caption)
            if term:
                report.add("warning", "protected", f"the caption names the protected term {term!r}: {caption!r}", name)
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        hashes.append((phash(gray), name))
        if on_progress is not None:
            on_progress(n + 1, len(rows))
    _duplicates(hashes, report)
    return report


def _duplicates(hashes: list[tuple[int, str]], report) -> None:
    if len(hashes) < 2:
        return
    values = np.array([h for h, _ in hashes], dtype=np.uint64)
    for i in range(len(values) - 1):
        distance = np.bitwise_count(values[i + 1 :] ^ values[i])
        for j in np.nonzero(distance <= DUPLICATE_BITS)[0]:
            other = hashes[i + 1 + int(j)][1]
            report.add("warning", "duplicate", f"looks the same as {other} (perceptual hash {int(distance[j])}/64 bits apart)",
                       hashes[i][1])
