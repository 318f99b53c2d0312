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
    result = cli("demo", "--out", out, "--steps", "4", "--render-resolution", "64", "--texture-size", "128")
    summary = json.loads((out / "demo_summary.json").read_text())
    outputs = summary["outputs"]
    for label, path in outputs.items():  # every output recorded relative to the demo folder, and there
        assert path is not None and not Path(path).is_absolute() and (out / path).exists(), label
    assert (out / outputs["run folder"] / "export" / "mvadapter_tg2mv_sdxl.safetensors").exists()
    assert summary["metrics"]["steps"] == 4 and summary["metrics"]["train/loss"] > 0
    assert summary["metrics"]["val/loss"] > 0 and {"render", "train", "texture"} <= set(summary["timings_s"])
    report = json.loads((out / "dataset" / "validation_report.json").read_text())
    assert report["ok"]
    # What the user reads: a bar with loss and speed, the final losses, the outputs block, the noise note.
    log = result.stderr
    assert "steps/s" in log and "final train/loss" in log and "textured GLB" in log and "noise" in log
    for noise in ("Tip:", "GPU available", "should be kept in float32", "is deprecated", "saved adapter"):
        assert noise not in log, noise
    # Records state what was done: 20 sampling steps at guidance 3 on the 64 px training resolution.
    held_out = summary["held_out"]
    views = json.loads((out / "held_out_views" / "generate.json").read_text())
    assert views["sampling"]["steps"] == 20 and views["sampling"]["guidance"] == 3.0 and views["resolution"] == 64
    assert views["prompt"] and views["seed"] == 42 and views["models"]["base_model"] == "tiny"
    texture = json.loads((out / "textured" / f"{held_out}.json").read_text())
    assert "sampling" not in texture["config"]  # the texture stage sampled nothing itself
    assert texture["generate_record"]["sampling"]["steps"] == 20 and texture["generate_record"]["prompt"]
