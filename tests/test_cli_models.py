"""The model-side commands wired as users call them: tiny-model -> generate -> texture, train, demo."""

import json
from pathlib import Path


def test_generate_then_texture(tmp_path, cli):
    base = tmp_path / "tiny"
    cli("tiny-model", base)
    meshes = tmp_path / "meshes"
    cli("samples", meshes, "--count", "1")
    mesh = next(meshes.glob("*.glb"))
    views = tmp_path / "views"
    cli("generate", "--mesh", mesh, "--prompt", "a blue duck", "--base-model", base, "--out", views,
        "--steps", "2", "--resolution", "64", "--seed", "7")
    record = json.loads((views / "generate.json").read_text())
    assert record["seed"] == 7 and len(list(views.glob("view_*.png"))) == 6
    glb = tmp_path / "out" / "duck.glb"
    glb.parent.mkdir()
    cli("texture", "--mesh", mesh, "--views", views, "--out", glb, "--texture-size", "256")
    assert glb.stat().st_size > 0 and glb.with_name("duck_turntable.gif").exists()
    bad = cli("generate", "--mesh", mesh, "--base-model", base, "--out", views, expect=2)
    assert "--mesh and --prompt" in bad.stderr
    bad = cli("texture", "--mesh", mesh, "--out", tmp_path / "x.glb", expect=2)
    assert "views" in bad.stderr


def test_train_refuses_the_users_config_with_the_fix(tmp_path, cli, user_yaml):
    result = cli("train", user_yaml, "trainer.max_stepz=3", expect=2)
    assert "max_steps" in result.stderr  # the closest valid key is named


def test_demo_end_to_end(tmp_path, cli):
    out = tmp_path / "demo"
    cli("demo", "--out", out, "--steps", "4", "--render-resolution", "64", "--texture-size", "128")
    summary = json.loads((out / "demo_summary.json").read_text())
    assert Path(summary["textured_glb"]).exists() and Path(summary["held_out_grid"]).exists()
    assert (Path(summary["run"]) / "export" / "mvadapter_tg2mv_sdxl.safetensors").exists()
    report = json.loads((out / "dataset" / "validation_report.json").read_text())
    assert report["ok"]
