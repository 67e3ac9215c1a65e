"""Motion formats (no Ray here): SMPL-X 133-d and MediaPipe keypoints."""

from madis.motion.base import (
    FRAMES_PER_POSITION,
    MAX_FRAMES,
    MIN_FRAMES,
    PARTS,
    MetricJoints,
    MotionFormat,
    get_format,
    register,
)
from madis.motion import keypoints, smplx133  # noqa: E402,F401  (register the built-in formats)
from madis.motion.length import apply_length_rules, compute_stats, length_indices, unzscore, zscore

__all__ = [
    "FRAMES_PER_POSITION", "MAX_FRAMES", "MIN_FRAMES", "PARTS", "MetricJoints", "MotionFormat",
    "get_format", "register", "apply_length_rules", "compute_stats", "length_indices",
    "unzscore", "zscore",
]
