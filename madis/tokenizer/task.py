"""The tokenizer as a :class:`madis.train.Task`: train the part VQ-VAEs on motion shards."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from madis.config import to_dict
from madis.motion import PARTS
from madis.tokenizer.config import TokenizerConfig
from madis.tokenizer.decoupled import DecoupledTokenizer
from madis.train.task import Task


#: samples read for :func:`feature_stats` at most (a seeded subset of a larger train split)
STATS_SAMPLES = 4000


def feature_stats(url: str, motion_format: str, max_samples: int = STATS_SAMPLES
                  ) -> tuple[list[float], list[float]]:
    """Z-score statistics of the wrist-frame features (``hand_frame: wrist``) over the train
    split of the shard root ``url``: mean and std ``[D]``, every frame of the first
    ``max_samples`` samples of a shuffled pass (all of them in the sample corpus).

    Raises:
        ValueError: the train split holds no frame.
    """
    from madis.data.shards import iter_samples
    from madis.motion import get_format
    from madis.motion.length import RunningStats

    fmt = get_format(motion_format)
    stats = RunningStats(fmt.dim)
    for n, s in enumerate(iter_samples(url, "train", shuffle=True, seed=0)):
        if n >= max_samples:
            break
        stats.update(fmt.hands_to_wrist(s["motion"]))
    mean, std = stats.result()
    return mean.tolist(), std.tolist()


@dataclass
class TokenizerTask(Task):
    """Reconstruction training of :class:`DecoupledTokenizer` on a shard root.

    Build it with :meth:`from_shards`, which reads the motion format, the z-score statistics
    and the split sizes from the manifest.

    Attributes:
        config: tokenizer sizes.
        shards: shard root (local dir or ``s3://...``).
        motion_format, mean, std: from the manifest.
        train_samples: samples in the train split (for steps per epoch).
        val_batches: validation batches per rank (0: the whole val split).
        shuffle_buffer: the reader's shuffle buffer (``data.shuffle_buffer``).
    """

    name = "tokenizer"
    config: TokenizerConfig
    shards: str
    motion_format: str
    mean: list[float]
    std: list[float]
    train_samples: int = 0
    val_batches: int = 0
    shuffle_buffer: int = 256
    splits: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_shards(cls, config: TokenizerConfig, shards: str, **kw) -> "TokenizerTask":
        """A task for the shard root ``shards``.

        Raises:
            FileNotFoundError / StorageError: no manifest there.
        """
        from madis.data.shards import open_shard_root

        root = open_shard_root(shards)
        mean, std = root.mean, root.std
        if config.hand_frame == "wrist":
            mean, std = feature_stats(root.url, root.motion_format)
        return cls(config=config, shards=root.url, motion_format=root.motion_format,
                   mean=mean, std=std, train_samples=root.splits.get("train", 0),
                   splits=root.splits, **kw)

    def build_model(self) -> DecoupledTokenizer:
        return DecoupledTokenizer(self.config, self.motion_format, self.mean, self.std)

    def batches(self, *, rank, world_size, epoch, seed, batch_size):
        from madis.data.shards import iter_batches

        return iter_batches(self.shards, "train", batch_size, rank=rank, world_size=world_size,
                            seed=seed, epoch=epoch, shuffle=True,
                            shuffle_buffer=self.shuffle_buffer)

    def loss(self, model, batch):
        out = model(batch["motion"], batch["mask"], batch["valid"])
        metrics: dict[str, Any] = {"recon_loss": out.recon_loss.detach(),
                                   "commit_loss": out.commit_loss.detach()}
        for j, p in enumerate(PARTS):
            metrics[f"perplexity_{p}"] = out.perplexity[j]
            metrics[f"codes_used_{p}"] = out.used[j]
        return out.loss, metrics

    def steps_per_epoch(self, *, world_size, batch_size):
        if not self.train_samples:
            return None
        return math.ceil(self.train_samples / world_size / batch_size)

    def validation_batches(self, *, rank, world_size):
        """This rank's share of the val split in batches of 16 (at most ``val_batches``)."""
        from itertools import islice

        from madis.data.shards import iter_batches

        if not self.splits.get("val"):
            return []
        batches = iter_batches(self.shards, "val", 16, rank=rank, world_size=world_size,
                               shuffle=False)
        return islice(batches, self.val_batches) if self.val_batches else batches

    def validation_step(self, model, batch):
        """The z-scored SmoothL1 reconstruction loss, weighted by the batch's samples."""
        out = model(batch["motion"], batch["mask"], batch["valid"])
        n = len(batch["text"])
        return {"recon_loss": (out.recon_loss * n, n)}

    def export(self, model, directory):
        model.save_pretrained(directory)

    def describe(self):
        return {"name": self.name, "tokenizer": to_dict(self.config), "shards": self.shards,
                "motion_format": self.motion_format, "splits": self.splits}

    @staticmethod
    def load(export_dir: str, map_location: str | torch.device = "cpu") -> DecoupledTokenizer:
        """The trained tokenizer from a checkpoint's ``export`` directory (no DeepSpeed/Ray)."""
        return DecoupledTokenizer.from_pretrained(export_dir, map_location)
