"""Safe files every stage writes: atomic writes, JSON records and content hashes.

A stage never leaves a half-written file under its final name: each write goes to a temporary file in the target
directory and is renamed into place. Kept apart from the renderer so training, evaluation and the pipeline can
write a record without importing render code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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
