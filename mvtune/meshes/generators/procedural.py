"""The built-in procedural backend: themed ducks from `mvtune.meshes.procedural`, CPU only, licence-clean (CC0).

The prompt row chooses the kit (its concept) and steers colours and parts (its attribute phrases and the phrases
of its prompt); the item seed draws the rest. The caption is not the prompt: it states exactly what the mesh
shows, and the visible attributes are recorded in the provenance as ground truth for attribute probes.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mvtune.meshes.generators.base import MESH_FILE, GeneratorError


class ProceduralOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Runner:
    def generate(self, row: dict, seed: int, out_dir: Path) -> dict:
        from mvtune.meshes.procedural import design_duck, kit_for, themed_scene

        subject = str(row.get("subject") or "duck").lower()
        if "duck" not in subject:
            raise GeneratorError(f"the procedural backend builds ducks only, not {subject!r} (use a Hunyuan backend)")
        try:
            kit_for(row.get("concept"))
        except KeyError as exc:
            raise GeneratorError(exc.args[0]) from None
        # The attributes used and each comma-separated phrase of the prompt (fixed prompts carry few attributes).
        hints = {str(k): str(v) for k, v in (row.get("attributes") or {}).items()}
        hints |= {f"prompt-{k}": phrase for k, phrase in enumerate(str(row.get("prompt", "")).split(","))}
        duck = design_duck(row.get("concept"), seed, hints)
        data = themed_scene(duck).export(file_type="glb")
        (Path(out_dir) / MESH_FILE).write_bytes(data)
        return {
            "caption": duck.caption(),
            "provenance": {"visible_attributes": duck.attributes(), "kit": duck.kit, "design": asdict(duck)},
        }


class ProceduralBackend:
    name = "procedural"
    licence = "CC0-1.0"
    Options = ProceduralOptions

    def describe(self, options: ProceduralOptions) -> dict:
        from mvtune.meshes.procedural import THEMED_GENERATOR, THEMED_VERSION

        return {"model": THEMED_GENERATOR, "version": str(THEMED_VERSION)}

    def preflight(self, options: ProceduralOptions) -> None:
        return None

    def load(self, options: ProceduralOptions, device: str) -> _Runner:
        if device != "cpu":
            raise GeneratorError(f"the procedural backend runs on the CPU; got device {device!r}")
        return _Runner()


BACKEND = ProceduralBackend()
