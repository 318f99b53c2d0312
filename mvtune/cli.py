"""The `mvtune` command line. Each command validates its options first, then calls into one stage.

Heavy modules (torch, diffusers, the GL renderer) are imported inside the commands that need them, so
`mvtune --help` and the dataset tools start fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
import typer.core
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="mvtune: fine-tune MV-Adapter to texture 3D meshes in new themes.", no_args_is_help=True)
dataset_app = typer.Typer(help="Inspect, validate and split rendered datasets.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
console = Console(stderr=True, soft_wrap=True)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Console filter of normal runs: mvtune's own messages, and only warnings and errors of the libraries
    (Lightning's tips and device lines stay in train.log and under --verbose)."""
    return record.name.split(".")[0] == "mvtune" or record.levelno >= logging.WARNING


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging, and the libraries' notices "
                                      "(Lightning tips, deprecations, diffusers dtype notes).")) -> None:
    # transformers warns at import about optional image processors we never use
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    if not verbose:
        # diffusers prints its notices (e.g. "modules in AutoencoderKL that should be kept in float32") itself
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        # Lightning hints that are not about the user's run (mvtune warns itself about a Slurm job without srun)
        for hint in (".*`srun` command is available on your system", ".*smaller than the logging interval"):
            warnings.filterwarnings("ignore", message=hint)
        handler.addFilter(_quiet_libraries)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler])


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}"),
        console=console,
        transient=False,
    )


class _LazyProgress:
    """A progress bar that appears with its first update, so errors and no-op reruns print no empty bar."""

    def __init__(self, description: str):
        self.description = description
        self.progress: Progress | None = None
        self.task = None

    def update(self, completed: int, total: int | None = None, item: str = "") -> None:
        if self.progress is None:
            self.progress = _progress()
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=total, item="")
        self.progress.update(self.task, completed=completed, total=total, item=item)

    def __enter__(self) -> "_LazyProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _overrides(ctx: typer.Context, example: str) -> list[str]:
    """The extra `key=value` arguments of a command that takes config overrides."""
    bad = [o for o in ctx.args if "=" not in o]
    if bad:
        _fail(f"overrides must look like key=value (e.g. {example}), got {bad}")
    return list(ctx.args)


def _check_variant(variant: str) -> None:
    from mvtune.cameras import VARIANTS

    if variant not in VARIANTS:
        _fail(f"--variant must be one of {sorted(VARIANTS)}, got {variant!r}")


class _DefaultSubcommandGroup(typer.core.TyperGroup):
    """A group whose first argument, when it is not a subcommand, goes to a default one:
    `mvtune prompts FILE ...` samples, `mvtune prompts check FILE` checks."""

    default_command = "sample"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


prompts_app = typer.Typer(
    cls=_DefaultSubcommandGroup, no_args_is_help=True,
    help="Prompt sets from a concepts file, and the protected-IP guard: `mvtune prompts CONCEPTS.yaml --count N "
    "--out prompts.jsonl`, `mvtune prompts check FILE|-`.",
)
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("sample")
def prompts_sample(
    concepts: Path = typer.Argument(..., help="Concepts YAML (subjects, concepts with attribute pools, styles, templates)."),
    count: int = typer.Option(..., min=1, help="Prompts per concept (its fixed prompts first)."),
    out: Path = typer.Option(..., "--out", help="Prompts JSONL to write (one row per prompt)."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed (default: the file's `seed`)."),
    allow_protected: bool = typer.Option(False, help="Keep prompts that name a protected term; the term is recorded in each row's `override`."),
) -> None:
    """Sample N distinct prompts per concept, deterministically; every prompt passes the protected-IP guard."""
    from mvtune.prompts import PromptsError, ProtectedPromptError, iter_prompts, load_concepts, write_prompt_rows

    try:
        concept_set = load_concepts(concepts)
        out.parent.mkdir(parents=True, exist_ok=True)
        total = count * len(concept_set.concepts)
        with _LazyProgress("prompts") as progress:

            def rows():
                for k, row in enumerate(iter_prompts(concept_set, count, seed, override=allow_protected), 1):
                    progress.update(k, total, row.id)
                    yield row

            written = write_prompt_rows(out, rows())
    except ProtectedPromptError as exc:
        _fail(f"{concepts}: {exc} (or pass --allow-protected)")
    except PromptsError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {out}: {exc}")
    console.print(f"wrote {written} prompts ({count} per concept, {len(concept_set.concepts)} concepts) to {out}")


@prompts_app.command("check")
def prompts_check(
    file: str = typer.Argument(..., help="Prompts file: one prompt a line, or a prompts JSONL; '-' reads standard input."),
    terms: Optional[Path] = typer.Option(None, help="Extra protected terms: a concepts YAML (its protected_terms) or a text file, one a line."),
) -> None:
    """Print each prompt that names a protected term, with the term; exit 1 if any is flagged, 0 otherwise."""
    from mvtune.prompts import PromptsError, find_protected, load_concepts

    if file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read prompts file {file}: {exc}")
    extra: list[str] = []
    if terms is not None:
        try:
            if terms.suffix in (".yaml", ".yml"):
                extra = load_concepts(terms).protected_terms
            else:
                extra = [t.strip() for t in terms.read_text(encoding="utf-8").splitlines() if t.strip()]
        except (PromptsError, OSError, UnicodeDecodeError) as exc:
            _fail(f"--terms {terms}: {exc}")
    flagged = checked = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        prompt, where = line.strip(), f"line {number}"
        if prompt.startswith("{"):
            try:
                row = json.loads(prompt)
                prompt, where = str(row["prompt"]), f"line {number} ({row.get('id', '?')})"
            except (json.JSONDecodeError, KeyError, TypeError):
                _fail(f"{file} line {number}: looks like JSON but is not a prompt row with a 'prompt' key")
        checked += 1
        term = find_protected(prompt, extra)
        if term is not None:
            flagged += 1
            print(f"{where}: {term}: {prompt}")
    console.print(f"{checked} prompts checked, {flagged} flagged")
    if flagged:
        raise typer.Exit(1)


@app.command()
def samples(
    out_dir: Path = typer.Argument(..., help="Folder for the built-in sample meshes (GLB + caption/provenance sidecars)."),
    count: Optional[int] = typer.Option(None, min=1, help="Write only the first N samples."),
) -> None:
    """Write the built-in procedural sample meshes (stylised ducks in several themes)."""
    from mvtune.meshes import write_sample_meshes

    try:
        paths = write_sample_meshes(out_dir, count=count)
    except OSError as exc:
        _fail(f"cannot write to output folder {out_dir}: {exc}")
    console.print(f"wrote {len(paths)} sample meshes to {out_dir}")


meshes_app = typer.Typer(help="Make meshes from prompt rows (procedural, Hunyuan3D) or import downloaded ones.",
                         no_args_is_help=True)
app.add_typer(meshes_app, name="meshes")


@meshes_app.command("generate")
def meshes_generate(
    backend: str = typer.Option(..., help="procedural (CPU, CC0), hunyuan3d-2.1 or hunyuan3d-2 (GPU, see docs/meshes.md)."),
    prompts: Path = typer.Option(..., help="Prompts JSONL (`mvtune prompts CONCEPTS.yaml --out FILE`)."),
    out: Path = typer.Option(..., "--out", help="Output folder: <id>/mesh.glb + mesh.txt + mesh.json; reruns resume."),
    shard: Optional[str] = typer.Option(None, help="i/n: make only this shard's items (0 <= i < n; no overlap)."),
    timeout: float = typer.Option(900.0, min=1.0, help="Seconds per item before its worker is killed and restarted."),
    seed: int = typer.Option(0, help="Base seed; each item's seed derives from it and the row."),
    device: list[str] = typer.Option(["cpu"], help="One worker per device: cpu, cuda:0, cuda:1 ... (repeatable)."),
    workers: Optional[int] = typer.Option(None, min=1, help="CPU workers (procedural): shorthand for N x --device cpu."),
    base_model: Optional[Path] = typer.Option(None, help="Hunyuan: local diffusers SDXL folder for the reference image."),
    hunyuan_weights: Optional[Path] = typer.Option(None, help="Hunyuan: folder with <model id>/<subfolder> weights (default $HY3DGEN_MODELS)."),
    hunyuan_repo: Optional[Path] = typer.Option(None, help="Hunyuan: the Hunyuan3D checkout (required for 2.1)."),
    protected_term: list[str] = typer.Option([], help="Extra protected term for the IP guard (repeatable)."),
    option: list[str] = typer.Option([], help="Backend setting key=value (e.g. shape_steps=30), repeatable."),
) -> None:
    """Make one mesh per prompt row with a backend: GLB, caption and provenance per item, errors.jsonl on failures."""
    from pydantic import ValidationError

    from mvtune.meshes.generators import GeneratorError, generate_meshes
    from mvtune.meshes.generators.run import GenerateMeshesConfig

    options: dict = {}
    for key, value in (("base_model", base_model), ("weights", hunyuan_weights), ("repo", hunyuan_repo)):
        if value is not None:
            options[key] = str(value)
    for entry in option:
        key, sep, value = entry.partition("=")
        if not sep or not key.strip():
            _fail(f"--option must look like key=value, got {entry!r}")
        options[key.strip()] = value
    devices = ["cpu"] * workers if workers else [d for entry in device for d in entry.split(",") if d]
    try:
        cfg = GenerateMeshesConfig(backend=backend, prompts=prompts, out_dir=out, shard=shard, timeout=timeout,
                                   seed=seed, devices=devices, protected_terms=protected_term, options=options)
        with _LazyProgress(f"meshes ({backend})") as progress:
            summary = generate_meshes(cfg, on_progress=progress.update)
    except ValidationError as exc:
        _fail(_validation_message(exc, as_options=True))
    except GeneratorError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished items are kept; rerun the same command to resume")
        raise typer.Exit(130)
    console.print(
        f"{summary['total']} items: {summary['generated']} generated, {summary['skipped']} already done, "
        f"{summary['failed']} failed ({summary['seconds']:.1f} s) -> {out}"
    )
    if summary["errors"]:
        for entry in summary["errors"][:20]:
            console.print(f"  [red]{entry.get('id')}[/] ({entry.get('stage')}): {entry['reason']}")
        console.print(f"all failures: the errors*.jsonl of this run in {out}")
        raise typer.Exit(1)


@meshes_app.command("import")
def meshes_import(
    input_dir: Path = typer.Argument(..., help="Folder of downloaded meshes, or the objaverse cache (~/.objaverse)."),
    source: str = typer.Option(..., help="meshy, objaverse, or any short name of where the files came from."),
    licence: Optional[str] = typer.Option(None, help="Licence id (CC0-1.0, CC-BY-4.0, ...); objaverse: only for objects without one."),
    out: Path = typer.Option(..., "--out", help="Output folder: <id>/mesh.glb + mesh.txt + mesh.json."),
) -> None:
    """Import meshes with provenance per object, skipping exact geometric duplicates; failures in import_errors.jsonl."""
    from mvtune.meshes.importers import MeshImportError, import_meshes

    try:
        with _LazyProgress(f"import ({source})") as progress:
            summary = import_meshes(
                input_dir, source, out, licence,
                on_progress=progress.update,
            )
    except MeshImportError as exc:
        _fail(str(exc))
    console.print(
        f"{summary['total']} meshes: {summary['imported']} imported, {summary['skipped']} already there, "
        f"{len(summary['duplicates'])} exact duplicates skipped, {summary['failed']} failed -> {out}"
    )
    for entry in summary["errors"][:20]:
        console.print(f"  [red]{entry['id']}[/]: {entry['reason']}")
    if summary["failed"]:
        console.print(f"all failures: {out / 'import_errors.jsonl'}")
        raise typer.Exit(1)


@app.command()
def render(
    input: Path = typer.Argument(..., help="A mesh file, a folder of meshes, or a .txt list of mesh paths."),
    out_dir: Path = typer.Argument(..., help="Dataset folder to write (resumable: reruns skip finished objects)."),
    layout: str = typer.Option("ortho10", help="ortho10, rand6, or custom 'az:el[:ORTHO|PERSP],...' (user degrees)."),
    resolution: int = typer.Option(1024, help="Image size in pixels (the official data uses 1024)."),
    workers: int = typer.Option(1, help="Parallel worker processes, each with its own GL context."),
    captions: Optional[Path] = typer.Option(None, help="JSON id (or mesh file name) -> caption; else <mesh>.txt sidecars."),
    lighting: str = typer.Option("studio", help="'studio' (built-in soft IBL), 'albedo' (unlit), or an .exr environment map."),
    up: str = typer.Option("y", help="Source up axis: 'y' (glTF and most exports) or 'z'."),
    seed: int = typer.Option(0, help="Seed for random layouts (rand6)."),
    position: bool = typer.Option(False, help="Also write position_NNNN.exr (world XYZ)."),
    max_texture_pixels: Optional[int] = typer.Option(None, help="Refuse textures larger than this many pixels (decompression-bomb guard; default 8192x8192)."),
    max_total_texture_pixels: Optional[int] = typer.Option(None, help="Refuse objects whose textures hold more pixels than this together (default 2x8192x8192)."),
    shard: Optional[str] = typer.Option(None, help="'i/n': render only shard i of n (Slurm array tasks); then `mvtune dataset merge OUT`."),
    wait: bool = typer.Option(False, help="Wait for another render holding the dataset's lock instead of failing at once."),
    force: bool = typer.Option(False, help="Re-render a dataset made with other settings (resolution, layout, ...)."),
    allow_outside_files: bool = typer.Option(False, help="Let a mesh read files outside its folder (an MTL's ../ texture, an absolute mtllib)."),
) -> None:
    """Render meshes into an Objaverse-Ortho10View / Rand6View-format dataset."""
    from pydantic import ValidationError

    from mvtune.render.dataset import DatasetWriteError, RenderConfig, render_dataset

    try:
        cfg = RenderConfig(
            input=input, out_dir=out_dir, layout=layout, resolution=resolution, workers=workers,
            captions=captions, lighting=lighting, up=up, seed=seed, position=position, shard=shard,
            allow_outside_files=allow_outside_files,
            **({} if max_texture_pixels is None else {"max_texture_pixels": max_texture_pixels}),
            **({} if max_total_texture_pixels is None else {"max_total_texture_pixels": max_total_texture_pixels}),
        )
    except ValidationError as exc:
        _fail(_validation_message(exc, as_options=True))
    try:
        with _LazyProgress("render") as progress:
            summary = render_dataset(cfg, on_progress=progress.update, wait=wait, force=force)
    except DatasetWriteError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished objects are kept; rerun the same command to resume")
        raise typer.Exit(130)
    console.print(
        f"{summary.total} meshes: {summary.rendered} rendered, {summary.skipped} already done, "
        f"{summary.failed} failed ({summary.seconds:.1f} s) -> {out_dir}"
    )
    if summary.failed:
        for entry in summary.errors[:20]:
            console.print(f"  [red]{entry['id']}[/] ({entry['source']}): {entry['reason']}")
        console.print(f"all failures: {out_dir / 'errors.jsonl'}")
        raise typer.Exit(1)


@dataset_app.command("validate")
def dataset_validate(
    root: Path = typer.Argument(..., help="Dataset root (holds <id[:2]>/<id>/ folders)."),
    variant: str = typer.Option("tg2mv", help="Model variant whose inputs to check: tg2mv or t2mv."),
    views: Optional[str] = typer.Option(None, help="Comma-separated image_names to feed (default: the variant's)."),
    scene_list: Optional[Path] = typer.Option(None, help="Scene list (default ROOT/scene_list.json)."),
    captions: Optional[Path] = typer.Option(None, help="Captions JSON (default ROOT/captions.json)."),
    report: Optional[Path] = typer.Option(None, help="Where to write the JSON report (default ROOT/validation_report.json)."),
    pixels: bool = typer.Option(True, help="Decode normals/depth to check frames and backgrounds (slower)."),
    min_side: int = typer.Option(512, help="Image datasets: warn about images whose shorter side is below this."),
) -> None:
    """Check a dataset against what MV-Adapter's loader and attention layout assume; an image dataset (a folder
    of images with .txt captions, or a .jsonl) for concept LoRAs: readable, large enough, captioned, no
    duplicates, no protected names in captions."""
    from mvtune.cameras import VARIANTS
    from mvtune.data.images import is_image_dataset, validate_images
    from mvtune.data.validate import NotADatasetError, ensure_dataset, validate_dataset

    if is_image_dataset(root):
        with _LazyProgress("validate") as progress:
            result = validate_images(root, min_side=min_side, on_progress=progress.update)
        _report(result, report or ((root if root.is_dir() else root.parent) / "validation_report.json"))
        if not result.ok:
            raise typer.Exit(1)
        return
    _check_variant(variant)
    image_names = [v.strip() for v in views.split(",")] if views else None
    if image_names is not None and (len(image_names) != len(VARIANTS[variant].poses) or not all(image_names)):
        _fail(f"--views must name {len(VARIANTS[variant].poses)} views for {variant} "
              f"({', '.join(VARIANTS[variant].names)}), got {views!r}")
    try:
        ensure_dataset(root, scene_list)
    except NotADatasetError as exc:
        _fail(str(exc))
    with _LazyProgress("validate") as progress:
        result = validate_dataset(
            root, variant, image_names, scene_list, captions, check_pixels=pixels, on_progress=progress.update,
        )
    _report(result, report or (root / "validation_report.json"))
    if not result.ok:
        raise typer.Exit(1)


@dataset_app.command("split")
def dataset_split(
    root: Path = typer.Argument(..., help="Dataset root written by `mvtune render` (needs its manifest.json)."),
    val: float = typer.Option(0.1, help="Fraction of objects for validation."),
    test: float = typer.Option(0.1, help="Fraction of objects for testing."),
    seed: int = typer.Option(0, help="Seed of the group shuffle."),
    scene_list: Optional[Path] = typer.Option(None, help="Scene list (default ROOT/scene_list.json)."),
    near_duplicates: bool = typer.Option(True, help="Also keep near-duplicates (same renders and geometry) together."),
) -> None:
    """Split by source mesh (renders and augmented copies of one source stay together, and near-duplicates found
    from the renders too), stratified by concept."""
    from mvtune.data.splits import SplitError, split_dataset

    try:
        report = split_dataset(root, val=val, test=test, seed=seed, scene_list=scene_list,
                               near_duplicates=near_duplicates)
    except SplitError as exc:
        _fail(str(exc))
    for name, count in report["objects"].items():
        console.print(f"{name}: {count} objects in {report['groups'][name]} source groups -> {report['files'][name]}")
    if near_duplicates:
        groups = report["near_duplicate_groups"]
        console.print(f"{len(groups)} near-duplicate groups ({sum(map(len, groups))} objects) kept in one split each")
        for problem in report["near_duplicate_problems"][:10]:
            console.print(f"  [yellow]not fingerprinted[/]: {problem}")


@dataset_app.command("card")
def dataset_card(
    root: Path = typer.Argument(..., help="Dataset root written by `mvtune render`."),
    near_duplicates: bool = typer.Option(True, help="Fingerprint the renders to list near-duplicate groups (cached)."),
) -> None:
    """Write card.md and card.json: counts per concept, generator, licence, split; captions; render settings;
    validation status; near-duplicate groups."""
    from mvtune.data.card import CARD_JSON, CARD_MD, CardError, write_card

    try:
        card = write_card(root, near_duplicates=near_duplicates)
    except CardError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the card into {root}: {exc}")
    near = card.get("near_duplicates") or {"groups": []}
    console.print(
        f"{card['objects']} objects, licences {card['counts']['licence']}, splits {card['counts']['split']}, "
        f"{len(near['groups'])} near-duplicate groups, validation: {card['validation']['status']}"
    )
    console.print(f"card: {root / CARD_MD} and {root / CARD_JSON}")


@dataset_app.command("merge")
def dataset_merge(
    root: Path = typer.Argument(..., help="Dataset folder that `mvtune render --shard i/n` runs wrote into."),
    wait: bool = typer.Option(False, help="Wait for running renders of this dataset instead of failing at once."),
) -> None:
    """Assemble scene_list/captions/manifest/errors of a sharded render (identical to an unsharded render's)."""
    from mvtune.render.dataset import DatasetWriteError, merge_shards

    try:
        result = merge_shards(root, wait=wait)
    except DatasetWriteError as exc:
        _fail(str(exc))
    console.print(f"merged {result['shards']} shards: {result['objects']} objects, {result['failed']} failed -> {root}")
    if result["failed"]:
        console.print(f"all failures: {root / 'errors.jsonl'}")
        raise typer.Exit(1)


@dataset_app.command("cache")
def dataset_cache(
    root: Path = typer.Argument(..., help="Dataset root."),
    cache_dir: Path = typer.Argument(..., help="Where to store the preprocessed tensors."),
    variant: str = typer.Option("tg2mv", help="Model variant (decides which views are cached)."),
    resolution: int = typer.Option(768, min=16, help="Training resolution."),
    scene_list: Optional[Path] = typer.Option(None, help="Scene list (default ROOT/scene_list.json)."),
    shard: Optional[str] = typer.Option(None, help="'i/n': cache only this shard's objects (Slurm array tasks; they run together)."),
) -> None:
    """Precompute the loader's tensors at training resolution (rebuilt when files or resolution change)."""
    from mvtune.data.cache import build_cache
    from mvtune.data.loader import DatasetError
    from mvtune.shards import parse_shard

    _check_variant(variant)
    try:
        part = parse_shard(shard)
    except ValueError as exc:
        _fail(f"--{exc}")
    try:
        with _LazyProgress("cache") as progress:
            result = build_cache(
                root, cache_dir, scene_list, variant, resolution, resolution,
                on_progress=progress.update, shard=part,
            )
    except DatasetError as exc:  # a scene list or captions that cannot be used, another build of this cache
        _fail(str(exc))
    console.print(f"cached {result['cached']} objects in {cache_dir}, {result['failed']} failed")
    for entry in result["errors"][:20]:
        console.print(f"  [red]{entry['id']}[/]: {entry['reason']}")
    if result["failed"]:
        raise typer.Exit(1)


@app.command()
def augment(
    input: Path = typer.Argument(..., help="A mesh file, a folder of meshes, or a .txt list of mesh paths."),
    out_dir: Path = typer.Argument(..., help="Folder for the colour-jittered copies (GLB + sidecars)."),
    copies: int = typer.Option(1, help="Copies per source mesh."),
    hue: float = typer.Option(0.1, min=0.0, max=0.5, help="Max hue shift in turns (0.1 = 36 degrees)."),
    saturation: float = typer.Option(0.3, min=0.0, max=1.0, help="Saturation factor range 1 +- x."),
    brightness: float = typer.Option(0.2, min=0.0, max=1.0, help="Brightness factor range 1 +- x."),
    seed: int = typer.Option(0, help="Seed of the jitter."),
) -> None:
    """Texture-space colour jitter: new meshes whose provenance points to their source (render them next)."""
    from mvtune.data.augment import AugmentError, augment_meshes

    try:
        report = augment_meshes(input, out_dir, copies, hue, saturation, brightness, seed)
    except AugmentError as exc:
        _fail(str(exc))
    review = [o for o in report["objects"] if o["review"]]
    console.print(f"wrote {len(report['objects'])} copies to {out_dir}; {len(review)} flagged for caption review")
    for entry in report["failed"]:
        console.print(f"  [red]{entry['source']}[/]: {entry['reason']}")
    if report["failed"]:
        raise typer.Exit(1)


def _report(result, path: Path) -> None:
    """Print a validation result (first 30 findings) and save its JSON report (a read-only dataset only loses
    the file)."""
    findings = result.errors + result.warnings
    if findings:
        table = Table(title=f"{result.root} ({result.variant}, views {','.join(result.image_names)})")
        for column in ("level", "object", "finding"):
            table.add_column(column)
        for finding in findings[:30]:
            colour = "red" if finding.level == "error" else "yellow"
            table.add_row(f"[{colour}]{finding.level}[/]", finding.object_id or "", finding.message)
        if len(findings) > 30:
            table.add_row("...", "", f"{len(findings) - 30} more in the JSON report")
        console.print(table)
    status = "[green]OK[/]" if result.ok else "[red]FAILED[/]"
    console.print(f"{status}: {result.objects} objects, {len(result.errors)} errors, {len(result.warnings)} warnings")
    try:
        path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"report: {path}")
    except OSError as exc:
        console.print(f"[yellow]could not write report {path}: {exc}[/]")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="Training YAML (mvtune layout or MV-Adapter's own data/system/trainer layout)."),
    resume: Optional[str] = typer.Option(None, help="'auto' (newest valid checkpoint of this run), a checkpoint file, or a run folder (its newest valid checkpoint)."),
) -> None:
    """Fine-tune MV-Adapter (adapter, LoRA, adapter+lora; prior preservation, EMA) or train an SDXL concept LoRA from 2D images (concept-lora). Extra args are key=value overrides."""
    from mvtune.train.config import TrainConfigError
    from mvtune.train.run import train_from_cli
    from mvtune.train.system import NonFiniteLossError

    overrides = _overrides(ctx, "optim.lr=1e-5")
    try:
        run_dir = train_from_cli(config, overrides, resume)
    except TrainConfigError as exc:
        _fail(str(exc))
    except NonFiniteLossError as exc:
        _fail(str(exc), code=1)
    run = json.loads((run_dir / "summary.json").read_text())
    losses = ", ".join(f"{k} {v:.4f}" for k, v in run.get("metrics", {}).items() if k in ("train/loss", "val/loss"))
    console.print(f"{run.get('status')} after {run.get('global_step')} steps{': ' + losses if losses else ''}")
    console.print(f"run folder: {run_dir}")


def _lora_specs(loras: list[Path] | None, scales: list[float] | None) -> list[dict]:
    """Repeated `--lora L` with `--lora-scale s` in the same order (no scales: all 1.0)."""
    loras, scales = list(loras or []), list(scales or [])
    if scales and len(scales) != len(loras):
        _fail(f"give one --lora-scale per --lora (or none for 1.0 each): {len(loras)} LoRAs, {len(scales)} scales")
    return [{"path": path, "scale": scale} for path, scale in zip(loras, scales or [1.0] * len(loras))]


def _model_options(base_model, adapter, loras, scheduler, device, dtype):
    from mvtune.generate import ModelConfig

    return ModelConfig(base_model=base_model, adapter=adapter, loras=loras, scheduler=scheduler, device=device,
                       dtype=dtype)


def _sampling_options(steps, guidance, negative_prompt, resolution, mv_scale, control_scale, up):
    from mvtune.generate import SamplingConfig

    kwargs = dict(steps=steps, guidance=guidance, resolution=resolution, mv_scale=mv_scale,
                  control_scale=control_scale, up=up)
    if negative_prompt is not None:
        kwargs["negative_prompt"] = negative_prompt
    return SamplingConfig(**kwargs)


def _validation_message(exc, as_options: bool = False) -> str:
    """pydantic errors as one line, naming config keys (`models.device`) or CLI options (`--max-texture-pixels`)."""
    if as_options:
        return "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())


BASE_MODEL_HELP = "Local diffusers SDXL folder (SDXL base, DreamShaper XL, ..., or one from `mvtune tiny-model`)."


@app.command("tiny-model")
def tiny_model(
    out_dir: Path = typer.Argument(..., help="Folder for a tiny random SDXL in diffusers format (~31 MB; --clip: a few MB)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    clip: bool = typer.Option(False, "--clip", help="Write a tiny random transformers CLIP (a scorer) instead."),
) -> None:
    """Save a tiny random SDXL pipeline (offline) to try generate/texture/train without downloading weights."""
    from mvtune.demo import writable_problem

    problem = writable_problem(out_dir, "tiny-model target")
    if problem:
        _fail(problem)
    if clip:
        from mvtune.models.tiny import write_tiny_clip

        write_tiny_clip(out_dir, seed=seed)
        console.print(f"tiny random CLIP saved to {out_dir} (use it as `--clip {out_dir}`; its scores mean nothing)")
        return
    from mvtune.models import build_tiny_sdxl

    build_tiny_sdxl(out_dir, seed=seed)
    console.print(f"tiny random SDXL saved to {out_dir}")


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", help="Output folder (one subfolder per row in batch mode)."),
    base_model: Path = typer.Option(..., help=BASE_MODEL_HELP),
    mesh: Optional[Path] = typer.Option(None, help="Mesh to texture (GLB/GLTF/OBJ/PLY)."),
    prompt: Optional[str] = typer.Option(None, help="Text prompt."),
    batch: Optional[Path] = typer.Option(None, help="CSV (header mesh,prompt[,seed][,id]) or JSONL of rows instead of --mesh/--prompt."),
    adapter: Optional[Path] = typer.Option(None, help="MV-Adapter weights (released or fine-tuned .safetensors)."),
    lora: Optional[list[Path]] = typer.Option(None, help="SDXL LoRA (diffusers or kohya; UNet and/or text encoders), applied under the adapter; repeatable."),
    lora_scale: Optional[list[float]] = typer.Option(None, help="Scale of each --lora, in the same order (default 1.0); repeatable."),
    seed: int = typer.Option(0),
    steps: int = typer.Option(50),
    guidance: float = typer.Option(7.0),
    negative_prompt: Optional[str] = typer.Option(None, help="Default: MV-Adapter's negative prompt."),
    resolution: int = typer.Option(768),
    mv_scale: float = typer.Option(1.0),
    control_scale: float = typer.Option(1.0),
    scheduler: str = typer.Option("euler", help="euler or ddpm (both with ShiftSNR)."),
    up: str = typer.Option("y", help="The mesh file's up axis: y or z."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("float32", help="float32, float16 or bfloat16."),
) -> None:
    """Text + mesh -> 6 views (front, right, back, left, top, bottom), grid, condition maps and a JSON record."""
    from pydantic import ValidationError

    from mvtune.generate import BatchConfig, GenerateConfig, GenerateError, generate as run_generate, generate_batch

    from mvtune.demo import base_model_problem, device_problem, remove_empty_dirs, writable_problem

    if (batch is None) == (mesh is None or prompt is None):
        _fail("give either --mesh and --prompt, or --batch LIST")
    problems = [p for p in (
        device_problem(device, allow_gpu=False),
        base_model_problem(base_model, allow_tiny=False),
        writable_problem(out, "--out"),
    ) if p]
    for option, path in (("--mesh", mesh), ("--batch", batch), ("--adapter", adapter), *(("--lora", lp) for lp in lora or [])):
        if path is not None and not path.is_file():
            problems.append(f"{option} {path} does not exist")
    if problems:
        _fail("; ".join(problems))
    existed = out.exists()
    try:
        models = _model_options(base_model, adapter, _lora_specs(lora, lora_scale), scheduler, device, dtype)
        sampling = _sampling_options(steps, guidance, negative_prompt, resolution, mv_scale, control_scale, up)
        if batch is not None:
            summary = generate_batch(BatchConfig(items=batch, out_dir=out, seed=seed, models=models, sampling=sampling))
            console.print(f"batch: {json.dumps({k: v for k, v in summary.items() if k != 'errors'})}")
            if summary.get("failed"):
                raise typer.Exit(1)
        else:
            run_generate(GenerateConfig(mesh=mesh, prompt=prompt, out_dir=out, seed=seed, models=models, sampling=sampling))
            console.print(f"views, grid and record in {out}")
    except ValidationError as exc:
        _fail(_validation_message(exc, as_options=True))
    except GenerateError as exc:
        if not existed:
            remove_empty_dirs(out)
        _fail(str(exc), code=1)


@app.command()
def texture(
    mesh: Path = typer.Option(..., help="The mesh to texture."),
    out: Path = typer.Option(..., "--out", help="Output .glb (a turntable PNG/GIF and a JSON record go beside it)."),
    views: Optional[Path] = typer.Option(None, help="A `mvtune generate` output folder with the 6 views."),
    prompt: Optional[str] = typer.Option(None, help="Generate the views first with this prompt (needs --base-model)."),
    base_model: Optional[Path] = typer.Option(None, help=BASE_MODEL_HELP),
    adapter: Optional[Path] = typer.Option(None),
    lora: Optional[list[Path]] = typer.Option(None, help="SDXL LoRA applied under the adapter; repeatable."),
    lora_scale: Optional[list[float]] = typer.Option(None, help="Scale of each --lora (default 1.0); repeatable."),
    seed: int = typer.Option(0),
    steps: int = typer.Option(50),
    guidance: float = typer.Option(7.0),
    resolution: int = typer.Option(768),
    up: str = typer.Option("y", help="The mesh file's up axis: y or z."),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32"),
    texture_size: int = typer.Option(2048, help="Texture resolution."),
    uv: str = typer.Option("auto", help="auto (keep usable UVs, else unwrap with xatlas), keep, or unwrap."),
    face_budget: int = typer.Option(200_000, help="Meshes above this are decimated before unwrapping."),
    turntable: bool = typer.Option(True, help="Also write an 8-view turntable PNG strip and GIF."),
) -> None:
    """Bake 6 generated views into a texture and export a textured GLB in the mesh's original coordinates."""
    from pydantic import ValidationError

    from mvtune.texture import BakeOptions, TextureConfig, TextureError, UnwrapConfig, texture_mesh
    from mvtune.texture.export import TextureInputError

    try:
        models = None
        if base_model is not None:
            models = _model_options(base_model, adapter, _lora_specs(lora, lora_scale), "euler", device, dtype)
        cfg = TextureConfig(
            mesh=mesh, out=out, views=views, prompt=prompt, models=models, seed=seed,
            sampling=_sampling_options(steps, guidance, None, resolution, 1.0, 1.0, up),
            unwrap=UnwrapConfig(uv=uv, face_budget=face_budget), bake=BakeOptions(texture_size=texture_size),
            turntable=turntable,
        )
        record = texture_mesh(cfg)
    except ValidationError as exc:
        _fail(_validation_message(exc))
    except TextureInputError as exc:
        _fail(str(exc))
    except TextureError as exc:
        _fail(str(exc), code=1)
    seen = record["bake"]["texel_coverage"]
    console.print(f"textured mesh: {out} ({seen:.1%} of texels seen by a view, the rest filled; record beside it)")


@app.command()
def score(
    mesh: Path = typer.Option(..., help="The mesh the views were generated for."),
    views: Path = typer.Option(..., help="A `mvtune generate` run folder with view_0000.png ... view_0005.png."),
    prompt: Optional[str] = typer.Option(None, help="Prompt for CLIP-T (needs --clip)."),
    clip: Optional[list[str]] = typer.Option(
        None, help="Scorer, repeatable: a transformers CLIP folder, or open_clip:ARCH:CHECKPOINT; prefix NAME= to name it."
    ),
    up: str = typer.Option("y", help="The mesh file's up axis: y or z."),
    device: str = typer.Option("cpu", help="Device of the CLIP scorers."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the result to this JSON file."),
    image: Optional[Path] = typer.Option(None, help="Write a PNG of the views over their consistency errors."),
) -> None:
    """Score six tg2mv views against their mesh: geometric consistency, silhouette IoU, CLIP-T."""
    import numpy as np
    from pydantic import ValidationError

    from mvtune.evaluate import ScoreError
    from mvtune.evaluate.score import read_views, score_views
    from mvtune.models.clip import ClipError, ScorerSpec, load_scorer

    if up not in ("y", "z"):
        _fail(f"--up must be y or z, got {up!r}")
    if (prompt is None) != (not clip):
        _fail("--prompt and --clip go together: CLIP-T needs a prompt and at least one scorer")
    try:
        specs = [ScorerSpec.parse(text) for text in clip or []]
        scorers = [load_scorer(spec, device=device) for spec in specs]
        images = read_views(views)
        errors = np.zeros((len(images), *images[0].shape[:2]), np.float32) if image is not None else None
        result = score_views(mesh, images, prompt=prompt, scorers=scorers, up=up, error_maps=errors)
    except ValidationError as exc:
        _fail(f"--clip: {_validation_message(exc)}")
    except (ClipError, ScoreError) as exc:
        _fail(str(exc))
    for path in (out, image):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if out is not None:
        from mvtune.storage import write_json

        write_json(out, result)
    if image is not None:
        from PIL import Image

        from mvtune.evaluate.score import error_map_picture
        from mvtune.storage import atomic_write

        picture = Image.fromarray(error_map_picture(images, errors))
        atomic_write(image, lambda tmp: picture.save(tmp, format="PNG"))
        console.print(f"views (top) over their consistency errors (bottom, red = disagreement): {image}")
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    _print_score(result)


def _print_score(result: dict) -> None:
    from rich.markup import escape

    from mvtune.cameras import variant_views

    names = variant_views("tg2mv").names
    table = Table(title="consistency (co-visible pixels, colours 0-255)")
    for column in ("src -> dst", "MAE", "PSNR dB", "pixels"):
        table.add_column(column, justify="right")
    for pair in result["consistency"]["pairs"]:
        if pair["pixels"]:
            table.add_row(
                f"{names[pair['src']]} -> {names[pair['dst']]}", f"{pair['mae']:.2f}", f"{pair['psnr']:.1f}", str(pair["pixels"])
            )
    overall = result["consistency"]
    if overall["pixels"]:
        table.add_row("[bold]all pairs", f"[bold]{overall['mae']:.2f}", f"[bold]{overall['psnr']:.1f}", str(overall["pixels"]))
    console.print(table)
    iou = result["silhouette"]["iou"]
    console.print("silhouette IoU: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, iou)) + f"; mean {result['silhouette']['mean']:.3f}")
    for name, scores in result["clip_t"].items():
        console.print(f"CLIP-T {escape(name)}: mean {scores['mean']:.2f} (" + ", ".join(f"{v:.1f}" for v in scores["per_view"]) + ")")


def _run_evaluation(description: str, call):
    """Run an evaluation-style call under a progress bar; suite/evaluation errors exit 2 with one line."""
    from mvtune.evaluate.run import EvaluateError
    from mvtune.evaluate.suite import SuiteError

    with _LazyProgress(description) as progress:
        try:
            return call(progress.update)
        except (SuiteError, EvaluateError) as exc:
            _fail(str(exc))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def evaluate(
    ctx: typer.Context,
    suite: Path = typer.Argument(..., help="Evaluation suite YAML (models, meshes, prompts, seeds, sampling, scorers)."),
    out: Path = typer.Option(..., "--out", help="Output folder (cells, summary.json, report.html); a rerun resumes."),
    run: Optional[Path] = typer.Option(None, "--run", help="A training run folder: its metrics.csv curves go in the report."),
    shard: Optional[str] = typer.Option(None, help="'i/n': only generate and score this shard's cells (Slurm array tasks); then run once without --shard to compare and report."),
) -> None:
    """Compare models against the first (the reference) on paired cells. Extra args are key=value overrides."""
    from mvtune.evaluate.run import evaluate_cells, evaluate_suite, headline
    from mvtune.evaluate.suite import SuiteError, load_suite
    from mvtune.shards import parse_shard

    overrides = _overrides(ctx, "seeds=[0,1]")
    try:
        part = parse_shard(shard)
    except ValueError as exc:
        _fail(f"--{exc}")
    try:
        cfg = load_suite(suite, overrides)
    except SuiteError as exc:
        _fail(str(exc))
    if part is not None:
        counts = _run_evaluation(f"evaluate {part[0]}/{part[1]}",
                                 lambda on_progress: evaluate_cells(cfg, out, part, on_progress=on_progress))
        console.print(f"shard {part[0]}/{part[1]}: {counts['generated']} cells made, {counts['skipped']} already done, "
                      f"{counts['failed']} failed -> {out}")
        if counts["failed"]:
            raise typer.Exit(1)
        return
    if run is not None and not (run / "logs" / "csv" / "metrics.csv").is_file():
        _fail(f"--run {run}: no logs/csv/metrics.csv in it; give a `mvtune train` run folder")
    summary = _run_evaluation("evaluate", lambda on_progress: evaluate_suite(cfg, out, run_dir=run,
                                                                              on_progress=on_progress))
    table = Table(title=f"{summary['suite']}: model - {summary['reference']} ({round(100 * summary['confidence'])}% CI)")
    for column in ("model", "group", "metric", "difference", "interval", "units", "verdict"):
        table.add_column(column, justify="right" if column in ("difference", "interval", "units") else "left")
    from mvtune.evaluate.report import fmt, metric_label

    colours = {"better": "green", "worse": "red"}
    for row in headline(summary):
        colour = colours.get(row["verdict"], "white")
        table.add_row(row["model"], row["group"], metric_label(row["metric"]), fmt(row["diff"]),
                      f"[{fmt(row['low'])}, {fmt(row['high'])}]", str(row["n"]), f"[{colour}]{row['verdict']}[/]")
    console.print(table)
    for model, f in summary["forgetting"].items():
        console.print(f"forgetting score {model}: {fmt(f['score'])} CLIP-T points [{fmt(f['low'])}, {fmt(f['high'])}]"
                      f" ({f['verdict']})")
    console.print(f"report: {out / 'report.html'}")
    if summary["errors"]:
        _fail(f"{summary['errors']} of {summary['counts']['cells']} cells failed; see {out / 'errors.jsonl'}", code=1)


@app.command()
def probe(
    concepts: Path = typer.Argument(..., help="Concepts YAML (see examples/concepts/ducks.yaml)."),
    out: Path = typer.Option(..., "--out", help="Output folder (probe.json, probe.html, cells); a rerun resumes."),
    base_model: Path = typer.Option(..., help="Local diffusers SDXL folder of the reference model."),
    adapter: Optional[Path] = typer.Option(None, help="MV-Adapter weights (e.g. mvadapter_tg2mv_sdxl.safetensors)."),
    lora: Optional[list[Path]] = typer.Option(None, help="LoRA file, repeatable."),
    lora_scale: Optional[list[float]] = typer.Option(None, help="Scale per --lora, same order."),
    clip: list[str] = typer.Option(..., help="Scorer, repeatable: a transformers CLIP folder or open_clip:ARCH:CHECKPOINT."),
    mesh: Optional[list[Path]] = typer.Option(None, help="Mesh file, repeatable (default: 2 built-in sample ducks)."),
    dataset: Optional[Path] = typer.Option(None, help="Or a rendered dataset: its --split objects."),
    split: str = typer.Option("test", help="Split of --dataset: train, val or test."),
    limit: int = typer.Option(3, min=1, help="At most this many dataset objects."),
    seeds: str = typer.Option("0,1", help="Comma-separated seeds."),
    prompts: int = typer.Option(2, min=1, help="Prompts per concept."),
    steps: int = typer.Option(30, min=1),
    guidance: float = typer.Option(3.0),
    resolution: int = typer.Option(768, min=32),
    device: str = typer.Option("auto", help="auto (cuda when there is one), cpu or cuda."),
    known: float = typer.Option(0.7, help="Mean attribute presence from which a concept counts as known."),
    weak: float = typer.Option(0.4, help="... as weak (below: unknown)."),
) -> None:
    """Rank concepts known / weak / unknown for the reference model, before buying data."""
    from pydantic import ValidationError

    from mvtune.evaluate.probe import Thresholds, run_probe
    from mvtune.models.clip import ClipError, ScorerSpec
    from mvtune.evaluate.suite import SuiteError, check_suite, parse_suite

    try:
        thresholds = Thresholds(known=known, weak=weak)
        specs = [ScorerSpec.parse(text).model_dump(mode="json") for text in clip]
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValidationError as exc:
        _fail(_validation_message(exc, as_options=True))
    except (ClipError, ValueError) as exc:
        _fail(f"--clip/--seeds: {exc}")
    meshes: dict = {"files": [str(p) for p in mesh or []]}
    if dataset is not None:
        meshes.update(dataset=str(dataset), split=split, limit=limit)
    elif not mesh:
        from mvtune.meshes import write_sample_meshes

        meshes["files"] = [str(p) for p in write_sample_meshes(out / "meshes", count=2)]
    raw = {
        "name": f"probe {concepts.name}",
        "models": [{"name": "reference", "base_model": str(base_model), "adapter": None if adapter is None
                    else str(adapter), "loras": _lora_specs(lora, lora_scale)}],
        "meshes": meshes,
        "prompts": {"concepts": str(concepts), "per_concept": prompts, "generic": 0},
        "seeds": seed_list,
        "sampling": {"steps": steps, "guidance": guidance, "resolution": resolution},
        "scorers": specs,
        "device": device,
    }
    try:
        cfg = parse_suite(json.loads(json.dumps(raw, default=str)))
        check_suite(cfg)
    except SuiteError as exc:
        _fail(str(exc))
    result = _run_evaluation("probe", lambda on_progress: run_probe(cfg, out, thresholds, on_progress=on_progress))
    from mvtune.evaluate.report import fmt

    table = Table(title=f"concept probe ({result['scorer']}; known >= {fmt(known)}, weak >= {fmt(weak)})")
    for column in ("concept", "rank", "presence", "CLIP-T", "per attribute"):
        table.add_column(column)
    colours = {"known": "green", "weak": "yellow", "unknown": "red"}
    for name in result["order"]:
        c = result["concepts"][name]
        table.add_row(name, f"[{colours[c['rank']]}]{c['rank']}[/]", fmt(c["presence"]), fmt(c["clip_t"]),
                      ", ".join(f"{k} {fmt(v)}" for k, v in c["attributes"].items()))
    console.print(table)
    console.print(f"probe: {out / 'probe.json'}, report: {out / 'probe.html'}")
    if result["errors"]:
        _fail(f"{result['errors']} cells failed; see {out / 'errors.jsonl'}", code=1)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo-output"), "--out", help="Where the demo writes everything."),
    base_model: str = typer.Option("tiny", help="'tiny' (random tiny SDXL, CPU) or a local diffusers SDXL folder."),
    adapter: Optional[Path] = typer.Option(None, help="Released MV-Adapter weights to fine-tune from."),
    device: str = typer.Option("cpu", help="Training/sampling device: cpu or gpu."),
    render_resolution: int = typer.Option(128, help="Resolution of the rendered dataset (1024 for real training)."),
    train_resolution: int = typer.Option(64, help="Training resolution (768 for real training)."),
    steps: int = typer.Option(40, help="Training steps."),
    texture_size: int = typer.Option(512, help="Texture size of the final GLB."),
) -> None:
    """End to end on built-in meshes: render -> split -> validate -> train -> sample a held-out mesh -> textured GLB."""
    from mvtune.demo import demo_option_problems, remove_empty_dirs

    problems = demo_option_problems(out_dir, base_model, adapter, device, render_resolution, train_resolution,
                                    steps, texture_size)
    if problems:
        _fail("; ".join(problems))
    existed = out_dir.exists()
    try:
        _run_demo(out_dir, base_model, adapter, device, render_resolution, train_resolution, steps, texture_size)
    except BaseException:
        if not existed:
            remove_empty_dirs(out_dir)  # a run that failed early leaves no empty folders behind
        raise


def _run_demo(out_dir, base_model, adapter, device, render_resolution, train_resolution, steps, texture_size) -> None:
    import time

    import numpy as np
    from PIL import Image

    from mvtune.data.validate import read_scene_list
    from mvtune.demo import write_demo_summary
    from mvtune.pipeline.demo import demo_experiment
    from mvtune.pipeline.experiment import ExperimentError, check_experiment
    from mvtune.pipeline.local import run_local
    from mvtune.pipeline.stages import EVALUATE, REPORT, train_run_dir
    from mvtune.train.run import demo_sample

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = time.perf_counter() - clock
        clock = time.perf_counter()

    # The demo is the built-in experiment run by the local executor, its stages in this process (their progress
    # bars on this console); then a held-out mesh is sampled and textured with the trained adapter.
    warnings.filterwarnings("ignore", message=".*`srun` command is available on your system")  # the demo is no Slurm job
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)  # the tiny model's ops are too small to split (see demo_training)
    exp = demo_experiment(out_dir, base_model, adapter, device, render_resolution, train_resolution, steps)
    try:
        check_experiment(exp)
    except ExperimentError as exc:
        _fail(str(exc))
    what = {
        "meshes": "wrote the built-in sample meshes", "render": f"rendered them (ortho10, {render_resolution} px)",
        "split": "split by source mesh", "validate": "validated (view layout, normals frame, files, captions, no "
        "split leakage)", "train": f"trained the adapter for {steps} steps on {base_model} ({device})",
        "evaluate": "evaluated the fine-tune against its base", "report": "wrote the experiment report",
    }
    number = {stage: k for k, stage in enumerate(what, start=1)}
    total = len(what) + 2  # + the held-out sampling and the texture

    data_dir, run_dir = exp.dir / "dataset", train_run_dir(exp)
    report = data_dir / "validation_report.json"

    def final_losses() -> None:
        run = json.loads((run_dir / "summary.json").read_text())
        losses = {k: run.get("metrics", {}).get(k) for k in ("train/loss", "val/loss")}
        console.print("      final " + ", ".join(
            f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in losses.items()
        ) + f" after {run.get('global_step')} steps ({timings['train'] / max(1, run.get('global_step') or 1):.2f} s/step)")

    def on_step(stage: str, shard, event: str) -> None:
        if event == "start":
            lap(f"{stage} (start)")
            if stage == "train":
                console.print(f"[bold]{number[stage]}/{total}[/] training the adapter for {steps} steps ...")
        elif event in ("done", "skip"):
            lap(stage)
            console.print(f"[bold]{number[stage]}/{total}[/] {what[stage]}" + (" (already done)" if event == "skip" else ""))
            if stage == "train":
                final_losses()
        else:
            console.print(f"[red]{stage}[/]: {event}")

    if run_local(exp, on_step, runner=_run_in_process) != 0:
        _fail(f"the demo stopped; `mvtune pipeline status {exp.dir}` names the stage and its log", code=1)
    for key in [k for k in timings if k.endswith(" (start)")]:
        timings.pop(key)
    clock = time.perf_counter()
    run = json.loads((run_dir / "summary.json").read_text())
    losses = {k: run.get("metrics", {}).get(k) for k in ("train/loss", "val/loss")}
    held_out = read_scene_list(data_dir / "split_test.json")[0]
    with _LazyProgress("sample held-out views") as progress:
        grid = demo_sample(run_dir, data_dir, object_id=held_out, on_step=progress.update)
    lap("sample")
    console.print(f"[bold]{total - 1}/{total}[/] sampled 6 views of held-out mesh {held_out}")

    from mvtune.generate import write_views
    from mvtune.texture import BakeOptions, TextureConfig, texture_mesh

    source = Path(json.loads((data_dir / "manifest.json").read_text())["objects"][held_out]["source"])
    images = [np.asarray(Image.open(grid.parent / f"view_{k}.png").convert("RGB")) for k in range(6)]
    sample = json.loads((grid.parent / "sample.json").read_text())
    views_dir = out_dir / "held_out_views"
    # The record states what was done: these views were sampled by the demo's trained model, as sample.json says.
    write_views(views_dir, source, images, extra={
        "source": f"mvtune demo: held-out object {held_out} sampled by {run_dir.name}",
        **{k: sample[k] for k in ("prompt", "seed", "models", "sampling")},
    })
    glb = out_dir / "textured" / f"{held_out}.glb"
    glb.parent.mkdir(parents=True, exist_ok=True)
    record = texture_mesh(TextureConfig(mesh=source, views=views_dir, out=glb, bake=BakeOptions(texture_size=texture_size)))
    lap("texture")
    console.print(f"[bold]{total}/{total}[/] textured {glb} ({record['bake']['texel_coverage']:.0%} of texels seen by a view)")

    samples = sorted((run_dir / "samples").glob("step_*.png"))
    outputs = {
        "held-out views (ground truth above, sample below)": grid,
        "validation grid (last)": samples[-1] if samples else None,
        "textured GLB": glb,
        "turntable": glb.with_name(glb.stem + "_turntable.gif"),
        "training metrics": run_dir / "logs" / "csv" / "metrics.csv",
        "dataset validation report": report,
        "adapter": next(iter(run.get("exports", {}).values()), None),
        "run folder": run_dir,
        "texture record": glb.with_suffix(".json"),
        "evaluation report (base vs fine-tune)": exp.dir / EVALUATE / "report.html",
        "experiment report": exp.dir / REPORT / "index.html",
    }
    metrics = {**losses, "steps": run.get("global_step"),
               "steps_per_s": round((run.get("global_step") or 0) / timings["train"], 3),
               "texel_coverage": record["bake"]["texel_coverage"]}
    settings = {"base_model": base_model, "adapter": str(adapter) if adapter else None, "device": device,
                "render_resolution": render_resolution, "train_resolution": train_resolution, "steps": steps,
                "texture_size": texture_size}
    summary_path = write_demo_summary(out_dir, held_out=held_out, metrics=metrics, timings=timings,
                                      outputs={**outputs, "summary": out_dir / "demo_summary.json"}, settings=settings)
    # Lines, not a table: a narrow terminal would cut the paths a user is meant to copy.
    console.print(f"[bold]outputs[/] in {out_dir}:")
    for label, path in {**outputs, "summary (metrics, timings, paths)": summary_path}.items():
        if path is not None:
            console.print(f"  {label + ':':<52} {path}")
    if base_model == "tiny":
        console.print("[yellow]note[/]: the tiny model has random weights, so its views and texture are noise; that is "
                      "what a random tiny model produces. Use --base-model with a real SDXL folder for real images.")
    console.print(f"[green]done[/] in {sum(timings.values()):.0f} s")
    print(out_dir.resolve())


pipeline_app = typer.Typer(help="Experiments: every stage from one file, locally or as chained Slurm jobs.",
                           no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


def _experiment_folder(exp_dir: Path):
    from mvtune.pipeline import EXIT_USAGE
    from mvtune.pipeline.experiment import ExperimentError
    from mvtune.pipeline.state import load_folder

    try:
        return load_folder(exp_dir)
    except ExperimentError as exc:
        _fail(str(exc), code=EXIT_USAGE)


def _run_in_process(argv: list[str], log: Path, workdir: Path) -> int:
    """Run one stage's `mvtune ...` command in this process, so its progress bars show on this console (the
    demo); what the console printed is also appended to the stage's log. Returns the command's exit code."""
    import click

    args = argv[argv.index("mvtune.cli") + 1:]
    console.record = True
    try:
        code = app(args, prog_name="mvtune", standalone_mode=False) or 0
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    finally:
        text = console.export_text(clear=True)
        console.record = False
        with open(log, "a", encoding="utf-8") as f:
            f.write(text)
    return code


@pipeline_app.command("run")
def pipeline_run(
    experiment: Path = typer.Argument(..., help="Experiment YAML (stages, their settings, Slurm resources)."),
    executor: str = typer.Option("local", help="local (stages in order on this machine) or slurm (sbatch chain)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run (slurm: the scripts and sbatch lines), run nothing."),
) -> None:
    """Run an experiment; a rerun redoes only unfinished stages/shards and what depends on them.
    Exit codes: 0 done/submitted, 1 a stage failed, 2 bad experiment, 4 Slurm refused."""
    from mvtune.pipeline import EXIT_SLURM, EXIT_USAGE
    from mvtune.pipeline.experiment import ExperimentError, check_experiment, load_experiment

    if executor not in ("local", "slurm"):
        _fail(f"--executor must be local or slurm, got {executor!r}", code=EXIT_USAGE)
    try:
        exp = load_experiment(experiment)
        check_experiment(exp)
    except ExperimentError as exc:
        _fail(f"{experiment}: {exc}", code=EXIT_USAGE)
    if executor == "local" and dry_run:
        from mvtune.pipeline.local import plan
        from mvtune.pipeline.stages import build_stages

        for stage, todo in plan(exp, build_stages(exp)):
            for shard in todo:
                print(stage.marker_command(shard))
            if not todo:
                print(f"# {stage.name}: done")
        raise typer.Exit(0)
    if executor == "local":
        from mvtune.pipeline.local import run_local

        def on_step(stage: str, shard, event: str) -> None:
            name = stage if shard is None else f"{stage}[{shard}]"
            colour = {"done": "green", "skip": "dim", "start": "bold"}.get(event, "red")
            console.print(f"[{colour}]{name}[/]: {'already done' if event == 'skip' else event}")

        code = run_local(exp, on_step)
        console.print(f"experiment folder {exp.dir} (`mvtune pipeline status {exp.dir}`)")
        raise typer.Exit(code)
    from mvtune.pipeline.slurm import SlurmError, run_slurm

    try:
        code = run_slurm(exp, dry_run=dry_run, echo=print)
    except SlurmError as exc:
        _fail(str(exc), code=EXIT_SLURM)
    if not dry_run:
        console.print(f"submitted; follow with `mvtune pipeline status {exp.dir}`")
    raise typer.Exit(code)


@pipeline_app.command("status")
def pipeline_status(
    exp_dir: Path = typer.Argument(..., help="Experiment folder (holds experiment.yaml and pipeline.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Each stage's and shard's state, job, restarts, failure reason and log.
    Exit codes: 0 all done, 1 something failed or was cancelled, 3 jobs still queued or running."""
    from mvtune.pipeline.status import experiment_status, overall, rows_json

    exp = _experiment_folder(exp_dir)
    rows = experiment_status(exp)
    if as_json:
        print(json.dumps(rows_json(rows), indent=2))
    else:
        table = Table(title=f"experiment {exp.name} ({exp.dir})")
        for column in ("stage", "shard", "state", "job", "restarts", "reason / log"):
            table.add_column(column)
        for r in rows:
            colour = {"DONE": "green", "RUNNING": "cyan", "PENDING": "yellow", "NOT_RUN": "dim"}.get(r.state, "red")
            detail = r.reason or ""
            if r.log and r.state != "DONE":
                detail = f"{detail}\n{r.log}" if detail else r.log
            table.add_row(r.stage, "" if r.shard is None else str(r.shard), f"[{colour}]{r.state}[/]", r.job or "",
                          str(r.restarts or ""), detail)
        Console(soft_wrap=True).print(table)
    raise typer.Exit(overall(rows))


@pipeline_app.command("cancel")
def pipeline_cancel(exp_dir: Path = typer.Argument(..., help="Experiment folder.")) -> None:
    """scancel the experiment's queued and running jobs (finished stages keep their outputs; rerun to continue)."""
    from mvtune.pipeline import EXIT_SLURM
    from mvtune.pipeline.slurm import SlurmError, cancel
    from mvtune.pipeline.status import active_jobs, experiment_status

    jobs = active_jobs(experiment_status(_experiment_folder(exp_dir)))
    try:
        cancel(jobs)
    except SlurmError as exc:
        _fail(str(exc), code=EXIT_SLURM)
    console.print(f"cancelled {len(jobs)} jobs: {' '.join(jobs)}" if jobs else "no queued or running jobs")


@pipeline_app.command("mark", hidden=True)
def pipeline_mark(
    exp_dir: Path = typer.Argument(...),
    stage: str = typer.Argument(...),
    shard: Optional[int] = typer.Option(None),
    exit_code: int = typer.Option(..., help="The stage command's exit code."),
    log: Optional[Path] = typer.Option(None, help="The job's log (the failure reason is read from it)."),
) -> None:
    """Run by the batch scripts after a stage's command: write its done marker or failure record."""
    from mvtune.pipeline import EXIT_USAGE
    from mvtune.pipeline.stages import build_stages, record

    exp = _experiment_folder(exp_dir)
    stages = {s.name: s for s in build_stages(exp, slurm=True)}
    if stage not in stages:
        _fail(f"experiment {exp.name} has no stage {stage!r} (stages: {', '.join(stages)})", code=EXIT_USAGE)
    code = record(exp, stages[stage], shard, exit_code, log)
    print(f"[mvtune] {stage}{'' if shard is None else f' shard {shard}'}: {'done' if code == 0 else f'failed ({code})'}")
    raise typer.Exit(code)


@pipeline_app.command("report")
def pipeline_report(exp_dir: Path = typer.Argument(..., help="Experiment folder.")) -> None:
    """Write <experiment>/report/index.html and report.json from the stages' outputs."""
    from mvtune.pipeline.report import write_report

    exp = _experiment_folder(exp_dir)
    write_report(exp)
    console.print(f"report: {exp.dir / 'report' / 'index.html'}")


if __name__ == "__main__":
    sys.exit(app())
