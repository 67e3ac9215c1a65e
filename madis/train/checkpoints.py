"""Checkpoint layout in storage and its readers (no Ray, no DeepSpeed needed to read).

A run ``{storage_path}/{run_name}/`` holds one directory per checkpoint::

    checkpoint_<step:08d>/
        deepspeed/<tag>/...      engine state of every rank (model, ZeRO optimizer shards, LR)
        train_state.json         loop position: step, epoch, batch_in_epoch, samples, world_size
        export/                  inference weights written by Task.export (safetensors + config
                                 JSON) and metadata.json (step, epoch, config, metrics)
        COMPLETE                 written last, once every rank's files are in storage

A reader trusts a checkpoint only when ``COMPLETE`` exists (complete-or-absent): Ray uploads the
ranks' files one after another, so a directory without it may be half written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec

COMPLETE = "COMPLETE"
EXPORT_DIR = "export"
DEEPSPEED_DIR = "deepspeed"
TRAIN_STATE = "train_state.json"
METADATA = "metadata.json"
#: written in the run directory when the loop stops on non-finite losses (reason, step)
STOPPED = "STOPPED.json"
_CKPT_RE = re.compile(r"checkpoint_(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimizer steps."""
    return f"checkpoint_{step:08d}"


@dataclass
class CheckpointInfo:
    """A complete checkpoint in storage.

    Attributes:
        url: the checkpoint directory (local path or ``s3://...``).
        step: optimizer steps done.
        epoch: epoch the next batch belongs to.
        metrics: training and validation metrics at that step.
    """

    url: str
    step: int
    epoch: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def export_url(self) -> str:
        """Inference weights (``from_pretrained``-loadable) of this checkpoint."""
        return f"{self.url.rstrip('/')}/{EXPORT_DIR}"


def _join(url: str, name: str) -> str:
    return f"{str(url).rstrip('/')}/{name}"


def list_checkpoints(run_url: str) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, oldest first; ``[]`` when the run has none (yet).

    Args:
        run_url: ``{storage_path}/{run_name}`` (local directory or ``s3://...``).
    """
    fs, root = fsspec.core.url_to_fs(str(run_url))
    fs.invalidate_cache()  # s3fs caches listings per instance: a poller would never see news
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not _CKPT_RE.match(name):
            continue
        marker = f"{root.rstrip('/')}/{name}/{COMPLETE}"
        if not fs.exists(marker):
            continue
        with fs.open(marker, "r") as f:
            info = json.load(f)
        found.append(CheckpointInfo(_join(str(run_url), name), int(info["step"]), int(info["epoch"]),
                                    dict(info.get("metrics", {}))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_url: str) -> CheckpointInfo | None:
    """The newest complete checkpoint of a run, or ``None``."""
    done = list_checkpoints(run_url)
    return done[-1] if done else None


def read_metadata(export_url: str) -> dict[str, Any]:
    """``metadata.json`` of an export directory: step, epoch, run, train/task config, metrics.

    Raises:
        FileNotFoundError: no metadata there.
    """
    fs, root = fsspec.core.url_to_fs(str(export_url))
    with fs.open(_join(root, METADATA), "r") as f:
        return json.load(f)


def write_report(run_url: str, report: dict[str, Any], name: str = "report.json") -> str:
    """Write a job's final report as JSON into its run directory; returns the JSON text."""
    text = json.dumps(report, indent=2)
    with fsspec.open(_join(str(run_url), name), "w") as f:
        f.write(text)
    return text
