"""A small regression task for tests and benchmarks of the loop, with fault injection.

It exercises every path of the loop (deterministic per-rank batches, epochs, export, a worker
that raises once at a chosen position, NaN losses) in seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import safetensors.torch
import torch
from torch import nn

from madis.train.task import Task


#: longest a paused loss waits for its file, seconds
PAUSE_LIMIT_S = 600


class InjectedFailure(RuntimeError):
    """Raised once by :class:`RegressionTask` to simulate a crashing worker."""


def where(*, device) -> dict:
    """Where :func:`madis.train.loop.run_on_worker` ran this: process, device, torch threads,
    the forwarded ``AWS_DEFAULT_REGION``."""
    return {"pid": os.getpid(), "device": str(device), "threads": torch.get_num_threads(),
            "region": os.environ.get("AWS_DEFAULT_REGION")}


@dataclass
class RegressionTask(Task):
    """Fit ``y = A x`` (``A`` fixed by ``data_seed``) with a two-layer MLP.

    Attributes:
        dim, hidden: sizes.
        batches_per_epoch: per rank.
        fixed_batch: every batch is the same one (a loss that must fall).
        fail_at: ``(rank, position)``: that rank raises :class:`InjectedFailure` when asked for
            its batch at ``position`` (batches consumed since the run began, over epochs) -
            only once, remembered by creating ``fail_marker``.
        nan_from: from this position on, inputs are NaN (so the loss is).
        pause_at: ``(position, path)``: the loss of that batch waits until the file ``path``
            exists (a run held at a known step while a test looks at it; at most
            ``PAUSE_LIMIT_S``, then :class:`TimeoutError`).
    """

    name = "regression"
    dim: int = 8
    hidden: int = 32
    batches_per_epoch: int = 4
    data_seed: int = 1234
    fixed_batch: bool = False
    fail_at: tuple[int, int] | None = None
    fail_marker: str | None = None
    nan_from: int | None = None
    pause_at: tuple[int, str] | None = None

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.dim, self.hidden), nn.Tanh(),
                             nn.Linear(self.hidden, self.dim))

    def _target(self) -> torch.Tensor:
        return torch.randn(self.dim, self.dim, generator=torch.Generator().manual_seed(self.data_seed))

    def batches(self, *, rank, world_size, epoch, seed, batch_size):
        a = self._target()
        for i in range(self.batches_per_epoch):
            position = epoch * self.batches_per_epoch + i
            if self.fail_at is not None and tuple(self.fail_at) == (rank, position):
                if self.fail_marker and not os.path.exists(self.fail_marker):
                    open(self.fail_marker, "w").close()
                    raise InjectedFailure(f"injected failure on rank {rank} at batch {position}")
            key = 0 if self.fixed_batch else hash((seed, epoch, rank, world_size, i)) % 2**31
            x = torch.randn(batch_size, self.dim, generator=torch.Generator().manual_seed(key))
            if self.nan_from is not None and position >= self.nan_from:
                x = torch.full_like(x, float("nan"))
            yield {"x": x, "y": x @ a.T, "position": torch.full((batch_size,), position)}

    def loss(self, model, batch):
        if self.pause_at is not None and int(batch["position"][0]) == self.pause_at[0]:
            deadline = time.monotonic() + PAUSE_LIMIT_S
            while not os.path.exists(self.pause_at[1]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.pause_at[1]} did not appear in {PAUSE_LIMIT_S} s")
                time.sleep(0.05)
        pred = model(batch["x"].to(next(model.parameters()).dtype))
        loss = nn.functional.mse_loss(pred.float(), batch["y"])
        return loss, {"position": batch["position"].float().mean()}

    def steps_per_epoch(self, *, world_size, batch_size):
        return self.batches_per_epoch

    def validation_batches(self, *, rank, world_size):
        """16 fixed validation samples, ``x[rank::world_size]`` on rank ``rank``, one batch."""
        x = torch.randn(16, self.dim, generator=torch.Generator().manual_seed(self.data_seed + 1))
        mine = x[rank::world_size]
        return [{"x": mine, "y": mine @ self._target().T}] if len(mine) else []

    def validation_step(self, model, batch):
        pred = model(batch["x"].to(next(model.parameters()).dtype)).float()
        return {"mse": (nn.functional.mse_loss(pred, batch["y"], reduction="sum"),
                        batch["y"].numel())}

    def export(self, model, directory):
        os.makedirs(directory, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, os.path.join(directory, "model.safetensors"))
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"dim": self.dim, "hidden": self.hidden}, f)

    def describe(self):
        return {"name": self.name, **asdict(self)}

    def load_export(self, directory: str) -> nn.Module:
        """The exported MLP, rebuilt from ``model.safetensors`` alone."""
        model = self.build_model()
        model.load_state_dict(safetensors.torch.load_file(os.path.join(directory, "model.safetensors")))
        return model
