"""The evaluation suite: which models, meshes, prompts, seeds and scorers one `mvtune evaluate` compares.

A suite file is validated completely before any model loads: unknown keys name the closest valid one, every
path is checked, every prompt passes the IP guard, and all problems are listed at once. `load_suite` returns
a `Suite` whose `prompt_rows()` and `mesh_items()` resolve the prompt sets and the mesh list.

```yaml
models:                       # the first entry is the reference every other model is compared to
  - {name: base, base_model: models/sdxl, adapter: weights/mvadapter_tg2mv_sdxl.safetensors}
  - {name: firefighter, base_model: models/sdxl, adapter: runs/ff/export/mvadapter_tg2mv.safetensors}
meshes: {dataset: data/ducks, split: test, files: [extra/duck.glb]}
prompts: {concepts: examples/concepts/ducks.yaml, per_concept: 2, generic: 8}
seeds: [0, 1, 2]
sampling: {steps: 30, guidance: 3.0, resolution: 768}
scorers: [{name: ViT-L-14, kind: transformers, path: clip/clip-vit-large-patch14}]
```
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mvtune.models.clip import ScorerSpec
from mvtune.generate.run import ModelConfig, SamplingConfig
from mvtune.config_files import merge, parse_overrides, read_yaml_mapping, unknown_keys, validation_problems

GENERIC = "generic"  # the group name of the forgetting prompts
CONCEPT_ATTRIBUTE = "concept"  # the attribute name of `prompts.concept_presence`


class SuiteError(Exception):
    """A suite that cannot run; the message names the key, model, mesh or file and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEntry(ModelConfig):
    """One compared model: generate's ModelConfig (base, adapter, LoRAs, ...) under a name."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")  # also a folder name under cells/
    device: str | None = None  # None: the suite's `device`


class MeshesConfig(_Section):
    dataset: Path | None = None  # a rendered dataset (`mvtune render`): its objects have ground-truth views
    split: Literal["train", "val", "test"] | None = "test"  # None: every object of the dataset
    limit: int | None = Field(None, ge=1)  # first N objects of the split (sorted ids)
    files: list[Path] = []  # extra mesh files (no ground truth)
    up: Literal["y", "z"] = "y"  # up axis of `files` (dataset objects use the dataset's render setting)


class PromptsConfig(_Section):
    # A concepts file (the `mvtune prompts` format) or the same mapping inline.
    concepts: Path | dict[str, Any] | None = None
    per_concept: int = Field(2, ge=1)  # prompts per concept: the file's fixed prompts first, then sampled
    generic: int = Field(8, ge=0)  # forgetting prompts (built-in set + the file's `generic`); 0: none
    subject: str | None = None  # for the generic prompts; default: the concepts file's first subject, or "duck"
    seed: int = 0
    # Also probe the concept as a whole, like an attribute: "a {subject} as a {phrase}" against "a plain {subject}".
    concept_presence: bool = False


class BootstrapConfig(_Section):
    samples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = 0


class Suite(_Section):
    name: str = "evaluation"
    models: list[ModelEntry] = Field(min_length=1)
    meshes: MeshesConfig
    prompts: PromptsConfig = PromptsConfig()
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    sampling: SamplingConfig = SamplingConfig()
    scorers: list[ScorerSpec] = []
    device: str = "auto"  # models without their own `device`: "auto" picks cuda when there is one
    bootstrap: BootstrapConfig = BootstrapConfig()
    attribute_threshold: float = Field(0.5, gt=0.0, lt=1.0)  # presence above this counts the attribute as shown
    grids_per_concept: int = Field(2, ge=1)  # (mesh, seed) grids per concept in the report
    _resolved: tuple | None = PrivateAttr(None)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _names(self) -> "Suite":
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate names {duplicates}; give each model a distinct name")
        scorer_names = [scorer_name(s) for s in self.scorers]
        if len(set(scorer_names)) != len(scorer_names):
            raise ValueError(f"scorers: duplicate names {scorer_names}; set `name` on each")
        if self.meshes.dataset is None and not self.meshes.files:
            raise ValueError("meshes: give a rendered `dataset` (and `split`) and/or mesh `files`")
        if self.prompts.concepts is None and self.prompts.generic == 0:
            raise ValueError("prompts: the suite has no prompts; set prompts.concepts and/or prompts.generic > 0")
        return self

    @property
    def reference(self) -> ModelEntry:
        return self.models[0]

    def prompt_rows(self) -> list["PromptItem"]:
        return _resolved(self)[0]

    def concepts(self):
        """The loaded ConceptSet, or None when the suite has only generic prompts."""
        return _resolved(self)[1]

    def mesh_items(self) -> list["MeshItem"]:
        return _mesh_items(self.meshes)

    def model_device(self, model: ModelEntry) -> str:
        """The model's own device, else the suite's; "auto" is cuda when torch sees a GPU."""
        device = model.device or self.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return device


@dataclass(frozen=True)
class PromptItem:
    """One prompt of the suite: `group` is its concept's name or GENERIC."""

    id: str
    group: str
    prompt: str
    attributes: tuple[tuple[str, str, str], ...] = ()  # (name, positive, contrast) probed on its images
    override: str | None = None  # protected term the concepts file overrode (provenance)


@dataclass(frozen=True)
class MeshItem:
    """One mesh to generate on; `ground_truth` is the dataset object folder with its renders, if any."""

    id: str
    path: Path
    up: str
    ground_truth: Path | None = None


def scorer_name(spec: ScorerSpec) -> str:
    return spec.label  # the name ClipScorer objects carry, so score_views results match


def scorer_names(suite: Suite) -> list[str]:
    return [scorer_name(s) for s in suite.scorers]


def _field(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, dict) else getattr(row, key, None)


def load_concept_set(source: Path | dict[str, Any]):
    """A ConceptSet from a concepts file or an inline mapping in the same format (validated by mvtune.prompts)."""
    from mvtune.prompts import load_concepts

    if not isinstance(source, dict):
        return load_concepts(Path(source))
    with tempfile.TemporaryDirectory(prefix="mvtune-concepts-") as tmp:
        path = Path(tmp) / "inline-concepts.yaml"
        path.write_text(yaml.safe_dump(source, sort_keys=False), encoding="utf-8")
        try:
            return load_concepts(path)
        except Exception as exc:  # name the suite key, not the temporary file
            raise SuiteError(str(exc).replace(str(path), "inline concepts")) from None


def _resolved(suite: Suite) -> tuple[list[PromptItem], Any]:
    """Concept prompts (contract A's rows, with probed attributes) then generic prompts; cached on the suite."""
    if suite._resolved is not None:
        return suite._resolved
    from mvtune.prompts import GENERIC_PROMPTS

    cfg = suite.prompts
    concepts = None if cfg.concepts is None else load_concept_set(cfg.concepts)
    items: list[PromptItem] = []
    if concepts is not None:
        for name, concept in concepts.concepts.items():
            attributes = tuple(tuple(a) for a in concept.probed_attributes())
            if cfg.concept_presence:
                subject = concepts.subjects[0]
                phrase = getattr(concept, "phrase", None) or name.replace("-", " ")
                attributes += ((CONCEPT_ATTRIBUTE, f"a {subject} as a {phrase}", f"a plain {subject}"),)
            for row in concepts.prompts_for(name, cfg.per_concept, cfg.seed):
                items.append(
                    PromptItem(
                        id=str(_field(row, "id")),
                        group=name,
                        prompt=str(_field(row, "prompt")),
                        attributes=attributes,
                        override=_field(row, "override"),
                    )
                )
    if cfg.generic:
        subject = cfg.subject or (concepts.subjects[0] if concepts is not None else "duck")
        pool = (
            list(concepts.generic_prompts(subject))
            if concepts is not None
            else [p.format(subject=subject) for p in GENERIC_PROMPTS]
        )
        chosen = random.Random(cfg.seed).sample(pool, min(cfg.generic, len(pool)))
        items += [PromptItem(id=f"{GENERIC}-{i:04d}", group=GENERIC, prompt=p) for i, p in enumerate(chosen)]
    suite._resolved = (items, concepts)
    return items, concepts


def _mesh_items(cfg: MeshesConfig) -> list[MeshItem]:
    from mvtune.data.splits import SPLIT_FILES, read_manifest
    from mvtune.render.dataset import object_dir

    items: list[MeshItem] = []
    if cfg.dataset is not None:
        root = Path(cfg.dataset)
        manifest = read_manifest(root)
        if cfg.split is None:
            ids = sorted(manifest)
        else:
            split_file = root / SPLIT_FILES[cfg.split]
            if not split_file.is_file():
                raise SuiteError(f"meshes.split: {split_file} is missing; run `mvtune dataset split {root}` first")
            ids = sorted(str(i).rstrip("/").split("/")[-1] for i in json.loads(split_file.read_text(encoding="utf-8")))
        if cfg.limit is not None:
            ids = ids[: cfg.limit]
        up = _dataset_up(root)
        for object_id in ids:
            record = manifest.get(object_id)
            if record is None or not record.get("source"):
                raise SuiteError(f"meshes.dataset: object {object_id} has no source mesh in {root / 'manifest.json'}")
            items.append(MeshItem(object_id, Path(record["source"]), up, object_dir(root, object_id)))
    for path in cfg.files:
        items.append(MeshItem(_file_id(path, {i.id for i in items}), Path(path), cfg.up))
    return items


def _dataset_up(root: Path) -> str:
    """The up axis the dataset was rendered with (render_config.json), so generation sees the same frame."""
    try:
        return str(json.loads((root / "render_config.json").read_text(encoding="utf-8")).get("up", "y"))
    except (OSError, ValueError, AttributeError):
        return "y"


def _file_id(path: Path, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem) or "mesh"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _model_problems(model: ModelEntry) -> list[str]:
    problems = []
    for field in ("base_model", "adapter", "vae"):
        path = getattr(model, field, None)
        if path is not None and not Path(path).exists():
            problems.append(f"models.{model.name}.{field}: {path} does not exist")
    loras = list(getattr(model, "loras", None) or [])
    if getattr(model, "lora", None) is not None:
        loras.append(model.lora)
    for lora in loras:
        path = Path(getattr(lora, "path", lora))
        if not path.is_file():
            problems.append(f"models.{model.name}: LoRA file {path} does not exist")
    return problems


def check_suite(suite: Suite) -> None:
    """Checks that read the disk: model files, scorers, meshes, concepts and the IP guard; all listed at once."""
    from mvtune.prompts.guard import ProtectedPromptError, ensure_allowed

    problems: list[str] = []
    for model in suite.models:
        problems += _model_problems(model)
    for spec, name in zip(suite.scorers, scorer_names(suite)):
        if not Path(spec.path).exists():
            problems.append(f"scorers.{name}: {spec.path} does not exist (a local CLIP folder or checkpoint file)")
    try:
        meshes = suite.mesh_items()
        if not meshes:
            problems.append("meshes: the dataset split and files give no meshes")
        problems += [f"meshes: {m.id}: mesh file {m.path} does not exist" for m in meshes if not m.path.is_file()]
    except Exception as exc:  # SplitError, SuiteError, a bad manifest: all name their file
        problems.append(f"meshes: {exc}")
    try:
        prompts = suite.prompt_rows()
        concepts = suite.concepts()
        extra = tuple(getattr(concepts, "protected_terms", ()) or ()) if concepts is not None else ()
        if not prompts:
            problems.append("prompts: the suite has no prompts (no concepts and prompts.generic is 0)")
        for item in prompts:
            try:
                ensure_allowed(item.prompt, extra_terms=extra, override=item.override is not None)
            except ProtectedPromptError as exc:
                problems.append(f"prompts: {item.id}: {exc}")
    except Exception as exc:  # ConceptsError lists its own problems
        problems.append(f"prompts.concepts: {exc}")
    if problems:
        raise SuiteError("; ".join(problems))


def parse_suite(raw: dict, overrides: list[str] = ()) -> Suite:
    """A Suite from a mapping plus `key=value` overrides; unknown keys name the closest valid one."""
    raw = merge(raw, parse_overrides(list(overrides), SuiteError))
    problems = unknown_keys(raw, Suite)
    if problems:
        raise SuiteError("; ".join(problems))
    try:
        return Suite.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError("invalid suite: " + "; ".join(validation_problems(exc, "suite"))) from None


def load_suite(path: str | Path, overrides: list[str] = (), check: bool = True) -> Suite:
    """Read, validate and (with `check`) disk-check a suite YAML; relative paths resolve against its folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "suite file", SuiteError)
    suite = _relative_to(parse_suite(raw, overrides), path.parent)
    if check:
        check_suite(suite)
    return suite


def _relative_to(suite: Suite, folder: Path) -> Suite:
    """Paths in a suite file are relative to the file, so a suite and its inputs move together."""

    def fix(p):
        return p if p is None or Path(p).is_absolute() else folder / p

    data = suite.model_dump()
    for model in data["models"]:
        for field in ("base_model", "adapter", "vae", "lora"):
            if model.get(field) is not None:
                model[field] = fix(model[field])
        for lora in model.get("loras") or []:
            lora["path"] = fix(lora["path"])
    data["meshes"]["dataset"] = fix(data["meshes"]["dataset"])
    data["meshes"]["files"] = [fix(f) for f in data["meshes"]["files"]]
    if data["prompts"]["concepts"] is not None and not isinstance(data["prompts"]["concepts"], dict):
        data["prompts"]["concepts"] = fix(data["prompts"]["concepts"])
    for scorer in data["scorers"]:
        scorer["path"] = fix(scorer["path"])
    return Suite.model_validate(data)


def dump_suite(suite: Suite) -> str:
    """The resolved suite as YAML: the record of what was evaluated, written into the output folder."""
    return yaml.safe_dump(json.loads(suite.model_dump_json()), sort_keys=False)
