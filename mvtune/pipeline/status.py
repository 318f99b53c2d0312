"""Where an experiment stands: each stage's and shard's state from its markers and, for Slurm runs, from
scontrol (sacct where accounting exists), with the reason of failures, restarts and log paths."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from mvtune.pipeline import EXIT_FAILED, EXIT_OK, EXIT_RUNNING, markers
from mvtune.pipeline.experiment import Experiment
from mvtune.pipeline.stages import build_stages
from mvtune.pipeline.state import latest_runs, read_state

DONE, NOT_RUN, FAILED, STALE = "DONE", "NOT_RUN", "FAILED", "STALE"


@dataclass
class ShardStatus:
    stage: str
    shard: int | None
    state: str  # DONE, NOT_RUN, FAILED, STALE, or Slurm's JobState (PENDING, RUNNING, CANCELLED, TIMEOUT, ...)
    job: str | None = None
    restarts: int = 0
    reason: str | None = None
    log: str | None = None


def experiment_status(exp: Experiment) -> list[ShardStatus]:
    from mvtune.pipeline.slurm import ACTIVE_STATES, query_jobs, shard_job

    state = read_state(exp.dir) or {"stages": {}}
    stages = build_stages(exp, slurm=state.get("executor") == "slurm")
    ids = [run["job"] for s in stages for run in latest_runs(state, s.name).values() if run.get("job")]
    jobs = query_jobs(ids) if ids else {}
    rows = []
    for stage in stages:
        runs = latest_runs(state, stage.name)
        for shard in stage.shard_ids():
            run = runs.get(shard)
            job = shard_job(run, shard) if run and run.get("job") else None
            info = jobs.get(job, {}) if job else {}
            done = markers.read_record(markers.marker_path(exp.dir, stage.name, shard))
            failed = markers.read_record(markers.marker_path(exp.dir, stage.name, shard, "failed"))
            row = ShardStatus(stage.name, shard, NOT_RUN, job, info.get("restarts", 0),
                              log=info.get("log") or (run or {}).get("log"))
            if info.get("state") in ACTIVE_STATES:
                row.state = info["state"]
                row.reason = None if info.get("reason") in (None, "None") else info["reason"]
            elif done and markers.done_ok(exp.dir, stage.name, shard, stage.marker_command(shard)):
                row.state, row.log = DONE, done.get("log") or row.log
                row.restarts = max(row.restarts, int(done.get("restarts") or 0))
            elif failed:
                row.state, row.reason, row.log = FAILED, failed.get("reason"), failed.get("log") or row.log
                row.restarts = max(row.restarts, int(failed.get("restarts") or 0))
            elif done:
                row.state, row.reason = STALE, "outputs changed since the done marker; `mvtune pipeline run` redoes it"
            elif info.get("state"):
                row.state = info["state"]  # CANCELLED (e.g. a dependency failed), TIMEOUT, NODE_FAIL, ...
                reason = info.get("reason")
                if reason == "DependencyNeverSatisfied":
                    reason = "cancelled: an earlier stage failed (DependencyNeverSatisfied)"
                row.reason = f"{reason} (exit {info.get('exit_code')})" if reason not in (None, "None") \
                    else f"exit {info.get('exit_code')}"
            rows.append(row)
    return rows


def overall(rows: list[ShardStatus]) -> int:
    """EXIT_OK when all done; EXIT_RUNNING while jobs are queued or running and nothing failed; else EXIT_FAILED."""
    from mvtune.pipeline.slurm import ACTIVE_STATES

    if all(r.state == DONE for r in rows):
        return EXIT_OK
    if any(r.state not in ACTIVE_STATES | {DONE, NOT_RUN} for r in rows):
        return EXIT_FAILED
    if any(r.state in ACTIVE_STATES for r in rows):
        return EXIT_RUNNING
    return EXIT_FAILED  # some stages never ran and nothing is queued: `mvtune pipeline run` again


def rows_json(rows: list[ShardStatus]) -> list[dict]:
    return [asdict(r) for r in rows]


def active_jobs(rows: list[ShardStatus]) -> list[str]:
    """Slurm jobs with shards still pending or running (what `cancel` cancels): a whole array by its id, so a
    pending array whose tasks Slurm has not split yet goes in one piece."""
    from mvtune.pipeline.slurm import ACTIVE_STATES

    return sorted({r.job.split("_")[0] for r in rows if r.job and r.state in ACTIVE_STATES}, key=int)
