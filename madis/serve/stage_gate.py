"""Stage-by-stage turns between the decodes of one replica
(docs/decoding.md#streamed-coarse-to-fine-decoding).

A replica with ``serve.concurrent_batches`` > 1 has that many batches in flight, each decoding
on a thread of its own. They share the replica's cores, so only one computes at a time: the
holder of a :class:`StageGate`. A decode gives the gate back at the end of each UTC stage
and asks for it again for its next stage; the gate goes to the least advanced waiting decode
(ties: the earlier arrival). A batch that arrives while another one decodes therefore runs its
first stage, whose quarter-resolution motion is the first ``event: stage`` of
``POST /generate/stream``, after at most one stage of the other batch instead of after its
whole reverse process.

No Ray here: :class:`~madis.serve.generator.LoadedModel` takes the turns, the deployment
(:mod:`madis.serve.app`) owns the gate.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import Callable

import torch

StageEnd = Callable[[int, torch.Tensor, torch.Tensor], None]


class StageGate:
    """One decode computes at a time; the next turn goes to the lowest ``(stage, ticket)``.

    A decode takes a :meth:`ticket` when it starts (tickets grow with arrival), then
    ``acquire(0, ticket)``, and between stages ``release()`` + ``acquire(stage + 1, ticket)``
    (:meth:`between_stages` builds that ``on_stage_end`` hook). Turns are never taken away
    mid-stage. Thread-safe; ``acquire`` blocks.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: tuple[int, int] | None = None
        self._waiting: list[tuple[int, int]] = []
        self._tickets = itertools.count()

    def ticket(self) -> int:
        """A new decode's place in arrival order."""
        return next(self._tickets)

    def acquire(self, stage: int, ticket: int) -> None:
        """Block until it is ``(stage, ticket)``'s turn: the gate is free and no waiting decode
        has a lower ``(stage, ticket)``."""
        key = (stage, ticket)
        with self._cond:
            heapq.heappush(self._waiting, key)
            try:
                self._cond.wait_for(lambda: self._holder is None and self._waiting[0] == key)
            except BaseException:  # interrupted: a key left first in line would block everyone
                self._waiting.remove(key)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
                raise
            heapq.heappop(self._waiting)
            self._holder = key

    def release(self) -> None:
        """End the holder's turn.

        Raises:
            RuntimeError: nobody holds the gate.
        """
        with self._cond:
            if self._holder is None:
                raise RuntimeError("release() of a StageGate nobody holds")
            self._holder = None
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Decodes blocked in :meth:`acquire` now."""
        with self._cond:
            return len(self._waiting)

    def between_stages(self, ticket: int, inner: StageEnd | None = None) -> StageEnd:
        """The ``on_stage_end`` hook of a decode that holds the gate: ``inner`` first (e.g. the
        streamed stage views, computed in this turn), then the gate is handed on and taken back
        for the next stage. After the last stage the turn it takes back covers the final
        tokens -> motion decoding; the caller releases it."""

        def on_stage_end(stage: int, tokens: torch.Tensor, masked: torch.Tensor) -> None:
            if inner is not None:
                inner(stage, tokens, masked)
            self.release()
            self.acquire(stage + 1, ticket)

        return on_stage_end
