"""`mvtune generate` end to end on the tiny random SDXL (64 px, 2 steps): files, record, batch, LoRA, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mvtune.generate import (
    BatchConfig,
    GenerateConfig,
    GenerateError,
    ModelConfig,
    SamplingConfig,
    apply_lora,
    generate,
    generate_batch,
    load_pipeline,
)

pytestmark = pytest.mark.gl
SAMPLING = SamplingConfig(steps=2, resolution=64)


@pytest.fixture(scope="module")
def pipeline(tiny_base):
    return load_pipeline(ModelConfig(base_model=tiny_base))


def test_generate_writes_views_grid_conditions_and_record(tmp_path, tiny_base, sample_meshes_dir):
    mesh = sample_meshes_dir / "duck_yellow.glb"
    cfg = GenerateConfig(
        mesh=mesh, prompt="a duck", out_dir=tmp_path / "run", seed=3, models=ModelConfig(base_model=tiny_base),
        sampling=SAMPLING,
    )
    record = generate(cfg)
    out = tmp_path / "run"
    views = [np.asarray(Image.open(out / f"view_{i:04d}.png")) for i in range(6)]
    assert all(v.shape == (64, 64, 3) for v in views)
    assert np.asarray(Image.open(out / "grid.png")).shape == (64, 6 * 64, 3)
    with np.load(out / "conditions.npz") as data:
        assert data["maps"].shape == (6, 6, 64, 64) and data["mask"].any()
    saved = json.loads((out / "generate.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["seed"] == 3 and saved["prompt"] == "a duck" and saved["variant"] == "tg2mv"
    assert saved["config"]["sampling"]["steps"] == 2 and saved["models"]["base_model"] == str(tiny_base)
    assert [v["name"] for v in saved["views"]] == ["front", "right", "back", "left", "top", "bottom"]
    assert len(saved["mesh"]["sha256"]) == 64


def test_same_seed_same_views(tmp_path, pipeline, tiny_base, sample_meshes_dir):
    def run(name, seed):
        cfg = GenerateConfig(mesh=sample_meshes_dir / "duck_blue.glb", prompt="a duck", out_dir=tmp_path / name,
                             seed=seed, models=ModelConfig(base_model=tiny_base), sampling=SAMPLING)
        generate(cfg, pipeline)
        return np.asarray(Image.open(tmp_path / name / "grid.png"))

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).max() > 0


def test_batch_continues_past_failures_and_resumes(tmp_path, pipeline, tiny_base, sample_meshes_dir):
    (tmp_path / "broken.glb").write_bytes(b"not a mesh")
    items = tmp_path / "items.jsonl"
    rows = [
        {"mesh": str(sample_meshes_dir / "duck_yellow.glb"), "prompt": "a duck", "id": "good"},
        {"mesh": "broken.glb", "prompt": "a duck", "id": "bad"},
        {"mesh": str(sample_meshes_dir / "duck_blue.glb"), "prompt": "a blue duck", "seed": 5},
    ]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    models = ModelConfig(base_model=tiny_base)
    cfg = BatchConfig(items=items, out_dir=tmp_path / "out", models=models, sampling=SAMPLING)
    summary = generate_batch(cfg, pipeline)
    assert (summary["generated"], summary["failed"], summary["skipped"]) == (2, 1, 0)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["bad"] and "broken.glb" in errors[0]["error"]
    assert (tmp_path / "out" / "good" / "generate.json").is_file()
    assert not (tmp_path / "out" / "bad").exists()  # no empty folder that looks like a result
    assert not list((tmp_path / "out").glob(".*.partial"))  # rows are made in private folders renamed into place

    again = generate_batch(cfg, pipeline)  # resumes: only the failed row is retried
    assert (again["generated"], again["failed"], again["skipped"]) == (0, 1, 2)

    # a mesh rewritten in place (same path, same settings) is not "done": its views are stale
    import shutil

    moved = tmp_path / "moved.glb"
    shutil.copy(sample_meshes_dir / "duck_yellow.glb", moved)
    moved_items = tmp_path / "moved.jsonl"
    moved_items.write_text(json.dumps({"mesh": str(moved), "prompt": "a duck", "id": "moved"}) + "\n")
    moved_cfg = cfg.model_copy(update={"items": moved_items})
    assert generate_batch(moved_cfg, pipeline)["generated"] == 1
    shutil.copy(sample_meshes_dir / "duck_blue.glb", moved)
    rerun = generate_batch(moved_cfg, pipeline)
    assert (rerun["generated"], rerun["skipped"]) == (1, 0)

    csv_items = tmp_path / "items.csv"
    csv_items.write_text(f"mesh,prompt\n{sample_meshes_dir / 'duck_yellow.glb'},a duck\n")
    assert generate_batch(cfg.model_copy(update={"items": csv_items}), pipeline)["generated"] == 1


def test_lora_is_fused_into_the_unet(tmp_path, tiny_base):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from mvtune.models import build_tiny_sdxl

    unet = build_tiny_sdxl(seed=0)["unet"]
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
    with torch.no_grad():  # peft starts B at zero, which would make the LoRA a no-op
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    lora = tmp_path / "lora" / "pytorch_lora_weights.safetensors"

    pipe = load_pipeline(ModelConfig(base_model=tiny_base))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "to_q" in k}
    processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    assert apply_lora(pipe, lora, scale=1.0) == ["unet"]
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == processors  # MV attention kept
    after = pipe.unet.state_dict()
    assert set(before) <= set(after)  # fused, not left as extra adapter modules
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)
    with pytest.raises(GenerateError, match="not a readable SDXL LoRA"):
        apply_lora(pipe, tmp_path / "items.txt", 1.0)


def test_bad_inputs(tmp_path, tiny_base, sample_meshes_dir):
    with pytest.raises(ValueError, match="multiple of 32"):
        SamplingConfig(resolution=100)
    with pytest.raises(GenerateError, match="does not exist"):
        load_pipeline(ModelConfig(base_model=tmp_path / "missing"))
    (tmp_path / "empty.glb").write_bytes(b"")
    cfg = GenerateConfig(
        mesh=tmp_path / "empty.glb", prompt="x", out_dir=tmp_path / "o", models=ModelConfig(base_model=tiny_base),
        sampling=SAMPLING,
    )
    with pytest.raises(GenerateError, match="empty.glb"):
        generate(cfg)
    with pytest.raises(GenerateError, match="needs 'mesh' and 'prompt'"):
        bad = tmp_path / "rows.csv"
        bad.write_text("mesh,caption\na.glb,x\n")
        generate_batch(BatchConfig(items=bad, out_dir=tmp_path / "b", models=ModelConfig(base_model=tiny_base)))
