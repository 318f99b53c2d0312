"""The experiment's report (<experiment>/report/index.html + report.json): dataset renders and training sample
grids as pictures, the loss curve as a plot, then the stages' table, the training summary and the evaluation's
summary with a link to its own report."""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path

from mvtune.pipeline.experiment import Experiment
from mvtune.pipeline.stages import DATASET, EVALUATE, REPORT, train_run_dir
from mvtune.storage import atomic_write, write_json


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _loss_plot(metrics_csv: Path, out: Path) -> Path | None:
    """train/loss against step (the CSV logger's file) as a PNG; None without a curve."""
    try:
        with open(metrics_csv, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    except OSError:
        return None
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.plot([int(r["step"]) for r in rows], [float(r["train/loss"]) for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


def write_report(exp: Experiment) -> dict:
    """Collect the stages' outputs into report.json and an HTML page; returns the JSON."""
    from mvtune.pipeline.status import experiment_status, rows_json

    out = exp.dir / REPORT
    out.mkdir(parents=True, exist_ok=True)
    dataset = exp.dir / DATASET
    scenes = _read_json(dataset / "scene_list.json") or []
    errors = (dataset / "errors.jsonl").read_text().splitlines() if (dataset / "errors.jsonl").is_file() else []
    run = train_run_dir(exp)
    training = _read_json(run / "summary.json")
    evaluation = _read_json(exp.dir / EVALUATE / "summary.json")
    report = {
        "experiment": exp.name,
        "dir": str(exp.dir),
        "stages": [r for r in rows_json(experiment_status(exp)) if r["stage"] != "report"],
        "dataset": {"root": str(dataset), "objects": len(scenes), "failed_meshes": len([e for e in errors if e.strip()]),
                    "splits": {n: len(_read_json(dataset / f"split_{n}.json") or []) for n in ("train", "val", "test")}},
        "training": training,
        "evaluation": evaluation,
    }
    renders = [p for s in scenes[:8] for p in sorted((dataset / s[:2] / s).glob("color_0000.*"))[:1]]
    grids = sorted((run / "samples").glob("*.png"))[-4:] if run.is_dir() else []
    plot = _loss_plot(run / "logs" / "csv" / "metrics.csv", out / "loss.png")
    rel = lambda p: html.escape(os.path.relpath(p, out))  # noqa: E731
    parts = [f"<h1>{html.escape(exp.report.title or exp.name)}</h1>"]
    if renders:
        parts.append("<h2>Dataset renders</h2>" + "".join(f'<img src="{rel(p)}" width="128">' for p in renders))
    if grids:
        parts.append("<h2>Training samples</h2>" + "".join(f'<img src="{rel(p)}" width="512"><br>' for p in grids))
    if plot:
        parts.append(f'<h2>Loss</h2><img src="{rel(plot)}">')
    if (exp.dir / EVALUATE / "report.html").is_file():
        parts.append(f'<h2>Evaluation</h2><p><a href="{rel(exp.dir / EVALUATE / "report.html")}">evaluation report</a></p>')
    rows = "".join(
        f"<tr><td>{html.escape(r['stage'])}</td><td>{'' if r['shard'] is None else r['shard']}</td>"
        f"<td>{html.escape(r['state'])}</td><td>{html.escape(str(r['job'] or ''))}</td><td>{r['restarts']}</td></tr>"
        for r in report["stages"]
    )
    parts.append("<h2>Stages</h2><table border=1 cellpadding=4><tr><th>stage</th><th>shard</th><th>state</th>"
                 f"<th>job</th><th>restarts</th></tr>{rows}</table>")
    for title, key in (("Dataset", "dataset"), ("Training", "training"), ("Evaluation summary", "evaluation")):
        if report[key] is not None:
            parts.append(f"<h2>{title}</h2><pre>{html.escape(json.dumps(report[key], indent=2))}</pre>")
    page = "<!doctype html><meta charset=utf-8><title>{}</title><body style='font-family:sans-serif'>{}</body>".format(
        html.escape(exp.name), "\n".join(parts))
    write_json(out / "report.json", report)
    atomic_write(out / "index.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return report
