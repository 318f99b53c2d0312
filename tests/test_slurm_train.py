"""`mvtune train` under a real one-node Slurm (tests/slurm_cluster.py): preemption by SIGUSR1 saves a checkpoint,
Lightning requeues the job, the requeued job (same id, same run folder) resumes and finishes at max_steps.

Skipped where slurm-wlm/munge are not installed or the tests do not run as root.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import FINAL_STATES, available, slurm_cluster

from mvtune.train.run import checkpoint_step

REPO = Path(__file__).resolve().parents[1]
REASON = available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no private Slurm here: {REASON}")

MAX_STEPS = 60
FIRST_CHECKPOINT = 5  # signal once checkpoints/step=0000005.ckpt exists: training is under way


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster() as c:
        yield c


def _wait_for(predicate, timeout: float, what: str, cluster, job: str, out: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if cluster.state(job) in FINAL_STATES:  # ended: what we wait for will not come
            break
        time.sleep(0.2)
    log = out.read_text(errors="replace")[-4000:] if out.exists() else "(no job output)"
    pytest.fail(f"{what}: not seen after {timeout:.0f} s, job {job} is {cluster.state(job)}\n{log}\n{cluster.logs()}")


def test_a_trivial_job_completes(cluster, tmp_path):
    out = tmp_path / "hello.txt"
    started = time.monotonic()
    job = cluster.sbatch(f"echo hello from $SLURM_JOB_ID > {out}\n", job_name="mvtune-sanity",
                         output=str(tmp_path / "slurm-%j.out"))
    assert cluster.wait(job, timeout=30) == "COMPLETED", cluster.logs()
    assert out.read_text().strip() == f"hello from {job}"
    assert time.monotonic() - started < 30


def test_train_is_preempted_requeued_and_resumes_to_max_steps(cluster, ducks, tmp_path):
    config = tmp_path / "tinyslurm.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(ducks)}, "model": {"base": "tiny"}}))
    runs = tmp_path / "runs"
    overrides = ["data.num_workers=0", "data.height=64", "data.width=64", f"trainer.max_steps={MAX_STEPS}",
                 "trainer.max_epochs=null", "trainer.precision=32-true", "trainer.accelerator=cpu",
                 "trainer.strategy=auto", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
                 "validation.every_n_steps=1000", "validation.num_objects=0", "validation.sanity_steps=0",
                 f"checkpoint.every_n_steps={FIRST_CHECKPOINT}", f"output.dir={runs}"]
    # The documented script (docs/slurm.md): B:USR1 reaches the batch shell, which is srun (exec), which forwards
    # it to the training task. The test sends that same signal at once with `scancel --batch --signal=USR1`.
    script = "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=mvtune-requeue",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --time=30",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK",
        'echo "start restart=${SLURM_RESTART_COUNT:-0}"',
        f"exec srun {sys.executable} -m mvtune.cli train {config} " + " ".join(overrides),
        "",
    ])
    out = tmp_path / "job.out"
    started = time.monotonic()
    job = cluster.sbatch(script, output=str(out), chdir=str(REPO))
    run = runs / f"tinyslurm-slurm{job}"
    first = run / "checkpoints" / f"step={FIRST_CHECKPOINT:07d}.ckpt"
    _wait_for(first.exists, 120, "first checkpoint", cluster, job, out)
    signalled = time.monotonic()
    cluster.scancel_signal(job, "USR1", batch=True)

    _wait_for(lambda: int(cluster.show_job(job).get("Restarts", 0)) >= 1, 60, "requeue (Restarts>=1)", cluster,
              job, out)
    requeued = time.monotonic()
    final = cluster.wait(job, timeout=180)
    finished = time.monotonic()
    info = cluster.show_job(job)
    output = out.read_text(errors="replace")
    train_log = (run / "train.log").read_text(errors="replace")
    detail = f"\n--- job output\n{output[-4000:]}\n--- train.log\n{train_log[-4000:]}\n{cluster.logs()}"
    assert final == "COMPLETED" and info.get("ExitCode") == "0:0", f"{final} {info.get('ExitCode')}" + detail
    assert int(info["Restarts"]) == 1, detail
    assert "start restart=0" in output and "start restart=1" in output, detail

    # First run: Lightning's SIGUSR1 handler saved hpc_ckpt_1.ckpt and requeued; Slurm's SIGTERM then made
    # mvtune's preemption callback save checkpoints/preempt-step=N.ckpt at a step boundary.
    assert "Requeued SLURM job" in train_log, detail
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and FIRST_CHECKPOINT <= checkpoint_step(hpc) < MAX_STEPS, detail
    # Second run: same id, same folder; resumed from the newest checkpoint of the first run and finished.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished", summary
    assert summary["global_step"] == MAX_STEPS, summary
    resumed = Path(summary["resumed_from"] or "")
    assert resumed.is_file() and resumed.parent in (run, run / "checkpoints"), summary
    assert FIRST_CHECKPOINT <= checkpoint_step(resumed) < MAX_STEPS, summary
    assert checkpoint_step(resumed) >= checkpoint_step(hpc), summary  # the newest one was picked
    assert f"resuming from {resumed}" in train_log, detail
    assert (run / "checkpoints" / f"step={MAX_STEPS:07d}.ckpt").is_file()
    assert (run / "export" / "mvadapter_tg2mv_sdxl.safetensors").is_file()
    print(f"\nslurm requeue timings: first checkpoint {signalled - started:.1f} s, requeue "
          f"{requeued - signalled:.1f} s, finished {finished - requeued:.1f} s later (total {finished - started:.1f} s)")
