"""Inference: condition maps from a mesh and multi-view generation with a (fine-tuned) MV-Adapter."""

from mvtune.generate.conditions import ConditionMaps, condition_maps, load_normalized
from mvtune.generate.run import (
    BatchConfig,
    GenerateConfig,
    GenerateError,
    LoraSpec,
    ModelConfig,
    SamplingConfig,
    apply_lora,
    generate,
    generate_batch,
    load_pipeline,
    write_views,
)

__all__ = [
    "BatchConfig",
    "ConditionMaps",
    "GenerateConfig",
    "GenerateError",
    "LoraSpec",
    "ModelConfig",
    "SamplingConfig",
    "apply_lora",
    "condition_maps",
    "generate",
    "generate_batch",
    "load_normalized",
    "load_pipeline",
    "write_views",
]
