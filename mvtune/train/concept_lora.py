"""strategy `concept-lora`: a plain SDXL LoRA learned from 2D images, applied under MV-Adapter at generation time.

MV-Adapter keeps the base SDXL frozen and composes with personalised SDXL LoRAs (MV-Adapter paper, appendix
A.3.1), so an appearance ("firefighter duck") can be taught from images instead of textured meshes. Training is
the standard SDXL LoRA recipe on single images: no `_mv` layers and no cond encoder exist while training; time
ids describe each image's real crop (mvtune.data.images); epsilon or v targets on the base's unshifted DDPM
schedule, min-SNR-gamma weights, noise offset; optional class images for prior preservation, which mvtune
generates itself with the base model. The system reuses MVAdapterSystem's step, EMA, checkpoint and NaN
handling; only what trains, the loss and the export differ. Export: `pytorch_lora_weights.safetensors` in
diffusers' format (`load_lora_weights` reads it, alpha kept as adapter metadata) and, with
`concept.kohya_keys`, `pytorch_lora_weights_kohya.safetensors`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, EulerDiscreteScheduler
from diffusers.training_utils import EMAModel, compute_snr
from PIL import Image

from mvtune.models import encode_prompt
from mvtune.storage import atomic_write, write_json
from mvtune.train.config import TrainConfig, TrainConfigError
from mvtune.train.system import (
    LORA_FILE,
    MVAdapterSystem,
    image_grid,
    load_base_components,
    optimizer_config,
    save_lora,
    step_generator,
)

log = logging.getLogger(__name__)

KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
CLASS_MANIFEST = "class_images.json"


def sdxl_pipeline(parts: dict, scheduler_config: dict):
    """A plain diffusers SDXL pipeline over existing modules (class images, validation samples)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
        tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"], unet=parts["unet"],
        scheduler=EulerDiscreteScheduler.from_config(scheduler_config),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_image(pipe, prompt: str, size: int, steps: int, guidance: float, generator: torch.Generator, output_type="pil"):
    """One image; the prompt is encoded with mvtune's SDXL encoder (padding to the encoders' length, which
    tokenizers built in memory do not declare)."""
    encoders = (pipe.text_encoder, pipe.text_encoder_2)
    embeds, pooled = encode_prompt((pipe.tokenizer, pipe.tokenizer_2), encoders, [prompt])
    dtype = pipe.unet.dtype
    return pipe(
        prompt_embeds=embeds.to(dtype), pooled_prompt_embeds=pooled.to(dtype), height=size, width=size,
        num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type=output_type,
    ).images[0]


def _sampling_device(cfg: TrainConfig) -> torch.device:
    wants_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda") if wants_gpu and torch.cuda.is_available() else torch.device("cpu")


# ---- prior preservation: class images made by the base model -----------------------------------------------


def _class_settings(cfg: TrainConfig) -> dict:
    prior = cfg.prior
    return {"base": cfg.model.base, "vae": None if cfg.model.vae is None else str(cfg.model.vae),
            "class_prompt": prior.class_prompt, "num_inference_steps": prior.num_inference_steps,
            "guidance_scale": prior.guidance_scale, "resolution": cfg.data.height, "seed": cfg.trainer.seed}


def class_image_paths(out: Path, count: int) -> list[Path]:
    return [out / f"class_{i:05d}.png" for i in range(count)]


def ensure_class_images(cfg: TrainConfig, components: dict, rank: int = 0, wait_s: float = 7200.0) -> Path:
    """`prior.generate` class images for `prior.class_prompt` in cfg.class_image_dir(), made by the base model
    before any LoRA exists. Image k is seeded by (seed, k) and written atomically with its caption sidecar, so a
    rerun (or a resumed run) generates only what is missing, and asking for more extends the same set. Other
    ranks wait for rank 0."""
    prior = cfg.prior
    out = cfg.class_image_dir()
    paths = class_image_paths(out, prior.generate)
    settings = _class_settings(cfg)

    def complete() -> bool:
        return all(p.is_file() and p.with_suffix(".txt").is_file() for p in paths)

    if rank != 0:
        deadline = time.monotonic() + wait_s
        while not complete():
            if time.monotonic() > deadline:
                raise TrainConfigError(f"rank {rank}: class images in {out} did not appear within {wait_s:.0f} s")
            time.sleep(5)
        return out

    from mvtune.prompts.guard import ProtectedPromptError, ensure_allowed  # every generator prompt passes the guard

    try:
        ensure_allowed(prior.class_prompt)
    except ProtectedPromptError as exc:
        raise TrainConfigError(f"prior.class_prompt: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / CLASS_MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        if recorded.get("settings") != settings:
            raise TrainConfigError(
                f"{manifest}: these class images were made with other settings ({recorded.get('settings')}); "
                "set prior.root to another folder or delete this one"
            )
    write_json(manifest, {"settings": settings, "count": max(prior.generate, _recorded_count(manifest))})
    todo = [(k, p) for k, p in enumerate(paths) if not (p.is_file() and p.with_suffix(".txt").is_file())]
    if not todo:
        return out
    from rich.progress import Progress

    device = _sampling_device(cfg)
    parts = {k: components[k] for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")}
    pipe = sdxl_pipeline(parts, dict(components["scheduler"].config)).to(device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with Progress(transient=True) as progress, autocast, torch.no_grad():
        task = progress.add_task(f"class images ({prior.class_prompt!r})", total=len(todo))
        for k, path in todo:
            generator = step_generator(torch.device("cpu"), cfg.trainer.seed, 7919, k)
            image = sample_image(pipe, prior.class_prompt, cfg.data.height, prior.num_inference_steps,
                                 prior.guidance_scale, generator)
            atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
            atomic_write(path.with_suffix(".txt"), lambda tmp: Path(tmp).write_text(prior.class_prompt, encoding="utf-8"))
            progress.advance(task)
    for module in parts.values():
        if isinstance(module, torch.nn.Module):
            module.to("cpu")
    log.info("class images: %d generated, %d cached in %s", len(todo), len(paths) - len(todo), out)
    return out


def _recorded_count(manifest: Path) -> int:
    try:
        return int(json.loads(manifest.read_text(encoding="utf-8")).get("count", 0))
    except (OSError, ValueError, TypeError):
        return 0


def resolve_steps(cfg: TrainConfig) -> TrainConfig:
    """trainer.max_steps from concept.steps_per_image when the config gives neither steps nor epochs."""
    from mvtune.data.images import scan_images

    if cfg.trainer.max_steps >= 0 or cfg.trainer.max_epochs is not None or cfg.concept.steps_per_image is None:
        return cfg
    num_images = len(scan_images(cfg.data.root))
    per_step = cfg.data.batch_size * cfg.trainer.accumulate_grad_batches
    steps = math.ceil(cfg.concept.steps_per_image * num_images / per_step)
    log.info("concept-lora: %d images x %d steps per image -> trainer.max_steps=%d", num_images, cfg.concept.steps_per_image, steps)
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"max_steps": steps})})


# ---- export ------------------------------------------------------------------------------------------------


def _peft_state(module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(module).items()}


def _alpha(module) -> float:
    return float(module.peft_config["default"].lora_alpha)


def kohya_state_dict(unet, text_encoders: dict) -> dict[str, torch.Tensor]:
    """kohya key names (`lora_unet_*`, `lora_te1_text_model_*`, `lora_te2_text_model_*`, `.lora_down/.lora_up`,
    `.alpha`), as A1111/ComfyUI read them; diffusers' converter writes alpha = rank, so the real alpha is set."""
    from diffusers.utils import convert_state_dict_to_kohya

    modules = {"unet": unet, **text_encoders}
    peft = {f"{name}.{k}": v for name, module in modules.items() for k, v in _peft_state(module).items()}
    state = convert_state_dict_to_kohya(peft)
    out = {}
    for key, value in state.items():
        for te in ("lora_te1_", "lora_te2_"):
            if key.startswith(te) and not key.startswith(te + "text_model_"):
                key = te + "text_model_" + key[len(te):]  # transformers >= 5 flattens CLIPTextModel.text_model
        if key.endswith(".alpha"):
            owner = {"lora_unet_": unet, "lora_te1_": text_encoders.get("text_encoder"),
                     "lora_te2_": text_encoders.get("text_encoder_2")}[key[: key.index("_", 5) + 1]]
            value = torch.tensor(_alpha(owner))
        out[key] = value
    return out


def save_concept_lora(path: Path, unet, text_encoders: dict | None = None, kohya: bool = False) -> Path:
    """Write the peft LoRA of the UNet (and of the text encoders given as {"text_encoder": m, ...}) atomically:
    diffusers' format (`load_lora_weights`; rank/alpha as adapter metadata) or kohya key names."""
    from safetensors.torch import save_file

    text_encoders = dict(text_encoders or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kohya:
        state = kohya_state_dict(unet, text_encoders)
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        return path
    return save_lora(path, unet, text_encoders)


# ---- the Lightning system ----------------------------------------------------------------------------------


class ConceptLoraSystem(MVAdapterSystem):
    """peft LoRA on the plain SDXL UNet (and optionally both text encoders) trained on single images.

    Reuses MVAdapterSystem's training step (NaN stop, logging), EMA, checkpoint filtering and resume checks;
    its own: the modules, what trains, the loss, the optimizer groups, the export and the sample grids.
    """

    def __init__(self, cfg: TrainConfig, components: dict | None = None):
        L.LightningModule.__init__(self)  # not MVAdapterSystem's: no adapter is attached here
        self.cfg = cfg
        self.strict_loading = False
        components = components if components is not None else load_base_components(cfg.model.base, cfg.model.vae, cfg.trainer.seed)
        self.unet = components["unet"]
        self.tokenizers = (components["tokenizer"], components["tokenizer_2"])
        trained_te = cfg.concept.train_text_encoders
        if trained_te:  # in the module tree: moved, checkpointed (LoRA tensors only) and optimised by Lightning
            self.text_encoder = components["text_encoder"]
            self.text_encoder_2 = components["text_encoder_2"]
        self.frozen = {"vae": components["vae"]}
        if not trained_te:
            self.frozen.update({k: components[k] for k in TEXT_ENCODERS})
        self.base_scheduler_config = dict(components["scheduler"].config)
        self.noise_scheduler = self._training_scheduler()
        self.vae_id = None
        self.latent_caches: dict[bool, object] = {}
        self._set_trainable()
        if cfg.model.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            for encoder in self.text_encoders().values():
                encoder.gradient_checkpointing_enable()
        self.trainable_names = [n for n, p in self.named_parameters() if p.requires_grad]
        self.ema = EMAModel(self._trainable(), decay=cfg.ema.decay) if cfg.ema.enabled else None
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.export_dir: Path | None = None
        self.samples_dir: Path | None = None
        self._step_start = 0.0

    def text_encoders(self) -> dict:
        """The trained text encoders by name (empty when only the UNet trains)."""
        if not self.cfg.concept.train_text_encoders:
            return {}
        return {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}

    def _encoders(self) -> tuple:
        trained = self.text_encoders()
        return tuple(trained[k] if trained else self.frozen[k] for k in TEXT_ENCODERS)

    def _set_trainable(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg, lora = self.cfg, self.cfg.lora
        for module in (self.unet, *self._encoders(), self.frozen["vae"]):
            module.requires_grad_(False)
        common = dict(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, init_lora_weights="gaussian")
        self.unet.add_adapter(LoraConfig(target_modules=list(lora.target_modules), **common))
        for encoder in self.text_encoders().values():
            # peft directly: transformers' add_adapter refuses the peft release this project pins
            inject_adapter_in_model(LoraConfig(target_modules=list(cfg.concept.text_encoder_target_modules), **common), encoder)
        for module in (self.unet, *self.text_encoders().values()):
            for name, param in module.named_parameters():
                param.requires_grad_("lora_" in name)

    def _training_scheduler(self) -> DDPMScheduler:
        """The base's own DDPM schedule (SDXL's objective, no ShiftSNR), with the chosen prediction type."""
        config = dict(self.base_scheduler_config)
        if self.cfg.concept.prediction_type is not None:
            config["prediction_type"] = self.cfg.concept.prediction_type
        return DDPMScheduler.from_config(config)

    def on_fit_start(self) -> None:
        from mvtune.train.system import frozen_dtype, frozen_vae_dtype

        dtype = frozen_dtype(self.cfg.model.frozen_dtype, self.device)
        vae_dtype = frozen_vae_dtype(self.cfg.model.frozen_dtype, self.device, self.frozen["vae"])
        for name, module in self.frozen.items():
            module.to(self.device, vae_dtype if name == "vae" else dtype).eval()
        for module in (self.unet, *self.text_encoders().values()):
            module.train()  # loaded models come in eval mode; without this lora.dropout is inert
        self._text_cache.clear()
        if self.ema is not None:
            self.ema.to(self.device)

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.text_encoders():
            return super().encode_text(prompts)  # frozen encoders: cached per prompt
        return encode_prompt(self.tokenizers, self._encoders(), prompts)

    def diffusion_loss(self, batch: dict, generator: torch.Generator, dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL's objective per image; captions were already dropped/shuffled by the dataset."""
        objective, device = self.cfg.objective, self.device
        latents = self.encode_latents(batch, generator)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        if objective.noise_offset:
            noise = noise + objective.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (len(latents),), generator=generator, device=device)
        noising = noise
        if objective.input_perturbation:
            noising = noise + objective.input_perturbation * torch.randn(latents.shape, generator=generator, device=device)
        noisy = self.noise_scheduler.add_noise(latents, noising, timesteps)
        v_prediction = self.noise_scheduler.config.prediction_type == "v_prediction"
        target = self.noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise

        unet_dtype = self.unet.dtype
        embeds, pooled = self.encode_text(list(batch["prompt"]))
        prediction = self.unet(
            noisy.to(unet_dtype),
            timesteps,
            encoder_hidden_states=embeds.to(unet_dtype),
            added_cond_kwargs={"text_embeds": pooled.to(unet_dtype), "time_ids": batch["time_ids"].to(device, unet_dtype)},
        ).sample
        per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weights = torch.ones_like(per_image)
        if objective.snr_gamma is not None:
            snr = compute_snr(self.noise_scheduler, timesteps)
            if v_prediction:
                snr = snr + 1
            weights = snr.clamp(max=objective.snr_gamma) / snr
        reg = batch["reg"].to(device)
        weights = weights * torch.where(reg, self.cfg.prior.weight, 1.0)
        return (weights * per_image).mean(), per_image.detach()

    def configure_optimizers(self):
        cfg = self.cfg
        groups = [{"name": "unet_lora", "params": [p for p in self.unet.parameters() if p.requires_grad], "lr": cfg.lora.lr}]
        for name, encoder in self.text_encoders().items():
            params = [p for p in encoder.parameters() if p.requires_grad]
            groups.append({"name": f"{name}_lora", "params": params, "lr": cfg.concept.text_encoder_lr})
        return optimizer_config(groups, cfg.optim)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        every = self.cfg.validation.every_n_steps
        step = self.global_step
        if every and step % every == 0 and self.cfg.validation.num_objects and self.trainer.is_global_zero and self.samples_dir:
            self.sample_grid()

    def export(self, out_dir: Path) -> dict[str, Path]:
        """The LoRA (EMA weights when EMA is on) in diffusers' format, and with kohya keys when asked."""
        out = {}
        with self.ema_weights():
            out["lora"] = save_concept_lora(Path(out_dir) / LORA_FILE, self.unet, self.text_encoders())
            if self.cfg.concept.kohya_keys:
                out["lora_kohya"] = save_concept_lora(Path(out_dir) / KOHYA_FILE, self.unet, self.text_encoders(), kohya=True)
        return out

    def validation_prompts(self) -> list[str]:
        val = self.cfg.validation
        if val.prompts:
            return list(val.prompts)
        items = self.trainer.datamodule.train_set.items
        return [item.caption for item in items[: val.num_objects]]

    @torch.no_grad()
    def sample_grid(self) -> Path:
        """Fixed prompts and seeds -> one row of single-view samples (PNG + TensorBoard image)."""
        val = self.cfg.validation
        encoders = self._encoders()
        parts = {"vae": self.frozen["vae"], "text_encoder": encoders[0], "text_encoder_2": encoders[1],
                 "tokenizer": self.tokenizers[0], "tokenizer_2": self.tokenizers[1], "unet": self.unet}
        pipe = sdxl_pipeline(parts, self.base_scheduler_config)
        size = self.cfg.data.height
        was_training = [m.training for m in (self.unet, *encoders)]
        images = []
        with self.ema_weights():
            for k, prompt in enumerate(self.validation_prompts()):
                generator = step_generator(torch.device("cpu"), val.seed, k)
                images.append(sample_image(pipe, prompt, size, val.num_inference_steps, val.guidance_scale, generator, "np"))
        for module, mode in zip((self.unet, *encoders), was_training):
            module.train(mode)
        grid = image_grid([images])
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / f"step_{self.global_step:07d}.png"
        atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
        for logger in self.trainer.loggers:
            if isinstance(logger, L.pytorch.loggers.TensorBoardLogger):
                logger.experiment.add_image("val/samples", grid, self.global_step, dataformats="HWC")
        return path
