"""Loader throughput: ours (files, and the preprocessed cache) vs the reference procedure, side by side.

Renders a small tg2mv dataset at 1024² (procedural ducks plus the shared real meshes when present), then times
samples/s at 768² through a torch DataLoader with 0 (in-process), 1 and 2 workers for each loader, in one
process, and prints the ratio ours/reference. Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_loader.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from mvtune import cameras  # noqa: E402
from mvtune.data.loader import MultiviewDataset  # noqa: E402
from mvtune.data.reference import reference_sample  # noqa: E402
from mvtune.data.validate import scene_dir  # noqa: E402

SHARED_MESHES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "meshes"


class ReferenceDataset(Dataset):
    """The reference procedure behind the same Dataset interface (views by file index, as MV-Adapter does)."""

    def __init__(self, root: Path, ids: list[str], height: int, width: int):
        self.root, self.ids, self.height, self.width = root, ids, height, width
        self.names = list(cameras.variant_views("tg2mv").ortho10_indices)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        s = reference_sample(scene_dir(self.root, self.ids[i]), self.names, self.height, self.width)
        return {"rgb": torch.from_numpy(s["rgb"]), "source_rgb": torch.from_numpy(s["source_rgb"]),
                "c2w": torch.from_numpy(s["c2w"])}


def make_dataset(out: Path, resolution: int) -> list[str]:
    from mvtune.meshes import write_sample_meshes
    from mvtune.render.dataset import RenderConfig, render_dataset

    meshes = out / "meshes"
    write_sample_meshes(meshes, count=3)
    if SHARED_MESHES.is_dir():
        for name in ("Duck.glb", "BoxTextured.glb", "objaverse_ac9d4e4f.glb"):
            if (SHARED_MESHES / name).exists():
                shutil.copy(SHARED_MESHES / name, meshes / name)
    summary = render_dataset(RenderConfig(input=meshes, out_dir=out / "ds", resolution=resolution))
    if summary.failed:
        raise SystemExit(f"rendering failed: {summary.errors}")
    return json.loads((out / "ds" / "scene_list.json").read_text())


def _identity(batch):
    return batch


def throughput(dataset, workers: int, samples: int) -> float:
    """Samples/s over ``samples`` items after one warm-up item (worker start-up is not counted)."""
    indices = [i % len(dataset) for i in range(samples + max(workers, 1))]
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=1, num_workers=workers,
                        collate_fn=_identity, prefetch_factor=2 if workers else None)
    it = iter(loader)
    for _ in range(max(workers, 1)):
        next(it)
    start = time.perf_counter()
    n = sum(1 for _ in it)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1024, help="rendered resolution")
    parser.add_argument("--size", type=int, default=768, help="training resolution")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", type=Path, help="reuse/keep the rendered dataset here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    if (work / "ds" / "scene_list.json").exists():
        ids = json.loads((work / "ds" / "scene_list.json").read_text())
    else:
        t = time.perf_counter()
        ids = make_dataset(work, args.files)
        print(f"rendered {len(ids)} objects at {args.files}² in {time.perf_counter() - t:.1f} s")
    root = work / "ds"
    cache_dir = work / f"cache{args.size}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    loaders = {
        "reference": ReferenceDataset(root, ids, args.size, args.size),
        "ours (files)": MultiviewDataset(root, ids, height=args.size, width=args.size, allow_missing_captions=True),
        "ours (cache)": MultiviewDataset(root, ids, height=args.size, width=args.size, allow_missing_captions=True,
                                         cache_dir=cache_dir),
    }
    t = time.perf_counter()
    for i in range(len(ids)):
        loaders["ours (cache)"].load_views(i)
    build = (time.perf_counter() - t) / len(ids)
    size = sum(p.stat().st_size for p in cache_dir.rglob("*.safetensors")) / len(ids) / 2**20
    print(f"cache build: {build:.2f} s/object, {size:.0f} MiB/object")

    results = {}
    print(f"{'loader':<14}" + "".join(f"{f'{w} workers':>12}" for w in args.workers) + "   (samples/s, 6 views at "
          f"{args.size}² from {args.files}² files)")
    for name, dataset in loaders.items():
        results[name] = {w: throughput(dataset, w, args.samples) for w in args.workers}
        print(f"{name:<14}" + "".join(f"{results[name][w]:>12.2f}" for w in args.workers))
    for name in ("ours (files)", "ours (cache)"):
        ratios = "  ".join(f"{w}w x{results[name][w] / results['reference'][w]:.2f}" for w in args.workers)
        print(f"ratio {name}/reference: {ratios}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
