"""What a new user meets before any work starts: every option and path checked up front (exit 2, one line per
problem), loader errors named once, and no empty output folders left behind by a failed command."""

import json


def test_demo_checks_every_option_before_work(tmp_path, cli):
    out = tmp_path / "demo"
    bad = cli("demo", "--out", out, "--device", "tpu", "--steps", "0", "--base-model", tmp_path / "no-sdxl",
              "--train-resolution", "50", expect=2)
    for part in ("--device must be", "--steps must be at least 1", "--base-model", "not a local diffusers SDXL folder",
                 "--train-resolution must be a multiple of 32"):
        assert part in bad.stderr, part
    assert "Traceback" not in bad.stderr and not out.exists()


def test_generate_checks_options_and_paths_before_work(tmp_path, cli):
    out = tmp_path / "views"
    bad = cli("generate", "--mesh", tmp_path / "missing.glb", "--prompt", "a duck", "--base-model", tmp_path / "nope",
              "--out", out, "--device", "tpu", expect=2)
    for part in ("--device must be", "--base-model", "--mesh", "does not exist"):
        assert part in bad.stderr, part
    assert not out.exists()


def test_generate_names_a_bad_mesh_once_and_leaves_no_empty_folder(tmp_path, cli, tiny_base):
    mesh = tmp_path / "notamesh.glb"
    mesh.write_text("hello")
    out = tmp_path / "views"
    bad = cli("generate", "--mesh", mesh, "--prompt", "a duck", "--base-model", tiny_base, "--out", out,
              "--steps", "1", "--resolution", "64", expect=1)
    line = next(line for line in bad.stderr.splitlines() if "error:" in line)
    assert "not a GLB file" in line and line.count("notamesh.glb") == 1, line
    assert not out.exists()


def test_augment_reports_the_loaders_error_for_a_non_mesh(tmp_path, cli):
    mesh = tmp_path / "notamesh.glb"
    mesh.write_text("hello")
    bad = cli("augment", mesh, tmp_path / "aug", expect=1)
    assert "not a GLB file" in bad.stderr and "buffer size" not in bad.stderr
    report = json.loads((tmp_path / "aug" / "augment_report.json").read_text())
    assert "not a GLB file" in report["failed"][0]["reason"]


def test_tiny_model_refuses_an_unwritable_target_before_building(tmp_path, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = cli("tiny-model", blocker / "sdxl", expect=2)
    assert "tiny-model target" in bad.stderr and "Traceback" not in bad.stderr


def test_help_texts_say_what_the_commands_do(cli):
    demo = " ".join(cli("demo", "--help").stdout.split())
    stages = ["render", "split", "validate", "train", "sample", "textured GLB"]
    assert [demo.index(s) for s in stages] == sorted(demo.index(s) for s in stages), demo[:300]
    assert "31 MB" in " ".join(cli("tiny-model", "--help").stdout.split())
    assert "run folder" in " ".join(cli("train", "--help").stdout.split())  # --resume takes one, as docs say
