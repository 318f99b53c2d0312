"""Hunyuan3D-2.1 and Hunyuan3D-2 backends: prompt -> SDXL reference image -> background removal -> shape -> paint.

The orchestrator has already passed the prompt through the IP guard. Everything below ``load`` runs in a worker
process per GPU, because both packages put their folders on ``sys.path``, read config files relative to the
working directory and hold CUDA state. Weights are never downloaded: ``HF_HUB_OFFLINE=1`` is set and the local
folders are checked first (see docs/meshes.md for the install and download steps).

Entry points used (the packages' documented Python API):

- 2.0 (``pip install -e`` of Tencent-Hunyuan/Hunyuan3D-2): ``hy3dgen.rembg.BackgroundRemover``,
  ``hy3dgen.shapegen.Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(path, subfolder=...)`` called with
  ``image=`` -> list of trimesh meshes, ``hy3dgen.texgen.Hunyuan3DPaintPipeline.from_pretrained(path,
  subfolder=...)`` called as ``paint(mesh, image=image)`` -> textured trimesh.
- 2.1 (a checkout of Tencent-Hunyuan/Hunyuan3D-2.1 with ``hy3dshape/`` and ``hy3dpaint/`` on ``sys.path``):
  ``hy3dshape.rembg.BackgroundRemover``, ``hy3dshape.pipelines.Hunyuan3DDiTFlowMatchingPipeline``, and
  ``textureGenPipeline.Hunyuan3DPaintPipeline(Hunyuan3DPaintConfig(max_num_view, resolution))`` called as
  ``paint(mesh_path=, image_path=, output_mesh_path=..obj)``, which also writes the ``.glb`` beside the ``.obj``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mvtune.meshes.generators.base import MESH_FILE, GeneratorError

REFERENCE_IMAGE = "reference.png"


@dataclass(frozen=True)
class Variant:
    """What differs between Hunyuan3D-2 and 2.1: model id, weight folders, module names, install steps."""

    name: str
    model: str  # Hugging Face id; weights are read from <weights>/<model>/<subfolder>
    version: str
    weight_folders: tuple[str, ...]
    shape_subfolder: str
    paint_subfolder: str
    shape_module: str
    rembg_module: str
    paint_module: str
    install: str


_INSTALL_2 = (
    "install Hunyuan3D-2 on the GPU node: git clone https://github.com/Tencent-Hunyuan/Hunyuan3D-2 && cd "
    "Hunyuan3D-2 && pip install -r requirements.txt && pip install -e . && (cd hy3dgen/texgen/custom_rasterizer && "
    "python setup.py install) && (cd hy3dgen/texgen/differentiable_renderer && python setup.py install); then "
    "download the weights: huggingface-cli download tencent/Hunyuan3D-2 --local-dir WEIGHTS/tencent/Hunyuan3D-2 "
    "(see docs/meshes.md)"
)
_INSTALL_21 = (
    "install Hunyuan3D-2.1 on the GPU node: git clone https://github.com/Tencent-Hunyuan/Hunyuan3D-2.1 REPO && "
    "cd REPO && pip install -r requirements.txt && (cd hy3dpaint/custom_rasterizer && pip install -e .) && "
    "(cd hy3dpaint/DifferentiableRenderer && bash compile_mesh_painter.sh) && wget -P hy3dpaint/ckpt "
    "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth; pass --hunyuan-repo REPO; "
    "download the weights: huggingface-cli download tencent/Hunyuan3D-2.1 --local-dir WEIGHTS/tencent/Hunyuan3D-2.1 "
    "(see docs/meshes.md)"
)
VARIANTS = {
    "hunyuan3d-2": Variant(
        "hunyuan3d-2", "tencent/Hunyuan3D-2", "2.0",
        ("hunyuan3d-dit-v2-0", "hunyuan3d-paint-v2-0-turbo", "hunyuan3d-delight-v2-0"),
        "hunyuan3d-dit-v2-0", "hunyuan3d-paint-v2-0-turbo",
        "hy3dgen.shapegen", "hy3dgen.rembg", "hy3dgen.texgen", _INSTALL_2,
    ),
    "hunyuan3d-2.1": Variant(
        "hunyuan3d-2.1", "tencent/Hunyuan3D-2.1", "2.1",
        ("hunyuan3d-dit-v2-1", "hunyuan3d-paintpbr-v2-1"),
        "hunyuan3d-dit-v2-1", "hunyuan3d-paintpbr-v2-1",
        "hy3dshape.pipelines", "hy3dshape.rembg", "textureGenPipeline", _INSTALL_21,
    ),
}


class HunyuanOptions(BaseModel):
    """Settings of both Hunyuan backends (``--option key=value`` on the command line)."""

    model_config = ConfigDict(extra="forbid")

    base_model: Path = Field(description="Local diffusers SDXL folder that draws the reference image.")
    weights: Path | None = Field(None, description="Folder holding <model id>/<subfolder> weights "
                                                   "(default $HY3DGEN_MODELS or ~/.cache/hy3dgen).")
    repo: Path | None = Field(None, description="Hunyuan3D checkout (required for 2.1: hy3dshape/, hy3dpaint/).")
    image_prompt: str = "{prompt}, a single object, centred, full view, plain white background, soft studio light"
    negative_prompt: str = "cropped, multiple objects, cluttered background, text, watermark, blurry"
    image_steps: int = Field(30, ge=1)
    image_guidance: float = 7.0
    image_size: int = Field(1024, ge=64, multiple_of=8)
    shape_steps: int = Field(50, ge=1)
    shape_guidance: float = 5.0
    octree_resolution: int = Field(256, ge=16)
    paint_views: int = Field(6, ge=6, le=9, description="2.1 only: views the painter selects (6-9).")
    paint_resolution: int = Field(512, description="2.1 only: 512 or 768.")
    realesrgan: Path | None = Field(None, description="2.1 only: RealESRGAN_x4plus.pth "
                                                      "(default REPO/hy3dpaint/ckpt/RealESRGAN_x4plus.pth).")

    def weights_root(self) -> Path:
        return Path(self.weights or os.environ.get("HY3DGEN_MODELS", "~/.cache/hy3dgen")).expanduser()


class _Runner:
    def __init__(self, variant: Variant, options: HunyuanOptions, device: str):
        # Absolute paths first: 2.1 changes the working directory below.
        options = options.model_copy(update={
            "base_model": options.base_model.resolve(), "weights": options.weights_root().resolve(),
            "repo": options.repo.resolve() if options.repo else None,
            "realesrgan": _realesrgan(options).resolve() if variant.name == "hunyuan3d-2.1" else None,
        })
        self.variant, self.options, self.device = variant, options, device
        os.environ["HF_HUB_OFFLINE"] = "1"  # a missing file must fail here, never start a download
        os.environ["HY3DGEN_MODELS"] = str(options.weights_root())
        if variant.name == "hunyuan3d-2.1":
            repo = options.repo
            sys.path[:0] = [str(repo / "hy3dshape"), str(repo / "hy3dpaint"), str(repo)]
            os.chdir(repo)  # 2.1 reads its configs relative to the checkout
        elif options.repo is not None:
            sys.path.insert(0, str(options.repo.resolve()))
        try:  # Hunyuan's modules first: a missing install fails before torch and diffusers take seconds to load
            shape_api = importlib.import_module(variant.shape_module)
            rembg_api = importlib.import_module(variant.rembg_module)
            paint_api = importlib.import_module(variant.paint_module)
            import torch
            from diffusers import StableDiffusionXLPipeline
        except ImportError as exc:
            raise GeneratorError(f"{variant.name}: cannot import {exc.name or exc} ({exc}); {variant.install}") from None
        self.torch = torch
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.image_pipe = StableDiffusionXLPipeline.from_pretrained(
            options.base_model, torch_dtype=dtype, local_files_only=True
        ).to(device)
        self.image_pipe.set_progress_bar_config(disable=True)
        for tokenizer, encoder in ((self.image_pipe.tokenizer, self.image_pipe.text_encoder),
                                   (self.image_pipe.tokenizer_2, self.image_pipe.text_encoder_2)):
            # A tokenizer saved without its limit reports a huge model_max_length; the encoder's is the real one.
            tokenizer.model_max_length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
        self.rembg = rembg_api.BackgroundRemover()
        local = str(options.weights_root() / variant.model)
        self.shape = shape_api.Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(local, subfolder=variant.shape_subfolder)
        if variant.name == "hunyuan3d-2.1":
            config = paint_api.Hunyuan3DPaintConfig(options.paint_views, options.paint_resolution)
            config.multiview_pretrained_path = local
            config.multiview_cfg_path = str(repo / "hy3dpaint" / "cfgs" / "hunyuan-paint-pbr.yaml")
            config.realesrgan_ckpt_path = str(_realesrgan(options))
            self.paint = paint_api.Hunyuan3DPaintPipeline(config)
        else:
            self.paint = paint_api.Hunyuan3DPaintPipeline.from_pretrained(local, subfolder=variant.paint_subfolder)

    def generate(self, row: dict, seed: int, out_dir: Path) -> dict:
        torch, options = self.torch, self.options
        generator = torch.Generator(device=self.device).manual_seed(seed)
        image = self.image_pipe(
            prompt=options.image_prompt.format(prompt=row["prompt"]), negative_prompt=options.negative_prompt,
            num_inference_steps=options.image_steps, guidance_scale=options.image_guidance,
            height=options.image_size, width=options.image_size, generator=generator,
        ).images[0]
        image.save(out_dir / REFERENCE_IMAGE)
        cutout = self.rembg(image.convert("RGB"))
        torch.manual_seed(seed)
        mesh = self.shape(
            image=cutout, num_inference_steps=options.shape_steps, guidance_scale=options.shape_guidance,
            octree_resolution=options.octree_resolution, generator=torch.Generator(device=self.device).manual_seed(seed),
        )[0]
        if self.variant.name == "hunyuan3d-2.1":
            shape_path = out_dir / "shape.obj"
            mesh.export(shape_path)
            textured_obj = out_dir / "textured.obj"
            self.paint(mesh_path=str(shape_path), image_path=cutout, output_mesh_path=str(textured_obj))
            produced = textured_obj.with_suffix(".glb")
            if not produced.is_file():
                raise GeneratorError(f"the 2.1 painter wrote no {produced.name} next to {textured_obj.name}")
            shutil.move(produced, out_dir / MESH_FILE)
        else:
            self.paint(mesh, image=cutout).export(out_dir / MESH_FILE)
        return {
            "caption": row["prompt"],
            "files": [REFERENCE_IMAGE],
            "provenance": {
                "image_model": str(options.base_model), "image_prompt": options.image_prompt.format(prompt=row["prompt"]),
                "steps": {"image": options.image_steps, "shape": options.shape_steps},
                "octree_resolution": options.octree_resolution,
            },
        }


def _realesrgan(options: HunyuanOptions) -> Path:
    return options.realesrgan or (options.repo / "hy3dpaint" / "ckpt" / "RealESRGAN_x4plus.pth")


class HunyuanBackend:
    licence = "tencent-hunyuan-community"
    Options = HunyuanOptions

    def __init__(self, variant: Variant):
        self.variant = variant
        self.name = variant.name

    def describe(self, options: HunyuanOptions) -> dict:
        return {"model": self.variant.model, "version": self.variant.version}

    def preflight(self, options: HunyuanOptions) -> None:
        """Every local folder the run needs, all listed at once, before a GPU worker starts."""
        variant, problems = self.variant, []
        if not (options.base_model / "model_index.json").is_file():
            problems.append(f"--base-model {options.base_model} is not a diffusers SDXL folder (no model_index.json)")
        root = options.weights_root() / variant.model
        missing = [name for name in variant.weight_folders if not (root / name).is_dir()]
        if missing:
            problems.append(f"weights missing under {root}: {', '.join(missing)} (download: huggingface-cli download "
                            f"{variant.model} --local-dir {root})")
        if variant.name == "hunyuan3d-2.1":
            if options.repo is None or not (options.repo / "hy3dpaint" / "textureGenPipeline.py").is_file():
                problems.append(f"--hunyuan-repo must name a Hunyuan3D-2.1 checkout (got {options.repo}); "
                                f"{variant.install}")
            elif not _realesrgan(options).is_file():
                problems.append(f"RealESRGAN weights not found at {_realesrgan(options)}; {variant.install}")
        if problems:
            raise GeneratorError(f"{variant.name}: " + "; ".join(problems))

    def load(self, options: HunyuanOptions, device: str) -> _Runner:
        return _Runner(self.variant, options, device)


HUNYUAN3D_2 = HunyuanBackend(VARIANTS["hunyuan3d-2"])
HUNYUAN3D_2_1 = HunyuanBackend(VARIANTS["hunyuan3d-2.1"])
