"""Prompt adherence during training: at each validation, CLIP scores of samples next to the losses.

The run samples its first validation objects with each concept prompt and a few generic prompts (fixed seeds),
and logs under `eval/`: CLIP-T on the concept prompts, attribute presence, CLIP-T on the generic prompts and the
forgetting score (generic CLIP-T at the run's first validation minus now: positive = the model follows unrelated
prompts less well than when this run started). The best step by `best_metric` is exported to export/best/.

The scorers are mvtune.models.clip's, the ones `mvtune evaluate` uses; they are imported when a run has an
`evaluation` block, so a run without one never loads them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

BEST_DIR = "best"


class AttributeProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    positive: str
    contrast: str


class ConceptProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    prompts: list[str] = Field(min_length=1)
    attributes: dict[str, AttributeProbe] = {}


class EvaluationConfig(BaseModel):
    """The train config's `evaluation` block; empty `clip` = off."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    clip: list[Path] = []  # local transformers CLIP folders; the first one's scores are the logged ones
    concepts: list[ConceptProbe] = []  # a list, not a mapping: concept names are data, not config keys
    generic: list[str] = []  # a few prompts unrelated to the concepts (forgetting)
    num_objects: int = Field(1, ge=1)  # val objects sampled per prompt
    best_metric: str = "val/loss"  # any logged metric, e.g. eval/clip_t or eval/forgetting
    best_mode: Literal["min", "max"] = "min"

    @property
    def enabled(self) -> bool:
        return bool(self.clip)


def problems(cfg: EvaluationConfig) -> list[str]:
    """Disk checks for check_config: missing CLIP folders, an evaluation without prompts."""
    out = [f"evaluation.clip: {p} does not exist (a local transformers CLIP folder)" for p in cfg.clip if not Path(p).is_dir()]
    if cfg.enabled and not cfg.concepts and not cfg.generic:
        out.append("evaluation: give concept prompts (evaluation.concepts) and/or evaluation.generic prompts")
    return out


class TrainingEvaluator:
    """Holds the loaded scorer, the forgetting baseline and the best step across validations."""

    def __init__(self, cfg: EvaluationConfig, device: str = "cpu"):
        from mvtune.models.clip import ScorerSpec, load_scorer

        self.cfg = cfg
        self.scorer = load_scorer(ScorerSpec(kind="transformers", path=cfg.clip[0]), device=device)
        self.generic_baseline: float | None = None
        self.best: dict | None = None

    def score(self, sample) -> dict[str, float]:
        """`sample(prompt, k) -> list of HxWx3 uint8 views` for val object k; returns the eval/ metrics."""
        from mvtune.models.clip import attribute_presence, clip_t

        concept_t, presence, generic_t = [], [], []
        for concept in self.cfg.concepts:
            for prompt in concept.prompts:
                for k in range(self.cfg.num_objects):
                    views = sample(prompt, k)
                    concept_t.append(float(np.mean(clip_t(self.scorer, views, prompt))))
                    presence += [attribute_presence(self.scorer, views, a.positive, a.contrast)
                                 for a in concept.attributes.values()]
        for prompt in self.cfg.generic:
            for k in range(self.cfg.num_objects):
                generic_t.append(float(np.mean(clip_t(self.scorer, sample(prompt, k), prompt))))
        metrics = {}
        if concept_t:
            metrics["eval/clip_t"] = float(np.mean(concept_t))
        if presence:
            metrics["eval/attribute_presence"] = float(np.mean(presence))
        if generic_t:
            value = float(np.mean(generic_t))
            if self.generic_baseline is None:
                self.generic_baseline = value
            metrics["eval/generic_clip_t"] = value
            metrics["eval/forgetting"] = self.generic_baseline - value
        return metrics

    def improved(self, metrics: dict[str, float], step: int) -> bool:
        """Record the step if `best_metric` improved; True when it did (the caller exports it)."""
        value = metrics.get(self.cfg.best_metric)
        if value is None or not math.isfinite(value):
            return False
        better = self.best is None or (value < self.best["value"] if self.cfg.best_mode == "min"
                                       else value > self.best["value"])
        if better:
            self.best = {"metric": self.cfg.best_metric, "mode": self.cfg.best_mode, "value": float(value),
                         "step": int(step)}
        return better


def log_evaluation(system) -> dict[str, float]:
    """Score this validation's samples, log them next to the losses and export the best step (rank 0 only).

    During Lightning's sanity check (before the first step) it only records the forgetting baseline.
    """
    import torch

    from mvtune.train.system import step_generator

    trainer, cfg = system.trainer, system.cfg
    if not trainer.is_global_zero:
        return {}
    evaluator = getattr(system, "_evaluator", None)
    if evaluator is None:
        evaluator = system._evaluator = TrainingEvaluator(cfg.evaluation, device=str(system.device))
    dataset = trainer.datamodule.val_set
    pipe, val = system.pipeline(), cfg.validation

    @torch.no_grad()
    def sample(prompt: str, k: int) -> list[np.ndarray]:
        item = dataset[k % len(dataset)]
        images = pipe(prompt, item["source_rgb"], num_inference_steps=val.num_inference_steps,
                      guidance_scale=val.guidance_scale, negative_prompt=val.negative_prompt,
                      generator=step_generator(system.device, val.seed, k), output_type="np")
        return [(im * 255.0).round().clip(0, 255).astype(np.uint8) for im in images]

    was_training = system.cond_encoder.training
    system.cond_encoder.eval()
    try:
        with system.ema_weights():
            metrics = evaluator.score(sample)
    finally:
        system.cond_encoder.train(was_training)
    if trainer.sanity_checking:
        return metrics
    for name, value in metrics.items():
        system.log(name, value, rank_zero_only=True)
    candidates = {**{k: float(v) for k, v in trainer.callback_metrics.items()}, **metrics}
    if evaluator.improved(candidates, system.global_step) and system.export_dir is not None:
        files = system.export(Path(system.export_dir) / BEST_DIR)
        evaluator.best["exports"] = {k: str(v) for k, v in files.items()}
    return metrics
