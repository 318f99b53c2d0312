"""Pieces of `mvtune demo` that do not draw on the console: option checks before any work, the demo summary
(metrics, timings, outputs relative to the demo folder) and clean-up of folders a failed run created empty.

The CLI chains the stages and prints; an executor that runs the same stages (the pipeline's local one) can
reuse these to check, record and report the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mvtune.storage import write_json
from mvtune.train.config import TINY_BASE

SUMMARY_FILE = "demo_summary.json"
DEVICES = ("cpu", "gpu", "cuda")


def writable_problem(path: Path, what: str) -> str | None:
    """Why `path` cannot be created or written (checked on the nearest existing folder), or None."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            return f"{what} {path} exists and is not a folder"
        return None if os.access(path, os.W_OK) else f"{what} {path} is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{what} {path}: {parent} is not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{what} {path} cannot be created: {parent} is not writable"


def device_problem(device: str, option: str = "--device", allow_gpu: bool = True) -> str | None:
    """cpu, cuda or cuda:N (and gpu, Lightning's word, where allow_gpu); a GPU device also needs a CUDA build of
    torch with a visible GPU."""
    names = DEVICES if allow_gpu else tuple(d for d in DEVICES if d != "gpu")
    if device not in names and not re.fullmatch(r"cuda:\d+", device):
        return f"{option} must be {', '.join(names)} or cuda:N, got {device!r}"
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            return f"{option} {device}: no CUDA GPU is visible to torch here; use {option} cpu"
    return None


def base_model_problem(base: str | os.PathLike, option: str = "--base-model", allow_tiny: bool = True) -> str | None:
    if allow_tiny and str(base) == TINY_BASE:
        return None
    if not (Path(base) / "model_index.json").is_file():
        return (f"{option} {base} is not a local diffusers SDXL folder (no model_index.json); download one first "
                "(e.g. `huggingface-cli download Lykon/dreamshaper-xl-1-0 --local-dir DIR`) or use `mvtune tiny-model DIR`")
    return None


def demo_option_problems(
    out_dir: Path, base_model: str, adapter: Path | None, device: str, render_resolution: int,
    train_resolution: int, steps: int, texture_size: int,
) -> list[str]:
    """Every problem with the demo's options, found before anything is written or loaded."""
    problems = [p for p in (
        device_problem(device),
        base_model_problem(base_model),
        writable_problem(out_dir, "--out"),
    ) if p]
    if adapter is not None and not Path(adapter).is_file():
        problems.append(f"--adapter {adapter} does not exist (the released mvadapter_tg2mv_sdxl.safetensors, or omit it)")
    if steps < 1:
        problems.append(f"--steps must be at least 1, got {steps}")
    if train_resolution < 32 or train_resolution % 32:
        problems.append(f"--train-resolution must be a multiple of 32 (SDXL latents), got {train_resolution}")
    if render_resolution < train_resolution:
        problems.append(f"--render-resolution {render_resolution} is below --train-resolution {train_resolution}")
    if texture_size < 16:
        problems.append(f"--texture-size must be at least 16, got {texture_size}")
    return problems


def remove_empty_dirs(path: Path) -> None:
    """Remove `path` and the folders below it that hold no file (what a run that failed early created)."""
    path = Path(path)
    if not path.is_dir():
        return
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(path.iterdir()):
        path.rmdir()


def relative(path: Path | str | None, root: Path) -> str | None:
    """A path as the summary records it: relative to the demo folder (so the folder can be moved)."""
    if path is None:
        return None
    return os.path.relpath(Path(path).resolve(), Path(root).resolve())


def write_demo_summary(out_dir: Path, *, held_out: str, metrics: dict, timings: dict, outputs: dict,
                       settings: dict) -> Path:
    """demo_summary.json: the settings, metrics, per-stage seconds and every output, paths relative to out_dir."""
    out_dir = Path(out_dir)
    record = {
        "settings": settings,
        "held_out": held_out,
        "metrics": metrics,
        "timings_s": {k: round(float(v), 2) for k, v in timings.items()},
        "outputs": {label: relative(path, out_dir) for label, path in outputs.items()},
    }
    path = out_dir / SUMMARY_FILE
    write_json(path, record)
    return path
