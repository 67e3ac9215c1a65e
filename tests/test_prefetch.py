"""The training loop's batch loader: the same batches in the same order as reading on the
training thread, read ahead on a thread of its own, errors where they belong."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from madis.train.prefetch import BatchLoader


class Epochs:
    """``epoch -> batches``: ``sizes[epoch]`` batches ``{"e", "i"}``, logging what was read."""

    def __init__(self, sizes, fail_at=None, gate=None):
        self.sizes, self.fail_at, self.gate = sizes, fail_at, gate
        self.read: list[tuple[int, int]] = []
        self.closed: list[int] = []

    def __call__(self, epoch):
        try:
            for i in range(self.sizes[epoch] if epoch < len(self.sizes) else 0):
                if self.gate is not None:
                    self.gate.wait(1)
                if (epoch, i) == self.fail_at:
                    raise ValueError(f"bad shard at {epoch}/{i}")
                self.read.append((epoch, i))
                yield {"e": epoch, "i": i, "x": torch.full((2,), float(i))}
        finally:
            self.closed.append(epoch)


def _drain(loader, epochs):
    out = []
    for e in epochs:
        while (b := loader.next(e)) is not None:
            out.append((b["e"], b["i"]))
    return out


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_same_batches_in_the_same_order_over_epochs_and_after_resume(depth):
    loader = BatchLoader(Epochs([3, 2, 4]), start_epoch=0, skip_batches=0, depth=depth)
    assert _drain(loader, [0, 1, 2]) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                         (2, 0), (2, 1), (2, 2), (2, 3)]
    loader.close()
    # resuming inside epoch 1 with one batch consumed
    resumed = BatchLoader(Epochs([3, 2, 4]), start_epoch=1, skip_batches=1, depth=depth)
    assert _drain(resumed, [1, 2]) == [(1, 1), (2, 0), (2, 1), (2, 2), (2, 3)]
    resumed.close()


@pytest.mark.parametrize("depth", [0, 3])
def test_an_epoch_ended_early_is_dropped_and_the_next_one_starts_whole(depth):
    epochs = Epochs([6, 2])
    loader = BatchLoader(epochs, depth=depth)
    assert loader.next(0)["i"] == 0
    loader.end_epoch(0)  # another rank ran out
    assert _drain(loader, [1]) == [(1, 0), (1, 1)]
    loader.close()
    assert 0 in epochs.closed  # the abandoned epoch's iterator was closed


@pytest.mark.parametrize("depth", [0, 2])
def test_a_reading_error_is_raised_when_its_batch_is_asked_for(depth):
    loader = BatchLoader(Epochs([4], fail_at=(0, 2)), depth=depth)
    assert [loader.next(0)["i"] for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="bad shard at 0/2"):
        loader.next(0)
    loader.close()


def test_reads_ahead_while_the_training_thread_works_and_no_further_than_depth():
    epochs = Epochs([10])
    loader = BatchLoader(epochs, depth=3)
    first = loader.next(0)
    deadline = time.monotonic() + 120
    while len(epochs.read) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)  # the "training step" on batch 0
    # batch 0 taken, 3 queued, 1 read and waiting for room: 5 read before batch 1 was asked for
    time.sleep(0.2)
    assert first["i"] == 0 and len(epochs.read) == 5
    assert [loader.next(0)["i"] for _ in range(3)] == [1, 2, 3]
    loader.close()


def test_close_stops_a_reader_blocked_on_storage_or_a_full_queue():
    gate = threading.Event()
    loader = BatchLoader(Epochs([100], gate=gate), depth=2)
    gate.set()
    loader.next(0)
    loader.close()  # the reader is blocked on the full queue
    assert not loader._thread.is_alive()
    stuck = BatchLoader(Epochs([5], gate=threading.Event()), depth=2)  # never opens
    stuck.close()
    assert not stuck._thread.is_alive()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_batches_are_pinned_on_a_gpu_worker():
    loader = BatchLoader(Epochs([2]), depth=2, pin_memory=True)
    assert loader.next(0)["x"].is_pinned()
    loader.close()
