"""The built-in experiment behind `mvtune demo`: the sample ducks -> render -> split -> validate -> a short
training -> the evaluation of the fine-tune against its base -> the experiment report, as an ordinary experiment
folder (experiment.yaml, markers, logs, pipeline.json) that `mvtune pipeline status` reads and a rerun resumes."""

from __future__ import annotations

from pathlib import Path

from mvtune.pipeline.experiment import Experiment, parse_experiment
from mvtune.pipeline.stages import train_run_dir
from mvtune.storage import atomic_write

TRAIN_FILE = "demo-train.yaml"
SUITE_FILE = "demo-suite.yaml"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def demo_experiment(out_dir: Path, base_model: str, adapter: Path | None, device: str, render_resolution: int,
                    train_resolution: int, steps: int) -> Experiment:
    """Write the demo's train config and evaluation suite into `out_dir` and return its experiment.

    With the tiny random SDXL, the evaluation reads a saved copy of the same random weights the training builds
    (same seed) and a tiny random CLIP: its numbers exercise the machinery and say nothing about quality.
    """
    from mvtune.evaluate.demo import demo_suite
    from mvtune.evaluate.suite import dump_suite
    from mvtune.models.tiny import build_tiny_sdxl, write_tiny_clip
    from mvtune.train.config import TINY_BASE, dump_config
    from mvtune.train.run import demo_config
    from mvtune.train.system import adapter_file

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    exp_raw = {"name": "demo", "dir": str(out), "train": {"config": TRAIN_FILE}, "evaluate": {"suite": SUITE_FILE}}
    cfg = demo_config(out / "dataset", out / "train", steps, train_resolution, "adapter", 0, base_model, adapter,
                      device)
    _write_text(out / TRAIN_FILE, dump_config(cfg))
    base = Path(base_model)
    if base_model == TINY_BASE:
        base = out / "tiny-sdxl"
        if not (base / "model_index.json").is_file():
            build_tiny_sdxl(base, seed=cfg.trainer.seed)
    clip = out / "tiny-clip"
    if not (clip / "config.json").is_file():
        write_tiny_clip(clip)
    exp = parse_experiment(exp_raw | {
        "meshes": {"source": "samples"},
        "render": {"resolution": render_resolution},
        "split": {"val": 0.2, "test": 0.2, "seed": 0},
        "validate": {"variant": "tg2mv"},
        "report": {"title": "mvtune demo"},
    }, out)
    suite = demo_suite(base, train_run_dir(exp) / "export" / adapter_file(cfg.model.variant), exp.dir / "dataset",
                       clip, reference_adapter=adapter, resolution=train_resolution,
                       device="cpu" if device == "cpu" else "cuda")
    _write_text(out / SUITE_FILE, dump_suite(suite))
    return exp
