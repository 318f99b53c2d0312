"""Augmentations keep the camera layout and geometry encoding: colour jitter, mirroring, captions of copies."""

import json
import shutil

import numpy as np
import pytest
import torch

from mvtune.data import MultiviewDataset
from mvtune.data.augment import adjust_caption, augment_meshes, jitter_rgb, mirror_permutation
from mvtune.data.splits import check_leakage, split_dataset
from test_data_synth import write_object


def geometry_close(a, b, mask_a, mask_b, mask_frac: float, outlier_frac: float = 0.0, tol: float = 1e-3):
    """Masks differ on < mask_frac of pixels; positions within tol except on < outlier_frac of shared pixels."""
    both = (mask_a > 0) & (mask_b > 0)
    assert ((mask_a > 0) != (mask_b > 0)).mean() < mask_frac
    pos = (a["source_rgb"][:, :3] - b["source_rgb"][:, :3]).abs().amax(dim=1).numpy()
    assert (pos[both] > tol).mean() <= outlier_frac


def test_mirror_permutations():
    assert mirror_permutation("tg2mv") == [0, 3, 2, 1, 4, 5]
    assert mirror_permutation("t2mv") == [0, 5, 4, 3, 2, 1]


@pytest.mark.parametrize("file_res,load_res", [(96, 96), (128, 96)])
def test_mirrored_views_equal_the_mirrored_render(tmp_path, file_res, load_res):
    write_object(tmp_path / "ds" / "pl" / "plain", file_res, seed=0)
    write_object(tmp_path / "ds" / "mi" / "mirrored", file_res, seed=0, mirror=True)
    kw = dict(height=load_res, width=load_res, allow_missing_captions=True)
    flipped = MultiviewDataset(tmp_path / "ds", ["plain"], mirror_prob=1.0, **kw)
    render = MultiviewDataset(tmp_path / "ds", ["mirrored"], **kw)
    a, b = flipped[0], render[0]
    mask_a = flipped.load_views(0)
    from mvtune.data.augment import mirror_views

    mask_a = mirror_views(mask_a, "tg2mv").mask
    mask_b = render.load_views(0).mask
    torch.testing.assert_close(a["c2w"], b["c2w"])
    if file_res == load_res:  # same pixels: exact up to 8-bit normal rounding
        geometry_close(a, b, mask_a, mask_b, mask_frac=0.005)
        assert (a["source_rgb"][:, 3:] - b["source_rgb"][:, 3:]).abs().max() <= 1 / 255 + 1e-6
        assert (a["rgb"] - b["rgb"]).abs().max() <= 1 / 255 + 1e-6
    else:
        # The reference's 4:3 nearest resize is not mirror-symmetric: mirroring after it shifts the sampled
        # source pixels by up to one (1.1/file_res world units); on the steep rims of small spheres that moves
        # depth by more, so only most pixels are within the bound. At 1024 -> 768 the shift is ~1e-3.
        geometry_close(a, b, mask_a, mask_b, mask_frac=0.03, outlier_frac=0.2, tol=1.5 * 1.1 / file_res)
        pos = (a["source_rgb"][:, :3] - b["source_rgb"][:, :3]).abs().amax(dim=1).numpy()
        assert np.median(pos[(mask_a > 0) & (mask_b > 0)]) < 1.1 / file_res
        assert (a["source_rgb"][:, 3:] - b["source_rgb"][:, 3:]).abs().mean() < 0.01
    # the un-mirrored object differs, so the test has teeth
    plain = MultiviewDataset(tmp_path / "ds", ["plain"], **kw)[0]
    assert (plain["source_rgb"] - b["source_rgb"]).abs().mean() > 0.01


def test_mirrored_rendered_duck_matches_its_mirrored_mesh(tmp_path):
    """The same check through the real renderer: a duck GLB reflected in glTF x (= world X)."""
    import trimesh

    from mvtune.meshes import write_sample_meshes
    from mvtune.render.dataset import RenderConfig, render_dataset

    meshes = tmp_path / "meshes"
    src = write_sample_meshes(meshes, count=1)[0]
    scene = trimesh.load(str(src), force="scene", process=False)
    scene.apply_transform(np.diag([-1.0, 1.0, 1.0, 1.0]))
    (meshes / "mirrored.glb").write_bytes(scene.export(file_type="glb"))
    render_dataset(RenderConfig(input=meshes, out_dir=tmp_path / "ds", resolution=96))
    kw = dict(height=96, width=96, allow_missing_captions=True)
    flipped = MultiviewDataset(tmp_path / "ds", [src.stem], mirror_prob=1.0, **kw)
    render = MultiviewDataset(tmp_path / "ds", ["mirrored"], **kw)
    from mvtune.data.augment import mirror_views

    mask_a = mirror_views(flipped.load_views(0), "tg2mv").mask
    a, b = flipped[0], render[0]
    geometry_close(a, b, mask_a, render.load_views(0).mask, mask_frac=0.01, outlier_frac=0.05)
    normals = (a["source_rgb"][:, 3:] - b["source_rgb"][:, 3:]).abs()
    assert normals.mean() < 0.01


def test_jitter_rgb():
    colours = np.array([[255, 0, 0], [10, 200, 30], [128, 128, 128]], dtype=np.uint8)
    np.testing.assert_array_equal(jitter_rgb(colours, 0.0, 1.0, 1.0), colours)
    np.testing.assert_array_equal(jitter_rgb(colours[:1], 1 / 3, 1.0, 1.0), [[0, 255, 0]])
    np.testing.assert_array_equal(jitter_rgb(colours[2:], 0.25, 2.0, 1.0), colours[2:])  # grey has no hue


def test_adjust_caption():
    assert adjust_caption("a Yellow rubber duck", 0.17, 1.0) == ("a Green rubber duck", [])
    assert adjust_caption("a yellow duck", 0.02, 1.0) == ("a yellow duck", [])
    _, review = adjust_caption("a brown bear", 0.2, 1.0)
    assert review and "brown" in review[0]


def test_colour_jitter_copies_keep_geometry_group_and_split(tmp_path):
    from mvtune.meshes import write_sample_meshes
    from mvtune.render.dataset import RenderConfig, render_dataset

    meshes = tmp_path / "meshes"
    write_sample_meshes(meshes, count=2)
    report = augment_meshes(meshes, tmp_path / "aug", copies=2, hue=0.3, seed=1)
    assert len(report["objects"]) == 4 and not report["failed"]
    for path in (tmp_path / "aug").glob("*.glb"):
        shutil.copy(path, meshes / path.name)
        for ext in (".json", ".txt"):
            shutil.copy(path.with_suffix(ext), meshes / path.with_suffix(ext).name)
    render_dataset(RenderConfig(input=meshes, out_dir=tmp_path / "ds", resolution=64))
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())["objects"]
    for entry in report["objects"]:
        child, parent = manifest[entry["id"]], manifest[entry["parent"]]
        assert child["group"] == parent["group"] == parent["source_sha256"]
        assert child["parent"] == entry["parent"]
        assert child["concept"] == parent["concept"]
        caption = json.loads((tmp_path / "ds" / "captions.json").read_text())[entry["id"]]
        assert caption == entry["caption_after"]
    ds = MultiviewDataset(tmp_path / "ds", tmp_path / "ds" / "scene_list.json", height=48, width=48)
    samples = {ds.ids[i]: ds[i] for i in range(len(ds))}
    for entry in report["objects"]:
        a, b = samples[entry["id"]], samples[entry["parent"]]
        torch.testing.assert_close(a["source_rgb"], b["source_rgb"], rtol=0, atol=0)  # geometry maps unchanged
        assert (a["rgb"] - b["rgb"]).abs().max() > 0.1  # colours changed
    split_dataset(tmp_path / "ds", val=0.25, test=0.25, seed=0)
    assert check_leakage(tmp_path / "ds") == []


def test_a_copy_torn_while_writing_leaves_no_glb(tmp_path, monkeypatch):
    """`mvtune render` treats every .glb as a mesh: a half-written copy must never appear under its name."""
    from pathlib import Path

    from mvtune.meshes import write_sample_meshes

    write_sample_meshes(tmp_path / "meshes", count=1)
    real_write_bytes = Path.write_bytes

    def torn(self, data):
        if self.name.startswith(".") or self.suffix == ".glb":
            real_write_bytes(self, data[: len(data) // 2])
            raise OSError("disk full")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", torn)
    report = augment_meshes(tmp_path / "meshes", tmp_path / "aug", copies=1)
    assert len(report["failed"]) == 1 and "disk full" in report["failed"][0]["reason"]
    assert list((tmp_path / "aug").glob("*.glb")) == [] and list((tmp_path / "aug").glob(".*")) == []


def _big_texture_glb(path, size: int):
    import trimesh
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32).astype(np.uint8)
    rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((size, size), 90, np.uint8)), -1)
    box = trimesh.creation.box()
    uv = np.random.default_rng(0).uniform(0, 1, (len(box.vertices), 2))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(rgb, "RGB"))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(trimesh.Scene(box).export(file_type="glb"))


def test_jitter_stays_within_its_memory_bound(tmp_path):
    """Colour jitter in uint8 and float32 chunks: a 2048² texture (16 MiB as RGBA) must not cost ~160 B/texel."""
    import subprocess
    import sys

    size = 2048
    _big_texture_glb(tmp_path / "in" / "box.glb", size)
    probe = (
        "import resource, sys; from mvtune.data.augment import augment_meshes;"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "r = augment_meshes(sys.argv[1], sys.argv[2]); assert not r['failed'], r;"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "in"), str(tmp_path / "aug")],
                         capture_output=True, text=True, check=True)
    before, peak = (int(v) * 1024 for v in out.stdout.split())  # KiB on Linux
    per_texel = (peak - before) / size**2
    assert per_texel < 40, f"augment took {per_texel:.0f} bytes per texel above its imports"
    from PIL import Image
    import trimesh

    scene = trimesh.load(tmp_path / "aug" / "box_aug0.glb", force="scene", process=False)
    (geometry,) = scene.geometry.values()
    assert geometry.visual.material.baseColorTexture.size == (size, size)  # the copy keeps its texture
    assert isinstance(geometry.visual.material.baseColorTexture, Image.Image)


def test_a_texture_too_large_to_decode_is_a_failure_not_a_bare_copy(tmp_path):
    import struct
    import zlib

    import trimesh

    _big_texture_glb(tmp_path / "src" / "box.glb", 8)
    files = trimesh.load(tmp_path / "src" / "box.glb", force="scene").export(file_type="gltf")
    (tmp_path / "in").mkdir()
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)
    gltf = tmp_path / "in" / next(n for n in files if n.endswith(".gltf"))
    header = json.loads(gltf.read_text())
    header["images"] = [{"uri": "big.png", "mimeType": "image/png"}]
    gltf.write_text(json.dumps(header))
    image = "big.png"

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    # A valid PNG header that claims 50000 x 50000 pixels: the header alone must refuse it.
    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    (tmp_path / "in" / image).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    report = augment_meshes(tmp_path / "in", tmp_path / "aug")
    assert len(report["failed"]) == 1 and "pixels" in report["failed"][0]["reason"]
    assert not list((tmp_path / "aug").glob("*.glb"))


def test_a_second_augment_into_the_same_folder_is_refused(tmp_path):
    from mvtune.data.augment import AugmentError
    from mvtune.meshes import write_sample_meshes
    from mvtune.storage import folder_lock

    write_sample_meshes(tmp_path / "meshes", count=1)
    with folder_lock(tmp_path / "aug", "another augment"):
        with pytest.raises(AugmentError, match="another augment"):
            augment_meshes(tmp_path / "meshes", tmp_path / "aug")
