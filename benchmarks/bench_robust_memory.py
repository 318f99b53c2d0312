"""Peak memory (max RSS) of `mvtune augment` and `mvtune render` on a GLB with one big baseColor texture.

Builds a small box GLB whose texture is SIZE² (default 4096², a smooth gradient, so the file stays small while the
decoded image is SIZE² x 4 bytes), then runs each command in a fresh subprocess and reads its peak resident set
size from getrusage(RUSAGE_CHILDREN). The reference is the decoded texture itself (SIZE² RGBA bytes): the ratio
printed is peak RSS / decoded texture size, so "bytes per texel" can be read off directly.
Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_robust_memory.py [--size 4096]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def texture_glb(path: Path, size: int, textures: int = 1) -> Path:
    """Boxes side by side, each with its own SIZE² baseColor texture."""
    import trimesh
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    scene = trimesh.Scene()
    for k in range(textures):
        rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((size, size), 16.0 * k)), -1)
        image = Image.fromarray(rgb.astype(np.uint8), "RGB")
        box = trimesh.creation.box()
        box.apply_translation((1.5 * k, 0, 0))
        uv = np.random.default_rng(k).uniform(0, 1, (len(box.vertices), 2))
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=image)
        box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        scene.add_geometry(box, geom_name=f"box{k}")
    path.write_bytes(scene.export(file_type="glb"))
    return path


def peak_rss_mib(args: list[str]) -> float:
    """Max RSS of one command run alone (a fresh process, so earlier children do not count)."""
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    # not check=True: a refused file (exit 1, reported in errors.jsonl) is a result too
    out = subprocess.run([sys.executable, "-c", probe.replace("check=True", "check=False"), *args], check=True,
                         capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024.0  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--textures", type=int, default=1, help="textures (one box each) in the GLB")
    parser.add_argument("--resolution", type=int, default=256, help="render resolution")
    parser.add_argument("--only", choices=("augment", "render"), default=None)
    a = parser.parse_args()
    cli = [sys.executable, "-m", "mvtune.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        glb = texture_glb(tmp / "in" / "box.glb", a.size, a.textures)
        glb_kib = glb.stat().st_size / 1024
        decoded = a.textures * a.size * a.size * 4 / 2**20
        baseline = peak_rss_mib([sys.executable, "-c", "import mvtune.cli, trimesh, PIL.Image"])
        commands = {
            "augment": [*cli, "augment", str(tmp / "in"), str(tmp / "aug")],
            "render": [*cli, "render", str(tmp / "in"), str(tmp / "ds"), "--resolution", str(a.resolution)],
        }
        results = {"python + imports": baseline}
        for name, command in commands.items():
            if a.only in (None, name):
                results[name] = peak_rss_mib(command)
    print(f"GLB {glb_kib:.0f} KiB, {a.textures} texture(s) of {a.size}x{a.size}: decoded RGBA {decoded:.0f} MiB")
    for name, mib in results.items():
        print(f"{name:18s} peak RSS {mib:7.0f} MiB  ({mib / decoded:5.2f} x decoded texture, "
              f"{(mib - baseline) * 2**20 / (a.textures * a.size * a.size):5.1f} B/texel above imports)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
