"""Each stage of an experiment as the command line of an existing mvtune command, plus what its done marker
records and how its result is judged.

Executors only run these command lines (locally, or inside a Slurm batch script), so a stage behaves the same
everywhere and every step can be rerun by hand. An array stage's command holds SHARD where the shard index goes
(`--shard SHARD/N`, SHARD in 0..N-1); the Slurm script puts $SLURM_ARRAY_TASK_ID there.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mvtune.pipeline.experiment import Experiment, enabled_stages

SHARD = "@SHARD@"

#: Folders of an experiment (relative to its dir).
MESHES, PROMPTS, DATASET, CACHE, TRAIN, EVALUATE, REPORT = (
    "meshes", "prompts", "dataset", "cache", "train", "evaluate", "report")
#: How the renderer words a mesh whose files it could not read (errors.jsonl), as opposed to a bad mesh.
UNREADABLE = "cannot read source"
RUN_NAME = "run"  # output.name of the training run: fixed, so a requeued or rerun job finds its folder


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]  # may contain SHARD
    shards: int = 1  # > 1: a Slurm array, one task per shard
    ok_codes: tuple[int, ...] = (0,)  # exit codes that count as success (render: 1 = some meshes only reported)
    srun: bool = False  # launched through srun (DDP ranks, Slurm's signals reach the processes)
    outputs: Callable[[int | None], list[Path]] = field(default=lambda shard: [])  # recorded with sizes in the marker
    check: Callable[[int | None], str | None] = field(default=lambda shard: None)  # after success: why it failed

    @property
    def array(self) -> bool:
        return self.shards > 1

    def shard_ids(self) -> list[int | None]:
        return list(range(self.shards)) if self.array else [None]

    def command(self, shard: int | None = None) -> list[str]:
        return [a.replace(SHARD, str(shard)) for a in self.argv] if shard is not None else list(self.argv)

    def shell(self) -> str:
        """The command line as a shell reads it, SHARD as $SHARD (the batch scripts' line)."""
        return " ".join(shlex.quote(a) for a in self.argv).replace(SHARD, "$SHARD")

    def marker_command(self, shard: int | None) -> str:
        """What a done marker must match: the exact command this shard ran."""
        return " ".join(shlex.quote(a) for a in self.command(shard))


def _files(*paths: Path) -> Callable[[int | None], list[Path]]:
    return lambda shard: [p for p in paths if p.is_file()]


def train_run_dir(exp: Experiment) -> Path:
    return exp.dir / TRAIN / RUN_NAME


def train_overrides(exp: Experiment, slurm: bool) -> list[str]:
    """The user's overrides, then the pipeline's: the dataset, the run folder and, on Slurm, the DDP layout."""
    ours = [f"data.root={exp.dir / DATASET}", f"output.dir={exp.dir / TRAIN}", f"output.name={RUN_NAME}"]
    if slurm:
        res = exp.slurm.for_stage("train")
        if res.tasks_per_node:
            ours.append(f"trainer.devices={res.tasks_per_node}")
        if res.nodes:
            ours.append(f"trainer.num_nodes={res.nodes}")
    return list(exp.train.overrides) + ours


def evaluate_overrides(exp: Experiment) -> list[str]:
    """The suite overrides with {run}, {dataset} and {dir} filled in (e.g. the trained adapter's path)."""
    values = {"{run}": str(train_run_dir(exp)), "{dataset}": str(exp.dir / DATASET), "{dir}": str(exp.dir)}
    out = []
    for item in exp.evaluate.overrides:
        for key, value in values.items():
            item = item.replace(key, value)
        out.append(item)
    return out


def _train_check(exp: Experiment) -> Callable[[int | None], str | None]:
    def check(shard: int | None) -> str | None:
        path = train_run_dir(exp) / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return f"training wrote no readable {path}: {exc}"
        if summary.get("status") != "finished":
            return f"training status {summary.get('status')!r} at step {summary.get('global_step')} ({path})"
        return None

    return check


def _shard_files(dataset: Path, shards: int) -> Callable[[int | None], list[Path]]:
    """A render shard's own index files (the merge reads them); deleting them makes the shard rerun."""

    def files(shard: int | None) -> list[Path]:
        from mvtune.render.dataset import shard_dir

        return sorted(p for p in shard_dir(dataset, (shard, shards)).glob("*") if p.is_file())

    return files


def _render_check(dataset: Path, shards: int) -> Callable[[int | None], str | None]:
    """A mesh that cannot be read (a file system problem) fails its shard; a mesh that was read but is bad is
    only reported in errors.jsonl (the render's exit code 1) and the shard counts as done."""

    def check(shard: int | None) -> str | None:
        from mvtune.render.dataset import ERRORS, shard_dir

        path = dataset / ERRORS if shard is None else shard_dir(dataset, (shard, shards)) / ERRORS
        try:
            errors = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as exc:
            return f"cannot read the render's {path}: {exc}"
        unreadable = [e for e in errors if str(e.get("reason", "")).startswith(UNREADABLE)]
        if unreadable:
            first = unreadable[0]
            return (f"{len(unreadable)} input mesh(es) could not be read, e.g. {first['id']} ({first['source']}): "
                    f"{first['reason']}; fix the files and rerun the experiment")
        return None

    return check


def build_stages(exp: Experiment, slurm: bool = False) -> list[Stage]:
    """The experiment's stages, in order, with their command lines."""
    mv = [exp.python_exe(), "-m", "mvtune.cli"]
    d = exp.dir
    dataset = d / DATASET
    built: dict[str, Stage] = {}
    prompts_file = d / PROMPTS / "prompts.jsonl"
    if exp.prompts:
        p = exp.prompts
        built["prompts"] = Stage("prompts", mv + ["prompts", str(p.concepts), "--count", str(p.count), "--seed",
                                                  str(p.seed), "--out", str(prompts_file)], outputs=_files(prompts_file))
    m = exp.meshes
    if m.source == "samples":
        argv = mv + ["samples", str(d / MESHES)] + (["--count", str(m.count)] if m.count else [])
        built["meshes"] = Stage("meshes", argv)
    elif m.source == "generate":
        argv = mv + ["meshes", "generate", "--backend", m.backend, "--prompts", str(prompts_file), "--out",
                     str(d / MESHES), "--seed", str(m.seed)]
        argv += ["--timeout", str(m.timeout)] if m.timeout else []
        argv += ["--shard", f"{SHARD}/{m.shards}"] if m.shards > 1 else []
        built["meshes"] = Stage("meshes", argv, shards=m.shards)
    else:
        built["meshes"] = Stage("meshes", mv + ["meshes", "import", str(m.path), "--source", m.source_name,
                                                "--licence", m.licence, "--out", str(d / MESHES)])
    r = exp.render
    argv = mv + ["render", str(d / MESHES), str(dataset), "--layout", r.layout, "--resolution", str(r.resolution),
                 "--lighting", r.lighting, "--up", r.up, "--seed", str(r.seed), "--workers", str(r.workers)]
    argv += ["--position"] if r.position else []
    argv += ["--shard", f"{SHARD}/{r.shards}"] if r.shards > 1 else []
    index = [dataset / n for n in ("scene_list.json", "captions.json", "manifest.json")]
    built["render"] = Stage("render", argv, shards=r.shards, ok_codes=(0, 1),
                            outputs=_files(*index) if r.shards == 1 else _shard_files(dataset, r.shards),
                            check=_render_check(dataset, r.shards))
    built["merge"] = Stage("merge", mv + ["dataset", "merge", str(dataset)], ok_codes=(0, 1), outputs=_files(*index))
    s = exp.split
    built["split"] = Stage("split", mv + ["dataset", "split", str(dataset), "--val", str(s.val), "--test",
                                          str(s.test), "--seed", str(s.seed)],
                           outputs=_files(*(dataset / f"split_{n}.json" for n in ("train", "val", "test"))))
    v = exp.validate
    built["validate"] = Stage("validate", mv + ["dataset", "validate", str(dataset), "--variant", v.variant]
                              + ([] if v.pixels else ["--no-pixels"]), outputs=_files(dataset / "validation_report.json"))
    if exp.cache:
        c = exp.cache
        built["cache"] = Stage("cache", mv + ["dataset", "cache", str(dataset), str(d / CACHE), "--variant",
                                              c.variant, "--resolution", str(c.resolution)]
                               + (["--shard", f"{SHARD}/{c.shards}"] if c.shards > 1 else []), shards=c.shards)
    if exp.train:
        run = train_run_dir(exp)
        argv = mv + ["train", str(exp.train.config), "--resume", "auto"] + train_overrides(exp, slurm)
        built["train"] = Stage("train", argv, srun=slurm, outputs=_files(run / "summary.json", run / "config.yaml"),
                               check=_train_check(exp))
    if exp.evaluate:
        e = exp.evaluate
        out = d / EVALUATE
        built["cells"] = Stage("cells", mv + ["evaluate", str(e.suite)] + evaluate_overrides(exp)
                               + ["--out", str(out), "--shard", f"{SHARD}/{e.shards}"], shards=e.shards)
        built["evaluate"] = Stage("evaluate", mv + ["evaluate", str(e.suite)] + evaluate_overrides(exp)
                                  + ["--out", str(out), "--run", str(train_run_dir(exp))],
                                  outputs=_files(out / "summary.json", out / "report.html"))
    built["report"] = Stage("report", mv + ["pipeline", "report", str(d)],
                            outputs=_files(d / REPORT / "index.html", d / REPORT / "report.json"))
    return [built[name] for name in enabled_stages(exp)]


def judge(stage: Stage, shard: int | None, code: int) -> str | None:
    """None when the stage's run counts as a success, else the reason it does not."""
    if code not in stage.ok_codes:
        return f"exit code {code}"
    return stage.check(shard)


def record(exp: Experiment, stage: Stage, shard: int | None, code: int, log: Path | None) -> int:
    """After a stage's command ran: write its done marker or failure record; returns the job's exit code
    (0 on success, else the command's code, or 1 when the code was fine but the output is not)."""
    from mvtune.pipeline import markers

    command = stage.marker_command(shard)
    reason = judge(stage, shard, code)
    if reason is None:
        extra = {"exit_code": code, "log": str(log) if log else None}
        markers.write_done(exp.dir, stage.name, shard, command, stage.outputs(shard), extra)
        return 0
    if code in stage.ok_codes:
        code = 1
    else:
        reason = f"{reason}: {markers.last_error(log)}"
    markers.write_failed(exp.dir, stage.name, shard, command, code, reason, log)
    return code
