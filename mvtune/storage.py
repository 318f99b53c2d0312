"""Safe files every stage writes: atomic writes, JSON records, content hashes, folder locks and done markers.

A stage never leaves a half-written file under its final name: each write goes to a temporary file in the target
directory and is renamed into place. Kept apart from the renderer so training, evaluation and the pipeline can
write a record without importing render code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable

#: The process umask, read once at import (os.umask can only be read by setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call writer(tmp_path) on a temporary file next to path, then rename it to path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        # mkstemp creates 0600 files; a dataset must be readable like any other file (e.g. by a training account).
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, data) -> Path:
    """Atomically write JSON (meta.json, records, indexes): readers never see half a file."""
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- folder locks ------------------------------------------------------------------------------------------

LOCK_FILE = ".mvtune.lock"


class FolderLockedError(Exception):
    """Another live process holds the folder's lock; the message names it (pid, host, command) and what to do."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}


def lock_path(folder: str | Path, name: str = "") -> Path:
    return Path(folder) / (f".mvtune-{name}.lock" if name else LOCK_FILE)


def read_lock_holder(path: str | Path) -> dict:
    """The holder record a lock file carries ({} when empty or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process"
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if holder.get("slurm_job_id"):
        text += f" (Slurm job {holder['slurm_job_id']})"
    if holder.get("what"):
        text += f", {holder['what']}"
    if holder.get("started"):
        text += f", since {holder['started']}"
    return text


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _held_siblings(folder: Path, own: Path) -> list[dict]:
    """Holders of the other `.mvtune-*.lock` files of a folder that are held right now (shard runs)."""
    holders = []
    for path in sorted(folder.glob(".mvtune-*.lock")):
        if path == own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            holders.append(read_lock_holder(path))
        finally:
            os.close(fd)
    return holders


@contextlib.contextmanager
def folder_lock(
    folder: str | Path,
    what: str = "mvtune",
    *,
    name: str = "",
    shared: bool = False,
    wait: bool = False,
    timeout: float | None = None,
    same_job_waits: float = 0.0,
) -> Iterator[Path]:
    """Hold a folder's lock for the duration of a block: one writer per dataset or run folder.

    Built on flock(2), so the kernel releases the lock when its holder dies in any way (kill -9 included): a lock
    left by a dead process is taken over without asking. The lock file is removed on release. The holder writes
    its pid, host, Slurm job and command into the file, so a refused second process can say who holds it.
    ``shared`` takes the lock in shared mode (shard runs of one dataset hold it together; an exclusive holder
    such as an unsharded render or a merge excludes them all). ``wait`` blocks until the lock is free (at most
    ``timeout`` seconds), else a held lock raises FolderLockedError at once. ``same_job_waits``: seconds to wait
    when the holder is this very Slurm job (a requeued job whose previous instance is still exiting).
    On file systems without flock, falls back to the recorded pid: a live pid on this host (or any record of
    another host) still counts as held.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder, name)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "what": what,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = None if timeout is None else time.monotonic() + timeout
    job_deadline = time.monotonic() + same_job_waits
    fd = -1
    try:
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    _fallback_check(path, me)  # no flock on this file system
                    break
            else:
                if _same_file(fd, path):
                    break
                # The previous holder removed the file between our open and our flock: lock the new one.
                os.close(fd)
                continue
            holder = read_lock_holder(path)
            if not holder and not shared:
                holders = _held_siblings(folder, path)
                holder = holders[0] if holders else {}
            os.close(fd)
            fd = -1
            same_job = bool(me["slurm_job_id"]) and holder.get("slurm_job_id") == me["slurm_job_id"]
            now = time.monotonic()
            if not (wait or (same_job and now < job_deadline)) or (wait and deadline is not None and now > deadline):
                raise FolderLockedError(
                    f"{folder} is in use by {describe_holder(holder)} (lock {path}); wait for it to finish, or "
                    "stop it first" + ("" if wait else "; --wait waits for the lock instead of failing"),
                    holder,
                )
            time.sleep(0.2)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        yield path
    finally:
        if fd >= 0:
            # Remove the file while still holding it exclusively (a shared holder only when it is the last), so
            # no lock file stays behind; a process that opened it meanwhile sees it is gone and starts over.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    os.unlink(path)
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _fallback_check(path: Path, me: dict) -> None:
    holder = read_lock_holder(path)
    if holder and holder.get("pid") != me["pid"]:
        alive = holder.get("host") != me["host"] or pid_alive(int(holder.get("pid") or 0))
        if alive:
            raise FolderLockedError(f"{path.parent} is in use by {describe_holder(holder)} (lock {path})", holder)


# ---- done markers ------------------------------------------------------------------------------------------

DONE_MARKER = ".mvtune-done.json"


def file_sizes(files: Iterable[str | Path], base: str | Path | None = None) -> dict[str, int]:
    """name -> size in bytes of each file (names relative to base when given, as written)."""
    out = {}
    for f in files:
        p = Path(f)
        if base is not None and p.is_absolute():
            p = p.relative_to(base)
        out[p.as_posix()] = (Path(base) / p if base is not None else p).stat().st_size
    return out


def sizes_match(sizes: dict, base: str | Path | None = None) -> bool:
    """True when every listed file exists with its recorded size: a file that went missing or was cut short
    since its record was written makes the record stale."""
    try:
        return all((Path(base) / name if base is not None else Path(name)).stat().st_size == size
                   for name, size in sizes.items())
    except (OSError, TypeError):
        return False


def write_done_marker(folder: str | Path, files: Iterable[str | Path], extra: dict | None = None) -> Path:
    """Written last: the folder is complete. Lists every file (relative to folder) with its size, so a later
    check sees a file that went missing or was cut short, not just that a marker exists."""
    folder = Path(folder)
    return write_json(folder / DONE_MARKER, {**(extra or {}), "files": dict(sorted(file_sizes(files, folder).items()))})


def done_marker_ok(folder: str | Path, expected: dict | None = None) -> bool:
    """True when folder's marker exists, its fields match ``expected`` and every listed file has its size."""
    folder = Path(folder)
    try:
        record = json.loads((folder / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or not record["files"]:
        return False
    if any(record.get(k) != v for k, v in (expected or {}).items()):
        return False
    return sizes_match(record["files"], folder)
