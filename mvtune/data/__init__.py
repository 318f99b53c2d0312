"""Datasets: validation, splits and the training loader (torch-dependent parts load lazily).

``import mvtune.data`` and ``mvtune.data.validate`` never import torch; the names below load their module on
first access, so ``mvtune.data.MultiviewDataset`` works without an explicit submodule import.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "MultiviewDataset": "mvtune.data.loader",
    "MultiviewDataModule": "mvtune.data.loader",
    "DatasetError": "mvtune.data.loader",
    "EpochSampler": "mvtune.data.loader",
    "collate_multiview": "mvtune.data.loader",
    "build_cache": "mvtune.data.cache",
    "split_dataset": "mvtune.data.splits",
    "check_leakage": "mvtune.data.splits",
    "augment_meshes": "mvtune.data.augment",
    "CaptionSampler": "mvtune.data.augment",
    "reference_sample": "mvtune.data.reference",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mvtune.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
