"""A training run: folder, trainer, callbacks, checkpoints (atomic, weights_only), resume, preemption signals.

Run folder (`output.dir/<name>/`):
  config.yaml (resolved, mvtune layout), train.log, summary.json, logs/csv/metrics.csv, logs/tensorboard/,
  checkpoints/*.ckpt (Lightning, exact resume), export/mvadapter_<variant>_sdxl.safetensors and/or
  export/pytorch_lora_weights.safetensors (rewritten at every checkpoint), samples/step_*.png.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import warnings
from datetime import datetime
from pathlib import Path

from mvtune.train.config import (
    TINY_BASE, TrainConfig, TrainConfigError, check_config, check_licences, dump_config, load_config,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
SAMPLES_DIR = "samples"
#: How long a requeued Slurm job waits for its previous instance (same job id) to release the run folder.
REQUEUE_LOCK_WAIT_S = 300.0


# ---- run folder and resume ---------------------------------------------------------------------------------


#: Set by the first process to its run name, so DDP ranks that Lightning launches as new processes (which
#: inherit the environment) write into the same run folder instead of timestamping their own.
RUN_NAME_ENV = "MVTUNE_RUN_NAME"


def run_name(cfg: TrainConfig, config_stem: str) -> str:
    """Explicit name; under Slurm the job id (a requeued job finds its own folder); else stem + time."""
    if cfg.output.name:
        return cfg.output.name
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"{config_stem}-slurm{job}" + (f"_{task}" if task and os.environ.get("SLURM_ARRAY_JOB_ID") else "")
    return os.environ.get(RUN_NAME_ENV) or f"{config_stem}-{datetime.now():%Y%m%d-%H%M%S}"


def global_rank() -> int:
    """This process's rank before the trainer exists (torchrun/Lightning set RANK, Slurm tasks SLURM_PROCID)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def checkpoint_step(path: Path) -> int | None:
    """The global step of a readable checkpoint of ours, or None (truncated, foreign, not a checkpoint).

    weights_only=True: only tensors and plain containers are unpickled, never code.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any unreadable file is just not a candidate
        log.warning("skipping checkpoint %s: not readable (%s: %s)", path, type(exc).__name__, exc)
        return None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
        log.warning("skipping %s: not an mvtune training checkpoint", path)
        return None
    return int(checkpoint["global_step"])


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest valid checkpoint of a run (Lightning's, preemption and Slurm hpc ones): highest step, then
    newest file. Truncated files are skipped with a warning."""
    candidates = sorted(
        [*(run_dir / CHECKPOINT_DIR).glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")],
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    best: tuple[int, float, Path] | None = None
    for path in candidates:
        step = checkpoint_step(path)
        if step is not None and (best is None or (step, path.stat().st_mtime) > best[:2]):
            best = (step, path.stat().st_mtime, path)
    return best[2] if best else None


def clean_run_folder(run_dir: Path) -> list[Path]:
    """Before a run starts (under its lock): delete the temp files of writes that were killed, and move unreadable
    checkpoints to checkpoints/corrupt/ (logged), so the run writes its own under the same names, never `-v1`
    beside a corrupt one. Returns where the corrupt ones went."""
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / EXPORT_DIR):
        for leftover in folder.glob(".*.tmp"):  # storage.atomic_write's temp names
            log.info("removing %s, left by a write that was killed", leftover)
            leftover.unlink(missing_ok=True)
    moved = []
    for path in [*(run_dir / CHECKPOINT_DIR).glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]:
        if checkpoint_step(path) is None:
            target = run_dir / CHECKPOINT_DIR / "corrupt" / f"{path.name}.{datetime.now():%Y%m%d-%H%M%S}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            log.warning("moved aside unreadable checkpoint %s -> %s", path, target)
            moved.append(target)
    return moved


def resolve_resume(cfg: TrainConfig, config_stem: str, resume: str | None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume from or None).

    None: a new folder, except that a requeued Slurm job (same job id, same folder) continues its run.
    "auto": the named (or Slurm) folder, else the newest `<stem>-*` folder with checkpoints.
    A path: a checkpoint file or a run folder.
    """
    on_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    if resume is None or resume == "auto":
        run_dir = cfg.output.dir / run_name(cfg, config_stem)
        if resume == "auto" and not (cfg.output.name or on_slurm):
            runs = sorted(
                (p for p in cfg.output.dir.glob(f"{config_stem}-*") if (p / CHECKPOINT_DIR).is_dir()),
                key=lambda p: p.stat().st_mtime,
            )
            run_dir = runs[-1] if runs else run_dir
        if resume is None and not on_slurm:
            return run_dir, None
        checkpoint = find_resume_checkpoint(run_dir) if run_dir.is_dir() else None
        if checkpoint is None and resume == "auto":
            log.warning("--resume auto: no valid checkpoint in %s; starting from scratch", run_dir)
        return run_dir, checkpoint
    path = Path(resume)
    if path.is_dir():
        checkpoint = find_resume_checkpoint(path)
        if checkpoint is None:
            raise TrainConfigError(f"--resume {path}: no valid checkpoint in this run folder")
        return path, checkpoint
    if not path.is_file() or checkpoint_step(path) is None:
        raise TrainConfigError(f"--resume {path}: not a readable mvtune checkpoint (or run folder)")
    run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    return run_dir, path


def _no_duplicate_lightning_console() -> None:
    """Lightning gives its logger a console handler of its own; where the application already logs to the
    console (the root logger has handlers, e.g. the mvtune CLI), every Lightning message would print twice."""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)


def _log_to_file(run_dir: Path, rank: int) -> logging.Handler:
    handler = logging.FileHandler(run_dir / ("train.log" if rank == 0 else f"train.rank{rank}.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("mvtune", "lightning"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    return handler


# ---- Lightning pieces (imported lazily: torch is heavy) ------------------------------------------------------


def _lightning_pieces():
    """Classes that subclass Lightning types, defined on first use so `import mvtune.train.run` stays light."""
    import torch
    from lightning.pytorch import Callback
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from mvtune.storage import atomic_write

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Checkpoints are written to a temp file and renamed, so a kill never leaves a torn file behind;
        they are loaded with weights_only=True (plain tensors and containers only)."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    class PreemptionCallback(Callback):
        """On the given signals: finish the current step, save a checkpoint + exports, stop cleanly."""

        def __init__(self, checkpoint_dir: Path, signals: list[int]):
            self.checkpoint_dir = checkpoint_dir
            self.signals = signals
            self.received: int | None = None
            self.saved: Path | None = None
            self._previous: dict[int, object] = {}

        def _handler(self, signum, frame):
            self.received = signum

        def on_train_start(self, trainer, pl_module):
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
                return
            path = self.checkpoint_dir / f"preempt-step={trainer.global_step:07d}.ckpt"
            trainer.save_checkpoint(path)
            self.saved = path
            log.warning(
                "received %s: saved %s and stopping; continue with `--resume auto`",
                signal.Signals(self.received).name if self.received else "a signal on another rank", path,
            )
            trainer.should_stop = True
            # Lightning validates before it stops early; after SIGTERM that can outlast Slurm's grace period.
            trainer.limit_val_batches = 0

        def teardown(self, trainer, pl_module, stage):
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous.clear()

    return AtomicCheckpointIO, PreemptionCallback


def _resumable_csv_logger(run_dir: Path):
    """A CSV logger that keeps the whole curve across resumes, and the callback that trims it at the resume step.

    Lightning's CSVLogger deletes an existing metrics.csv when it starts, so after a resume or a requeue the file
    held only the steps since the checkpoint. Here the rows of steps before the checkpoint are kept and the rows a
    killed run logged after it are dropped (this run logs those steps again), so every step appears once.
    """
    import csv

    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    from mvtune.storage import atomic_write

    class CurveWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            """Keep metrics.csv (the base class deletes it); trimmed by keep_before once the step is known."""

        def keep_before(self, step: int) -> None:
            path = Path(self.metrics_file_path)
            if not path.is_file():
                return
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                fields = list(reader.fieldnames or [])
                rows = [r for r in reader if (r.get("step") or "").strip() and int(float(r["step"])) < step]
            if not rows:
                path.unlink()
                return

            def write(tmp: str) -> None:
                with open(tmp, "w", newline="", encoding="utf-8") as f:
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)

            atomic_write(path, write)
            self.metrics_keys = fields  # later rows append under the same header (or rewrite it for new keys)

    class CurveCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = CurveWriter(log_dir=self.log_dir)
            return self._experiment

    class KeepCurve(Callback):
        """At train start the checkpoint is restored: global_step is the step training continues from."""

        def __init__(self, logger: CurveCSVLogger):
            self.logger = logger

        def on_train_start(self, trainer, pl_module):
            if trainer.is_global_zero:
                self.logger.experiment.keep_before(trainer.global_step)

    logger = CurveCSVLogger(run_dir, name="logs", version="csv")
    return logger, KeepCurve(logger)


def build_trainer(cfg: TrainConfig, run_dir: Path, extra_callbacks: list | None = None):
    """The Lightning Trainer for a run (loggers, checkpoints, early stopping, preemption, Slurm requeue)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    AtomicCheckpointIO, PreemptionCallback = _lightning_pieces()
    csv_logger, keep_curve = _resumable_csv_logger(run_dir)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    every_steps = cfg.checkpoint.every_n_steps
    callbacks = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step={step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_steps,
            save_on_train_epoch_end=False if every_steps is None else None,
            save_last=cfg.checkpoint.save_last,
            save_top_k=cfg.checkpoint.save_top_k,
            # A resume rewrites step=N.ckpt / last.ckpt in place (corrupt ones were moved aside first).
            enable_version_counter=False,
        )
    ]
    if cfg.validation.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=cfg.validation.early_stopping_patience))
    plugins = [AtomicCheckpointIO()]
    on_slurm = SLURMEnvironment.detect()
    if on_slurm:
        # Lightning saves hpc_ckpt_N.ckpt into the run folder and requeues; the requeued job resumes from it.
        plugins.append(SLURMEnvironment(requeue_signal=signal.SIGUSR1))
    elif os.environ.get("SLURM_JOB_ID"):
        log.warning(
            "running in Slurm job %s but not as a Slurm task: auto-requeue is off (SIGUSR1 only saves and exits). "
            "Start training with `srun` or submit with --ntasks; see docs/slurm.md", os.environ["SLURM_JOB_ID"]
        )
    preempt = PreemptionCallback(ckpt_dir, [signal.SIGTERM] if on_slurm else [signal.SIGUSR1, signal.SIGTERM])
    callbacks.append(preempt)
    if cfg.trainer.enable_progress_bar:
        from mvtune.train.progress import StepProgress

        callbacks.append(StepProgress())  # one bar over all steps with loss and steps/s (Lightning's is per epoch)
    callbacks += extra_callbacks or []
    val = cfg.validation
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_steps=cfg.trainer.max_steps,
        max_epochs=cfg.trainer.max_epochs if cfg.trainer.max_epochs is not None else -1,
        precision=cfg.trainer.precision,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=False,  # StepProgress instead
        val_check_interval=val.every_n_steps,
        check_val_every_n_epoch=None if val.every_n_steps else val.check_every_n_epochs,
        limit_val_batches=val.num_batches if val.num_batches else 1.0,
        num_sanity_val_steps=val.sanity_steps,
        logger=[
            csv_logger,
            TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False),
        ],
        callbacks=[*callbacks, keep_curve],
        plugins=plugins,
        use_distributed_sampler=False,  # TrainDataModule shards per rank itself (exact mid-epoch resume)
        enable_model_summary=False,
    )
    return trainer, preempt


def _data_and_system(cfg: TrainConfig, components: dict | None, rank: int):
    """The strategy's data module and Lightning system (concept-lora: images, a plain SDXL LoRA)."""
    if cfg.strategy == "concept-lora":
        from mvtune.train.concept_lora import ConceptLoraSystem, ensure_class_images
        from mvtune.train.data import ImageTrainDataModule
        from mvtune.train.system import load_base_components

        if components is None:
            components = load_base_components(cfg.model.base, cfg.model.vae, cfg.trainer.seed)
        if cfg.prior.generate:
            ensure_class_images(cfg, components, rank)  # before the LoRA exists: the base model's own prior
        return ImageTrainDataModule(cfg), ConceptLoraSystem(cfg, components)
    from mvtune.train.data import TrainDataModule
    from mvtune.train.system import MVAdapterSystem

    return TrainDataModule(cfg), MVAdapterSystem(cfg, components)


def train(
    cfg: TrainConfig,
    config_stem: str = "train",
    resume: str | None = None,
    components: dict | None = None,
    extra_callbacks: list | None = None,
) -> Path:
    """Check the config, prepare the run folder, train; returns the run folder.

    `components` (SDXL components dict) replaces loading `model.base` (tests, benchmarks).
    """
    check_config(cfg)
    from mvtune.data.loader import DatasetError

    licences = check_licences(cfg)  # before any heavy work: a refused dataset fails in a second
    if cfg.strategy == "concept-lora":
        from mvtune.train.concept_lora import resolve_steps

        cfg = resolve_steps(cfg)
    run_dir, checkpoint = resolve_resume(cfg, config_stem, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    held = contextlib.ExitStack()
    if global_rank() == 0:  # DDP ranks launched by this process join its run instead of locking it
        from mvtune.storage import FolderLockedError, folder_lock

        try:
            held.enter_context(folder_lock(run_dir, f"mvtune train {config_stem}", same_job_waits=REQUEUE_LOCK_WAIT_S))
        except FolderLockedError as exc:
            raise TrainConfigError(
                f"{exc}. Two trainings must not share a run folder (their metrics, checkpoints and exports would "
                "mix): give this one another output.name, or resume once the other has stopped"
            ) from None
        clean_run_folder(run_dir)
        if checkpoint is not None and not (resume and Path(resume).is_file()):
            # A requeued job may have waited for its previous instance, which saved on its way out.
            checkpoint = find_resume_checkpoint(run_dir)
    shares_name = RUN_NAME_ENV not in os.environ
    if shares_name:  # DDP ranks launched from here inherit it; removed again when this run ends
        os.environ[RUN_NAME_ENV] = run_dir.name
    rank = global_rank()
    handler = _log_to_file(run_dir, rank)
    started = time.time()
    summary = {"run_dir": str(run_dir), "resumed_from": str(checkpoint) if checkpoint else None, "status": "running",
               "licences": licences}
    try:
        if rank == 0:
            (run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        log.info("run folder %s%s", run_dir, f", resuming from {checkpoint}" if checkpoint else "")

        import lightning as L

        _no_duplicate_lightning_console()
        L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
        datamodule, system = _data_and_system(cfg, components, rank)
        system.export_dir = run_dir / EXPORT_DIR
        system.samples_dir = run_dir / SAMPLES_DIR
        trainer, preempt = build_trainer(cfg, run_dir, extra_callbacks)
        with warnings.catch_warnings():
            # The data position is restored by TrainDataModule.load_state_dict, so mid-epoch resume is exact.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # On resume old checkpoints are kept on purpose (metrics.csv too: see _resumable_csv_logger).
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            trainer.fit(system, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None, weights_only=True)
        summary["status"] = "preempted" if preempt.saved else "finished"
        if preempt.saved:
            summary["checkpoint"] = str(preempt.saved)
        elif trainer.is_global_zero:
            summary["exports"] = {k: str(v) for k, v in system.export(run_dir / EXPORT_DIR).items()}
        summary["global_step"] = trainer.global_step
        summary["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if getattr(system, "_evaluator", None) is not None:
            summary["best"] = system._evaluator.best  # the step `evaluation.best_metric` liked most, in export/best/
        return run_dir
    except DatasetError as exc:  # captions, scene lists, missing objects: the user's files, one line in the CLI
        summary["status"] = f"failed: {exc}"
        log.error("training failed: %s", exc)
        raise TrainConfigError(str(exc)) from None
    except BaseException as exc:
        summary["status"] = f"failed: {type(exc).__name__}: {exc}"
        log.error("training failed: %s", exc)
        raise
    finally:
        summary["seconds"] = round(time.time() - started, 2)
        if rank == 0:
            from mvtune.storage import write_json

            write_json(run_dir / "summary.json", summary)
        for name in ("mvtune", "lightning"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
        if shares_name:
            os.environ.pop(RUN_NAME_ENV, None)
        held.close()


def train_from_cli(config_path: Path, overrides: list[str], resume: str | None) -> Path:
    """`mvtune train CONFIG.yaml [key=value ...] [--resume auto|PATH]`; raises TrainConfigError for bad configs."""
    config_path = Path(config_path)
    cfg = load_config(config_path, overrides)
    return train(cfg, config_stem=cfg.output.tag or config_path.stem, resume=resume)


# ---- demo ----------------------------------------------------------------------------------------------------


def demo_config(
    dataset_dir: Path,
    out_dir: Path,
    steps: int,
    resolution: int,
    strategy: str,
    seed: int,
    base: str = TINY_BASE,
    adapter: Path | None = None,
    accelerator: str = "cpu",
) -> TrainConfig:
    """A short run on a dataset's train split. With the tiny random SDXL (default): CPU, fp32, big learning rate,
    no warm-up. With a real base model (a local diffusers folder) and GPU: bf16-mixed and the reference's lr."""
    tiny = base == TINY_BASE
    return load_config(
        None,
        base={
            "strategy": strategy,
            "data": {"root": str(dataset_dir), "height": resolution, "width": resolution, "num_workers": 0},
            "model": {"base": base, "adapter": str(adapter) if adapter else None, "frozen_dtype": "fp32" if tiny else "auto"},
            "optim": {"lr": 1e-3 if tiny else 5e-5, "warmup_steps": 0},
            "lora": {"lr": 1e-3 if tiny else 1e-4, "rank": 4, "alpha": 4},
            "validation": {"every_n_steps": max(1, steps // 2), "num_inference_steps": 10 if tiny else 30,
                           "num_objects": 2, "sanity_steps": 0},
            "trainer": {"max_steps": steps, "max_epochs": None, "precision": "32-true" if tiny else "bf16-mixed",
                        "accelerator": accelerator, "enable_progress_bar": True, "seed": seed, "log_every_n_steps": 1},
            "checkpoint": {"every_n_steps": steps},
            "output": {"dir": str(out_dir), "name": "demo-train"},
        },
    )


def demo_training(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    steps: int = 40,
    resolution: int = 64,
    strategy: str = "adapter",
    seed: int = 0,
    base: str = TINY_BASE,
    adapter: Path | None = None,
    accelerator: str = "cpu",
) -> Path:
    """Train the adapter for `steps` steps on the dataset's train split (the tiny random SDXL on CPU by default);
    returns the run folder (metrics, grids in samples/, exports). Writes split files first if the dataset has none."""
    from mvtune.data.splits import SPLIT_FILES, split_dataset

    dataset_dir = Path(dataset_dir)
    if not all((dataset_dir / f).exists() for f in SPLIT_FILES.values()):
        log.info("no split files in %s: splitting it (val 0.2, test 0.2)", dataset_dir)
        split_dataset(dataset_dir, val=0.2, test=0.2, seed=seed)
    cfg = demo_config(dataset_dir, Path(out_dir), steps, resolution, strategy, seed, base, adapter, accelerator)
    if accelerator == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        import torch

        # The tiny model's ops are too small to split: with one OpenMP thread per core, every op waits at a
        # barrier for a thread the (shared) machine has descheduled, which made steps 10-100x slower than
        # benchmarks/bench_train.py (run with OMP_NUM_THREADS=1); see benchmarks/RESULTS.md.
        torch.set_num_threads(1)
    return train(cfg, config_stem="demo", resume=None)


def demo_sample(
    run_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    object_id: str | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 3.0,
    seed: int = 42,
    on_step=None,
) -> Path:
    """Sample the 6 views of a held-out object (test split, else val) with a demo run's trained tiny model.

    Uses the loader's condition maps of that object; writes view_*.png, a grid (rows: ground truth, sample) and
    sample.json (what was done: object, prompt, models, seed, steps, guidance, resolution) into `out_dir`
    (default: <run>/held_out); returns the grid's path. on_step(done, total) follows the denoising steps.
    """
    import torch
    from PIL import Image

    from mvtune.data.loader import MultiviewDataset
    from mvtune.data.splits import SPLIT_FILES
    from mvtune.data.validate import read_scene_list
    from mvtune.models import DEFAULT_NEGATIVE_PROMPT
    from mvtune.models.pipeline import MVAdapterPipeline
    from mvtune.storage import write_json
    from mvtune.train.system import LORA_FILE, adapter_file, image_grid, load_base_components

    run_dir, dataset_dir = Path(run_dir), Path(dataset_dir)
    cfg = load_config(run_dir / "config.yaml")
    out = Path(out_dir) if out_dir is not None else run_dir / "held_out"
    out.mkdir(parents=True, exist_ok=True)
    if object_id is None:
        for split in ("test", "val"):
            path = dataset_dir / SPLIT_FILES[split]
            entries = read_scene_list(path) if path.exists() else []
            if entries:
                object_id = entries[0]
                break
        else:
            raise TrainConfigError(f"{dataset_dir} has no test or val split to pick a held-out object from")
    export = run_dir / EXPORT_DIR
    adapter = export / adapter_file(cfg.model.variant)
    pipe = MVAdapterPipeline.from_components(
        load_base_components(cfg.model.base, cfg.model.vae, cfg.trainer.seed),
        variant=cfg.model.variant,
        adapter=adapter if adapter.exists() else cfg.model.adapter,
        scheduler="ddpm",
        shift_scale=cfg.model.shift_scale if cfg.model.shift_noise else 1.0,  # 1: ShiftSNR leaves SNR as it is
    )
    if (export / LORA_FILE).exists():
        pipe.unet.load_lora_adapter(str(export / LORA_FILE), prefix="unet")
    if cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        pipe.to("cuda", torch.bfloat16)
    dataset = MultiviewDataset(
        dataset_dir, [object_id], variant=cfg.model.variant, height=cfg.data.height, width=cfg.data.width,
        captions=cfg.data.captions,
    )
    sample = dataset[0]
    generator = torch.Generator().manual_seed(seed)
    images = pipe(sample["prompt"], sample["source_rgb"], num_inference_steps=num_inference_steps,
                  guidance_scale=guidance_scale, negative_prompt=DEFAULT_NEGATIVE_PROMPT, generator=generator,
                  output_type="np", on_step=on_step)
    for k, image in enumerate(images):
        Image.fromarray((image * 255).round().astype("uint8")).save(out / f"view_{k}.png")
    grid_path = out / "grid.png"
    Image.fromarray(image_grid([sample["rgb"].permute(0, 2, 3, 1).numpy(), images])).save(grid_path)
    write_json(out / "sample.json", {
        "object_id": object_id, "prompt": sample["prompt"], "seed": seed,
        "models": {"base_model": cfg.model.base, "adapter": str(adapter if adapter.exists() else cfg.model.adapter),
                   "lora": str(export / LORA_FILE) if (export / LORA_FILE).exists() else None,
                   "scheduler": "ddpm", "shift_scale": cfg.model.shift_scale if cfg.model.shift_noise else 1.0},
        "sampling": {"steps": num_inference_steps, "guidance": guidance_scale, "resolution": cfg.data.height,
                     "negative_prompt": DEFAULT_NEGATIVE_PROMPT},
        "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "grid": str(grid_path),
    })
    return grid_path
