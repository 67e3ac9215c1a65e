"""Metrics (paper 3.4, 4; SPEC "Metrics"): DTW-JPE, SiBLEU, SiCLIP and one ``evaluate`` API.

No Ray here: the eval fleet and the jobs call these functions from their own processes.
"""

from madis.metrics.dtw import dtw_jpe, dtw_jpe_batch, relative_joints
from madis.metrics.sibleu import part_sibleu, sibleu, token_streams

__all__ = [
    "dtw_jpe", "dtw_jpe_batch", "relative_joints",
    "part_sibleu", "sibleu", "token_streams",
]
