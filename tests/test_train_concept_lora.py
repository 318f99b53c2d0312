"""strategy concept-lora on the tiny random SDXL (64 px): it learns its concept, composes under the adapter,
exports files diffusers loads, resumes exactly after a kill, generates and caches class images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from safetensors.torch import load_file
from test_train_system import FailAt

from mvtune.train.config import TrainConfigError, load_config
from mvtune.train.run import train
from mvtune.train.system import LORA_FILE

CONCEPT = "sks duck, red helmet"
UNRELATED = "a photo of a green forest"


@pytest.fixture(scope="module")
def concept_images(tmp_path_factory) -> Path:
    """Four images of one look (a red square on yellow) with a trigger caption, two aspect ratios."""
    from PIL import Image

    root = tmp_path_factory.mktemp("concept") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(64, 64), (64, 64), (80, 80), (72, 72)]):
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[:] = (230, 200, 40)
        top, left = int(rng.integers(0, h // 3)), int(rng.integers(0, w // 3))
        pixels[top : top + h // 2, left : left + w // 2] = (220, 20, 20)
        Image.fromarray(pixels).save(root / f"img_{k}.png")
        (root / f"img_{k}.txt").write_text(CONCEPT)
    return root


def concept_config(images: Path, out: Path, **sections):
    base = {
        "strategy": "concept-lora",
        "data": {"kind": "images", "root": str(images), "height": 64, "width": 64, "num_workers": 0, "batch_size": 2},
        "model": {"base": "tiny"},
        "lora": {"lr": 1e-2, "rank": 4, "alpha": 4},
        "validation": {"every_n_steps": 1000, "num_objects": 0, "sanity_steps": 0},
        "trainer": {"max_steps": 6, "precision": "32-true", "accelerator": "cpu", "enable_progress_bar": False,
                    "log_every_n_steps": 1},
        "checkpoint": {"every_n_steps": 3},
        "output": {"dir": str(out), "name": "run"},
    }
    for key, value in sections.items():
        base[key] = base.get(key, {}) | value if isinstance(value, dict) else value
    return load_config(None, base=base)


class Recorder(Callback):
    def __init__(self):
        self.losses, self.ids, self.time_ids = {}, {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])
        self.ids[trainer.global_step] = list(batch["id"])
        self.time_ids[trainer.global_step] = batch["time_ids"].tolist()


def _sdxl(tiny_base):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_base, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, prompt, seed=0):
    from mvtune.train.concept_lora import sample_image

    return sample_image(pipe, prompt, 64, 4, 1.0, torch.Generator().manual_seed(seed), output_type="np")


def _relative_change(a, b) -> float:
    return float(np.abs(a - b).mean() / (np.abs(a).mean() + 1e-8))


@pytest.fixture(scope="module")
def trained(concept_images, tmp_path_factory):
    """One UNet concept LoRA (and its kohya copy), trained for 20 steps at 64 px."""
    out = tmp_path_factory.mktemp("runs")
    cfg = concept_config(concept_images, out, trainer={"max_steps": 20}, checkpoint={"every_n_steps": 20},
                         concept={"kohya_keys": True}, validation={"every_n_steps": 20, "num_objects": 1},
                         data={"images": {"shuffle_tags": True, "keep_tokens": 1}, "mirror_prob": 0.5})
    return train(cfg)


def test_concept_lora_changes_its_prompt_more_than_an_unrelated_one(trained, tiny_base):
    """diffusers' own load_lora_weights reads the export into a plain SDXL pipeline; the change it makes on the
    concept prompt is larger (relative) than on an unrelated prompt."""
    export = trained / "export" / LORA_FILE
    keys = load_file(export).keys()
    assert keys and all(k.startswith("unet.") and "_mv" not in k for k in keys)
    assert (trained / "samples" / "step_0000020.png").is_file()  # the validation grid
    base = _sdxl(tiny_base)
    before = {p: _image(base, p) for p in (CONCEPT, UNRELATED)}
    tuned = _sdxl(tiny_base)
    tuned.load_lora_weights(str(export))
    after = {p: _image(tuned, p) for p in (CONCEPT, UNRELATED)}
    on_concept = _relative_change(before[CONCEPT], after[CONCEPT])
    on_unrelated = _relative_change(before[UNRELATED], after[UNRELATED])
    assert on_concept > 0.0 and on_concept > on_unrelated, (on_concept, on_unrelated)

    kohya = _sdxl(tiny_base)
    kohya.load_lora_weights(str(trained / "export" / "pytorch_lora_weights_kohya.safetensors"))
    np.testing.assert_allclose(_image(kohya, CONCEPT), after[CONCEPT], atol=2e-3)
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 20


def test_concept_lora_under_the_adapter_changes_the_views_and_keeps_the_adapter(trained, tiny_base, tmp_path, sample_meshes_dir):
    from mvtune.generate import GenerateConfig, LoraSpec, ModelConfig, SamplingConfig, generate, load_pipeline
    from mvtune.models import MVAdapterPipeline, adapter_state_dict, save_adapter

    pytest.importorskip("moderngl")
    fresh = MVAdapterPipeline.from_pretrained(tiny_base)
    with torch.no_grad():
        for name, param in fresh.unet.named_parameters():
            if "to_out_mv" in name:
                param.normal_(0, 0.02)
    adapter = save_adapter(tmp_path / "adapter.safetensors", fresh.unet, fresh.cond_encoder)
    lora = trained / "export" / LORA_FILE
    sampling = SamplingConfig(steps=3, resolution=64, guidance=1.0)
    views = {}
    for name, loras in (("plain", []), ("lora", [LoraSpec(path=lora)])):
        models = ModelConfig(base_model=tiny_base, adapter=adapter, loras=loras)
        pipe = load_pipeline(models)
        if loras:
            released = load_file(adapter)
            now = adapter_state_dict(pipe.unet, pipe.cond_encoder)
            assert now.keys() == released.keys() and all(torch.equal(now[k], v) for k, v in released.items())
        cfg = GenerateConfig(mesh=sample_meshes_dir / "duck_yellow.glb", prompt=CONCEPT, out_dir=tmp_path / name,
                             models=models, sampling=sampling)
        record = generate(cfg, pipe)
        views[name] = np.stack([np.asarray(__import__("PIL.Image").Image.open(tmp_path / name / v["file"])) for v in record["views"]])
    assert record["models"]["loras"][0]["path"] == str(lora) and len(record["models"]["loras"][0]["sha256"]) == 64
    per_view = np.abs(views["plain"].astype(int) - views["lora"]).reshape(6, -1).mean(1)
    assert (per_view > 0).all(), per_view


@pytest.mark.slow
def test_text_encoder_loras_train_export_and_apply(concept_images, tmp_path, tiny_base):
    from mvtune.generate import LoraSpec, ModelConfig, load_pipeline

    cfg = concept_config(concept_images, tmp_path, trainer={"max_steps": 2}, checkpoint={"every_n_steps": 2},
                         concept={"train_text_encoders": True}, model={"base": "tiny", "gradient_checkpointing": True})
    export = train(cfg) / "export" / LORA_FILE
    keys = load_file(export).keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    plain, tuned = load_pipeline(ModelConfig(base_model=tiny_base)), load_pipeline(
        ModelConfig(base_model=tiny_base, loras=[LoraSpec(path=export)]))
    for name in ("text_encoder", "text_encoder_2"):
        before, after = getattr(plain, name).state_dict(), getattr(tuned, name).state_dict()
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[k], after[k]) for k in before if "q_proj" in k)
    sdxl = _sdxl(tiny_base)
    try:
        sdxl.load_lora_weights(str(export))
    except ValueError as exc:  # transformers' PEFT integration wants a newer peft than the registry has
        if "version of PEFT" in str(exc):
            pytest.skip(f"diffusers' text-encoder loader needs transformers' PEFT integration: {exc}")
        raise
    assert not np.allclose(_image(sdxl, CONCEPT), _image(_sdxl(tiny_base), CONCEPT))


def test_resume_after_a_kill_continues_exactly(concept_images, tmp_path):
    # 4 images, batch 2: 2 batches per epoch, so step 3 (the checkpoint) is mid-epoch 1.
    sections = dict(trainer={"max_steps": 6}, ema={"enabled": True, "decay": 0.9},
                    data={"images": {"caption_dropout": 0.3, "shuffle_tags": True}, "mirror_prob": 0.5})
    straight = Recorder()
    train(concept_config(concept_images, tmp_path / "a", **sections), extra_callbacks=[straight])
    cfg = concept_config(concept_images, tmp_path / "b", **sections)
    first = Recorder()
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, extra_callbacks=[first, FailAt(4)])
    resumed = Recorder()
    run = train(cfg, resume="auto", extra_callbacks=[resumed])
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.ids[step] == straight.ids[step] and resumed.time_ids[step] == straight.time_ids[step]
        assert resumed.losses[step] == pytest.approx(straight.losses[step], rel=1e-5, abs=1e-7)
    a = load_file(tmp_path / "a" / "run" / "export" / LORA_FILE)
    b = load_file(run / "export" / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_prior_class_images_are_generated_cached_and_mixed_in(concept_images, tmp_path):
    sections = dict(prior={"generate": 3, "class_prompt": "a toy duck", "num_inference_steps": 2, "ratio": 0.5,
                           "weight": 0.5},
                    trainer={"max_steps": 2}, checkpoint={"every_n_steps": 2})
    seen = Recorder()
    cfg = concept_config(concept_images, tmp_path / "out", **sections)
    train(cfg, extra_callbacks=[seen])
    folder = cfg.class_image_dir()
    assert folder.parent == tmp_path / "out" / "class-images"
    images = sorted(folder.glob("class_*.png"))
    assert len(images) == 3 and all(p.with_suffix(".txt").read_text() == "a toy duck" for p in images)
    stamps = {p: p.stat().st_mtime_ns for p in images}
    images[1].unlink()  # an interrupted generation: only the missing image is made again
    cfg2 = concept_config(concept_images, tmp_path / "out", output={"name": "run2"}, **sections)
    train(cfg2)
    assert sorted(folder.glob("class_*.png")) == images
    assert all(images[k].stat().st_mtime_ns == stamps[images[k]] for k in (0, 2))
    assert any(i.startswith("class_") for ids in seen.ids.values() for i in ids)

    with pytest.raises(TrainConfigError, match="(?i)prior.class_prompt: .*mickey mouse"):
        train(concept_config(concept_images, tmp_path / "out2", prior={**sections["prior"], "class_prompt": "Mickey Mouse"},
                             trainer={"max_steps": 1}))


def test_config_refuses_multiview_settings_and_names_the_keys(concept_images, tmp_path):
    with pytest.raises(TrainConfigError) as info:
        concept_config(concept_images, tmp_path, model={"base": "tiny", "adapter": "a.safetensors", "shift_noise": True},
                       objective={"prompt_drop_prob": 0.2})
    message = str(info.value)
    assert "model.adapter" in message and "model.shift_noise" in message and "data.images.caption_dropout" in message
    with pytest.raises(TrainConfigError, match="prior.generate needs prior.class_prompt"):
        concept_config(concept_images, tmp_path, prior={"generate": 2})
    with pytest.raises(TrainConfigError, match="data.kind images goes with strategy concept-lora"):
        load_config(None, base={"data": {"kind": "images", "root": str(concept_images)}})
    cfg = concept_config(concept_images, tmp_path, trainer={"max_steps": -1}, data={"batch_size": 1})
    assert cfg.lora.lr == 1e-2 and cfg.optim.warmup_steps == 0  # concept-lora defaults where the config is silent
    from mvtune.train.concept_lora import resolve_steps

    assert resolve_steps(cfg).trainer.max_steps == 4 * 100  # 4 images x concept.steps_per_image
    (concept_images.parent / "bad").mkdir(exist_ok=True)
    (concept_images.parent / "bad" / "x.png").write_bytes(b"junk")
    from mvtune.train.config import check_config

    with pytest.raises(TrainConfigError, match="x.png: not a readable image"):
        check_config(concept_config(concept_images.parent / "bad", tmp_path))


def test_cli_lists_the_problems_of_a_concept_config(concept_images, tmp_path, cli):
    config = tmp_path / "concept.yaml"
    config.write_text(
        f"strategy: concept-lora\ndata: {{kind: images, root: {concept_images}, height: 64, width: 64}}\n"
        "model: {base: tiny, variant: t2mv}\nprior: {generate: 4}\n"
    )
    result = cli("train", config, expect=2)
    output = result.stdout + result.stderr
    assert "model.variant is a multi-view setting" in output and "prior.generate needs prior.class_prompt" in output
