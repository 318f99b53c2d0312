"""The experiment file: every stage of one run (prompts -> meshes -> render -> dataset -> train -> evaluate ->
report) and where each runs on Slurm, as one typed config that is validated before anything is submitted.

Settings name the existing commands' options; the train stage points at an ordinary `mvtune train` config plus
overrides, checked as `mvtune train` checks it. Input paths are relative to the experiment file; the experiment
folder (`dir`, default runs/<name>) is relative to the working folder, like a train config's output.dir.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mvtune.config_files import read_yaml_mapping, unknown_keys, validation_problems

#: Stage names in the order they run; each stage depends on the ones before it that are enabled.
STAGE_ORDER = ("prompts", "meshes", "render", "merge", "split", "validate", "cache", "train", "cells", "evaluate",
               "report")


class ExperimentError(Exception):
    """An experiment that cannot run; the message lists every problem, each naming its key or file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The stage is called `validate` in the file (as the command); pydantic warns that the name shadows BaseModel's
# deprecated `validate` classmethod, which the instances' field value replaces.
warnings.filterwarnings("ignore", message='Field name "validate" in "(SlurmConfig|Experiment)" shadows')


class Resources(_Section):
    """What one stage's jobs ask Slurm for. Unset fields fall back to `slurm.defaults`; `extra` (raw `#SBATCH`
    options such as `--exclusive`) and `setup` (shell lines run before the command: module load, venv) add up."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int | str | None = None  # e.g. 4 or "a100:4"; --gpus-per-node
    gres: str | None = None  # e.g. "gpu:a100:4" where the cluster schedules GPUs by gres
    cpus: int | None = Field(None, ge=1)  # --cpus-per-task
    mem: str | None = None  # e.g. "32G"
    time: str | None = None  # e.g. "04:00:00"
    constraint: str | None = None
    nodes: int | None = Field(None, ge=1)  # training only: DDP over nodes x tasks_per_node ranks
    tasks_per_node: int | None = Field(None, ge=1)  # training only: one task per GPU (or per CPU rank)
    throttle: int | None = Field(None, ge=1)  # array stages: at most this many tasks at once (--array=...%N)
    signal: str | None = None  # training only; default USR1@120 (Lightning checkpoints and requeues)
    extra: list[str] = []
    setup: list[str] = []

    def over(self, base: "Resources") -> "Resources":
        """This stage's settings on top of the defaults."""
        merged = base.model_dump()
        for key, value in self.model_dump(exclude_unset=True).items():
            merged[key] = merged[key] + value if key in ("extra", "setup") else value
        return Resources(**merged)


class SlurmConfig(_Section):
    defaults: Resources = Resources()
    prompts: Resources = Resources()
    meshes: Resources = Resources()
    render: Resources = Resources()
    merge: Resources = Resources()
    split: Resources = Resources()
    validate: Resources = Resources()
    cache: Resources = Resources()
    cells: Resources = Resources()
    train: Resources = Resources()
    evaluate: Resources = Resources()
    report: Resources = Resources()

    def for_stage(self, stage: str) -> Resources:
        return getattr(self, stage).over(self.defaults)


class PromptsStage(_Section):
    """`mvtune prompts CONCEPTS --count N --seed S --out prompts.jsonl`."""

    concepts: Path
    count: int = Field(8, ge=1)  # prompts per concept
    seed: int = 0


class MeshesStage(_Section):
    """Where the meshes come from: the built-in samples, a generator fed by the prompts stage, or an import."""

    source: Literal["samples", "generate", "import"] = "samples"
    count: int | None = Field(None, ge=1)  # samples: only the first N
    backend: str = "procedural"  # generate: procedural, hunyuan3d-2.1, hunyuan3d-2
    shards: int = Field(1, ge=1)  # generate: array tasks, each a deterministic share of the prompts
    timeout: float | None = Field(None, ge=1)  # generate: seconds per item
    seed: int = 0
    path: Path | None = None  # import: folder of meshes
    source_name: str | None = None  # import: --source
    licence: str | None = None  # import: --licence

    @model_validator(mode="after")
    def _import_needs(self) -> "MeshesStage":
        if self.source == "import":
            missing = [k for k in ("path", "source_name", "licence") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"source=import needs {', '.join(missing)}")
        if self.shards > 1 and self.source != "generate":
            raise ValueError(f"shards={self.shards} only applies to source=generate")
        return self


class RenderStage(_Section):
    """`mvtune render MESHES DATASET` options; `shards` > 1 renders as an array, then the merge stage runs."""

    layout: str = "ortho10"
    resolution: int = Field(1024, ge=16, le=8192)
    lighting: str = "studio"
    up: Literal["y", "z"] = "y"
    seed: int = 0
    position: bool = False
    workers: int = Field(1, ge=1)
    shards: int = Field(1, ge=1)


class SplitStage(_Section):
    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0


class ValidateStage(_Section):
    variant: Literal["tg2mv", "t2mv"] = "tg2mv"
    pixels: bool = True


class CacheStage(_Section):
    variant: Literal["tg2mv", "t2mv"] = "tg2mv"
    resolution: int = Field(768, ge=16)
    shards: int = Field(1, ge=1)  # > 1: a Slurm array, each task caches the objects k % n == i


class TrainStage(_Section):
    """An ordinary `mvtune train` config plus `key=value` overrides. The pipeline adds data.root (the dataset),
    output.dir/output.name (so a requeued or rerun job finds its run folder) and, on Slurm, trainer.devices and
    trainer.num_nodes from the stage's resources."""

    config: Path
    overrides: list[str] = []


class EvaluateStage(_Section):
    """`mvtune evaluate SUITE key=value ... --out DIR --run RUN`. Overrides may name {run} (the training run
    folder, e.g. `{run}/export/mvadapter_tg2mv_sdxl.safetensors`), {dataset} and {dir} (the experiment folder)."""

    suite: Path
    overrides: list[str] = []
    #: > 1: the cells are generated by a Slurm array first (stage `cells`), then `evaluate` compares them.
    shards: int = Field(1, ge=1)


class ReportStage(_Section):
    title: str | None = None


class Experiment(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dir: Path | None = None  # the experiment folder, relative to the working folder (as train's output.dir); default runs/<name>
    python: Path | None = None  # interpreter the jobs run mvtune with (default: the one running this command)
    workdir: Path | None = None  # jobs cd here first (default: the folder `mvtune pipeline run` ran in)
    prompts: PromptsStage | None = None
    meshes: MeshesStage = MeshesStage()
    render: RenderStage = RenderStage()
    split: SplitStage = SplitStage()
    validate: ValidateStage = ValidateStage()
    cache: CacheStage | None = None
    train: TrainStage | None = None
    evaluate: EvaluateStage | None = None
    report: ReportStage = ReportStage()
    slurm: SlurmConfig = SlurmConfig()

    @model_validator(mode="after")
    def _combinations(self) -> "Experiment":
        if self.meshes.source == "generate" and self.prompts is None:
            raise ValueError("meshes.source=generate needs a prompts stage (prompts.concepts)")
        if self.evaluate is not None and self.train is None:
            raise ValueError("an evaluate stage needs a train stage (its suite evaluates the trained run)")
        return self

    def python_exe(self) -> str:
        return str(self.python)


def _resolve(base: Path, path: Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _absolute_paths(exp: Experiment, base: Path) -> Experiment:
    """Paths relative to the experiment file made absolute, so the jobs' working folder does not matter."""
    exp.dir = _resolve(Path.cwd(), exp.dir or Path("runs") / exp.name)
    exp.python = _resolve(Path.cwd(), exp.python) if exp.python else Path(sys.executable)
    exp.workdir = _resolve(base, exp.workdir) or Path.cwd().resolve()
    if exp.prompts:
        exp.prompts.concepts = _resolve(base, exp.prompts.concepts)
    if exp.meshes.path is not None:
        exp.meshes.path = _resolve(base, exp.meshes.path)
    if exp.render.lighting not in ("studio", "albedo"):
        exp.render.lighting = str(_resolve(base, Path(exp.render.lighting)))
    if exp.train:
        exp.train.config = _resolve(base, exp.train.config)
    if exp.evaluate:
        exp.evaluate.suite = _resolve(base, exp.evaluate.suite)
    return exp


def parse_experiment(raw: dict, base: Path) -> Experiment:
    """Validate a mapping (unknown keys name the closest valid one) into an Experiment with absolute paths."""
    problems = unknown_keys(raw, Experiment)
    if problems:
        raise ExperimentError("experiment problems:\n  - " + "\n  - ".join(problems))
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as exc:
        lines = validation_problems(exc, root="experiment")
        raise ExperimentError("experiment problems:\n  - " + "\n  - ".join(lines)) from None
    return _absolute_paths(exp, base)


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file (schema only; `check_experiment` reads the disk)."""
    path = Path(path)
    return parse_experiment(read_yaml_mapping(path, "experiment file", ExperimentError), path.resolve().parent)


def check_experiment(exp: Experiment) -> None:
    """Every problem findable before submitting: input files, render settings, the train config as `mvtune train`
    reads it, the evaluation suite. Raises ExperimentError listing all of them."""
    from mvtune.pipeline.stages import evaluate_overrides, train_overrides

    problems = []
    if exp.prompts and not exp.prompts.concepts.is_file():
        problems.append(f"prompts.concepts {exp.prompts.concepts} does not exist; write a concepts YAML")
    if exp.meshes.source == "import" and not exp.meshes.path.is_dir():
        problems.append(f"meshes.path {exp.meshes.path} is not a folder of meshes")
    if not exp.python.is_file():
        problems.append(f"python {exp.python} does not exist; point it at the interpreter that has mvtune installed")
    problems += _render_problems(exp)
    if exp.train:
        problems += _train_problems(exp, train_overrides(exp, slurm=False))
    if exp.evaluate:
        problems += _suite_problems(exp.evaluate.suite, evaluate_overrides(exp))
    if problems:
        raise ExperimentError("experiment problems:\n  - " + "\n  - ".join(problems))


def _render_problems(exp: Experiment) -> list[str]:
    from mvtune.render.dataset import RenderConfig

    settings = exp.render.model_dump(exclude={"shards"})
    try:
        RenderConfig(input=exp.dir / "meshes", out_dir=exp.dir / "dataset", **settings)
    except ValidationError as exc:
        return validation_problems(exc, prefix="render.")
    return []


def _train_problems(exp: Experiment, overrides: list[str]) -> list[str]:
    from mvtune.train.config import TrainConfigError, load_config

    if not exp.train.config.is_file():
        return [f"train.config {exp.train.config} does not exist; write a `mvtune train` config"]
    try:
        cfg = load_config(exp.train.config, overrides)
    except TrainConfigError as exc:
        return [f"train ({exp.train.config}): {exc}"]
    problems = []
    for value, key in ((cfg.model.vae, "model.vae"), (cfg.model.adapter, "model.adapter"), (cfg.prior.root, "prior.root")):
        if value is not None and not Path(value).exists():
            problems.append(f"train {key} {value} does not exist")
    base = cfg.model.base
    if base != "tiny" and not (Path(base) / "model_index.json").is_file():
        problems.append(f"train model.base {base!r} is not a local diffusers SDXL folder (no model_index.json)")
    return problems


def _suite_problems(suite: Path, overrides: list[str]) -> list[str]:
    """The suite's schema and overrides, as `mvtune evaluate` reads them; its disk checks wait for the job, since
    the models it compares (the trained adapter) do not exist yet."""
    from mvtune.evaluate.suite import SuiteError, load_suite

    if not suite.is_file():
        return [f"evaluate.suite {suite} does not exist; write an evaluation suite YAML"]
    try:
        load_suite(suite, overrides, check=False)
    except SuiteError as exc:
        return [f"evaluate.suite {suite}: {exc}"]
    return []


def enabled_stages(exp: Experiment) -> list[str]:
    """The stages this experiment runs, in order."""
    on = {
        "prompts": exp.prompts is not None,
        "meshes": True,
        "render": True,
        "merge": exp.render.shards > 1,
        "split": True,
        "validate": True,
        "cache": exp.cache is not None,
        "train": exp.train is not None,
        "cells": exp.evaluate is not None and exp.evaluate.shards > 1,
        "evaluate": exp.evaluate is not None,
        "report": True,
    }
    return [s for s in STAGE_ORDER if on[s]]


def dump_experiment(exp: Experiment) -> str:
    """The resolved experiment (absolute paths) as YAML: the record kept in the experiment folder."""
    import json

    return yaml.safe_dump(json.loads(exp.model_dump_json()), sort_keys=False)
