"""Metrics (paper 3.4, 4; SPEC "Metrics"): DTW-JPE, SiBLEU, SiCLIP and one ``evaluate`` API.

No Ray here: the eval fleet and the jobs call these functions from their own processes.
"""

from madis.metrics.dtw import dtw_jpe, dtw_jpe_batch, relative_joints
from madis.metrics.retrieval import RELEASED_BATCH_SIZE, recall_at_k, retrieval_metrics, retrieval_ranks
from madis.metrics.sibleu import part_sibleu, sibleu, token_streams
from madis.metrics.siclip import SiCLIP, SiCLIPConfig, SiCLIPEmbeddings, SiCLIPOutput

__all__ = [
    "dtw_jpe", "dtw_jpe_batch", "relative_joints",
    "RELEASED_BATCH_SIZE", "recall_at_k", "retrieval_metrics", "retrieval_ranks",
    "part_sibleu", "sibleu", "token_streams",
    "SiCLIP", "SiCLIPConfig", "SiCLIPEmbeddings", "SiCLIPOutput",
]
