"""Where a profile's runs live: run URLs, token-shard URLs, the newest complete export, and the
guard against relative paths inside a Ray job. No Ray here
(docs/architecture.md#where-a-profiles-runs-live).

A run is ``{train.storage_path}/{train_<job>.run_name}``: section ``train`` of a loaded profile,
overridden by the job's own section, then by the ``storage`` / ``run_name`` a command line gives.
Every job, the eval fleet, Serve, ``madis generate`` and ``madis up`` ask this module, so that an
ablation profile's runs (``t5-simple-avg-finetune``) are the ones trained, ranked and served.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from madis.config import ConfigError

#: part of the path of the directory ``ray job submit --working-dir`` unpacks a job into
RAY_WORKING_DIR = "/runtime_resources/working_dir_files/"
#: where the tokenizer job writes its token shards, under its run
TOKENS_DIR = "tokens"


def in_ray_working_dir() -> bool:
    """True inside Ray's temporary copy of a job's working directory."""
    return RAY_WORKING_DIR in os.getcwd().replace(os.sep, "/")


def absolute(url: str, what: str = "path") -> str:
    """``url`` with a local path made absolute; URLs with a scheme are returned as they are.

    Raises:
        ConfigError: a relative path while running in Ray's temporary copy of a job's working
            directory, where it would point into that copy and vanish with it.
    """
    if "://" in url or os.path.isabs(url):
        return url
    if in_ray_working_dir():
        raise ConfigError(f"{what} {url!r} is relative and this job runs in Ray's temporary copy "
                          f"of the working directory ({os.getcwd()}): give an absolute path or "
                          f"an s3:// URL")
    return str(Path(url).resolve())


def run_url(cfg) -> str:
    """``{storage_path}/{run_name}`` of a ``TrainConfig``, a local storage path made absolute.

    Raises:
        ConfigError: a relative storage path inside a Ray job (see :func:`absolute`).
    """
    base = absolute(cfg.storage_path, "train.storage_path")
    return f"{base.rstrip('/')}/{cfg.run_name}"


def job_train_config(tree: Mapping[str, Any], job: str, *, storage: str | None = None,
                     run_name: str | None = None, **changes: Any):
    """``train`` + ``train_<job>`` of a loaded profile, with ``storage`` (``storage_path``),
    ``run_name`` and any other ``TrainConfig`` fields on top.

    Raises:
        ConfigError: a bad value in either section or change, or a relative storage path inside
            a Ray job (its runs would be lost with the job's copy of the working directory).
    """
    from madis.train.config import train_config

    cfg = train_config(tree, job)
    where = {k: v for k, v in (("storage_path", storage), ("run_name", run_name)) if v is not None}
    try:
        cfg = dataclasses.replace(cfg, **where, **changes)
    except (TypeError, ValueError) as exn:
        raise ConfigError(str(exn)) from exn
    absolute(cfg.storage_path, "train.storage_path")
    return cfg


def job_run(tree: Mapping[str, Any], job: str, *, storage: str | None = None,
            run_name: str | None = None) -> str:
    """The run directory of ``job`` (``tokenizer``, ``siclip``, ``pretrain``, ``finetune``) in a
    loaded profile, e.g. ``/abs/storage/t5-simple-avg-finetune``.

    Raises:
        ConfigError: see :func:`job_train_config`.
    """
    return run_url(job_train_config(tree, job, storage=storage, run_name=run_name))


def tokens_url(tree: Mapping[str, Any], *, storage: str | None = None) -> str:
    """Where ``ray_jobs/train_tokenizer.py`` writes token shards by default:
    ``{tokenizer run}/tokens``."""
    return f"{job_run(tree, 'tokenizer', storage=storage)}/{TOKENS_DIR}"


def newest_checkpoint(run: str):
    """The newest complete checkpoint of a run (a ``CheckpointInfo``: url, step, metrics).

    Raises:
        FileNotFoundError: the run holds no complete checkpoint (yet).
    """
    from madis.train.checkpoints import latest_checkpoint

    last = latest_checkpoint(run)
    if last is None:
        raise FileNotFoundError(f"no complete checkpoint in {run}")
    return last


def newest_export(run: str) -> str:
    """Export URL of the newest complete checkpoint of a run.

    Raises:
        FileNotFoundError: the run holds no complete checkpoint (yet).
    """
    return newest_checkpoint(run).export_url
