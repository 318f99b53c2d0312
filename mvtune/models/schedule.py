"""ShiftSNR (spec §8): MV-Adapter trains and samples with a noise schedule shifted towards lower SNR.

Multi-view images of one object share much of their content, so at a given noise level they leak more
signal than a single image; the shift (SNR_t * s^(-t/(T-1)), "interpolated" mode) compensates, leaving
t=0 unchanged and dividing the SNR by s at t=T-1.
"""

from __future__ import annotations

import torch
from diffusers import SchedulerMixin


def shift_snr_betas(alphas_cumprod: torch.Tensor, shift_scale: float = 8.0) -> torch.Tensor:
    """Betas whose SNR is the given schedule's SNR times shift_scale^(-t/(T-1)) (computed in float64)."""
    alphas_cumprod = alphas_cumprod.to(torch.float64)
    steps = len(alphas_cumprod)
    log_snr = torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)
    weight = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    shifted_log_snr = log_snr - weight * torch.log(torch.tensor(float(shift_scale), dtype=torch.float64))
    shifted_alphas_cumprod = torch.sigmoid(shifted_log_snr)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), shifted_alphas_cumprod[:-1]])
    return 1.0 - shifted_alphas_cumprod / previous


def shift_snr_scheduler(
    scheduler_or_cls: SchedulerMixin | type[SchedulerMixin],
    config: dict | None = None,
    shift_scale: float = 8.0,
) -> SchedulerMixin:
    """A scheduler of the same class whose trained_betas are the shifted betas; other config fields are kept.

    Pass a scheduler instance (its config is used unless `config` is given) or a class plus a config, e.g.
    `shift_snr_scheduler(DDPMScheduler, euler.config)` for the DDPM variant of an SDXL Euler schedule.
    Works for any scheduler exposing `alphas_cumprod` (DDPM, Euler, DDIM, ...).
    """
    if isinstance(scheduler_or_cls, type):
        if config is None:
            raise TypeError("shift_snr_scheduler(cls, config): a scheduler class needs a config")
        scheduler_cls = scheduler_or_cls
    else:
        scheduler_cls = type(scheduler_or_cls)
        config = scheduler_or_cls.config if config is None else config
    base = scheduler_cls.from_config(config)
    betas = shift_snr_betas(base.alphas_cumprod, shift_scale)
    return scheduler_cls.from_config(config, trained_betas=betas.tolist())
