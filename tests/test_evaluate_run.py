"""`mvtune evaluate` end to end on tiny models: paired cells, resume after kill -9, failing items recorded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation_data import suite_data, tiny_clip, write_suite
from mvtune.evaluate.run import CELL_RECORD, evaluate_suite, initial_latents
from mvtune.evaluate.suite import load_suite

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, tiny_base, ducks):
    """base, an identical copy, a differently scheduled model, a model whose adapter file is garbage and a mesh
    that does not load: the good cells finish, the bad ones land in errors.jsonl."""
    root = tmp_path_factory.mktemp("evaluation")
    clip = tiny_clip(root / "clip")
    (root / "broken.safetensors").write_bytes(b"not a safetensors file")
    (root / "broken.glb").write_bytes(b"glTF garbage")
    models = [
        {"name": "base", "base_model": str(tiny_base)},
        {"name": "copy", "base_model": str(tiny_base)},
        {"name": "shifted", "base_model": str(tiny_base), "shift_scale": 2.0},
        {"name": "broken", "base_model": str(tiny_base), "adapter": str(root / "broken.safetensors")},
    ]
    data = suite_data(tiny_base, ducks, clip, models)
    data["meshes"]["files"] = [str(root / "broken.glb")]
    suite_file = write_suite(root / "suite.yaml", data)
    out = root / "out"
    summary = evaluate_suite(load_suite(suite_file), out)
    return {"root": root, "out": out, "summary": summary, "suite": suite_file, "data": data, "clip": clip}


def _cells(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]


def _without_dir(records):
    return [{k: v for k, v in r.items() if k != "dir"} for r in records]


def test_every_cell_is_scored_and_failures_are_recorded(evaluation):
    summary, out = evaluation["summary"], evaluation["out"]
    # 4 models x 2 meshes x 2 prompts x 2 seeds; the broken mesh (3 good models) and the broken model fail
    assert summary["counts"]["cells"] == 32
    assert summary["counts"]["done"] == 12 and summary["errors"] == 20
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["model"] for e in errors if "does not load" in e["error"]} == {"broken"}
    assert all("broken" in e["error"] for e in errors)
    cells = _cells(out)
    assert {c["model"] for c in cells} == {"base", "copy", "shifted"}
    first = cells[0]
    assert {"consistency_mae", "silhouette_iou", "clip_t[tiny]"} <= set(first["metrics"])
    concept = next(c for c in cells if c["group"] == "firefighter")
    assert 0.0 <= concept["attributes"]["tiny"]["helmet"] <= 1.0
    assert "clip_i[tiny]" in concept["metrics"]  # a dataset object: compared with its ground-truth renders
    assert summary["kid"]["base"]["tiny"]["n_real"] == 6


def test_models_share_initial_latents(evaluation):
    """Paired design: the same weights and seed give byte-identical views; another seed does not."""
    cells = {(c["model"], c["prompt_id"], c["seed"]): Path(c["dir"]) for c in _cells(evaluation["out"])}
    for key in [k for k in cells if k[0] == "base"]:
        a = np.asarray(Image.open(cells[key] / "grid.png"))
        b = np.asarray(Image.open(cells[("copy", *key[1:])] / "grid.png"))
        np.testing.assert_array_equal(a, b)
    prompt = next(k[1] for k in cells)
    assert not np.array_equal(np.asarray(Image.open(cells[("base", prompt, 0)] / "grid.png")),
                              np.asarray(Image.open(cells[("base", prompt, 1)] / "grid.png")))
    assert np.array_equal(initial_latents(3, 64).numpy(), initial_latents(3, 64).numpy())


def test_identical_model_has_no_evidence_of_any_difference(evaluation):
    rows = [c for c in evaluation["summary"]["comparisons"] if c["model"] == "copy"]
    assert rows and all(c["diff"] == 0.0 and c["verdict"] == "no evidence" for c in rows)
    groups = {c["group"] for c in rows}
    assert groups == {"firefighter", "generic"}
    assert "copy" in evaluation["summary"]["forgetting"]


def test_rerun_does_only_missing_cells(evaluation):
    out = evaluation["out"]
    before = (out / "cells.jsonl").read_text()
    summary = evaluate_suite(load_suite(evaluation["suite"]), out, report=False)
    assert summary["counts"]["skipped"] == 12 and summary["counts"]["generated"] == 0
    assert (out / "cells.jsonl").read_text() == before


def test_kill_9_then_rerun_gives_identical_cells(evaluation, tmp_path):
    """A run killed with SIGKILL mid-way resumes to the cells an uninterrupted run wrote."""
    data = dict(evaluation["data"], models=evaluation["data"]["models"][:1])
    data["meshes"] = {k: v for k, v in data["meshes"].items() if k != "files"}
    suite_file = write_suite(tmp_path / "suite.yaml", data)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mvtune.cli", "evaluate", str(suite_file), "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.rglob(CELL_RECORD))) < 1 and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside the next cell
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.rglob(CELL_RECORD)))
    assert 1 <= done_before < 4, "the run finished (or never started) before the kill"
    summary = evaluate_suite(load_suite(suite_file), out, report=False)
    assert summary["counts"]["skipped"] == done_before and summary["errors"] == 0
    expected = [c for c in _cells(evaluation["out"]) if c["model"] == "base"]
    assert _without_dir(_cells(out)) == _without_dir(expected)


def test_shards_make_disjoint_cells_that_the_unsharded_run_compares(evaluation, tmp_path):
    """Slurm array tasks (`--shard i/n`) split the cells; the final run finds them all and generates none."""
    from mvtune.evaluate.run import evaluate_cells

    data = dict(evaluation["data"], models=evaluation["data"]["models"][:1])
    data["meshes"] = {k: v for k, v in data["meshes"].items() if k != "files"}
    suite = load_suite(write_suite(tmp_path / "suite.yaml", data))
    out = tmp_path / "out"
    counts = [evaluate_cells(suite, out, (i, 2)) for i in range(2)]
    assert [c["generated"] for c in counts] == [2, 2] and not any(c["failed"] for c in counts)
    assert [c["skipped"] for c in (evaluate_cells(suite, out, (i, 2)) for i in range(2))] == [2, 2]
    summary = evaluate_suite(suite, out, report=False)
    assert summary["counts"]["generated"] == 0 and summary["counts"]["skipped"] == 4
    expected = [c for c in _cells(evaluation["out"]) if c["model"] == "base"]
    assert _without_dir(_cells(out)) == _without_dir(expected)
