"""report.html: what a person reads to decide whether a fine-tune helped.

Pictures first (per concept, the same mesh and seed under every model, side by side), then the plots
(per-concept differences with their intervals, per-view-pair consistency, training curves), then the tables:
the headline verdicts, forgetting, and per group the means, paired differences, intervals and verdicts. Every number comes from summary.json (each table cell
carries its summary path in `data-path`), every file it links is under the output folder with a relative
link, so the folder works from file:// and after being copied elsewhere. No scripts, no external resources.
"""

from __future__ import annotations

import csv
import html
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mvtune.storage import atomic_write

REPORT = "report.html"
ASSETS = "assets"
GRID_VIEW_SIZE = 160  # px per view in the report's grids (the cells keep full-size views)
LABEL_WIDTH = 150

METRIC_LABELS = {
    "consistency_mae": "multi-view consistency MAE (0-255, lower is better)",
    "consistency_psnr": "multi-view consistency PSNR (dB)",
    "silhouette_iou": "silhouette IoU",
    "clip_t": "CLIP-T (100 x cosine to the prompt)",
    "attribute_presence": "attribute presence (mean probability)",
    "attribute_rate": "attribute rate (share of attributes shown)",
    "attribute": "attribute",
    "clip_i": "CLIP-I to the ground-truth views",
    "diversity": "diversity across seeds (1 - cos)",
}


def fmt(value) -> str:
    """The one number format of the report (tests compare it against summary.json)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.4g}"


def metric_label(metric: str) -> str:
    base, _, rest = metric.partition("[")
    scorer, _, attr = rest.partition("]")
    label = METRIC_LABELS.get(base, base)
    if base == "attribute":
        return f"attribute '{attr.lstrip(':')}' present ({scorer})"
    return f"{label} ({scorer})" if scorer else label


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _num(value, path: str) -> str:
    return f'<td class="num" data-path="{_esc(path)}">{_esc(fmt(value))}</td>'


# ---------------------------------------------------------------------------------------------------------------
# Pictures.


def _views_row(cell_dir: Path, size: int) -> np.ndarray:
    views = []
    for i in range(6):
        image = Image.open(Path(cell_dir) / f"view_{i:04d}.png").convert("RGB")
        if image.width > size:  # never upscale: small views stay sharp pixels
            image = image.resize((size, size), Image.LANCZOS)
        views.append(np.asarray(image))
    return np.concatenate(views, axis=1)


def _label(text: str, height: int) -> np.ndarray:
    strip = Image.new("RGB", (LABEL_WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    draw.text((6, height // 2 - 6), text[:22], fill=(0, 0, 0), font=ImageFont.load_default())
    return np.asarray(strip)


def comparison_grid(rows: list[tuple[str, Path]], path: Path, size: int = GRID_VIEW_SIZE) -> Path:
    """One PNG: per model (labelled) its six views of the same mesh, prompt and seed."""
    rows_px = [_views_row(folder, size) for _, folder in rows]
    strips = [np.concatenate([_label(name, px.shape[0]), px], axis=1) for (name, _), px in zip(rows, rows_px)]
    image = Image.fromarray(np.concatenate(strips, axis=0))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _grids(summary: dict, records: list[dict], out: Path) -> list[dict]:
    """Per group, up to `grids_per_concept` (mesh, seed) pairs of its first prompt that every model has."""
    models = [m["name"] for m in summary["models"]]
    by_cell = {(r["model"], r["mesh"], r["prompt_id"], r["seed"]): r for r in records}
    grids = []
    for group in summary["groups"]:
        prompt_ids = [p["id"] for p in summary["prompts"] if p["group"] == group]
        if not prompt_ids:
            continue
        made = 0
        for prompt_id in prompt_ids:
            for mesh in [m["id"] for m in summary["meshes"]]:
                for seed in summary["seeds"]:
                    if made >= summary["grids_per_concept"]:
                        break
                    cells = [by_cell.get((m, mesh, prompt_id, seed)) for m in models]
                    if any(c is None for c in cells):
                        continue
                    file = f"{ASSETS}/grid_{_slug(group)}_{made}.png"
                    comparison_grid([(m, Path(c["dir"])) for m, c in zip(models, cells)], out / file)
                    grids.append({"group": group, "mesh": mesh, "prompt_id": prompt_id, "seed": seed,
                                  "prompt": cells[0]["prompt"], "file": file})
                    made += 1
    return grids


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


# ---------------------------------------------------------------------------------------------------------------
# Plots.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_differences(summary: dict, path: Path) -> Path | None:
    """Per headline metric, every model's difference from the reference per group with its interval."""
    from mvtune.evaluate.run import headline

    rows = headline(summary)
    if not rows:
        return None
    plt = _pyplot()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    groups = summary["groups"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.5 * len(groups) * len(models) + 1.6),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for k, model in enumerate(models):
            for g, group in enumerate(groups):
                row = next((r for r in rows if r["metric"] == metric and r["model"] == model and r["group"] == group),
                           None)
                if row is None or row["diff"] is None:
                    continue
                y = g + (k - (len(models) - 1) / 2) * 0.25
                low = row["low"] if row["low"] is not None else row["diff"]
                high = row["high"] if row["high"] is not None else row["diff"]
                colour = {"better": "tab:green", "worse": "tab:red"}.get(row["verdict"], "tab:gray")
                ax.errorbar(row["diff"], y, xerr=[[row["diff"] - low], [high - row["diff"]]], fmt="o",
                            color=colour, capsize=3, label=model if g == 0 else None)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(groups)), groups)
        ax.invert_yaxis()
        ax.set_title(metric_label(metric), fontsize=9)
        ax.set_xlabel(f"model - {summary['reference']}")
    if len(models) > 1:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Paired differences, {round(100 * summary['confidence'])}% bootstrap intervals "
                 "(green: better, red: worse, grey: no evidence)", fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_pairs(summary: dict, path: Path) -> Path | None:
    """Per model, the 6 x 6 consistency MAE of each ordered view pair (source row, target column)."""
    from mvtune.cameras import variant_views

    matrices = {m: v for m, v in summary["consistency_pairs"].items() if v is not None}
    if not matrices:
        return None
    plt = _pyplot()
    names = variant_views("tg2mv").names
    values = [x for v in matrices.values() for row in v for x in row if x is not None]
    vmax = max(values) if values else 1.0
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices), 3.4), squeeze=False)
    for ax, (model, matrix) in zip(axes[0], matrices.items()):
        data = np.array([[np.nan if x is None else x for x in row] for row in matrix], dtype=float)
        im = ax.imshow(data, vmin=0.0, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(6), names, rotation=45, fontsize=7)
        ax.set_yticks(range(6), names, fontsize=7)
        ax.set_title(model, fontsize=9)
        for i in range(6):
            for j in range(6):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="MAE (0-255)")
    fig.suptitle("Consistency per view pair (lower is better)", fontsize=10)
    return _save_figure(fig, path)


def plot_training(metrics_csv: Path, path: Path) -> Path | None:
    """Every logged series of a training run's metrics.csv against the step."""
    try:
        rows = list(csv.DictReader(Path(metrics_csv).read_text(encoding="utf-8").splitlines()))
    except OSError:
        return None
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        try:
            step = float(row.get("step") or "nan")
        except ValueError:
            continue
        for key, value in row.items():
            if key in ("step", "epoch") or value in (None, ""):
                continue
            try:
                series[key].append((step, float(value)))
            except ValueError:
                pass
    series = {k: v for k, v in series.items() if v and math.isfinite(v[0][0])}
    if not series:
        return None
    plt = _pyplot()
    columns = min(3, len(series))
    rows_n = math.ceil(len(series) / columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(4 * columns, 2.8 * rows_n), squeeze=False)
    for ax, (name, points) in zip(axes.ravel(), sorted(series.items())):
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    for ax in axes.ravel()[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path: Path) -> Path:
    plt = _pyplot()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# HTML.

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f2f2f2;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{background:#d8f3dc}.worse{background:#ffd6d6}.none{color:#777}img{max-width:100%;border:1px solid #ddd}
.note{color:#555;font-size:13px}figure{margin:8px 0 18px}figcaption{font-size:13px;color:#444}
"""


def _verdict_cell(verdict: str) -> str:
    css = {"better": "better", "worse": "worse", "forgets": "worse", "improves": "better"}.get(verdict, "none")
    return f'<td class="{css}">{_esc(verdict)}</td>'


def _comparison_rows(summary: dict, rows: list[tuple[int, dict]]) -> str:
    out = []
    for index, c in rows:
        base = f"comparisons/{index}"
        out.append(
            f"<tr><td>{_esc(c['model'])}</td><td>{_esc(c['group'])}</td><td>{_esc(metric_label(c['metric']))}</td>"
            + _num(c["diff"], f"{base}/diff") + _num(c["low"], f"{base}/low") + _num(c["high"], f"{base}/high")
            + _num(c["n"], f"{base}/n") + _verdict_cell(c["verdict"]) + "</tr>"
        )
    return "\n".join(out)


_COMPARISON_HEAD = ("<tr><th>model</th><th>group</th><th>metric</th><th>difference</th><th>low</th><th>high</th>"
                    "<th>units</th><th>verdict</th></tr>")


def _means_table(summary: dict, group: str) -> str:
    models = [m["name"] for m in summary["models"]]
    metrics = sorted({k for m in models for k in summary["means"][m].get(group, {})})
    if not metrics:
        return ""
    head = "<tr><th>metric</th>" + "".join(f"<th>{_esc(m)}</th>" for m in models) + "</tr>"
    body = []
    for metric in metrics:
        cells = "".join(
            _num(summary["means"][m][group][metric]["mean"], f"means/{m}/{group}/{metric}/mean")
            if metric in summary["means"][m].get(group, {}) else "<td>n/a</td>"
            for m in models
        )
        body.append(f"<tr><td>{_esc(metric_label(metric))}</td>{cells}</tr>")
    return f"<table class=\"means\">{head}{''.join(body)}</table>"


def _group_pictures(summary: dict, group: str, grids: list[dict]) -> str:
    parts = [f'<h3>{_esc(group)}</h3>']
    for grid in [g for g in grids if g["group"] == group]:
        parts.append(
            f'<figure><img src="{_esc(grid["file"])}" alt="{_esc(group)} grid"><figcaption>mesh '
            f'<b>{_esc(grid["mesh"])}</b>, seed {grid["seed"]}: "{_esc(grid["prompt"])}" (rows: '
            f'{_esc(", ".join(m["name"] for m in summary["models"]))}; views front, right, back, left, top, '
            'bottom)</figcaption></figure>'
        )
    return "\n".join(parts)


def _group_tables(summary: dict, group: str) -> str:
    parts = [f'<h3 id="g-{_slug(group)}">{_esc(group)}</h3>']
    parts.append("<h4>Means over (mesh, seed) units</h4>" + _means_table(summary, group))
    rows = [(i, c) for i, c in enumerate(summary["comparisons"]) if c["group"] == group]
    if rows:
        parts.append(f"<h4>Paired differences from {_esc(summary['reference'])}</h4>"
                     f'<table class="comparisons">{_COMPARISON_HEAD}{_comparison_rows(summary, rows)}</table>')
    return "\n".join(parts)


def _kid_table(summary: dict) -> str:
    rows = []
    for model, per_scorer in summary["kid"].items():
        for scorer, value in per_scorer.items():
            if value is None:
                continue
            base = f"kid/{model}/{scorer}"
            rows.append(f"<tr><td>{_esc(model)}</td><td>{_esc(scorer)}</td>" + _num(value["mean"], f"{base}/mean")
                        + _num(value["std"], f"{base}/std") + _num(value["n_generated"], f"{base}/n_generated")
                        + _num(value["n_real"], f"{base}/n_real") + "</tr>")
    if not rows:
        return '<p class="note">No ground-truth renders among the meshes: no KID.</p>'
    return ('<table class="kid"><tr><th>model</th><th>scorer</th><th>KID</th><th>std over subsets</th>'
            f"<th>generated views</th><th>real views</th></tr>{''.join(rows)}</table>")


def _forgetting_table(summary: dict) -> str:
    if not summary["forgetting"]:
        return '<p class="note">No generic prompts or no scorer: no forgetting score.</p>'
    rows = []
    for model, f in summary["forgetting"].items():
        base = f"forgetting/{model}"
        rows.append(f"<tr><td>{_esc(model)}</td><td>{_esc(metric_label(f['metric']))}</td>"
                    + _num(f["score"], f"{base}/score") + _num(f["low"], f"{base}/low") + _num(f["high"], f"{base}/high")
                    + _num(f["n"], f"{base}/n") + _verdict_cell(f["verdict"]) + "</tr>")
    return ('<table class="forgetting"><tr><th>model</th><th>metric</th><th>forgetting score</th><th>low</th>'
            f"<th>high</th><th>units</th><th>verdict</th></tr>{''.join(rows)}</table>")


def write_report(summary: dict, records: list[dict], out: Path, run_dir: Path | None = None) -> dict:
    """Write report.html and assets/ into `out`; returns the relative paths of what it wrote (for summary.json)."""
    from mvtune.evaluate.run import headline

    out = Path(out)
    (out / ASSETS).mkdir(parents=True, exist_ok=True)
    for old in (out / ASSETS).glob("grid_*.png"):  # a rerun with fewer groups must not leave stale grids
        old.unlink()
    grids = _grids(summary, records, out)
    plots = {}
    for name, made in (
        ("differences", plot_differences(summary, out / ASSETS / "differences.png")),
        ("view_pairs", plot_pairs(summary, out / ASSETS / "view_pairs.png")),
        ("training", plot_training(Path(run_dir) / "logs" / "csv" / "metrics.csv", out / ASSETS / "training.png")
         if run_dir is not None else None),
    ):
        if made is not None:
            plots[name] = f"{ASSETS}/{Path(made).name}"
    summary["grids"] = grids
    summary["plots"] = plots

    counts = summary.get("counts", {})
    head_rows = [(summary["comparisons"].index(c), c) for c in headline(summary)]
    models = ", ".join(f"<b>{_esc(m['name'])}</b>" + (" (reference)" if m["name"] == summary["reference"] else "")
                       for m in summary["models"])
    captions = {"differences": "Paired differences from the reference per group, with intervals.",
                "view_pairs": "Consistency MAE of each ordered view pair (source row, target column).",
                "training": f"Training curves from {run_dir}/logs/csv/metrics.csv."}
    sections = [
        f"<h1>Evaluation: {_esc(summary['suite'])}</h1>",
        f"<p>Models: {models}. {len(summary['meshes'])} meshes, {len(summary['prompts'])} prompts, "
        f"seeds {', '.join(str(s) for s in summary['seeds'])}; scorers: {_esc(', '.join(summary['scorers']) or 'none')}."
        f' Cells: <span data-path="counts/done">{fmt(counts.get("done"))}</span> of '
        f'<span data-path="counts/cells">{fmt(counts.get("cells"))}</span> done, '
        f'<span data-path="errors">{fmt(summary.get("errors", 0))}</span> failed (errors.jsonl).</p>',
        '<p class="note">Each unit is one (mesh, seed) pair sampled from identical initial latents by every model; '
        f"differences are model minus reference, with {round(100 * summary['confidence'])}% bootstrap intervals over "
        "units. <b>better</b>/<b>worse</b>: the whole interval is on one side of zero; <b>no evidence</b>: it "
        "contains zero (more meshes or seeds narrow it). See docs/evaluation.md.</p>",
        "<h2>Side by side: the same mesh and seed under every model</h2>",
        *[_group_pictures(summary, g, grids) for g in summary["groups"] if any(x["group"] == g for x in grids)],
        "<h2>Plots</h2>",
        *[f'<figure><img src="{_esc(f)}" alt="{_esc(n)}"><figcaption>{_esc(captions[n])}</figcaption></figure>'
          for n, f in plots.items()],
        "<h2>Headline</h2>",
        f'<table class="comparisons headline">{_COMPARISON_HEAD}{_comparison_rows(summary, head_rows)}</table>'
        if head_rows else '<p class="note">Only one model: nothing to compare.</p>',
        "<h2>Forgetting (generic prompts)</h2>",
        '<p class="note">Forgetting score: how many CLIP-T points the model lost against the reference on prompts '
        "unrelated to the concepts (positive: it follows them less well).</p>",
        _forgetting_table(summary),
        "<h2>Per group</h2>",
        *[_group_tables(summary, g) for g in summary["groups"]],
        "<h2>Against the ground truth (KID on CLIP image features)</h2>",
        _kid_table(summary),
        '<p class="note">Raw data: <a href="cells.jsonl">cells.jsonl</a>, <a href="summary.json">summary.json</a>, '
        '<a href="errors.jsonl">errors.jsonl</a>, <a href="suite.yaml">suite.yaml</a>.</p>',
    ]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>mvtune evaluation: '
            f"{_esc(summary['suite'])}</title><style>{_STYLE}</style></head><body>\n" + "\n".join(sections)
            + "\n</body></html>\n")
    atomic_write(out / REPORT, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return {"html": REPORT, "grids": [g["file"] for g in grids], "plots": plots}
