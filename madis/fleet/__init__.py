"""The eval fleet: Ray actors that validate every new checkpoint of a training run, its
dashboards, and the best-checkpoint registry (``best.json``).

Ray-free and imported eagerly (the Serve app and the CLI read the registry without Ray)::

    from madis.fleet import read_best, FleetConfig
    best = read_best("s3://runs/finetune")       # None until the fleet has written one
    export = best["best"]["export_url"] if best and best["best"] else None

Loaded on first use: :class:`EvalFleet` (Ray), :class:`CheckpointDecoder` and the other pieces
of :mod:`madis.fleet.evaluation`.
"""

from madis.fleet.config import FleetConfig
from madis.fleet.registry import BEST_FILE, best_url, read_best

_LAZY = {
    "EvalFleet": "fleet", "FleetError": "fleet", "FleetSummary": "fleet",
    "CheckpointDecoder": "evaluation", "CheckpointLoadError": "evaluation",
    "ValidationSet": "evaluation", "load_validation_set": "evaluation",
    "checkpoint_metrics": "evaluation", "Dashboard": "dashboard",
    "fleet_tensorboard_url": "dashboard",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"madis.fleet.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'madis.fleet' has no attribute {name!r}")


__all__ = sorted({"BEST_FILE", "FleetConfig", "best_url", "read_best"} | set(_LAZY))
