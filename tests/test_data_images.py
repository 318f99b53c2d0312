"""Image datasets for concept LoRAs: sources, buckets, crops and SDXL time ids (hand-computed), captions, batches."""

import json

import numpy as np
import pytest
from PIL import Image

from mvtune.data.images import (
    BucketBatchSampler,
    ImageDataset,
    ImageDatasetError,
    bucket_sizes,
    caption_for_step,
    collate_images,
    nearest_bucket,
    plan_crop,
    scan_images,
)


def write_image(path, height, width, colour=(200, 30, 30), caption="a duck"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = colour
    pixels[:, : width // 4] = (0, 0, 255)  # a blue left edge: flips are visible
    Image.fromarray(pixels).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def test_sdxl_buckets_at_1024_are_the_known_ones():
    buckets = bucket_sizes(1024, max_aspect=2.0)
    # width 1024 -> 1024; 1152 -> floor(1048576/1152/64)*64 = 896; 1216 -> 832; 1344 -> 768; 1408 -> 704
    for hw in [(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (768, 1344), (704, 1408)]:
        assert hw in buckets
    assert all(h % 64 == 0 and w % 64 == 0 and h * w <= 1024 * 1024 for h, w in buckets)
    assert all(max(h / w, w / h) <= 2.0 for h, w in buckets)
    assert (640, 1536) not in buckets  # 2.4:1 is past max_aspect
    assert nearest_bucket(1080, 1920, buckets) == (768, 1344)  # 16:9 (1.778) -> 1.75
    assert nearest_bucket(1920, 1080, buckets) == (1344, 768)
    assert nearest_bucket(500, 500, buckets) == (1024, 1024)
    with pytest.raises(ImageDatasetError, match="multiple of 64"):
        bucket_sizes(1000)


def test_crop_and_time_ids_hand_computed():
    # 600x800 (h x w) into the 768x1024 bucket: scale max(768/600, 1024/800) = 1.28 -> 768x1024, no slack.
    crop = plan_crop((600, 800), (768, 1024), rng=None)
    assert crop.resized == (768, 1024) and (crop.top, crop.left) == (0, 0)
    assert crop.time_ids == (600, 800, 0, 0, 768, 1024)
    # 1000x2000 into 1024x1024 (no buckets): scale 1.024 -> 1024x2048; centred left = (2048-1024)/2 = 512.
    crop = plan_crop((1000, 2000), (1024, 1024), rng=None)
    assert crop.resized == (1024, 2048) and crop.time_ids == (1000, 2000, 0, 512, 1024, 1024)
    # The same crop flipped: the mirrored crop's corner is 2048 - 512 - 1024 = 512; an off-centre one moves.
    assert plan_crop((1000, 2000), (1024, 1024), rng=None, flip=True).left == 512
    rng = np.random.default_rng(0)
    random_crop = plan_crop((1000, 2000), (1024, 1024), rng=np.random.default_rng(0))
    left = int(rng.integers(0, 1)), int(rng.integers(0, 1025))
    assert (random_crop.top, random_crop.left) == left
    flipped = plan_crop((1000, 2000), (1024, 1024), rng=np.random.default_rng(0), flip=True)
    assert flipped.left == 2048 - random_crop.left - 1024


def test_folder_dataset_samples_match_their_time_ids(tmp_path):
    write_image(tmp_path / "ds" / "wide.png", 64, 128, caption="sks duck, red helmet, yellow coat")
    write_image(tmp_path / "ds" / "sub" / "tall.jpg", 128, 64, caption="sks duck, axe")
    write_image(tmp_path / "ds" / "square.webp", 80, 80, caption="sks duck")
    # 256**2 pixels, steps of 64, up to 2:1: buckets 320x192, 256x256, 192x320 (5:3 is the widest that fits).
    assert bucket_sizes(256, max_aspect=2.0) == [(320, 192), (256, 256), (192, 320)]
    ds = ImageDataset(tmp_path / "ds", resolution=256, max_aspect=2.0, random_crop=False)
    assert ds.ids == ["square", "sub/tall", "wide"]
    assert ds.buckets == [(256, 256), (320, 192), (192, 320)]
    square, tall, wide = ds[0], ds[1], ds[2]
    assert square["rgb"].shape == (3, 256, 256) and square["prompt"] == "sks duck"
    assert square["time_ids"].tolist() == [80, 80, 0, 0, 256, 256]
    # 128x64 into 320x192: scale max(320/128, 192/64) = 3 -> 384x192; centred top (384-320)/2 = 32.
    assert tall["rgb"].shape == (3, 320, 192) and tall["time_ids"].tolist() == [128, 64, 32, 0, 320, 192]
    assert wide["time_ids"].tolist() == [64, 128, 0, 32, 192, 320]
    assert wide["id"] == "wide" and wide["prompt"] == "sks duck, red helmet, yellow coat"


def test_captions_dropout_and_tag_shuffle_keep_leading_tokens():
    rng = np.random.default_rng(3)
    caption = "sks duck, red helmet, yellow coat, axe, boots"
    seen = {caption_for_step(caption, rng, shuffle_tags=True, keep_tokens=1) for _ in range(50)}
    assert len(seen) > 5
    assert all(s.startswith("sks duck, ") and sorted(s.split(", ")) == sorted(caption.split(", ")) for s in seen)
    dropped = [caption_for_step(caption, np.random.default_rng(i), dropout=0.3) for i in range(400)]
    assert 0.2 < dropped.count("") / 400 < 0.4
    assert caption_for_step(caption, rng) == caption


def test_jsonl_source_and_problems_listed_at_once(tmp_path):
    write_image(tmp_path / "img" / "a.png", 64, 64, caption=None)
    write_image(tmp_path / "img" / "b.png", 64, 64, caption=None)
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    rows = [{"image": "img/a.png", "caption": "sks duck"}, {"image": "img/b.png", "caption": "sks duck, axe"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = scan_images(tmp_path / "data.jsonl")
    assert [i.caption for i in items] == ["sks duck", "sks duck, axe"]
    with pytest.raises(ImageDatasetError) as info:
        scan_images(tmp_path / "img")
    message = str(info.value)
    assert "broken.png: not a readable image" in message and "a.png: no caption" in message and "b.png: no caption" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageDatasetError, match="no png/jpg/jpeg/webp images"):
        scan_images(tmp_path / "empty")


def test_bucket_batches_are_single_bucket_deterministic_and_resume(tmp_path):
    buckets = [(64, 64)] * 5 + [(64, 128)] * 4 + [(128, 64)]
    sampler = BucketBatchSampler(len(buckets), lambda epoch: buckets, batch_size=2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4  # 2 of (64,64) (one left over), 2 of (64,128); (128,64) alone drops
    assert all(len({buckets[i] for i in b}) == 1 for b in batches)
    assert list(BucketBatchSampler(len(buckets), lambda e: buckets, 2, seed=1)) == batches
    sampler.set_epoch(1)
    second = list(sampler)
    assert all(i >= len(buckets) for b in second for i in b) and second != [[i + 10 for i in b] for b in batches]
    sampler.skip = (1, 3)
    assert list(sampler) == second[3:]
    assert list(sampler) == second  # the skip applies once
    with pytest.raises(ImageDatasetError, match="no bucket holds data.batch_size=6"):
        BucketBatchSampler(len(buckets), lambda e: buckets, batch_size=6)
    with pytest.raises(ImageDatasetError, match="mixes image sizes"):
        import torch

        collate_images([{"rgb": torch.zeros(3, 8, 8), "prompt": "", "time_ids": torch.zeros(6), "id": "a"},
                        {"rgb": torch.zeros(3, 8, 16), "prompt": "", "time_ids": torch.zeros(6), "id": "b"}])


def test_random_crops_and_flips_are_reproducible_per_epoch(tmp_path):
    write_image(tmp_path / "ds" / "wide.png", 64, 160, caption="sks duck")
    ds = ImageDataset(tmp_path / "ds", resolution=64, buckets=False, flip_prob=0.5, seed=2)
    samples = [ds[epoch * len(ds)] for epoch in range(12)]
    again = ImageDataset(tmp_path / "ds", resolution=64, buckets=False, flip_prob=0.5, seed=2)
    assert all((a["rgb"] == again[k * len(ds)]["rgb"]).all() for k, a in enumerate(samples))
    lefts = {int(s["time_ids"][3]) for s in samples}
    assert len(lefts) > 2  # random crops along the 160 px side
    flipped = [ds.crop(0, epoch)[0].flip for epoch in range(12)]
    assert any(flipped) and not all(flipped)
    for epoch, sample in enumerate(samples):
        crop = ds.crop(0, epoch)[0]
        blue = sample["rgb"][2, 32] > 0.9  # the image's blue left quarter (40 px) after crop/flip
        source_columns = np.arange(160)[::-1] if crop.flip else np.arange(160)
        expected = source_columns[crop.left : crop.left + 64] < 40
        assert (blue.numpy() == expected).all(), epoch


def test_validate_flags_unreadable_small_uncaptioned_duplicate_and_protected(tmp_path, cli):
    from mvtune.data.images import is_image_dataset, validate_images

    ds = tmp_path / "ds"
    rng = np.random.default_rng(1)
    noise = (rng.random((600, 600, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(ds.mkdir() or ds / "a.png")
    (ds / "a.txt").write_text("sks duck, red helmet")
    Image.fromarray(noise).resize((560, 560)).save(ds / "a_copy.jpg", quality=90)  # same picture, resized
    (ds / "a_copy.txt").write_text("sks duck")
    for seed, (name, side, caption) in enumerate([("small.png", 300, "sks duck"), ("speck.png", 40, "sks duck"),
                                                 ("nocap.png", 600, None), ("mouse.png", 600, "Mickey Mouse as a firefighter")]):
        pixels = (np.random.default_rng(seed + 10).random((side, side, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(ds / name)
        if caption:
            (ds / name).with_suffix(".txt").write_text(caption)
    (ds / "broken.webp").write_bytes(b"not a webp")
    assert is_image_dataset(ds) and not is_image_dataset(tmp_path / "missing")

    report = validate_images(ds, min_side=512)
    codes = {(f.code, f.object_id) for f in report.findings}
    assert ("unreadable", "broken.webp") in codes
    assert ("too_small", "speck.png") in codes and ("tiny", "small.png") in codes
    assert ("missing_caption", "nocap.png") in codes
    assert ("protected", "mouse.png") in codes
    assert ("duplicate", "a.png") in codes or ("duplicate", "a_copy.jpg") in codes
    assert not any(f.code == "duplicate" and f.object_id in ("mouse.png", "nocap.png") for f in report.findings)
    assert not report.ok and report.objects == 7

    result = cli("dataset", "validate", ds, expect=1)
    saved = json.loads((ds / "validation_report.json").read_text())
    assert saved["counts"]["error:unreadable"] == 1 and "FAILED" in result.stdout + result.stderr
