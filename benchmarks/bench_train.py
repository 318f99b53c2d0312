"""Per-step time and peak memory of one MV-Adapter training step for each memory/speed option.

Each option runs in its own subprocess (peak RSS is per process): the real MVAdapterSystem objective
(VAE encode or cached posteriors, text embeddings cached or re-encoded, cond encoder + adapted UNet forward and
backward, grad clipping, optimizer step), on a batch of one object (6 views) of the procedural ducks rendered at
the benchmark resolution. Default: the tiny random SDXL on CPU at 64 px. `--full`: SDXL shapes (UNet, VAE, both
CLIP encoders) with random weights, meant for a GPU (bf16 autocast over fp32 trainable weights, frozen parts fp16).

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py
    python benchmarks/bench_train.py --full --device cuda --resolution 768
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

OPTIONS = {
    "baseline": {},
    "no_text_cache": {},
    "cached_latents": {"data": {"cache_latents": True}},
    "gradient_checkpointing": {"model": {"gradient_checkpointing": True}},
    "adafactor": {"optim": {"name": "adafactor"}},
    "adamw8bit": {"optim": {"name": "adamw8bit"}},
    "ema": {"ema": {"enabled": True}},
    "adapter+lora": {"strategy": "adapter+lora"},
}


def full_components(device):
    """SDXL-size components with random weights (no download)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from mvtune.models.configs import SDXL_UNET_CONFIG
    from mvtune.models.tiny import SDXL_SCHEDULER_CONFIG, write_tiny_clip_tokenizer

    def clip(hidden, layers, heads, projection):
        return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, max_position_embeddings=77, projection_dim=projection,
                              hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, torch.device(device):
        components = {
            "unet": UNet2DConditionModel(**SDXL_UNET_CONFIG),
            "vae": AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                                 down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                 sample_size=1024, scaling_factor=0.13025),
            "text_encoder": CLIPTextModel(clip(768, 12, 12, 768)),
            "text_encoder_2": CLIPTextModelWithProjection(clip(1280, 32, 20, 1280)),
            "tokenizer": write_tiny_clip_tokenizer(Path(tmp) / "t1"),
            "tokenizer_2": write_tiny_clip_tokenizer(Path(tmp) / "t2", pad_token="!"),
            "scheduler": EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        }
    return components


def step_result(option: str, times: list[float], trainable, device) -> dict:
    """One option's line: step times, peak host (and CUDA) memory, trainable parameters."""
    import torch

    result = {
        "option": option,
        "step_s_median": round(statistics.median(times), 4),
        "step_s_min": round(min(times), 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "trainable_params_m": round(sum(p.numel() for p in trainable) / 1e6, 3),
    }
    if device.type == "cuda":
        result["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def run_option(args) -> dict:
    import torch

    from mvtune.train.config import load_config
    from mvtune.train.data import TrainDataModule, collate_train
    from mvtune.train.latents import LatentCache
    from mvtune.train.system import MVAdapterSystem, frozen_dtype, step_generator

    device = torch.device(args.device)
    option = OPTIONS[args.option]
    if args.option == "adamw8bit":
        from mvtune.train.config import bitsandbytes_problem

        problem = bitsandbytes_problem()
        if problem:
            return {"option": args.option, "skipped": problem}
    base = {"data": {"root": args.dataset, "height": args.resolution, "width": args.resolution, "num_workers": 0},
            "model": {"base": "tiny"}, "optim": {"warmup_steps": 0}, "trainer": {"precision": "32-true"}}
    for key, value in option.items():
        base[key] = base.get(key, {}) | value if isinstance(value, dict) else value
    cfg = load_config(None, base=base)
    components = full_components(device) if args.full else None
    system = MVAdapterSystem(cfg, components).to(device)
    dtype = frozen_dtype("auto", device)
    for module in system.frozen.values():
        module.to(device, dtype)
    dm = TrainDataModule(cfg)
    batch = collate_train([dm.train_set[0]])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if cfg.data.cache_latents:
        system.latent_caches[False] = LatentCache(dm.train_set, system.vae_id, dtype)
        system.latent_caches[False].build(system.frozen["vae"], cfg.objective.vae_max_slice)
    if system.ema is not None:
        system.ema.to(device)
    optimizer = system.configure_optimizers()["optimizer"]
    trainable = [p for p in system.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        if args.option == "no_text_cache":
            system._text_cache.clear()
        sync()
        start = time.perf_counter()
        with autocast:
            loss, _ = system.diffusion_loss(batch, step_generator(device, 0, step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if system.ema is not None:
            system.ema.step(trainable)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return step_result(args.option, times, trainable, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="SDXL shapes with random weights (GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 64, --full 768)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20, --full 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--options", nargs="*", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--option", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.resolution = args.resolution or (768 if args.full else 64)
    args.steps = args.steps or (5 if args.full else 20)
    if args.option:
        print(json.dumps(run_option(args)))
        return

    from mvtune.data.splits import split_dataset
    from mvtune.meshes import write_sample_meshes
    from mvtune.render.dataset import RenderConfig, render_dataset

    with tempfile.TemporaryDirectory() as tmp:
        write_sample_meshes(Path(tmp) / "meshes")
        render_dataset(RenderConfig(input=Path(tmp) / "meshes", out_dir=Path(tmp) / "ds", resolution=args.resolution))
        split_dataset(Path(tmp) / "ds", val=0.2, test=0.2)
        results = []
        for option in args.options:
            cmd = [sys.executable, __file__, "--option", option, "--dataset", str(Path(tmp) / "ds"),
                   "--device", args.device, "--resolution", str(args.resolution), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)] + (["--full"] if args.full else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                results.append({"option": option, "error": done.stderr.strip().splitlines()[-1]})
            else:
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"device": args.device, "full": args.full, "resolution": args.resolution, "results": results}, indent=1))


if __name__ == "__main__":
    main()
