"""A tiny random SDXL (UNet, VAE, both CLIP encoders and tokenizers) built offline, for tests and benchmarks.

Same component layout and call signatures as stabilityai/stable-diffusion-xl-base-1.0, ~10M parameters.
Saved with `build_tiny_sdxl(path)` it is a diffusers folder that loads with local_files_only=True.
`write_tiny_clip(path)` writes a tiny random CLIPModel folder (a stand-in scorer for the evaluation).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
)

from mvtune.models.configs import TINY_UNET_CONFIG

# The SDXL base scheduler config (the fields that matter for sampling).
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}

TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.13025,
}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level BPE alphabet: every byte maps to one printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tiny_clip_tokenizer(folder: str | os.PathLike, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the byte alphabet (plus end-of-word forms): any text tokenizes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, pad_token=pad_token, local_files_only=True)


def _text_config(vocab_size: int, hidden_size: int, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def build_tiny_sdxl(path: str | os.PathLike | None = None, seed: int = 0) -> dict:
    """Random tiny SDXL components (diffusers/transformers objects, fp32, eval mode) keyed like the pipeline's.

    With `path`, also writes them as a diffusers SDXL folder (model_index.json + subfolders).
    """
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tiny_clip_tokenizer(Path(tmp) / "tokenizer")
        tokenizer_2 = write_tiny_clip_tokenizer(Path(tmp) / "tokenizer_2", pad_token="!")
    vocab_size = len(tokenizer)
    # cross_attention_dim 32 = 16 + 16 (penultimate states of both encoders); pooled projection 32.
    components = {
        "unet": UNet2DConditionModel(**TINY_UNET_CONFIG),
        "vae": AutoencoderKL(**TINY_VAE_CONFIG),
        "text_encoder": CLIPTextModel(_text_config(vocab_size, 16, 16)),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config(vocab_size, 16, 32)),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
    }
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        components[name].eval()
    if path is not None:
        StableDiffusionXLPipeline(**components).save_pretrained(path)
    return components


#: Input size of the tiny CLIP's vision tower (4 x 4 patches of 8 px).
TINY_CLIP_IMAGE_SIZE = 32


def write_tiny_clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random ~40k-parameter CLIPModel with tokenizer and image processor config, saved as a transformers folder.

    Same files as openai/clip-vit-large-patch14 (config.json, weights, vocab.json/merges.txt,
    preprocessor_config.json), so `load_scorer` reads it like a real CLIP; its scores are random but fixed.
    """
    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as ImageProcessor

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = write_tiny_clip_tokenizer(path)
    text = _text_config(len(tokenizer), 32, 16)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TINY_CLIP_IMAGE_SIZE,
        patch_size=8,
        projection_dim=16,
    )
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    size = TINY_CLIP_IMAGE_SIZE
    ImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    return path
