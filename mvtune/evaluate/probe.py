"""`mvtune probe`: does the base model already know a concept? Decide before buying data.

The reference model draws each concept's prompts on a few meshes and seeds (the cells of a one-model
evaluation, so a probe resumes like an evaluation). Each concept is scored by attribute presence, its traits
and the concept as a whole ("a duck as a firefighter" against "a plain duck"), and ranked:

- **known**: mean presence >= `known` (default 0.7): the model draws it; a small dataset will do;
- **weak**: >= `weak` (default 0.4): it sometimes appears; a medium dataset or more steps;
- **unknown**: below: needs many examples or another strategy (LoRA on more data, a new token).

Presence is a two-way softmax of CLIP logits, so 0.5 is "CLIP cannot tell"; the thresholds are the CLI's
`--known/--weak` and are documented in docs/evaluation.md. CLIP-T is reported next to it but does not rank:
its absolute level depends on the backbone and the prompt length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mvtune.evaluate.report import ASSETS, _esc, _num, comparison_grid, fmt
from mvtune.evaluate.run import CELLS, evaluate_suite
from mvtune.evaluate.suite import GENERIC, Suite, scorer_names
from mvtune.storage import atomic_write, write_json

PROBE = "probe.json"
PROBE_REPORT = "probe.html"
KNOWN, WEAK, UNKNOWN = "known", "weak", "unknown"


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    known: float = Field(0.7, gt=0.0, lt=1.0)
    weak: float = Field(0.4, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> "Thresholds":
        if self.weak > self.known:
            raise ValueError(f"the weak threshold ({self.weak}) must not exceed the known threshold ({self.known})")
        return self


def rank(presence: float | None, thresholds: Thresholds) -> str:
    """known / weak / unknown from a concept's mean attribute presence (None: nothing was scored -> unknown)."""
    if presence is None or not math.isfinite(presence):
        return UNKNOWN
    if presence >= thresholds.known:
        return KNOWN
    return WEAK if presence >= thresholds.weak else UNKNOWN


def probe_suite(suite: Suite) -> Suite:
    """The suite a probe runs: only its first model, only concept prompts, the concept itself probed too."""
    data = suite.model_dump()
    data["models"] = data["models"][:1]
    data["prompts"]["generic"] = 0
    data["prompts"]["concept_presence"] = True
    return Suite.model_validate(data)


def run_probe(suite: Suite, out_dir: Path, thresholds: Thresholds = Thresholds(), on_progress=None) -> dict:
    """Generate and score the reference model's cells, rank the concepts, write probe.json and probe.html."""
    suite = probe_suite(suite)
    out = Path(out_dir)
    summary = evaluate_suite(suite, out, on_progress=on_progress, report=False)
    model = suite.reference.name
    scorers = scorer_names(suite)
    first = scorers[0] if scorers else None
    records = _records(out)
    concepts = {}
    for group in summary["groups"]:
        if group == GENERIC or group not in summary["attributes"].get(model, {}):
            continue
        means = summary["means"][model][group]
        per_scorer = summary["attributes"][model][group]
        attributes = {k: v for k, v in (per_scorer.get(first) or {}).items() if k != "rate"}
        presence = float(np.mean(list(attributes.values()))) if attributes else None
        clip_t = means.get(f"clip_t[{first}]", {}).get("mean") if first else None
        concepts[group] = {
            "rank": rank(presence, thresholds),
            "presence": presence,
            "attributes": attributes,
            "clip_t": clip_t,
            "cells": sum(1 for r in records if r["group"] == group),
            "by_scorer": per_scorer,
        }
    order = sorted(concepts, key=lambda c: -(concepts[c]["presence"] if concepts[c]["presence"] is not None else -1))
    probe = {
        "model": summary["models"][0],
        "scorer": first,
        "scorers": scorers,
        "thresholds": thresholds.model_dump(),
        "meshes": [m["id"] for m in summary["meshes"]],
        "seeds": summary["seeds"],
        "order": order,
        "concepts": concepts,
        "counts": summary["counts"],
        "errors": summary["errors"],
    }
    probe["grids"] = _grids(records, out, summary)
    write_json(out / PROBE, probe)
    write_probe_report(probe, out)
    return probe


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / CELLS).read_text(encoding="utf-8").splitlines() if line.strip()]


def _grids(records: list[dict], out: Path, summary: dict) -> list[dict]:
    """Per concept, its first prompt on every (mesh, seed): one row each."""
    grids = []
    for group in summary["groups"]:
        rows = [r for r in records if r["group"] == group]
        if not rows:
            continue
        first = rows[0]["prompt_id"]
        rows = [r for r in rows if r["prompt_id"] == first]
        file = f"{ASSETS}/probe_{''.join(c if c.isalnum() else '_' for c in group)}.png"
        (out / ASSETS).mkdir(exist_ok=True)
        comparison_grid([(f"{r['mesh']} s{r['seed']}", Path(r["dir"])) for r in rows], out / file)
        grids.append({"concept": group, "prompt": rows[0]["prompt"], "file": file})
    return grids


def write_probe_report(probe: dict, out: Path) -> Path:
    rows = []
    for name in probe["order"]:
        c = probe["concepts"][name]
        css = {KNOWN: "better", UNKNOWN: "worse"}.get(c["rank"], "none")
        attrs = ", ".join(f"{_esc(k)} {fmt(v)}" for k, v in c["attributes"].items())
        rows.append(f"<tr><td>{_esc(name)}</td><td class=\"{css}\">{_esc(c['rank'])}</td>"
                    + _num(c["presence"], f"concepts/{name}/presence") + _num(c["clip_t"], f"concepts/{name}/clip_t")
                    + f"<td>{attrs}</td>" + _num(c["cells"], f"concepts/{name}/cells") + "</tr>")
    figures = "".join(
        f'<figure><img src="{_esc(g["file"])}" alt="{_esc(g["concept"])}"><figcaption><b>{_esc(g["concept"])}</b>: '
        f'"{_esc(g["prompt"])}" (rows: mesh and seed)</figcaption></figure>'
        for g in probe["grids"]
    )
    t = probe["thresholds"]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>mvtune concept probe</title><style>'
        "body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
        "padding:3px 8px;font-size:13px}td.num{text-align:right}.better{background:#d8f3dc}.worse{background:#ffd6d6}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>Concept probe: {_esc(probe['model']['name'])}</h1>"
        f"<p>Meshes {_esc(', '.join(probe['meshes']))}; seeds {_esc(', '.join(map(str, probe['seeds'])))}; "
        f"scorer {_esc(probe['scorer'])}. Known: presence &ge; {fmt(t['known'])}; weak: &ge; {fmt(t['weak'])}; "
        "unknown below (0.5 = CLIP cannot tell).</p>"
        "<table><tr><th>concept</th><th>rank</th><th>presence</th><th>CLIP-T</th><th>per attribute</th>"
        f"<th>cells</th></tr>{''.join(rows)}</table>{figures}</body></html>\n"
    )
    return atomic_write(out / PROBE_REPORT, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
