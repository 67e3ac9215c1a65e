"""Checkpoints written straight into a run's storage, for the fleet's tests and benchmark.

:func:`write_checkpoint` produces what the training loop leaves in storage
(``checkpoint_<step:08d>/{export/, train_state.json, COMPLETE}``, ``COMPLETE`` last, so a
reader never sees it half written) from an export directory, without a DeepSpeed engine: the
``deepspeed/`` engine state, which only a resuming training job reads, is left out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import fsspec

from madis.train.checkpoints import (
    EXPORT_DIR, METADATA, checkpoint_dir_name, write_complete, write_layout,
)


def write_checkpoint(run_url: str, step: int, export_dir: str | Path, *, epoch: int = 0,
                     metrics: dict[str, float] | None = None, task: dict[str, Any] | None = None,
                     complete: bool = True) -> str:
    """Copy the local ``export_dir`` into ``{run_url}/checkpoint_<step>/export`` with a
    ``metadata.json`` (step, epoch, ``task``, metrics) and ``train_state.json``, then write
    ``COMPLETE`` (unless ``complete`` is False: a checkpoint still being uploaded, finished by
    :func:`~madis.train.checkpoints.write_complete`). Returns the checkpoint URL.
    """
    url = f"{str(run_url).rstrip('/')}/{checkpoint_dir_name(step)}"
    fs, root = fsspec.core.url_to_fs(url)
    metrics = dict(metrics or {})
    for path in sorted(Path(export_dir).rglob("*")):
        if path.is_file() and path.name != METADATA:
            rel = path.relative_to(export_dir).as_posix()
            fs.makedirs(f"{root}/{EXPORT_DIR}/{Path(rel).parent.as_posix()}", exist_ok=True)
            fs.put_file(str(path), f"{root}/{EXPORT_DIR}/{rel}")
    write_layout(url, train_state={"step": step, "epoch": epoch}, metadata={
        "step": step, "epoch": epoch, "task": task or {}, "metrics": metrics, "time": time.time()})
    if complete:
        write_complete(url, step, epoch=epoch, metrics=metrics)
    return url
