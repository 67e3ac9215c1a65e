"""Command-line arguments every training job shares (``ray_jobs/*.py``). No Ray here.

A job reads a profile (``--config``) with dotted overrides, then its train settings from section
``train`` overridden by ``train_<job>`` (:func:`~madis.train.config.train_config`); the options
below override both, because they are what one changes per submission: where the run lives, how
many workers, which ZeRO stage, GPUs or not.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from madis import runs
from madis.train.config import TrainConfig


def job_parser(doc: str, sections: str) -> argparse.ArgumentParser:
    """The argument parser of a training job, with the options of :func:`add_job_arguments`.

    Args:
        doc: the job module's docstring; its first line is the description.
        sections: the config sections the job reads, shown as the epilog.
    The job adds its own options (``--shards``...) to the parser returned.
    """
    p = argparse.ArgumentParser(description=doc.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"sections used: {sections}")
    add_job_arguments(p)
    return p


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--storage``, ``--workers``, ``--gpus-per-worker``, ``--zero-stage``,
    ``--steps``, ``--run-name`` and the positional ``section.field=value`` overrides."""
    p.add_argument("--config", default="cpu-tiny",
                   help="profile name (cpu-tiny, paper) or YAML path (default: %(default)s)")
    p.add_argument("--storage", default=None,
                   help="run storage, a directory or s3://bucket/prefix (train.storage_path)")
    p.add_argument("--run-name", default=None, help="run directory under the storage")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (data-parallel ranks)")
    p.add_argument("--gpus-per-worker", type=int, default=None, choices=(0, 1),
                   help="1: one GPU per worker (NCCL); 0: CPU workers (gloo)")
    p.add_argument("--zero-stage", type=int, default=None, choices=(0, 1, 2, 3),
                   help="DeepSpeed ZeRO stage")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of the run")
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE",
                   help="config overrides, e.g. train.lr=1e-3 model.num_positions=64")


def job_train_config(tree: Mapping[str, Any], job: str, args: argparse.Namespace) -> TrainConfig:
    """``train`` + ``train_<job>`` of ``tree``, then the command-line options of
    :func:`add_job_arguments` on top (:func:`madis.runs.job_train_config`).

    Raises:
        ConfigError: a bad value in either section or option, or a relative storage path inside
            a Ray job (its runs would be lost with the job's copy of the working directory).
    """
    changes = {name: getattr(args, opt) for opt, name in (
        ("workers", "workers"), ("zero_stage", "zero_stage"), ("steps", "steps"))
        if getattr(args, opt, None) is not None}
    if getattr(args, "gpus_per_worker", None) is not None:
        changes["use_gpu"] = args.gpus_per_worker == 1
    return runs.job_train_config(tree, job, storage=getattr(args, "storage", None),
                                 run_name=getattr(args, "run_name", None), **changes)
