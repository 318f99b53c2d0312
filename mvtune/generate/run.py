"""`mvtune generate`: a mesh and a prompt -> the six tg2mv views, a grid, the condition maps and a JSON record.

Run folder (every file written atomically; `generate.json` last, so its presence means the folder is complete):

- ``view_0000.png`` ... ``view_0005.png``: front, right, back, left, top, bottom (`cameras.variant_cameras`);
- ``grid.png``: the six views side by side; ``conditions.png``: position maps over normal maps (preview);
- ``conditions.npz``: the exact float32 condition maps (6, 6, H, W) and masks the model saw;
- ``generate.json``: the resolved config, the mesh (path, sha256, canonical transform), the models, the seed,
  every sampling setting, the camera of each view and timings. `mvtune texture` checks views against it.

Batch mode reads a CSV or JSONL list of (mesh, prompt[, seed][, id]) rows, loads the models once, writes one
run folder per row, skips rows whose record already exists with the same settings (so a rerun resumes), records
failures in ``errors.jsonl`` and keeps going.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mvtune import __version__
from mvtune.generate.conditions import ConditionMaps, condition_maps, load_normalized
from mvtune.meshes import Mesh
from mvtune.models import DEFAULT_NEGATIVE_PROMPT
from mvtune.storage import FolderLockedError, atomic_write, folder_lock, sha256_file, write_json

log = logging.getLogger(__name__)

VARIANT = "tg2mv"
RECORD = "generate.json"
ERRORS = "errors.jsonl"
BATCH_SUMMARY = "batch_summary.json"


class GenerateError(Exception):
    """Generation cannot run: bad mesh, models that do not load, a LoRA we cannot apply, unwritable output."""


class LoraSpec(BaseModel):
    """One SDXL LoRA file (diffusers or kohya keys; UNet and/or both text encoders) and its strength."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    scale: float = 1.0


class ModelConfig(BaseModel):
    """Which weights to sample with; shared by every row of a batch (and by evaluation model entries)."""

    model_config = ConfigDict(extra="forbid")

    base_model: Path  # local diffusers SDXL folder
    adapter: Path | None = None  # custom_adapter.safetensors (MV layers + cond encoder)
    loras: list[LoraSpec] = []  # applied under the adapter, in order (their deltas add up)
    vae: Path | None = None  # optional replacement VAE folder (e.g. sdxl-vae-fp16-fix for fp16)
    scheduler: Literal["euler", "ddpm"] = "euler"
    shift_scale: float = 8.0
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class SamplingConfig(BaseModel):
    """How to sample; defaults are MV-Adapter's tg2mv inference script (spec mvadapter-model §7)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(50, ge=1, le=1000)
    guidance: float = Field(7.0, ge=0.0)
    negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT
    resolution: int = Field(768, ge=32, le=2048)
    mv_scale: float = 1.0
    control_scale: float = 1.0
    up: Literal["y", "z"] = "y"  # the mesh file's up axis, as for `mvtune render`

    @field_validator("resolution")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"resolution must be a multiple of 32 (SDXL latents, square views), got {value}")
        return value


class GenerateConfig(BaseModel):
    """One `mvtune generate` run."""

    model_config = ConfigDict(extra="forbid")

    mesh: Path
    prompt: str
    out_dir: Path
    seed: int = 0
    models: ModelConfig
    sampling: SamplingConfig = SamplingConfig()


class BatchConfig(BaseModel):
    """`mvtune generate --batch LIST`: rows of (mesh, prompt[, seed][, id]); `seed` is the default per row."""

    model_config = ConfigDict(extra="forbid")

    items: Path  # .csv with a header row, or .jsonl
    out_dir: Path
    seed: int = 0
    models: ModelConfig
    sampling: SamplingConfig = SamplingConfig()


def load_pipeline(models: ModelConfig):
    """The MV-Adapter pipeline for these weights, LoRAs applied (torch and diffusers load here, lazily)."""
    import torch

    from mvtune.models import MVAdapterPipeline

    paths = [("base_model", models.base_model), ("adapter", models.adapter), ("vae", models.vae)]
    paths += [(f"loras[{i}].path", spec.path) for i, spec in enumerate(models.loras)]
    for name, path in paths:
        if path is not None and not Path(path).exists():
            raise GenerateError(f"{name} {path} does not exist")
    try:
        pipe = MVAdapterPipeline.from_pretrained(
            models.base_model,
            adapter=models.adapter,
            variant=VARIANT,
            scheduler=models.scheduler,
            shift_scale=models.shift_scale,
            vae=models.vae,
            device=models.device,
            torch_dtype=getattr(torch, models.dtype),
        )
    except Exception as exc:
        raise GenerateError(f"cannot load the models from {models.base_model}: {type(exc).__name__}: {exc}") from exc
    for spec in models.loras:
        apply_lora(pipe, spec.path, spec.scale)
    return pipe


#: The pipeline parts an SDXL LoRA file may hold weights for (its key prefixes).
LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def apply_lora(pipe, path: Path, scale: float = 1.0) -> list[str]:
    """Fuse an SDXL LoRA (diffusers or kohya keys) into the pipeline's UNet and text encoders; returns the
    components it changed.

    Fused rather than kept as adapters: the MV attention processors call the same `to_q`/`to_k`/... modules,
    so fusing changes no code path and costs nothing per step, and several LoRAs fused one after the other add
    up their scaled deltas. Weights that would reach the multi-view layers are refused: under the adapter the
    `_mv` layers and the cond encoder stay exactly the adapter file's.
    """
    from diffusers import StableDiffusionXLPipeline

    try:
        state_dict, alphas, metadata = StableDiffusionXLPipeline.lora_state_dict(
            str(path), unet_config=pipe.unet.config, return_lora_metadata=True
        )
    except Exception as exc:
        raise GenerateError(f"{path}: not a readable SDXL LoRA file ({type(exc).__name__}: {exc})") from exc
    if not state_dict:
        raise GenerateError(f"{path}: the file holds no LoRA weights")
    other = sorted({k.split(".")[0] for k in state_dict} - set(LORA_COMPONENTS))
    if other:
        raise GenerateError(f"{path}: LoRA weights for {other} are not SDXL parts; expected {list(LORA_COMPONENTS)}")
    multiview = sorted(k for k in state_dict if "_mv" in k)
    if multiview:
        raise GenerateError(f"{path}: LoRA weights reach the multi-view layers ({multiview[:3]}); only base layers may change")
    present = [c for c in LORA_COMPONENTS if any(k.startswith(f"{c}.") for k in state_dict)]
    try:
        if "unet" in present:
            pipe.unet.load_lora_adapter(state_dict, network_alphas=alphas, metadata=metadata, prefix="unet",
                                        adapter_name="mvtune_lora")
            pipe.unet.fuse_lora(lora_scale=scale)
            pipe.unet.unload_lora()
        for component in present:
            if component != "unet":
                _fuse_text_encoder_lora(getattr(pipe, component), state_dict, alphas, metadata, component, scale)
    except Exception as exc:
        raise GenerateError(f"{path}: cannot apply the LoRA to {present} ({type(exc).__name__}: {exc})") from exc
    return present


def _fuse_text_encoder_lora(encoder, state_dict: dict, alphas: dict | None, metadata: dict | None, prefix: str,
                            scale: float) -> None:
    """diffusers' text-encoder LoRA loading, with peft injecting the layers directly: transformers' own PEFT
    integration (`load_adapter`) refuses the peft release this project pins."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, recurse_remove_peft_layers
    from diffusers.utils.peft_utils import _create_lora_config
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    state = {k.removeprefix(f"{prefix}."): v for k, v in state_dict.items() if k.startswith(f"{prefix}.")}
    state = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state))
    if not hasattr(encoder, "text_model"):  # transformers >= 5 flattens CLIPTextModel; older files name text_model
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    if metadata:
        metadata = {k.removeprefix(f"{prefix}."): v for k, v in metadata.items() if k.startswith(f"{prefix}.")} or None
    if alphas:
        alphas = {k.removeprefix(f"{prefix}."): v for k, v in alphas.items() if k.split(".")[0] == prefix} or None
    ranks = {k: v.shape[1] for k, v in state.items() if k.endswith("lora_B.weight")}
    config = _create_lora_config(state, alphas, metadata, ranks, is_unet=False)
    inject_adapter_in_model(config, encoder, adapter_name="mvtune_lora")
    result = set_peft_model_state_dict(encoder, state, adapter_name="mvtune_lora")
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"{prefix}: LoRA keys match no layer ({unexpected[:3]})")
    for module in encoder.modules():
        if isinstance(module, BaseTunerLayer):
            if scale != 1.0:
                module.scale_layer(scale)
            module.merge()
    recurse_remove_peft_layers(encoder)  # keeps the merged base weights, drops the LoRA modules
    if getattr(encoder, "peft_config", None) is not None:
        del encoder.peft_config


def grid_image(images: list[np.ndarray]) -> Image.Image:
    """(H, W, C) uint8 images side by side."""
    return Image.fromarray(np.concatenate(images, axis=1))


def _save_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _save_npz(path: Path, **arrays) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def _to_uint8_row(maps: np.ndarray) -> np.ndarray:
    """(V, 3, H, W) in [0, 1] -> one (H, V*W, 3) uint8 strip."""
    return np.concatenate([(m.transpose(1, 2, 0) * 255.0).round().astype(np.uint8) for m in maps], axis=1)


def _condition_preview(cond: ConditionMaps) -> Image.Image:
    return Image.fromarray(np.concatenate([_to_uint8_row(cond.position), _to_uint8_row(cond.normal)]))


def _settings(cfg: GenerateConfig) -> dict:
    """What decides the output bytes: a batch row is done only if its record has the same settings."""
    return {
        "mesh": str(cfg.mesh),
        "prompt": cfg.prompt,
        "seed": cfg.seed,
        "models": cfg.models.model_dump(mode="json"),
        "sampling": cfg.sampling.model_dump(mode="json"),
        "mvtune": __version__,
    }


def generate(cfg: GenerateConfig, pipeline=None, renderer=None) -> dict:
    """Run one generation into `cfg.out_dir` and return its record (also written to generate.json).

    `pipeline` (from `load_pipeline(cfg.models)`) and `renderer` (a `Renderer` at the sampling resolution) can
    be passed in to reuse them across calls; the record always names `cfg.models`.
    """
    import torch

    from mvtune.meshes import MeshError
    from mvtune.render import RenderError

    timings: dict[str, float] = {}
    start = time.perf_counter()
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenerateError(f"cannot create output folder {out}: {exc}") from exc
    if not os.access(out, os.W_OK):
        raise GenerateError(f"output folder {out} is not writable")
    try:
        mesh = load_normalized(cfg.mesh, up=cfg.sampling.up)
        if mesh.num_faces == 0:
            raise GenerateError(f"{cfg.mesh}: mesh has no faces")
        cond = condition_maps(mesh, cfg.sampling.resolution, VARIANT, renderer)
    except MeshError as exc:  # the loader's messages name the file already
        raise GenerateError(str(exc)) from exc
    except RenderError as exc:
        raise GenerateError(f"{cfg.mesh}: {exc}") from exc
    timings["conditions"] = time.perf_counter() - start

    pipe = pipeline if pipeline is not None else load_pipeline(cfg.models)
    timings["load_models"] = time.perf_counter() - start - timings["conditions"]
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    sampled = time.perf_counter()
    images = pipe(
        cfg.prompt,
        torch.from_numpy(cond.maps),
        num_inference_steps=cfg.sampling.steps,
        guidance_scale=cfg.sampling.guidance,
        negative_prompt=cfg.sampling.negative_prompt,
        mv_scale=cfg.sampling.mv_scale,
        control_conditioning_scale=cfg.sampling.control_scale,
        generator=generator,
        output_type="np",
    )
    timings["sample"] = time.perf_counter() - sampled
    views8 = [(im * 255.0).round().astype(np.uint8) for im in images]

    _save_png(out / "conditions.png", _condition_preview(cond))
    _save_npz(out / "conditions.npz", maps=cond.maps, mask=cond.mask)
    timings["total"] = time.perf_counter() - start
    extra = {
        "config": cfg.model_dump(mode="json"),
        "settings": _settings(cfg),
        "prompt": cfg.prompt,
        "seed": cfg.seed,
        "models": {
            "base_model": str(cfg.models.base_model),
            "adapter": None if cfg.models.adapter is None else str(cfg.models.adapter),
            "loras": [
                {"path": str(spec.path), "scale": spec.scale, "sha256": sha256_file(Path(spec.path))}
                for spec in cfg.models.loras
            ],
            "scheduler": type(pipe.scheduler).__name__,
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "device": str(pipe.device),
        },
        "files": {"grid": "grid.png", "conditions": "conditions.npz", "conditions_preview": "conditions.png"},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    return write_views(out, cfg.mesh, views8, up=cfg.sampling.up, extra=extra, mesh=mesh)


def write_views(
    out_dir: Path,
    mesh_path: Path,
    images: list[np.ndarray],
    up: str = "y",
    extra: dict | None = None,
    mesh: Mesh | None = None,
) -> dict:
    """Write tg2mv view images of a mesh file as a run folder `mvtune texture` accepts; returns the record.

    `generate` uses it for sampled views; it also turns views made elsewhere (e.g. albedo renders) into
    texture input. `extra` fields are merged into the record, which is written last. `mesh`: the file already
    normalised with `up`, to skip loading it again.
    """
    from mvtune.cameras import variant_cameras, variant_views

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = variant_cameras(VARIANT)
    if len(images) != len(views):
        raise GenerateError(f"{VARIANT} needs {len(views)} views, got {len(images)}")
    names = [f"view_{i:04d}.png" for i in range(len(images))]
    for name, image in zip(names, images):
        _save_png(out / name, Image.fromarray(image))
    _save_png(out / "grid.png", grid_image(list(images)))
    mesh = mesh if mesh is not None else load_normalized(mesh_path, up=up)
    record = {
        "mvtune": __version__,
        "variant": VARIANT,
        "resolution": int(images[0].shape[0]),
        "mesh": {
            "path": str(mesh_path),
            "sha256": sha256_file(Path(mesh_path)),
            "up": up,
            "num_faces": mesh.num_faces,
            "to_frame": np.asarray(mesh.to_frame).tolist(),
        },
        "views": [
            {
                "file": name,
                "name": role,
                "azimuth": view.azimuth,
                "elevation": view.elevation,
                "projection": view.projection,
                "ortho_scale": view.ortho_scale,
                "c2w": np.asarray(view.c2w).tolist(),
            }
            for name, role, view in zip(names, variant_views(VARIANT).names, views)
        ],
        **(extra or {}),
    }
    write_json(out / RECORD, record)
    return record


def read_items(path: Path) -> list[dict]:
    """Rows of a CSV (header: mesh,prompt[,seed][,id]) or JSONL file; mesh paths are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"batch list {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise GenerateError(f"{path}:{n}: not valid JSON ({exc})") from None
    elif path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        raise GenerateError(f"batch list {path}: expected a .csv or .jsonl file")
    items = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("mesh") or row.get("prompt") in (None, ""):
            raise GenerateError(f"{path}: row {n} needs 'mesh' and 'prompt', got {row!r}")
        mesh = Path(row["mesh"])
        items.append({**row, "mesh": mesh if mesh.is_absolute() else path.parent / mesh})
    if not items:
        raise GenerateError(f"batch list {path} has no rows")
    return items


def item_id(item: dict) -> str:
    """The row's `id`, else the mesh stem plus a short hash of (mesh, prompt, seed): stable across reruns."""
    if item.get("id"):
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(item["id"]))
    key = json.dumps([str(item["mesh"]), item["prompt"], item.get("seed")])
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(item["mesh"]).stem).strip("_") or "mesh"
    return f"{stem}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _is_done(out: Path, settings: dict, mesh: Path) -> bool:
    """Same settings and the same mesh bytes: a mesh rewritten in place must be generated again."""
    try:
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
        return record["settings"] == settings and record["mesh"]["sha256"] == sha256_file(Path(mesh))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def generate_batch(cfg: BatchConfig, pipeline=None) -> dict:
    """Generate every row into `out_dir/<id>/`; returns (and writes) the batch summary. One batch per output
    folder at a time: a second fails at once naming the first (their rows and summaries would mix)."""
    read_items(cfg.items)  # a bad list is refused before the output folder exists
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock(cfg.out_dir, f"mvtune generate --batch {cfg.items}"))
        except FolderLockedError as exc:
            raise GenerateError(str(exc)) from None
        except OSError as exc:
            raise GenerateError(f"cannot create output folder {cfg.out_dir}: {exc}") from exc
        return _generate_batch(cfg, pipeline)


def _generate_batch(cfg: BatchConfig, pipeline=None) -> dict:
    from mvtune.render import Renderer

    start = time.perf_counter()
    items = read_items(cfg.items)
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenerateError(f"cannot create output folder {out}: {exc}") from exc
    ids = [item_id(item) for item in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise GenerateError(f"{cfg.items}: duplicate row ids {duplicates}; give each row a distinct 'id'")
    runs = [
        GenerateConfig(
            mesh=item["mesh"],
            prompt=str(item["prompt"]),
            out_dir=out / object_id,
            seed=int(item["seed"]) if item.get("seed") not in (None, "") else cfg.seed,
            models=cfg.models,
            sampling=cfg.sampling,
        )
        for item, object_id in zip(items, ids)
    ]
    todo = [
        (item, object_id, run)
        for item, object_id, run in zip(items, ids, runs)
        if not _is_done(run.out_dir, _settings(run), run.mesh)
    ]
    summary = {"total": len(items), "generated": 0, "skipped": len(items) - len(todo), "failed": 0, "errors": []}
    if todo and pipeline is None:
        pipeline = load_pipeline(cfg.models)  # a model that does not load fails the whole batch, up front
    renderer = Renderer(cfg.sampling.resolution, lighting="albedo", msaa=0) if todo else None
    try:
        for item, object_id, run in todo:
            # Each row is made in a private folder renamed into place: a killed batch never leaves a row folder
            # with some views of a new run beside the record of an old one.
            partial = out / f".{object_id}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            try:
                generate(run.model_copy(update={"out_dir": partial}), pipeline, renderer)
                shutil.rmtree(run.out_dir, ignore_errors=True)
                os.replace(partial, run.out_dir)
                summary["generated"] += 1
            except Exception as exc:  # one bad mesh must not stop the batch
                log.warning("%s failed: %s", object_id, exc)
                _failed(summary, object_id, item, exc)
                shutil.rmtree(partial, ignore_errors=True)  # no folder that looks like a result
    finally:
        if renderer is not None:
            renderer.release()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    lines = "".join(json.dumps(e) + "\n" for e in summary["errors"])
    atomic_write(out / ERRORS, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    write_json(out / BATCH_SUMMARY, {"config": cfg.model_dump(mode="json"), **summary})
    return summary


def _failed(summary: dict, object_id: str, item: dict, exc: Exception) -> None:
    summary["failed"] += 1
    summary["errors"].append(
        {
            "id": object_id,
            "mesh": str(item["mesh"]),
            "prompt": str(item["prompt"]),
            "error": f"{type(exc).__name__}: {exc}",
        }
    )
