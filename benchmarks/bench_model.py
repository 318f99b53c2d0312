"""Benchmark the MV-Adapter UNet against the plain diffusers UNet.

Default (CPU, seconds): the tiny SDXL-layout UNet, 6 views at 64 px, forward and forward+backward of the
adapted UNet (tg2mv processors + cond encoder) next to the unmodified UNet in the same process, ratio ours/base.

--full: SDXL shapes with random weights (meant for a GPU): peak memory and it/s of one adapter training step
(bf16 autocast over fp32 weights as in bf16-mixed training, AdamW on the _mv parameters + cond encoder), with
and without gradient checkpointing, and the UNet time of a CFG sampling run. `--full --config tiny --device cpu`
runs the same code path at toy size.

    OMP_NUM_THREADS=1 python benchmarks/bench_model.py
    python benchmarks/bench_model.py --full --device cuda --resolution 768 --steps 50
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

from mvtune.models import attach_mv_adapter, mv_parameters, sdxl_time_ids, shift_snr_scheduler
from mvtune.models.configs import SDXL_UNET_CONFIG, TINY_UNET_CONFIG
from mvtune.models.tiny import SDXL_SCHEDULER_CONFIG

CONFIGS = {"sdxl": SDXL_UNET_CONFIG, "tiny": TINY_UNET_CONFIG}


def unet_inputs(config: dict, batch: int, resolution: int, device, dtype=torch.float32) -> dict:
    pooled_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return {
        "sample": randn(batch, 4, resolution // 8, resolution // 8),
        "timestep": torch.full((batch,), 500, device=device),
        "encoder_hidden_states": randn(batch, 77, config["cross_attention_dim"]),
        "added_cond_kwargs": {
            "text_embeds": randn(batch, pooled_dim),
            "time_ids": sdxl_time_ids(resolution, resolution).to(device, dtype).repeat(batch, 1),
        },
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}


def bench_tiny(args) -> dict:
    """Adapted vs plain UNet, same weights and inputs; backward through all UNet weights on both sides.

    "ours" includes the cond encoder (it runs on every call); its forward is also timed on its own.
    """
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = UNet2DConditionModel(**TINY_UNET_CONFIG).to(device)
    ours = copy.deepcopy(base)
    cond_encoder = attach_mv_adapter(ours, variant="tg2mv", num_views=args.views)
    batch = args.views
    inputs = unet_inputs(TINY_UNET_CONFIG, batch, args.resolution, device)
    cond = torch.rand(batch, 6, args.resolution, args.resolution, device=device)
    mv_kwargs = {"num_views": args.views, "mv_scale": 1.0}

    def forward_ours():
        with torch.no_grad():
            ours(**inputs, down_intrablock_additional_residuals=cond_encoder(cond), cross_attention_kwargs=mv_kwargs)

    def forward_base():
        with torch.no_grad():
            base(**inputs)

    def forward_cond_encoder():
        with torch.no_grad():
            cond_encoder(cond)

    def backward_ours():
        out = ours(**inputs, down_intrablock_additional_residuals=cond_encoder(cond), cross_attention_kwargs=mv_kwargs)
        out.sample.square().mean().backward()
        ours.zero_grad(set_to_none=True)
        cond_encoder.zero_grad(set_to_none=True)

    def backward_base():
        base(**inputs).sample.square().mean().backward()
        base.zero_grad(set_to_none=True)

    # Interleave ours and base so that load from other processes hits both sides alike.
    benches = {"forward_ours": forward_ours, "forward_base": forward_base, "forward_cond_encoder": forward_cond_encoder,
               "fwd_bwd_ours": backward_ours, "fwd_bwd_base": backward_base}
    times = {name: [] for name in benches}
    for _ in range(args.repeats):
        for name, fn in benches.items():
            times[name] += timed(fn, device, repeats=1, warmup=args.warmup if not times[name] else 0)
    results = {name: summary(t) for name, t in times.items()}
    results["forward_ratio"] = results["forward_ours"]["median_s"] / results["forward_base"]["median_s"]
    results["fwd_bwd_ratio"] = results["fwd_bwd_ours"]["median_s"] / results["fwd_bwd_base"]["median_s"]
    results["params"] = {
        "base_unet": sum(p.numel() for p in base.parameters()),
        "mv": sum(p.numel() for p in mv_parameters(ours)),
        "cond_encoder": sum(p.numel() for p in cond_encoder.parameters()),
    }
    return results


def bench_full(args) -> dict:
    """One adapter training step (with/without gradient checkpointing) and a CFG sampling run at SDXL shapes."""
    device = torch.device(args.device)
    config = CONFIGS[args.config]
    results = {"config": args.config, "resolution": args.resolution, "views": args.views, "device": str(device)}
    autocast_dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**config)
        cond_encoder = attach_mv_adapter(unet, variant="tg2mv", num_views=args.views)
    unet.requires_grad_(False)
    trainable = mv_parameters(unet) + list(cond_encoder.parameters())
    for param in trainable:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=5e-5, weight_decay=0.01)
    inputs = unet_inputs(config, args.views, args.resolution, device)
    cond = torch.rand(args.views, 6, args.resolution, args.resolution, device=device)

    def train_step():
        with torch.autocast(device.type, dtype=autocast_dtype):
            out = unet(**inputs, down_intrablock_additional_residuals=cond_encoder(cond),
                       cross_attention_kwargs={"num_views": args.views}).sample
            loss = torch.nn.functional.mse_loss(out.float(), inputs["sample"].float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for checkpointing in (False, True):
        if checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        unet.train()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times = timed(train_step, device, args.repeats, args.warmup)
        entry = summary(times) | {"it_per_s": 1.0 / statistics.median(times)}
        if device.type == "cuda":
            entry["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        results[f"train_step_checkpointing_{checkpointing}"] = entry
    del optimizer
    unet.disable_gradient_checkpointing()

    # Sampling: weights in the autocast dtype, CFG batch 2 * views, ShiftSNR Euler; text encoding and VAE
    # decoding are not part of this number.
    unet.eval().to(autocast_dtype)
    cond_encoder.eval().to(autocast_dtype)
    scheduler = shift_snr_scheduler(EulerDiscreteScheduler, SDXL_SCHEDULER_CONFIG, shift_scale=8.0)
    cfg_inputs = unet_inputs(config, 2 * args.views, args.resolution, device, autocast_dtype)

    @torch.no_grad()
    def sample():
        scheduler.set_timesteps(args.steps, device=device)
        features = [torch.cat([f, f]) for f in cond_encoder(cond.to(autocast_dtype))]
        latents = cfg_inputs["sample"][: args.views] * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = unet(model_input, t, encoder_hidden_states=cfg_inputs["encoder_hidden_states"],
                         added_cond_kwargs=cfg_inputs["added_cond_kwargs"],
                         down_intrablock_additional_residuals=[f.clone() for f in features],
                         cross_attention_kwargs={"num_views": args.views, "mv_scale": 1.0}).sample
            uncond, text = noise.chunk(2)
            latents = scheduler.step(uncond + 7.0 * (text - uncond), t, latents).prev_sample.to(autocast_dtype)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = timed(sample, device, repeats=1, warmup=0)
    results["sampling"] = {"steps": args.steps, "seconds": times[0], "it_per_s": args.steps / times[0]}
    if device.type == "cuda":
        results["sampling"]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="SDXL-size training step + sampling benchmark")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="sdxl", help="UNet config for --full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16", help="--full autocast/sampling dtype")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 64, --full 768)")
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--steps", type=int, default=50, help="--full sampling steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed iterations (default 20, --full 5)")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    args.resolution = args.resolution or (768 if args.full else 64)
    args.repeats = args.repeats or (5 if args.full else 20)

    results = bench_full(args) if args.full else bench_tiny(args)
    results["torch_threads"] = torch.get_num_threads()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
