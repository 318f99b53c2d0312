"""Multi-view text-to-image sampling with an MV-Adapter on any SDXL base (spec §6-§7).

Text + per-view condition maps [V, C, H, W] in [0, 1] (tg2mv: position + normal maps; t2mv: constant
camera maps from `plucker_condition_maps`) -> V images of one object. The denoising loop is written out;
only diffusers models and schedulers are used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    SchedulerMixin,
    T2IAdapter,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from mvtune.models.adapter_io import load_adapter
from mvtune import cameras
from mvtune.models import DEFAULT_NEGATIVE_PROMPT
from mvtune.models.attention import attach_mv_adapter
from mvtune.models.errors import MVAdapterError
from mvtune.models.schedule import shift_snr_scheduler

logger = logging.getLogger(__name__)

SCHEDULERS = {"euler": EulerDiscreteScheduler, "ddpm": DDPMScheduler}


def encode_prompt(
    tokenizers: Sequence[CLIPTokenizer],
    text_encoders: Sequence[torch.nn.Module],
    prompts: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL text conditioning: penultimate hidden states of both CLIP encoders, concatenated along features
    ([B, 77, 768 + 1280] for SDXL), and the pooled projection of the last encoder ([B, 1280]).

    The encoders run with autocast off, in their own dtype, as in the reference: under a bf16-mixed training
    autocast the embeddings would otherwise be rounded to bf16 and differ from the ones inference feeds.
    """
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=encoder.config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(encoder.device)
        with torch.autocast(encoder.device.type, enabled=False):
            output = encoder(ids, output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
        pooled = output.text_embeds if hasattr(output, "text_embeds") else output.pooler_output
    return torch.cat(hidden, dim=-1), pooled


def sdxl_time_ids(height: int, width: int, crop_top_left: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """SDXL micro-conditioning (original size, crop corner, target size) = (h, w, top, left, h, w), shape [6].

    MV-Adapter trains and samples with original = target = the generated size and no crop.
    """
    return torch.tensor([height, width, *crop_top_left, height, width], dtype=torch.float32)


def plucker_condition_maps(c2w: torch.Tensor | np.ndarray, height: int, width: int) -> torch.Tensor:
    """t2mv camera maps for orthographic views: per view the constant 6-vector [look direction, camera position
    normalised to unit length], encoded (x + 1) / 2 and broadcast to [V, 6, height, width].

    c2w: [V, 4, 4] camera-to-world in Blender camera axes (the camera looks along its -Z).
    """
    encoded = torch.from_numpy(cameras.plucker_vectors(np.asarray(c2w))).float()
    return encoded[:, :, None, None].expand(-1, -1, height, width).contiguous()


def make_scheduler(base_config: dict, kind: str = "euler", shift_scale: float = 8.0) -> SchedulerMixin:
    """Euler (inference default) or DDPM with the ShiftSNR betas, keeping the base scheduler's config."""
    if kind not in SCHEDULERS:
        raise MVAdapterError(f"unknown scheduler {kind!r}; expected one of {sorted(SCHEDULERS)}")
    return shift_snr_scheduler(SCHEDULERS[kind], dict(base_config), shift_scale)


def load_sdxl_components(base: str | os.PathLike, vae: str | os.PathLike | None = None) -> dict:
    """SDXL components from a local diffusers folder (no network), keyed like the pipeline's; `vae` optionally
    replaces its VAE (e.g. a local copy of madebyollin/sdxl-vae-fp16-fix for fp16)."""
    base = Path(base)
    offline = {"local_files_only": True}
    return {
        "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet", **offline),
        "vae": AutoencoderKL.from_pretrained(vae, **offline)
        if vae is not None
        else AutoencoderKL.from_pretrained(base, subfolder="vae", **offline),
        "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **offline),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2", **offline),
        "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **offline),
        "tokenizer_2": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", **offline),
        "scheduler": EulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler", **offline),
    }


class MVAdapterPipeline:
    """SDXL components + an adapted UNet and its cond encoder; call it to sample the views of one object."""

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        cond_encoder: T2IAdapter,
    ):
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.unet = unet
        self.scheduler = scheduler
        self.cond_encoder = cond_encoder

    @classmethod
    def from_components(
        cls,
        components: dict,
        variant: str = "tg2mv",
        num_views: int = 6,
        adapter: str | os.PathLike | None = None,
        scheduler: str = "euler",
        shift_scale: float = 8.0,
    ) -> "MVAdapterPipeline":
        """Adapt the `unet` of SDXL `components` in place and load `adapter` (strict) if given.

        Without an adapter file the MV branch is freshly initialised (the pipeline then samples like the base
        SDXL plus an untrained cond encoder) - useful for tests and as the start of training.
        """
        unet = components["unet"]
        cond_encoder = attach_mv_adapter(unet, variant=variant, num_views=num_views)
        if adapter is not None:
            load_adapter(adapter, unet, cond_encoder, strict=True)
        else:
            logger.warning("no adapter file given: the %s MV branch and cond encoder are untrained", variant)
        return cls(
            vae=components["vae"],
            text_encoder=components["text_encoder"],
            text_encoder_2=components["text_encoder_2"],
            tokenizer=components["tokenizer"],
            tokenizer_2=components["tokenizer_2"],
            unet=unet,
            scheduler=make_scheduler(components["scheduler"].config, scheduler, shift_scale),
            cond_encoder=cond_encoder.eval(),
        )

    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        variant: str = "tg2mv",
        num_views: int = 6,
        scheduler: str = "euler",
        shift_scale: float = 8.0,
        vae: str | os.PathLike | None = None,
        torch_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "MVAdapterPipeline":
        """Load an SDXL base from a local diffusers folder (no network); `vae` optionally replaces its VAE
        (e.g. a local copy of madebyollin/sdxl-vae-fp16-fix for fp16)."""
        pipe = cls.from_components(load_sdxl_components(base, vae), variant, num_views, adapter, scheduler, shift_scale)
        return pipe.to(device, torch_dtype)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "MVAdapterPipeline":
        for module in (self.vae, self.text_encoder, self.text_encoder_2, self.unet, self.cond_encoder):
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def _text_conditioning(self, prompt: str, negative_prompt: str | None, do_cfg: bool):
        encoders = (self.text_encoder, self.text_encoder_2)
        tokenizers = (self.tokenizer, self.tokenizer_2)
        embeds, pooled = encode_prompt(tokenizers, encoders, [prompt])
        if do_cfg:
            if negative_prompt is None:
                # SDXL base sets force_zeros_for_empty_prompt: no negative prompt means zero embeddings.
                neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                neg_embeds, neg_pooled = encode_prompt(tokenizers, encoders, [negative_prompt])
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
        return embeds.to(self.dtype), pooled.to(self.dtype)

    def _check_condition(self, condition_maps: torch.Tensor) -> None:
        expected_channels = self.cond_encoder.config.in_channels
        if condition_maps.ndim != 4 or condition_maps.shape[1] != expected_channels:
            raise MVAdapterError(
                f"condition maps must be [views, {expected_channels}, H, W], got {list(condition_maps.shape)}"
            )
        height, width = condition_maps.shape[-2:]
        if height != width or height % 32:
            raise MVAdapterError(f"views must be square with a side divisible by 32, got {height}x{width}")

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode one view at a time (slicing keeps peak memory at one image); returns [V, 3, H, W] in [0, 1]."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        decode_dtype = torch.float32 if upcast else vae.dtype
        if upcast:  # the original SDXL VAE overflows in fp16; sdxl-vae-fp16-fix sets force_upcast False
            vae.to(torch.float32)
        latents = latents.to(decode_dtype) / vae.config.scaling_factor
        if vae.config.get("shift_factor") is not None:
            latents = latents + vae.config.shift_factor
        images = torch.cat([vae.decode(view[None]).sample for view in latents])
        if upcast:
            vae.to(torch.float16)
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        condition_maps: torch.Tensor | np.ndarray,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.0,
        negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
        mv_scale: float = 1.0,
        control_conditioning_scale: float = 1.0,
        control_conditioning_factor: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        cross_attention_kwargs: dict | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Sample one object's views.

        condition_maps: [V, C, H, W] in [0, 1] (no normalisation), V views in the adapter's order.
        control_conditioning_scale multiplies the cond encoder features; they are used for the first
        int(num_inference_steps * control_conditioning_factor) steps only.
        output_type: "pil" (list of V images), "np" ([V, H, W, 3] float32 in [0, 1]) or "latent".
        on_step(done, total): called after each denoising step (progress bars).
        """
        if output_type not in ("pil", "np", "latent"):
            raise MVAdapterError(f"unknown output_type {output_type!r}; expected 'pil', 'np' or 'latent'")
        device, dtype = self.device, self.dtype
        condition_maps = torch.as_tensor(condition_maps)
        self._check_condition(condition_maps)
        num_views, _, height, width = condition_maps.shape
        do_cfg = guidance_scale > 1.0

        # Text: one object -> repeat per view; CFG batch = [negative views, positive views].
        embeds, pooled = self._text_conditioning(prompt, negative_prompt, do_cfg)
        embeds = embeds.to(device).repeat_interleave(num_views, dim=0)
        pooled = pooled.to(device).repeat_interleave(num_views, dim=0)
        time_ids = sdxl_time_ids(height, width).to(device, dtype).repeat(len(embeds), 1)
        added_cond_kwargs = {"text_embeds": pooled, "time_ids": time_ids}
        attention_kwargs = {**(cross_attention_kwargs or {}), "num_views": num_views, "mv_scale": mv_scale}

        # Condition features, shared by both CFG halves.
        features = self.cond_encoder(condition_maps.to(device, dtype))
        features = [f * control_conditioning_scale for f in features]
        if do_cfg:
            features = [torch.cat([f, f]) for f in features]
        conditioned_steps = int(num_inference_steps * control_conditioning_factor)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if latents is None:
            shape = (num_views, self.unet.config.in_channels, height // 8, width // 8)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma

        for i, t in enumerate(self.scheduler.timesteps):
            model_input = torch.cat([latents, latents]) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise_pred = self.unet(
                model_input,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs=added_cond_kwargs,
                # The UNet pops from this list: hand it a fresh one each step.
                down_intrablock_additional_residuals=[f.clone() for f in features] if i < conditioned_steps else None,
                cross_attention_kwargs=attention_kwargs,
            ).sample
            if do_cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)
            latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample.to(dtype)
            if on_step is not None:
                on_step(i + 1, len(self.scheduler.timesteps))

        if output_type == "latent":
            return latents
        images = self._decode(latents).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return images
        return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in images]
