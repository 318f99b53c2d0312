"""The Slurm executor: one readable batch script per stage in <experiment>/scripts/, chained with
`sbatch --dependency=afterok:... --kill-on-invalid-dep=yes`; array stages as `--array=...%throttle`.

Each script runs the stage's mvtune command and then `mvtune pipeline mark`, which writes the done marker (or
the failure record) and exits with the job's status, so Slurm's afterok sees the same verdict as `status`.
Training runs through `srun` (one task per GPU, Lightning's SLURMEnvironment sets up DDP) with `--signal`,
`--requeue` and `--open-mode=append` (docs/slurm.md). A rerun submits only shards without a valid marker, plus
everything downstream of them; jobs still pending or running are depended on instead of submitted again.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from mvtune.pipeline import markers
from mvtune.pipeline.experiment import Experiment, Resources
from mvtune.pipeline.local import plan
from mvtune.pipeline.stages import Stage, build_stages
from mvtune.pipeline.state import LOGS_DIR, SCRIPTS_DIR, latest_runs, note_run, prepare, save_state

ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}
DEFAULT_TRAIN_SIGNAL = "USR1@120"


class SlurmError(Exception):
    """sbatch/scontrol are missing or refused a request; the message has Slurm's own words."""


def job_name(exp: Experiment, stage: str) -> str:
    return f"mvtune-{exp.name}-{stage}"


def log_pattern(exp: Experiment, stage: Stage) -> Path:
    return exp.dir / LOGS_DIR / (f"{stage.name}-%A_%a.out" if stage.array else f"{stage.name}-%j.out")


def array_spec(shards: list[int], throttle: int | None) -> str:
    """0-2, or 1,4 for a partial rerun; `%N` limits how many run at once."""
    ranges, start = [], None
    for i, s in enumerate(shards):
        if start is None:
            start = s
        if i + 1 == len(shards) or shards[i + 1] != s + 1:
            ranges.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(ranges) + (f"%{throttle}" if throttle else "")


def _directives(exp: Experiment, stage: Stage, res: Resources) -> list[str]:
    opts = [f"--job-name={job_name(exp, stage.name)}", f"--output={log_pattern(exp, stage)}", "--open-mode=append"]
    if stage.array:
        opts.append(f"--array={array_spec(list(range(stage.shards)), res.throttle)}")
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time"),
                      ("constraint", "constraint"), ("mem", "mem"), ("gres", "gres"), ("cpus", "cpus-per-task"),
                      ("gpus_per_node", "gpus-per-node")):
        value = getattr(res, key)
        if value is not None:
            opts.append(f"--{flag}={value}")
    if stage.srun:
        opts += [f"--nodes={res.nodes or 1}", f"--ntasks-per-node={res.tasks_per_node or 1}",
                 f"--signal={res.signal or DEFAULT_TRAIN_SIGNAL}", "--requeue"]
    opts += res.extra
    return [f"#SBATCH {o}" for o in opts]


def render_script(exp: Experiment, stage: Stage) -> str:
    """The batch script of one stage (readable; `sbatch` it by hand to rerun the stage, `--array=K` for shard K)."""
    res = exp.slurm.for_stage(stage.name)
    py = shlex.quote(exp.python_exe())
    exp_dir = shlex.quote(str(exp.dir))
    logs = shlex.quote(str(exp.dir / LOGS_DIR))
    if stage.array:
        shard_lines = ['SHARD=${SLURM_ARRAY_TASK_ID}',
                       f'LOG={logs}/{stage.name}-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out']
        what, mark_shard = f" shard $SHARD of {stage.shards}", ' --shard "$SHARD"'
    else:
        shard_lines = [f'LOG={logs}/{stage.name}-${{SLURM_JOB_ID}}.out']
        what, mark_shard = "", ""
    command = stage.shell()
    if stage.srun:
        # srun starts one rank per task; --signal (without B:) reaches these steps, Lightning checkpoints and
        # requeues the job, and the requeued job resumes from the run folder (docs/slurm.md).
        command = f"srun {command}"
    rerun = "sbatch --array=K " if stage.array else "sbatch "
    lines = [
        "#!/bin/bash",
        f"# mvtune pipeline, experiment {exp.name!r}, stage {stage.name}"
        + (f" ({stage.shards} shards, one per array task)" if stage.array else ""),
        f"# Rerun by hand: {rerun}{exp.dir / SCRIPTS_DIR / (stage.name + '.sh')}  "
        "(`mvtune pipeline run` adds the dependencies on earlier stages)",
        *_directives(exp, stage, res),
        "set -euo pipefail",
        *res.setup,
        f"cd {shlex.quote(str(exp.workdir))}",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        *shard_lines,
        f'echo "[mvtune] {stage.name}{what}, job ${{SLURM_JOB_ID}} on $(hostname), '
        'restart ${SLURM_RESTART_COUNT:-0}, $(date -Is)"',
        "status=0",
        f"{command} || status=$?",
        f'exec {py} -m mvtune.cli pipeline mark {exp_dir} {stage.name}{mark_shard} --exit-code "$status" --log "$LOG"',
        "",
    ]
    return "\n".join(lines)


def write_scripts(exp: Experiment, stages: list[Stage]) -> dict[str, Path]:
    from mvtune.storage import atomic_write

    paths = {}
    for stage in stages:
        path = exp.dir / SCRIPTS_DIR / f"{stage.name}.sh"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render_script(exp, stage)
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
        path.chmod(0o755)
        paths[stage.name] = path
    return paths


# ---- Slurm's clients ---------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"`{name}` not found: run on a Slurm login node (or use --executor local)")
    return path


def _call(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([_tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


def submit(script: Path, dependencies: list[str], array: str | None) -> str:
    """sbatch a script after `dependencies` (job ids); returns the new job id."""
    args = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
    if dependencies:
        args.append("--dependency=afterok:" + ":".join(dependencies))
    if array is not None:
        args.append(f"--array={array}")
    proc = _call(*args, str(script))
    job = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not job.isdigit():
        raise SlurmError(f"sbatch {script} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return job


def parse_tasks(spec: str) -> list[int]:
    """ArrayTaskId of scontrol (`3`, `0-2%2`, `1,4-5`) as task ids."""
    out = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += range(int(lo), int(hi) + 1)
        elif part.isdigit():
            out.append(int(part))
    return out


def query_jobs(job_ids: list[str]) -> dict[str, dict]:
    """Job id (or `<array id>_<task>`) -> {state, reason, exit_code, restarts, log} from scontrol, then sacct
    for jobs scontrol has forgotten (where accounting exists). Unknown jobs are absent."""
    out: dict[str, dict] = {}
    if shutil.which("scontrol") is None:
        return out
    for job in dict.fromkeys(job_ids):
        proc = _call("scontrol", "show", "job", "-o", job, timeout=30)
        if proc.returncode != 0:
            continue
        for line in proc.stdout.splitlines():
            fields = dict(re.findall(r"(\S+?)=(\S*)", line))
            info = {"state": fields.get("JobState"), "reason": fields.get("Reason"),
                    "exit_code": fields.get("ExitCode"), "restarts": int(fields.get("Restarts", 0) or 0),
                    "log": fields.get("StdOut"), "job": fields.get("JobId")}
            if fields.get("ArrayTaskId"):
                for task in parse_tasks(fields["ArrayTaskId"]):
                    out[f"{fields.get('ArrayJobId', job)}_{task}"] = info | {"job": f"{fields.get('ArrayJobId')}_{task}"}
            else:
                out[fields.get("JobId", job)] = info
    missing = [j for j in job_ids if j not in out and not any(k.startswith(f"{j}_") for k in out)]
    if missing and shutil.which("sacct"):
        proc = _call("sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode,Reason", "-j", ",".join(missing))
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                parts = line.split("|")
                if len(parts) >= 4:
                    out[parts[0]] = {"state": parts[1].split()[0], "exit_code": parts[2], "reason": parts[3],
                                     "restarts": 0, "log": None, "job": parts[0]}
    return out


def shard_job(run: dict, shard: int | None) -> str:
    """The Slurm id of one shard's job: `<array id>_<task>` for arrays."""
    return f"{run['job']}_{shard}" if shard is not None else run["job"]


def run_slurm(exp: Experiment, dry_run: bool = False, echo=print) -> int:
    """Write the scripts and submit what is unfinished; returns EXIT_OK. `dry_run`: print the scripts and the
    sbatch lines (dependencies as <stage>), submit nothing, leave pipeline.json alone."""
    from mvtune.pipeline import EXIT_OK

    stages = build_stages(exp, slurm=True)
    state = prepare(exp, "slurm") if not dry_run else {"stages": {}}
    scripts = write_scripts(exp, stages)
    previous: list[str] = []  # job ids the next stage waits for
    active = _active_jobs(state)
    for stage, todo in plan(exp, stages):
        res = exp.slurm.for_stage(stage.name)
        runs = latest_runs(state, stage.name)
        waiting = [s for s in todo if s in runs and active.get(shard_job(runs[s], s)) in ACTIVE_STATES]
        fresh = [s for s in todo if s not in waiting]
        deps = list(previous)
        previous = sorted({runs[s]["job"] for s in waiting})
        if not todo:
            echo(f"# {stage.name}: done, not submitted")
            continue
        if not fresh:
            echo(f"# {stage.name}: still queued or running as job {', '.join(previous)}")
            continue
        array = array_spec(fresh, res.throttle) if stage.array else None
        if dry_run:
            dep = f" --dependency=afterok:{':'.join(deps)}" if deps else ""
            arr = f" --array={array}" if array else ""
            echo(f"sbatch --parsable --kill-on-invalid-dep=yes{dep}{arr} {scripts[stage.name]}")
            echo(scripts[stage.name].read_text())
            previous.append(f"<{stage.name}>")
            continue
        for shard in fresh:
            markers.clear(exp.dir, stage.name, shard)
        job = submit(scripts[stage.name], deps, array)
        note_run(state, stage.name, fresh, executor="slurm", job=job, script=str(scripts[stage.name]),
                 dependencies=deps, array=array)
        save_state(exp.dir, state)
        echo(f"{stage.name}: job {job}" + (f" (array {array})" if array else "")
             + (f" after {':'.join(deps)}" if deps else ""))
        previous.append(job)
    return EXIT_OK


def _active_jobs(state: dict) -> dict[str, str]:
    """shard job id -> state, for the newest submission of every shard of every stage."""
    ids = []
    for stage in state.get("stages", {}):
        for shard, run in latest_runs(state, stage).items():
            if run.get("job"):
                ids.append(run["job"])
    info = query_jobs(ids) if ids else {}
    return {k: v["state"] for k, v in info.items()}


def cancel(job_ids: list[str]) -> None:
    if not job_ids:
        return
    proc = _call("scancel", *job_ids)
    if proc.returncode != 0:
        raise SlurmError(f"scancel {' '.join(job_ids)} failed: {proc.stderr.strip()}")
