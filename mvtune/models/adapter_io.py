"""Save/load the adapter in the released MV-Adapter format (spec §9).

One flat safetensors file: the UNet entries whose key contains "_mv" plus the whole cond encoder state dict
("adapter...."), metadata {"format": "pt"}. Unlike the reference loader (load_state_dict(strict=False) on
both modules, mismatches silently ignored) we check every key and shape against the adapted model.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import T2IAdapter, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mvtune.models.errors import AdapterLoadError
from mvtune.storage import atomic_write

logger = logging.getLogger(__name__)

_MAX_LISTED = 20


def adapter_state_dict(unet: UNet2DConditionModel, cond_encoder: T2IAdapter) -> dict[str, torch.Tensor]:
    """The tensors save_adapter writes; works on meta-device models (shapes without memory)."""
    state = {k: v for k, v in unet.state_dict().items() if "_mv" in k}
    if not state:
        raise AdapterLoadError("the UNet has no multi-view parameters: call attach_mv_adapter(unet, ...) first")
    encoder_state = cond_encoder.state_dict()
    clash = state.keys() & encoder_state.keys()
    if clash:
        raise AdapterLoadError(f"UNet and cond encoder keys collide: {sorted(clash)[:_MAX_LISTED]}")
    state.update(encoder_state)
    return state


def save_adapter(path: str | os.PathLike, unet: UNet2DConditionModel, cond_encoder: T2IAdapter) -> Path:
    """Write the adapter atomically (see storage.atomic_write), tensors in their current dtype."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state_dict(unet, cond_encoder).items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    logger.debug("saved adapter (%d tensors) to %s", len(state), path)  # once per checkpoint: debug
    return path


@dataclass
class AdapterLoadReport:
    """What did not match between an adapter file and the adapted model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        def listed(items):
            shown = ", ".join(map(str, items[:_MAX_LISTED]))
            return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {listed(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {listed(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} mis-shaped: {listed(shapes)}")
        return "; ".join(parts)


def compare_keys(file_shapes: dict[str, tuple[int, ...]], model_shapes: dict[str, tuple[int, ...]]) -> AdapterLoadReport:
    """Key/shape differences between an adapter file and a model (both as {key: shape})."""
    return AdapterLoadReport(
        missing=sorted(model_shapes.keys() - file_shapes.keys()),
        unexpected=sorted(file_shapes.keys() - model_shapes.keys()),
        mismatched=[
            (k, file_shapes[k], model_shapes[k])
            for k in sorted(file_shapes.keys() & model_shapes.keys())
            if file_shapes[k] != model_shapes[k]
        ],
    )


def load_adapter(
    path: str | os.PathLike, unet: UNet2DConditionModel, cond_encoder: T2IAdapter, strict: bool = True
) -> AdapterLoadReport:
    """Load an adapter file into an adapted UNet (see attach_mv_adapter) and its cond encoder.

    strict=True raises AdapterLoadError naming missing, unexpected and mis-shaped keys before touching the
    model; strict=False loads every key that matches and warns about the rest.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(f"adapter file not found: {path}")
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise AdapterLoadError(f"{path} is not a readable safetensors file: {exc}") from exc

    unet_shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items() if "_mv" in k}
    encoder_shapes = {k: tuple(v.shape) for k, v in cond_encoder.state_dict().items()}
    report = compare_keys({k: tuple(v.shape) for k, v in state.items()}, unet_shapes | encoder_shapes)
    if not report.ok:
        message = f"adapter {path} does not match the model: {report.describe()}"
        if strict:
            raise AdapterLoadError(
                message + " (was the UNet adapted with the same base config and cond_in_channels?)"
            )
        warnings.warn(message, stacklevel=2)
        logger.warning(message)

    bad = {k for k, _, _ in report.mismatched}
    unet.load_state_dict({k: v for k, v in state.items() if k in unet_shapes and k not in bad}, strict=False)
    cond_encoder.load_state_dict({k: v for k, v in state.items() if k in encoder_shapes and k not in bad}, strict=False)
    logger.info("loaded adapter %s (%d tensors)", path, len(state) - len(report.unexpected) - len(bad))
    return report
