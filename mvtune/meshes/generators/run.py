"""Run a mesh generator over prompt rows: one folder per item, resumable, sharded, each item under a timeout.

``DIR/<id>/mesh.glb`` + ``mesh.txt`` (caption) + ``mesh.json`` (provenance, written last: it is the done marker
and lists the other files with their sizes). Workers write into ``DIR/.staging[.shard-i-of-n]/<id>/``; an item
is moved into place only after its output passed :func:`~mvtune.meshes.generators.base.check_output`. A rerun skips finished
items, a timed-out item kills its worker (a fresh one takes over), and every failure lands in ``errors.jsonl``.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mvtune.meshes.generators import get_backend
from mvtune.meshes.generators.base import (
    CAPTION_FILE,
    ITEM_ID,
    MESH_FILE,
    PROVENANCE_FILE,
    GeneratorError,
    check_output,
    in_shard,
    is_done,
    item_seed,
    parse_shard,
    write_provenance,
)
from mvtune.shards import shard_suffix
from mvtune.storage import atomic_write, write_json

STAGING = ".staging"


class GenerateMeshesConfig(BaseModel):
    """One `mvtune meshes generate` run. ``options`` are the backend's own settings (validated by its model)."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    prompts: Path
    out_dir: Path
    shard: str | None = None
    timeout: float = Field(900.0, gt=0, description="Seconds one item may take before its worker is killed.")
    load_timeout: float = Field(1800.0, gt=0, description="Seconds a worker may take to load its models.")
    seed: int = 0
    devices: list[str] = Field(default_factory=lambda: ["cpu"], min_length=1)
    protected_terms: list[str] = Field(default_factory=list)
    options: dict = Field(default_factory=dict)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        get_backend(value)  # raises GeneratorError naming the closest backend
        return value

    @field_validator("shard")
    @classmethod
    def _valid_shard(cls, value: str | None) -> str | None:
        parse_shard(value)
        return value


def read_rows(path: Path) -> list[dict]:
    """Prompt rows (contract A) whose ids are usable as folder names (the reader checks JSON, ids, prompts)."""
    from mvtune.prompts import PromptsError, read_prompt_rows

    try:
        rows = read_prompt_rows(path)
    except PromptsError as exc:
        raise GeneratorError(f"{exc} (write one with `mvtune prompts CONCEPTS.yaml --out FILE`)") from None
    bad = [f"line {n}: id {row['id']!r}" for n, row in enumerate(rows, 1) if not ITEM_ID.match(row["id"])]
    if bad:
        raise GeneratorError(
            f"prompts file {path}: ids must be usable as folder names (letters, digits, '.', '_', '-'): "
            + "; ".join(bad[:10]) + (f"; ... {len(bad) - 10} more" if len(bad) > 10 else "")
        )
    return rows




class _Worker:
    """One worker process and its reply pipe; ``ask`` waits at most ``timeout`` seconds for the answer."""

    def __init__(self, backend: str, options_json: str, device: str, log_path: Path, load_timeout: float):
        self.backend, self.options_json, self.device = backend, options_json, device
        self.log_path, self.load_timeout = log_path, load_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        env = dict(os.environ)
        device = self.device
        if device.startswith("cuda:"):
            # One GPU per worker: the backend sees it as "cuda" and cannot touch the others.
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
            device = "cuda"
        elif device == "cpu":
            env.setdefault("OMP_NUM_THREADS", "1")
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
        log = open(self.log_path, "a", encoding="utf-8")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mvtune.meshes.generators.worker", self.backend, self.options_json, device],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            )
        finally:
            log.close()

    def wait_ready(self) -> None:
        reply = self._read(self.load_timeout)
        if reply is None:
            self.kill()
            raise GeneratorError(
                f"{self.backend} worker on {self.device} did not load within {self.load_timeout:.0f} s "
                f"(log: {self.log_path})"
            )
        if not reply.get("ready"):
            self.kill()
            raise GeneratorError(reply.get("error") or f"{self.backend} worker failed to start (log: {self.log_path})")

    def ask(self, request: dict, timeout: float) -> dict | None:
        """The worker's reply, or None when it timed out (the worker is then killed)."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"ok": False, "error": f"worker exited (code {self.proc.poll()}); log: {self.log_path}"}
        reply = self._read(timeout)
        if reply is None:
            self.kill()
        return reply

    def _read(self, timeout: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            return {"ok": False, "ready": False, "error": f"worker exited (code {code}); log: {self.log_path}"}
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def generate_meshes(
    cfg: GenerateMeshesConfig, on_progress: Callable[[int, int, str], None] | None = None
) -> dict:
    """Make every row of ``cfg.prompts`` in this shard that is not already done; returns the run summary."""
    from mvtune.licences import get_licence

    start = time.perf_counter()
    backend = get_backend(cfg.backend)
    try:
        options = backend.Options.model_validate(cfg.options)
    except ValidationError as exc:
        raise GeneratorError(
            f"{cfg.backend} options: "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None
    licence = get_licence(backend.licence).id
    shard = parse_shard(cfg.shard)
    rows = [row for row in read_rows(cfg.prompts) if in_shard(row["id"], shard)]
    backend.preflight(options)
    described = backend.describe(options)

    out = Path(cfg.out_dir).resolve()  # workers may change their working directory
    staging = out / f"{STAGING}{shard_suffix(shard)}"  # per shard: shards of one array share the output folder
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted run's leftovers
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        staging.mkdir(exist_ok=True)
    except OSError as exc:
        raise GeneratorError(f"cannot write to output folder {out}: {exc}") from None
    errors: list[dict] = []
    todo, guarded = [], {}
    skipped = 0
    for row in rows:
        if is_done(out / row["id"]):
            skipped += 1
            continue
        try:
            guarded[row["id"]] = _guard(row, cfg.protected_terms)
            todo.append(row)
        except GeneratorError as exc:
            errors.append({"id": row["id"], "stage": "guard", "prompt": row["prompt"], "reason": str(exc)})

    done = skipped + len(errors)
    total = len(rows)
    lock = threading.Lock()
    if on_progress:
        on_progress(done, total, "")
    generated = 0
    if todo:
        pending: queue.Queue = queue.Queue()
        for row in todo:
            pending.put(row)
        options_json = options.model_dump_json()
        workers = [
            _Worker(cfg.backend, options_json, device, out / "logs" / f"worker-{k}{shard_suffix(shard)}.log", cfg.load_timeout)
            for k, device in enumerate(cfg.devices)
        ]
        try:
            for worker in workers:  # all load their models at once; one that cannot load stops the run here
                worker.spawn()
            for worker in workers:
                worker.wait_ready()

            def finish(row: dict, entry: dict | None) -> None:
                nonlocal done, generated
                with lock:
                    done += 1
                    if entry is None:
                        generated += 1
                    else:
                        errors.append(entry)
                    if on_progress:
                        on_progress(done, total, row["id"])

            def drive(worker: _Worker) -> None:
                while True:
                    try:
                        row = pending.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        entry = _make_item(cfg, licence, described, worker, row, guarded[row["id"]], staging, out)
                    except Exception as exc:  # e.g. a full disk while placing the files: this item fails, not the run
                        entry = {"id": row["id"], "prompt": row["prompt"], "stage": "write",
                                 "reason": f"{type(exc).__name__}: {exc}"}
                    finish(row, entry)
                    if not worker.alive():
                        try:
                            worker.start()
                        except GeneratorError as exc:
                            with lock:
                                errors.append({"id": None, "stage": "worker", "reason": str(exc)})
                            return

            threads = [threading.Thread(target=drive, args=(w,), daemon=True) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            while not pending.empty():  # every worker died and none could be restarted
                row = pending.get_nowait()
                finish(row, {"id": row["id"], "stage": "worker", "prompt": row["prompt"],
                             "reason": "no worker left to run it (see the worker errors above)"})
        finally:
            for worker in workers:
                worker.close()
    shutil.rmtree(staging, ignore_errors=True)

    failed = [e for e in errors if e.get("id") is not None]
    summary = {
        "backend": cfg.backend, **described, "licence": licence, "shard": cfg.shard,
        "total": total, "generated": generated, "skipped": skipped, "failed": len(failed),
        "seconds": round(time.perf_counter() - start, 3), "errors": errors,
    }
    errors_text = "".join(json.dumps(e) + "\n" for e in errors)
    atomic_write(out / f"errors{shard_suffix(shard)}.jsonl", lambda tmp: Path(tmp).write_text(errors_text, encoding="utf-8"))
    write_json(out / f"generate_summary{shard_suffix(shard)}.json", summary)
    return summary


def _guard(row: dict, extra_terms: list[str]) -> str | None:
    """The IP guard on the row's prompt; a row made with an explicit override passes and keeps the term."""
    from mvtune.prompts.guard import ProtectedPromptError, ensure_allowed

    try:
        return ensure_allowed(row["prompt"], extra_terms=tuple(extra_terms), override=bool(row.get("override")))
    except ProtectedPromptError as exc:
        raise GeneratorError(str(exc)) from None


def _make_item(
    cfg: GenerateMeshesConfig, licence: str, described: dict, worker: _Worker, row: dict, override: str | None,
    staging: Path, out: Path,
) -> dict | None:
    """Run one item on ``worker`` and move it into place; returns None on success, else its errors.jsonl entry."""
    item = row["id"]
    seed = item_seed(cfg.seed, row)
    stage_dir = staging / item
    shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir(parents=True)
    entry = {"id": item, "prompt": row["prompt"], "seed": seed}
    started = time.perf_counter()
    reply = worker.ask({"id": item, "row": row, "seed": seed, "out": str(stage_dir)}, cfg.timeout)
    if reply is None:
        return entry | {"stage": "timeout", "reason": f"no result within --timeout {cfg.timeout:g} s; worker restarted"}
    if not reply.get("ok"):
        return entry | {"stage": "generate", "reason": reply.get("error", "unknown worker error")}
    try:
        glb = stage_dir / MESH_FILE
        if not glb.is_file():
            raise GeneratorError(f"the {cfg.backend} backend wrote no {MESH_FILE}")
        stats = check_output(glb)
        caption = str(reply.get("caption") or "").strip()
        if not caption:
            raise GeneratorError(f"the {cfg.backend} backend returned an empty caption")
        extra_files = [str(name) for name in reply.get("files", [])]
        # The backend's own fields first: it cannot overwrite the licence, seed or prompt recorded here.
        _place(out / item, stage_dir, caption, extra_files, dict(reply.get("provenance") or {}) | {
            "id": item, "backend": cfg.backend, **described,
            "generator": f"{cfg.backend}: {described['model']} {described['version']}",
            "licence": licence, "concept": row.get("concept"),
            "subject": row.get("subject"), "prompt": row["prompt"], "prompt_row": row, "seed": seed,
            "override": override, "caption": caption, "output": stats,
            "seconds": round(time.perf_counter() - started, 3),
        })
    except GeneratorError as exc:
        return entry | {"stage": "check", "reason": str(exc)}
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    return None


def _place(item_dir: Path, stage_dir: Path, caption: str, extra_files: list[str], record: dict) -> None:
    """Move the checked files into the item folder; the provenance (the done marker) is written last."""
    item_dir.mkdir(parents=True, exist_ok=True)
    (item_dir / PROVENANCE_FILE).unlink(missing_ok=True)
    names = [MESH_FILE, *[n for n in extra_files if n != MESH_FILE and (stage_dir / n).is_file() and "/" not in n]]
    for name in names:
        os.replace(stage_dir / name, item_dir / name)
    atomic_write(item_dir / CAPTION_FILE, lambda tmp: Path(tmp).write_text(caption + "\n", encoding="utf-8"))
    write_provenance(item_dir, [*names, CAPTION_FILE], record)
