"""The dataset commands chained as a user runs them: samples -> augment -> render -> split -> validate."""

import json


def test_augment_render_split_validate_and_leakage(tmp_path, cli):
    meshes = tmp_path / "meshes"
    cli("samples", meshes, "--count", "4")
    cli("augment", meshes, meshes / "aug", "--copies", "1", "--seed", "3")
    data = tmp_path / "ds"
    cli("render", meshes, data, "--resolution", "48", "--workers", "2")
    ids = json.loads((data / "scene_list.json").read_text())
    assert len(ids) == 8
    manifest = json.loads((data / "manifest.json").read_text())["objects"]
    copies = [i for i in ids if i.endswith("_aug0")]
    for copy in copies:
        parent = manifest[copy]["parent"]
        assert manifest[copy]["group"] == manifest[parent]["source_sha256"]

    out = cli("dataset", "split", data, "--val", "0.25", "--test", "0.25", "--seed", "1")
    assert "source groups" in out.stderr
    splits = {name: json.loads((data / f"split_{name}.json").read_text()) for name in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(ids)
    for copy in copies:
        parent = manifest[copy]["parent"]
        assert [n for n, s in splits.items() if copy in s] == [n for n, s in splits.items() if parent in s]
    cli("dataset", "validate", data)

    # move one augmented copy into another split than its source: validation must call it a leak
    copy = copies[0]
    home = next(n for n, s in splits.items() if copy in s)
    other = next(n for n in splits if n != home)
    splits[home].remove(copy)
    splits[other].append(copy)
    for name, members in splits.items():
        (data / f"split_{name}.json").write_text(json.dumps(members))
    bad = cli("dataset", "validate", data, expect=1)
    assert "split-leakage" in json.loads((data / "validation_report.json").read_text())["counts"].__repr__()
    assert copy in bad.stderr or manifest[copy]["parent"] in bad.stderr


def test_bad_option_values_exit_2_naming_the_option(tmp_path, cli):
    meshes = tmp_path / "meshes"
    cases = [
        (("samples", meshes, "--count", "-3"), "--count"),
        (("dataset", "validate", tmp_path, "--views", "0000,0001"), "--views"),
        (("dataset", "cache", tmp_path, tmp_path / "c", "--resolution", "0"), "--resolution"),
        (("dataset", "cache", tmp_path, tmp_path / "c", "--variant", "foo"), "--variant"),
        (("augment", tmp_path, tmp_path / "a", "--hue", "-1"), "--hue"),
        (("augment", tmp_path, tmp_path / "a", "--saturation", "2"), "--saturation"),
    ]
    for args, option in cases:
        result = cli(*args, expect=2)
        assert option in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not meshes.exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli("samples", blocker / "sub", expect=2)
    assert "cannot write" in result.stderr


def test_gltf_vertex_colours_are_linear_ply_colours_srgb(tmp_path, ctx):
    """glTF 2.0 defines COLOR_0 as linear: linear 0.5 (byte 128) displays as sRGB 188; a PLY's 128 stays 128."""
    import numpy as np
    import trimesh

    from mvtune import cameras
    from mvtune.meshes import load_mesh
    from mvtune.render import Renderer

    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=np.tile([128, 128, 128, 255], (len(box.vertices), 1)))
    box.export(tmp_path / "box.glb")
    box.export(tmp_path / "box.ply")
    renderer = Renderer(32, lighting="albedo", ctx=ctx)
    centre = {}
    for suffix in ("glb", "ply"):
        mesh = load_mesh(tmp_path / f"box.{suffix}")
        color = renderer.render(mesh, [cameras.ortho10()[0]])[0].color
        centre[suffix] = int(color[16, 16, 0])
    assert abs(centre["glb"] - 188) <= 1 and abs(centre["ply"] - 128) <= 1, centre


def test_render_settings_record_the_colour_rules():
    """Datasets rendered while COLOR_0 was read as sRGB must not count as done (their marker's settings differ)."""
    from mvtune.meshes.load import COLOR_RULES_VERSION
    from mvtune.render.dataset import RenderConfig

    assert COLOR_RULES_VERSION >= 2
    assert RenderConfig(input=".", out_dir="x").settings()["color_rules"] == COLOR_RULES_VERSION


def test_validate_refuses_a_folder_that_is_not_a_dataset(tmp_path, cli):
    folder = tmp_path / "downloads"  # (a folder of images is an image dataset for concept LoRAs)
    folder.mkdir()
    (folder / "notes.pdf").write_bytes(b"not a dataset")
    out = cli("dataset", "validate", folder, expect=2)
    assert "is not a dataset" in out.stderr and "━" not in out.stderr  # no empty progress bar before the error
    assert sorted(p.name for p in folder.iterdir()) == ["notes.pdf"]  # no report written into it


def test_render_with_other_settings_needs_force_and_no_op_reruns_show_no_bar(tmp_path, cli):
    meshes = tmp_path / "meshes"
    cli("samples", meshes, "--count", "1")
    data = tmp_path / "ds"
    cli("render", meshes, data, "--resolution", "32")
    rerun = cli("render", meshes, data, "--resolution", "32")
    assert "1 already done" in rerun.stderr and "━" not in rerun.stderr
    before = {p: p.stat().st_mtime_ns for p in data.rglob("color_0000.webp")}
    refused = cli("render", meshes, data, "--resolution", "48", expect=2)
    assert "resolution 32 -> 48" in refused.stderr and "--force" in refused.stderr
    assert {p: p.stat().st_mtime_ns for p in data.rglob("color_0000.webp")} == before
    forced = cli("render", meshes, data, "--resolution", "48", "--force")
    assert "1 rendered" in forced.stderr
    assert json.loads((data / "render_config.json").read_text())["resolution"] == 48
