"""The demo's last step: the base model against its own fine-tune on the held-out ducks, as a small evaluation."""

from __future__ import annotations

from pathlib import Path

from mvtune.evaluate.run import evaluate_suite
from mvtune.evaluate.suite import parse_suite

#: One concept with a probed trait (plus one generic prompt): enough to exercise every part of the report.
DEMO_CONCEPTS = {
    "subjects": ["duck"],
    "styles": ["toy figurine", "stylized but clean"],
    "concepts": {
        "firefighter": {
            "attributes": {
                "helmet": {
                    "phrases": ["red helmet", "red fire helmet with a visor", "yellow fire helmet"],
                    "positive": "a red firefighter helmet",
                    "contrast": "a bare head",
                },
            },
        },
    },
}


def demo_suite(base_model: Path, adapter: Path, dataset: Path, clip: Path, *, reference_adapter: Path | None = None,
               seeds: tuple[int, ...] = (0, 1), steps: int = 4, resolution: int = 64, device: str = "auto"):
    """Reference = the base with `reference_adapter` (None: the adapter as initialised), candidate = the fine-tune."""
    model = {"base_model": str(base_model), "device": None}
    return parse_suite({
        "name": "demo: base vs fine-tune on the held-out ducks",
        "models": [
            {**model, "name": "base", "adapter": None if reference_adapter is None else str(reference_adapter)},
            {**model, "name": "fine-tune", "adapter": str(adapter)},
        ],
        "meshes": {"dataset": str(dataset), "split": "test"},
        "prompts": {"concepts": DEMO_CONCEPTS, "per_concept": 1, "generic": 1},
        "seeds": list(seeds),
        "sampling": {"steps": steps, "guidance": 3.0, "resolution": resolution},
        "scorers": [{"name": "tiny-clip", "kind": "transformers", "path": str(clip)}],
        "device": device,
        "grids_per_concept": 1,
    })


def evaluate_demo(base_model: Path, adapter: Path, dataset: Path, out_dir: Path, *, clip: Path | None = None,
                  reference_adapter: Path | None = None, run_dir: Path | None = None, on_progress=None,
                  **settings) -> dict:
    """Run the demo evaluation into `out_dir` (report at out_dir/report.html); returns its summary.

    Without `clip`, a tiny random CLIP is written to out_dir/tiny-clip: its numbers exercise the machinery, they
    say nothing about quality (docs/evaluation.md names the real weights).
    """
    out = Path(out_dir)
    if clip is None:
        from mvtune.models.tiny import write_tiny_clip

        clip = out / "tiny-clip"
        if not (clip / "config.json").is_file():
            write_tiny_clip(clip)
    suite = demo_suite(base_model, adapter, dataset, clip, reference_adapter=reference_adapter, **settings)
    return evaluate_suite(suite, out, run_dir=run_dir, on_progress=on_progress)
