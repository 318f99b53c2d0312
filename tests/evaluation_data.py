"""A small evaluation on the tiny SDXL and the tiny CLIP, shared by the evaluation and report tests."""

from pathlib import Path

import yaml

CONCEPTS = {
    "subjects": ["duck"],
    "concepts": {
        "firefighter": {
            "attributes": {
                "helmet": {"phrases": ["red helmet", "yellow helmet", "fire helmet"],
                           "positive": "a red firefighter helmet", "contrast": "a bare head"},
            },
        },
    },
}


def tiny_clip(folder: Path) -> Path:
    from mvtune.models.tiny import write_tiny_clip

    if not (folder / "config.json").is_file():
        write_tiny_clip(folder)
    return folder


def suite_data(tiny_base: Path, ducks: Path, clip: Path, models: list[dict] | None = None, **extra) -> dict:
    """One held-out duck, one concept prompt + one generic prompt, two seeds: 4 cells per model."""
    return {
        "name": "test suite",
        "models": models or [{"name": "base", "base_model": str(tiny_base)},
                             {"name": "shifted", "base_model": str(tiny_base), "shift_scale": 2.0}],
        "meshes": {"dataset": str(ducks), "split": "test", "limit": 1},
        "prompts": {"concepts": CONCEPTS, "per_concept": 1, "generic": 1},
        "seeds": [0, 1],
        "sampling": {"steps": 2, "guidance": 3.0, "resolution": 64},
        "scorers": [{"name": "tiny", "path": str(clip)}],
        "device": "cpu",
        **extra,
    }


def write_suite(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path
