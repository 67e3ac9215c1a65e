"""The keypoint motion format: MediaPipe Holistic landmarks from ``.pose`` files (pose-format).

Feature layout (D = 165, all ``x, y, z`` per point):

==========  =====================================================================
``0:39``    body: 13 upper-body ``POSE_LANDMARKS`` (:data:`BODY_LANDMARKS`)
``39:102``  left hand: 21 ``LEFT_HAND_LANDMARKS`` (the signer's left; wrist first)
``102:165`` right hand: 21 ``RIGHT_HAND_LANDMARKS``
==========  =====================================================================

The body points are the ones DTW-JPE uses for SMPL-X (docs/design.md#dtw-jpe: nose, eyes, ears,
shoulders, elbows, wrists) plus the mouth corners, which carry mouthing. Dropped: the 478-point face
mesh (it would outweigh everything else; the mouth corners and eyes keep the coarse face), the
pose's own hand points (pinky/index/thumb: the 21-point hands are finer), and hips and legs (often
out of frame in signing videos and not part of signing).

Processing of one clip, in order (:func:`clip_from_pose`):

1. **Normalisation, per clip**: subtract the clip's mean shoulder midpoint and divide by its
   mean shoulder width (2-D, image plane), both over frames where the body was detected. Per
   clip rather than per frame, so that the signer's own torso motion (leaning, turning) stays
   in the data and detection noise in the shoulders does not jitter the scale of every point.
   Units are therefore "shoulder widths"; axes stay MediaPipe's (x right, y down in the image,
   z depth).
2. **Missing detections** (masked or zero-confidence points): a part's frame is *valid* when
   every point of the part was detected in it. Gaps are filled by linear interpolation in time
   between the nearest frames that have the data, and by the nearest such frame before the
   first / after the last one: per point for the body (MediaPipe often masks one off-screen
   wrist while the rest of the pose is fine), per whole hand for the hands (hands are detected
   all or nothing). A body point never detected in the clip follows its parent
   (:data:`BODY_PARENT`, e.g. a wrist sits on its elbow). A hand never detected in the clip is
   placed at the pose's wrist of the same side with a mean hand shape (wrist-relative,
   ``mean_hands``: the corpus mean when the caller computed one, else every point at the
   wrist). A clip whose shoulders are never detected is rejected. The ``[T, 3]`` validity mask
   (body, lhand, rhand) records which frames of each part were complete real detections.
3. **Resampling** to :data:`FPS` (25: the lexicon mixes 24, 25 and ~30 fps and 25 is the most
   common rate, so most clips are untouched) by linear interpolation; a resampled frame is valid
   when the source frames it mixes are.

``joints`` returns the keypoints themselves: the body with the shoulder midpoint prepended as
the alignment joint 0, each hand wrist first (docs/design.md#dtw-jpe).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from madis.motion.base import PARTS, MetricJoints, MotionFormat, register

FPS = 25.0
BODY_LANDMARKS = (
    "NOSE", "LEFT_EYE", "RIGHT_EYE", "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT",
    "LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST",
)
_L_SHOULDER, _R_SHOULDER = BODY_LANDMARKS.index("LEFT_SHOULDER"), BODY_LANDMARKS.index("RIGHT_SHOULDER")
_L_WRIST, _R_WRIST = BODY_LANDMARKS.index("LEFT_WRIST"), BODY_LANDMARKS.index("RIGHT_WRIST")
NUM_BODY = len(BODY_LANDMARKS)
NUM_HAND = 21
#: point index ranges (into the 55 points) of each part
POINT_SLICES = {
    "body": slice(0, NUM_BODY),
    "lhand": slice(NUM_BODY, NUM_BODY + NUM_HAND),
    "rhand": slice(NUM_BODY + NUM_HAND, NUM_BODY + 2 * NUM_HAND),
}
NUM_POINTS = NUM_BODY + 2 * NUM_HAND
DIM = 3 * NUM_POINTS
_HAND_COMPONENT = {"lhand": "LEFT_HAND_LANDMARKS", "rhand": "RIGHT_HAND_LANDMARKS"}
_WRIST_OF = {"lhand": _L_WRIST, "rhand": _R_WRIST}
#: where a never-detected body point is placed: on this other body point (parents come first
#: in this order, so they are already filled); shoulders have none (the clip is rejected).
BODY_PARENT = {
    "LEFT_ELBOW": "LEFT_SHOULDER", "RIGHT_ELBOW": "RIGHT_SHOULDER",
    "LEFT_WRIST": "LEFT_ELBOW", "RIGHT_WRIST": "RIGHT_ELBOW",
    "NOSE": "LEFT_SHOULDER", "LEFT_EYE": "NOSE", "RIGHT_EYE": "NOSE", "LEFT_EAR": "LEFT_EYE",
    "RIGHT_EAR": "RIGHT_EYE", "MOUTH_LEFT": "NOSE", "MOUTH_RIGHT": "NOSE",
}
_BODY_FILL_ORDER = ("LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST",
                    "RIGHT_WRIST", "NOSE", "LEFT_EYE", "RIGHT_EYE", "LEFT_EAR", "RIGHT_EAR",
                    "MOUTH_LEFT", "MOUTH_RIGHT")


class KeypointsFormat(MotionFormat):
    """MediaPipe Holistic upper body + hands, ``[T, 165]`` in shoulder widths (see module doc)."""

    name = "keypoints"
    dim = DIM
    fps = FPS
    units = "shoulder widths"
    part_index = {p: np.arange(3 * s.start, 3 * s.stop) for p, s in POINT_SLICES.items()}
    metric_joints = {
        "body": MetricJoints(align_index=0, cost_joints=tuple(range(1, NUM_BODY + 1))),
        "lhand": MetricJoints(align_index=0, cost_joints=None),
        "rhand": MetricJoints(align_index=0, cost_joints=None),
    }

    def joints(self, motion: np.ndarray) -> dict[str, np.ndarray]:
        """``[T, 165]`` -> body ``[T, 14, 3]`` (shoulder midpoint first), hands ``[T, 21, 3]``."""
        pts = np.asarray(motion, np.float32).reshape(len(motion), NUM_POINTS, 3)
        body = pts[:, POINT_SLICES["body"]]
        mid = 0.5 * (body[:, _L_SHOULDER] + body[:, _R_SHOULDER])
        return {
            "body": np.concatenate([mid[:, None], body], axis=1),
            "lhand": pts[:, POINT_SLICES["lhand"]],
            "rhand": pts[:, POINT_SLICES["rhand"]],
        }


KEYPOINTS_FORMAT = register(KeypointsFormat())


@dataclass
class HolisticPoints:
    """The 55 points of one ``.pose`` clip before processing.

    Attributes:
        xyz: ``[T, 55, 3]`` float32 in the file's units (pixels for MediaPipe).
        present: ``[T, 55]`` bool, False where the point was masked / had zero confidence.
        fps: frames per second of the file.
    """

    xyz: np.ndarray
    present: np.ndarray
    fps: float


@dataclass
class KeypointClip:
    """A processed clip: ``motion [T, 165]`` float32 (shoulder widths), ``valid [T, 3]`` bool."""

    motion: np.ndarray
    valid: np.ndarray
    fps: float


def read_pose_points(source: str | os.PathLike | bytes) -> HolisticPoints:
    """Read the body/hand points of the first person in a MediaPipe Holistic ``.pose`` file.

    Raises:
        ValueError: the file lacks ``POSE_LANDMARKS`` or a hand component, or a body landmark.
    """
    from pose_format import Pose

    data = source if isinstance(source, bytes) else open(source, "rb").read()
    pose = Pose.read(data)
    offsets, names, start = {}, {}, 0
    for comp in pose.header.components:
        offsets[comp.name] = start
        names[comp.name] = list(comp.points)
        start += len(comp.points)
    for comp in ("POSE_LANDMARKS", *_HAND_COMPONENT.values()):
        if comp not in offsets:
            raise ValueError(f"{_where(source)}: no {comp} component (has {sorted(offsets)})")
    idx = []
    for lm in BODY_LANDMARKS:
        if lm not in names["POSE_LANDMARKS"]:
            raise ValueError(f"{_where(source)}: POSE_LANDMARKS has no {lm}")
        idx.append(offsets["POSE_LANDMARKS"] + names["POSE_LANDMARKS"].index(lm))
    for part in ("lhand", "rhand"):
        comp = _HAND_COMPONENT[part]
        if len(names[comp]) != NUM_HAND:
            raise ValueError(f"{_where(source)}: {comp} has {len(names[comp])} points, not 21")
        idx.extend(range(offsets[comp], offsets[comp] + NUM_HAND))
    idx = np.asarray(idx)
    raw = pose.body.data[:, 0]  # first person
    conf = np.asarray(pose.body.confidence[:, 0])[:, idx]
    xyz = np.asarray(np.ma.getdata(raw), np.float32)[:, idx, :3]
    mask = np.ma.getmaskarray(raw)[:, idx].any(-1)
    present = (conf > 0) & ~mask & np.isfinite(xyz).all(-1)
    if xyz.shape[-1] < 3:  # 2-D files: z = 0
        xyz = np.concatenate([xyz, np.zeros(xyz.shape[:-1] + (3 - xyz.shape[-1],), np.float32)], -1)
    return HolisticPoints(xyz=xyz, present=present, fps=float(pose.body.fps))


def _where(source) -> str:
    return "<bytes>" if isinstance(source, bytes) else str(source)


def normalize_points(points: HolisticPoints) -> np.ndarray:
    """Shoulder-centred, shoulder-width-scaled copy of ``points.xyz`` (per clip, see module doc).

    Raises:
        ValueError: the shoulders are never detected or coincide.
    """
    xyz, present = points.xyz, points.present
    ok = present[:, _L_SHOULDER] & present[:, _R_SHOULDER]
    if not ok.any():
        raise ValueError("the body (both shoulders) is never detected in this clip")
    ls, rs = xyz[ok, _L_SHOULDER], xyz[ok, _R_SHOULDER]
    centre = (0.5 * (ls + rs)).mean(0)
    width = float(np.linalg.norm((ls - rs)[:, :2], axis=-1).mean())
    if not width > 1e-6:
        raise ValueError(f"degenerate shoulder width {width}")
    return ((xyz - centre) / width).astype(np.float32)


def _interpolate_part(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid frames of ``x [T, J, 3]`` linearly in time; nearest valid frame at the ends."""
    t = np.arange(len(x))
    good = np.flatnonzero(valid)
    flat = x.reshape(len(x), -1)
    out = np.empty_like(flat)
    for c in range(flat.shape[1]):
        out[:, c] = np.interp(t, good, flat[good, c])  # np.interp clamps at both ends
    return out.reshape(x.shape)


def fill_missing(
    xyz: np.ndarray, present: np.ndarray, mean_hands: Mapping[str, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the missing-detection rule (module doc, step 2).

    Args:
        xyz: ``[T, 55, 3]`` normalised points.
        present: ``[T, 55]`` detection flags.
        mean_hands: optional ``{"lhand": [21, 3], "rhand": [21, 3]}`` wrist-relative hand
            shapes for never-detected hands (default: every point at the wrist).
    Returns:
        ``(filled [T, 55, 3], valid [T, 3])``.
    Raises:
        ValueError: a shoulder is never detected.
    """
    out = xyz.copy()
    valid = np.zeros((len(xyz), 3), bool)
    for k, part in enumerate(PARTS):
        sl = POINT_SLICES[part]
        valid[:, k] = present[:, sl].all(-1)
    for name in _BODY_FILL_ORDER:
        j = BODY_LANDMARKS.index(name)
        v = present[:, j]
        if v.all():
            continue
        if v.any():
            out[:, j:j + 1] = _interpolate_part(xyz[:, j:j + 1], v)
        elif name in BODY_PARENT:
            out[:, j] = out[:, BODY_LANDMARKS.index(BODY_PARENT[name])]
        else:
            raise ValueError(f"the body ({name}) is never detected in this clip")
    for k, part in enumerate(PARTS[1:], start=1):
        sl = POINT_SLICES[part]
        v = valid[:, k]
        if v.all():
            continue
        if v.any():
            out[:, sl] = _interpolate_part(xyz[:, sl], v)
        else:
            wrist = out[:, _WRIST_OF[part]]
            shape = np.zeros((NUM_HAND, 3), np.float32)
            if mean_hands is not None and part in mean_hands:
                shape = np.asarray(mean_hands[part], np.float32)
            out[:, sl] = wrist[:, None, :] + shape[None]
    return out, valid


def resample(x: np.ndarray, valid: np.ndarray, fps_in: float, fps_out: float = FPS):
    """Linear resampling of ``x [T, ...]`` from ``fps_in`` to ``fps_out``.

    Returns ``(x' [T', ...], valid' [T', 3])`` with ``T' = floor((T-1) * fps_out / fps_in) + 1``;
    a new frame is valid when the source frames it interpolates (one or two) are.
    """
    if abs(fps_in - fps_out) < 1e-3 or len(x) < 2:
        return x, valid
    n = int(np.floor((len(x) - 1) * fps_out / fps_in + 1e-6)) + 1
    src = np.arange(n) * (fps_in / fps_out)
    lo = np.minimum(np.floor(src).astype(np.int64), len(x) - 1)
    hi = np.minimum(lo + 1, len(x) - 1)
    w = (src - lo).astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    v = valid[lo] & (valid[hi] | (src == lo)[:, None])
    return (1 - w) * x[lo] + w * x[hi], v


def hand_shapes(xyz: np.ndarray, present: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """Sum of wrist-relative hand shapes over the fully detected frames of one normalised clip.

    Returns ``{part: (sum [21, 3], count)}``; add up over a corpus and divide for the mean.
    """
    out = {}
    for part in ("lhand", "rhand"):
        sl = POINT_SLICES[part]
        v = present[:, sl].all(-1)
        rel = xyz[v, sl] - xyz[v, sl][:, :1]
        out[part] = (rel.sum(0).astype(np.float64), int(v.sum()))
    return out


def process_points(
    points: HolisticPoints,
    mean_hands: Mapping[str, np.ndarray] | None = None,
    fps: float = FPS,
) -> KeypointClip:
    """Normalise, fill and resample raw points (module doc steps 1-3); no length rules yet.

    Raises:
        ValueError: the shoulders are never detected.
    """
    xyz = normalize_points(points)
    filled, valid = fill_missing(xyz, points.present, mean_hands)
    filled, valid = resample(filled, valid, points.fps, fps)
    return KeypointClip(motion=filled.reshape(len(filled), DIM).astype(np.float32),
                        valid=valid, fps=fps)


def clip_from_pose(
    source: str | os.PathLike | bytes,
    mean_hands: Mapping[str, np.ndarray] | None = None,
    fps: float = FPS,
) -> KeypointClip:
    """Read and process one ``.pose`` clip (:func:`read_pose_points` + :func:`process_points`).

    Returns:
        :class:`KeypointClip` with ``motion [T, 165]`` float32 at ``fps``.
    Raises:
        ValueError: unreadable layout or the body never detected.
    """
    return process_points(read_pose_points(source), mean_hands, fps)
