"""SiCLIP as a :class:`madis.train.Task`: contrastive training on ground-truth (motion, text) pairs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from madis.config import to_dict
from madis.metrics.siclip import SiCLIP, SiCLIPConfig
from madis.train.task import Task


@dataclass
class SiCLIPTask(Task):
    """Train :class:`SiCLIP` with the shared loop on a shard root's train split (paper 3.4).

    Build it with :meth:`from_shards` (motion format, z-score statistics and split sizes come from
    the manifest). Batches drop the last incomplete one: a contrastive batch needs negatives, and
    the loss refuses fewer than two pairs.

    Attributes:
        config: SiCLIP sizes and objective.
        shards: shard root (local dir or ``s3://...``).
        motion_format, mean, std: from the manifest.
        splits: samples per split.
        shuffle_buffer: the reader's shuffle buffer (``data.shuffle_buffer``).
    """

    name = "siclip"
    config: SiCLIPConfig
    shards: str
    motion_format: str
    mean: list[float]
    std: list[float]
    splits: dict[str, int] = field(default_factory=dict)
    shuffle_buffer: int = 256

    @classmethod
    def from_shards(cls, config: SiCLIPConfig, shards: str, **kw) -> "SiCLIPTask":
        """A task for the shard root ``shards``.

        Raises:
            FileNotFoundError / StorageError: no manifest there.
        """
        from madis.data.shards import open_shard_root

        root = open_shard_root(shards)
        return cls(config=config, shards=root.url, motion_format=root.motion_format,
                   mean=root.mean, std=root.std, splits=root.splits, **kw)

    def build_model(self) -> SiCLIP:
        return SiCLIP(self.config, self.motion_format, self.mean, self.std)

    def batches(self, *, rank, world_size, epoch, seed, batch_size):
        from madis.data.shards import iter_batches

        return iter_batches(self.shards, "train", batch_size, rank=rank, world_size=world_size,
                            seed=seed, epoch=epoch, shuffle=True, drop_last=True,
                            shuffle_buffer=self.shuffle_buffer)

    def loss(self, model, batch):
        out = model(batch["motion"], batch["mask"], batch["text"])
        return out.loss, {"global_loss": out.global_loss, "fine_loss": out.fine_loss,
                          "logit_scale": out.logit_scale}

    def batch_samples(self, batch):
        return len(batch["text"])

    def steps_per_epoch(self, *, world_size, batch_size):
        train = self.splits.get("train", 0)
        return train // world_size // batch_size or None

    def validation_batches(self, *, rank, world_size):
        """This rank's share of the val split in consecutive batches of
        ``retrieval_batch_size`` (45: the released protocol's retrieval batches)."""
        from madis.data.shards import iter_batches

        if not self.splits.get("val"):
            return []
        return iter_batches(self.shards, "val", self.config.retrieval_batch_size, rank=rank,
                            world_size=world_size, shuffle=False)

    def validation_step(self, model, batch):
        """Sign-to-text R@1/R@5 (%) among the batch's own texts (the ``_b45`` protocol of
        :func:`~madis.metrics.evaluation.siclip_retrieval`), weighted by its samples. The job's
        final report ranks the whole test split. A batch of one sample ranks nothing and counts
        for nothing (it still runs the forwards: ZeRO-3 keeps the ranks in step)."""
        from madis.metrics.evaluation import siclip_retrieval

        motions = [m[mask].cpu().numpy() for m, mask in zip(batch["motion"], batch["mask"])]
        res = siclip_retrieval(model, motions, batch["text"], batch_size=len(motions))
        n = len(motions) if len(motions) >= 2 else 0
        return {"s2t_R@1": (res["siclip_s2t_R@1"]["value"] * n, n),
                "s2t_R@5": (res["siclip_s2t_R@5"]["value"] * n, n)}

    def export(self, model, directory):
        model.save_pretrained(directory)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "siclip": to_dict(self.config), "shards": self.shards,
                "motion_format": self.motion_format, "splits": self.splits}

    @staticmethod
    def load(export_dir: str, map_location: str | torch.device = "cpu") -> SiCLIP:
        """The trained model from a checkpoint's ``export`` directory (no DeepSpeed/Ray)."""
        return SiCLIP.from_pretrained(export_dir, map_location)
