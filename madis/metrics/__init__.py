"""Metrics (paper 3.4, 4; SPEC "Metrics"): DTW-JPE, SiBLEU, SiCLIP and one ``evaluate`` API.

No Ray here: the eval fleet and the jobs call these functions from their own processes.
Names are imported on first use, so that ``madis.metrics.cli`` (loaded by every ``madis`` call to
build its parser) does not pull in torch and numba.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "dtw": ("dtw_jpe", "dtw_jpe_batch"),
    "evaluation": ("dtw_jpe_scores", "evaluate", "load_references", "part_dtw_jpe",
                   "siclip_retrieval", "siclip_similarity"),
    "predictions": ("Prediction", "Reference", "load_predictions", "save_predictions"),
    "retrieval": ("RELEASED_BATCH_SIZE", "chance_recall_at_k", "recall_at_k", "retrieval_metrics",
                  "retrieval_ranks"),
    "sign_bleu": ("part_sibleu", "sibleu", "token_streams"),
    "siclip": ("SiCLIP", "SiCLIPConfig", "SiCLIPEmbeddings", "SiCLIPOutput"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'madis.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"madis.metrics.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
