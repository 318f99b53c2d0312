"""The local executor: the experiment's stages in order, each shard as a process on this machine.

It runs exactly the command lines the Slurm scripts run and writes the same markers, so an experiment started
here can be continued on a cluster (and the other way round). Finished stages and shards are skipped; once one
stage reruns, every later stage reruns too (its inputs changed).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from mvtune.pipeline import EXIT_FAILED, EXIT_OK, markers
from mvtune.pipeline.experiment import Experiment
from mvtune.pipeline.stages import Stage, build_stages, record
from mvtune.pipeline.state import LOGS_DIR, note_run, prepare, save_state


def log_path(exp: Experiment, stage: str, shard: int | None):
    return exp.dir / LOGS_DIR / (f"{stage}.log" if shard is None else f"{stage}-{shard}.log")


def plan(exp: Experiment, stages: list[Stage]) -> list[tuple[Stage, list[int | None]]]:
    """(stage, shards to run): unfinished shards, and everything after the first stage that reruns."""
    out, rerun = [], False
    for stage in stages:
        todo = [s for s in stage.shard_ids()
                if rerun or not markers.done_ok(exp.dir, stage.name, s, stage.marker_command(s))]
        rerun = rerun or bool(todo)
        out.append((stage, todo))
    return out


#: Runs one stage command (argv), its output going to the log file; returns the exit code.
Runner = Callable[[list[str], Path, Path], int]


def run_subprocess(argv: list[str], log: Path, workdir: Path) -> int:
    """The default: a child process per command, stdout and stderr appended to the stage's log."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    with open(log, "ab") as out:
        return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env).returncode


def run_local(exp: Experiment, on_step: Callable[[str, int | None, str], None] | None = None,
              runner: Runner = run_subprocess) -> int:
    """Run what is unfinished; returns EXIT_OK, or EXIT_FAILED at the first failing shard (later ones do not run).

    `on_step(stage, shard, event)` is told "start", "done", "skip" or "failed: <reason>". `runner` runs one
    command (`mvtune demo` runs them in its own process, so their progress bars show on its console).
    """
    state = prepare(exp, "local")
    for stage, todo in plan(exp, build_stages(exp, slurm=False)):
        if not todo:
            if on_step:
                on_step(stage.name, None, "skip")
            continue
        for shard in todo:
            markers.clear(exp.dir, stage.name, shard)
        for shard in todo:
            path = log_path(exp, stage.name, shard)
            if on_step:
                on_step(stage.name, shard, "start")
            started = time.time()
            code = record(exp, stage, shard, runner(stage.command(shard), path, exp.workdir), path)
            note_run(state, stage.name, [shard], executor="local", exit_code=code, log=str(path),
                     seconds=round(time.time() - started, 2))
            save_state(exp.dir, state)
            if code != 0:
                if on_step:
                    failed = markers.read_record(markers.marker_path(exp.dir, stage.name, shard, "failed")) or {}
                    on_step(stage.name, shard, f"failed: {failed.get('reason', code)} (log {path})")
                return EXIT_FAILED
            if on_step:
                on_step(stage.name, shard, "done")
    save_state(exp.dir, state)
    return EXIT_OK
