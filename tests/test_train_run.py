"""Runs end to end: the CLI entry point, preemption by SIGUSR1 in a real subprocess, the demo functions."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from mvtune.train.config import TrainConfigError
from mvtune.train.run import checkpoint_step, demo_sample, demo_training, train_from_cli
from test_train_config import dataset_overrides

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(out: Path, steps: int) -> list[str]:
    return ["data.num_workers=0", "data.height=64", "data.width=64", f"trainer.max_steps={steps}",
            "trainer.max_epochs=null", "trainer.precision=32-true", "trainer.accelerator=cpu",
            "trainer.strategy=auto", "trainer.enable_progress_bar=false", "validation.every_n_steps=1000",
            "validation.num_objects=0", "validation.sanity_steps=0", f"output.dir={out}", "output.name=run"]


def test_cli_entry_refuses_the_users_view_mistake_and_trains_once_fixed(user_yaml, ducks, tmp_path):
    overrides = dataset_overrides(ducks) + tiny_overrides(tmp_path, 2)
    with pytest.raises(TrainConfigError, match="view 0004 is fed as the top view"):
        train_from_cli(user_yaml, overrides, resume=None)
    assert not (tmp_path / "run").exists()  # refused before anything was created
    run = train_from_cli(user_yaml, overrides + ['data.image_names=["0000","0001","0002","0003","0008","0009"]'], None)
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["image_names"][4:] == ["0008", "0009"]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_sigusr1_saves_a_checkpoint_and_exits_cleanly(ducks, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(ducks)}, "model": {"base": "tiny"}}))
    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from lightning.pytorch import Callback
        from mvtune.train.config import load_config
        from mvtune.train.run import train

        class Mark(Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == 2:
                    Path({str(marker)!r}).touch()
                time.sleep(0.05)

        cfg = load_config({str(config)!r}, {tiny_overrides(tmp_path, 100000)!r})
        train(cfg, config_stem="c", extra_callbacks=[Mark()])
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "training did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    run = tmp_path / "run"
    saved = list((run / "checkpoints").glob("preempt-step=*.ckpt"))
    assert len(saved) == 1 and checkpoint_step(saved[0]) >= 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["global_step"] == checkpoint_step(saved[0])
    assert (run / "export" / "mvadapter_tg2mv_sdxl.safetensors").is_file()


def test_demo_trains_and_samples_a_held_out_object(ducks, tmp_path):
    run = demo_training(ducks, tmp_path, steps=6)
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_0000003.png", "step_0000006.png"]
    assert "val/loss" in (run / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0]
    grid = demo_sample(run, ducks, num_inference_steps=3)
    info = json.loads((grid.parent / "sample.json").read_text())
    assert info["object_id"] == json.loads((ducks / "split_test.json").read_text())[0]
    assert len(list(grid.parent.glob("view_*.png"))) == 6


def test_ddp_ranks_share_the_launching_process_run_folder(monkeypatch, tmp_path):
    """Lightning starts ranks 1.. as new processes with the parent's environment: they must find its folder."""
    from mvtune.train.config import load_config
    from mvtune.train.run import RUN_NAME_ENV, global_rank, run_name

    cfg = load_config(None, base={"data": {"root": str(tmp_path)}, "output": {"dir": str(tmp_path)}})
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv(RUN_NAME_ENV, "train-20261126-000000")
    assert run_name(cfg, "train") == "train-20261126-000000"
    monkeypatch.delenv(RUN_NAME_ENV)
    assert run_name(cfg, "train").startswith("train-")
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert global_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert global_rank() == 1
    monkeypatch.setenv("RANK", "3")
    assert global_rank() == 3


# ---- issue 10: run folder lock, metrics across resumes, checkpoint leftovers, SIGTERM -----------------------

HOLD_LOCK = """
import sys, time
from mvtune.storage import folder_lock
with folder_lock(sys.argv[1], "mvtune train other"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_train_on_the_same_run_folder_is_refused_naming_the_holder(ducks, tmp_path):
    from test_train_system import tiny_config

    from mvtune.train.run import train

    cfg = tiny_config(ducks, tmp_path, trainer={"max_steps": 1})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True, env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainConfigError, match=f"pid {holder.pid} on host .*output.name"):
            train(cfg)
        assert not (tmp_path / "run" / "config.yaml").exists()  # nothing of the refused run was written
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((train(cfg) / "summary.json").read_text())["status"] == "finished"  # a dead holder's lock


def _curve(run: Path) -> list[dict]:
    import csv

    with open(run / "logs" / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_keeps_the_whole_curve_across_resumes_without_duplicates(ducks, tmp_path):
    from test_train_system import FailAt, tiny_config

    from mvtune.train.run import train

    sections = dict(trainer={"max_steps": 7}, validation={"every_n_steps": 2, "num_batches": 1})
    straight = _curve(train(tiny_config(ducks, tmp_path / "a", **sections)))
    cfg = tiny_config(ducks, tmp_path / "b", **sections)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, extra_callbacks=[FailAt(5)])  # steps 4 and 5 were logged after the step-3 checkpoint
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, resume="auto", extra_callbacks=[FailAt(6)])  # a second requeue
    run = train(cfg, resume="auto")
    resumed = _curve(run)
    steps = [(row["step"], bool(row.get("train/loss")), bool(row.get("val/loss"))) for row in resumed]
    assert len(steps) == len(set(steps)), steps  # no step logged twice
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    for a, b in zip(resumed, straight):
        for key in ("train/loss", "val/loss"):
            assert (a.get(key) or None) == (b.get(key) or None) or float(a[key]) == pytest.approx(float(b[key]), rel=1e-5)


def test_checkpoint_leftovers_are_cleaned_and_corrupt_ones_moved_aside_never_v1(ducks, tmp_path, caplog):
    from test_train_system import tiny_config

    from mvtune.train.run import train

    cfg = tiny_config(ducks, tmp_path, trainer={"max_steps": 3}, checkpoint={"every_n_steps": 3, "save_last": True})
    run = train(cfg)
    ckpts = run / "checkpoints"
    good = ckpts / "step=0000003.ckpt"
    assert good.is_file() and (ckpts / "last.ckpt").is_file()
    (ckpts / ".step=0000006.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")  # a kill mid-write
    for name in ("last.ckpt", "step=0000006.ckpt"):
        (ckpts / name).write_bytes(good.read_bytes()[:1000])  # truncated
    cfg = tiny_config(ducks, tmp_path, trainer={"max_steps": 6}, checkpoint={"every_n_steps": 3, "save_last": True})
    with caplog.at_level("WARNING", logger="mvtune"):
        train(cfg, resume="auto")
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["corrupt", "last.ckpt", "step=0000003.ckpt", "step=0000006.ckpt"], names
    assert sorted(p.name.split(".ckpt")[0] for p in (ckpts / "corrupt").iterdir()) == ["last", "step=0000006"]
    assert checkpoint_step(ckpts / "last.ckpt") == 6 and checkpoint_step(ckpts / "step=0000006.ckpt") == 6
    assert "moved aside" in caplog.text


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_sigterm_checkpoints_and_exits_without_validation(ducks, tmp_path):
    from test_train_system import tiny_config

    from lightning.pytorch import Callback

    from mvtune.train.run import train

    class TermAt(Callback):
        def __init__(self):
            self.validations = 0

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        def on_validation_start(self, trainer, *args):
            self.validations += 1

    probe = TermAt()
    cfg = tiny_config(ducks, tmp_path, trainer={"max_steps": 1000},
                      validation={"every_n_steps": 100, "num_batches": 1}, checkpoint={"every_n_steps": 100})
    run = train(cfg, extra_callbacks=[probe])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["global_step"] in (2, 3)  # the step it was in finishes
    assert probe.validations == 0
