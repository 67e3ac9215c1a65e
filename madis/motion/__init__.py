"""Motion formats (no Ray here): SMPL-X 133-d and MediaPipe keypoints."""

from madis.motion.base import (
    FRAME_MULTIPLE,
    MAX_FRAMES,
    MIN_FRAMES,
    PARTS,
    MetricJoints,
    MotionFormat,
    get_format,
    register,
)

__all__ = [
    "FRAME_MULTIPLE", "MAX_FRAMES", "MIN_FRAMES", "PARTS", "MetricJoints", "MotionFormat",
    "get_format", "register",
]
