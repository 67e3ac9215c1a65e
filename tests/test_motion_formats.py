"""Motion formats: SMPL-X 133-d (real smplx kinematics on a made-up model) and keypoints."""

from __future__ import annotations

import numpy as np
import pytest

from madis.motion import get_format
from madis.motion.keypoints import (
    BODY_LANDMARKS, clip_from_pose, fill_missing, read_pose_points, resample,
)
from madis.motion.length import apply_length_rules, compute_stats, length_indices, unzscore, zscore
from madis.motion.smplx133 import smplx133_to_179, smplx179_to_133
from madis.motion.testing import FAKE_JOINTS, FAKE_VERTEX_PARENT, holistic_pose_bytes


# ---------------------------------------------------------------- length rules and z-score
@pytest.mark.parametrize(
    "T, expected",
    [
        (10, np.repeat(np.arange(10), [5, 4, 4, 5, 4, 4, 5, 4, 4, 1])),  # floor(linspace), as SOKE
        (40, np.arange(40)),
        (45, np.arange(0, 44)),
        (47, np.arange(1, 45)),
        (400, np.arange(400)),
    ],
)
def test_length_indices_known_answers(T, expected):
    np.testing.assert_array_equal(length_indices(T), expected)


def test_long_clips_are_subsampled_to_400_distinct_frames():
    idx = length_indices(1000)
    assert len(idx) == 400 and idx[0] == 0 and idx[-1] == 999
    assert len(np.unique(idx)) == 400 and (np.diff(idx) >= 2).all() and (np.diff(idx) <= 3).all()


def test_apply_length_rules_moves_companions_together():
    m = np.arange(13 * 2).reshape(13, 2)
    v = np.arange(13)[:, None] % 3 == 0
    m2, v2 = apply_length_rules(m, v)
    assert m2.shape == (40, 2) and v2.shape == (40, 1)
    np.testing.assert_array_equal(m2[:, 0] // 2, length_indices(13))
    np.testing.assert_array_equal(v2[:, 0], (m2[:, 0] // 2) % 3 == 0)
    with pytest.raises(ValueError):
        length_indices(0)


def test_stats_match_numpy_and_zscore_round_trips():
    rng = np.random.default_rng(0)
    clips = [rng.normal(5, 2, (n, 7)) for n in (3, 40, 17)]
    mean, std = compute_stats(clips, 7)
    allf = np.concatenate(clips)
    np.testing.assert_allclose(mean, allf.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, allf.std(0), rtol=1e-5)
    z = zscore(allf, mean, std)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(unzscore(z, mean, std), allf, rtol=1e-5)


# ---------------------------------------------------------------- smplx133
def test_179_to_133_layout():
    x = np.arange(179.0)
    y = smplx179_to_133(x)
    np.testing.assert_array_equal(y[0:30], np.arange(36, 66))  # body joints 12..21
    np.testing.assert_array_equal(y[30:120], np.arange(66, 156))  # hands
    np.testing.assert_array_equal(y[120:123], np.arange(156, 159))  # jaw
    np.testing.assert_array_equal(y[123:133], np.arange(169, 179))  # expression
    back = smplx133_to_179(y)
    np.testing.assert_array_equal(smplx179_to_133(back), y)
    assert back[:36].sum() == 0 and back[159:169].sum() == 0
    fmt = get_format("smplx133")
    assert fmt.part_dims == (43, 45, 45)
    np.testing.assert_array_equal(fmt.part_index["body"], np.r_[0:30, 120:133])
    parts = fmt.split_parts(y[None])
    np.testing.assert_array_equal(fmt.merge_parts(parts)[0], y)
    with pytest.raises(ValueError, match="179"):
        smplx179_to_133(np.zeros(133))


def test_missing_model_names_path_and_site(tmp_path):
    fmt = get_format("smplx133")
    with pytest.raises(FileNotFoundError) as e:
        fmt.joints(np.zeros((2, 133), np.float32), model_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "SMPLX_NEUTRAL.npz") in msg
    assert "https://smpl-x.is.tue.mpg.de" in msg


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_smplx_joints_zero_pose_and_metric_layout(smplx_model_dir):
    fmt = get_format("smplx133")
    j = fmt.joints(np.zeros((3, 133), np.float32), model_dir=smplx_model_dir)
    assert j["body"].shape == (3, 13, 3) and j["lhand"].shape == j["rhand"].shape == (3, 21, 3)
    np.testing.assert_allclose(j["body"][0, :8], FAKE_JOINTS[[0, 12, 16, 17, 18, 19, 20, 21]], atol=1e-5)
    np.testing.assert_allclose(j["lhand"][0, 0], FAKE_JOINTS[20], atol=1e-5)  # wrist first
    np.testing.assert_allclose(j["rhand"][0, 0], FAKE_JOINTS[21], atol=1e-5)
    assert fmt.metric_joints["body"].align_index == 0
    assert fmt.metric_joints["body"].cost_joints == tuple(range(1, 13))


def test_smplx_left_shoulder_rotation_moves_left_arm_only(smplx_model_dir):
    fmt = get_format("smplx133")
    x = np.zeros((1, 133), np.float32)
    x[0, 12:15] = [0, 0, np.pi / 2]  # features 12..14 = joint 16 (left shoulder)
    j = fmt.joints(x, model_dir=smplx_model_dir)
    R, J = _rot_z(np.pi / 2), FAKE_JOINTS
    for k, joint in ((4, 18), (6, 20)):  # left elbow, left wrist
        np.testing.assert_allclose(j["body"][0, k], J[16] + R @ (J[joint] - J[16]), atol=1e-5)
    for k, joint in ((0, 0), (1, 12), (2, 16), (3, 17), (5, 19), (7, 21)):
        np.testing.assert_allclose(j["body"][0, k], J[joint], atol=1e-5)
    # the left index fingertip (hand point 8) is a vertex skinned to joint 27 -> rotates too
    z = fmt.joints(np.zeros((1, 133), np.float32), model_dir=smplx_model_dir)
    np.testing.assert_allclose(j["lhand"][0, 8], J[16] + R @ (z["lhand"][0, 8] - J[16]), atol=1e-5)
    np.testing.assert_allclose(j["rhand"], z["rhand"], atol=1e-6)


def test_smplx_neck_and_finger_features(smplx_model_dir):
    fmt = get_format("smplx133")
    zero = fmt.joints(np.zeros((1, 133), np.float32), model_dir=smplx_model_dir)
    x = np.zeros((1, 133), np.float32)
    x[0, 0:3] = [0.4, 0, 0]  # neck (joint 12): moves the face points only
    x[0, 75:78] = [0, 0, 0.7]  # right index1 (joint 40): moves its distal joints and tip
    j = fmt.joints(x, model_dir=smplx_model_dir)
    moved_body = np.abs(j["body"][0] - zero["body"][0]).max(-1) > 1e-4
    np.testing.assert_array_equal(moved_body, [False] * 8 + [True] * 5)
    moved_r = np.abs(j["rhand"][0] - zero["rhand"][0]).max(-1) > 1e-4
    np.testing.assert_array_equal(np.nonzero(moved_r)[0], [6, 7, 8])
    assert 7669 in FAKE_VERTEX_PARENT  # the right index tip vertex smplx reads


# ---------------------------------------------------------------- keypoints
def _synthetic_pose(T=12, fps=25.0):
    """Shoulders at x=350/150, y=250 -> centre (250, 250, 0), width 200 px."""
    xyz = np.zeros((T, 586, 3), np.float32)
    xyz[:, :, 0] = 250 + np.arange(586)[None] % 7
    xyz[:, :, 1] = 250 + np.arange(T)[:, None] * 2.0
    xyz[:, 11] = [350, 250, 0]
    xyz[:, 12] = [150, 250, 0]
    conf = np.ones((T, 586), np.float32)
    return xyz, conf


def test_keypoints_normalisation_and_joints():
    xyz, conf = _synthetic_pose()
    xyz[:, 0] = [450, 250, 100]  # nose: 1 shoulder width right, z 0.5
    clip = clip_from_pose(holistic_pose_bytes(xyz, conf, 25.0))
    assert clip.motion.shape == (12, 165) and clip.valid.all()
    fmt = get_format("keypoints")
    j = fmt.joints(clip.motion)
    assert j["body"].shape == (12, 14, 3) and j["lhand"].shape == (12, 21, 3)
    np.testing.assert_allclose(j["body"][:, 0], 0, atol=1e-6)  # shoulder midpoint
    np.testing.assert_allclose(j["body"][:, 1 + BODY_LANDMARKS.index("NOSE")], [[1, 0, 0.5]] * 12, atol=1e-6)
    np.testing.assert_allclose(j["body"][:, 1 + BODY_LANDMARKS.index("LEFT_SHOULDER")], [[0.5, 0, 0]] * 12, atol=1e-6)
    # LEFT_HAND_LANDMARKS[0] (wrist) is file point 33 + 478 = 511; RIGHT_HAND_LANDMARKS[20] is 552
    np.testing.assert_allclose(j["lhand"][:, 0] * 200 + [250, 250, 0], xyz[:, 511], atol=1e-3)
    np.testing.assert_allclose(j["rhand"][:, 20] * 200 + [250, 250, 0], xyz[:, 552], atol=1e-3)
    assert fmt.part_dims == (39, 63, 63)
    assert fmt.metric_joints["body"].cost_joints == tuple(range(1, 14))


def test_keypoints_missing_detections_rule():
    xyz, conf = _synthetic_pose(T=8)
    conf[3:5, 532:553] = 0  # right hand lost in frames 3, 4
    conf[:, 511:532] = 0  # left hand never detected
    conf[:, 15] = 0  # LEFT_WRIST never detected -> sits on the left elbow
    conf[0, 13] = 0  # left elbow missing in the first frame -> nearest valid
    raw = read_pose_points(holistic_pose_bytes(xyz, conf, 25.0))
    from madis.motion.keypoints import normalize_points
    norm = normalize_points(raw)
    shape = np.linspace(0, 1, 63, dtype=np.float32).reshape(21, 3)
    filled, valid = fill_missing(norm, raw.present, {"lhand": shape})
    np.testing.assert_array_equal(valid[:, 0], False)  # a body point is always missing
    np.testing.assert_array_equal(valid[:, 1], False)
    np.testing.assert_array_equal(valid[:, 2], [True, True, True, False, False, True, True, True])
    rh = slice(13 + 21, 13 + 42)
    for t, w in ((3, 1 / 3), (4, 2 / 3)):
        np.testing.assert_allclose(filled[t, rh], (1 - w) * norm[2, rh] + w * norm[5, rh], atol=1e-6)
    le, lw = BODY_LANDMARKS.index("LEFT_ELBOW"), BODY_LANDMARKS.index("LEFT_WRIST")
    np.testing.assert_allclose(filled[0, le], norm[1, le], atol=1e-6)
    np.testing.assert_allclose(filled[:, lw], filled[:, le], atol=1e-6)
    np.testing.assert_allclose(filled[:, 13:34], filled[:, lw][:, None] + shape[None], atol=1e-6)
    conf[:, 11] = 0
    with pytest.raises(ValueError, match="never detected"):
        clip_from_pose(holistic_pose_bytes(xyz, conf, 25.0))


def test_keypoints_resample_30_to_25():
    x = (np.arange(31, dtype=np.float32) / 30.0)[:, None]  # value = time in seconds
    valid = np.ones((31, 3), bool)
    valid[6] = False  # output frame 5 sits exactly on source frame 6
    valid[8] = False  # output frames 6 (source 7.2) and 7 (source 8.4) mix source frame 8
    y, v = resample(x, valid, 30.0, 25.0)
    assert y.shape == (26, 1)
    np.testing.assert_allclose(y[:, 0], np.arange(26) / 25.0, atol=1e-6)
    np.testing.assert_array_equal(np.nonzero(~v[:, 0])[0], [5, 6, 7])


def test_keypoints_real_lexicon_clip():
    import importlib.resources as ir

    root = ir.files("spoken_to_signed") / "assets" / "fingerspelling_lexicon"
    path = root / "ase" / "fs-stse28e9ac023b0e29ca0a3acc12dc46540.pose"  # ASL "A", 25 fps
    clip = clip_from_pose(str(path))
    assert clip.motion.shape == (21, 165)  # 25 fps file: not resampled
    pts = clip.motion.reshape(21, 55, 3)
    ls, rs = pts[:, BODY_LANDMARKS.index("LEFT_SHOULDER")], pts[:, BODY_LANDMARKS.index("RIGHT_SHOULDER")]
    assert abs(np.linalg.norm((ls - rs)[:, :2], axis=-1).mean() - 1.0) < 1e-5
    np.testing.assert_allclose((0.5 * (ls + rs)).mean(0), 0, atol=1e-5)
    assert not clip.valid[:, 1].any() and clip.valid[:, 2].all()  # one-handed: right hand only


def test_keypoints_hand_far_from_its_wrist_is_not_a_detection():
    """A tracking failure (the lexicon's gss Ο and Φ put right-hand points ~27 shoulder widths
    from the wrist) is filled like a missed detection, not kept (MAX_HAND_SPAN)."""
    from madis.motion.keypoints import MAX_HAND_SPAN, implausible_hands, normalize_points

    xyz, conf = _synthetic_pose(T=6)
    xyz[2, 540] += [20 * 200, 0, 0]  # one right-hand point thrown 20 shoulder widths away
    raw = read_pose_points(holistic_pose_bytes(xyz, conf, 25.0))
    bad = implausible_hands(normalize_points(raw), raw.present)
    np.testing.assert_array_equal(bad, [[False, False]] * 2 + [[False, True]] + [[False, False]] * 3)
    clip = clip_from_pose(holistic_pose_bytes(xyz, conf, 25.0))
    np.testing.assert_array_equal(clip.valid[:, 2], [True, True, False, True, True, True])
    pts = clip.motion.reshape(6, 55, 3)[:, 34:55]
    span = np.linalg.norm(pts[:, 1:, :2] - pts[:, :1, :2], axis=-1).max(-1)
    assert span.max() < MAX_HAND_SPAN  # frame 2 interpolated from frames 1 and 3
    ok = read_pose_points(holistic_pose_bytes(*_synthetic_pose(T=6), 25.0))
    assert not implausible_hands(normalize_points(ok), ok.present).any()


@pytest.mark.parametrize("name", ["keypoints", "smplx133"])
def test_hands_to_wrist_round_trips(name):
    import torch

    fmt = get_format(name)
    x = np.random.default_rng(0).normal(size=(5, fmt.dim)).astype(np.float32)
    f = fmt.hands_to_wrist(x)
    np.testing.assert_allclose(fmt.hands_from_wrist(f), x, atol=1e-6)
    np.testing.assert_allclose(fmt.hands_from_wrist(fmt.hands_to_wrist(torch.from_numpy(x))).numpy(),
                               x, atol=1e-6)
    if name == "smplx133":
        np.testing.assert_array_equal(f, x)  # rotations are relative already
        return
    pts, rel = x.reshape(5, 55, 3), f.reshape(5, 55, 3)
    np.testing.assert_array_equal(rel[:, :14], pts[:, :14])  # body and the left wrist unchanged
    np.testing.assert_allclose(rel[:, 14:34], pts[:, 14:34] - pts[:, 13:14], atol=1e-6)
    np.testing.assert_allclose(rel[:, 35:55], pts[:, 35:55] - pts[:, 34:35], atol=1e-6)
