"""The ``Task`` interface: what a job gives the shared training loop. No Ray here.

A task is a picklable object built on the driver (holding its own config and data URLs) and sent
to every Ray Train worker. The loop owns everything else: process group, DeepSpeed engine,
AdamW + cosine schedule, bf16, ZeRO, logging, checkpoints, resume, non-finite-loss handling.
The tokenizer (``madis.tokenizer.task``), MDLM pre-training / fine-tuning and SiCLIP implement it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn


class Task(ABC):
    """One trainable job. Methods run inside each worker (rank ``r`` of ``world_size``).

    Required: :meth:`build_model`, :meth:`loss`, :meth:`batches`, :meth:`export`.
    Optional: :meth:`steps_per_epoch`, :meth:`evaluate`, :meth:`trainable_parameters`,
    :meth:`batch_samples`, :meth:`describe`.
    """

    #: short name used in logs and checkpoint metadata
    name: str = "task"

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model on the CPU (the loop seeds torch, moves and wraps it)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Mapping[str, Any]
             ) -> tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]:
        """Scalar training loss and scalar metrics for logging, for one batch.

        Args:
            model: the DeepSpeed engine; calling it runs the module's ``forward``; the module
                itself is ``model.module`` (its other methods, buffers).
            batch: one item of :meth:`batches`, tensors already on the worker's device.

        Returns:
            ``(loss, metrics)``; ``metrics`` values are floats or 0-d tensors (averaged over
            ranks when logged).
        """

    @abstractmethod
    def batches(self, *, rank: int, world_size: int, epoch: int, seed: int, batch_size: int
                ) -> Iterable[Mapping[str, Any]]:
        """This rank's batches for one epoch.

        Must be deterministic for ``(rank, world_size, epoch, seed, batch_size)``: after a
        restart the loop re-creates the epoch's iterator and skips the batches already consumed.
        Ranks should see disjoint data. When one rank runs out, the epoch ends for all.
        """

    @abstractmethod
    def export(self, model: nn.Module, directory: str) -> None:
        """Write inference weights (safetensors + config JSON) into the local ``directory``.

        Called on rank 0 with the plain module (full weights, also under ZeRO-3); what is
        written must load with neither DeepSpeed nor Ray.
        """

    def steps_per_epoch(self, *, world_size: int, batch_size: int) -> int | None:
        """Batches per rank per epoch, if known; needed when ``train.steps`` is 0."""
        return None

    def evaluate(self, model: nn.Module, *, rank: int, world_size: int) -> dict[str, float]:
        """Validation metrics at each checkpoint (called on all ranks, module in eval mode,
        under ``torch.no_grad``); the loop averages each value over ranks."""
        return {}

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer updates (default: all with ``requires_grad``)."""
        return [p for p in model.parameters() if p.requires_grad]

    def batch_samples(self, batch: Mapping[str, Any]) -> int:
        """Samples in a batch (for samples/s): the first dimension of its first tensor."""
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
        return 0

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored in checkpoint metadata (configs, data URLs)."""
        return {"name": self.name}


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch moved to ``device``; other values unchanged."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def skip(it: Iterator, n: int) -> int:
    """Advance ``it`` by up to ``n`` items; returns how many were skipped."""
    done = 0
    for _ in range(n):
        if next(it, None) is None:
            break
        done += 1
    return done
