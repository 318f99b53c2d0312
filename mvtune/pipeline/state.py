"""The experiment folder's record: the resolved experiment (experiment.yaml) and pipeline.json (which executor
ran which stage when, and the Slurm job of each submission), read back by `status`, `cancel` and reruns."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mvtune.pipeline.experiment import Experiment, ExperimentError, dump_experiment, load_experiment
from mvtune.storage import atomic_write, write_json

STATE_FILE = "pipeline.json"
EXPERIMENT_FILE = "experiment.yaml"
SCRIPTS_DIR = "scripts"
LOGS_DIR = "logs"


def prepare(exp: Experiment, executor: str) -> dict:
    """Create the experiment folder, save the resolved experiment and return the (possibly existing) state."""
    for sub in ("", SCRIPTS_DIR, LOGS_DIR):
        (exp.dir / sub).mkdir(parents=True, exist_ok=True)
    text = dump_experiment(exp)
    atomic_write(exp.dir / EXPERIMENT_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    state = read_state(exp.dir) or {"name": exp.name, "stages": {}}
    state["executor"] = executor
    return state


def read_state(exp_dir: Path) -> dict | None:
    try:
        return json.loads((Path(exp_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExperimentError(f"{Path(exp_dir) / STATE_FILE} cannot be read: {exc}") from None


def save_state(exp_dir: Path, state: dict) -> None:
    state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(Path(exp_dir) / STATE_FILE, state)


def load_folder(exp_dir: Path) -> Experiment:
    """The experiment of a folder written by `mvtune pipeline run`."""
    path = Path(exp_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise ExperimentError(f"{exp_dir} is not an experiment folder (no {EXPERIMENT_FILE}); "
                              "start it with `mvtune pipeline run EXPERIMENT.yaml`")
    return load_experiment(path)


def note_run(state: dict, stage: str, shards: list[int | None], **fields) -> None:
    """Append one submission (Slurm) or run (local) of some shards of a stage to the state."""
    entry = state["stages"].setdefault(stage, {"runs": []})
    entry["runs"].append({"shards": shards, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields})


def latest_runs(state: dict, stage: str) -> dict:
    """shard -> the newest run/submission entry that covered it."""
    out: dict = {}
    for run in (state or {}).get("stages", {}).get(stage, {}).get("runs", []):
        for shard in run["shards"]:
            out[shard] = run
    return out
