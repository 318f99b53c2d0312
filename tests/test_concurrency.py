"""Renders of one dataset from several processes (issue 10, items 1 and 3): a lock, private per-object folders,
markers that list their files, shards that never touch each other's objects, workers that die with their parent.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvtune.meshes import write_sample_meshes
from mvtune.render.dataset import DatasetWriteError, RenderConfig, merge_shards, render_dataset
from mvtune.storage import DONE_MARKER, folder_lock

RES = 48
REPO = Path(__file__).resolve().parents[1]
#: Differ between runs by design (timings, the output path, shard bookkeeping, the lock files themselves).
NOT_COMPARED = ("render_summary.json", "render_config.json")


@pytest.fixture(scope="module")
def meshes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("meshes")
    write_sample_meshes(out, count=4)
    return out


@pytest.fixture(scope="module")
def reference(meshes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "ds"
    render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES))
    return out


def tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in NOT_COMPARED and ".shards" not in p.parts and not p.name.endswith(".lock")
    }


def render_cmd(meshes_dir, out, *extra):
    return [sys.executable, "-m", "mvtune.cli", "render", str(meshes_dir), str(out), "--resolution", str(RES), *extra]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def survivors(pids: list[int], seconds: float = 20.0) -> list[int]:
    """The pids still running after a grace period (the pool's resource tracker exits on its own, soon after)."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_second_render_fails_at_once_naming_the_holder(meshes_dir, tmp_path):
    out = tmp_path / "ds"
    with folder_lock(out, "a render in this test"):
        result = subprocess.run(render_cmd(meshes_dir, out), capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"pid {os.getpid()}" in result.stderr and "a render in this test" in result.stderr
    assert not list(out.rglob(DONE_MARKER))


def test_a_cut_file_under_a_done_marker_is_rendered_again(meshes_dir, reference, tmp_path):
    out = tmp_path / "ds"
    render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES))
    first = json.loads((out / "scene_list.json").read_text())[0]
    victim = out / first[:2] / first / "color_0003.webp"
    victim.write_bytes(victim.read_bytes()[:100])
    summary = render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES))
    assert (summary.rendered, summary.skipped) == (1, 3)
    assert tree_digest(out) == tree_digest(reference)


def test_shards_merge_into_the_same_dataset_as_one_render(meshes_dir, reference, tmp_path):
    out = tmp_path / "ds"
    seen = []
    for i in (1, 0, 2):  # any order; shard 2 of 3 gets one mesh of four
        summary = render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES, shard=f"{i}/3"))
        seen.append(summary.total)
    assert sorted(seen) == [1, 1, 2]
    with pytest.raises(DatasetWriteError, match="shard"):
        merge_shards(tmp_path / "nothing")
    assert merge_shards(out) == {"shards": 3, "objects": 4, "failed": 0}
    assert tree_digest(out) == tree_digest(reference)
    for name in ("scene_list.json", "captions.json", "manifest.json", "errors.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    config = json.loads((out / "render_config.json").read_text())
    expected = json.loads((reference / "render_config.json").read_text())
    assert {k: v for k, v in config.items() if k != "out_dir"} == {k: v for k, v in expected.items() if k != "out_dir"}


def test_merge_refuses_missing_shards_and_a_running_render(meshes_dir, tmp_path):
    out = tmp_path / "ds"
    render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES, shard="0/2"))
    with pytest.raises(DatasetWriteError, match="1-of-2"):
        merge_shards(out)
    render_dataset(RenderConfig(input=meshes_dir, out_dir=out, resolution=RES, shard="1/2"))
    with folder_lock(out, "a shard still running", shared=True):
        with pytest.raises(DatasetWriteError, match="in use"):
            merge_shards(out)
    result = subprocess.run([sys.executable, "-m", "mvtune.cli", "dataset", "merge", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(json.loads((out / "scene_list.json").read_text())) == 4


def _race(meshes_dir, out, rng: random.Random, rounds: int) -> None:
    """Two renders at a time (one waits for the lock), either killed with SIGKILL at a random moment."""
    for _ in range(rounds):
        procs = [
            subprocess.Popen(render_cmd(meshes_dir, out, *extra), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            for extra in ((), ("--wait",))
        ]
        time.sleep(rng.uniform(2.0, 8.0))
        rng.choice(procs).kill()
        time.sleep(rng.uniform(0.0, 3.0))
        for proc in procs:
            proc.kill()
            proc.wait()


def test_two_renders_and_a_kill_then_a_rerun_give_the_clean_dataset(meshes_dir, reference, tmp_path):
    out = tmp_path / "ds"
    _race(meshes_dir, out, random.Random(0), rounds=1)
    subprocess.run(render_cmd(meshes_dir, out), check=True, cwd=REPO, capture_output=True, timeout=300)
    assert tree_digest(out) == tree_digest(reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_repeated_kills_of_concurrent_renders_and_shards(meshes_dir, reference, tmp_path, seed):
    rng = random.Random(seed)
    out = tmp_path / "ds"
    _race(meshes_dir, out, rng, rounds=3)
    shards = [subprocess.Popen(render_cmd(meshes_dir, out, "--shard", f"{i}/2", "--wait"), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    time.sleep(rng.uniform(2.0, 8.0))
    rng.choice(shards).kill()
    for proc in shards:
        proc.wait(timeout=300)
    subprocess.run(render_cmd(meshes_dir, out), check=True, cwd=REPO, capture_output=True, timeout=300)
    assert tree_digest(out) == tree_digest(reference)


def _start_pool_render(meshes_dir, out):
    # 256 px: the workers must still be busy when the test signals the parent, on a loaded machine too
    cmd = [*render_cmd(meshes_dir, out, "--workers", "2"), "--resolution", "256"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(children(proc.pid)) < 3:  # resource tracker + 2 workers
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) >= 2, "the pool never started"
    return proc, workers


def test_workers_die_with_their_killed_parent(meshes_dir, tmp_path):
    proc, workers = _start_pool_render(meshes_dir, tmp_path / "ds")
    proc.kill()
    proc.wait()
    assert not survivors(workers), "render workers outlived their parent"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_stops_the_workers_and_the_run(meshes_dir, tmp_path, sig):
    out = tmp_path / "ds"
    proc, workers = _start_pool_render(meshes_dir, out)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) != 0
    assert not survivors(workers)
    # nothing half-written under a final name: whatever is there is complete, the rest is redone
    for marker in out.glob("*/*/" + DONE_MARKER):
        assert not marker.parent.name.startswith(".")


def test_cache_and_generate_batch_refuse_a_second_writer(tmp_path):
    from mvtune.data.cache import build_cache
    from mvtune.data.loader import DatasetError
    from mvtune.generate import BatchConfig, GenerateError, generate_batch

    with folder_lock(tmp_path / "cache", "another cache build"):
        with pytest.raises(DatasetError, match="another cache build"):
            build_cache(tmp_path / "ds", tmp_path / "cache", height=32, width=32)  # refused before reading it
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"mesh": "m.glb", "prompt": "a duck"}) + "\n")
    cfg = BatchConfig(items=rows, out_dir=tmp_path / "gen", models={"base_model": tmp_path / "none"})
    with folder_lock(tmp_path / "gen", "another batch"):
        with pytest.raises(GenerateError, match="another batch"):
            generate_batch(cfg)
