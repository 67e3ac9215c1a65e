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

Reading (:func:`read_pose_points`): the layouts the sign-language-processing ecosystem writes
with pose-format, one person of the file (the first unless told), optionally a time cut:

* **MediaPipe Holistic**, full (``POSE_LANDMARKS`` 33 points, ``FACE_LANDMARKS``, hands, with or
  without ``POSE_WORLD_LANDMARKS``, which is not read) or reduced (pose-format's
  ``reduce_holistic``: ``POSE_LANDMARKS`` keeps 8 points, no nose, eyes, ears or mouth, and
  ``FACE_LANDMARKS`` keeps the 128 contour points of the face mesh).
* **OpenPose** BODY_25 (``pose_keypoints_2d`` with ``hand_left_keypoints_2d`` /
  ``hand_right_keypoints_2d`` and optionally ``face_keypoints_2d``): every body point has an
  OpenPose namesake except the mouth corners (:data:`OPENPOSE_BODY`); OpenPose hands have
  MediaPipe's 21-point order (wrist, then 4 points per finger from the thumb). The files are 2-D:
  ``z`` is 0 and :attr:`HolisticPoints.depth` False. The ``[T, 3]`` validity mask has no per-axis
  flag, so the parts stay valid; MediaPipe's own ``z`` as pose-format writes it is not scaled
  to pixels (x and y are), and is about 0.6 % of ``|x|`` after normalisation in the sample
  lexicon, so 2-D and MediaPipe clips mix without a depth mismatch worth modelling.

A body point the body component does not have is **estimated** from the file's face points
where it has them (:data:`FACE_ESTIMATES`: MediaPipe face-mesh contour points for reduced
holistic, OpenPose's face for its mouth corners) and is otherwise filled by the parent rule
below; either way it is never a detection, so the body is *invalid* in every frame of such a
file (the tokenizer's body loss skips it) unless the caller counts estimates as valid
(``estimates_valid``). Measured on the sample lexicon (full holistic files, where both exist),
the face-mesh estimates lie 0.03-0.06 shoulder widths from MediaPipe's pose points (eye
distance: 0.22). A point is *absent* in a frame when it is masked, has confidence 0, is not
finite or sits exactly at (0, 0, 0) (what MediaPipe and OpenPose write for an undetected point:
an empty frame and an all-zero hand are therefore invalid). Files without a body component
(hand-only) or without shoulders are refused with a one-line reason.

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
   all or nothing). A body point never detected in the clip takes its estimate where the file
   gives one (see Reading), else follows its parent (:data:`BODY_PARENT`, e.g. a wrist sits on
   its elbow). A hand never detected in the clip is
   placed at the pose's wrist of the same side with a mean hand shape (wrist-relative,
   ``mean_hands``: the corpus mean when the caller computed one, else every point at the
   wrist). A clip whose shoulders are never detected is rejected. A hand whose points lie
   farther than :data:`MAX_HAND_SPAN` from its own wrist in a frame is not a detection
   there (a tracking failure) and is treated as missing. The ``[T, 3]`` validity mask
   (body, lhand, rhand) records which frames of each part were complete real detections.
3. **Resampling** to :data:`FPS` (25: the lexicon mixes 24, 25 and ~30 fps and 25 is the most
   common rate, so most clips are untouched) by linear interpolation; a resampled frame is valid
   when the source frames it mixes are.

``joints`` returns the keypoints themselves: the body with the shoulder midpoint prepended as
the alignment joint 0, each hand wrist first (docs/design.md#dtw-jpe).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO, Mapping

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

    def _hand_offsets(self, x, sign: float):
        out = x.copy() if isinstance(x, np.ndarray) else x.clone()
        for part in ("lhand", "rhand"):
            a = 3 * POINT_SLICES[part].start  # the hand's wrist, its point 0
            wrist = x[..., a:a + 3]
            for k in range(1, NUM_HAND):
                out[..., a + 3 * k: a + 3 * k + 3] = x[..., a + 3 * k: a + 3 * k + 3] + sign * wrist
        return out

    def hands_to_wrist(self, motion):
        """Hand points 1..20 minus their hand's wrist (point 0, kept as it is): the hand's shape
        apart from its place. ``[..., 165]``, numpy or torch."""
        return self._hand_offsets(motion, -1.0)

    def hands_from_wrist(self, features):
        """Inverse of :meth:`hands_to_wrist`."""
        return self._hand_offsets(features, 1.0)

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


#: OpenPose BODY_25 name of each body landmark (the mouth corners come from its face, if any)
OPENPOSE_BODY = {
    "NOSE": "Nose", "LEFT_EYE": "LEye", "RIGHT_EYE": "REye", "LEFT_EAR": "LEar", "RIGHT_EAR": "REar",
    "LEFT_SHOULDER": "LShoulder", "RIGHT_SHOULDER": "RShoulder", "LEFT_ELBOW": "LElbow",
    "RIGHT_ELBOW": "RElbow", "LEFT_WRIST": "LWrist", "RIGHT_WRIST": "RWrist",
}
_MESH_EYES = {"LEFT_EYE": ("263", "362"), "RIGHT_EYE": ("33", "133")}  # outer, inner corner
#: How a body landmark the body component lacks is estimated: ``{layout: {landmark: ((face
#: point, weight), ...)}}``. MediaPipe face mesh (contour points, all kept by
#: ``reduce_holistic``): an eye is the mean of its corners, the nose tip halfway between the
#: eyes' midpoint and the top of the upper lip (point 0), an ear the face outline at ear height
#: (234 / 454), the mouth corners 61 / 291. OpenPose face (68-point iBUG order): mouth corners 48
#: (the signer's right) and 54. Left/right are the signer's, as in MediaPipe's pose names.
FACE_ESTIMATES = {
    "holistic": {
        "LEFT_EYE": tuple((p, 0.5) for p in _MESH_EYES["LEFT_EYE"]),
        "RIGHT_EYE": tuple((p, 0.5) for p in _MESH_EYES["RIGHT_EYE"]),
        "NOSE": (("0", 0.5),) + tuple((p, 0.125) for e in _MESH_EYES.values() for p in e),
        "LEFT_EAR": (("454", 1.0),), "RIGHT_EAR": (("234", 1.0),),
        "MOUTH_LEFT": (("291", 1.0),), "MOUTH_RIGHT": (("61", 1.0),),
    },
    "openpose": {"MOUTH_LEFT": (("FLO_54", 1.0),), "MOUTH_RIGHT": (("FLO_48", 1.0),)},
}


@dataclass(frozen=True)
class PoseLayout:
    """Where a pose-format layout keeps the 55 points (see module doc, Reading)."""

    name: str
    body: str  # body component
    body_names: Mapping[str, str]  # landmark -> point name in ``body``
    hands: Mapping[str, str]  # part -> hand component (21 points in MediaPipe's order)
    face: str  # face component for :data:`FACE_ESTIMATES`


LAYOUTS = {
    "holistic": PoseLayout("holistic", "POSE_LANDMARKS", {n: n for n in BODY_LANDMARKS},
                           dict(_HAND_COMPONENT), "FACE_LANDMARKS"),
    "openpose": PoseLayout("openpose", "pose_keypoints_2d", OPENPOSE_BODY,
                           {"lhand": "hand_left_keypoints_2d", "rhand": "hand_right_keypoints_2d"},
                           "face_keypoints_2d"),
}


@dataclass
class HolisticPoints:
    """The 55 points of one ``.pose`` clip before processing.

    Attributes:
        xyz: ``[T, 55, 3]`` float32 in the file's units (pixels for MediaPipe and OpenPose).
        present: ``[T, 55]`` bool, True where the point was detected (module doc, Reading).
        fps: frames per second of the clip (the file header's).
        estimated: ``[T, 55]`` bool, True where ``xyz`` holds an estimate of a point the file
            lacks (never where ``present``); ``None``: no estimates.
        layout: ``holistic`` or ``openpose``.
        depth: False for 2-D files (``z`` is 0).
        people: people in the file.
        notes: what the reader had to do about the file (one line each), for build reports.
    """

    xyz: np.ndarray
    present: np.ndarray
    fps: float
    estimated: np.ndarray | None = None
    layout: str = "holistic"
    depth: bool = True
    people: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass
class KeypointClip:
    """A processed clip: ``motion [T, 165]`` float32 (shoulder widths), ``valid [T, 3]`` bool."""

    motion: np.ndarray
    valid: np.ndarray
    fps: float


def detect_layout(components: Mapping[str, list]) -> PoseLayout:
    """The layout of a file from its ``{component: point names}``.

    Raises:
        ValueError: no body component the reader knows (hand-only files, AlphaPose, ...), or a
            body component without both shoulders.
    """
    for layout in LAYOUTS.values():
        if layout.body in components:
            break
    else:
        try:
            from pose_format.utils.generic import detect_known_pose_format

            from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions

            known = detect_known_pose_format(PoseHeader(0.2, PoseHeaderDimensions(1, 1), [
                PoseHeaderComponent(c, list(p), [], [], "XYC") for c, p in components.items()]))
        except ValueError:
            known = "unknown"
        raise ValueError(
            f"no body component (layout {known}, components {sorted(components)}): the keypoints "
            "format needs POSE_LANDMARKS (MediaPipe Holistic) or pose_keypoints_2d (OpenPose) "
            "to place and scale the signer by the shoulders")
    names = components[layout.body]
    for side in ("LEFT_SHOULDER", "RIGHT_SHOULDER"):
        if layout.body_names[side] not in names:
            raise ValueError(f"{layout.body} has no {layout.body_names[side]}: the keypoints "
                             "format places and scales the signer by the shoulders")
    return layout


def read_pose_points(source: str | os.PathLike | bytes | BinaryIO, person: int = 0, *,
                     start: float | None = None, end: float | None = None,
                     fps: float | None = None) -> HolisticPoints:
    """Read the 55 points of one person of a ``.pose`` file (module doc, Reading).

    Args:
        source: a local path, the file's bytes or a seekable binary stream
            (``madis.data.posecorpus`` opens ``s3://`` ones). Only the header and the frames
            kept are read from a path or stream, so cutting a sentence out of a long recording
            reads that sentence, not the recording.
        person: which person of the file (0: the first).
        start, end: seconds; keep frames ``floor(start * fps) .. ceil(end * fps) - 1`` only
            (pose-format reads just those frames), ``fps`` being the header's.
        fps: the frame rate to use when the header has none (0 or not finite); a header rate
            that differs from it wins and the difference is noted.
    Returns:
        :class:`HolisticPoints` of the kept frames.
    Raises:
        ValueError: an unknown layout, no shoulders, a hand component without 21 points, no such
            person, no frame rate, or a cut outside the recording (the message says which).
        FileNotFoundError: a missing file.
    """
    import io
    import math

    from pose_format import Pose
    from pose_format.pose_body import EmptyPoseBody

    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return read_pose_points(f, person, start=start, end=end, fps=fps)
    where = _where(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    stream.seek(0)
    head = Pose.read(stream, pose_body=EmptyPoseBody)  # header, fps and frame count only
    comps = {c.name: list(c.points) for c in head.header.components}
    layout = detect_layout(comps)
    total, people = int(head.body.data.shape[0]), int(head.body.data.shape[1])
    notes: list[str] = []
    clip_fps = float(head.body.fps)
    if not (math.isfinite(clip_fps) and clip_fps > 0):
        if fps is None:
            raise ValueError(f"{where}: the header has no frame rate ({clip_fps}); give one (fps)")
        notes.append(f"header frame rate {clip_fps}: used the given {fps:g} fps")
        clip_fps = float(fps)
    elif fps is not None and abs(float(fps) - clip_fps) > 1e-3:
        notes.append(f"given {fps:g} fps, header {clip_fps:g} fps: resampled by the header's")
    if not 0 <= person < people:
        raise ValueError(f"{where}: person {person} asked, the file has {people} "
                         f"{'person' if people == 1 else 'people'} (0-based)")
    cut = {}
    if start is not None or end is not None:
        s = 0.0 if start is None else float(start)
        e = total / clip_fps if end is None else float(end)
        first, stop = int(math.floor(s * clip_fps + 1e-6)), int(math.ceil(e * clip_fps - 1e-6))
        if first >= total:
            raise ValueError(f"{where}: the cut starts at {s:g} s, the recording is "
                             f"{total / clip_fps:.2f} s long")
        if not (0 <= s < e) or stop <= first:
            raise ValueError(f"{where}: bad cut start={start} end={end} (need 0 <= start < end)")
        if stop > total:
            notes.append(f"the cut ends at {e:g} s, past the recording's {total / clip_fps:.2f} s")
        cut = {"start_frame": first, "end_frame": min(stop, total)}
    stream.seek(0)
    # a frame range makes pose-format seek past the frames it skips instead of reading them
    pose = Pose.read(stream, **(cut or {"start_frame": 0, "end_frame": total}))
    offsets, start_idx = {}, 0
    for c in pose.header.components:
        offsets[c.name] = start_idx
        start_idx += len(c.points)

    def index(comp: str, name: str) -> int | None:
        if comp not in comps or name not in comps[comp]:
            return None
        return offsets[comp] + comps[comp].index(name)

    idx = [index(layout.body, layout.body_names.get(lm, "")) for lm in BODY_LANDMARKS]
    for part in ("lhand", "rhand"):
        comp = layout.hands[part]
        if comp not in comps:
            notes.append(f"no {comp} component")
            idx.extend([None] * NUM_HAND)
        elif len(comps[comp]) != NUM_HAND:
            raise ValueError(f"{where}: {comp} has {len(comps[comp])} points, not 21")
        else:
            idx.extend(range(offsets[comp], offsets[comp] + NUM_HAND))
    T = len(pose.body.data)
    raw = pose.body.data[:, person]
    values = np.asarray(np.ma.getdata(raw), np.float32)
    masked = np.ma.getmaskarray(raw).any(-1)
    conf = np.asarray(pose.body.confidence[:, person], np.float32)
    dims = values.shape[-1]

    def take(ids: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """``[T, len(ids), 3]`` points and their presence; ``None`` ids are absent."""
        have = np.array([i is not None for i in ids], bool)
        safe = np.array([i if i is not None else 0 for i in ids], np.int64)
        xyz = np.zeros((T, len(ids), 3), np.float32)
        xyz[..., :min(dims, 3)] = values[:, safe, :3]
        ok = (conf[:, safe] > 0) & ~masked[:, safe] & np.isfinite(xyz).all(-1) & (xyz != 0).any(-1)
        ok &= have[None]
        xyz[~have[None].repeat(T, 0)] = 0
        return np.where(np.isfinite(xyz), xyz, 0).astype(np.float32), ok

    xyz, present = take(idx)
    lacking = [lm for lm, i in zip(BODY_LANDMARKS, idx) if i is None]
    estimated = None
    if lacking:
        recipes = FACE_ESTIMATES.get(layout.name, {})
        got = []
        estimated = np.zeros((T, NUM_POINTS), bool)
        for lm in lacking:
            recipe = recipes.get(lm)
            ids = [index(layout.face, p) for p, _ in recipe] if recipe else [None]
            if None in ids:
                continue
            pts, ok = take(ids)
            w = np.array([wt for _, wt in recipe], np.float32)
            j = BODY_LANDMARKS.index(lm)
            xyz[:, j] = np.einsum("tpc,p->tc", pts, w)
            estimated[:, j] = ok.all(-1)
            got.append(lm)
        missed = [lm for lm in lacking if lm not in got]
        how = [f"{', '.join(got) if missed else 'estimated'} from {layout.face}"] if got else []
        how += [f"{', '.join(missed) if got else 'placed'} on their parent points"] if missed else []
        notes.append(f"{layout.body} lacks {', '.join(lacking)}: {'; '.join(how)} "
                     "(not detections: the body is invalid)")
    if dims < 3:
        notes.append("2-D file: z = 0")
    return HolisticPoints(xyz=xyz, present=present, fps=clip_fps, estimated=estimated,
                          layout=layout.name, depth=dims >= 3, people=people, notes=notes)


def _where(source) -> str:
    if isinstance(source, bytes):
        return "<bytes>"
    return str(getattr(source, "name", None) or getattr(source, "path", None) or source)


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
    xyz: np.ndarray, present: np.ndarray, mean_hands: Mapping[str, np.ndarray] | None = None,
    estimated: np.ndarray | None = None, estimates_valid: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the missing-detection rule (module doc, step 2).

    Args:
        xyz: ``[T, 55, 3]`` normalised points.
        present: ``[T, 55]`` detection flags.
        mean_hands: optional ``{"lhand": [21, 3], "rhand": [21, 3]}`` wrist-relative hand
            shapes for never-detected hands (default: every point at the wrist).
        estimated: optional ``[T, 55]``, True where ``xyz`` holds an estimate of a point the
            file lacks (:attr:`HolisticPoints.estimated`): a never-detected point is filled from
            its estimates (interpolated between them) before the parent rule applies.
        estimates_valid: count estimated points as detected in ``valid`` (default: invalid).
    Returns:
        ``(filled [T, 55, 3], valid [T, 3])``.
    Raises:
        ValueError: a shoulder is never detected.
    """
    out = xyz.copy()
    est = np.zeros_like(present) if estimated is None else estimated & ~present
    counted = present | est if estimates_valid else present
    valid = np.zeros((len(xyz), 3), bool)
    for k, part in enumerate(PARTS):
        sl = POINT_SLICES[part]
        valid[:, k] = counted[:, sl].all(-1)
    for name in _BODY_FILL_ORDER:
        j = BODY_LANDMARKS.index(name)
        v = present[:, j]
        if v.all():
            continue
        if not v.any() and est[:, j].any():
            v = est[:, j]
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


#: A detected hand whose points lie farther than this from its own wrist (shoulder widths, in the
#: image plane) is not a hand: a real hand spans about 0.5 (99 % of the lexicon's frames stay
#: under 0.8), and the two lexicon clips that break it put the right hand's points ~27
#: shoulder widths away, which alone inflated the right hand's z-score spread tenfold.
MAX_HAND_SPAN = 1.5


def implausible_hands(xyz: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Frames whose detected hand is not a hand (see :data:`MAX_HAND_SPAN`): bool ``[T, 2]``
    (left, right) for normalised points ``xyz [T, 55, 3]``."""
    out = np.zeros((len(xyz), 2), bool)
    for k, part in enumerate(("lhand", "rhand")):
        sl = POINT_SLICES[part]
        pts = xyz[:, sl, :2]
        span = np.linalg.norm(pts[:, 1:] - pts[:, :1], axis=-1).max(-1)
        out[:, k] = present[:, sl].any(-1) & ~(span <= MAX_HAND_SPAN)
    return out


def process_points(
    points: HolisticPoints,
    mean_hands: Mapping[str, np.ndarray] | None = None,
    fps: float = FPS,
    estimates_valid: bool = False,
) -> KeypointClip:
    """Normalise, fill and resample raw points (module doc steps 1-3); no length rules yet.

    ``estimates_valid``: see :func:`fill_missing`.

    Raises:
        ValueError: the shoulders are never detected.
    """
    xyz = normalize_points(points)
    present = points.present.copy()
    bad = implausible_hands(xyz, present)
    for k, part in enumerate(("lhand", "rhand")):
        present[bad[:, k], POINT_SLICES[part]] = False  # filled like a missed detection
    filled, valid = fill_missing(xyz, present, mean_hands, points.estimated, estimates_valid)
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
