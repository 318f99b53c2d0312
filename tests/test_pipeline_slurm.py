"""`mvtune pipeline run --executor slurm` on a real one-node Slurm (tests/slurm_cluster.py): array shards, merge,
the chain of afterok dependencies, markers, status and reruns; the slow ones add 2-rank DDP training through srun
with a preemption and requeue, evaluation, and a failing shard that is fixed and resubmitted alone.

Skipped where slurm-wlm/munge are not installed or the tests do not run as root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import available, slurm_cluster

PROBE = Path(__file__).resolve().parent / "pipeline_rank_probe"
REASON = available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no private Slurm here: {REASON}")


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster() as c:
        yield c


def _pipeline(cluster, *args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mvtune.cli", "pipeline", *map(str, args)], env=cluster.env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _status(cluster, exp_dir: Path) -> tuple[int, list[dict]]:
    proc = _pipeline(cluster, "status", exp_dir, "--json", cwd=exp_dir.parent)
    assert proc.returncode in (0, 1, 3), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _wait(cluster, exp_dir: Path, timeout: float, until=None) -> tuple[int, list[dict]]:
    """Poll `pipeline status` until no job is queued or running (or `until(rows)`); returns (exit code, rows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, rows = _status(cluster, exp_dir)
        if (until or _settled)(rows):
            return code, rows
        time.sleep(1)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted((exp_dir / "logs").glob("*")))
    pytest.fail(f"experiment not finished after {timeout:.0f} s: {json.dumps(rows, indent=1)}\n{logs}\n{cluster.logs()}")


def _settled(rows: list[dict]) -> bool:
    from mvtune.pipeline.slurm import ACTIVE_STATES

    return not any(r["state"] in ACTIVE_STATES for r in rows)


def _state(rows: list[dict]) -> dict[str, str]:
    return {r["stage"] + ("" if r["shard"] is None else f"[{r['shard']}]"): r["state"] for r in rows}


def _experiment(tmp_path: Path, **stages) -> Path:
    exp = {"name": "t", "dir": str(tmp_path / "exp"), "render": {"resolution": 32, "shards": 3},
           "split": {"val": 0.2, "test": 0.2}, "validate": {"pixels": False},
           "slurm": {"defaults": {"time": "10:00", "cpus": 1}, "render": {"throttle": 2}}}
    for key, value in stages.items():
        exp[key] = exp.get(key, {}) | value if isinstance(value, dict) else value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_sharded_render_chain_runs_to_done_and_a_rerun_submits_nothing(cluster, tmp_path):
    """samples -> 3 render array tasks -> merge -> split -> validate -> report, chained by afterok."""
    path = _experiment(tmp_path)
    exp_dir = tmp_path / "exp"
    started = time.monotonic()
    proc = _pipeline(cluster, "run", path, "--executor", "slurm", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = [line.split()[2] for line in proc.stdout.splitlines() if ": job " in line]
    assert len(jobs) == 6 and "(array 0-2%2)" in proc.stdout, proc.stdout
    cluster.jobs += jobs
    code, rows = _wait(cluster, exp_dir, 300)
    seconds = time.monotonic() - started
    assert code == 0, rows
    assert set(_state(rows).values()) == {"DONE"} and len(rows) == 8, rows

    # The merged index is the one an unsharded render of the same meshes writes.
    from mvtune.render.dataset import RenderConfig, render_dataset

    single = tmp_path / "single"
    render_dataset(RenderConfig(input=exp_dir / "meshes", out_dir=single, resolution=32))
    for name in ("scene_list.json", "captions.json", "manifest.json", "errors.jsonl"):
        assert (exp_dir / "dataset" / name).read_bytes() == (single / name).read_bytes(), name
    report = json.loads((exp_dir / "report" / "report.json").read_text())
    assert report["dataset"]["objects"] == 7
    state = json.loads((exp_dir / "pipeline.json").read_text())
    assert state["stages"]["render"]["runs"][0]["array"] == "0-2%2"
    assert state["stages"]["merge"]["runs"][0]["dependencies"] == [state["stages"]["render"]["runs"][0]["job"]]

    again = _pipeline(cluster, "run", path, "--executor", "slurm", cwd=tmp_path)
    assert again.returncode == 0 and ": job " not in again.stdout, again.stdout
    assert again.stdout.count("done, not submitted") == 6
    shards = [json.loads(p.read_text()) for p in sorted((exp_dir / "dataset" / ".shards").glob("*/render_summary.json"))]
    print(f"\nslurm chain of 8 jobs (7 meshes at 32 px, 3 render shards): {seconds:.1f} s; render shards "
          + ", ".join(f"{s['rendered']} objects in {s['seconds']:.1f} s" for s in shards))


def test_cancel_stops_the_queued_chain_and_status_says_so(cluster, tmp_path):
    path = _experiment(tmp_path, slurm={"defaults": {"time": "10:00", "cpus": 1}, "meshes": {"extra": ["--hold"]}})
    exp_dir = tmp_path / "exp"
    proc = _pipeline(cluster, "run", path, "--executor", "slurm", cwd=tmp_path)  # meshes held: nothing starts
    assert proc.returncode == 0, proc.stderr
    cluster.jobs += [line.split()[2] for line in proc.stdout.splitlines() if ": job " in line]
    code, rows = _status(cluster, exp_dir)
    assert code == 3 and {r["state"] for r in rows} == {"PENDING"}, rows
    cancelled = _pipeline(cluster, "cancel", exp_dir, cwd=tmp_path)
    assert cancelled.returncode == 0 and "cancelled 6 jobs" in cancelled.stderr, cancelled.stderr
    code, rows = _wait(cluster, exp_dir, 60)
    assert code == 1 and {r["state"] for r in rows} == {"CANCELLED"}, _state(rows)
    assert _pipeline(cluster, "cancel", exp_dir, cwd=tmp_path).stderr.strip() == "no queued or running jobs"


@pytest.mark.slow
def test_a_failing_shard_cancels_dependants_and_a_rerun_resubmits_only_it(cluster, tmp_path):
    path = _experiment(tmp_path)
    exp_dir = tmp_path / "exp"
    meshes = exp_dir / "meshes"
    meshes.mkdir(parents=True)
    bad = meshes / "zz_unreadable.glb"  # sorts last: input position 7, so shard 7 % 3 = 1
    bad.symlink_to("/proc/self/mem")  # a regular file whose read fails with EIO, even for root
    proc = _pipeline(cluster, "run", path, "--executor", "slurm", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cluster.jobs += [line.split()[2] for line in proc.stdout.splitlines() if ": job " in line]
    code, rows = _wait(cluster, exp_dir, 300)
    states = _state(rows)
    assert code == 1, rows
    assert states["render[0]"] == states["render[2]"] == "DONE" and states["render[1]"] == "FAILED", rows
    failed = next(r for r in rows if r["stage"] == "render" and r["shard"] == 1)
    assert "could not be read" in failed["reason"] and "zz_unreadable" in failed["reason"], failed
    assert failed["log"] and Path(failed["log"]).is_file()
    for stage in ("merge", "split", "validate", "report"):
        row = next(r for r in rows if r["stage"] == stage)
        assert row["state"] == "CANCELLED" and "DependencyNeverSatisfied" in row["reason"], row
    status_text = _pipeline(cluster, "status", exp_dir, cwd=tmp_path)
    assert status_text.returncode == 1 and "FAILED" in status_text.stdout

    bad.unlink()
    shutil.copy(meshes / "duck_yellow.glb", bad)  # fixed: same name, same input positions
    shutil.copy(meshes / "duck_yellow.txt", bad.with_suffix(".txt"))  # its caption
    rerun = _pipeline(cluster, "run", path, "--executor", "slurm", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    cluster.jobs += [line.split()[2] for line in rerun.stdout.splitlines() if ": job " in line]
    assert "render: job" in rerun.stdout and "(array 1%2)" in rerun.stdout, rerun.stdout
    assert "meshes: done, not submitted" in rerun.stdout
    code, rows = _wait(cluster, exp_dir, 300)
    assert code == 0, [r for r in rows if r["state"] != "DONE"]
    state = json.loads((exp_dir / "pipeline.json").read_text())
    assert [r["shards"] for r in state["stages"]["render"]["runs"]] == [[0, 1, 2], [1]]
    assert len(state["stages"]["meshes"]["runs"]) == 1
    assert json.loads((exp_dir / "dataset" / "scene_list.json").read_text())[-1] == "zz_unreadable"


def _train_config(tmp_path: Path, max_steps: int, base: Path) -> Path:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": "set-by-the-pipeline", "height": 64, "width": 64, "num_workers": 0},
        "model": {"base": str(base), "frozen_dtype": "fp32"},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "validation": {"every_n_steps": 1000, "num_objects": 0, "sanity_steps": 0},
        "trainer": {"max_steps": max_steps, "max_epochs": None, "precision": "32-true", "accelerator": "cpu",
                    "strategy": "ddp", "enable_progress_bar": False, "log_every_n_steps": 1},
        "checkpoint": {"every_n_steps": 4},
    }))
    return config


def _suite(tmp_path: Path, base: Path) -> Path:
    """The tiny base against the fine-tune on the test split: 2 models x 2 objects x 2 prompts x 1 seed."""
    from mvtune.models.tiny import write_tiny_clip

    clip = write_tiny_clip(tmp_path / "tiny-clip")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "pipeline test",
        "models": [{"name": "base", "base_model": str(base)},
                   {"name": "fine-tune", "base_model": str(base), "adapter": "set by the experiment's overrides"}],
        "meshes": {"dataset": "set by the experiment's overrides", "split": "test"},
        "prompts": {"concepts": {"subjects": ["duck"], "concepts": {"firefighter": {"attributes": {
            "helmet": {"phrases": ["red helmet"], "positive": "a red helmet", "contrast": "a bare head"}}}}},
            "per_concept": 1, "generic": 1},
        "seeds": [0],
        "sampling": {"steps": 2, "guidance": 3.0, "resolution": 64},
        "scorers": [{"name": "tiny-clip", "kind": "transformers", "path": str(clip)}],
        "device": "cpu",
    }))
    return suite


@pytest.mark.slow
def test_whole_experiment_with_ddp_training_preempted_and_requeued(cluster, tmp_path, tiny_base):
    """3 render shards, merge, split, validate, 2-rank DDP training (gloo, srun) preempted once, evaluation of
    the fine-tune against its base, report."""
    max_steps = 24
    config = _train_config(tmp_path, max_steps, tiny_base)
    probe = tmp_path / "probe"
    models = (f"models=[{{name: base, base_model: {tiny_base}}}, {{name: fine-tune, base_model: {tiny_base}, "
              "adapter: '{run}/export/mvadapter_tg2mv_sdxl.safetensors'}]")
    path = _experiment(
        tmp_path, render={"resolution": 64, "shards": 3}, train={"config": str(config)},
        evaluate={"suite": str(_suite(tmp_path, tiny_base)), "overrides": [models, "meshes.dataset={dataset}"]},
        slurm={"defaults": {"time": "20:00", "cpus": 1}, "render": {"throttle": 2},
               "train": {"nodes": 1, "tasks_per_node": 2,
                         "setup": [f"export PYTHONPATH={PROBE}", f"export MVTUNE_RANK_PROBE={probe}"]}},
    )
    exp_dir = tmp_path / "exp"
    proc = _pipeline(cluster, "run", path, "--executor", "slurm", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cluster.jobs += [line.split()[2] for line in proc.stdout.splitlines() if ": job " in line]
    train_job = next(line.split()[2] for line in proc.stdout.splitlines() if line.startswith("train: job "))
    first = exp_dir / "train" / "run" / "checkpoints" / "step=0000004.ckpt"
    _wait(cluster, exp_dir, 300, until=lambda rows: first.exists() or _state(rows).get("train") not in
          ("PENDING", "RUNNING", "NOT_RUN"))
    assert first.exists(), "training did not reach its first checkpoint"
    cluster.scancel_signal(train_job, "USR1")  # to the srun steps, as --signal=USR1@120 does

    code, rows = _wait(cluster, exp_dir, 400)
    states = _state(rows)
    train_row = next(r for r in rows if r["stage"] == "train")
    assert code == 0, json.dumps(rows, indent=1) + (exp_dir / "logs" / f"train-{train_job}.out").read_text()[-3000:]
    assert set(states.values()) == {"DONE"}
    assert train_row["restarts"] == 1, train_row  # the requeue is visible in status
    summary = json.loads((exp_dir / "train" / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == max_steps, summary
    assert summary["resumed_from"], summary
    log = (exp_dir / "logs" / f"train-{train_job}.out").read_text()
    assert "restart 0" in log and "restart 1" in log  # --open-mode=append kept both starts

    # Both ranks of the final start: same parameters; in every epoch they split the train objects between them,
    # sharing only the padding that evens out an odd count (as DistributedSampler pads); every epoch after the
    # resumed one covers the whole split.
    ranks = [json.loads((probe / f"rank{r}-start1.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    train = set(json.loads((exp_dir / "dataset" / "split_train.json").read_text()))
    padding = 2 * -(-len(train) // 2) - len(train)
    epochs = sorted(ranks[0]["epochs"], key=int)
    assert len(epochs) >= 2, epochs
    for epoch in epochs:
        seen = [r["epochs"].get(epoch, []) for r in ranks]
        assert seen[0] and seen[1] and len(set(seen[0]) & set(seen[1])) <= padding, (epoch, seen)
        if epoch != epochs[0]:
            assert set(seen[0]) | set(seen[1]) == train and len(seen[0]) == len(seen[1]), (epoch, seen)
    evaluation = json.loads((exp_dir / "evaluate" / "summary.json").read_text())
    assert evaluation["counts"]["cells"] == evaluation["counts"]["done"] > 0 and evaluation["errors"] == 0, evaluation
    report = json.loads((exp_dir / "report" / "report.json").read_text())
    assert report["training"]["global_step"] == max_steps
    assert report["evaluation"]["reference"] == "base"
    assert (exp_dir / "report" / "loss.png").is_file()
    assert "evaluation report" in (exp_dir / "report" / "index.html").read_text()
