"""Checkpoint layout in storage and its readers (no Ray, no DeepSpeed needed to read).

A run ``{storage_path}/{run_name}/`` holds one directory per checkpoint::

    checkpoint_<step:08d>/
        deepspeed/<tag>/...      engine state of every rank (model, ZeRO optimizer shards, LR)
        train_state.json         loop position: step, epoch, batch_in_epoch, samples, world_size
        export/                  inference weights written by Task.export (safetensors + config
                                 JSON) and metadata.json (step, epoch, config, metrics)
        COMPLETE                 written last, once every rank's files are in storage

A reader trusts a checkpoint only when ``COMPLETE`` exists (complete-or-absent): Ray uploads the
ranks' files one after another, so a directory without it may be half written. The loop's own
files are written here (:func:`write_layout`), and :func:`write_complete` is the one writer of
the marker: the loop, the retention and the test helpers that write runs all call it
(docs/data-formats.md#checkpoints).

Retention (:func:`prune_checkpoints`, ``train.keep_checkpoints``): the loop keeps the newest
complete checkpoints and the one the eval fleet's ``best.json`` names; an older one loses its
``COMPLETE`` marker, then its files, and keeps only ``PRUNED.json``. The directory itself stays
because Ray's run snapshot lists every checkpoint it was handed and refuses to resume a run whose
listed checkpoint directories are gone.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import fsspec

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
EXPORT_DIR = "export"
DEEPSPEED_DIR = "deepspeed"
TRAIN_STATE = "train_state.json"
METADATA = "metadata.json"
#: written in the run directory when the loop stops on non-finite losses (reason, step)
STOPPED = "STOPPED.json"
#: all that is left of a checkpoint removed by the retention (step, time, why)
PRUNED = "PRUNED.json"
_CKPT_RE = re.compile(r"checkpoint_(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimizer steps."""
    return f"checkpoint_{step:08d}"


def step_in_name(checkpoint_url: str) -> int | None:
    """The step a checkpoint directory's name holds (``.../checkpoint_00000400`` -> 400), or
    ``None`` for a name of another form."""
    m = _CKPT_RE.match(str(checkpoint_url).rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def export_url(checkpoint_url: str) -> str:
    """The export directory (``from_pretrained``-loadable inference weights) of a checkpoint."""
    return f"{str(checkpoint_url).rstrip('/')}/{EXPORT_DIR}"


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
        return export_url(self.url)


def _join(url: str, name: str) -> str:
    return f"{str(url).rstrip('/')}/{name}"


def write_json(url: str, doc: Any, **dump_kwargs: Any) -> None:
    """Write ``doc`` as JSON at ``url`` (a local path or any fsspec URL), directories created."""
    fs, path = fsspec.core.url_to_fs(str(url))
    parent = path.rstrip("/").rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(doc, f, **dump_kwargs)


def write_layout(checkpoint_dir: str, *, train_state: dict[str, Any],
                 metadata: dict[str, Any]) -> None:
    """The loop's files of a checkpoint, beside DeepSpeed's engine state and the task's export:
    ``train_state.json`` (the loop position) and ``export/metadata.json`` (step, epoch, run name,
    task, train config, metrics)."""
    write_json(_join(checkpoint_dir, TRAIN_STATE), train_state)
    write_json(_join(_join(checkpoint_dir, EXPORT_DIR), METADATA), metadata, indent=2)


def write_complete(checkpoint_url: str, step: int, *, epoch: int = 0,
                   metrics: dict[str, Any] | None = None) -> None:
    """Write the ``COMPLETE`` marker of a checkpoint, ``{"step", "epoch", "metrics"}``: the last
    file of a checkpoint, written only once every other file is in storage."""
    write_json(_join(checkpoint_url, COMPLETE),
               {"step": int(step), "epoch": int(epoch), "metrics": dict(metrics or {})})


def read_train_state(checkpoint_url: str) -> dict[str, Any]:
    """``train_state.json`` of a checkpoint: step, epoch, batch_in_epoch, samples,
    skipped_batches, world_size.

    Raises:
        FileNotFoundError: no train state there.
    """
    fs, root = fsspec.core.url_to_fs(str(checkpoint_url))
    with fs.open(_join(root, TRAIN_STATE), "r") as f:
        return json.load(f)


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
        if step_in_name(name) is None:
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


def prune_checkpoints(run_url: str, keep: int) -> list[CheckpointInfo]:
    """Remove the complete checkpoints of a run beyond the newest ``keep``, except the one the
    run's ``best.json`` names (:func:`madis.fleet.registry.read_best`), so that the eval fleet's
    best checkpoint, which the Serve application loads, is never deleted.

    A removed checkpoint keeps its directory with only ``PRUNED.json`` in it (see the module
    doc); incomplete checkpoints are left alone. Nothing is removed when ``best.json`` cannot
    be read (a storage error, a malformed document): the retention waits for the next
    checkpoint rather than risk the best one.

    Args:
        run_url: ``{storage_path}/{run_name}``; keep: checkpoints kept (0 keeps all).
    Returns:
        The checkpoints removed, oldest first.
    Raises:
        OSError: the storage refused a removal (the checkpoint is then no longer listed as
            complete, its remaining files stay).
    """
    if keep <= 0:
        return []
    done = list_checkpoints(run_url)
    if len(done) <= keep:
        return []
    from madis.fleet.registry import read_best

    def best_step() -> int | None:
        doc = read_best(run_url)
        best = (doc or {}).get("best") or {}
        return int(best["step"]) if "step" in best else None

    try:
        protected = best_step()
    except (OSError, ValueError) as exn:
        log.warning("%s: best.json unreadable (%s); no checkpoint pruned this time", run_url, exn)
        return []
    fs, root = fsspec.core.url_to_fs(str(run_url))
    removed = []
    for ckpt in done[:-keep]:
        if ckpt.step == protected:
            continue
        directory = f"{root.rstrip('/')}/{checkpoint_dir_name(ckpt.step)}"
        with fs.open(f"{directory}/{PRUNED}", "w") as f:
            json.dump({"step": ckpt.step, "pruned_at": time.time(),
                       "reason": f"train.keep_checkpoints = {keep}"}, f)
        fs.rm(f"{directory}/{COMPLETE}")  # readers (the fleet, Serve) stop trusting it first
        try:
            if best_step() == ckpt.step:  # ranked best while we were at it: keep it after all
                _keep(fs, directory, ckpt)
                continue
        except (OSError, ValueError):
            _keep(fs, directory, ckpt)
            continue
        fs.invalidate_cache()
        for entry in fs.ls(directory, detail=False):
            if entry.rstrip("/").rsplit("/", 1)[-1] != PRUNED:
                fs.rm(entry, recursive=True)
        removed.append(ckpt)
    return removed


def _keep(fs, directory: str, ckpt: CheckpointInfo) -> None:
    """Put back the ``COMPLETE`` marker of a checkpoint whose pruning was called off."""
    write_complete(ckpt.url, ckpt.step, epoch=ckpt.epoch, metrics=ckpt.metrics)
    fs.rm(f"{directory}/{PRUNED}")
