"""Bones and a front view for each motion format's joints (``MotionFormat.joints``).

Both formats give the hands as 21 points in MediaPipe's hand order: wrist, then thumb, index,
middle, ring and pinky, four points each, base to tip (``keypoints`` reads MediaPipe's own hand
landmarks; ``smplx133`` picks SMPL-X's three finger joints plus the fingertip vertex in that
order, see :data:`madis.motion.smplx133.LHAND_JOINTS`). So the two formats share one hand graph,
MediaPipe's ``HAND_CONNECTIONS``; only the body differs.

The view is orthographic from the front, as a camera facing the signer sees it: the signer's
left appears on the viewer's right. Bones are given by joint name and turned into indices here,
so a change in a format's joint order shows up as a failed lookup, not a wrong drawing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from madis.motion.base import PARTS, MotionFormat, get_format

HAND_POINTS = ("WRIST",) + tuple(
    f"{finger}_{k}" for finger in ("THUMB", "INDEX", "MIDDLE", "RING", "PINKY") for k in range(1, 5))
#: MediaPipe HAND_CONNECTIONS: each finger as a chain from the wrist, plus the knuckle line of
#: the palm (index, middle, ring, pinky bases) and the palm's outer edge (wrist to pinky base).
HAND_BONES = (
    ("WRIST", "THUMB_1"), ("THUMB_1", "THUMB_2"), ("THUMB_2", "THUMB_3"), ("THUMB_3", "THUMB_4"),
    ("WRIST", "INDEX_1"), ("INDEX_1", "INDEX_2"), ("INDEX_2", "INDEX_3"), ("INDEX_3", "INDEX_4"),
    ("INDEX_1", "MIDDLE_1"), ("MIDDLE_1", "MIDDLE_2"), ("MIDDLE_2", "MIDDLE_3"),
    ("MIDDLE_3", "MIDDLE_4"), ("MIDDLE_1", "RING_1"), ("RING_1", "RING_2"), ("RING_2", "RING_3"),
    ("RING_3", "RING_4"), ("RING_1", "PINKY_1"), ("WRIST", "PINKY_1"), ("PINKY_1", "PINKY_2"),
    ("PINKY_2", "PINKY_3"), ("PINKY_3", "PINKY_4"),
)
_ARMS = (
    ("LEFT_SHOULDER", "LEFT_ELBOW"), ("LEFT_ELBOW", "LEFT_WRIST"),
    ("RIGHT_SHOULDER", "RIGHT_ELBOW"), ("RIGHT_ELBOW", "RIGHT_WRIST"),
)
_EYES_EARS = (
    ("NOSE", "LEFT_EYE"), ("LEFT_EYE", "LEFT_EAR"), ("NOSE", "RIGHT_EYE"), ("RIGHT_EYE", "RIGHT_EAR"),
)


@dataclass(frozen=True)
class Skeleton:
    """How to draw one format's joints.

    Attributes:
        names: per part, the name of each joint ``MotionFormat.joints`` returns, in its order.
        bones: per part, ``(a, b)`` joint-name pairs joined by a line.
        screen: ``((axis, sign), (axis, sign))``: the joint coordinate and sign shown as screen
            x (rightwards) and screen y (upwards).
    """

    names: Mapping[str, tuple[str, ...]]
    bones: Mapping[str, tuple[tuple[str, str], ...]]
    screen: tuple[tuple[int, float], tuple[int, float]]

    def bone_index(self, part: str) -> np.ndarray:
        """``[n_bones, 2]`` int joint indices of ``part``'s bones (into ``joints[part]``)."""
        pos = {n: i for i, n in enumerate(self.names[part])}
        return np.array([(pos[a], pos[b]) for a, b in self.bones[part]], np.int64).reshape(-1, 2)

    def project(self, joints: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Front view: dict part -> ``[T, J, 3]`` -> dict part -> ``[T, J, 2]`` (format units)."""
        (ax, sx), (ay, sy) = self.screen
        return {p: np.stack([sx * joints[p][..., ax], sy * joints[p][..., ay]], -1).astype(np.float32)
                for p in PARTS}


def _keypoints_skeleton() -> Skeleton:
    from madis.motion.keypoints import BODY_LANDMARKS

    body = ("SHOULDER_MID",) + BODY_LANDMARKS  # joints() prepends the shoulder midpoint
    bones = (("SHOULDER_MID", "LEFT_SHOULDER"), ("SHOULDER_MID", "RIGHT_SHOULDER"), *_ARMS,
             ("SHOULDER_MID", "NOSE"), *_EYES_EARS, ("MOUTH_LEFT", "MOUTH_RIGHT"))
    # MediaPipe image axes: x right, y down.
    return Skeleton(names={"body": body, "lhand": HAND_POINTS, "rhand": HAND_POINTS},
                    bones={"body": bones, "lhand": HAND_BONES, "rhand": HAND_BONES},
                    screen=((0, 1.0), (1, -1.0)))


def _smplx_skeleton() -> Skeleton:
    from smplx.joint_names import JOINT_NAMES

    from madis.motion.smplx133 import BODY_JOINTS

    body = tuple(JOINT_NAMES[j].upper() for j in BODY_JOINTS)
    bones = (("PELVIS", "NECK"), ("NECK", "LEFT_SHOULDER"), ("NECK", "RIGHT_SHOULDER"), *_ARMS,
             ("NECK", "NOSE"), *_EYES_EARS)
    # SMPL-X with zero global orientation: y up, the body faces +z, +x is the signer's left,
    # so a camera on +z looking back sees x to the right and y up.
    return Skeleton(names={"body": body, "lhand": HAND_POINTS, "rhand": HAND_POINTS},
                    bones={"body": bones, "lhand": HAND_BONES, "rhand": HAND_BONES},
                    screen=((0, 1.0), (1, 1.0)))


_BUILDERS = {"keypoints": _keypoints_skeleton, "smplx133": _smplx_skeleton}
_CACHE: dict[str, Skeleton] = {}


def skeleton_for(fmt: MotionFormat | str) -> Skeleton:
    """The :class:`Skeleton` of a format (object or name).

    Raises:
        KeyError: a format with no skeleton defined here.
    """
    name = fmt if isinstance(fmt, str) else fmt.name
    if name not in _CACHE:
        if name not in _BUILDERS:
            raise KeyError(f"no skeleton for motion format {name!r}; known: {sorted(_BUILDERS)}")
        _CACHE[name] = _BUILDERS[name]()
    return _CACHE[name]


def as_motion(motion, fmt: MotionFormat | str) -> np.ndarray:
    """Check and convert a motion (numpy, torch or list) to float32 ``[T, D]`` for ``fmt``.

    Raises:
        ValueError: not 2-D, no frames, the wrong D for the format (the message names the
            format whose D it matches, if any), or no finite value at all.
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    if hasattr(motion, "detach"):  # torch tensors, possibly on GPU or requiring grad
        motion = motion.detach().float().cpu().numpy()
    x = np.asarray(motion, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a motion [T, D] for format {fmt.name!r} (D = {fmt.dim}), "
                         f"got shape {x.shape}")
    if x.shape[1] != fmt.dim:
        hint = [n for n in ("keypoints", "smplx133") if get_format(n).dim == x.shape[1]]
        raise ValueError(
            f"motion has D = {x.shape[1]} features but format {fmt.name!r} has D = {fmt.dim}"
            + (f"; it looks like format {hint[0]!r}" if hint else ""))
    if len(x) == 0:
        raise ValueError("motion has no frames (T = 0)")
    if not np.isfinite(x).any():
        raise ValueError("motion has no finite value")
    return x


def screen_joints(motion, fmt: MotionFormat | str, model_dir=None) -> dict[str, np.ndarray]:
    """Front-view 2-D joints of a motion: ``[T, D]`` -> dict part -> ``[T, J_p, 2]``.

    Args:
        motion: ``[T, D]`` in the format's units (checked by :func:`as_motion`).
        fmt: format object or name.
        model_dir: SMPL-X model directory (``smplx133`` only; default ``$MADIS_SMPLX_DIR``).
    Raises:
        ValueError: see :func:`as_motion`. FileNotFoundError: ``smplx133`` without a model file.
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    x = as_motion(motion, fmt)
    joints = fmt.joints(x) if model_dir is None else fmt.joints(x, model_dir=model_dir)
    return skeleton_for(fmt).project(joints)
