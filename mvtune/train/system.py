"""MV-Adapter text(+geometry)-to-multiview training on SDXL, as one Lightning system (spec model §5-§6, §9).

The objective is the reference's: one timestep per object shared by its views, prompt dropout to "" with
P = 1-(1-p_prompt)(1-p_cond), epsilon (or v) prediction on the ShiftSNR-noised latents, min-SNR-gamma weights
from the same shifted schedule, optional noise offset and input perturbation. Strategies only change what
trains: `adapter` (the `_mv` layers + cond encoder), `lora` (peft LoRA on the base UNet attention, adapter
frozen), `adapter+lora`. Every random draw of a step comes from a generator seeded by (seed, rank, step), so a
resumed run draws the same noise as an uninterrupted one without restoring global RNG state.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import EMAModel, compute_snr
from PIL import Image

from mvtune.models import attach_mv_adapter, encode_prompt, load_adapter, mv_parameters, save_adapter
from mvtune.models.pipeline import MVAdapterPipeline, load_sdxl_components, make_scheduler
from mvtune.train.config import TINY_BASE, TrainConfig

log = logging.getLogger(__name__)

NUM_VIEWS = 6
LORA_FILE = "pytorch_lora_weights.safetensors"
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def adapter_file(variant: str) -> str:
    """The exported adapter's file name: the released one (mvadapter_tg2mv_sdxl.safetensors, ...), so a
    fine-tuned file drops in where the reference inference scripts load the released weights."""
    return f"mvadapter_{variant}_sdxl.safetensors"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stops so the last good checkpoint stays the newest."""


def load_base_components(base: str, vae: str | os.PathLike | None = None, seed: int = 0) -> dict:
    """SDXL components from a local diffusers folder (no network), or the random tiny SDXL for base="tiny"."""
    if base == TINY_BASE:
        from mvtune.models.tiny import build_tiny_sdxl

        components = build_tiny_sdxl(seed=seed)
        if vae is not None:
            from diffusers import AutoencoderKL

            components["vae"] = AutoencoderKL.from_pretrained(vae, local_files_only=True)
        return components
    return load_sdxl_components(base, vae)


def frozen_dtype(setting: str, device: torch.device) -> torch.dtype:
    """VAE/text encoder dtype: fp16 on CUDA by default (the reference), fp32 where fp16 kernels are missing."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def frozen_vae_dtype(setting: str, device: torch.device, vae) -> torch.dtype:
    """As frozen_dtype, except that "auto" keeps a VAE that declares force_upcast (the original SDXL VAE, which
    overflows to NaN in fp16) in fp32; madebyollin/sdxl-vae-fp16-fix declares force_upcast false."""
    dtype = frozen_dtype(setting, device)
    if setting == "auto" and dtype == torch.float16 and vae.config.get("force_upcast", False):
        return torch.float32
    return dtype


def warmup_factor(step: int, warmup_steps: int, start_factor: float) -> float:
    """LinearLR(start_factor -> 1 over warmup_steps) followed by a constant rate, as one LambdaLR factor."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / warmup_steps


def optimizer_config(groups: list[dict], optim) -> dict:
    """Lightning's optimizer + per-step warm-up schedule for named parameter groups (`optim`: OptimConfig);
    shared by every strategy's system."""
    if optim.name == "adamw":
        optimizer = torch.optim.AdamW(groups, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
    elif optim.name == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
    else:
        from transformers.optimization import Adafactor

        optimizer = Adafactor(
            groups, lr=optim.lr, weight_decay=optim.weight_decay,
            scale_parameter=False, relative_step=False, warmup_init=False,
        )
    factor = functools.partial(warmup_factor, warmup_steps=optim.warmup_steps, start_factor=optim.warmup_start_factor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def step_generator(device: torch.device, *key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of [V, H, W, 3] float images in [0, 1] -> one uint8 image."""
    lines = [np.concatenate(list(row), axis=1) for row in rows]
    return (np.concatenate(lines, axis=0).clip(0, 1) * 255).round().astype(np.uint8)


class MVAdapterSystem(L.LightningModule):
    """Trains an MV-Adapter (and/or a LoRA on its base UNet) with the reference objective.

    Only the trained tensors (and the EMA) go into Lightning checkpoints; the frozen base is rebuilt from
    `model.base` on resume. At every checkpoint save, the adapter (released format) and the LoRA file are
    exported to `export_dir` (EMA weights when EMA is on).
    """

    def __init__(self, cfg: TrainConfig, components: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.strict_loading = False  # checkpoints hold only the trained tensors
        components = components if components is not None else load_base_components(cfg.model.base, cfg.model.vae, cfg.trainer.seed)
        self.unet = components["unet"]
        self.cond_encoder = attach_mv_adapter(self.unet, variant=cfg.model.variant, num_views=NUM_VIEWS)
        if cfg.model.adapter is not None:
            load_adapter(cfg.model.adapter, self.unet, self.cond_encoder, strict=True)
        # Frozen, outside the module tree: not in checkpoints, cast and moved by on_fit_start.
        self.frozen = {k: components[k] for k in ("vae", "text_encoder", "text_encoder_2")}
        self.tokenizers = (components["tokenizer"], components["tokenizer_2"])
        self.base_scheduler_config = dict(components["scheduler"].config)
        self.noise_scheduler = self._training_scheduler()
        self.vae_id: str | None = None
        if cfg.data.cache_latents:
            from mvtune.train.latents import vae_fingerprint

            self.vae_id = vae_fingerprint(self.frozen["vae"])

        self._set_trainable()
        if cfg.model.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.trainable_names = [n for n, p in self.named_parameters() if p.requires_grad]
        self.ema = EMAModel(self._trainable(), decay=cfg.ema.decay) if cfg.ema.enabled else None
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.latent_caches: dict[bool, object] = {}
        self.export_dir: Path | None = None
        self.samples_dir: Path | None = None
        self._step_start = 0.0

    # ---- what trains ---------------------------------------------------------------------------------------

    def _set_trainable(self) -> None:
        cfg = self.cfg
        for module in (self.unet, self.cond_encoder, *self.frozen.values()):
            module.requires_grad_(False)
        if cfg.trains_lora():
            from peft import LoraConfig

            self.unet.add_adapter(
                LoraConfig(
                    r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                    target_modules=list(cfg.lora.target_modules), init_lora_weights="gaussian",
                )
            )
            touched = [n for n, _ in self.unet.named_parameters() if "lora_" in n and "_mv" in n]
            if touched:
                raise ValueError(f"lora.target_modules reach the multi-view layers ({touched[:3]}); name base layers only")
        if cfg.trains_adapter():
            for p in mv_parameters(self.unet):
                p.requires_grad_(True)
            self.cond_encoder.requires_grad_(cfg.train_cond_encoder)
        for name, p in self.unet.named_parameters():
            if "lora_" in name:
                p.requires_grad_(cfg.trains_lora())

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _training_scheduler(self) -> DDPMScheduler:
        if self.cfg.model.shift_noise:
            return make_scheduler(self.base_scheduler_config, "ddpm", self.cfg.model.shift_scale)
        return DDPMScheduler.from_config(self.base_scheduler_config)

    # ---- set-up --------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        dtype = frozen_dtype(self.cfg.model.frozen_dtype, self.device)
        vae_dtype = frozen_vae_dtype(self.cfg.model.frozen_dtype, self.device, self.frozen["vae"])
        if vae_dtype != dtype:
            log.warning("the VAE sets force_upcast (fp16 overflows): encoding in fp32; set model.vae to an fp16-fix "
                        "VAE (e.g. madebyollin/sdxl-vae-fp16-fix) to encode in fp16")
        for name, module in self.frozen.items():
            module.to(self.device, vae_dtype if name == "vae" else dtype).eval()
        # Loaded bases come in eval mode and Lightning keeps module modes: without this, lora.dropout is inert.
        self.unet.train()
        self.cond_encoder.train()
        self._text_cache.clear()
        if self.ema is not None:
            self.ema.to(self.device)
        if self.cfg.data.cache_latents:
            self._build_latent_caches(vae_dtype)

    def _build_latent_caches(self, dtype: torch.dtype) -> None:
        from mvtune.train.latents import LatentCache

        datamodule = self.trainer.datamodule
        sets = {False: datamodule.train_set, True: datamodule.reg_set}
        for is_reg, dataset in sets.items():
            if dataset is None:
                continue
            cache = LatentCache(dataset, self.vae_id, dtype)
            if self.trainer.is_global_zero:
                cache.build(self.frozen["vae"], self.cfg.objective.vae_max_slice)
            self.latent_caches[is_reg] = cache
        self.trainer.strategy.barrier("latent_cache")

    # ---- objective -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen encoders -> cached per prompt (exact, since nothing in them trains)."""
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            encoders = (self.frozen["text_encoder"], self.frozen["text_encoder_2"])
            embeds, pooled = encode_prompt(self.tokenizers, encoders, missing)
            for i, prompt in enumerate(missing):
                self._text_cache[prompt] = (embeds[i], pooled[i])
        return (
            torch.stack([self._text_cache[p][0] for p in prompts]),
            torch.stack([self._text_cache[p][1] for p in prompts]),
        )

    @torch.no_grad()
    def encode_latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Posterior samples x scaling factor, [B*V, 4, h, w] float32 (VAE in its frozen dtype, no autocast)."""
        vae = self.frozen["vae"]
        with torch.autocast(self.device.type, enabled=False):
            if self.latent_caches:
                params = torch.cat([
                    self.latent_caches[bool(is_reg)].load(object_id)
                    for object_id, is_reg in zip(batch["id"], batch["reg"].tolist())
                ]).to(self.device)
                latents = DiagonalGaussianDistribution(params).sample(generator)
            else:
                rgb = batch["rgb"].to(vae.dtype) * 2 - 1
                latents = torch.cat([
                    vae.encode(chunk).latent_dist.sample(generator) for chunk in rgb.split(self.cfg.objective.vae_max_slice)
                ])
        return latents.float() * vae.config.scaling_factor

    def diffusion_loss(self, batch: dict, generator: torch.Generator, dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted loss and the per-object losses (unweighted), spec §5."""
        cfg, objective = self.cfg, self.cfg.objective
        num_objects, num_views = len(batch["prompt"]), int(batch["num_views"])
        device = self.device
        latents = self.encode_latents(batch, generator)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        if objective.noise_offset:
            noise = noise + objective.noise_offset * torch.randn(
                (*latents.shape[:2], 1, 1), generator=generator, device=device
            )
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (num_objects,), generator=generator, device=device)
        timesteps = timesteps.repeat_interleave(num_views)
        prompts = list(batch["prompt"])
        if dropout:
            drop = 1.0 - (1.0 - objective.prompt_drop_prob) * (1.0 - objective.cond_drop_prob)
            dropped = torch.rand(num_objects, generator=generator, device=device) < drop
            prompts = ["" if d else p for p, d in zip(prompts, dropped.tolist())]
        noising = noise
        if objective.input_perturbation:
            noising = noise + objective.input_perturbation * torch.randn(latents.shape, generator=generator, device=device)
        noisy = self.noise_scheduler.add_noise(latents, noising, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise

        # The frozen encoders may run in another dtype (fp16 on CUDA) than the UNet (e.g. fp32 under 32-true).
        unet_dtype = self.unet.dtype
        embeds, pooled = self.encode_text(prompts)
        embeds = embeds.to(unet_dtype).repeat_interleave(num_views, 0)
        pooled = pooled.to(unet_dtype).repeat_interleave(num_views, 0)
        time_ids = batch["time_ids"].to(device, unet_dtype).repeat_interleave(num_views, 0)
        features = self.cond_encoder(batch["source_rgb"])
        prediction = self.unet(
            noisy.to(unet_dtype),
            timesteps,
            encoder_hidden_states=embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            down_intrablock_additional_residuals=list(features),
            cross_attention_kwargs={"num_views": num_views},
        ).sample

        per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weights = torch.ones_like(per_image)
        if objective.snr_gamma is not None:
            snr = compute_snr(self.noise_scheduler, timesteps)
            if self.noise_scheduler.config.prediction_type == "v_prediction":
                snr = snr + 1
            weights = snr.clamp(max=objective.snr_gamma) / snr
        if "reg" in batch and cfg.prior.root is not None:
            reg = batch["reg"].to(device).repeat_interleave(num_views)
            weights = weights * torch.where(reg, cfg.prior.weight, 1.0)
        loss = (weights * per_image).mean()
        return loss, per_image.detach().view(num_objects, num_views).mean(1)

    # ---- Lightning hooks -----------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        generator = step_generator(
            self.device, self.cfg.trainer.seed, self.global_rank, self.global_step,
            batch_idx % self.cfg.trainer.accumulate_grad_batches,
        )
        loss, per_object = self.diffusion_loss(batch, generator)
        finite = bool(torch.isfinite(loss))
        # Decided across ranks: a rank stopping alone would leave the others waiting in the gradient all-reduce.
        if self.trainer.strategy.reduce_boolean_decision(not finite, all=False):
            where = f"objects {batch['id']}" if not finite else "on another rank"
            raise NonFiniteLossError(
                f"training loss is {loss.item() if not finite else 'nan'} at step {self.global_step} ({where}); stopping. "
                "The newest checkpoint in the run folder is the last good state: lower optim.lr, check these "
                "objects, or try trainer.precision=32-true"
            )
        batch_size = len(batch["id"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        reg = batch["reg"]
        if reg.any():
            self.log("train/loss_reg", per_object[reg.to(per_object.device)].mean(), batch_size=batch_size)
        if (~reg).any():
            self.log("train/loss_main", per_object[~reg.to(per_object.device)].mean(), batch_size=batch_size)
        return loss

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("perf/step_seconds", time.perf_counter() - self._step_start, batch_size=len(batch["id"]))
        if self.device.type == "cuda":
            self.log("perf/peak_memory_gb", torch.cuda.max_memory_allocated(self.device) / 2**30, batch_size=len(batch["id"]))
        for group in self.trainer.optimizers[0].param_groups:
            self.log(f"lr/{group['name']}", group["lr"], batch_size=len(batch["id"]))

    def optimizer_step(self, *args, **kwargs) -> None:
        # After the update (Lightning zeroes gradients before the next backward, i.e. before this step's update).
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.step(self._trainable())

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        generator = step_generator(self.device, self.cfg.validation.seed, batch_idx)
        loss, _ = self.diffusion_loss(batch, generator, dropout=False)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=len(batch["id"]))
        return loss

    def on_validation_epoch_end(self) -> None:
        if self.cfg.validation.num_objects and self.trainer.is_global_zero and self.samples_dir is not None:
            self.sample_grid()
        if self.cfg.evaluation.enabled:
            from mvtune.train.evaluation import log_evaluation

            log_evaluation(self)

    def configure_optimizers(self):
        cfg, optim = self.cfg, self.cfg.optim
        groups = []
        if cfg.trains_adapter():
            groups.append({"name": "unet", "params": mv_parameters(self.unet), "lr": optim.lr})
            if cfg.train_cond_encoder:
                groups.append({"name": "cond_encoder", "params": list(self.cond_encoder.parameters()), "lr": optim.cond_encoder_lr or optim.lr})
        if cfg.trains_lora():
            groups.append({"name": "lora", "params": [p for n, p in self.unet.named_parameters() if "lora_" in n], "lr": cfg.lora.lr})
        return optimizer_config(groups, optim)

    # ---- checkpoints and export ----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = set(self.trainable_names)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        if self.export_dir is not None and self.trainer.is_global_zero:
            self.export(self.export_dir)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = sorted(set(self.trainable_names) - checkpoint["state_dict"].keys())
        if missing:
            raise ValueError(
                f"checkpoint lacks {len(missing)} trained tensors (e.g. {missing[:3]}); it was written by a run with "
                "another strategy or model"
            )
        if self.ema is not None:
            if "ema" not in checkpoint:
                raise ValueError("ema.enabled is on but the checkpoint has no EMA state")
            self.ema.load_state_dict(checkpoint["ema"])

    @contextmanager
    def ema_weights(self):
        """Swap the EMA weights in (sampling, export); a no-op without EMA."""
        if self.ema is None:
            yield
            return
        params = self._trainable()
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    def export(self, out_dir: Path) -> dict[str, Path]:
        """The adapter (released format) and/or the LoRA file (diffusers' load_lora_weights format)."""
        out = {}
        with self.ema_weights():
            if self.cfg.trains_adapter():
                out["adapter"] = save_adapter(
                    Path(out_dir) / adapter_file(self.cfg.model.variant), self.unet, self.cond_encoder
                )
            if self.cfg.trains_lora():
                out["lora"] = save_lora(Path(out_dir) / LORA_FILE, self.unet)
        return out

    # ---- validation samples --------------------------------------------------------------------------------

    def pipeline(self) -> MVAdapterPipeline:
        """A sampling pipeline sharing this system's modules (validation: shifted DDPM as in the reference)."""
        return MVAdapterPipeline(
            vae=self.frozen["vae"],
            text_encoder=self.frozen["text_encoder"],
            text_encoder_2=self.frozen["text_encoder_2"],
            tokenizer=self.tokenizers[0],
            tokenizer_2=self.tokenizers[1],
            unet=self.unet,
            scheduler=self._training_scheduler(),  # sample on the schedule the model is trained on
            cond_encoder=self.cond_encoder,
        )

    @torch.no_grad()
    def sample_grid(self) -> Path:
        """Fixed val objects, prompts and seeds -> one PNG (rows: ground truth, sample) + TensorBoard image."""
        val = self.cfg.validation
        dataset = self.trainer.datamodule.val_set
        rows = []
        pipe = self.pipeline()
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda" and "bf16" in str(self.trainer.precision)
            else nullcontext()
        )
        was_training = self.cond_encoder.training
        self.cond_encoder.eval()
        with self.ema_weights(), autocast:
            for k in range(min(val.num_objects, len(dataset))):
                sample = dataset[k]
                prompt = val.prompts[k % len(val.prompts)] if val.prompts else sample["prompt"]
                images = pipe(
                    prompt, sample["source_rgb"], num_inference_steps=val.num_inference_steps,
                    guidance_scale=val.guidance_scale, negative_prompt=val.negative_prompt,
                    generator=step_generator(self.device, val.seed, k), output_type="np",
                )
                rows += [sample["rgb"].permute(0, 2, 3, 1).numpy(), images]
        self.cond_encoder.train(was_training)
        grid = image_grid(rows)
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / f"step_{self.global_step:07d}.png"
        Image.fromarray(grid).save(path)
        for logger in self.trainer.loggers:
            if isinstance(logger, L.pytorch.loggers.TensorBoardLogger):
                logger.experiment.add_image("val/samples", grid, self.global_step, dataformats="HWC")
        return path


def save_lora(path: Path, unet, text_encoders: dict | None = None) -> Path:
    """Write the peft LoRA of the UNet (and of text encoders given as {"text_encoder": m, ...}) in diffusers'
    format, atomically; rank and alpha travel as adapter metadata so `load_lora_weights` applies the trained
    strength (without it, alpha is taken equal to the rank)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(module) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(module)
        return convert_state_dict_to_diffusers({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()})

    parts = {"unet_lora_layers": layers(unet), "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict()}
    assert not any("_mv" in k for k in parts["unet_lora_layers"]), "LoRA must not touch the multi-view layers"
    for name, module in (text_encoders or {}).items():
        parts[f"{name}_lora_layers"] = layers(module)
        parts[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=path.parent))
    try:
        StableDiffusionXLPipeline.save_lora_weights(tmp, safe_serialization=True, **parts)
        os.replace(tmp / LORA_FILE, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
