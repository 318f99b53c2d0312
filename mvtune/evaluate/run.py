"""`mvtune evaluate`: generate every (model, mesh, prompt, seed) cell of a suite, score it, compare with the reference.

Output folder:

- ``suite.yaml``: the resolved suite; ``file_hashes.json``: cached content hashes of the model files;
- ``cells/<model>/<mesh>/<prompt id>/seed-<k>/``: the six views as a `mvtune generate` run folder (``view_*.png``,
  ``grid.png``, ``generate.json``), ``features.npz`` (CLIP image features per scorer) and ``cell.json`` (scores),
  written last: a cell is done when its ``cell.json`` carries the cell's key;
- ``cells.jsonl`` (every done cell), ``summary.json`` (every number the report shows), ``errors.jsonl``,
  ``report.html`` + ``assets/``.

A cell's key hashes the model files' contents, the mesh bytes, the prompt, the seed and the sampling settings,
so a rerun (after a crash, a kill -9, or with more seeds) does only the cells it lacks and changed weights are
never mistaken for done. Every model samples a cell from the same initial latents (drawn from the seed alone),
which makes each (mesh, seed) a paired comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mvtune.evaluate.stats import bootstrap_interval, paired_units, verdict
from mvtune.evaluate.suite import (
    GENERIC,
    MeshItem,
    ModelEntry,
    PromptItem,
    Suite,
    SuiteError,
    check_suite,
    dump_suite,
    scorer_names,
)
from mvtune.shards import Shard, shard_positions, shard_suffix
from mvtune.storage import atomic_write, sha256_file, write_json

log = logging.getLogger(__name__)

CELLS = "cells.jsonl"
SUMMARY = "summary.json"
ERRORS = "errors.jsonl"
CELL_RECORD = "cell.json"
FEATURES = "features.npz"
HASHES = "file_hashes.json"
GROUND_TRUTH = "ground_truth"  # ground_truth/<mesh id>.npz: CLIP features of the dataset object's renders
ALL_CONCEPTS = "all concepts"
#: Ground-truth views are composited on the grey the model is trained and sampled with (data.background "gray").
GT_BACKGROUND = 0.5

Progress = Callable[[int, int, str], None]


class EvaluateError(Exception):
    """The evaluation cannot run at all (the output folder, the scorers); single cells fail into errors.jsonl."""


@dataclass(frozen=True)
class Cell:
    model: ModelEntry
    mesh: MeshItem
    prompt: PromptItem
    seed: int
    key: str
    dir: Path

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.mesh.id}/{self.prompt.id}/seed-{self.seed}"

    def ident(self) -> dict:
        return {"model": self.model.name, "mesh": self.mesh.id, "prompt_id": self.prompt.id, "seed": self.seed}


# ---------------------------------------------------------------------------------------------------------------
# Keys: what decides a cell's bytes.


class FileHashes:
    """Content hashes of model files and folders, cached by (size, mtime) so a 7 GB base is read once."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.cache: dict = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.cache = {}

    def file(self, path: Path) -> str:
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        entry = self.cache.get(str(path.resolve()))
        if entry and entry["stamp"] == stamp:
            return entry["sha256"]
        digest = sha256_file(path)
        self.cache[str(path.resolve())] = {"stamp": stamp, "sha256": digest}
        return digest

    def any(self, path: Path) -> str:
        path = Path(path)
        if path.is_file():
            return self.file(path)
        parts = [
            f"{p.relative_to(path).as_posix()}:{self.file(p)}"
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def save(self) -> None:
        write_json(self.path, self.cache)


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def model_key(model: ModelEntry, device: str, hashes: FileHashes) -> str:
    """Weights by content (not by path) plus every loading setting; the name does not matter."""
    config = model.model_dump(mode="json", exclude={"name"})
    config["device"] = device
    for field in ("base_model", "adapter", "vae", "lora"):
        if config.get(field) is not None:
            config[field] = hashes.any(Path(config[field]))
    for lora in config.get("loras") or []:
        lora["path"] = hashes.any(Path(lora["path"]))
    return _digest(config)


def cell_key(model_digest: str, mesh_digest: str, mesh: MeshItem, prompt: str, seed: int, sampling: dict) -> str:
    return _digest({"model": model_digest, "mesh": mesh_digest, "up": mesh.up, "prompt": prompt, "seed": seed,
                    "sampling": sampling})


def plan_cells(suite: Suite, out: Path, hashes: FileHashes) -> list[Cell]:
    """Every (model, mesh, prompt, seed) cell in report order."""
    sampling = suite.sampling.model_dump(mode="json")
    meshes = suite.mesh_items()
    mesh_digests = {m.id: hashes.file(m.path) for m in meshes}
    cells = []
    for model in suite.models:
        digest = model_key(model, suite.model_device(model), hashes)
        for mesh in meshes:
            for prompt in suite.prompt_rows():
                for seed in suite.seeds:
                    key = cell_key(digest, mesh_digests[mesh.id], mesh, prompt.prompt, seed, sampling)
                    folder = out / "cells" / model.name / mesh.id / prompt.id / f"seed-{seed}"
                    cells.append(Cell(model, mesh, prompt, seed, key, folder))
    return cells


def read_cell(cell: Cell) -> dict | None:
    """The cell's record if it is done with this key, else None."""
    try:
        record = json.loads((cell.dir / CELL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == cell.key else None


def initial_latents(seed: int, resolution: int, channels: int = 4, views: int = 6):
    """The starting noise of every model for this seed: drawn on the CPU, so it is the same on any device."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((views, channels, resolution // 8, resolution // 8), generator=generator, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Generation and scoring of one cell.


class _Workspace:
    """What cells share: the renderer, condition maps and ground-truth features per mesh, loaded scorers."""

    def __init__(self, suite: Suite, scorers: dict, out: Path):
        from mvtune.render import Renderer

        self.suite = suite
        self.out = out
        self.scorers = scorers
        self.renderer = Renderer(suite.sampling.resolution, lighting="albedo", msaa=0)
        self._meshes: dict[str, tuple] = {}
        self._gt: dict[str, dict] = {}

    def mesh(self, item: MeshItem):
        """(normalised mesh, condition maps) of a mesh, computed once; a failure is remembered and re-raised."""
        from mvtune.generate.conditions import condition_maps, load_normalized

        if item.id not in self._meshes:
            try:
                mesh = load_normalized(item.path, up=item.up)
                if mesh.num_faces == 0:
                    raise EvaluateError(f"mesh {item.path} has no faces")
                self._meshes[item.id] = (mesh, condition_maps(mesh, self.suite.sampling.resolution, "tg2mv",
                                                              self.renderer))
            except Exception as exc:
                self._meshes[item.id] = exc
        result = self._meshes[item.id]
        if isinstance(result, Exception):
            raise EvaluateError(f"mesh {item.id} ({item.path}): {type(result).__name__}: {result}")
        return result

    def ground_truth(self, item: MeshItem) -> dict | None:
        """{scorer: (6, D) features} of the dataset object's tg2mv renders, or None without ground truth."""
        if item.ground_truth is None or not self.scorers:
            return None
        if item.id not in self._gt:
            views = ground_truth_views(item.ground_truth, self.suite.sampling.resolution)
            feats = {name: np.asarray(s.image_features(views), dtype=np.float32) for name, s in self.scorers.items()}
            (self.out / GROUND_TRUTH).mkdir(exist_ok=True)
            atomic_write(self.out / GROUND_TRUTH / f"{item.id}.npz", lambda tmp: _save_npz(tmp, feats))
            self._gt[item.id] = feats
        return self._gt[item.id]

    def release(self) -> None:
        self.renderer.release()


def ground_truth_views(object_dir: Path, resolution: int) -> list[np.ndarray]:
    """The object's renders at the tg2mv poses, on the sampling background and resolution (uint8 RGB)."""
    from PIL import Image

    from mvtune.cameras import variant_views

    views = []
    for index in variant_views("tg2mv").ortho10_indices:
        path = Path(object_dir) / f"color_{index}.webp"
        try:
            rgba = np.asarray(Image.open(path).convert("RGBA").resize((resolution, resolution), Image.LANCZOS))
        except OSError as exc:
            raise EvaluateError(f"ground-truth view {path} cannot be read: {exc}") from exc
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * GT_BACKGROUND * (1.0 - alpha)
        views.append(rgb.round().clip(0, 255).astype(np.uint8))
    return views


def generate_cell(cell: Cell, pipe, work: _Workspace) -> list[np.ndarray]:
    """Sample the cell's six views from the seed's shared latents into a generate-style run folder."""
    from mvtune.evaluate.score import read_views
    from mvtune.generate.run import write_views

    try:
        record = json.loads((cell.dir / "generate.json").read_text(encoding="utf-8"))
        if record.get("cell_key") == cell.key:
            return read_views(cell.dir)  # sampled before a crash, not yet scored
    except (OSError, ValueError):
        pass
    import torch

    sampling = work.suite.sampling
    mesh, cond = work.mesh(cell.mesh)
    latents = initial_latents(cell.seed, sampling.resolution, pipe.unet.config.in_channels, len(cond.views))
    images = pipe(
        cell.prompt.prompt,
        torch.from_numpy(cond.maps),
        num_inference_steps=sampling.steps,
        guidance_scale=sampling.guidance,
        negative_prompt=sampling.negative_prompt,
        mv_scale=sampling.mv_scale,
        control_conditioning_scale=sampling.control_scale,
        latents=latents,
        output_type="np",
    )
    views = [(im * 255.0).round().astype(np.uint8) for im in images]
    cell.dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "cell_key": cell.key,
        "prompt": cell.prompt.prompt,
        "seed": cell.seed,
        "model": cell.model.name,
        "sampling": sampling.model_dump(mode="json"),
        "latents": "torch.randn on the CPU from the seed (shared by every model)",
        "files": {"grid": "grid.png"},
    }
    write_views(cell.dir, cell.mesh.path, views, up=cell.mesh.up, extra=extra, mesh=mesh)
    return views


def score_cell(cell: Cell, views: list[np.ndarray], work: _Workspace) -> dict:
    """Everything `mvtune score` gives, attribute presence and CLIP-I to the ground truth; writes the record."""
    from mvtune.evaluate.metrics import clip_i
    from mvtune.evaluate.score import score_views
    from mvtune.models.clip import attribute_presence

    scores = score_views(cell.mesh.path, views, prompt=cell.prompt.prompt, scorers=list(work.scorers.values()),
                         up=cell.mesh.up, renderer=work.renderer)
    features = {name: np.asarray(s.image_features(views), dtype=np.float32) for name, s in work.scorers.items()}
    attributes = {
        name: {attr: float(attribute_presence(s, views, positive, contrast))
               for attr, positive, contrast in cell.prompt.attributes}
        for name, s in work.scorers.items()
    } if cell.prompt.attributes else {}
    gt = work.ground_truth(cell.mesh)
    clip_to_gt = {name: [float(v) for v in clip_i(features[name], gt[name])] for name in features} if gt else {}

    record = {
        **cell.ident(),
        "key": cell.key,
        "group": cell.prompt.group,
        "prompt": cell.prompt.prompt,
        "dir": cell.dir.as_posix(),
        "scores": scores,
        "attributes": attributes,
        "clip_i": clip_to_gt,
        "metrics": cell_metrics(scores, attributes, clip_to_gt, work.suite.attribute_threshold),
    }
    atomic_write(cell.dir / FEATURES, lambda tmp: _save_npz(tmp, features))
    write_json(cell.dir / CELL_RECORD, record)
    return record


def _save_npz(tmp: str, arrays: dict) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def cell_metrics(scores: dict, attributes: dict, clip_to_gt: dict, threshold: float) -> dict:
    """One flat {metric: value} per cell; the names are what summary.json and the report use."""
    metrics = {
        "consistency_mae": _finite(scores.get("consistency", {}).get("mae")),
        "consistency_psnr": _finite(scores.get("consistency", {}).get("psnr")),
        "silhouette_iou": _finite(scores.get("silhouette", {}).get("mean")),
    }
    for name, values in (scores.get("clip_t") or {}).items():
        metrics[f"clip_t[{name}]"] = _finite(values.get("mean"))
    for name, per_attr in attributes.items():
        if per_attr:
            metrics[f"attribute_presence[{name}]"] = float(np.mean(list(per_attr.values())))
            metrics[f"attribute_rate[{name}]"] = float(np.mean([v > threshold for v in per_attr.values()]))
        for attr, value in per_attr.items():
            metrics[f"attribute[{name}]:{attr}"] = value
    for name, values in clip_to_gt.items():
        metrics[f"clip_i[{name}]"] = float(np.mean(values))
    return {k: v for k, v in metrics.items() if v is not None}


#: Metrics where a smaller number is better; every other metric is better when larger.
LOWER_IS_BETTER = ("consistency_mae", "kid")


def higher_is_better(metric: str) -> bool:
    return not metric.startswith(LOWER_IS_BETTER)


# ---------------------------------------------------------------------------------------------------------------
# The run.


def evaluate_suite(suite: Suite, out_dir: Path, *, run_dir: Path | None = None, on_progress: Progress | None = None,
                   report: bool = True) -> dict:
    """Generate and score the missing cells, then compare, write summary.json and the report; returns the summary.

    A failing cell (a mesh that does not load, a model that does not load, a scorer that fails) is recorded in
    errors.jsonl and the rest finish; `summary["errors"]` counts them.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    cells, records = _open(suite, out, clean=True)
    todo = [c for c in cells if c.dir not in records]
    errors: list[dict] = []
    done = len(cells) - len(todo)
    if on_progress:
        on_progress(done, len(cells), "")
    if todo:
        done = _run_cells(suite, todo, records, errors, done, len(cells), on_progress, out)

    lines = "".join(json.dumps(records[c.dir]) + "\n" for c in cells if c.dir in records)
    atomic_write(out / CELLS, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    atomic_write(out / ERRORS, lambda tmp: Path(tmp).write_text("".join(json.dumps(e) + "\n" for e in errors),
                                                               encoding="utf-8"))
    summary = summarize(suite, cells, records, out)
    summary["counts"] = {
        "cells": len(cells),
        "done": len(records),
        "generated": len(todo) - len(errors),
        "skipped": len(cells) - len(todo),
        "failed": len(errors),
    }
    summary["errors"] = len(errors)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    if report:
        from mvtune.evaluate.report import write_report

        summary["report"] = write_report(summary, [records[c.dir] for c in cells if c.dir in records], out,
                                         run_dir=run_dir)
    write_json(out / SUMMARY, summary)
    return summary


def evaluate_cells(suite: Suite, out_dir: Path, shard: Shard, *, on_progress: Progress | None = None) -> dict:
    """Generate and score the missing cells of one shard (a Slurm array task); returns its counts.

    Shards take cells by position in the suite's fixed cell order, so they never overlap; they write only their
    cells and `errors.shard-i-of-n.jsonl`. The unsharded `evaluate_suite` afterwards finds every cell done and
    compares them (retrying any that failed).
    """
    out = Path(out_dir)
    cells, records = _open(suite, out, clean=False)  # another shard's temp files may be in flight
    mine = [cells[k] for k in shard_positions(len(cells), shard)]
    todo = [c for c in mine if c.dir not in records]
    errors: list[dict] = []
    if on_progress:
        on_progress(len(mine) - len(todo), len(mine), "")
    if todo:
        _run_cells(suite, todo, records, errors, len(mine) - len(todo), len(mine), on_progress, out)
    text = "".join(json.dumps(e) + "\n" for e in errors)
    atomic_write(out / f"errors{shard_suffix(shard)}.jsonl", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return {"shard": list(shard), "cells": len(mine), "generated": len(todo) - len(errors),
            "skipped": len(mine) - len(todo), "failed": len(errors)}


def _open(suite: Suite, out: Path, clean: bool) -> tuple[list[Cell], dict]:
    """The suite's cells and the records of those already done, in an output folder made ready for more."""
    check_suite(suite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluateError(f"cannot create output folder {out}: {exc}") from exc
    if clean:
        for leftover in out.rglob(".*.tmp"):  # temp files of a run killed mid-write (storage.atomic_write)
            leftover.unlink(missing_ok=True)
    atomic_write(out / "suite.yaml", lambda tmp: Path(tmp).write_text(dump_suite(suite), encoding="utf-8"))
    hashes = FileHashes(out / HASHES)
    cells = plan_cells(suite, out, hashes)
    hashes.save()
    records: dict = {}
    for cell in cells:
        record = read_cell(cell)
        if record is not None:
            records[cell.dir] = record
    return cells, records


def _load_scorers(suite: Suite, device: str) -> dict:
    from mvtune.models.clip import load_scorer

    try:
        return {name: load_scorer(spec, device=device) for name, spec in zip(scorer_names(suite), suite.scorers)}
    except Exception as exc:
        raise EvaluateError(f"scorers: {exc}") from exc


def _run_cells(suite, todo, records, errors, done, total, on_progress, out: Path) -> int:
    import torch

    from mvtune.generate.run import ModelConfig, load_pipeline

    device = suite.model_device(suite.reference)
    work = _Workspace(suite, _load_scorers(suite, device), out)

    def failed(cell: Cell, exc: Exception) -> None:
        errors.append({**cell.ident(), "prompt": cell.prompt.prompt, "dir": cell.dir.as_posix(),
                       "error": f"{type(exc).__name__}: {exc}"})
        log.warning("%s failed: %s", cell.label, exc)

    try:
        for model in suite.models:
            cells = [c for c in todo if c.model.name == model.name]
            if not cells:
                continue
            config = ModelConfig.model_validate(
                {**model.model_dump(exclude={"name"}), "device": suite.model_device(model)}
            )
            try:
                # Layers the files do not provide (no adapter: a fresh MV branch) are initialised from the global
                # RNG: seed it, so such a model is the same model in every process and a resumed run matches.
                torch.manual_seed(0)
                pipe = load_pipeline(config)  # once per model, for all its cells
            except Exception as exc:
                problem = SuiteError(f"model {model.name!r} does not load: {exc}")
                for cell in cells:
                    failed(cell, problem)
                done += len(cells)
                if on_progress:
                    on_progress(done, total, f"{model.name}: does not load")
                continue
            for cell in cells:
                try:
                    records[cell.dir] = score_cell(cell, generate_cell(cell, pipe, work), work)
                except Exception as exc:  # one bad mesh or cell must not stop the evaluation
                    failed(cell, exc)
                done += 1
                if on_progress:
                    on_progress(done, total, cell.label)
            del pipe
    finally:
        work.release()
    return done


# ---------------------------------------------------------------------------------------------------------------
# Aggregation and comparison.


def _groups(prompts: list[PromptItem]) -> list[str]:
    concepts = list(dict.fromkeys(p.group for p in prompts if p.group != GENERIC))
    groups = concepts + ([ALL_CONCEPTS] if len(concepts) > 1 else [])
    return groups + ([GENERIC] if any(p.group == GENERIC for p in prompts) else [])


def _in_group(record: dict, group: str) -> bool:
    return record["group"] == group or (group == ALL_CONCEPTS and record["group"] != GENERIC)


def unit_values(records: list[dict], group: str, metric: str) -> dict:
    """{(mesh, seed): mean of the metric over the group's prompts} for one model's records."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if _in_group(r, group) and metric in r["metrics"]:
            acc[(r["mesh"], r["seed"])].append(r["metrics"][metric])
    return {unit: float(np.mean(v)) for unit, v in acc.items()}


def _features(record: dict) -> dict:
    try:
        with np.load(Path(record["dir"]) / FEATURES) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError):
        return {}


def diversity_values(records: list[dict], group: str, scorer: str) -> dict:
    """{mesh: mean over the group's prompts of the seed-to-seed diversity (per view, averaged over views)}."""
    from mvtune.evaluate.metrics import diversity

    by_prompt: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for r in records:
        if _in_group(r, group):
            feats = _features(r).get(scorer)
            if feats is not None:
                by_prompt[(r["mesh"], r["prompt_id"])].append(feats)
    per_mesh: dict[str, list[float]] = defaultdict(list)
    for (mesh, _), seeds in by_prompt.items():
        if len(seeds) >= 2:
            stacked = np.stack(seeds)  # (seeds, views, D)
            per_mesh[mesh].append(float(np.mean([diversity(stacked[:, v]) for v in range(stacked.shape[1])])))
    return {mesh: float(np.mean(v)) for mesh, v in per_mesh.items()}


def _kid(records: list[dict], scorer: str, out: Path) -> dict | None:
    """KID on CLIP image features between a model's views and the ground-truth views of the same objects."""
    from mvtune.evaluate.metrics import kid

    generated, real = [], {}
    for r in records:
        path = out / GROUND_TRUTH / f"{r['mesh']}.npz"
        feats = _features(r).get(scorer)
        if feats is None or not path.is_file():
            continue
        if r["mesh"] not in real:
            with np.load(path) as data:
                real[r["mesh"]] = data[scorer] if scorer in data.files else None
        if real[r["mesh"]] is not None:
            generated.append(feats)
    real_feats = [f for f in real.values() if f is not None]
    if not generated or not real_feats:
        return None
    a, b = np.concatenate(generated), np.concatenate(real_feats)
    mean, std = kid(a, b)
    return {"mean": float(mean), "std": float(std), "n_generated": int(len(a)), "n_real": int(len(b))}


def _pair_matrix(records: list[dict]) -> list[list[float | None]] | None:
    """Mean consistency MAE per ordered view pair (6 x 6; the diagonal is empty)."""
    from mvtune.cameras import variant_views

    names = list(variant_views("tg2mv").names)
    acc = defaultdict(list)
    for r in records:
        for pair in (r["scores"].get("consistency") or {}).get("pairs") or []:
            src, dst = (names.index(p) if isinstance(p, str) and p in names else int(p)
                        for p in (pair["src"], pair["dst"]))
            if _finite(pair.get("mae")) is not None:
                acc[(src, dst)].append(float(pair["mae"]))
    if not acc:
        return None
    return [[float(np.mean(acc[(i, j)])) if acc.get((i, j)) else None for j in range(6)] for i in range(6)]


def summarize(suite: Suite, cells: list[Cell], records: dict[Path, dict], out: Path) -> dict:
    """Means per model and group, paired comparisons with bootstrap intervals and verdicts, KID, diversity."""
    boot = suite.bootstrap
    prompts = suite.prompt_rows()
    groups = _groups(prompts)
    scorers = scorer_names(suite)
    by_model = {m.name: [records[c.dir] for c in cells if c.model.name == m.name and c.dir in records]
                for m in suite.models}
    ref = suite.reference.name

    metrics_of_group = {g: sorted({k for rs in by_model.values() for r in rs if _in_group(r, g) for k in r["metrics"]})
                        for g in groups}
    means: dict = {}
    diversity: dict = {}
    for name, recs in by_model.items():
        means[name] = {}
        diversity[name] = {}
        for g in groups:
            means[name][g] = {}
            for metric in metrics_of_group[g]:
                units = unit_values(recs, g, metric)
                if units:
                    means[name][g][metric] = {"mean": float(np.mean(list(units.values()))), "n": len(units)}
            diversity[name][g] = {s: diversity_values(recs, g, s) for s in scorers}
            for s in scorers:
                values = diversity[name][g][s]
                if values:
                    means[name][g][f"diversity[{s}]"] = {"mean": float(np.mean(list(values.values()))),
                                                         "n": len(values)}

    comparisons = []
    for model in suite.models[1:]:
        for g in groups:
            for metric in metrics_of_group[g] + [f"diversity[{s}]" for s in scorers]:
                if metric.startswith("diversity["):
                    s = metric[len("diversity["):-1]
                    a, b = diversity[model.name][g][s], diversity[ref][g][s]
                else:
                    a, b = unit_values(by_model[model.name], g, metric), unit_values(by_model[ref], g, metric)
                diffs = paired_units(a, b)
                if not diffs:
                    continue
                interval = bootstrap_interval(diffs, boot.samples, boot.confidence, boot.seed)
                comparisons.append({"model": model.name, "group": g, "metric": metric, **interval.to_json(),
                                    "verdict": verdict(interval, higher_is_better(metric))})

    forgetting = {}
    if scorers:
        metric = f"clip_t[{scorers[0]}]"
        for c in comparisons:
            if c["group"] == GENERIC and c["metric"] == metric:
                forgetting[c["model"]] = {
                    "metric": metric,
                    "score": None if c["diff"] is None else -c["diff"],
                    "low": None if c["high"] is None else -c["high"],
                    "high": None if c["low"] is None else -c["low"],
                    "n": c["n"],
                    "verdict": {"worse": "forgets", "better": "improves"}.get(c["verdict"], c["verdict"]),
                }

    attributes = {}
    concepts = suite.concepts()
    for name, recs in by_model.items():
        attributes[name] = {}
        for g in groups:
            if g in (GENERIC, ALL_CONCEPTS) or concepts is None:
                continue
            per_scorer = {}
            for s in scorers:
                row = {}
                for attr, _, _ in next((p.attributes for p in prompts if p.group == g), ()):
                    key = f"attribute[{s}]:{attr}"
                    if key in means[name][g]:
                        row[attr] = means[name][g][key]["mean"]
                if f"attribute_rate[{s}]" in means[name][g]:
                    row["rate"] = means[name][g][f"attribute_rate[{s}]"]["mean"]
                per_scorer[s] = row
            attributes[name][g] = per_scorer

    return {
        "suite": suite.name,
        "out_dir": str(out),
        "reference": ref,
        "models": [{"name": m.name, "base_model": str(m.base_model), "adapter": None if m.adapter is None
                    else str(m.adapter), "device": suite.model_device(m)} for m in suite.models],
        "meshes": [{"id": m.id, "path": str(m.path), "ground_truth": m.ground_truth is not None}
                   for m in suite.mesh_items()],
        "prompts": [{"id": p.id, "group": p.group, "prompt": p.prompt} for p in prompts],
        "seeds": list(suite.seeds),
        "scorers": scorers,
        "groups": groups,
        "confidence": boot.confidence,
        "grids_per_concept": suite.grids_per_concept,
        "means": means,
        "comparisons": comparisons,
        "forgetting": forgetting,
        "attributes": attributes,
        "kid": {name: {s: _kid(recs, s, out) for s in scorers} for name, recs in by_model.items()},
        "consistency_pairs": {name: _pair_matrix(recs) for name, recs in by_model.items()},
    }


def headline(summary: dict) -> list[dict]:
    """The rows the terminal prints: per model and group, CLIP-T, attribute rate and consistency (first scorer)."""
    scorer = summary["scorers"][0] if summary["scorers"] else None
    wanted = ["consistency_mae"] + ([f"clip_t[{scorer}]", f"attribute_rate[{scorer}]", f"clip_i[{scorer}]"]
                                    if scorer else [])
    return [c for c in summary["comparisons"] if c["metric"] in wanted]
