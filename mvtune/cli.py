"""The `mvtune` command line. Each command validates its options first, then calls into one stage.

Heavy modules (torch, diffusers, the GL renderer) are imported inside the commands that need them, so
`mvtune --help` and the dataset tools start fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="mvtune: fine-tune MV-Adapter to texture 3D meshes in new themes.", no_args_is_help=True)
dataset_app = typer.Typer(help="Inspect, validate and split rendered datasets.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )


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


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def samples(
    out_dir: Path = typer.Argument(..., help="Folder for the built-in sample meshes (GLB + caption/provenance sidecars)."),
    count: Optional[int] = typer.Option(None, help="Write only the first N samples."),
) -> None:
    """Write the built-in procedural sample meshes (stylised ducks in several themes)."""
    from mvtune.meshes import write_sample_meshes

    paths = write_sample_meshes(out_dir, count=count)
    console.print(f"wrote {len(paths)} sample meshes to {out_dir}")


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
    max_texture_pixels: int = typer.Option(64 * 1024 * 1024, help="Refuse textures larger than this (decompression-bomb guard)."),
) -> None:
    """Render meshes into an Objaverse-Ortho10View / Rand6View-format dataset."""
    from pydantic import ValidationError

    from mvtune.render.dataset import DatasetWriteError, RenderConfig, render_dataset

    try:
        cfg = RenderConfig(
            input=input, out_dir=out_dir, layout=layout, resolution=resolution, workers=workers,
            captions=captions, lighting=lighting, up=up, seed=seed, position=position,
            max_texture_pixels=max_texture_pixels,
        )
    except ValidationError as exc:
        _fail("; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    try:
        with _progress() as progress:
            task = progress.add_task("render", total=None, item="")

            def on_progress(done: int, total: int, object_id: str) -> None:
                progress.update(task, completed=done, total=total, item=object_id)

            summary = render_dataset(cfg, on_progress=on_progress)
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
) -> None:
    """Check a dataset against what MV-Adapter's loader and attention layout assume."""
    from mvtune.cameras import VARIANTS
    from mvtune.data.validate import validate_dataset

    if variant not in VARIANTS:
        _fail(f"--variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    image_names = [v.strip() for v in views.split(",")] if views else None
    with _progress() as progress:
        task = progress.add_task("validate", total=None, item="")
        result = validate_dataset(
            root, variant, image_names, scene_list, captions, check_pixels=pixels,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    _print_report(result)
    report_path = report or (root / "validation_report.json")
    try:
        report_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"report: {report_path}")
    except OSError as exc:
        console.print(f"[yellow]could not write report {report_path}: {exc}[/]")
    if not result.ok:
        raise typer.Exit(1)


@dataset_app.command("split")
def dataset_split(
    root: Path = typer.Argument(..., help="Dataset root written by `mvtune render` (needs its manifest.json)."),
    val: float = typer.Option(0.1, help="Fraction of objects for validation."),
    test: float = typer.Option(0.1, help="Fraction of objects for testing."),
    seed: int = typer.Option(0, help="Seed of the group shuffle."),
    scene_list: Optional[Path] = typer.Option(None, help="Scene list (default ROOT/scene_list.json)."),
) -> None:
    """Split by source mesh (renders and augmented copies of one source stay together), stratified by concept."""
    from mvtune.data.splits import SplitError, split_dataset

    try:
        report = split_dataset(root, val=val, test=test, seed=seed, scene_list=scene_list)
    except SplitError as exc:
        _fail(str(exc))
    for name, count in report["objects"].items():
        console.print(f"{name}: {count} objects in {report['groups'][name]} source groups -> {report['files'][name]}")


@dataset_app.command("cache")
def dataset_cache(
    root: Path = typer.Argument(..., help="Dataset root."),
    cache_dir: Path = typer.Argument(..., help="Where to store the preprocessed tensors."),
    variant: str = typer.Option("tg2mv", help="Model variant (decides which views are cached)."),
    resolution: int = typer.Option(768, help="Training resolution."),
    scene_list: Optional[Path] = typer.Option(None, help="Scene list (default ROOT/scene_list.json)."),
) -> None:
    """Precompute the loader's tensors at training resolution (rebuilt when files or resolution change)."""
    from mvtune.data.cache import build_cache

    with _progress() as progress:
        task = progress.add_task("cache", total=None, item="")
        result = build_cache(
            root, cache_dir, scene_list, variant, resolution, resolution,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
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
    hue: float = typer.Option(0.1, help="Max hue shift in turns (0.1 = 36 degrees)."),
    saturation: float = typer.Option(0.3, help="Saturation factor range 1 +- x."),
    brightness: float = typer.Option(0.2, help="Brightness factor range 1 +- x."),
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


def _print_report(result) -> None:
    table = Table(title=f"{result.root} ({result.variant}, views {','.join(result.image_names)})")
    table.add_column("level")
    table.add_column("object")
    table.add_column("finding")
    shown = 0
    for finding in result.errors + result.warnings:
        if shown == 30:
            table.add_row("...", "", f"{len(result.findings) - shown} more in the JSON report")
            break
        colour = "red" if finding.level == "error" else "yellow"
        table.add_row(f"[{colour}]{finding.level}[/]", finding.object_id or "", finding.message)
        shown += 1
    if result.findings:
        console.print(table)
    status = "[green]OK[/]" if result.ok else "[red]FAILED[/]"
    console.print(
        f"{status}: {result.objects} objects, {len(result.errors)} errors, {len(result.warnings)} warnings"
    )


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo-output"), "--out", help="Where the demo writes meshes, dataset and reports."),
    resolution: int = typer.Option(256, help="Render resolution for the demo dataset."),
) -> None:
    """The main job on built-in data: sample meshes -> rendered dataset -> validation report."""
    from mvtune.data.validate import validate_dataset
    from mvtune.meshes import write_sample_meshes
    from mvtune.render.dataset import RenderConfig, render_dataset

    meshes_dir, data_dir = out_dir / "meshes", out_dir / "dataset"
    paths = write_sample_meshes(meshes_dir)
    console.print(f"[bold]1/3[/] wrote {len(paths)} built-in sample meshes to {meshes_dir}")
    cfg = RenderConfig(input=meshes_dir, out_dir=data_dir, resolution=resolution)
    with _progress() as progress:
        task = progress.add_task("render", total=len(paths), item="")
        summary = render_dataset(cfg, on_progress=lambda d, t, i: progress.update(task, completed=d, item=i))
    console.print(f"[bold]2/3[/] rendered {summary.rendered + summary.skipped}/{summary.total} objects into {data_dir}")
    if summary.failed:
        _fail(f"{summary.failed} meshes failed to render, see {data_dir / 'errors.jsonl'}", code=1)
    result = validate_dataset(data_dir, "tg2mv")
    (data_dir / "validation_report.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    _print_report(result)
    if not result.ok:
        _fail("the demo dataset did not validate", code=1)
    console.print(f"[bold]3/3[/] validated; dataset: {data_dir.resolve()}")
    print(data_dir.resolve())


if __name__ == "__main__":
    sys.exit(app())
