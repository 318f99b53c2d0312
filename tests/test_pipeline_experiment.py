"""The experiment file (validated before anything runs) and the Slurm scripts `--dry-run` prints: dependencies,
arrays, resources, setup lines, the srun training with signal/requeue. No Slurm needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mvtune.pipeline.experiment import ExperimentError, check_experiment, enabled_stages, load_experiment

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "experiments" / "ducks.yaml"


def _write(tmp_path: Path, exp: dict, train: dict | None = None) -> Path:
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train or {"data": {"root": "x"}, "model": {"base": "tiny"}}))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _base(**extra) -> dict:
    return {"name": "t", "dir": "out", "render": {"resolution": 64}, "train": {"config": "train.yaml"}} | extra


def test_example_experiment_is_valid(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    exp = load_experiment(EXAMPLE)
    check_experiment(exp)
    assert exp.dir == tmp_path / "runs" / "ducks"  # the folder is relative to the working folder
    assert exp.train.config == EXAMPLE.parent / "ducks-train.yaml"  # inputs relative to the file
    assert enabled_stages(exp) == ["meshes", "render", "merge", "split", "validate", "train", "report"]


def test_unknown_keys_name_the_closest_valid_one(tmp_path):
    path = _write(tmp_path, _base(rendr={"resolution": 64}, slurm={"train": {"partiton": "gpu"}},
                                  split={"vall": 0.1}))
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    text = str(err.value)
    assert "unknown key 'rendr' (did you mean 'render'?)" in text
    assert "unknown key 'slurm.train.partiton' (did you mean 'slurm.train.partition'?)" in text
    assert "unknown key 'split.vall' (did you mean 'split.val'?)" in text  # all problems at once


def test_paths_and_the_train_config_are_checked_before_running(tmp_path):
    path = _write(tmp_path, _base(train={"config": "train.yaml", "overrides": ["optim.lrr=1"]},
                                  meshes={"source": "import", "path": "nowhere", "source_name": "s", "licence": "MIT"},
                                  evaluate={"suite": "missing-suite.yaml"}))
    exp = load_experiment(path)
    with pytest.raises(ExperimentError) as err:
        check_experiment(exp)
    text = str(err.value)
    assert f"meshes.path {tmp_path / 'nowhere'} is not a folder" in text
    assert "unknown key 'optim.lrr' (did you mean 'optim.lr'?)" in text  # as `mvtune train` reports it
    assert "evaluate.suite" in text and "missing-suite.yaml does not exist" in text


def test_combinations_are_refused_with_the_key(tmp_path):
    path = _write(tmp_path, _base(meshes={"source": "generate"}))
    with pytest.raises(ExperimentError, match="meshes.source=generate needs a prompts stage"):
        load_experiment(path)
    path = _write(tmp_path, _base(meshes={"source": "samples", "shards": 2}))
    with pytest.raises(ExperimentError, match="shards=2 only applies to source=generate"):
        load_experiment(path)


def test_cli_reports_a_bad_experiment_in_one_line_with_exit_2(tmp_path, cli):
    path = _write(tmp_path, _base(rendr={}))
    result = cli("pipeline", "run", path, "--executor", "slurm", "--dry-run", expect=2)
    assert "did you mean 'render'" in result.stderr and "Traceback" not in result.stderr


RENDER_SCRIPT = """\
#!/bin/bash
# mvtune pipeline, experiment 't', stage render (3 shards, one per array task)
# Rerun by hand: sbatch --array=K {d}/scripts/render.sh  (`mvtune pipeline run` adds the dependencies on earlier stages)
#SBATCH --job-name=mvtune-t-render
#SBATCH --output={d}/logs/render-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --array=0-2%2
#SBATCH --partition=cpu
#SBATCH --account=proj1
#SBATCH --time=01:00:00
#SBATCH --mem=8G
#SBATCH --cpus-per-task=4
set -euo pipefail
module load mesa
cd {w}
export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-1}}"
SHARD=${{SLURM_ARRAY_TASK_ID}}
LOG={d}/logs/render-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out
echo "[mvtune] render shard $SHARD of 3, job ${{SLURM_JOB_ID}} on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}, $(date -Is)"
status=0
{py} -m mvtune.cli render {d}/meshes {d}/dataset --layout ortho10 --resolution 64 --lighting studio --up y --seed 0 \
--workers 1 --shard $SHARD/3 || status=$?
exec {py} -m mvtune.cli pipeline mark {d} render --shard "$SHARD" --exit-code "$status" --log "$LOG"
"""

TRAIN_SCRIPT = """\
#!/bin/bash
# mvtune pipeline, experiment 't', stage train
# Rerun by hand: sbatch {d}/scripts/train.sh  (`mvtune pipeline run` adds the dependencies on earlier stages)
#SBATCH --job-name=mvtune-t-train
#SBATCH --output={d}/logs/train-%j.out
#SBATCH --open-mode=append
#SBATCH --partition=gpu
#SBATCH --account=proj1
#SBATCH --qos=high
#SBATCH --time=24:00:00
#SBATCH --constraint=a100
#SBATCH --mem=64G
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=4
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --exclusive
set -euo pipefail
module load mesa
module load cuda/12.4
cd {w}
export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-1}}"
LOG={d}/logs/train-${{SLURM_JOB_ID}}.out
echo "[mvtune] train, job ${{SLURM_JOB_ID}} on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}, $(date -Is)"
status=0
srun {py} -m mvtune.cli train {t}/train.yaml --resume auto optim.lr=1e-5 data.root={d}/dataset \
output.dir={d}/train output.name=run trainer.devices=4 trainer.num_nodes=2 || status=$?
exec {py} -m mvtune.cli pipeline mark {d} train --exit-code "$status" --log "$LOG"
"""


def test_dry_run_prints_the_expected_scripts_and_chain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, _base(
        render={"resolution": 64, "shards": 3},
        train={"config": "train.yaml", "overrides": ["optim.lr=1e-5"]},
        slurm={
            "defaults": {"partition": "cpu", "account": "proj1", "time": "01:00:00", "setup": ["module load mesa"]},
            "render": {"throttle": 2, "cpus": 4, "mem": "8G"},
            "train": {"partition": "gpu", "qos": "high", "time": "24:00:00", "constraint": "a100", "mem": "64G",
                      "cpus": 8, "gpus_per_node": 4, "nodes": 2, "tasks_per_node": 4, "extra": ["--exclusive"],
                      "setup": ["module load cuda/12.4"]},
        },
    ))
    result = subprocess.run([sys.executable, "-m", "mvtune.cli", "pipeline", "run", str(path), "--executor", "slurm",
                             "--dry-run"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    d, py = tmp_path / "out", sys.executable
    fill = dict(d=d, w=tmp_path, py=py, t=tmp_path)
    sbatch = [line for line in result.stdout.splitlines() if line.startswith("sbatch ")]
    assert sbatch == [
        f"sbatch --parsable --kill-on-invalid-dep=yes {d}/scripts/meshes.sh",
        f"sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:<meshes> --array=0-2%2 {d}/scripts/render.sh",
        f"sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:<render> {d}/scripts/merge.sh",
        f"sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:<merge> {d}/scripts/split.sh",
        f"sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:<split> {d}/scripts/validate.sh",
        f"sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:<validate> {d}/scripts/train.sh",
        f"sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:<train> {d}/scripts/report.sh",
    ]
    assert (d / "scripts" / "render.sh").read_text() == RENDER_SCRIPT.replace("\\\n", "").format(**fill)
    assert (d / "scripts" / "train.sh").read_text() == TRAIN_SCRIPT.replace("\\\n", "").format(**fill)
    assert RENDER_SCRIPT.replace("\\\n", "").format(**fill) in result.stdout
    assert not (d / "pipeline.json").exists()  # nothing submitted, no state
    for script in (d / "scripts").glob("*.sh"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script


def test_local_dry_run_prints_the_commands_and_writes_nothing(tmp_path):
    path = _write(tmp_path, _base(render={"resolution": 64, "shards": 2}))
    result = subprocess.run([sys.executable, "-m", "mvtune.cli", "pipeline", "run", str(path), "--dry-run"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    d = tmp_path / "out"
    assert lines[0] == f"{sys.executable} -m mvtune.cli samples {d}/meshes"
    assert [line.split("--shard ")[1] for line in lines if " render " in line] == ["0/2", "1/2"]
    assert lines[-1] == f"{sys.executable} -m mvtune.cli pipeline report {d}"
    assert not d.exists()


def test_cache_and_evaluation_cells_run_as_arrays_before_the_comparison(tmp_path):
    from mvtune.pipeline.stages import SHARD, build_stages

    path = _write(tmp_path, _base(cache={"resolution": 64, "shards": 2},
                                  evaluate={"suite": "suite.yaml", "shards": 3}))
    stages = {s.name: s for s in build_stages(load_experiment(path), slurm=True)}
    assert list(stages)[-4:] == ["train", "cells", "evaluate", "report"]
    assert stages["cache"].shards == 2 and stages["cache"].argv[-2:] == ["--shard", f"{SHARD}/2"]
    assert stages["cells"].shards == 3 and stages["cells"].argv[-2:] == ["--shard", f"{SHARD}/3"]
    assert stages["evaluate"].shards == 1 and "--shard" not in stages["evaluate"].argv
    one = {s.name for s in build_stages(load_experiment(_write(tmp_path, _base(evaluate={"suite": "suite.yaml"}))))}
    assert "cells" not in one and "evaluate" in one
