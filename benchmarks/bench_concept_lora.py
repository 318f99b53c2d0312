"""Per-step time and peak memory of one concept-LoRA training step (strategy concept-lora), against the
MV-Adapter adapter step (bench_train.py's `baseline`: one object, 6 views) at the same resolution.

Each option runs in its own subprocess (peak RSS is per process): the real ConceptLoraSystem objective (VAE
encode, text embeddings, plain SDXL UNet + LoRA forward and backward, grad clipping, AdamW step) on a batch of
one image. Default: the tiny random SDXL on CPU at 64 px. GPU protocol (`--full --device cuda`): SDXL shapes
with random weights (bench_train.full_components), 1024 px, bf16 autocast over fp32 LoRA weights, frozen parts
fp16; options rank 16 and rank 64, each with and without gradient checkpointing; reports the median step time
and `torch.cuda.max_memory_allocated`.

    OMP_NUM_THREADS=1 python benchmarks/bench_concept_lora.py
    python benchmarks/bench_concept_lora.py --full --device cuda        # resolution 1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from bench_train import step_result  # the same result line as the multi-view benchmark

OPTIONS = {
    "rank16": {"lora": {"rank": 16, "alpha": 16}},
    "rank16_checkpointing": {"lora": {"rank": 16, "alpha": 16}, "model": {"gradient_checkpointing": True}},
    "rank64": {"lora": {"rank": 64, "alpha": 64}},
    "rank64_checkpointing": {"lora": {"rank": 64, "alpha": 64}, "model": {"gradient_checkpointing": True}},
    "rank16_text_encoders": {"lora": {"rank": 16, "alpha": 16}, "concept": {"train_text_encoders": True}},
}
REFERENCE = "MV-Adapter adapter step (bench_train.py baseline, 1 object x 6 views)"


def run_option(args) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import full_components

    from mvtune.data.images import ImageDataset, collate_images
    from mvtune.train.concept_lora import ConceptLoraSystem
    from mvtune.train.config import load_config
    from mvtune.train.system import frozen_dtype, step_generator

    device = torch.device(args.device)
    base = {"strategy": "concept-lora", "model": {"base": "tiny"}, "trainer": {"precision": "32-true", "max_steps": 1},
            "data": {"kind": "images", "root": args.dataset, "height": args.resolution, "width": args.resolution,
                     "num_workers": 0}}
    for key, value in OPTIONS[args.option].items():
        base[key] = base.get(key, {}) | value
    cfg = load_config(None, base=base)
    system = ConceptLoraSystem(cfg, full_components(device) if args.full else None).to(device)
    dtype = frozen_dtype("auto", device)
    for module in system.frozen.values():
        module.to(device, dtype)
    dataset = ImageDataset(Path(args.dataset), resolution=args.resolution, buckets=False)
    batch = collate_images([dataset[0]])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
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
        sync()
        start = time.perf_counter()
        with autocast:
            loss, _ = system.diffusion_loss(batch, step_generator(device, 0, step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return step_result(args.option, times, trainable, device)


def _subprocess_json(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_step(args, tmp: Path) -> dict:
    """bench_train.py's baseline option on the rendered procedural ducks (needs the GL renderer)."""
    try:
        from mvtune.data.splits import split_dataset
        from mvtune.meshes import write_sample_meshes
        from mvtune.render.dataset import RenderConfig, render_dataset

        write_sample_meshes(tmp / "meshes")
        render_dataset(RenderConfig(input=tmp / "meshes", out_dir=tmp / "ducks", resolution=args.resolution))
        split_dataset(tmp / "ducks", val=0.2, test=0.2)
    except Exception as exc:  # no GL context: the ratio is left out, the concept steps still run
        return {"error": f"cannot render the reference dataset: {type(exc).__name__}: {exc}"}
    cmd = [sys.executable, str(Path(__file__).parent / "bench_train.py"), "--option", "baseline", "--dataset",
           str(tmp / "ducks"), "--device", args.device, "--resolution", str(args.resolution), "--steps", str(args.steps),
           "--warmup", str(args.warmup)] + (["--full"] if args.full else [])
    return _subprocess_json(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="SDXL shapes with random weights (GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 64, --full 1024)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20, --full 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--options", nargs="*", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--no-reference", action="store_true", help="skip the MV-Adapter reference step")
    parser.add_argument("--option", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.resolution = args.resolution or (1024 if args.full else 64)
    args.steps = args.steps or (5 if args.full else 20)
    if args.option:
        print(json.dumps(run_option(args)))
        return

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for k in range(4):
            side = args.resolution
            Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8)).save(images / f"img_{k}.png")
            (images / f"img_{k}.txt").write_text("sks duck, red helmet")
        results = []
        for option in args.options:
            cmd = [sys.executable, __file__, "--option", option, "--dataset", str(images), "--device", args.device,
                   "--resolution", str(args.resolution), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            results.append({"option": option, **_subprocess_json(cmd + (["--full"] if args.full else []))})
            print(json.dumps(results[-1]), flush=True)
        reference = {} if args.no_reference else reference_step(args, Path(tmp))
    if "step_s_median" in reference:
        for result in results:
            if "step_s_median" in result:
                result["ratio_to_reference"] = round(result["step_s_median"] / reference["step_s_median"], 3)
    print(json.dumps({"device": args.device, "full": args.full, "resolution": args.resolution,
                      "reference": {"name": REFERENCE, **reference}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
