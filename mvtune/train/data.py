"""Training data: the loader's MultiviewDataset per split, the prior-preservation mix, and a resumable order.

Batches are `collate_multiview` batches plus `reg` (bool per object: drawn from the regularisation set).
The train order is a pure function of (seed, epoch), and the data module stores how many batches of the current
epoch were consumed, so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mvtune.data.loader import EpochSampler, MultiviewDataset, collate_multiview
from mvtune.train.config import TrainConfig, prior_list, split_lists

log = logging.getLogger(__name__)


class PriorMixDataset(Dataset):
    """Training objects plus `ratio` of regularisation objects per epoch (exactly, up to rounding).

    Indices [0, n_main) are training objects and [n_main, len) regularisation slots; the sampler shuffles both.
    The slots walk through the regularisation set across epochs, so a large generic set is covered over time.
    Indices >= len encode the epoch like MultiviewDataset's (see EpochSampler).
    """

    def __init__(self, main: MultiviewDataset, reg: MultiviewDataset | None, ratio: float):
        self.main, self.reg = main, reg
        self.n_main = len(main)
        self.n_reg = 0 if reg is None or ratio <= 0 else max(1, round(ratio * self.n_main / (1.0 - ratio)))

    def __len__(self) -> int:
        return self.n_main + self.n_reg

    def __getitem__(self, index: int) -> dict:
        epoch, i = divmod(int(index), len(self))
        if i < self.n_main:
            return self.main[epoch * self.n_main + i] | {"reg": False}
        j = (epoch * self.n_reg + i - self.n_main) % len(self.reg)
        return self.reg[epoch * len(self.reg) + j] | {"reg": True}


class ResumableEpochSampler(EpochSampler):
    """EpochSampler that shards each epoch's order across DDP ranks (padded like DistributedSampler) and can skip
    the first `n` indices of this rank's share of one epoch (the part a resumed run already saw).

    It shards itself (the trainer runs with use_distributed_sampler=False): Lightning's DistributedSamplerWrapper
    would index the full-length epoch into the shortened list of a resumed epoch and fail.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(size, shuffle, seed)
        self.num_replicas, self.rank = num_replicas, rank
        self.skip: tuple[int, int] | None = None  # (epoch, indices of this rank)

    def __len__(self) -> int:
        return math.ceil(self.size / self.num_replicas)

    def __iter__(self):
        indices = list(super().__iter__())
        if self.num_replicas > 1:
            total = len(self) * self.num_replicas
            indices = (indices * math.ceil(total / len(indices)))[:total]
            indices = indices[self.rank :: self.num_replicas]
        if self.skip is not None and self.skip[0] == self.epoch:
            indices = indices[self.skip[1] :]
            self.skip = None
        return iter(indices)


def collate_train(samples: list[dict]) -> dict:
    batch = collate_multiview(samples)
    batch["reg"] = torch.tensor([bool(s.get("reg", False)) for s in samples])
    return batch


class TrainDataModule(L.LightningDataModule):
    """Train (with the optional prior mix) and val loaders for one TrainConfig."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        data = cfg.data
        splits = split_lists(cfg)
        common = dict(variant=cfg.model.variant, height=data.height, width=data.width, seed=cfg.trainer.seed)
        self.train_set = MultiviewDataset(
            data.root, splits["train"], captions=data.captions, background=data.background,
            mirror_prob=data.mirror_prob, **common,
        )
        self.val_set = MultiviewDataset(data.root, splits["val"], captions=data.captions, **common)
        self.reg_set = None
        if cfg.prior.root is not None:
            self.reg_set = MultiviewDataset(
                cfg.prior.root, prior_list(cfg), captions=cfg.prior.captions, background=data.background, **common
            )
        self.mixed = PriorMixDataset(self.train_set, self.reg_set, cfg.prior.ratio)
        self.sampler = ResumableEpochSampler(len(self.mixed), shuffle=True, seed=cfg.trainer.seed)
        if self.reg_set is not None:
            log.info(
                "prior preservation: %d regularisation + %d training objects per epoch (ratio %.2f, weight %g)",
                self.mixed.n_reg, self.mixed.n_main, cfg.prior.ratio, cfg.prior.weight,
            )

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        workers = self.cfg.data.num_workers
        self.sampler.num_replicas, self.sampler.rank = self._rank()
        return DataLoader(
            self.mixed, batch_size=self.cfg.data.batch_size, sampler=self.sampler, num_workers=workers,
            collate_fn=collate_train, persistent_workers=workers > 0, drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        world, rank = self._rank()
        sampler = DistributedSampler(self.val_set, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(
            self.val_set, batch_size=self.cfg.data.batch_size, num_workers=min(self.cfg.data.num_workers, 2),
            collate_fn=collate_train, sampler=sampler,
        )

    def state_dict(self) -> dict:
        """Where the train order stands: the epoch and how many of its batches were consumed."""
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(trainer.current_epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.sampler.skip = (state["epoch"], state["batches_done"] * self.cfg.data.batch_size)


class ImageTrainDataModule(TrainDataModule):
    """data.kind images (strategy concept-lora): images (+ class images mixed in by PriorMixDataset) batched by
    aspect-ratio bucket, in an order that resumes mid-epoch exactly like TrainDataModule's. No val loader: the
    concept system validates with sample grids."""

    def __init__(self, cfg: TrainConfig):
        L.LightningDataModule.__init__(self)  # TrainDataModule's would read multi-view splits
        from mvtune.data.images import BucketBatchSampler, ImageDataset

        self.cfg = cfg
        data, images = cfg.data, cfg.data.images
        common = dict(resolution=data.height, buckets=images.buckets, max_aspect=images.max_aspect,
                      random_crop=images.random_crop, flip_prob=data.mirror_prob, seed=cfg.trainer.seed)
        self.train_set = ImageDataset(
            data.root, caption_dropout=images.caption_dropout, shuffle_tags=images.shuffle_tags,
            keep_tokens=images.keep_tokens, **common,
        )
        self.reg_set = None
        prior_root = cfg.class_image_dir() if cfg.prior.generate else cfg.prior.root
        if prior_root is not None:
            self.reg_set = ImageDataset(prior_root, **common)  # class captions stay as they are
        self.mixed = PriorMixDataset(self.train_set, self.reg_set, cfg.prior.ratio)
        self.sampler = BucketBatchSampler(len(self.mixed), self._buckets, data.batch_size, seed=cfg.trainer.seed)
        if self.reg_set is not None:
            log.info("prior preservation: %d class + %d concept images per epoch (ratio %.2f, weight %g)",
                     self.mixed.n_reg, self.mixed.n_main, cfg.prior.ratio, cfg.prior.weight)

    def _buckets(self, epoch: int) -> list[tuple[int, int]]:
        """The bucket of every mixed index in `epoch` (class slots walk through the class images)."""
        mixed = self.mixed
        reg = [self.reg_set.buckets[(epoch * mixed.n_reg + k) % len(self.reg_set)] for k in range(mixed.n_reg)]
        return list(self.train_set.buckets) + reg

    def train_dataloader(self) -> DataLoader:
        from mvtune.data.images import collate_images

        workers = self.cfg.data.num_workers
        trainer = self.trainer
        self.sampler.num_replicas, self.sampler.rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return DataLoader(self.mixed, batch_sampler=self.sampler, num_workers=workers, collate_fn=collate_images,
                          persistent_workers=workers > 0)

    def val_dataloader(self):
        return []

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.sampler.skip = (state["epoch"], state["batches_done"])  # batches, not indices
