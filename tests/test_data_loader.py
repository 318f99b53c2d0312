"""The training loader: equivalence with the reference procedure, pose-based view choice, errors, cache, batches."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mvtune import cameras
from mvtune.data import MultiviewDataset
from mvtune.data.loader import DatasetError, MultiviewDataModule, collate_multiview
from mvtune.data.reference import reference_sample
from test_data_synth import write_dataset

FILE_RES, LOAD_RES = 128, 96


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synth") / "ds", ["aa_one", "bb_two"], res=FILE_RES)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """Procedural ducks through the real renderer and dataset writer."""
    from mvtune.meshes import write_sample_meshes
    from mvtune.render.dataset import RenderConfig, render_dataset

    base = tmp_path_factory.mktemp("rendered")
    write_sample_meshes(base / "meshes", count=2)
    summary = render_dataset(RenderConfig(input=base / "meshes", out_dir=base / "ds", resolution=FILE_RES))
    assert summary.failed == 0, summary.errors
    return base / "ds"


def assert_equivalent(ds: MultiviewDataset, i: int, image_names=None):
    """Ours vs the reference: rgb within 1/255, positions within 1e-3 where both masks are set, masks < 0.5%."""
    sample = ds[i]
    views = ds.load_views(i)
    directory = ds.root / ds.ids[i][:2] / ds.ids[i]
    ref = reference_sample(directory, image_names or views.indices, ds.height, ds.width, geometry=ds.variant == "tg2mv")
    assert sample["rgb"].dtype == torch.float32
    assert np.abs(sample["rgb"].numpy() - ref["rgb"]).max() <= 1 / 255
    np.testing.assert_allclose(sample["c2w"].numpy(), ref["c2w"], atol=1e-6)
    ours = sample["source_rgb"].numpy()
    if ds.variant == "tg2mv":
        both = (views.mask > 0) & (ref["position_mask"] > 0)
        assert ((views.mask > 0) != (ref["position_mask"] > 0)).mean() < 0.005
        assert np.abs(ours[:, :3] - ref["source_rgb"][:, :3]).max(axis=1)[both].max() <= 1e-3
        assert np.abs(ours[:, 3:] - ref["source_rgb"][:, 3:]).max() <= 1 / 255 + 1e-6
        background = ~both & (ref["normal_mask"] == 0)
        assert np.allclose(ours[:, :3].transpose(1, 0, 2, 3)[:, background], 0.5)
    else:
        np.testing.assert_allclose(ours, ref["source_rgb"], atol=1e-6)
    return sample


@pytest.mark.parametrize("variant", ["tg2mv", "t2mv"])
def test_matches_reference_on_synthetic_golden_data(synth, variant):
    ds = MultiviewDataset(synth, synth / "scene_list.json", variant=variant, height=LOAD_RES, width=LOAD_RES)
    for i in range(len(ds)):
        sample = assert_equivalent(ds, i, list(cameras.variant_views(variant).ortho10_indices))
        assert sample["rgb"].shape == (6, 3, LOAD_RES, LOAD_RES)
        assert sample["source_rgb"].shape == (6, 6, LOAD_RES, LOAD_RES)
        assert sample["prompt"] == f"a red toy {ds.ids[i]}"


def test_matches_reference_on_rendered_ducks(rendered):
    ds = MultiviewDataset(rendered, rendered / "scene_list.json", height=LOAD_RES, width=LOAD_RES)
    for i in range(len(ds)):
        assert_equivalent(ds, i, list(cameras.variant_views("tg2mv").ortho10_indices))


def test_matches_reference_at_real_sizes(tmp_path):
    """1024² files loaded at 768², the sizes MV-Adapter trains with."""
    from mvtune.meshes import write_sample_meshes
    from mvtune.render.dataset import RenderConfig, render_dataset

    write_sample_meshes(tmp_path / "meshes", count=1)
    render_dataset(RenderConfig(input=tmp_path / "meshes", out_dir=tmp_path / "ds", resolution=1024))
    ds = MultiviewDataset(tmp_path / "ds", tmp_path / "ds" / "scene_list.json")
    assert_equivalent(ds, 0, list(cameras.variant_views("tg2mv").ortho10_indices))


def test_real_fixture_meshes_match_reference(shared_meshes, tmp_path):
    from mvtune.render.dataset import RenderConfig, render_dataset

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    for name in ("Duck.glb", "BoxTextured.glb"):
        shutil.copy(shared_meshes / name, meshes / name)
    summary = render_dataset(RenderConfig(input=meshes, out_dir=tmp_path / "ds", resolution=FILE_RES))
    assert summary.failed == 0, summary.errors
    ds = MultiviewDataset(tmp_path / "ds", tmp_path / "ds" / "scene_list.json", height=LOAD_RES, width=LOAD_RES,
                          allow_missing_captions=True)
    for i in range(len(ds)):
        assert_equivalent(ds, i, list(cameras.variant_views("tg2mv").ortho10_indices))


def shuffled_copy(src: Path, dst: Path, seed: int = 3) -> dict[str, str]:
    """Copy a dataset renaming every object's view indices by one permutation; returns old -> new index."""
    shutil.copytree(src, dst)
    old = [f"{i:04d}" for i in range(10)]
    new = [f"{i:04d}" for i in np.random.default_rng(seed).permutation(10)]
    mapping = dict(zip(old, new))
    for meta_path in dst.rglob("meta.json"):
        directory = meta_path.parent
        for kind, ext in (("color", "webp"), ("depth", "exr"), ("normal", "webp")):
            for o in old:
                (directory / f"{kind}_{o}.{ext}").rename(directory / f"tmp_{kind}_{mapping[o]}.{ext}")
            for p in directory.glob("tmp_*"):
                p.rename(directory / p.name[4:])
        meta = json.loads(meta_path.read_text())
        for loc in meta["locations"]:
            loc["index"] = mapping[loc["index"]]
        meta["locations"].reverse()
        meta_path.write_text(json.dumps(meta))
    return mapping


def test_views_chosen_by_pose_not_file_index(synth, tmp_path):
    mapping = shuffled_copy(synth, tmp_path / "shuffled")
    a = MultiviewDataset(synth, synth / "scene_list.json", height=LOAD_RES, width=LOAD_RES)
    b = MultiviewDataset(tmp_path / "shuffled", synth / "scene_list.json", height=LOAD_RES, width=LOAD_RES)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        for key in ("rgb", "source_rgb", "c2w"):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
        assert b.load_views(i).indices == [mapping[k] for k in cameras.variant_views("tg2mv").ortho10_indices]
    # the reference, trusting file indices, now feeds the wrong views
    wrong = reference_sample(tmp_path / "shuffled" / "aa" / "aa_one", ["0000", "0001", "0002", "0003", "0008", "0009"],
                             LOAD_RES, LOAD_RES)
    assert np.abs(wrong["rgb"] - a[0]["rgb"].numpy()).max() > 0.1


def test_missing_pose_is_a_clear_error(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "ds")
    meta_path = tmp_path / "ds" / "aa" / "aa_one" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["locations"] = [loc for loc in meta["locations"] if loc["index"] not in ("0008", "0001")]
    meta_path.write_text(json.dumps(meta))
    ds = MultiviewDataset(tmp_path / "ds", ["aa_one"], height=LOAD_RES, width=LOAD_RES)
    with pytest.raises(DatasetError, match=r"aa_one.*right \(azimuth 90, elevation 0\); top \(azimuth 180"):
        ds[0]


def test_corrupt_file_raises_with_path_or_is_skipped(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "ds")
    bad = tmp_path / "ds" / "aa" / "aa_one" / "normal_0002.webp"
    bad.write_bytes(b"not a webp")
    raising = MultiviewDataset(tmp_path / "ds", tmp_path / "ds" / "scene_list.json", height=32, width=32)
    with pytest.raises(DatasetError, match=str(bad)):
        raising[0]
    (tmp_path / "ds" / "bb" / "bb_two" / "depth_0000.exr").unlink()
    with pytest.raises(DatasetError, match="depth_0000.exr is missing"):
        raising[1]

    shutil.copytree(synth / "bb", tmp_path / "ds" / "cc", dirs_exist_ok=True)
    (tmp_path / "ds" / "cc" / "bb_two").rename(tmp_path / "ds" / "cc" / "cc_ok")
    skipping = MultiviewDataset(tmp_path / "ds", ["aa_one", "bb_two", "cc_ok"], height=32, width=32,
                                on_error="skip", allow_missing_captions=True)
    loader = torch.utils.data.DataLoader(skipping, batch_size=1, num_workers=2, collate_fn=collate_multiview)
    ids = [batch["id"][0] for batch in loader]
    assert ids == ["cc_ok", "cc_ok", "cc_ok"]
    assert skipping.skipped >= 2


def test_collate_shapes_and_micro_conditioning(synth):
    ds = MultiviewDataset(synth, synth / "scene_list.json", height=32, width=48)
    batch = collate_multiview([ds[0], ds[1]])
    assert batch["rgb"].shape == (12, 3, 32, 48)
    assert batch["source_rgb"].shape == (12, 6, 32, 48)
    assert batch["c2w"].shape == (12, 4, 4)
    assert batch["num_views"] == 6 and len(batch["prompt"]) == 2
    assert batch["time_ids"].tolist() == [[32, 48, 0, 0, 32, 48]] * 2
    assert batch["original_size"].tolist() == [[32, 48]] * 2


def test_datamodule_uses_split_files(synth, tmp_path):
    from mvtune.data.splits import split_dataset

    shutil.copytree(synth, tmp_path / "ds")
    split_dataset(tmp_path / "ds", val=0.5, test=0.0, seed=0)
    dm = MultiviewDataModule(tmp_path / "ds", height=32, width=32, num_workers=0)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["rgb"].shape == (6, 3, 32, 32)
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 2
    with pytest.raises(DatasetError, match="dataset split"):
        MultiviewDataModule(synth, num_workers=0).setup("fit")


def test_cache_is_identical_and_invalidated_when_files_change(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "ds")
    root = tmp_path / "ds"
    plain = MultiviewDataset(root, ["aa_one"], height=LOAD_RES, width=LOAD_RES)
    cached = MultiviewDataset(root, ["aa_one"], height=LOAD_RES, width=LOAD_RES, cache_dir=tmp_path / "cache")
    first, again = cached[0], cached[0]
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 1
    for key in ("rgb", "source_rgb", "c2w"):
        torch.testing.assert_close(first[key], plain[0][key], rtol=0, atol=0)
        torch.testing.assert_close(again[key], plain[0][key], rtol=0, atol=0)
    # rewrite the front colour with the back view's pixels: the cache must notice
    obj = root / "aa" / "aa_one"
    shutil.copy(obj / "color_0002.webp", obj / "color_0000.webp")
    os.utime(obj / "color_0000.webp", ns=(1, 1))
    changed = cached[0]
    torch.testing.assert_close(changed["rgb"], plain[0]["rgb"], rtol=0, atol=0)
    torch.testing.assert_close(changed["rgb"][0], changed["rgb"][2], rtol=0, atol=0)
    other_size = MultiviewDataset(root, ["aa_one"], height=32, width=32, cache_dir=tmp_path / "cache")
    assert other_size[0]["rgb"].shape[-1] == 32
    # both sizes stay cached side by side: switching back is a hit, not a rebuild
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")}
    cached[0], other_size[0]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")} == before


def test_captions_lists_templates_and_missing(synth, tmp_path):
    templates = tmp_path / "templates.yaml"
    templates.write_text("templates: ['{caption}', 'a 3D model of {caption}']\nsynonyms: {toy: [figurine, plaything]}\n")
    captions = {"aa_one": ["a red toy", "a small red toy", "a toy"], "bb_two": "a blue ball"}
    ds = MultiviewDataset(synth, synth / "scene_list.json", height=16, width=16, captions=captions,
                          caption_templates=templates, seed=1)
    n = len(ds)
    per_epoch = [[ds[e * n + i]["prompt"] for i in range(n)] for e in range(12)]
    assert per_epoch == [[ds[e * n + i]["prompt"] for i in range(n)] for e in range(12)]  # deterministic
    seen = {p[0] for p in per_epoch}
    assert len(seen) > 3 and any("figurine" in p or "plaything" in p for p in seen)
    assert all(p[1] in ("a blue ball", "a 3D model of a blue ball") for p in per_epoch)
    with pytest.raises(DatasetError, match="bb_two"):
        MultiviewDataset(synth, synth / "scene_list.json", captions={"aa_one": "x"})
    with pytest.raises(DatasetError, match="allow_missing_captions"):
        MultiviewDataset(synth, synth / "scene_list.json", captions=tmp_path / "absent.json")
    lenient = MultiviewDataset(synth, synth / "scene_list.json", captions={"aa_one": "x"}, allow_missing_captions=True,
                               height=16, width=16)
    assert lenient[1]["prompt"] == ""


def test_random_background_changes_rgb_only(synth):
    gray = MultiviewDataset(synth, ["aa_one"], height=LOAD_RES, width=LOAD_RES)
    rand = MultiviewDataset(synth, ["aa_one"], height=LOAD_RES, width=LOAD_RES, background="random")
    a, b = gray[0], rand[0]
    torch.testing.assert_close(a["source_rgb"], b["source_rgb"], rtol=0, atol=0)
    alpha = torch.from_numpy(gray.load_views(0).color[:, 3]).float() / 255
    object_pixels = (alpha == 1)[:, None].expand_as(a["rgb"])
    torch.testing.assert_close(a["rgb"][object_pixels], b["rgb"][object_pixels])
    assert (a["rgb"] - b["rgb"]).abs().max() > 0.05
    assert rand[1]["rgb"][0, :, 0, 0].tolist() != b["rgb"][0, :, 0, 0].tolist()  # a new colour per epoch


def test_importing_mvtune_data_does_not_import_torch():
    code = "import sys, mvtune.data, mvtune.data.validate; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_cache_fills_and_reports(synth, tmp_path):
    from mvtune.data.cache import build_cache

    shutil.copytree(synth, tmp_path / "ds")
    (tmp_path / "ds" / "bb" / "bb_two" / "color_0000.webp").unlink()
    report = build_cache(tmp_path / "ds", tmp_path / "cache", height=32, width=32)
    assert (report["cached"], report["failed"]) == (1, 1)
    assert "color_0000.webp is missing" in report["errors"][0]["reason"]
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1


def test_cache_shards_split_the_objects_and_run_together(synth, tmp_path):
    """Slurm array tasks: shard i takes the scene-list positions k % n == i; one shard holding the cache does
    not lock out the other, an unsharded build does."""
    from mvtune.data.cache import build_cache
    from mvtune.data.loader import DatasetError
    from mvtune.storage import folder_lock

    with folder_lock(tmp_path / "cache", "another shard", shared=True):
        reports = [build_cache(synth, tmp_path / "cache", height=32, width=32, shard=(i, 2)) for i in range(2)]
        with pytest.raises(DatasetError, match="in use by"):
            build_cache(synth, tmp_path / "cache", height=32, width=32)
    assert [r["cached"] for r in reports] == [1, 1]
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2


def test_meta_top_level_scale_perspective_views_and_inf_background(synth, tmp_path):
    """Spec §2.4: a top-level ortho_scale alone is enough; a PERSP view is never back-projected as ORTHO;
    §2.2 d: an inf background (65535 stored as half) is background in both loaders, not NaN."""
    from test_data_synth import write_depth_exr

    shutil.copytree(synth, tmp_path / "ds")
    obj = tmp_path / "ds" / "aa" / "aa_one"
    meta = json.loads((obj / "meta.json").read_text())
    for loc in meta["locations"]:
        del loc["ortho_scale"]
    meta["ortho_scale"] = 1.1
    (obj / "meta.json").write_text(json.dumps(meta))
    depth = OpenEXR_depth(obj / "depth_0000.exr")
    write_depth_exr(obj / "depth_0000.exr", np.where(depth > 1000, np.inf, depth).astype(np.float32))
    original = MultiviewDataset(synth, ["aa_one"], height=LOAD_RES, width=LOAD_RES)[0]
    ds = MultiviewDataset(tmp_path / "ds", ["aa_one"], height=LOAD_RES, width=LOAD_RES)
    sample = assert_equivalent(ds, 0, list(cameras.variant_views("tg2mv").ortho10_indices))
    torch.testing.assert_close(sample["source_rgb"], original["source_rgb"], rtol=0, atol=0)
    ref = reference_sample(obj, ["0000"], LOAD_RES, LOAD_RES)
    assert np.isfinite(ref["source_rgb"]).all()

    meta["locations"][0]["projection_type"] = "PERSP"
    (obj / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"front \(azimuth 0, elevation 0\)"):
        MultiviewDataset(tmp_path / "ds", ["aa_one"], height=LOAD_RES, width=LOAD_RES)[0]


def OpenEXR_depth(path: Path) -> np.ndarray:
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as f:
        return np.asarray(f.channels()["R"].pixels, dtype=np.float32)


def test_skip_counter_works_with_spawned_workers(synth, tmp_path):
    shutil.copytree(synth, tmp_path / "ds")
    (tmp_path / "ds" / "aa" / "aa_one" / "color_0000.webp").write_bytes(b"junk")
    ds = MultiviewDataset(tmp_path / "ds", ["aa_one", "bb_two"], height=16, width=16, on_error="skip")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, num_workers=1, collate_fn=collate_multiview, multiprocessing_context="spawn"
    )
    assert [batch["id"][0] for batch in loader] == ["bb_two", "bb_two"]
    assert ds.skipped == 1
