"""Batches for the training loop, read ahead on a background thread. No Ray here.

Storage reads (an S3 GET per shard), tar parsing, ``np.load`` and collation run on a thread of
their own, ``depth`` batches ahead of the training thread, so the accelerator does not wait for
them; on a GPU the batches' tensors are put in pinned memory there, so that the training
thread's ``.to(device, non_blocking=True)`` is an asynchronous copy. The thread runs on into the
next epoch when one ends, so the reader's shuffle buffer (``data.shuffle_buffer`` samples, read
before the first batch of an epoch) refills while the last batches of the previous epoch train.

The order of batches is the task's: epoch by epoch, each epoch's iterator made fresh and,
when resuming, the consumed batches skipped -- exactly what the loop would read itself
(``depth=0`` does that, on the training thread). An exception of the task's iterator reaches
the training thread when it asks for the batch that raised.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Mapping

import torch

from madis.train.task import skip

#: how often a blocked thread looks whether it was told to stop, seconds
_POLL_S = 0.1


def pin(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch with its CPU tensors in page-locked memory (non-blocking host-to-GPU copies)."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v
            for k, v in batch.items()}


class BatchLoader:
    """One rank's batches over consecutive epochs, from ``start_epoch`` on.

    Args:
        make_epoch: ``epoch -> iterable of batches`` (the task's ``batches`` for this rank).
        start_epoch: the first epoch; ``skip_batches`` of its batches were consumed before.
        depth: batches read ahead on a background thread; 0 reads on the caller's thread.
        pin_memory: put tensors in pinned memory (on a GPU worker).

    Use :meth:`next` for each batch of an epoch, :meth:`end_epoch` when the loop ends an
    epoch before its iterator did (another rank ran out), :meth:`close` at the end.
    """

    def __init__(self, make_epoch: Callable[[int], Iterable[Mapping[str, Any]]],
                 start_epoch: int = 0, skip_batches: int = 0, depth: int = 4,
                 pin_memory: bool = False) -> None:
        self._make, self._skip, self._pin = make_epoch, skip_batches, pin_memory
        self._depth = depth
        self._epoch = start_epoch
        self._stop = threading.Event()
        self._abandoned = start_epoch - 1  # the reader drops epochs up to this one
        if depth > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._read, name="madis-batches", daemon=True)
            self._thread.start()
        else:
            self._iter = self._open(start_epoch)

    # -- the reading side ------------------------------------------------------------------------
    def _open(self, epoch: int):
        it = iter(self._make(epoch))
        if self._skip:
            skip(it, self._skip)
            self._skip = 0
        return it

    def _prepare(self, batch):
        return pin(batch) if self._pin else batch

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        epoch = self._epoch
        try:
            while not self._stop.is_set():
                it = self._open(epoch)
                try:
                    for batch in it:
                        if self._stop.is_set() or epoch <= self._abandoned:
                            break
                        if not self._put(("batch", epoch, self._prepare(batch))):
                            return
                finally:
                    close = getattr(it, "close", None)
                    if close is not None:
                        close()
                if not self._put(("end", epoch, None)):
                    return
                epoch += 1
        except BaseException as exn:  # handed to the training thread, raised where it belongs
            self._put(("error", epoch, exn))

    # -- the training side -----------------------------------------------------------------------
    def next(self, epoch: int) -> Mapping[str, Any] | None:
        """The next batch of ``epoch``; ``None`` once the epoch has no more.

        Raises:
            whatever the task's iterator raised for this batch.
        """
        if self._depth == 0:
            if epoch != self._epoch:
                self._epoch, self._iter = epoch, self._open(epoch)
            batch = next(self._iter, None)
            return None if batch is None else self._prepare(batch)
        kind, got, payload = self._queue.get()
        if kind == "error":
            raise payload
        if got != epoch:
            raise RuntimeError(f"batch loader is at epoch {got}, the loop asked for {epoch}")
        return payload if kind == "batch" else None

    def end_epoch(self, epoch: int) -> None:
        """Drop the rest of ``epoch`` (the loop ended it early); the next :meth:`next` call may
        ask for ``epoch + 1``."""
        if self._depth == 0:
            self._epoch, self._iter = epoch + 1, self._open(epoch + 1)
            return
        self._abandoned = epoch
        while True:
            kind, got, payload = self._queue.get()
            if kind == "error":
                raise payload
            if kind == "end" and got == epoch:
                return

    def close(self) -> None:
        """Stop the reading thread (it may be blocked on a full queue or on storage)."""
        self._stop.set()
        if self._depth == 0:
            return
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(_POLL_S)
