"""Metrics (paper 3.4, 4; docs/design.md#metrics): DTW-JPE, SiBLEU, SiCLIP, one ``evaluate``.

No Ray here: the eval fleet and the jobs call these functions from their own processes.
Names are imported on first use, so that ``madis.metrics.cli`` (loaded by every ``madis`` call to
build its parser) does not pull in torch and numba.
"""

from madis.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dtw": ("dtw_jpe", "dtw_jpe_batch"),
    "evaluation": ("dtw_jpe_scores", "evaluate", "load_references", "part_dtw_jpe",
                   "siclip_retrieval", "siclip_similarity"),
    "predictions": ("Prediction", "Reference", "load_predictions", "save_predictions"),
    "retrieval": ("RELEASED_BATCH_SIZE", "chance_recall_at_k", "recall_at_k", "retrieval_metrics",
                  "retrieval_ranks"),
    "sign_bleu": ("part_sibleu", "sibleu", "token_streams"),
    "siclip": ("SiCLIP", "SiCLIPConfig", "SiCLIPEmbeddings", "SiCLIPOutput"),
})
