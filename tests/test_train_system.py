"""Training on the tiny random SDXL at 64 px: learning, resume, strategies, exports, prior mix, NaN, caches."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from mvtune.train.config import load_config
from mvtune.train.data import TrainDataModule, collate_train
from mvtune.train.run import find_resume_checkpoint, train
from mvtune.train.system import LORA_FILE, MVAdapterSystem, NonFiniteLossError, step_generator

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fresh_adapter(tmp_path_factory) -> Path:
    """An adapter file for the tiny SDXL (what `lora` fine-tunes on top of)."""
    from mvtune.models import attach_mv_adapter, build_tiny_sdxl, save_adapter

    unet = build_tiny_sdxl(seed=0)["unet"]
    cond = attach_mv_adapter(unet, "tg2mv")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "to_out_mv" in name:
                p.normal_(0, 0.02)
    return save_adapter(tmp_path_factory.mktemp("adapter") / "tiny_tg2mv.safetensors", unet, cond)


def tiny_config(ds: Path, out: Path, **sections):
    """A fast CPU config; `sections` are merged over the defaults (mvtune layout)."""
    base = {
        "data": {"root": str(ds), "height": 64, "width": 64, "num_workers": 0},
        "model": {"base": "tiny"},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "lora": {"lr": 1e-3, "rank": 4, "alpha": 4},
        "validation": {"every_n_steps": 1000, "num_objects": 0, "sanity_steps": 0},
        "trainer": {"max_steps": 6, "max_epochs": None, "precision": "32-true", "accelerator": "cpu",
                    "enable_progress_bar": False, "log_every_n_steps": 1},
        "checkpoint": {"every_n_steps": 3},
        "output": {"dir": str(out), "name": "run"},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            base[key] = base.get(key, {}) | value
        else:
            base[key] = value
    return load_config(None, base=base)


class LossRecorder(Callback):
    def __init__(self):
        self.losses: dict[int, float] = {}
        self.ids: dict[int, list[str]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])
        self.ids[trainer.global_step] = list(batch["id"])


class FailAt(Callback):
    """Simulates a crash (kill) right before a given step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated kill")


def fixed_loss(system: MVAdapterSystem, batch: dict, n: int = 16) -> float:
    with torch.no_grad():
        return sum(system.diffusion_loss(batch, step_generator(CPU, 7, k), dropout=False)[0].item() for k in range(n)) / n


def test_overfitting_one_object_drives_the_loss_down(ducks, tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(json.loads((ducks / "split_train.json").read_text())[:1]))
    sections = dict(data={"scene_list": str(one)}, objective={"prompt_drop_prob": 0.0, "cond_drop_prob": 0.0},
                    trainer={"max_steps": 40}, checkpoint={"every_n_steps": 40})
    cfg = tiny_config(ducks, tmp_path, **sections)
    batch = collate_train([TrainDataModule(cfg).train_set[0]])
    before = fixed_loss(MVAdapterSystem(cfg), batch)
    run = train(cfg)
    adapter = run / "export" / "mvadapter_tg2mv_sdxl.safetensors"
    after = fixed_loss(MVAdapterSystem(tiny_config(ducks, tmp_path, model={"adapter": str(adapter)}, **sections)), batch)
    assert after < 0.95 * before, (before, after)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 40
    assert (run / "config.yaml").is_file() and (run / "train.log").stat().st_size > 0
    assert "train/loss" in (run / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_saved_adapter_reloads_strict(ducks, tmp_path):
    from mvtune.models import attach_mv_adapter, build_tiny_sdxl, load_adapter

    run = train(tiny_config(ducks, tmp_path, trainer={"max_steps": 2}, checkpoint={"every_n_steps": 2}))
    unet = build_tiny_sdxl(seed=0)["unet"]
    cond = attach_mv_adapter(unet, "tg2mv")
    report = load_adapter(run / "export" / "mvadapter_tg2mv_sdxl.safetensors", unet, cond, strict=True)
    assert report.ok
    assert any(p.abs().sum() > 0 for n, p in unet.named_parameters() if "to_out_mv" in n)  # trained, not fresh


def test_resume_after_a_kill_gives_the_same_next_losses(ducks, tmp_path):
    # 5 training objects, batch 1: step 3 is mid-epoch and step 6 crosses into epoch 2.
    sections = dict(trainer={"max_steps": 7}, validation={"every_n_steps": 2, "num_batches": 1})
    straight = LossRecorder()
    train(tiny_config(ducks, tmp_path / "a", **sections), extra_callbacks=[straight])

    first = LossRecorder()
    cfg = tiny_config(ducks, tmp_path / "b", **sections)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, extra_callbacks=[first, FailAt(4)])
    resumed = LossRecorder()
    train(cfg, resume="auto", extra_callbacks=[resumed])
    assert sorted(first.losses) == [1, 2, 3, 4]  # killed before the 5th step
    assert sorted(resumed.losses) == [4, 5, 6, 7]  # continued from the step-3 checkpoint
    for step in (4, 5, 6, 7):
        assert resumed.ids[step] == straight.ids[step]
        assert resumed.losses[step] == pytest.approx(straight.losses[step], rel=1e-5, abs=1e-7)

    # A truncated newer checkpoint is skipped with a warning.
    run = tmp_path / "b" / "run"
    good = find_resume_checkpoint(run)
    torn = run / "checkpoints" / "step=0000099.ckpt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert find_resume_checkpoint(run) == good


def test_ddp_ranks_get_disjoint_shards_and_resume_skips_their_own_part(ducks, tmp_path):
    from types import SimpleNamespace

    from mvtune.train.data import ResumableEpochSampler
    from mvtune.train.run import build_trainer

    size, world = 7, 2
    shards = []
    for rank in range(world):
        sampler = ResumableEpochSampler(size, seed=3, num_replicas=world, rank=rank)
        sampler.set_epoch(1)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == 4
    assert set(shards[0]) | set(shards[1]) == set(range(size, 2 * size))  # epoch 1 indices, all covered
    assert len(set(shards[0]) & set(shards[1])) == 1  # one padding duplicate
    for rank in range(world):  # a resumed rank that had done 2 batches of 1 continues with its own 3rd index
        sampler = ResumableEpochSampler(size, seed=3, num_replicas=world, rank=rank)
        sampler.set_epoch(1)
        sampler.skip = (1, 2)
        assert list(sampler) == shards[rank][2:]

    cfg = tiny_config(ducks, tmp_path)
    dm = TrainDataModule(cfg)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    assert (dm.train_dataloader().sampler.num_replicas, dm.train_dataloader().sampler.rank) == (2, 1)
    assert len(dm.val_dataloader().sampler) == math.ceil(len(dm.val_set) / 2)
    # Lightning must not wrap the sampler again (its wrapper breaks on a resumed, shortened epoch).
    trainer, _ = build_trainer(cfg, tmp_path / "run")
    assert trainer._accelerator_connector.use_distributed_sampler is False


def trainable(system: MVAdapterSystem) -> list[str]:
    return [n for n, p in system.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("strategy", ["adapter", "adapter-no-cond", "lora", "adapter+lora"])
def test_each_strategy_trains_exactly_what_it_claims(ducks, tmp_path, fresh_adapter, strategy):
    from mvtune.models import build_tiny_sdxl

    overrides = {"strategy": strategy.replace("-no-cond", ""), "model": {"adapter": str(fresh_adapter)},
                 "train_cond_encoder": strategy != "adapter-no-cond", "optim": {"lr": 2e-4, "cond_encoder_lr": 3e-4}}
    system = MVAdapterSystem(tiny_config(ducks, tmp_path, **overrides))
    names = trainable(system)
    mv = [n for n in names if n.startswith("unet.") and "_mv" in n]
    cond = [n for n in names if n.startswith("cond_encoder.")]
    lora = [n for n in names if "lora_" in n]
    assert len(mv) + len(cond) + len(lora) == len(names)
    assert not any("_mv" in n for n in lora)
    n_mv = sum(1 for n, _ in system.unet.named_parameters() if "_mv" in n)
    n_cond = len(list(system.cond_encoder.parameters()))
    base_attention = sum(
        1 for n, _ in build_tiny_sdxl(seed=0)["unet"].named_parameters()
        if any(f".{t}.weight" in n for t in ("to_q", "to_k", "to_v", "to_out.0"))
    )
    expected = {
        "adapter": (n_mv, n_cond, 0),
        "adapter-no-cond": (n_mv, 0, 0),
        "lora": (0, 0, 2 * base_attention),  # lora_A + lora_B per base attention projection
        "adapter+lora": (n_mv, n_cond, 2 * base_attention),
    }[strategy]
    assert (len(mv), len(cond), len(lora)) == expected
    groups = {g["name"]: g["lr"] for g in system.configure_optimizers()["optimizer"].param_groups}
    assert groups == {
        "adapter": {"unet": 2e-4, "cond_encoder": 3e-4},
        "adapter-no-cond": {"unet": 2e-4},
        "lora": {"lora": 1e-3},
        "adapter+lora": {"unet": 2e-4, "cond_encoder": 3e-4, "lora": 1e-3},
    }[strategy]


def test_lora_file_loads_into_a_fresh_sdxl_pipeline_and_changes_it(ducks, tmp_path, fresh_adapter):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from mvtune.models import build_tiny_sdxl, encode_prompt

    cfg = tiny_config(ducks, tmp_path, strategy="lora", model={"adapter": str(fresh_adapter)},
                      lora={"lr": 2e-2}, trainer={"max_steps": 3}, checkpoint={"every_n_steps": 3})
    run = train(cfg)
    lora_file = run / "export" / LORA_FILE
    keys = load_file(lora_file).keys()
    assert keys and all(k.startswith("unet.") and "lora" in k for k in keys) and not any("_mv" in k for k in keys)
    assert not (run / "export" / "mvadapter_tg2mv_sdxl.safetensors").exists()  # the adapter stayed frozen

    pipe = StableDiffusionXLPipeline(**build_tiny_sdxl(seed=0))
    # The tiny tokenizers have no model_max_length, so the text goes in as embeddings.
    embeds, pooled = encode_prompt((pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2), ["a duck"])

    def render():
        return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, guidance_scale=1.0, num_inference_steps=2,
                    height=64, width=64, output_type="np", generator=torch.Generator().manual_seed(0)).images

    plain = render()
    pipe.load_lora_weights(str(lora_file))
    assert np.abs(render() - plain).max() > 1e-4


def test_prior_preservation_mixes_reg_samples_at_the_ratio(ducks, tmp_path):
    cfg = tiny_config(ducks, tmp_path, prior={"root": str(ducks), "scene_list": str(ducks / "split_test.json"),
                                              "ratio": 0.5, "weight": 0.0})
    dm = TrainDataModule(cfg)
    n_main = len(dm.train_set)
    flags = []
    for epoch in range(2):
        dm.sampler.set_epoch(epoch)
        batches = list(dm.train_dataloader())
        flags.append([bool(f) for b in batches for f in b["reg"]])
    test_ids = set(json.loads((ducks / "split_test.json").read_text()))
    for epoch_flags in flags:
        assert len(epoch_flags) == 2 * n_main and sum(epoch_flags) == n_main  # ratio 0.5 exactly
    reg_batch = next(b for b in batches if b["reg"].all())
    assert set(reg_batch["id"]) <= test_ids
    # weight 0: a batch of regularisation samples contributes nothing to the loss.
    system = MVAdapterSystem(cfg)
    loss, per_object = system.diffusion_loss(reg_batch, step_generator(CPU, 1))
    assert loss.item() == 0.0 and per_object.sum() > 0


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(ducks, tmp_path):
    class Poison(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                with torch.no_grad():
                    next(p for n, p in pl_module.named_parameters() if "to_out_mv" in n).fill_(float("nan"))

    cfg = tiny_config(ducks, tmp_path, trainer={"max_steps": 10}, checkpoint={"every_n_steps": 2})
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 4"):
        train(cfg, extra_callbacks=[Poison()])
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").glob("step=*.ckpt")) == ["step=0000002.ckpt", "step=0000004.ckpt"]
    state = torch.load(find_resume_checkpoint(run), weights_only=True)
    assert state["global_step"] == 4 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert json.loads((run / "summary.json").read_text())["status"].startswith("failed: NonFiniteLossError")


def test_a_nan_loss_on_another_rank_stops_this_rank_too(ducks, tmp_path):
    class OtherRankNaN(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:  # the all-ranks decision says "some rank is not finite"
                trainer.strategy.reduce_boolean_decision = lambda decision, all=True: True

    cfg = tiny_config(ducks, tmp_path, trainer={"max_steps": 5}, checkpoint={"every_n_steps": 5})
    with pytest.raises(NonFiniteLossError, match="at step 2 .on another rank"):
        train(cfg, extra_callbacks=[OtherRankNaN()])


def test_ema_checkpoint_and_export(ducks, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_config(ducks, tmp_path, ema={"enabled": True, "decay": 0.5}, trainer={"max_steps": 3},
                      checkpoint={"every_n_steps": 3})
    run = train(cfg)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["ema"]["optimization_step"] == 3
    exported = load_file(run / "export" / "mvadapter_tg2mv_sdxl.safetensors")
    key = next(k for k in exported if "to_out_mv.0.weight" in k)
    raw = state["state_dict"][f"unet.{key}"]
    shadow = state["ema"]["shadow_params"]
    assert not torch.equal(exported[key], raw)  # the export holds the EMA, not the raw weights
    assert any(s.shape == raw.shape and torch.equal(s, exported[key]) for s in shadow)


def test_ema_includes_the_last_optimizer_step(ducks, tmp_path):
    # decay ~0: the EMA is the weights after its last update, which must be the final optimizer step's.
    cfg = tiny_config(ducks, tmp_path, ema={"enabled": True, "decay": 1e-9}, trainer={"max_steps": 3},
                      checkpoint={"every_n_steps": 3})
    run = train(cfg)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    names = [n for n in state["state_dict"]]
    for name, shadow in zip(names, state["ema"]["shadow_params"]):
        torch.testing.assert_close(shadow, state["state_dict"][name], rtol=0, atol=1e-6)


def test_frozen_encoders_in_half_precision_feed_an_fp32_unet(ducks, tmp_path):
    # fp16/bf16 text encoders + VAE with fp32 UNet weights and no autocast (precision 32-true).
    cfg = tiny_config(ducks, tmp_path, model={"frozen_dtype": "bf16"}, trainer={"max_steps": 1},
                      checkpoint={"every_n_steps": 1})
    run = train(cfg)
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_cached_latents_and_checkpointing_give_the_same_loss(ducks, tmp_path):
    from mvtune.train.latents import LatentCache

    cfg = tiny_config(ducks, tmp_path)
    dm = TrainDataModule(cfg)
    batch = collate_train([dm.train_set[0]])
    system = MVAdapterSystem(cfg)
    reference = system.diffusion_loss(batch, step_generator(CPU, 3))[0]

    cached = MVAdapterSystem(tiny_config(ducks, tmp_path, data={"cache_latents": True}))
    cache = LatentCache(dm.train_set, cached.vae_id, torch.float32)
    assert cache.build(cached.frozen["vae"], 8)["encoded"] == len(dm.train_set)
    assert cache.build(cached.frozen["vae"], 8)["kept"] == len(dm.train_set)
    cached.latent_caches[False] = cache
    assert cached.diffusion_loss(batch, step_generator(CPU, 3))[0].item() == pytest.approx(reference.item(), rel=1e-5)
    # A changed source file invalidates that object's entry.
    first = next((ducks / dm.train_set.ids[0][:2] / dm.train_set.ids[0]).glob("color_*.webp"))
    first.touch()
    LatentCache.__init__(cache, dm.train_set, cached.vae_id, torch.float32)
    assert cache.build(cached.frozen["vae"], 8)["encoded"] == 1

    checkpointed = MVAdapterSystem(tiny_config(ducks, tmp_path, model={"gradient_checkpointing": True}))
    loss = checkpointed.diffusion_loss(batch, step_generator(CPU, 3))[0]
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for n, p in checkpointed.named_parameters() if p.requires_grad and "to_q_mv" in n)


def test_trained_modules_are_in_train_mode_so_lora_dropout_applies(ducks, tmp_path, fresh_adapter):
    class Modes(Callback):
        seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            dropouts = [m for n, m in pl_module.unet.named_modules() if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)]
            assert dropouts
            self.seen.append(pl_module.unet.training and pl_module.cond_encoder.training and all(m.training for m in dropouts))

    cfg = tiny_config(ducks, tmp_path, strategy="adapter+lora", lora={"dropout": 0.5}, trainer={"max_steps": 2},
                      validation={"every_n_steps": 1, "num_batches": 1}, checkpoint={"every_n_steps": 2})
    modes = Modes()
    train(cfg, extra_callbacks=[modes])
    assert modes.seen == [True, True]  # also after the validation in between


def test_auto_frozen_dtype_keeps_an_upcast_vae_in_fp32_on_cuda():
    from diffusers import AutoencoderKL

    from mvtune.models.tiny import TINY_VAE_CONFIG
    from mvtune.train.system import frozen_vae_dtype

    cuda = torch.device("cuda")  # only the device type is read
    sdxl_vae = AutoencoderKL(**TINY_VAE_CONFIG, force_upcast=True)  # the original SDXL VAE: NaN in fp16
    fixed_vae = AutoencoderKL(**TINY_VAE_CONFIG, force_upcast=False)  # sdxl-vae-fp16-fix
    assert frozen_vae_dtype("auto", cuda, sdxl_vae) == torch.float32
    assert frozen_vae_dtype("auto", cuda, fixed_vae) == torch.float16
    assert frozen_vae_dtype("fp16", cuda, sdxl_vae) == torch.float16  # an explicit choice is kept
    assert frozen_vae_dtype("auto", CPU, fixed_vae) == torch.float32


def test_warmup_schedule_matches_linear_then_constant():
    from mvtune.train.system import warmup_factor

    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    linear = torch.optim.lr_scheduler.LinearLR(reference, start_factor=1e-6, end_factor=1.0, total_iters=10)
    for step in range(15):
        assert warmup_factor(step, 10, 1e-6) == pytest.approx(reference.param_groups[0]["lr"], rel=1e-6)
        reference.step()
        linear.step()
    assert math.isclose(warmup_factor(10_000, 10, 1e-6), 1.0)


@pytest.mark.parametrize("shift_noise", [True, False])
def test_validation_samples_on_the_training_schedule(ducks, tmp_path, shift_noise):
    system = MVAdapterSystem(tiny_config(ducks, tmp_path, model={"shift_noise": shift_noise}))
    sampling = system.pipeline().scheduler
    assert type(sampling).__name__ == "DDPMScheduler"
    torch.testing.assert_close(sampling.alphas_cumprod, system.noise_scheduler.alphas_cumprod)


def test_text_embeddings_under_the_training_autocast_equal_inference_ones(ducks, tmp_path):
    """bf16-mixed autocast must not reach the frozen text encoders (the reference encodes outside it)."""
    from mvtune.models.pipeline import MVAdapterPipeline

    cfg = tiny_config(ducks, tmp_path, trainer={"precision": "bf16-mixed"})
    system = MVAdapterSystem(cfg)
    prompts = ["a duck wearing a red firefighter helmet", ""]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # one prompt per call: batched matmuls round differently
        encoded = [system.encode_text([prompt]) for prompt in prompts]
    pipe = MVAdapterPipeline(
        vae=system.frozen["vae"], text_encoder=system.frozen["text_encoder"],
        text_encoder_2=system.frozen["text_encoder_2"], tokenizer=system.tokenizers[0],
        tokenizer_2=system.tokenizers[1], unet=system.unet, scheduler=system.noise_scheduler,
        cond_encoder=system.cond_encoder,
    )
    for k, prompt in enumerate(prompts):
        ref_embeds, ref_pooled = pipe._text_conditioning(prompt, None, do_cfg=False)
        embeds, pooled = encoded[k]
        assert embeds.dtype == ref_embeds.dtype == torch.float32
        assert torch.equal(embeds, ref_embeds) and torch.equal(pooled, ref_pooled)


@pytest.mark.parametrize("setting, expected", [({}, None), ({"negative_prompt": "blurry"}, "blurry")])
def test_validation_negative_prompt_defaults_to_the_references_none(ducks, tmp_path, monkeypatch, setting, expected):
    from mvtune.models.pipeline import MVAdapterPipeline

    seen = []
    original = MVAdapterPipeline._text_conditioning

    def spy(self, prompt, negative_prompt, do_cfg):
        seen.append(negative_prompt)
        return original(self, prompt, negative_prompt, do_cfg)

    monkeypatch.setattr(MVAdapterPipeline, "_text_conditioning", spy)
    cfg = tiny_config(ducks, tmp_path, trainer={"max_steps": 1},
                      validation={"every_n_steps": 1, "num_objects": 1, "num_inference_steps": 1, **setting})
    assert cfg.validation.negative_prompt == expected
    train(cfg)
    assert seen and set(seen) == {expected}


def test_exported_adapter_files_carry_the_released_names():
    from mvtune.train.system import adapter_file

    assert adapter_file("tg2mv") == "mvadapter_tg2mv_sdxl.safetensors"
    assert adapter_file("t2mv") == "mvadapter_t2mv_sdxl.safetensors"


def test_exported_lora_keeps_its_alpha(tmp_path):
    """alpha != rank: without adapter metadata diffusers loads alpha = rank, i.e. at the wrong strength."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig as PeftLoraConfig

    from mvtune.models import build_tiny_sdxl
    from mvtune.train.system import save_lora

    parts = build_tiny_sdxl(seed=0)
    parts["unet"].add_adapter(PeftLoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    path = save_lora(tmp_path / LORA_FILE, parts["unet"])

    pipe = StableDiffusionXLPipeline(**build_tiny_sdxl(seed=0))
    pipe.load_lora_weights(str(path), adapter_name="concept")
    config = pipe.unet.peft_config["concept"]
    assert (config.r, config.lora_alpha) == (4, 8)
