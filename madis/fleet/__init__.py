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
from madis.utils.lazy import lazy_exports

__getattr__, _, _LAZY = lazy_exports(__name__, {
    "fleet": ("EvalFleet", "FleetError", "FleetSummary"),
    "evaluation": ("CheckpointDecoder", "CheckpointLoadError", "ValidationSet",
                   "load_validation_set", "checkpoint_metrics"),
    "dashboard": ("Dashboard", "fleet_tensorboard_url"),
})

__all__ = sorted({"BEST_FILE", "FleetConfig", "best_url", "read_best", *_LAZY})
