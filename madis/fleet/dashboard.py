"""The fleet's TensorBoard events, beside the training loop's in the run's storage. No Ray here.

The training loop writes ``train/*`` and ``val/*`` scalars under the optimizer step and copies
its events to ``{run}/tensorboard/`` while the run goes (``madis.train.events``). The fleet
writes its validation curves under the same step (the checkpoint's) to
``{run}/tensorboard/fleet/``: in place for a run on a local disk; for a run on S3 to a local
staging directory whose changed event files are uploaded as soon as an evaluation's scalars
are written, and again after its images (:class:`madis.train.events.EventMirror`: each object
replaced whole, so a TensorBoard reading it goes on from where it was).
``tensorboard --logdir {run}/tensorboard`` then shows the runs ``.`` (training) and ``fleet``
on one step axis.

Tags: ``eval/<sampler>/<metric>`` (e.g. ``eval/utc/dtw_jpe_body``, ``eval/utc/siclip_s2t_R@1``),
``fleet/lag_s`` (checkpoint landed -> metrics written), ``fleet/eval_s`` (the whole evaluation)
and ``fleet/decode_s`` (its decoding part, spread over the actors), ``fleet/failed``
(1 at the step of a checkpoint that could not be evaluated) with the reason as text
``fleet/error``, images ``samples/<sampler>/<i>`` (generated | ground truth) and
``gates/<sampler>/<i>`` (MoP gate weights, paper Figure 7).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from madis.fleet.retry import with_backoff
from madis.train.events import TENSORBOARD_DIR, EventMirror

log = logging.getLogger(__name__)

#: the fleet's directory inside the run's TensorBoard directory
FLEET_SUBDIR = "fleet"


def fleet_tensorboard_url(run_url: str) -> str:
    """``{run_url}/tensorboard/fleet``: where the fleet's event files land."""
    return f"{str(run_url).rstrip('/')}/{TENSORBOARD_DIR}/{FLEET_SUBDIR}"


class Dashboard:
    """A ``SummaryWriter`` whose event files end up in ``{run}/tensorboard/fleet``.

    Args:
        run_url: the training run (local directory, ``file://`` or ``s3://``).
        staging_dir: local event directory (created) for a run that is not on a local disk.
        attempts, backoff_s: storage retries of each upload.
    """

    def __init__(self, run_url: str, staging_dir: str, attempts: int = 6,
                 backoff_s: float = 0.5) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.remote = fleet_tensorboard_url(run_url)
        remote = self.remote[len("file://"):] if self.remote.startswith("file://") else self.remote
        local_run = "://" not in remote
        self.local_dir = Path(remote if local_run else staging_dir)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self.mirror = None if local_run else EventMirror(self.local_dir, self.remote)
        self.attempts, self.backoff_s = attempts, backoff_s
        self.writer = SummaryWriter(str(self.local_dir))

    def add_metrics(self, step: int, metrics: Mapping[str, Mapping[str, float]]) -> None:
        """``eval/<sampler>/<name>`` scalars: ``metrics`` is ``{sampler: {name: value}}``."""
        for sampler, values in metrics.items():
            for name, value in values.items():
                if value is not None and np.isfinite(value):
                    self.writer.add_scalar(f"eval/{sampler}/{name}", value, step)

    def add_scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An RGB uint8 ``[H, W, 3]`` image."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def add_failure(self, step: int, error: str) -> None:
        self.writer.add_scalar("fleet/failed", 1.0, step)
        self.writer.add_text("fleet/error", error, step)

    def publish(self) -> list[str]:
        """Flush, and for a remote run upload every event file that changed; returns the
        uploaded URLs.

        Raises:
            OSError: the storage stayed unreachable through every retry.
        """
        self.writer.flush()
        if self.mirror is None:
            return []

        def retry(fn, what):
            with_backoff(fn, what, attempts=self.attempts, backoff_s=self.backoff_s)

        return self.mirror.upload(self.mirror.snapshot(), retry)

    def close(self) -> None:
        self.writer.close()
