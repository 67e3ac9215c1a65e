"""Rendering: skeleton frames, GIF/MP4/PNG written and read back, side by side, gate plot, CLI."""

from __future__ import annotations

import numpy as np
import pytest

import imageio.v3 as iio

from madis.cli import main
from madis.motion import get_format
from madis.motion.keypoints import BODY_LANDMARKS, NUM_BODY, NUM_HAND, NUM_POINTS
from madis.motion.smplx133 import BODY_JOINTS
from madis.motion.testing import FAKE_JOINTS
from madis.viz import (
    PART_COLORS, animation, encode_gif, plot_gates, render_frame, render_frames, render_motion,
    screen_joints, skeleton_for,
)

SIZE = 64


def _keypoints_motion(T=12, seed=0):
    """A signer in MediaPipe axes (x right, y down): shoulders at x = +-0.5, the left hand
    (signer's left, viewer's right) raised at x = +1, the right hand low at x = -1, with a
    little motion over time."""
    rng = np.random.default_rng(seed)
    pts = np.zeros((T, NUM_POINTS, 3), np.float32)
    body = {"LEFT_SHOULDER": (0.5, 0), "RIGHT_SHOULDER": (-0.5, 0), "LEFT_ELBOW": (0.8, 0.6),
            "RIGHT_ELBOW": (-0.8, 0.6), "LEFT_WRIST": (1.0, -0.6), "RIGHT_WRIST": (-1.0, 0.9),
            "NOSE": (0, -0.8), "LEFT_EYE": (0.1, -0.9), "RIGHT_EYE": (-0.1, -0.9),
            "LEFT_EAR": (0.2, -0.85), "RIGHT_EAR": (-0.2, -0.85), "MOUTH_LEFT": (0.05, -0.7),
            "MOUTH_RIGHT": (-0.05, -0.7)}
    for name, xy in body.items():
        pts[:, BODY_LANDMARKS.index(name), :2] = xy
    pts[:, NUM_BODY:NUM_BODY + NUM_HAND, :2] = (1.0, -0.6) + rng.normal(0, 0.08, (NUM_HAND, 2))
    pts[:, NUM_BODY + NUM_HAND:, :2] = (-1.0, 0.9) + rng.normal(0, 0.08, (NUM_HAND, 2))
    pts[:, :, 0] += np.linspace(0, 0.1, T)[:, None]
    return pts.reshape(T, -1)


def _color_mask(img, hex_color, tol=40):
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(img.astype(int) - rgb).max(-1) < tol)


# ---------------------------------------------------------------- skeletons
@pytest.mark.parametrize("name", ["keypoints", "smplx133"])
def test_skeleton_bones_connect_every_joint(name):
    skel = skeleton_for(name)
    # the keypoints mouth is its own line (MediaPipe's POSE_CONNECTIONS draw it so too)
    components = {"body": 2 if name == "keypoints" else 1, "lhand": 1, "rhand": 1}
    for part, joints in (("body", 14 if name == "keypoints" else 13), ("lhand", 21), ("rhand", 21)):
        bones = skel.bone_index(part)
        assert len(skel.names[part]) == joints
        # connected components of the bone graph (union-find), every joint in one of them
        root = list(range(joints))

        def find(i):
            while root[i] != i:
                i = root[i]
            return i
        for a, b in bones:
            root[find(a)] = find(b)
        assert len({find(i) for i in range(joints)}) == components[part], part
        assert set(bones.ravel()) == set(range(joints))
    assert len(skel.bone_index("lhand")) == 21  # MediaPipe HAND_CONNECTIONS


def test_keypoints_screen_is_image_x_and_flipped_y():
    m = _keypoints_motion(T=3)
    s = screen_joints(m, "keypoints")
    j = get_format("keypoints").joints(m)
    np.testing.assert_array_equal(s["body"][..., 0], j["body"][..., 0])
    np.testing.assert_array_equal(s["body"][..., 1], -j["body"][..., 1])
    assert s["lhand"].shape == (3, 21, 2)


def test_smplx_screen_joints_are_front_view_of_fk(smplx_model_dir):
    s = screen_joints(np.zeros((2, 133), np.float32), "smplx133", model_dir=smplx_model_dir)
    # pelvis, neck, shoulders, elbows, wrists are skeleton joints (face points are vertices)
    np.testing.assert_allclose(s["body"][0, :8], FAKE_JOINTS[list(BODY_JOINTS[:8])][:, :2], atol=1e-5)
    np.testing.assert_allclose(s["lhand"][1, 0], FAKE_JOINTS[20, :2], atol=1e-5)  # wrist first


# ---------------------------------------------------------------- frames
def test_frame_shows_hands_on_the_expected_sides():
    img = render_frame(_keypoints_motion(), "keypoints", t=0, size=128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    ys_l, xs_l = np.nonzero(_color_mask(img, PART_COLORS["lhand"]))
    ys_r, xs_r = np.nonzero(_color_mask(img, PART_COLORS["rhand"]))
    assert len(xs_l) > 20 and len(xs_r) > 20
    assert xs_l.mean() > 80 and xs_r.mean() < 48  # signer's left on the viewer's right
    assert ys_l.mean() < ys_r.mean()  # the raised left hand is higher (y flipped)
    assert _color_mask(img, PART_COLORS["body"]).sum() > 50


def test_blitting_leaves_no_trace_of_earlier_frames():
    m = _keypoints_motion(T=8)
    m[3:] += 0.5  # a jump, so earlier frames would show if not cleared
    anim = animation(m, "keypoints", size=SIZE)
    frames = anim.frames()
    fresh = animation(m, "keypoints", size=SIZE).frame(6)
    np.testing.assert_array_equal(frames[6], fresh)
    assert not np.array_equal(frames[0], frames[6])


def test_side_by_side_width_header_and_length():
    gen, ref = _keypoints_motion(T=10), _keypoints_motion(T=6, seed=1)
    frames = render_frames(gen, "keypoints", reference=ref, text="HELLO", size=SIZE)
    assert frames.shape[0] == 10 and frames.shape[2] == 2 * SIZE
    assert frames.shape[1] > SIZE  # titles and text above the panels
    # the reference (right panel) holds its last frame after frame 6
    right = frames[:, -SIZE:, SIZE:]
    np.testing.assert_array_equal(right[7], right[9])
    assert not np.array_equal(frames[7, -SIZE:, :SIZE], frames[9, -SIZE:, :SIZE])
    single = render_frames(gen, "keypoints", size=SIZE, indices=[0, 4])
    assert single.shape == (2, SIZE, SIZE, 3)


def test_smplx_renders_with_made_up_model(smplx_model_dir, tmp_path):
    rng = np.random.default_rng(0)
    m = rng.normal(0, 0.2, (5, 133)).astype(np.float32)
    out = render_motion(m, tmp_path / "s.gif", "smplx133", reference=m[:3], size=SIZE,
                        model_dir=smplx_model_dir)
    back = iio.imread(out, index=None)
    assert back.shape[0] == 5 and back.shape[2] == 2 * SIZE


# ---------------------------------------------------------------- files
def test_gif_png_and_mp4_read_back(tmp_path):
    m = _keypoints_motion(T=12)
    gif = render_motion(m, tmp_path / "a.gif", "keypoints", size=SIZE)
    back = iio.imread(gif, index=None)
    assert back.shape == (12, SIZE, SIZE, 3)
    assert iio.immeta(gif)["duration"] == 40  # 25 fps
    assert iio.immeta(render_motion(m, tmp_path / "b.gif", "keypoints", size=SIZE, fps=10))["duration"] == 100
    # the GIF palette keeps the drawing: frame 0 read back matches the rendered frame closely
    ref = render_frame(m, "keypoints", t=0, size=SIZE)
    assert np.abs(back[0].astype(int) - ref).mean() < 1.0
    np.testing.assert_array_equal(back[0, 0, 0], [255, 255, 255])

    d = render_motion(m, tmp_path / "frames", "keypoints", size=SIZE)
    files = sorted(d.iterdir())
    assert [f.name for f in files][:2] == ["frame_00000.png", "frame_00001.png"] and len(files) == 12
    np.testing.assert_array_equal(iio.imread(files[0]), ref)  # PNG is lossless
    png = render_motion(m, tmp_path / "one.png", "keypoints", size=SIZE, frame=0)
    np.testing.assert_array_equal(iio.imread(png), ref)

    mp4 = render_motion(m, tmp_path / "c.mp4", "keypoints", size=45)  # odd: padded to even
    video = iio.imread(mp4, index=None, plugin="pyav")
    assert video.shape == (12, 46, 46, 3)
    assert iio.immeta(mp4, plugin="pyav")["fps"] == 25.0


def test_bad_input_is_a_clear_error(tmp_path):
    m = _keypoints_motion(T=4)
    with pytest.raises(ValueError, match="D = 165 .* 'smplx133' has D = 133; it looks like format 'keypoints'"):
        render_frames(m, "smplx133")
    with pytest.raises(ValueError, match=r"\[T, D\]"):
        render_frames(m[None], "keypoints")
    with pytest.raises(ValueError, match="no finite"):
        render_frames(np.full((3, 165), np.nan), "keypoints")
    with pytest.raises(ValueError, match="unknown output type"):
        render_motion(m, tmp_path / "x.avi", "keypoints")
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_gif(np.zeros((2, 8, 8)), 25)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- gates
def test_gate_plot_bands_follow_the_dominant_hand(tmp_path):
    g = np.zeros((20, 3))
    g[:, 0] = 0.1
    g[:10, 2] = 0.9  # right hand dominant in the first half
    g[10:, 1] = 0.9  # left hand in the second
    img = plot_gates(g, tmp_path / "g.png", fps=25, text="gates", width=400, height=200)
    assert img.shape == (200, 400, 3)
    np.testing.assert_array_equal(iio.imread(tmp_path / "g.png"), img)

    def blend(hex_color):  # alpha 0.75 over white
        rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
        return "#%02x%02x%02x" % tuple(np.round(0.75 * rgb + 0.25 * 255).astype(int))
    _, xr = np.nonzero(_color_mask(img, blend(PART_COLORS["rhand"]), tol=12))
    _, xl = np.nonzero(_color_mask(img, blend(PART_COLORS["lhand"]), tol=12))
    assert len(xr) > 1000 and len(xl) > 1000
    assert xr.mean() < xl.mean()
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        plot_gates(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        plot_gates(np.full((4, 3), 2.0))


# ---------------------------------------------------------------- CLI
def test_cli_render_npy(tmp_path, capsys):
    m = _keypoints_motion(T=8)
    np.save(tmp_path / "m.npy", m.astype(np.float16))  # as stored in shards
    np.save(tmp_path / "r.npy", m[:5])
    out = tmp_path / "o.gif"
    assert main(["render", str(tmp_path / "m.npy"), "-o", str(out), "--reference",
                 str(tmp_path / "r.npy"), "--text", "HI", "--size", str(SIZE)]) == 0
    back = iio.imread(out, index=None)
    assert back.shape[0] == 8 and back.shape[2] == 2 * SIZE
    assert main(["render", str(tmp_path / "m.npy"), "-o", str(tmp_path / "bad.gif"),
                 "--format", "smplx133"]) == 2
    assert "has D = 133" in capsys.readouterr().err
    np.save(tmp_path / "odd.npy", np.zeros((4, 7), np.float32))
    assert main(["render", str(tmp_path / "odd.npy"), "-o", str(tmp_path / "bad.gif")]) == 2
    assert "matches no format" in capsys.readouterr().err
    assert not (tmp_path / "bad.gif").exists()


def test_frame_strip_rows_and_hand_close_up(tmp_path, capsys):
    from madis.viz import frame_strip

    gen, ref = _keypoints_motion(T=10), _keypoints_motion(T=6, seed=1)
    strip = frame_strip(gen, "keypoints", reference=ref, frames=4, size=SIZE)
    assert strip.shape == (2 * SIZE, 4 * SIZE, 3)
    whole = _color_mask(strip[:SIZE, :SIZE], PART_COLORS["rhand"]).sum()
    hand = frame_strip(gen, "keypoints", frames=4, hand="rhand", size=SIZE)
    assert hand.shape == (SIZE, 4 * SIZE, 3)
    first = hand[:, :SIZE]
    assert _color_mask(first, PART_COLORS["rhand"]).sum() > 2 * whole  # enlarged
    assert _color_mask(first, PART_COLORS["lhand"]).sum() == 0  # the other hand is gone
    with pytest.raises(ValueError, match="hand"):
        frame_strip(gen, "keypoints", hand="head")
    np.save(tmp_path / "m.npy", gen)
    np.save(tmp_path / "r.npy", ref)
    out = tmp_path / "s.png"
    assert main(["render", str(tmp_path / "m.npy"), "-o", str(out), "--reference",
                 str(tmp_path / "r.npy"), "--strip", "3", "--hand", "rhand",
                 "--size", str(SIZE)]) == 0
    assert iio.imread(out).shape == (2 * SIZE, 3 * SIZE, 3)
    assert main(["render", str(tmp_path / "m.npy"), "-o", str(tmp_path / "s.gif"),
                 "--strip", "3"]) == 2
    assert "--strip" in capsys.readouterr().err
