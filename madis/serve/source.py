"""Which checkpoint the service runs: the one ``best.json`` names, a given one, or the newest.

The eval fleet keeps ``{run}/best.json`` up to date; it is read with the registry's own
:func:`madis.fleet.registry.read_best` (layout in that module), whose ``best.step`` and
``best.export_url`` name the checkpoint. :func:`choose_model` turns a run (or a fixed
checkpoint) into a :class:`ModelChoice`; the deployment calls it again every ``serve.poll_s``
seconds and reloads when the choice's :attr:`~ModelChoice.key` changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from madis.fleet.registry import BEST_FILE, read_best


@dataclass(frozen=True)
class ModelChoice:
    """A checkpoint to serve and what is known about it.

    Attributes:
        export_url: the checkpoint's export directory (``load_generator``-loadable).
        step: optimizer steps of the checkpoint (None when its metadata has none).
        source: ``"best"`` (named by best.json), ``"latest"`` (newest complete checkpoint of a
            run without best.json yet) or ``"given"`` (``serve.checkpoint``).
        metric, mode, value: best.json's selection metric, its direction and the checkpoint's
            value (``"best"`` only).
        metrics: the checkpoint's metrics (best.json's, else the checkpoint's own).
        updated_at: best.json's ``updated_at``.
    """

    export_url: str
    step: int | None
    source: str
    metric: str | None = None
    mode: str | None = None
    value: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    updated_at: str | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        """What identifies the weights: a change of key means another model to load."""
        return (self.export_url, self.step)


def _from_best(run_url: str, best: dict) -> ModelChoice:
    from madis.mdlm.exports import export_dir

    try:
        entry = best["best"]
        step = int(entry["step"])
        export = entry.get("export_url") or export_dir(entry["checkpoint_url"])
    except (KeyError, TypeError, ValueError) as exn:
        raise ValueError(f"{run_url}/{BEST_FILE} lacks best.step and best.export_url / "
                         f"best.checkpoint_url ({type(exn).__name__}: {exn})") from None
    value = entry.get("value")
    return ModelChoice(export_url=str(export), step=step, source="best",
                       metric=best.get("metric"), mode=best.get("mode"),
                       value=None if value is None else float(value),
                       metrics=dict(entry.get("metrics") or {}), updated_at=best.get("updated_at"))


def choose_model(run_url: str | None, checkpoint: str | None = None) -> ModelChoice:
    """The checkpoint to serve.

    Args:
        run_url: run directory holding ``best.json`` (and the checkpoints).
        checkpoint: a fixed checkpoint directory or export; wins over ``run_url``.
    Returns:
        ``checkpoint`` when given; else the checkpoint ``best.json`` names; else, while the
        fleet has not named a best checkpoint yet (no best.json, or ``"best": null``), the
        run's newest complete checkpoint.
    Raises:
        FileNotFoundError: nothing to serve (no best.json and no complete checkpoint).
        ValueError: a best.json that is not a registry or lacks the fields above, or neither
            argument given.
        OSError: the storage cannot be read.
    """
    from madis import runs
    from madis.mdlm.exports import export_dir
    from madis.train.checkpoints import read_metadata

    if checkpoint:
        export = export_dir(checkpoint)
        try:
            meta = read_metadata(export)
        except FileNotFoundError:
            meta = {}
        step = meta.get("step")
        return ModelChoice(export_url=export, step=None if step is None else int(step),
                           source="given", metrics=dict(meta.get("metrics") or {}))
    if not run_url:
        raise ValueError("give a run directory (holding best.json) or a checkpoint to serve")
    best = read_best(run_url)
    if best is not None and best.get("best") is not None:  # null until one evaluation succeeds
        return _from_best(run_url, best)
    try:
        last = runs.newest_checkpoint(run_url)
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_url}: no {BEST_FILE} and no complete checkpoint to serve "
                                f"(train with ray_jobs/finetune.py, or pass a checkpoint)") from None
    return ModelChoice(export_url=last.export_url, step=last.step, source="latest",
                       metrics=dict(last.metrics))


def training_languages(export_url: str) -> list[str]:
    """Sign-language codes of the train split of every shard set the checkpoint trained on
    (``metadata.json`` -> ``task.shards`` -> each ``manifest.json``), sorted.

    Raises:
        ValueError: the metadata names no shards, or their manifests record no languages.
    """
    from madis.data.shards import read_manifest
    from madis.train.checkpoints import read_metadata

    try:
        shards = read_metadata(export_url)["task"]["shards"]
    except (FileNotFoundError, KeyError, TypeError):
        raise ValueError(f"{export_url}: its metadata names no training shards; set "
                         f"serve.languages") from None
    langs: set[str] = set()
    for url in [shards] if isinstance(shards, str) else shards:
        try:
            langs.update(read_manifest(url)["splits"]["train"].get("languages", {}))
        except (FileNotFoundError, KeyError, OSError, RuntimeError) as exn:  # StorageError too
            raise ValueError(f"cannot read the languages of {url} ({exn}); set "
                             f"serve.languages") from None
    if not langs:
        raise ValueError(f"the training shards of {export_url} record no languages; set "
                         f"serve.languages")
    return sorted(langs)


def serve_target(tree, run: str | None = None, checkpoint: str | None = None
                 ) -> tuple[str | None, str | None]:
    """``(run_url, checkpoint)`` to serve, from the arguments, else section ``serve`` of a
    loaded config tree, else the fine-tuning run (``{train.storage_path}/{train_finetune.run_name}``).
    Local paths come back absolute (replicas may run in another directory).

    Raises:
        ConfigError: a relative path while running as a ``ray job submit --working-dir`` job.
    """
    from madis import runs
    from madis.config import section
    from madis.serve.config import ServeConfig

    cfg = section(tree, "serve", ServeConfig)
    checkpoint = checkpoint or cfg.checkpoint or None
    if checkpoint:
        return None, runs.absolute(checkpoint, "checkpoint")
    run = run or cfg.run or runs.job_run(tree, "finetune")
    return runs.absolute(run, "run"), None
