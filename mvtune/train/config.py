"""The training config: one typed, validated object per run, also reachable from MV-Adapter's own YAML layout.

Two layouts load into the same `TrainConfig`:
* mvtune's (sections `data`, `model`, `objective`, `optim`, `lora`, `prior`, `ema`, `validation`, `trainer`,
  `checkpoint`, `output` + top-level `strategy`, `train_cond_encoder`);
* MV-Adapter's (`data_cls`, `data`, `system_cls`, `system`, `trainer`, `checkpoint`, with `${a.b}`
  interpolation), mapped key by key (see MVADAPTER_KEYS); class paths become a variant or are ignored with a
  notice, anything unknown is an error.
`key=value` overrides always use mvtune's keys. Checks that read the disk (paths, the dataset's view poses)
live in `check_config`, so a config parses anywhere and fails up front, before torch loads, where it runs.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mvtune.config_files import (
    merge,
    parse_overrides,
    read_yaml_mapping,
    section_fields,
    set_dotted,
    unknown_keys,
    validation_problems,
)
from mvtune.train.evaluation import EvaluationConfig
from mvtune.train.evaluation import problems as evaluation_problems

log = logging.getLogger(__name__)

TINY_BASE = "tiny"  # model.base value for the random tiny SDXL (tests, demo)


class TrainConfigError(Exception):
    """A config that cannot run; the message names the key or file and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImagesConfig(_Section):
    """`data.kind: images` (concept LoRAs): how 2D images become samples (see mvtune.data.images)."""

    buckets: bool = True  # aspect-ratio buckets around data.height**2 pixels; false: square data.height crops
    max_aspect: float = Field(2.0, ge=1.0)  # widest bucket, either way
    random_crop: bool = True  # false: centred crops
    caption_dropout: float = Field(0.0, ge=0, le=1)  # replace the caption by "" (unconditional)
    shuffle_tags: bool = False  # shuffle comma-separated tags ...
    keep_tokens: int = Field(1, ge=0)  # ... keeping this many leading tags (the trigger phrase) in place


class LicencePolicyConfig(_Section):
    """data.licence_policy: what a run does with objects whose licence (dataset manifest) forbids training use."""

    forbidden: Literal["refuse", "warn"] = "refuse"  # warn: an explicit override, recorded in summary.json
    unknown: Literal["refuse", "warn", "allow"] = "warn"  # no or an unrecognised licence
    territory: str | None = None  # where the run happens (ISO code, "EU"): licences that exclude it count as forbidden


class DataConfig(_Section):
    kind: Literal["multiview", "images"] = "multiview"  # images: a folder with .txt captions or a .jsonl (root)
    images: ImagesConfig = ImagesConfig()
    root: Path
    scene_list: Path | None = None  # None: the split files root/split_{train,val}.json
    train_indices: tuple[int | None, int | None] | None = None  # MV-Adapter style slices of scene_list
    val_indices: tuple[int | None, int | None] | None = None
    captions: Path | None = None  # None: root/captions.json
    image_names: list[str] | None = None  # file indices as MV-Adapter feeds them; checked against meta.json
    height: int = Field(768, ge=32)
    width: int = Field(768, ge=32)
    background: str | float = "gray"
    mirror_prob: float = Field(0.0, ge=0.0, le=1.0)
    batch_size: int = Field(1, ge=1)
    num_workers: int = Field(4, ge=0)
    cache_latents: bool = False  # precompute VAE posteriors beside the dataset
    licence_policy: LicencePolicyConfig = LicencePolicyConfig()


class ModelConfig(_Section):
    base: str = TINY_BASE  # local diffusers SDXL folder, or "tiny"
    vae: Path | None = None  # e.g. a local copy of madebyollin/sdxl-vae-fp16-fix
    adapter: Path | None = None  # released MV-Adapter weights to start from; None = from scratch
    variant: Literal["tg2mv", "t2mv"] = "tg2mv"
    frozen_dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"  # VAE + text encoders; auto: fp16 on CUDA
    gradient_checkpointing: bool = False
    shift_noise: bool = True
    shift_scale: float = Field(8.0, gt=0)


class ObjectiveConfig(_Section):
    prompt_drop_prob: float = Field(0.1, ge=0, le=1)
    cond_drop_prob: float = Field(0.1, ge=0, le=1)  # in the text system it only drops the prompt (spec §5)
    snr_gamma: float | None = Field(5.0, gt=0)  # None: plain MSE
    noise_offset: float = Field(0.0, ge=0)
    input_perturbation: float = Field(0.0, ge=0)
    vae_max_slice: int = Field(8, ge=1)


class LoraConfig(_Section):
    rank: int = Field(16, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]
    lr: float = Field(1e-4, gt=0)


class OptimConfig(_Section):
    name: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    lr: float = Field(5e-5, gt=0)  # the UNet's _mv layers
    cond_encoder_lr: float | None = Field(None, gt=0)  # None: same as lr
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(2000, ge=0)
    warmup_start_factor: float = Field(1e-6, gt=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)


class PriorConfig(_Section):
    """Prior preservation: generic objects mixed into training so the model keeps its prompt following."""

    root: Path | None = None
    scene_list: Path | None = None  # None: root/scene_list.json
    captions: Path | None = None
    weight: float = Field(1.0, ge=0)  # lambda on the reg samples' loss
    ratio: float = Field(0.25, ge=0, lt=1)  # fraction of training samples drawn from the reg set
    # concept-lora: class images generated with the base model into `root` (default under output.dir), cached
    generate: int | None = Field(None, ge=1)
    class_prompt: str | None = None
    num_inference_steps: int = Field(30, ge=1)
    guidance_scale: float = Field(5.0, ge=0)


class ConceptConfig(_Section):
    """strategy concept-lora: a plain SDXL LoRA on single images (no MV-Adapter layers while training)."""

    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # None: the base scheduler's
    train_text_encoders: bool = False  # LoRA on both CLIP encoders too (lora.rank/alpha/dropout)
    text_encoder_lr: float = Field(5e-5, gt=0)
    text_encoder_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "out_proj"]
    steps_per_image: int | None = Field(100, ge=1)  # sets trainer.max_steps when it is not given
    kohya_keys: bool = False  # also export the LoRA with kohya key names (A1111/ComfyUI)


class EMAConfig(_Section):
    enabled: bool = False
    decay: float = Field(0.9999, gt=0, lt=1)


class ValidationConfig(_Section):
    every_n_steps: int | None = Field(2000, ge=1)  # None: at the end of every check_every_n_epochs epochs
    check_every_n_epochs: int = Field(1, ge=1)
    num_batches: int | None = Field(None, ge=1)  # None: the whole val split
    num_objects: int = Field(2, ge=0)  # val objects sampled into grids
    prompts: list[str] | None = None  # None: the objects' captions
    # None: no negative prompt, i.e. zero embeddings (SDXL's force_zeros_for_empty_prompt), as the reference's
    # validation samples; a string is encoded like any prompt.
    negative_prompt: str | None = None
    num_inference_steps: int = Field(30, ge=1)
    guidance_scale: float = 3.0
    seed: int = 42
    sanity_steps: int = Field(1, ge=0)
    early_stopping_patience: int | None = Field(None, ge=1)  # validations without improvement of val/loss


class TrainerConfig(_Section):
    max_steps: int = -1
    max_epochs: int | None = 10
    precision: str = "bf16-mixed"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accumulate_grad_batches: int = Field(1, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    enable_progress_bar: bool = True
    seed: int = 0


class CheckpointConfig(_Section):
    every_n_steps: int | None = Field(2000, ge=1)  # None: after each validation
    save_last: bool = True
    save_top_k: int = -1


class OutputConfig(_Section):
    dir: Path = Path("runs")
    name: str | None = None  # None: <tag>-<time>, or <tag>-slurm<job id> under Slurm (requeue finds it)
    tag: str | None = None  # prefix of generated run names; None: the config file's stem


class TrainConfig(_Section):
    strategy: Literal["adapter", "lora", "adapter+lora", "concept-lora"] = "adapter"
    train_cond_encoder: bool = True
    data: DataConfig
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    lora: LoraConfig = LoraConfig()
    prior: PriorConfig = PriorConfig()
    concept: ConceptConfig = ConceptConfig()
    ema: EMAConfig = EMAConfig()
    validation: ValidationConfig = ValidationConfig()
    trainer: TrainerConfig = TrainerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    output: OutputConfig = OutputConfig()
    evaluation: EvaluationConfig = EvaluationConfig()  # CLIP scores at each validation (mvtune.train.evaluation)

    @model_validator(mode="before")
    @classmethod
    def _strategy_defaults(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("strategy") == "concept-lora":
            return merge(CONCEPT_LORA_DEFAULTS, raw)
        return raw

    @model_validator(mode="after")
    def _combinations(self) -> "TrainConfig":
        problems = concept_lora_problems(self)
        if self.data.height != self.data.width or self.data.height % 32:
            problems.append(f"data.height/width must be equal and divisible by 32, got {self.data.height}x{self.data.width}")
        if self.data.cache_latents and (self.data.background == "random" or self.data.mirror_prob > 0):
            problems.append(
                "data.cache_latents stores one latent per object, so it cannot be combined with "
                "data.background=random or data.mirror_prob>0 (augmented images change every epoch)"
            )
        if self.data.image_names is not None and len(self.data.image_names) != 6:
            problems.append(f"data.image_names must list 6 views, got {len(self.data.image_names)}")
        if (self.data.train_indices or self.data.val_indices) and self.data.scene_list is None:
            problems.append("data.train_indices/val_indices slice data.scene_list: set data.scene_list too")
        if self.strategy == "lora" and self.model.adapter is None:
            problems.append(
                "strategy 'lora' keeps the adapter frozen, so it needs model.adapter (released weights); a fresh "
                "adapter has a zero multi-view branch. Use strategy 'adapter+lora' to train both from scratch"
            )
        steps_from_images = self.strategy == "concept-lora" and self.concept.steps_per_image is not None
        if self.trainer.max_steps < 0 and self.trainer.max_epochs is None and not steps_from_images:
            problems.append("set trainer.max_steps or trainer.max_epochs, or the run never ends")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def trains_adapter(self) -> bool:
        return self.strategy in ("adapter", "adapter+lora")

    def trains_lora(self) -> bool:
        return self.strategy in ("lora", "adapter+lora")

    def class_image_dir(self) -> Path:
        """Where prior.generate puts its class images: prior.root, else a folder per (base, prompt, settings)."""
        if self.prior.root is not None:
            return self.prior.root
        import hashlib

        prior = self.prior
        key = json.dumps([self.model.base, str(self.model.vae), prior.class_prompt, prior.num_inference_steps,
                          prior.guidance_scale, self.data.height, self.trainer.seed])
        return self.output.dir / "class-images" / hashlib.sha256(key.encode()).hexdigest()[:12]


#: Defaults of strategy concept-lora where they differ from the multi-view ones; sources in docs/training.md
#: ("Concept LoRAs from 2D images"). Anything the config sets wins.
CONCEPT_LORA_DEFAULTS = {
    "lora": {"rank": 16, "alpha": 16.0, "lr": 1e-4},
    "optim": {"warmup_steps": 0, "weight_decay": 1e-2},
    "objective": {"snr_gamma": 5.0},
    "trainer": {"max_epochs": None},
}

#: Multi-view settings that mean nothing for a single-image SDXL LoRA: refused when a concept-lora config sets them.
_MULTIVIEW_ONLY = {
    "model": ("adapter", "variant", "shift_noise", "shift_scale"),
    "objective": ("prompt_drop_prob", "cond_drop_prob"),
    "data": ("scene_list", "train_indices", "val_indices", "captions", "image_names", "background", "cache_latents"),
    "prior": ("scene_list", "captions"),
}


def concept_lora_problems(cfg: "TrainConfig") -> list[str]:
    """What a concept-lora config (or an images dataset) cannot combine with."""
    problems = []
    images, concept = cfg.data.kind == "images", cfg.strategy == "concept-lora"
    if images != concept:
        problems.append("data.kind images goes with strategy concept-lora (and concept-lora with data.kind images)")
    if not concept:
        if cfg.prior.generate is not None:
            problems.append("prior.generate makes class images for strategy concept-lora; multi-view priors use prior.root")
        return problems
    for section, keys in _MULTIVIEW_ONLY.items():
        given = getattr(cfg, section).model_fields_set
        for key in keys:
            if key in given:
                problems.append(f"{section}.{key} is a multi-view setting; strategy concept-lora does not use it"
                                + (" (use data.images.caption_dropout)" if key == "prompt_drop_prob" else ""))
    if "train_cond_encoder" in cfg.model_fields_set:
        problems.append("train_cond_encoder is a multi-view setting; strategy concept-lora trains no cond encoder")
    if cfg.validation.early_stopping_patience:
        problems.append("validation.early_stopping_patience needs a validation loss; concept-lora validates with sample grids")
    if cfg.evaluation.enabled:
        problems.append("evaluation.enabled scores multi-view validations; compare a concept LoRA with `mvtune evaluate` "
                        "(a model entry with loras: [...])")
    if cfg.data.images.buckets and cfg.data.height % 64:
        problems.append(f"data.height {cfg.data.height} must be a multiple of 64 for aspect-ratio buckets (or data.images.buckets=false)")
    if cfg.prior.generate is not None and not cfg.prior.class_prompt:
        problems.append("prior.generate needs prior.class_prompt (e.g. 'a toy duck'), the prompt its class images are made with")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Loading: YAML, interpolation, MV-Adapter mapping, overrides, unknown keys.

_INTERPOLATION = re.compile(r"\$\{([^}]+)\}")


def resolve_interpolations(tree: Any, root: dict | None = None, _depth: int = 0) -> Any:
    """Replace `${a.b}` by the value at a.b (typed when it is the whole string), like OmegaConf."""
    root = tree if root is None else root
    if _depth > 20:
        raise TrainConfigError("config interpolation nests too deep (a cycle?)")
    if isinstance(tree, dict):
        return {k: resolve_interpolations(v, root, _depth) for k, v in tree.items()}
    if isinstance(tree, list):
        return [resolve_interpolations(v, root, _depth) for v in tree]
    if not isinstance(tree, str) or "${" not in tree:
        return tree

    def lookup(path: str):
        node = root
        for part in path.strip().split("."):
            if not isinstance(node, dict) or part not in node:
                raise TrainConfigError(f"interpolation ${{{path}}} refers to a key that does not exist")
            node = node[part]
        return resolve_interpolations(node, root, _depth + 1)

    whole = _INTERPOLATION.fullmatch(tree)
    if whole:
        return lookup(whole.group(1))
    return _INTERPOLATION.sub(lambda m: str(lookup(m.group(1))), tree)


def is_mvadapter_layout(raw: dict) -> bool:
    return "system" in raw or "system_cls" in raw or "data_cls" in raw


# MV-Adapter key -> mvtune key (None: ignored with a notice, with the reason).
_TEXT_SDXL_SYSTEM = "mvadapter.systems.mvadapter_text_sdxl.MVAdapterTextSDXLSystem"
_PROCESSORS = {
    "mvadapter.models.attention_processor.DecoupledMVRowColSelfAttnProcessor2_0": "tg2mv",
    "mvadapter.models.attention_processor.DecoupledMVRowSelfAttnProcessor2_0": "t2mv",
}
MVADAPTER_KEYS: dict[str, str | tuple[None, str]] = {
    "name": "output.dir",  # with exp_root_dir: runs land in exp_root_dir/name/<tag>-<time>, as in the reference
    "tag": "output.tag",
    "exp_root_dir": "output.dir",
    "seed": "trainer.seed",
    "data_cls": (None, "mvtune uses its own data module"),
    "system_cls": (None, "mvtune uses its own training system"),
    "data.root_dir": "data.root",
    "data.scene_list": "data.scene_list",
    "data.background_color": "data.background",
    "data.image_names": "data.image_names",
    "data.image_modality": (None, "colour images are always color_NNNN.webp"),
    "data.num_views": (None, "fixed at 6 views"),
    "data.prompt_db_path": "data.captions",
    "data.return_prompt": (None, "prompts are always returned"),
    "data.projection_type": (None, "orthographic views, from meta.json"),
    "data.source_image_modality": (None, "given by the variant (tg2mv: position + normal, t2mv: plucker); checked"),
    "data.position_offset": "data.position_offset",  # checked against _FIXED_ENCODINGS, not stored
    "data.position_scale": "data.position_scale",
    "data.plucker_offset": "data.plucker_offset",
    "data.plucker_scale": "data.plucker_scale",
    "data.train_indices": "data.train_indices",
    "data.val_indices": "data.val_indices",
    "data.test_indices": (None, "testing is not part of training"),
    "data.height": "data.height",
    "data.width": "data.width",
    "data.batch_size": "data.batch_size",
    "data.num_workers": "data.num_workers",
    "system.check_train_every_n_steps": (None, "training samples are not rendered; see validation grids"),
    "system.cleanup_after_validation_step": (None, "nothing to clean up"),
    "system.cleanup_after_test_step": (None, "nothing to clean up"),
    "system.pretrained_model_name_or_path": "model.base",
    "system.pretrained_vae_name_or_path": "model.vae",
    "system.pretrained_adapter_name_or_path": "model.adapter",
    "system.init_adapter_kwargs.self_attn_processor": "model.variant",
    "system.init_adapter_kwargs.cond_in_channels": (None, "6 condition channels for both variants"),
    "system.init_adapter_kwargs.copy_attn_weights": (None, "a fresh adapter always copies the attention weights"),
    "system.init_adapter_kwargs.zero_init_module_keys": (None, "a fresh adapter always zero-inits to_out_mv"),
    "system.train_cond_encoder": "train_cond_encoder",
    "system.trainable_modules": "strategy",
    "system.prompt_drop_prob": "objective.prompt_drop_prob",
    "system.image_drop_prob": (None, "computed but unused by the text system (spec §5)"),
    "system.cond_drop_prob": "objective.cond_drop_prob",
    "system.shift_noise": "model.shift_noise",
    "system.shift_noise_mode": (None, "only 'interpolated' exists"),
    "system.shift_noise_scale": "model.shift_scale",
    "system.eval_seed": "validation.seed",
    "system.eval_num_inference_steps": "validation.num_inference_steps",
    "system.eval_guidance_scale": "validation.guidance_scale",
    "system.eval_height": (None, "validation samples use data.height"),
    "system.eval_width": (None, "validation samples use data.width"),
    "system.optimizer.name": "optim.name",
    "system.optimizer.args.lr": "optim.lr",
    "system.optimizer.args.betas": "optim.betas",
    "system.optimizer.args.eps": "optim.eps",
    "system.optimizer.args.weight_decay": "optim.weight_decay",
    "system.optimizer.params.unet.lr": "optim.lr",
    "system.optimizer.params.cond_encoder.lr": "optim.cond_encoder_lr",
    "system.scheduler": "optim.warmup_steps",  # SequentialLR(LinearLR, ConstantLR), read as a whole
    "trainer.max_epochs": "trainer.max_epochs",
    "trainer.max_steps": "trainer.max_steps",
    "trainer.log_every_n_steps": "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps": "validation.sanity_steps",
    "trainer.val_check_interval": "validation.every_n_steps",
    "trainer.check_val_every_n_epoch": "validation.check_every_n_epochs",
    "trainer.enable_progress_bar": "trainer.enable_progress_bar",
    "trainer.precision": "trainer.precision",
    "trainer.gradient_clip_val": "optim.grad_clip",
    "trainer.strategy": "trainer.strategy",
    "trainer.accumulate_grad_batches": "trainer.accumulate_grad_batches",
    "trainer.devices": "trainer.devices",
    "trainer.num_nodes": "trainer.num_nodes",
    "checkpoint.save_last": "checkpoint.save_last",
    "checkpoint.save_top_k": "checkpoint.save_top_k",
    "checkpoint.every_n_train_steps": "checkpoint.every_n_steps",
    "checkpoint.every_n_epochs": (None, "mvtune checkpoints by steps (checkpoint.every_n_steps) and at each validation"),
}


#: Condition encodings mvtune implements (the published values): positions (P + 0.5) / 1, Plücker (x + 1) / 2.
_FIXED_ENCODINGS = {
    "data.position_offset": 0.5,
    "data.position_scale": 1.0,
    "data.plucker_offset": 1.0,
    "data.plucker_scale": 2.0,
}
#: The condition maps each variant's data carries (data.source_image_modality).
_MODALITIES = {"tg2mv": ["position", "normal"], "t2mv": ["plucker"]}


def unsupported_mvadapter_config(raw: dict) -> str | None:
    """Why an MV-Adapter config trains something mvtune does not (image-guided variants, SD2.1), or None.

    Decided from the system class, the reference-image keys and the processor, before any key is mapped, so the
    user reads one line instead of a list of unknown keys.
    """
    system_cls = str(raw.get("system_cls") or _TEXT_SDXL_SYSTEM)
    system = raw.get("system") if isinstance(raw.get("system"), dict) else {}
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    processor = str((system.get("init_adapter_kwargs") or {}).get("self_attn_processor", ""))
    geometry = "RowCol" in processor or data.get("source_image_modality") == _MODALITIES["tg2mv"]
    image_guided = (
        "_image_" in system_cls
        or any(str(k).startswith("reference_") for k in data)
        or "_ref" in list(system.get("trainable_modules") or [])
    )
    sd21 = system_cls.split(".")[-1].startswith("MVAdapter") and not system_cls.endswith("SDXLSystem")
    if not (image_guided or sd21):
        return None
    variant = ("ig2mv" if geometry else "i2mv") if image_guided else ("tg2mv" if geometry else "t2mv")
    why = []
    if image_guided:
        why.append(f"{variant} is image-guided (a reference image branch)")
    if sd21:
        base = system.get("pretrained_model_name_or_path") or "Stable Diffusion 2.1"
        why.append(f"its base is SD2.1 ({base})")
    return (
        f"this MV-Adapter config ({system_cls.split('.')[-1]}) trains {variant}"
        + (" on SD2.1" if sd21 else "")
        + f", which mvtune does not support: {' and '.join(why)}; mvtune trains tg2mv and t2mv on SDXL "
        "(configs/geometry-guidance/mvadapter_tg2mv_sdxl.yaml, configs/view-guidance/mvadapter_t2mv_sdxl.yaml)"
    )


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves; whole sub-dicts stay one entry where the mapping names them (scheduler)."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and dotted not in MVADAPTER_KEYS:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _warmup_from_scheduler(spec: dict) -> dict:
    """SequentialLR(LinearLR, ConstantLR(factor 1)) -> warm-up steps and start factor; anything else is refused."""
    try:
        first = spec["schedulers"][0] if spec.get("name") == "SequentialLR" else spec
        if first["name"] != "LinearLR" or float(first["args"].get("end_factor", 1.0)) != 1.0:
            raise KeyError
        rest = spec.get("schedulers", [])[1:]
        if any(s["name"] != "ConstantLR" or float(s.get("args", {}).get("factor", 1.0)) != 1.0 for s in rest):
            raise KeyError
        milestones = spec.get("milestones")
        if rest and milestones is not None and [int(m) for m in milestones] != [int(first["args"]["total_iters"])]:
            raise KeyError  # warm-up that stops early or late is not "linear to 1, then constant"
        return {"warmup_steps": int(first["args"]["total_iters"]), "warmup_start_factor": float(first["args"]["start_factor"])}
    except (KeyError, IndexError, TypeError, ValueError):
        raise TrainConfigError(
            f"system.scheduler {json.dumps(spec)} is not a linear warm-up then constant schedule, the only one "
            "mvtune implements (optim.warmup_steps, optim.warmup_start_factor)"
        ) from None


def from_mvadapter(raw: dict) -> tuple[dict, list[str]]:
    """An MV-Adapter launcher config -> an mvtune config tree, plus notices about what was ignored."""
    raw = resolve_interpolations(raw)
    unsupported = unsupported_mvadapter_config(raw)
    if unsupported:
        raise TrainConfigError(unsupported)
    tree: dict = {}
    notices: list[str] = []
    problems: list[str] = []
    flat = _flatten(raw)
    for key, value in flat.items():
        target = MVADAPTER_KEYS.get(key)
        if target is None:
            close = difflib.get_close_matches(key, list(MVADAPTER_KEYS), n=1, cutoff=0.6)
            problems.append(f"unknown MV-Adapter key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            continue
        if isinstance(target, tuple):
            notices.append(f"ignored {key}={value!r}: {target[1]}")
            continue
        if key == "system.init_adapter_kwargs.self_attn_processor":
            if value not in _PROCESSORS:
                problems.append(f"{key}={value!r}: mvtune knows {', '.join(_PROCESSORS)}")
                continue
            value = _PROCESSORS[value]
        elif key == "system.trainable_modules":
            if list(value or []) != ["_mv"]:
                problems.append(f"{key}={value!r}: mvtune trains ['_mv'] (strategy adapter); use strategy=lora for more")
                continue
            value = "adapter"
        elif key == "system.optimizer.name":
            if str(value).lower() not in ("adamw", "adamw8bit", "adafactor"):
                problems.append(f"{key}={value!r}: use AdamW, AdamW8bit or Adafactor")
                continue
            value = str(value).lower()
        elif key == "system.scheduler":
            for k, v in _warmup_from_scheduler(value).items():
                set_dotted(tree, f"optim.{k}", v)
            continue
        elif key == "data.background_color" and isinstance(value, list):
            problems.append(f"{key}: an RGB list is not supported, use gray/white/black/random or a value")
            continue
        elif key in _FIXED_ENCODINGS:
            if not isinstance(value, (int, float)) or float(value) != _FIXED_ENCODINGS[key]:
                problems.append(
                    f"{key}={value!r}: mvtune encodes positions as (P + 0.5) / 1 and Plücker vectors as (x + 1) / 2, "
                    f"the published values; set {key}: {_FIXED_ENCODINGS[key]:g} or remove it"
                )
            continue
        elif key in ("name", "exp_root_dir"):
            continue  # joined below
        set_dotted(tree, target, value)
    if "name" in flat or "exp_root_dir" in flat:
        set_dotted(tree, "output.dir", str(Path(str(flat.get("exp_root_dir") or "outputs")) / str(flat.get("name") or "")))
    variant = tree.get("model", {}).get("variant", "tg2mv")
    modality = flat.get("data.source_image_modality")
    if modality is not None and list(modality) != _MODALITIES[variant]:
        problems.append(
            f"data.source_image_modality={list(modality)!r} does not match the {variant} processor, which is "
            f"conditioned on {_MODALITIES[variant]!r}"
        )
    if problems:
        raise TrainConfigError("cannot map the MV-Adapter config: " + "; ".join(problems))
    return tree, notices


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> TrainConfig:
    """Read a YAML config in either layout, apply `key=value` overrides (mvtune keys) and validate.

    Relative paths in the file stay relative to the working directory (as MV-Adapter's launcher reads them).
    """
    raw: dict = dict(base or {})
    if path is not None:
        loaded = read_yaml_mapping(path, "config file", TrainConfigError)
        if is_mvadapter_layout(loaded):
            loaded, notices = from_mvadapter(loaded)
            if notices:  # one line; what each ignored key means under --verbose
                log.info("MV-Adapter config %s: %d keys ignored (mvtune fixes or does not need them)", path, len(notices))
            for notice in notices:
                log.debug("MV-Adapter config: %s", notice)
        else:
            loaded = resolve_interpolations(loaded)
        raw = merge(raw, loaded)
    raw = merge(raw, parse_overrides(list(overrides), TrainConfigError))
    problems = unknown_keys(raw, TrainConfig)
    known = _without_unknown(raw, TrainConfig)
    # Type/range errors hide the combination checks (pydantic skips them): drop the bad leaves and validate
    # again, so one run lists every problem the config has.
    for _ in range(3):
        try:
            cfg = TrainConfig.model_validate(known)
            break
        except ValidationError as exc:
            cfg = None
            problems += validation_problems(exc)
            if not any(_drop(known, err["loc"]) for err in exc.errors()):
                break
    if problems:
        problems += [p for p in path_problems(lambda dotted: _dotted(raw, dotted)) if p not in problems]
        raise TrainConfigError("config problems:\n  - " + "\n  - ".join(dict.fromkeys(problems)))
    return cfg


def _without_unknown(tree: dict, model: type[BaseModel]) -> dict:
    fields = section_fields(model)
    out = {}
    for key, value in tree.items():
        if key in fields:
            out[key] = _without_unknown(value, fields[key]) if fields[key] is not None and isinstance(value, dict) else value
    return out


def _drop(tree: dict, loc: tuple) -> bool:
    """Remove the leaf at loc (a pydantic error location) so its default applies; False if nothing to drop."""
    node = tree
    for part in loc[:-1]:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if isinstance(node, dict) and loc and loc[-1] in node:
        del node[loc[-1]]
        return True
    return False


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML in mvtune's layout (the experiment record in every run folder)."""
    return yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)


# ---------------------------------------------------------------------------------------------------------------
# Up-front checks that read the disk (still no torch).


def split_lists(cfg: TrainConfig) -> dict[str, list[str]]:
    """Scene entries of the train and val splits: slices of data.scene_list, or the split files."""
    from mvtune.data.splits import SPLIT_FILES
    from mvtune.data.validate import read_scene_list

    data = cfg.data
    if data.scene_list is not None:
        entries = read_scene_list(data.scene_list)
        out = {}
        for name, indices in (("train", data.train_indices), ("val", data.val_indices)):
            out[name] = entries[slice(*indices)] if indices else list(entries)
        return out
    return {name: read_scene_list(data.root / SPLIT_FILES[name]) for name in ("train", "val")}


def prior_list(cfg: TrainConfig) -> list[str]:
    from mvtune.data.validate import read_scene_list

    return read_scene_list(cfg.prior.scene_list or cfg.prior.root / "scene_list.json")


def _missing(path: Path | None, what: str, hint: str) -> str | None:
    if path is not None and not Path(path).exists():
        return f"{what} {path} does not exist; {hint}"
    return None


_PATH_KEYS = (
    ("model.vae", "set it to a local diffusers VAE folder or null"),
    ("model.adapter", "set it to the released .safetensors file or null to start from scratch"),
    ("data.root", "set it to a dataset rendered with `mvtune render`"),
    ("data.scene_list", "set it to a JSON/TXT list of ids or null for the split files"),
    ("data.captions", "set it to a JSON id -> caption file or null for root/captions.json"),
    ("prior.root", "set it to a dataset of generic objects or null to disable prior preservation"),
    ("prior.scene_list", "set it to the regularisation set's list"),
)


def _dotted(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def path_problems(value: Any) -> list[str]:
    """Paths the config names that do not exist; `value(dotted_key)` reads the config (validated or raw), so the
    same check runs beside type errors when the config does not validate."""
    problems = []
    base = value("model.base")
    base = TINY_BASE if base is None else str(base)
    if base != TINY_BASE and not (Path(base) / "model_index.json").is_file():
        problems.append(
            f"model.base {base!r} is not a local diffusers SDXL folder (no model_index.json); download it first "
            f"(e.g. `huggingface-cli download {base} --local-dir DIR`) and set model.base=DIR"
        )
    for key, hint in _PATH_KEYS:
        path = value(key)
        if isinstance(path, (str, Path)) and str(path):
            problem = _missing(Path(path), key, hint)
            if problem:
                problems.append(problem)
    vae = value("model.vae")
    if base != TINY_BASE and isinstance(vae, (str, Path)) and Path(vae).is_file():
        problems.append(f"model.vae {vae} is a file; it must be a diffusers VAE folder")
    return problems


def empty_split_reason(cfg: TrainConfig, name: str) -> str:
    """Why a split came out empty, naming the slice and the list length when a slice did it."""
    data = cfg.data
    indices = data.train_indices if name == "train" else data.val_indices
    if data.scene_list is not None and indices:
        from mvtune.data.validate import read_scene_list

        count = len(read_scene_list(data.scene_list))
        return (
            f"the {name} split is empty: data.{name}_indices {list(indices)} selects nothing from the {count} entries "
            f"of {data.scene_list} (MV-Adapter's configs hold out the last 8 objects with [0, -8] / [-8, null]; "
            f"use a longer list or set data.train_indices/data.val_indices, e.g. [0, -1] and [-1, null])"
        )
    if data.scene_list is not None:
        return f"the {name} split is empty: {data.scene_list} lists no objects"
    from mvtune.data.splits import SPLIT_FILES

    return (
        f"the {name} split is empty: {data.root / SPLIT_FILES[name]} lists no objects; re-split with "
        f"`mvtune dataset split {data.root}` (more objects, or a larger --val)"
    )


def check_config(cfg: TrainConfig) -> None:
    """Every problem that can be found without torch: missing paths, impossible combinations, view layout.

    Raises TrainConfigError listing all of them.
    """
    data = cfg.data
    problems = path_problems(lambda dotted: _dotted(cfg.model_dump(), dotted))
    problems += evaluation_problems(cfg.evaluation)
    if cfg.optim.name == "adamw8bit":
        problem = bitsandbytes_problem()
        if problem:
            problems.append(f"optim.name=adamw8bit: {problem}; use optim.name=adafactor instead")
    if problems:
        raise TrainConfigError("config problems:\n  - " + "\n  - ".join(problems))
    if data.kind == "images":
        check_image_data(cfg)
        return

    try:
        splits = split_lists(cfg)
    except (OSError, ValueError) as exc:
        raise TrainConfigError(
            f"cannot read the train/val scene lists: {exc}; run `mvtune dataset split {data.root}` or set "
            "data.scene_list"
        ) from None
    for name, entries in splits.items():
        if not entries:
            problems.append(empty_split_reason(cfg, name))
    if data.captions is None and not (data.root / "captions.json").exists():
        problems.append(f"no captions: {data.root / 'captions.json'} is missing and data.captions is not set")
    if cfg.prior.root is not None:
        try:
            if not prior_list(cfg):
                problems.append("the prior preservation scene list is empty")
        except (OSError, ValueError) as exc:
            problems.append(f"prior preservation scene list: {exc}")
    if problems:
        raise TrainConfigError("config problems:\n  - " + "\n  - ".join(problems))

    if data.image_names is not None:
        check_dataset_views(data.root, [e for es in splits.values() for e in es], cfg.model.variant, data.image_names)


def check_image_data(cfg: TrainConfig) -> None:
    """data.kind images: every image readable and captioned (and the class images when given, not generated)."""
    from mvtune.data.images import ImageDatasetError, scan_images

    sources = [("data.root", cfg.data.root)]
    if cfg.prior.root is not None and cfg.prior.generate is None:
        sources.append(("prior.root", cfg.prior.root))
    problems = []
    for key, source in sources:
        try:
            scan_images(source)
        except ImageDatasetError as exc:
            problems.append(f"{key}: {exc}")
    if problems:
        raise TrainConfigError("\n".join(problems))


def check_licences(cfg: TrainConfig) -> dict:
    """The training objects' licences (from the dataset manifests: the train split and, with prior preservation,
    the prior set) under data.licence_policy, as recorded in summary.json; raises TrainConfigError listing the
    refused objects and licences."""
    from mvtune.licences import check_training_licences, describe

    policy = cfg.data.licence_policy
    if getattr(cfg.data, "kind", "multiview") != "multiview":
        return {"policy": policy.model_dump(), "checked": False, "reason": "image folders carry no manifest"}
    records = _manifest_licences(cfg.data.root, split_lists(cfg)["train"])
    if cfg.prior.root is not None:  # regularisation objects are trained on too
        prior = _manifest_licences(cfg.prior.root, prior_list(cfg))
        records.update({f"prior:{object_id}": licence for object_id, licence in prior.items()})
    result = check_training_licences(records, policy.forbidden, policy.unknown, policy.territory)
    if result.refused:
        raise TrainConfigError(
            f"data.licence_policy refuses {len(result.refused)} training object(s) of {cfg.data.root}: "
            f"{describe(result.refused)}. Remove them from the train split, or set "
            "data.licence_policy.forbidden=warn (or .unknown=warn) to train anyway; the override is recorded in "
            "summary.json"
        )
    if result.warned:
        log.warning("licences: training on %d object(s) that data.licence_policy warns about: %s",
                    len(result.warned), describe(result.warned))
    return {"checked": True, **result.to_json()}


def _manifest_licences(root: Path, entries: list[str]) -> dict[str, str | None]:
    """Object id -> the licence its dataset's manifest records (None: unknown) for each scene entry."""
    from mvtune.data.validate import scene_id

    try:
        objects = json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8")).get("objects", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        objects = {}  # every object then has an unknown licence
    records = {}
    for object_id in map(scene_id, entries):
        entry = objects.get(object_id) or {}
        records[object_id] = entry.get("licence") or entry.get("license")
    return records


def check_dataset_views(root: Path, entries: list[str], variant: str, image_names: list[str]) -> None:
    """Refuse image_names whose poses in meta.json are not the variant's views (the users' 0004/0005 mistake)."""
    from mvtune.data.validate import check_view_layout, scene_dir

    bad: dict[str, list[str]] = {}
    for entry in entries:
        meta_path = scene_dir(Path(root), entry) / "meta.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            bad[entry] = [f"{meta_path} cannot be read: {exc}"]
            continue
        problems = check_view_layout(meta, variant, list(image_names))
        if problems:
            bad[entry] = problems
    if bad:
        first, problems = next(iter(bad.items()))
        others = len(bad) - 1
        raise TrainConfigError(
            f"data.image_names {json.dumps(list(image_names))} do not match the {variant} view layout in "
            f"{len(bad)} of {len(entries)} objects. Object {first}:\n  - " + "\n  - ".join(problems)
            + (f"\n(and {others} more objects)" if others else "")
            + "\nmvtune's loader picks views by pose, so data.image_names can also be removed (null)."
        )


def bitsandbytes_problem() -> str | None:
    """Why 8-bit AdamW cannot run here, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    import torch

    if not torch.cuda.is_available():
        return "bitsandbytes 8-bit optimizers need a CUDA GPU"
    return None
