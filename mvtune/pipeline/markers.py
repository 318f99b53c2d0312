"""Done markers and failure records of stages and shards, under <experiment>/markers/.

A stage (or one shard of an array stage) counts as done only when its marker exists, was written for the same
command line, and the output files it lists still have the sizes it recorded. The marker is written last, after
the command succeeded, so a job killed at any point leaves no marker and a rerun redoes it. A failure record
keeps the exit code, the reason (the command's last error line) and the log path for `mvtune pipeline status`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from mvtune.storage import file_sizes, sizes_match, write_json

MARKERS_DIR = "markers"


def marker_path(exp_dir: Path, stage: str, shard: int | None, kind: str = "done") -> Path:
    name = stage if shard is None else f"{stage}.{shard}"
    return Path(exp_dir) / MARKERS_DIR / f"{name}.{kind}.json"


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _job() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task and os.environ.get("SLURM_ARRAY_JOB_ID") else job


def _where() -> dict:
    return {"job": _job(), "restarts": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
            "host": socket.gethostname(), "pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_done(exp_dir: Path, stage: str, shard: int | None, command: str, files: list[Path], extra: dict) -> Path:
    """Record success: the command, the outputs' sizes, where it ran. Clears an older failure record."""
    path = marker_path(exp_dir, stage, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = file_sizes(files)
    write_json(path, {"stage": stage, "shard": shard, "command": command, "files": sizes, **_where(), **extra})
    marker_path(exp_dir, stage, shard, "failed").unlink(missing_ok=True)
    return path


def write_failed(exp_dir: Path, stage: str, shard: int | None, command: str, code: int, reason: str,
                 log: Path | None) -> Path:
    path = marker_path(exp_dir, stage, shard, "failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"stage": stage, "shard": shard, "command": command, "exit_code": code, "reason": reason,
                      "log": str(log) if log else None, **_where()})
    return path


def done_ok(exp_dir: Path, stage: str, shard: int | None, command: str) -> bool:
    """True when the marker is for this command and every file it lists still has its recorded size."""
    record = read_record(marker_path(exp_dir, stage, shard))
    return bool(record) and record.get("command") == command and sizes_match(record.get("files", {}))


def clear(exp_dir: Path, stage: str, shard: int | None) -> None:
    """Forget a stage's or shard's outcome before it runs again (a stale marker must not read as done)."""
    for kind in ("done", "failed"):
        marker_path(exp_dir, stage, shard, kind).unlink(missing_ok=True)


def last_error(log: Path | None, chars: int = 20000) -> str:
    """The reason a command failed, from its log: the last `error:` line, else the last non-empty line."""
    if log is None:
        return "no log"
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - chars))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"log {log} not readable"
    for line in reversed(lines):
        if "error:" in line.lower():
            return line[:500]
    return lines[-1][:500] if lines else "no output"
