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
