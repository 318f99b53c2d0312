"""Test instrumentation for tests/test_pipeline_slurm.py (not a test module): put this folder on PYTHONPATH (the
experiment's setup lines do) and every `mvtune train` process records, per DDP rank and per start (requeues
start again), which object ids each epoch fed it and a SHA-256 of its trainable parameters at the end of fit,
into $MVTUNE_RANK_PROBE/rank<R>-start<N>.json."""

import hashlib
import json
import os
from pathlib import Path

import mvtune.train.run as _run

_build_trainer = _run.build_trainer


def _probe():
    from lightning.pytorch.callbacks import Callback

    class RankProbe(Callback):
        def __init__(self):
            self.epochs: dict[str, list[str]] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.epochs.setdefault(str(trainer.current_epoch), []).extend(batch["id"])

        def on_train_end(self, trainer, pl_module):
            digest = hashlib.sha256()
            for name, param in sorted(pl_module.named_parameters()):
                if param.requires_grad:
                    digest.update(name.encode())
                    digest.update(param.detach().cpu().contiguous().numpy().tobytes())
            out = Path(os.environ["MVTUNE_RANK_PROBE"])
            out.mkdir(parents=True, exist_ok=True)
            start = os.environ.get("SLURM_RESTART_COUNT", "0")
            (out / f"rank{trainer.global_rank}-start{start}.json").write_text(json.dumps({
                "rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
                "epochs": self.epochs, "params_sha256": digest.hexdigest(),
            }))

    return RankProbe()


def build_trainer(cfg, run_dir, extra_callbacks=None):
    return _build_trainer(cfg, run_dir, [*(extra_callbacks or []), _probe()])


if os.environ.get("MVTUNE_RANK_PROBE"):
    _run.build_trainer = build_trainer
