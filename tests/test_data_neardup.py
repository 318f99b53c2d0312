"""Near-duplicates on the team's failure: ten colour-jittered copies of each of 20 meshes, sidecars removed.

Without provenance, split used to scatter the copies of one duck over train and test. The fingerprints must
put each mesh's ten copies in one group (and no two meshes together), split must keep every group in one split,
and validate must report near-duplicate pairs across splits made without them.
"""

import json

import numpy as np
import pytest

from mvtune.data.neardup import (
    CACHE,
    fingerprint_dataset,
    near_duplicate_groups,
    near_duplicate_pairs,
    phash,
)

#: Sample ducks with different geometry (the plain colours share one body) and stretches that make new shapes.
SHAPES = ("duck_yellow", "duck_firefighter", "duck_astronaut", "duck_wizard")
STRETCHES = ((1, 1, 1), (1, 1.7, 1), (1.7, 1, 1), (1, 1, 1.7), (1, 0.55, 1))
COPIES = 10


def _family(object_id: str) -> str:
    return object_id.rsplit("_aug", 1)[0]


@pytest.fixture(scope="module")
def jittered(tmp_path_factory):
    """200 objects (20 meshes x 10 colour-jittered copies, no sidecars), rendered at 32 px, front + top views."""
    from mvtune.data.augment import augment_meshes
    from mvtune.meshes.procedural import sample_mesh
    from mvtune.render.dataset import RenderConfig, render_dataset

    base = tmp_path_factory.mktemp("jittered")
    sources = base / "sources"
    sources.mkdir()
    for shape in SHAPES:
        for k, stretch in enumerate(STRETCHES):
            scene = sample_mesh(shape)
            scene.apply_transform(np.diag([*stretch, 1.0]))
            for geometry in scene.geometry.values():
                if getattr(geometry.visual, "uv", None) is not None:
                    # vertex colours instead of the texture atlas: the same jitter, ten times faster to write
                    geometry.visual = geometry.visual.to_color()
            (sources / f"{shape}_{k}.glb").write_bytes(scene.export(file_type="glb"))
    copies = base / "copies"
    report = augment_meshes(sources, copies, copies=COPIES, hue=0.15, saturation=0.3, brightness=0.2, seed=0)
    assert len(report["objects"]) == len(SHAPES) * len(STRETCHES) * COPIES and not report["failed"]
    for sidecar in copies.glob("*_aug*.json"):  # the team's copies had lost their provenance
        sidecar.unlink()
    for caption in copies.glob("*_aug*.txt"):
        caption.write_text("a duck\n")
    summary = render_dataset(RenderConfig(input=copies, out_dir=base / "ds", resolution=32, layout="0:0,180:89.99"))
    assert summary.failed == 0, summary.errors
    manifest = json.loads((base / "ds" / "manifest.json").read_text())["objects"]
    assert len({record["group"] for record in manifest.values()}) == len(manifest)  # no provenance links left
    return base / "ds"


def test_phash_tolerates_small_changes_and_separates_shapes():
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 400).astype(np.float32)
    shifted = ((yy - 33) ** 2 + (xx - 32) ** 2 < 400).astype(np.float32)
    bar = ((abs(yy - 32) < 6) & (abs(xx - 32) < 28)).astype(np.float32)
    bits = lambda a, b: bin(phash(a) ^ phash(b)).count("1")  # noqa: E731
    assert bits(disc, disc) == 0
    assert bits(disc, shifted) <= 8
    assert bits(disc, bar) >= 20


def test_copies_group_together_and_meshes_stay_apart(jittered):
    prints, problems = fingerprint_dataset(jittered)
    assert not problems and len(prints) == 200
    groups = near_duplicate_groups(prints)
    assert len(groups) == 20
    for group in groups:
        assert len(group) == COPIES and len({_family(i) for i in group}) == 1, group
    pairs = near_duplicate_pairs(prints)
    assert all(_family(a) == _family(b) for a, b, _, _ in pairs)
    assert all(geometry == 0.0 for _, _, _, geometry in pairs)  # copies share their geometry exactly


def test_cache_is_reused_and_refreshed(jittered, monkeypatch):
    import mvtune.data.neardup as neardup

    assert (jittered / CACHE).exists()
    before, _ = fingerprint_dataset(jittered)

    def fail(*args, **kwargs):
        raise AssertionError("fingerprint recomputed although its files did not change")

    monkeypatch.setattr(neardup, "view_hash", fail)
    monkeypatch.setattr(neardup, "geometry_fingerprint", fail)
    after, _ = fingerprint_dataset(jittered, write_cache=False)
    assert after == before


def test_split_keeps_near_duplicates_together_and_validate_reports_leaks(jittered):
    from mvtune.data.splits import SPLIT_FILES, near_duplicate_leaks, split_dataset
    from mvtune.data.validate import validate_dataset
    from mvtune.storage import write_json

    report = split_dataset(jittered, val=0.1, test=0.2, seed=3)
    assert len(report["near_duplicate_groups"]) == 20
    split_of = {}
    for name, file in SPLIT_FILES.items():
        for object_id in json.loads((jittered / file).read_text()):
            split_of[object_id] = name
    assert len(split_of) == 200
    by_family = {}
    for object_id, name in split_of.items():
        by_family.setdefault(_family(object_id), set()).add(name)
    assert all(len(names) == 1 for names in by_family.values()), by_family
    assert {n for names in by_family.values() for n in names} == {"train", "val", "test"}
    assert near_duplicate_leaks(jittered) == []

    # the team's split: objects shuffled one by one, as when nothing links the copies
    ids = sorted(split_of)
    np.random.default_rng(0).shuffle(ids)
    write_json(jittered / SPLIT_FILES["train"], ids[:140])
    write_json(jittered / SPLIT_FILES["val"], ids[140:160])
    write_json(jittered / SPLIT_FILES["test"], ids[160:])
    leaks = near_duplicate_leaks(jittered)
    assert len(leaks) == 20 and all("near-duplicate pair(s) across splits" in leak for leak in leaks)
    result = validate_dataset(jittered, "tg2mv", image_names=["0000", "0001"] * 3)
    codes = [finding.code for finding in result.errors]
    assert codes.count("near-duplicate-leakage") == 20


def test_banded_search_finds_every_pair_within_the_threshold():
    """The band index must not lose pairs: random hashes plus copies with up to 16 flipped bits (8 where only
    one view is shared) are all found, and nothing farther is reported."""
    from mvtune.data.neardup import MAX_HASH_BITS, Fingerprint

    rng = np.random.default_rng(1)
    prints, expected = {}, set()
    for k in range(400):
        bits = rng.integers(0, 2, 256, dtype=np.uint8)
        hexes = np.packbits(bits).tobytes().hex()
        one_view = k % 7 == 0
        prints[f"o{k:03d}"] = Fingerprint(f"o{k:03d}", "", hexes[:32], None if one_view else hexes[32:], None)
        if k % 4 == 0:
            flips = int(rng.integers(0, MAX_HASH_BITS // 2 + 1)) if one_view else int(rng.integers(0, MAX_HASH_BITS + 1))
            copy = bits.copy()
            copy[rng.choice(128 if one_view else 256, flips, replace=False)] ^= 1
            copy_hex = np.packbits(copy).tobytes().hex()
            prints[f"c{k:03d}"] = Fingerprint(f"c{k:03d}", "", copy_hex[:32], None if one_view else copy_hex[32:], None)
            expected.add((f"c{k:03d}", f"o{k:03d}"))
    found = {(a, b) for a, b, _, _ in near_duplicate_pairs(prints)}
    assert found == expected
