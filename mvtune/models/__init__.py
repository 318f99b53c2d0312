"""MV-Adapter on diffusers: multi-view attention processors, cond encoder, ShiftSNR, save/load, pipeline.

Heavy (torch/diffusers) imports happen on first attribute access, so `import mvtune.models` stays cheap.
"""

from __future__ import annotations

import importlib

#: MV-Adapter's inference negative prompt (spec mvadapter-model §7); here so torch-free configs can use it.
DEFAULT_NEGATIVE_PROMPT = "watermark, ugly, deformed, noisy, blurry, low contrast"

_EXPORTS = {
    "attach_mv_adapter": "attention",
    "mv_parameters": "attention",
    "RowMVAttnProcessor": "attention",
    "RowColMVAttnProcessor": "attention",
    "TG2MV_VIEWS": "attention",
    "save_adapter": "adapter_io",
    "load_adapter": "adapter_io",
    "adapter_state_dict": "adapter_io",
    "AdapterLoadReport": "adapter_io",
    "MVAdapterError": "errors",
    "AdapterLoadError": "errors",
    "shift_snr_scheduler": "schedule",
    "shift_snr_betas": "schedule",
    "encode_prompt": "pipeline",
    "sdxl_time_ids": "pipeline",
    "plucker_condition_maps": "pipeline",
    "MVAdapterPipeline": "pipeline",
    "build_tiny_sdxl": "tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
