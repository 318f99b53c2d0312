"""Folder locks and done markers (mvtune.storage): one writer per folder, named holders, dead holders taken over,
markers that notice a missing or cut-short file."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from mvtune.storage import (
    DONE_MARKER, FolderLockedError, done_marker_ok, folder_lock, lock_path, read_lock_holder, write_done_marker,
)

HOLD = """
import sys, time
from mvtune.storage import folder_lock
with folder_lock(sys.argv[1], "test holder", name=sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(folder, name="", job=None):
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"} | ({"SLURM_JOB_ID": job} if job else {})
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_fails_at_once_naming_pid_and_host(tmp_path):
    proc = _holder(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(FolderLockedError) as info:
            with folder_lock(tmp_path, "second"):
                pass
        assert time.monotonic() - start < 5
        message = str(info.value)
        assert f"pid {proc.pid}" in message and socket.gethostname() in message and "test holder" in message
        assert info.value.holder["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    proc.kill()  # kill -9: no cleanup runs, the record stays in the file
    proc.wait()
    assert read_lock_holder(lock_path(tmp_path))["pid"] == proc.pid
    with folder_lock(tmp_path, "after"):
        assert read_lock_holder(lock_path(tmp_path))["pid"] == os.getpid()
    assert read_lock_holder(lock_path(tmp_path)) == {}


def test_wait_blocks_until_the_holder_is_gone(tmp_path):
    proc = _holder(tmp_path)
    threading.Timer(1.0, proc.kill).start()
    start = time.monotonic()
    with folder_lock(tmp_path, "waiter", wait=True, timeout=60):
        assert time.monotonic() - start >= 0.9
    proc.wait()


def test_shared_holders_exclude_an_exclusive_one_and_are_named(tmp_path):
    proc = _holder(tmp_path, "shard-0-of-2")  # its own shard lock, as a shard render holds
    try:
        with folder_lock(tmp_path, "shard 1", shared=True), folder_lock(tmp_path, "shard 1b", shared=True):
            with pytest.raises(FolderLockedError):
                with folder_lock(tmp_path, "unsharded"):
                    pass
        with folder_lock(tmp_path, "shard", name="shard-1-of-2"):
            with pytest.raises(FolderLockedError) as info:
                with folder_lock(tmp_path, "again", name="shard-1-of-2"):
                    pass
        assert "pid" in str(info.value)
    finally:
        proc.kill()
        proc.wait()


def test_same_slurm_job_waits_for_its_previous_instance(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    proc = _holder(tmp_path, job="4242")
    threading.Timer(1.0, proc.kill).start()
    with folder_lock(tmp_path, "requeued", same_job_waits=60):
        pass
    proc.wait()
    proc = _holder(tmp_path, job="999")
    try:
        start = time.monotonic()
        with pytest.raises(FolderLockedError):
            with folder_lock(tmp_path, "other job", same_job_waits=60):
                pass
        assert time.monotonic() - start < 5
    finally:
        proc.kill()
        proc.wait()


def test_done_marker_lists_sizes_and_notices_a_cut_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"12345")
    (tmp_path / "b.bin").write_bytes(b"xy")
    write_done_marker(tmp_path, ["a.bin", "b.bin"], {"source_sha256": "s"})
    record = json.loads((tmp_path / DONE_MARKER).read_text())
    assert record["files"] == {"a.bin": 5, "b.bin": 2}
    assert done_marker_ok(tmp_path, {"source_sha256": "s"})
    assert not done_marker_ok(tmp_path, {"source_sha256": "other"})
    (tmp_path / "a.bin").write_bytes(b"123")
    assert not done_marker_ok(tmp_path, {"source_sha256": "s"})
    (tmp_path / "a.bin").write_bytes(b"12345")
    (tmp_path / "b.bin").unlink()
    assert not done_marker_ok(tmp_path)
