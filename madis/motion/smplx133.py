"""The paper's motion format: 133-d SMPL-X pose features per frame (SOKE layout,
docs/data-formats.md#smplx133).

SOKE stores 179-d SMPL-X frames (axis-angle, radians): root 3, body 63 (joints 1-21), left hand
45, right hand 45, jaw 3, shape 10, expression 10. The model drops the root, the lower body and
spine (joints 1-11) and the shape, keeping 133 features:

=========  ==========================================
``0:30``   body joints 12-21 (neck ... right wrist)
``30:75``  left-hand joints (15 x 3)
``75:120`` right-hand joints (15 x 3)
``120:123`` jaw
``123:133`` expression coefficients
=========  ==========================================

The decoupled tokenizer's body part is ``[0:30] ++ [120:133]`` (43-d), each hand 45-d.

Joints for metrics come from SMPL-X forward kinematics with the real ``smplx`` package (root and
lower body zero, neutral shape, as the released SOKE/MaDiS evaluation does). SMPL-X model files
are licensed and not shipped: put ``SMPLX_NEUTRAL.npz`` in ``$MADIS_SMPLX_DIR`` (default
``~/.cache/madis/smplx``), from https://smpl-x.is.tue.mpg.de.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path

import numpy as np

from madis.motion.base import MetricJoints, MotionFormat, register

SMPLX_URL = "https://smpl-x.is.tue.mpg.de"
DEFAULT_MODEL_DIR = Path.home() / ".cache" / "madis" / "smplx"
MODEL_DIR_ENV = "MADIS_SMPLX_DIR"

# 179-d SOKE frame layout.
_ROOT, _BODY, _LHAND, _RHAND = slice(0, 3), slice(3, 66), slice(66, 111), slice(111, 156)
_JAW, _SHAPE, _EXPR = slice(156, 159), slice(159, 169), slice(169, 179)
#: body joints 12..21 inside the 63-d body pose (joint j occupies (j-1)*3 .. (j-1)*3+3)
_UPPER_IN_179 = slice(3 + 11 * 3, 66)

#: SMPL-X joint indices (smplx output order: 55 skeleton joints, then nose, right eye, left eye,
#: right ear, left ear, 6 foot points, 10 fingertips, face landmarks).
BODY_JOINTS = (0, 12, 16, 17, 18, 19, 20, 21, 55, 56, 57, 58, 59)
# 21 hand points, wrist first, then thumb/index/middle/ring/pinky, each 3 joints + fingertip.
LHAND_JOINTS = (20, 37, 38, 39, 66, 25, 26, 27, 67, 28, 29, 30, 68, 34, 35, 36, 69, 31, 32, 33, 70)
RHAND_JOINTS = (21, 52, 53, 54, 71, 40, 41, 42, 72, 43, 44, 45, 73, 49, 50, 51, 74, 46, 47, 48, 75)


def smplx179_to_133(frames: np.ndarray) -> np.ndarray:
    """SOKE 179-d SMPL-X frames ``[..., 179]`` -> model features ``[..., 133]`` (radians).

    Raises:
        ValueError: the last axis is not 179.
    """
    frames = np.asarray(frames)
    if frames.shape[-1] != 179:
        raise ValueError(f"expected 179-d SMPL-X frames, got last axis {frames.shape[-1]}")
    return np.concatenate(
        [frames[..., _UPPER_IN_179], frames[..., _LHAND], frames[..., _RHAND],
         frames[..., _JAW], frames[..., _EXPR]], axis=-1)


def smplx133_to_179(features: np.ndarray) -> np.ndarray:
    """Inverse of :func:`smplx179_to_133` with root, joints 1-11 and shape set to zero."""
    features = np.asarray(features)
    if features.shape[-1] != 133:
        raise ValueError(f"expected 133-d features, got last axis {features.shape[-1]}")
    out = np.zeros(features.shape[:-1] + (179,), dtype=features.dtype)
    out[..., _UPPER_IN_179] = features[..., 0:30]
    out[..., _LHAND] = features[..., 30:75]
    out[..., _RHAND] = features[..., 75:120]
    out[..., _JAW] = features[..., 120:123]
    out[..., _EXPR] = features[..., 123:133]
    return out


def model_file(model_dir: str | os.PathLike | None = None) -> Path:
    """Path of the neutral SMPL-X model in ``model_dir`` (or ``$MADIS_SMPLX_DIR``, or the default).

    Accepts ``DIR/SMPLX_NEUTRAL.{npz,pkl}`` and the layout of the official download,
    ``DIR/smplx/SMPLX_NEUTRAL.{npz,pkl}``.

    Raises:
        FileNotFoundError: no model file there; the message names the expected path and where
            the (licensed) files are obtained.
    """
    d = Path(model_dir or os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR).expanduser()
    if d.is_file():
        return d
    for sub in (d, d / "smplx"):
        for ext in ("npz", "pkl"):
            if (sub / f"SMPLX_NEUTRAL.{ext}").is_file():
                return sub / f"SMPLX_NEUTRAL.{ext}"
    raise FileNotFoundError(
        f"SMPL-X model not found: expected {d / 'SMPLX_NEUTRAL.npz'} (or .pkl, or under "
        f"{d / 'smplx'}). SMPL-X is licensed and not shipped with MaDiS: register at {SMPLX_URL}, "
        f"download the SMPL-X model files and put SMPLX_NEUTRAL.npz there, or point "
        f"${MODEL_DIR_ENV} at the directory holding it."
    )


_MODELS: dict[Path, object] = {}
_LOCK = threading.Lock()


def load_body_model(model_dir: str | os.PathLike | None = None):
    """The ``smplx.SMPLX`` layer (neutral, full 45-d hand poses, 10 expression coefficients).

    Cached per file. ``use_pca=False`` and the model's own hand mean as in SOKE's SMPL-X layer.
    """
    path = model_file(model_dir)
    with _LOCK:
        if path not in _MODELS:
            import smplx

            # smplx prints notes about coefficient counts on construction; they are expected.
            with contextlib.redirect_stdout(io.StringIO()):
                _MODELS[path] = smplx.SMPLX(
                    model_path=str(path), ext=path.suffix[1:], gender="neutral", use_pca=False,
                    num_betas=10, num_expression_coeffs=10, use_face_contour=False,
                ).eval()
        return _MODELS[path]


def forward_kinematics(
    features: np.ndarray, model_dir: str | os.PathLike | None = None, chunk: int = 512
) -> np.ndarray:
    """All SMPL-X joints ``[T, J, 3]`` (metres) of 133-d features ``[T, 133]``.

    Root orientation, translation, joints 1-11, eye poses and shape are zero
    (docs/design.md#dtw-jpe).
    """
    import torch

    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[1] != 133:
        raise ValueError(f"expected features [T, 133], got {x.shape}")
    model = load_body_model(model_dir)
    out = []
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            f = torch.from_numpy(x[s:s + chunk])
            n = len(f)
            body = torch.zeros(n, 21 * 3)
            body[:, 11 * 3:] = f[:, 0:30]
            res = model(
                betas=torch.zeros(n, 10), global_orient=torch.zeros(n, 3),
                transl=torch.zeros(n, 3), body_pose=body,
                left_hand_pose=f[:, 30:75], right_hand_pose=f[:, 75:120],
                jaw_pose=f[:, 120:123], expression=f[:, 123:133],
                leye_pose=torch.zeros(n, 3), reye_pose=torch.zeros(n, 3),
            )
            out.append(res.joints.numpy())
    if not out:
        return np.zeros((0, 76, 3), np.float32)
    return np.concatenate(out)


class SMPLX133(MotionFormat):
    """133-d SMPL-X features (radians); joints in metres by forward kinematics.

    ``joints`` gives ``body [T, 13, 3]`` = pelvis (alignment joint, index 0), neck, shoulders,
    elbows, wrists, nose, eyes, ears; ``lhand``/``rhand [T, 21, 3]``, wrist first.
    """

    name = "smplx133"
    dim = 133
    fps = 25.0
    units = "m"
    part_index = {
        "body": np.r_[0:30, 120:133],
        "lhand": np.arange(30, 75),
        "rhand": np.arange(75, 120),
    }
    metric_joints = {
        "body": MetricJoints(align_index=0, cost_joints=tuple(range(1, 13))),
        "lhand": MetricJoints(align_index=0, cost_joints=None),
        "rhand": MetricJoints(align_index=0, cost_joints=None),
    }

    def __init__(self, model_dir: str | os.PathLike | None = None):
        self.model_dir = model_dir

    def check_joints(self) -> None:
        """Raises FileNotFoundError naming the expected SMPL-X model path when the licensed file
        is not on this machine (see :func:`model_file`)."""
        model_file(self.model_dir)

    def joints(self, motion: np.ndarray, model_dir: str | os.PathLike | None = None):
        """``[T, 133]`` -> ``{"body": [T,13,3], "lhand": [T,21,3], "rhand": [T,21,3]}`` (m).

        Raises:
            FileNotFoundError: no SMPL-X model file (see :func:`model_file`).
        """
        j = forward_kinematics(motion, model_dir or self.model_dir)
        return {
            "body": j[:, BODY_JOINTS],
            "lhand": j[:, LHAND_JOINTS],
            "rhand": j[:, RHAND_JOINTS],
        }


SMPLX133_FORMAT = register(SMPLX133())
