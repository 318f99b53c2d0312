"""Consistency scoring benchmark: 6 tg2mv views at 768² (issue 9 target: <= 0.5 s on a 2-core CPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_score.py [--resolution 768] [--repeats 5]

Per mesh: albedo renders of the tg2mv views (consistent by construction) are scored with
`mvtune.evaluate.score.consistency` given the condition maps. Two references, same inputs:

- **torch per pair**: a straightforward implementation, every ordered pair on the full pixel grid with
  `torch.nn.functional.grid_sample` (nearest for depth and masks, bilinear for colour); its pooled MAE and
  pixel count must agree with ours, so it doubles as a check of the projection conventions;
- **condition maps**: rendering the mesh's condition maps (`condition_maps`), which every score call pays too.

Times are medians over `--repeats`, wall and CPU (process time; on a shared VM CPU time is the steadier one,
so the ratios and the target check use it).
Meshes: the procedural firefighter duck, and ../shared/fixtures/meshes/Duck.glb when present.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from mvtune import cameras
from mvtune.evaluate.score import DEPTH_TOLERANCE_PIXELS, _interior, consistency
from mvtune.generate.conditions import condition_maps, load_normalized
from mvtune.meshes import write_sample_meshes
from mvtune.render import Renderer, create_context

TARGET_S = 0.5
SHARED_DUCK = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "meshes" / "Duck.glb"


def torch_per_pair(images, cond) -> tuple[float, int]:
    """(pooled MAE, co-visible pixels), pair by pair on the full image grid."""
    import torch
    import torch.nn.functional as F

    views, mask, depth = cond.views, cond.mask, cond.depth
    position = cond.position.transpose(0, 2, 3, 1) - 0.5
    normal = cond.normal.transpose(0, 2, 3, 1) * 2 - 1
    v, r = len(views), mask.shape[1]
    colour = [torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1)[None] for im in images]
    interior = [torch.from_numpy(_interior(m).astype(np.float32))[None, None] for m in mask]
    depth_t = [torch.from_numpy(np.asarray(d, np.float32))[None, None] for d in depth]
    sum_abs, pixels = 0.0, 0
    for i in range(v):
        p = torch.from_numpy(np.asarray(position[i], np.float32))
        n = torch.from_numpy(np.asarray(normal[i], np.float32))
        src = interior[i][0, 0] > 0
        for j in range(v):
            if i == j:
                continue
            c2w = torch.from_numpy(views[j].c2w).float()
            right, up, back, eye = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3]
            rel = p - eye
            col = rel @ right * (r / views[j].ortho_scale) + r / 2 - 0.5
            row = -(rel @ up) * (r / views[j].ortho_scale) + r / 2 - 0.5
            d = -(rel @ back)
            grid = torch.stack([(col + 0.5) / r * 2 - 1, (row + 0.5) / r * 2 - 1], dim=-1)[None]
            depth_j = F.grid_sample(depth_t[j], grid, mode="nearest", align_corners=False)[0, 0]
            inside_j = F.grid_sample(interior[j], grid, mode="nearest", align_corners=False)[0, 0] > 0
            colour_j = F.grid_sample(colour[j], grid, mode="bilinear", align_corners=False)[0]
            tolerance = DEPTH_TOLERANCE_PIXELS * views[j].ortho_scale / r
            valid = src & (n @ back > 0) & inside_j & ((depth_j - d).abs() <= tolerance)
            diff = (colour_j - colour[i][0]).abs().sum(0)
            sum_abs += float(diff[valid].sum())
            pixels += int(valid.sum())
    return sum_abs / (3 * pixels), pixels


def timed(fn, repeats: int):
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tempfile

    import torch

    torch.set_num_threads(1)
    r = args.resolution
    meshes = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {p.stem: p for p in write_sample_meshes(tmp)}
        meshes["procedural firefighter duck"] = load_normalized(paths["duck_firefighter"])
    if SHARED_DUCK.is_file():
        meshes["Duck.glb (textured)"] = load_normalized(SHARED_DUCK)
    ctx = create_context()
    colour = Renderer(r, lighting="albedo", msaa=4, ctx=ctx)
    geometry = Renderer(r, lighting="albedo", msaa=0, ctx=ctx)
    tg2mv = cameras.variant_cameras("tg2mv")
    print(f"{r}² px, 6 tg2mv views, medians of {args.repeats}; seconds wall (CPU); ratios of CPU times")
    print("| mesh | co-visible pixels | MAE ours / torch | ours | torch per pair | condition maps | ours / torch | ours / maps |")
    print("|---|---|---|---|---|---|---|---|")
    for name, mesh in meshes.items():
        images = [im.color[..., :3].copy() for im in colour.render(mesh, tg2mv)]
        cond, maps_wall, maps_cpu = timed(lambda: condition_maps(mesh, r, renderer=geometry), args.repeats)
        ours, wall, cpu = timed(lambda: consistency(images, cond), args.repeats)
        (ref_mae, ref_pixels), ref_wall, ref_cpu = timed(lambda: torch_per_pair(images, cond), max(1, args.repeats // 2))
        if abs(ref_pixels - ours["pixels"]) > 0.01 * ours["pixels"] or abs(ref_mae - ours["mae"]) > 0.05:
            raise SystemExit(f"{name}: ours {ours['mae']:.3f} over {ours['pixels']} px != reference {ref_mae:.3f} over {ref_pixels}")
        print(
            f"| {name} | {ours['pixels']:,} | {ours['mae']:.3f} / {ref_mae:.3f} | {wall:.3f} ({cpu:.3f}) | "
            f"{ref_wall:.3f} ({ref_cpu:.3f}) | {maps_wall:.3f} ({maps_cpu:.3f}) | {cpu / ref_cpu:.2f} | {cpu / maps_cpu:.2f} |"
        )
        if cpu > TARGET_S:
            print(f"  {name}: {cpu:.3f} s CPU is over the {TARGET_S} s target")
    colour.release()
    geometry.release()
    ctx.release()


if __name__ == "__main__":
    main()
