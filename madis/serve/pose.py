"""A generated motion as a ``.pose`` file (pose-format), readable by pose-format's tools.

The file holds each format's joints (``MotionFormat.joints``) in three components named as
MediaPipe Holistic names them -- ``POSE_LANDMARKS``, ``LEFT_HAND_LANDMARKS``,
``RIGHT_HAND_LANDMARKS`` -- with MediaPipe's hand point names and the skeleton's bones as limbs,
so tools that look points up by those names (pose-format's shoulder normalisation, its
visualiser, :func:`madis.motion.keypoints.read_pose_points`) work on it. Coordinates stay in the
format's units (``keypoints``: shoulder widths, image axes; ``smplx133``: metres from SMPL-X
forward kinematics), every point with confidence 1.
"""

from __future__ import annotations

import io

import numpy as np

from madis.motion.base import PARTS, MotionFormat, get_format

#: MediaPipe's 21 hand landmark names, in the order both formats give hand joints
MEDIAPIPE_HAND_POINTS = ("WRIST",) + tuple(
    f"{finger}_{joint}"
    for finger, joints in (("THUMB", ("CMC", "MCP", "IP", "TIP")),
                           ("INDEX_FINGER", ("MCP", "PIP", "DIP", "TIP")),
                           ("MIDDLE_FINGER", ("MCP", "PIP", "DIP", "TIP")),
                           ("RING_FINGER", ("MCP", "PIP", "DIP", "TIP")),
                           ("PINKY", ("MCP", "PIP", "DIP", "TIP")))
    for joint in joints)
COMPONENTS = {"body": "POSE_LANDMARKS", "lhand": "LEFT_HAND_LANDMARKS",
              "rhand": "RIGHT_HAND_LANDMARKS"}


def _rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def pose_bytes(motion, fmt: MotionFormat | str, fps: float | None = None, model_dir=None) -> bytes:
    """``.pose`` file bytes of one motion.

    Args:
        motion: ``[T, D]`` in ``fmt``'s units (numpy or torch), T >= 1.
        fmt: motion format (object or name).
        fps: frame rate written to the file (default: the format's).
        model_dir: SMPL-X model directory (``smplx133`` only; default ``$MADIS_SMPLX_DIR``).
    Raises:
        ValueError: a motion of the wrong shape or without frames.
        FileNotFoundError: ``smplx133`` without SMPL-X model files.
    """
    from pose_format import Pose
    from pose_format.numpy.pose_body import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions

    from madis.viz import PART_COLORS, as_motion, skeleton_for

    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    x = as_motion(motion, fmt)
    joints = fmt.joints(x) if model_dir is None else fmt.joints(x, model_dir=model_dir)
    skeleton = skeleton_for(fmt)
    components, points = [], []
    for part in PARTS:
        names = list(skeleton.names[part])
        if part != "body":
            names = list(MEDIAPIPE_HAND_POINTS)  # same order as the skeleton's hand points
        limbs = [(int(a), int(b)) for a, b in skeleton.bone_index(part)]
        components.append(PoseHeaderComponent(
            name=COMPONENTS[part], points=names, limbs=limbs,
            colors=[_rgb(PART_COLORS[part])] * len(limbs), point_format="XYZC"))
        points.append(np.asarray(joints[part], np.float32))
    xyz = np.concatenate(points, axis=1)[:, None]  # [T, 1 person, P, 3]
    header = PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(width=1, height=1, depth=1),
                        components=components)
    body = NumPyPoseBody(fps=float(fps or fmt.fps), data=np.ma.masked_array(xyz),
                         confidence=np.ones(xyz.shape[:3], np.float32))
    buf = io.BytesIO()
    Pose(header, body).write(buf)
    return buf.getvalue()
