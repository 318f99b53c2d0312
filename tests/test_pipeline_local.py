"""The local executor: the same stage commands and markers as on Slurm, run one after another here; reruns redo
only what is unfinished and what depends on it; a failure stops the run and `status` names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mvtune.pipeline import EXIT_FAILED, EXIT_OK
from mvtune.pipeline.experiment import load_experiment
from mvtune.pipeline.local import run_local
from mvtune.pipeline.status import experiment_status, overall


def _experiment(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "loc", "dir": str(tmp_path / "exp"), "render": {"resolution": 16, "shards": 2},
        "split": {"val": 0.2, "test": 0.2}, "validate": {"pixels": False},
    }))
    return path


def _events(exp) -> tuple[int, list[tuple[str, int | None, str]]]:
    events = []
    code = run_local(exp, lambda stage, shard, event: events.append((stage, shard, event)))
    return code, events


def test_local_run_then_reruns_redo_only_the_unfinished_part(tmp_path, cli):
    exp = load_experiment(_experiment(tmp_path))
    code, events = _events(exp)
    assert code == EXIT_OK, events
    started = [(s, k) for s, k, e in events if e == "start"]
    assert started == [("meshes", None), ("render", 0), ("render", 1), ("merge", None), ("split", None),
                       ("validate", None), ("report", None)]
    rows = experiment_status(exp)
    assert overall(rows) == EXIT_OK and {r.state for r in rows} == {"DONE"}
    assert json.loads((exp.dir / "report" / "report.json").read_text())["dataset"]["objects"] == 7
    assert (exp.dir / "logs" / "render-1.log").is_file()

    code, events = _events(exp)  # nothing left to do
    assert code == EXIT_OK and all(e == "skip" for _, _, e in events), events

    # A shard's output disappears: that shard and everything after it run again, the rest is kept.
    (exp.dir / "dataset" / ".shards" / "1-of-2" / "scene_list.json").unlink()
    code, events = _events(exp)
    assert code == EXIT_OK
    assert [(s, k) for s, k, e in events if e == "start"] == [("render", 1), ("merge", None), ("split", None),
                                                             ("validate", None), ("report", None)]
    result = cli("pipeline", "status", exp.dir)
    assert "DONE" in result.stdout


@pytest.mark.slow
def test_a_failing_stage_stops_the_run_and_status_names_it(tmp_path, cli):
    exp = load_experiment(_experiment(tmp_path))
    (exp.dir / "meshes").mkdir(parents=True)
    (exp.dir / "meshes" / "zz_unreadable.glb").symlink_to("/proc/self/mem")  # read fails with EIO
    code, events = _events(exp)
    assert code == EXIT_FAILED
    failed = [(s, k, e) for s, k, e in events if e.startswith("failed")]
    assert len(failed) == 1 and failed[0][:2] == ("render", 1), events  # position 7 of 8 -> shard 7 % 2 = 1
    assert "zz_unreadable" in failed[0][2] and "could not be read" in failed[0][2]
    assert not any(s == "merge" for s, _, _ in events)
    result = cli("pipeline", "status", exp.dir, "--json", expect=EXIT_FAILED)
    rows = {(r["stage"], r["shard"]): r for r in json.loads(result.stdout)}
    assert rows[("render", 1)]["state"] == "FAILED" and rows[("render", 0)]["state"] == "DONE"
    assert rows[("render", 1)]["log"].endswith("render-1.log")
    assert rows[("merge", None)]["state"] == "NOT_RUN"


@pytest.mark.slow
def test_prompts_and_generated_meshes_feed_the_render(tmp_path):
    """prompts (the team's concepts) -> procedural mesh generation in 2 shards -> render -> split -> validate."""
    concepts = Path(__file__).resolve().parents[1] / "examples" / "concepts" / "ducks.yaml"
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "gen", "dir": str(tmp_path / "exp"), "prompts": {"concepts": str(concepts), "count": 2},
        "meshes": {"source": "generate", "backend": "procedural", "shards": 2}, "render": {"resolution": 16},
        "split": {"val": 0.2, "test": 0.2}, "validate": {"pixels": False},
    }))
    exp = load_experiment(path)
    code, events = _events(exp)
    assert code == EXIT_OK, events
    assert [(s, k) for s, k, e in events if e == "start"][:3] == [("prompts", None), ("meshes", 0), ("meshes", 1)]
    rows = [json.loads(line) for line in (exp.dir / "prompts" / "prompts.jsonl").read_text().splitlines()]
    meshes = sorted(p.parent.name for p in (exp.dir / "meshes").glob("*/mesh.glb"))
    assert meshes == sorted(r["id"] for r in rows) and len(meshes) == 2 * len({r["concept"] for r in rows})
    assert len(json.loads((exp.dir / "dataset" / "scene_list.json").read_text())) == len(meshes)
