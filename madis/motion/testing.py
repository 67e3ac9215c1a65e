"""Test fixtures written by code: a made-up SMPL-X-shaped model and MediaPipe-shaped ``.pose`` files.

The real SMPL-X model is licensed and never shipped.

It has the array names and shapes ``smplx`` loads (V = 10475 vertices, 55 joints, SMPL-X's
kinematic tree) but invented values chosen to give known answers: joint ``j`` is regressed from
vertex ``j`` alone (so joint positions are ``FAKE_JOINTS``), there are no shape, expression or
pose-corrective offsets, and each vertex that ``smplx`` reads as a face point or fingertip is
skinned rigidly to one joint (``FAKE_VERTEX_PARENT``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

NUM_VERTICES = 10475
#: SMPL-X's parent of each of the 55 skeleton joints (-1 for the pelvis).
SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)


def _fake_layout():
    import smplx.vertex_ids

    rng = np.random.default_rng(1234)
    joints = rng.normal(0.0, 0.3, (55, 3)).astype(np.float32)
    vid = smplx.vertex_ids.vertex_ids["smplx"]
    owner = {"nose": 15, "reye": 15, "leye": 15, "rear": 15, "lear": 15,
             "LBigToe": 7, "LSmallToe": 7, "LHeel": 7, "RBigToe": 8, "RSmallToe": 8, "RHeel": 8,
             "lthumb": 39, "lindex": 27, "lmiddle": 30, "lring": 36, "lpinky": 33,
             "rthumb": 54, "rindex": 42, "rmiddle": 45, "rring": 51, "rpinky": 48}
    parent = {vid[k]: j for k, j in owner.items()}
    return joints, parent


FAKE_JOINTS, FAKE_VERTEX_PARENT = _fake_layout()


def write_fake_smplx_model(directory: str | Path) -> Path:
    """Write ``directory/SMPLX_NEUTRAL.npz`` (about 200 KB) and return its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(99)
    V = NUM_VERTICES
    v = rng.normal(0.0, 0.3, (V, 3)).astype(np.float32)
    v[:55] = FAKE_JOINTS
    weights = np.zeros((V, 55), np.float32)
    weights[:, 0] = 1.0
    for vert, joint in FAKE_VERTEX_PARENT.items():
        weights[vert] = 0.0
        weights[vert, joint] = 1.0
    jreg = np.zeros((55, V), np.float32)
    jreg[np.arange(55), np.arange(55)] = 1.0
    kintree = np.array([[p % 2**32 for p in SMPLX_PARENTS], list(range(55))], np.int64)
    faces = rng.integers(0, V, (64, 3)).astype(np.int64)
    path = d / "SMPLX_NEUTRAL.npz"
    np.savez_compressed(
        path,
        v_template=v, f=faces,
        shapedirs=np.zeros((V, 3, 20), np.float32),
        posedirs=np.zeros((V, 3, 486), np.float32),
        J_regressor=jreg, weights=weights, kintree_table=kintree,
        hands_componentsl=np.eye(45, dtype=np.float32), hands_componentsr=np.eye(45, dtype=np.float32),
        hands_meanl=np.zeros(45, np.float32), hands_meanr=np.zeros(45, np.float32),
        lmk_faces_idx=rng.integers(0, len(faces), 51).astype(np.int64),
        lmk_bary_coords=np.full((51, 3), 1 / 3, np.float32),
    )
    return path


def holistic_pose_bytes(xyz: np.ndarray, conf: np.ndarray, fps: float) -> bytes:
    """A MediaPipe-Holistic-shaped ``.pose`` file (pose-format) holding ``xyz [T, 586, 3]``.

    Components and point names follow ``mediapipe.solutions.holistic``'s layout as written by
    pose-format (33 pose, 478 face, 21 + 21 hands, 33 world); used by tests to write fixtures.
    """
    from pose_format import Pose
    from pose_format.numpy.pose_body import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions

    pose_names = [
        "NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE",
        "RIGHT_EYE_OUTER", "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER",
        "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY",
        "RIGHT_PINKY", "LEFT_INDEX", "RIGHT_INDEX", "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP",
        "RIGHT_HIP", "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE", "RIGHT_ANKLE", "LEFT_HEEL",
        "RIGHT_HEEL", "LEFT_FOOT_INDEX", "RIGHT_FOOT_INDEX",
    ]
    hand_names = ["WRIST"] + [f"{f}_{j}" for f in ("THUMB", "INDEX_FINGER", "MIDDLE_FINGER",
                                                    "RING_FINGER", "PINKY") for j in ("MCP", "PIP", "DIP", "TIP")]
    hand_names[1:5] = ["THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP"]

    def comp(name, points):
        return PoseHeaderComponent(name=name, points=points, limbs=[], colors=[], point_format="XYZC")

    comps = [comp("POSE_LANDMARKS", pose_names), comp("FACE_LANDMARKS", [str(i) for i in range(478)]),
             comp("LEFT_HAND_LANDMARKS", hand_names), comp("RIGHT_HAND_LANDMARKS", hand_names),
             comp("POSE_WORLD_LANDMARKS", pose_names)]
    header = PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(width=500, height=500, depth=0),
                        components=comps)
    data = np.ma.masked_array(xyz[:, None].astype(np.float32),
                              mask=np.repeat((conf <= 0)[:, None, :, None], 3, -1))
    body = NumPyPoseBody(fps=fps, data=data, confidence=conf[:, None].astype(np.float32))
    buf = io.BytesIO()
    Pose(header, body).write(buf)
    return buf.getvalue()
