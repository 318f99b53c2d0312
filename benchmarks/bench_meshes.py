"""Procedural mesh generation: meshes per hour against the issue's target of 1,000 an hour, and peak memory.

Writes ``--rows`` prompt rows (10,000 by default, several kits) to a prompts JSONL, then runs the real
``generate_meshes`` orchestration (worker processes, output checks, atomic item folders) over the first
``--count`` (1,000) of them, and reports meshes/hour, the ratio to 1,000/h, how many outputs are distinct (by
mesh.glb hash), and the peak RSS of the orchestrating process and of its largest worker, sampled at
100 items and at the end to show memory does not grow with the item count.
Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_meshes.py [--count 1000] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from mvtune.meshes.generators import generate_meshes  # noqa: E402
from mvtune.meshes.generators.run import GenerateMeshesConfig  # noqa: E402
from mvtune.prompts import write_prompt_rows  # noqa: E402

TARGET_PER_HOUR = 1000.0
CONCEPTS = ("firefighter", "construction worker", "astronaut", "chef", "gardener", "rubber duck")


def _rss_mb(pid: int | str = "self") -> float:
    """Peak resident set (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--count", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="Write here instead of a temporary folder.")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_meshes_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = ({"id": f"{c.replace(' ', '_')}-{k:05d}", "concept": c, "subject": "duck", "attributes": {},
             "style": None, "prompt": f"a {c} duck, variant {k}", "seed": k}
            for k in range(args.rows // len(CONCEPTS)) for c in CONCEPTS)
    start = time.perf_counter()
    write_prompt_rows(work / "all.jsonl", rows)
    rows_seconds = time.perf_counter() - start
    with open(work / "all.jsonl", encoding="utf-8") as src, open(work / "bench.jsonl", "w", encoding="utf-8") as dst:
        for _, line in zip(range(args.count), src):
            dst.write(line)

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    cfg = GenerateMeshesConfig(backend="procedural", prompts=work / "bench.jsonl", out_dir=out,
                               devices=["cpu"] * args.workers)
    samples: dict[int, dict] = {}

    def on_progress(done: int, total: int, item: str) -> None:
        if done in (100, total) and done not in samples:
            workers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_worker(p)]
            samples[done] = {"orchestrator_mb": round(_rss_mb(), 1),
                             "worker_max_mb": round(max((_rss_mb(p.name) for p in workers), default=float("nan")), 1)}

    start = time.perf_counter()
    summary = generate_meshes(cfg, on_progress=on_progress)
    seconds = time.perf_counter() - start
    per_hour = summary["generated"] / seconds * 3600
    hashes = {hashlib.sha256((p / "mesh.glb").read_bytes()).hexdigest() for p in out.iterdir() if (p / "mesh.glb").is_file()}
    result = {
        "rows_written": args.rows, "rows_seconds": round(rows_seconds, 2), "count": args.count,
        "workers": args.workers, "generated": summary["generated"], "failed": summary["failed"],
        "distinct": len(hashes), "seconds": round(seconds, 1), "meshes_per_hour": round(per_hour),
        "ratio_to_target_1000_per_hour": round(per_hour / TARGET_PER_HOUR, 1),
        "peak_rss": samples, "children_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "orchestrator_peak_rss_mb": round(_rss_mb(), 1),
    }
    print(json.dumps(result, indent=2))
    if args.keep is None:
        shutil.rmtree(work)


def _is_worker(proc: Path) -> bool:
    """A generator worker started by this process (not another run's)."""
    try:
        parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        return parent == os.getpid() and b"mvtune.meshes.generators.worker" in (proc / "cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False


if __name__ == "__main__":
    main()
