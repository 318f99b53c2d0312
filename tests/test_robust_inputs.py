"""Hostile inputs (issue 10, items 6-8): files outside a mesh's folder, scene-list entries outside the dataset,
and bad captions, missing objects and oversized views as one-line errors (exit 2) instead of tracebacks."""

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvtune.data.validate import SceneEntryError, read_scene_list, scene_dir
from mvtune.meshes.load import OutsideReferenceError, load_mesh

TRIANGLE = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"


def _obj_with_texture(folder: Path, mtl_line: str, map_line: str, texture: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texture.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), (200, 30, 30), np.uint8)).save(texture)
    mtl = folder / mtl_line.split()[1] if not Path(mtl_line.split()[1]).is_absolute() else Path(mtl_line.split()[1])
    mtl.parent.mkdir(parents=True, exist_ok=True)
    mtl.write_text(f"newmtl a\nKd 1 1 1\n{map_line}\n")
    obj = folder / "m.obj"
    obj.write_text(f"{mtl_line}\n{TRIANGLE}usemtl a\nf 1/1 2/2 3/3\n")
    return obj


def test_mtl_texture_outside_the_mesh_folder_is_refused_unless_allowed(tmp_path):
    secret = tmp_path / "secret" / "secret.png"
    obj = _obj_with_texture(tmp_path / "a" / "b" / "c", "mtllib m.mtl", "map_Kd ../../../secret/secret.png", secret)
    with pytest.raises(OutsideReferenceError, match=r"texture '\.\./\.\./\.\./secret/secret\.png'.*outside the mesh's folder"):
        load_mesh(obj)
    mesh = load_mesh(obj, allow_outside=True)
    assert mesh.parts[0].texture is not None and mesh.parts[0].texture[0, 0, 0] == 200


def test_absolute_mtllib_is_refused(tmp_path):
    mtl = tmp_path / "elsewhere" / "abs.mtl"
    obj = _obj_with_texture(tmp_path / "mesh", f"mtllib {mtl}", "map_Kd tex.png", tmp_path / "elsewhere" / "tex.png")
    with pytest.raises(OutsideReferenceError, match="material library"):
        load_mesh(obj)


def test_render_reports_the_outside_reference_and_exits_1(tmp_path, cli):
    obj = _obj_with_texture(tmp_path / "in" / "x", "mtllib m.mtl", "map_Kd ../../secret.png", tmp_path / "secret.png")
    result = cli("render", obj.parent, tmp_path / "ds", "--resolution", "32", expect=1)
    (error,) = [json.loads(line) for line in (tmp_path / "ds" / "errors.jsonl").read_text().splitlines()]
    assert "outside the mesh's folder" in error["reason"] and "Traceback" not in result.stderr


@pytest.mark.parametrize("entry", ["/etc", "../outside", "ab/../../x", "/tmp/x/y"])
def test_scene_entries_outside_the_root_are_refused_by_the_one_resolver(tmp_path, entry):
    with pytest.raises(SceneEntryError, match="outside the dataset root"):
        scene_dir(tmp_path, entry)
    (tmp_path / "list.json").write_text(json.dumps(["duck", entry]))
    with pytest.raises(SceneEntryError, match=repr(entry).replace("/", ".").replace("(", ".")):
        read_scene_list(tmp_path / "list.json", tmp_path)
    assert scene_dir(tmp_path, "duck") == tmp_path / "du" / "duck"
    assert scene_dir(tmp_path, "du/duck") == tmp_path / "du" / "duck"


def test_a_symlink_out_of_the_root_is_refused(tmp_path):
    (tmp_path / "root" / "ou").mkdir(parents=True)
    (tmp_path / "root" / "ou" / "out").symlink_to(tmp_path)
    with pytest.raises(SceneEntryError, match="resolves to"):
        scene_dir(tmp_path / "root", "out")


@pytest.fixture(scope="module")
def escaping(ducks, tmp_path_factory):
    """The ducks dataset copied, with an absolute entry in its scene list (and an /etc-like folder to read)."""
    root = tmp_path_factory.mktemp("escape") / "ds"
    shutil.copytree(ducks, root)
    outside = root.parent / "etc"
    outside.mkdir()
    (outside / "meta.json").write_text("{}")
    ids = json.loads((root / "scene_list.json").read_text())
    (root / "scene_list.json").write_text(json.dumps([*ids, str(outside)]))
    (root / "split_train.json").write_text(json.dumps([*json.loads((root / "split_train.json").read_text()),
                                                       str(outside)]))
    return root


def test_every_reader_refuses_an_escaping_entry(escaping, tmp_path):
    from mvtune.data.cache import build_cache
    from mvtune.data.loader import DatasetError, MultiviewDataset
    from mvtune.data.splits import SplitError, split_dataset
    from mvtune.data.validate import validate_dataset

    with pytest.raises(SplitError, match="outside the dataset root"):
        split_dataset(escaping)
    with pytest.raises(DatasetError, match="outside the dataset root"):
        MultiviewDataset(escaping, escaping / "scene_list.json", allow_missing_captions=True)
    with pytest.raises(DatasetError, match="outside the dataset root"):
        build_cache(escaping, tmp_path / "cache", height=32, width=32)
    report = validate_dataset(escaping, "tg2mv", check_pixels=False)
    assert any(f.code == "path-escape" for f in report.errors)


def _train(cli, ducks, *overrides, expect=2):
    from test_train_run import tiny_overrides

    return cli("train", _config(ducks), *tiny_overrides(ducks.parent / "runs", 1), *overrides, expect=expect)


def _config(ducks: Path) -> Path:
    path = ducks.parent / "train.yaml"
    path.write_text(f"data:\n  root: {ducks}\nmodel:\n  base: tiny\n")
    return path


@pytest.mark.slow  # each case starts a training process (~30 s on 2 cores)
@pytest.mark.parametrize("content", [["a duck"], {"duck": 5}])
def test_train_with_a_bad_captions_file_is_one_line(escaping, ducks, tmp_path, cli, content):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(content))
    result = _train(cli, ducks, f"data.captions={captions}")
    assert "Traceback" not in result.stderr and str(captions) in result.stderr.replace("\n", "")


@pytest.mark.slow
def test_train_with_a_missing_object_or_an_escaping_entry_is_one_line(ducks, escaping, tmp_path, cli):
    listing = tmp_path / "train.json"
    listing.write_text(json.dumps([*json.loads((ducks / "split_train.json").read_text()), "no_such_duck"]))
    result = _train(cli, ducks, f"data.scene_list={listing}")
    assert "Traceback" not in result.stderr and "no_such_duck" in result.stderr
    result = _train(cli, escaping)
    assert "Traceback" not in result.stderr and "outside the dataset root" in result.stderr.replace("\n", "")


def _png_header(path: Path, size: int) -> None:
    """A PNG whose header claims size x size pixels (no pixel data): only a header check can read it safely."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [13000, 50000])
def test_texture_with_an_oversized_view_is_one_line_without_decoding(sample_meshes_dir, tmp_path, cli, size):
    from mvtune.generate import write_views

    mesh = sorted(sample_meshes_dir.glob("*.glb"))[0]
    views = tmp_path / "views"
    write_views(views, mesh, [np.full((32, 32, 3), 128, np.uint8)] * 6)
    _png_header(views / "view_0002.png", size)
    result = cli("texture", "--mesh", mesh, "--views", views, "--out", tmp_path / "t.glb", "--texture-size", "64",
                 "--no-turntable", expect=2)
    assert "Traceback" not in result.stderr and "view_0002.png" in result.stderr
