"""A rich progress bar for training runs: one bar over all steps (not one per epoch) with the loss and steps/s,
and a line for each validation. Used by `mvtune train` and the demo in place of Lightning's bar.
"""

from __future__ import annotations

import logging
import time

from lightning.pytorch import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def shared_console() -> Console:
    """The console the application logs to (a RichHandler on the root logger, as in the CLI), so log lines print
    above the live bar instead of through it; else a new stderr console."""
    from rich.logging import RichHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, RichHandler):
            return handler.console
    return Console(stderr=True)


def _metric(trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


class StepProgress(Callback):
    """Steps done of trainer.max_steps (or of the epochs' batches), the latest train/loss and val/loss, steps/s.

    Only rank 0 draws; on a console that is not a terminal rich prints the final state once.
    """

    def __init__(self, console: Console | None = None, description: str = "train"):
        self.console = console or shared_console()
        self.description = description
        self.progress: Progress | None = None
        self.task = None
        self.validation = None
        self._started = 0.0
        self._first_step = 0

    def _total(self, trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        batches = trainer.num_training_batches
        if trainer.max_epochs and batches not in (None, float("inf")):
            return int(trainer.max_epochs * batches / max(1, trainer.accumulate_grad_batches))
        return None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
            console=self.console, transient=False,
        )
        self.progress.start()
        self._started, self._first_step = time.perf_counter(), trainer.global_step
        self.task = self.progress.add_task(self.description, total=self._total(trainer),
                                           completed=trainer.global_step, stats="")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self._started
        rate = (trainer.global_step - self._first_step) / elapsed if elapsed > 0 else 0.0
        stats = [f"{rate:.2f} steps/s"]
        for name in ("train/loss", "val/loss"):
            value = _metric(trainer, name)
            if value is not None:
                stats.append(f"{name} {value:.4f}")
        self.progress.update(self.task, completed=trainer.global_step, stats="  ".join(stats))

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.progress is not None and not trainer.sanity_checking:
            self.validation = self.progress.add_task("validation (loss, sample grids)", total=None, stats="")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.progress is not None and self.validation is not None:
            self.progress.remove_task(self.validation)
            self.validation = None

    def teardown(self, trainer, pl_module, stage) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
