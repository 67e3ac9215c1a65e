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
    Optional: :meth:`steps_per_epoch`, :meth:`validation_batches` with :meth:`validation_step`
    (validation at each checkpoint), :meth:`trainable_parameters`, :meth:`batch_samples`,
    :meth:`describe`.
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
        The loop iterates it on a background thread (``train.prefetch_batches``), so it must
        not draw from torch's global random generator (seed a ``torch.Generator`` instead).
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

    def validation_batches(self, *, rank: int, world_size: int) -> Iterable[Mapping[str, Any]]:
        """This rank's validation batches (the same at every checkpoint; default: none).

        Ranks must see disjoint samples that together make the whole validation set; their
        batch counts may differ.
        """
        return ()

    def validation_step(self, model: nn.Module, batch: Mapping[str, Any]) -> ValSums:
        """Validation sums of one batch (module in eval mode, under ``torch.no_grad``).

        Args:
            model: the bare module (``engine.module``); under ZeRO-3 its weights are gathered
                for the whole validation, so the batch may decide which submodules run and
                how often (``madis.train.loop.validate``).
            batch: one item of :meth:`validation_batches`, tensors on the worker's device.
        Returns:
            ``{name: (sum, count)}``: the loop reports ``sum / count`` over every batch of every
            rank, e.g. ``(mean * B, B)`` for a per-sample mean or ``(hits, total)`` for an
            accuracy. Values are floats or 0-d tensors.
        """
        raise NotImplementedError(f"task {self.name!r} gives validation_batches but no "
                                  f"validation_step")

    def evaluate(self, model: nn.Module, *, rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """The validation metrics of rank ``rank``'s :meth:`validation_batches`, in this process
        alone (no collective, batches where they are): with ``world_size=1`` what the loop
        reports for the whole set.

        Returns:
            ``{name: sum / count}`` (see :meth:`validation_step`) and ``samples``, the samples
            seen (:meth:`batch_samples`); empty without validation data.
        """
        totals = ValTotals()
        for batch in self.validation_batches(rank=rank, world_size=world_size):
            totals.add(self.validation_step(model, batch), self.batch_samples(batch))
        return totals.result()

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


#: what :meth:`Task.validation_step` returns: ``{name: (sum, count)}``
ValSums = Mapping[str, tuple[Any, Any]]


class ValTotals:
    """Running ``(sum, count)`` per validation metric and the samples seen, over batches and,
    with :meth:`merged`, over ranks. The one place where validation values are combined."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}
        self.samples = 0

    def add(self, sums: ValSums, samples: int) -> None:
        """Add one batch's :meth:`Task.validation_step` result and its sample count."""
        for name, (total, count) in sums.items():
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(total)
            acc[1] += float(count)
        self.samples += int(samples)

    @classmethod
    def merged(cls, others: Iterable["ValTotals"]) -> "ValTotals":
        """The totals of ``others`` (e.g. every rank's) added into a new object."""
        out = cls()
        for o in others:
            out.add({k: tuple(v) for k, v in o.sums.items()}, o.samples)
        return out

    def result(self) -> dict[str, float]:
        """``{name: sum / count}`` for metrics with a positive count, and ``samples``."""
        out = {k: s / c for k, (s, c) in sorted(self.sums.items()) if c > 0}
        if self.samples:
            out["samples"] = float(self.samples)
        return out


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
