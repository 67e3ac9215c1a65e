"""Skeleton animations of motions: RGB frames, PNG, GIF and MP4 (matplotlib Agg, imageio).

One figure is built per animation and reused for every frame: the static parts (titles, text)
are drawn once and each frame only redraws the bones onto a saved background (blitting), which
is what keeps a 100-frame GIF at a few seconds' cost or less on one CPU core (see
``benchmarks/bench_viz.py``). Matplotlib is used through its object API (``Figure`` +
``FigureCanvasAgg``), never ``pyplot``, so rendering does not touch global state and works in
any thread or worker process.

Colours: body dark grey, the signer's left hand blue, right hand red (the same colours as
:func:`madis.viz.gates.plot_gates`).
"""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from madis.motion.base import PARTS, MotionFormat, get_format
from madis.viz.skeleton import screen_joints, skeleton_for

PART_COLORS = {"body": "#404040", "lhand": "#1f5fbf", "rhand": "#c8283c"}
#: line width (points) per part at a 256-pixel panel; scaled with the panel size
_LINE_WIDTH = {"body": 2.2, "lhand": 1.1, "rhand": 1.1}
_DPI = 100
_TITLE_PX, _LINE_PX, _PAD_PX = 20, 14, 4
_TEXT_PT, _TITLE_PT = 8.0, 9.0


class SkeletonAnimation:
    """Frames of one motion, or of several shown side by side (e.g. generated | reference).

    All panels share one spatial scale (the joints' joint extent over every panel and frame),
    so sizes and positions compare directly. Panels of different lengths hold their last frame;
    the animation has ``max(T)`` frames and a frame counter in the top-left corner.

    Args:
        panels: one or more dicts part -> ``[T_i, J_p, 2]`` front-view joints
            (:func:`madis.viz.skeleton.screen_joints`).
        fmt: the format (for the bone lists).
        titles: one title per panel (None: no titles).
        text: the sentence shown above the panels (wrapped; None: none).
        size: side of each square panel, pixels.
        line_scale: multiplies every line width (a hand close-up wants thicker lines).
    Raises:
        ValueError: no panels, titles of the wrong length, or ``size`` < 32.
    """

    def __init__(self, panels: Sequence[dict], fmt: MotionFormat | str, *,
                 titles: Sequence[str] | None = None, text: str | None = None, size: int = 256,
                 line_scale: float = 1.0):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import LineCollection
        from matplotlib.figure import Figure

        if not panels:
            raise ValueError("nothing to render: no panels")
        if titles is not None and len(titles) != len(panels):
            raise ValueError(f"{len(titles)} titles for {len(panels)} panels")
        if size < 32:
            raise ValueError(f"panel size {size} px is too small (at least 32)")
        skel = skeleton_for(fmt)
        self._bones = {p: skel.bone_index(p) for p in PARTS}
        self._panels = list(panels)
        self.lengths = [len(pan["body"]) for pan in self._panels]
        self.num_frames = max(self.lengths)
        n, size = len(self._panels), int(size)

        lines = textwrap.wrap(text, max(8, int(n * size / (0.62 * _TEXT_PT * _DPI / 72)))) if text else []
        header = (_TITLE_PX if titles else 0) + _LINE_PX * len(lines) + (_PAD_PX if lines or titles else 0)
        self.width, self.height = n * size, size + header
        fig = Figure(figsize=(self.width / _DPI, self.height / _DPI), dpi=_DPI, facecolor="white")
        self._canvas = FigureCanvasAgg(fig)
        self._fig = fig

        # one scale for every panel; percentiles so that a few wild points of an untrained
        # model's output do not shrink the signer to a dot
        pts = np.concatenate([pan[p].reshape(-1, 2) for pan in self._panels for p in PARTS])
        pts = pts[np.isfinite(pts).all(-1)]
        if len(pts) == 0:
            raise ValueError("no finite joint position to draw")
        lo, hi = np.percentile(pts, [0.5, 99.5], axis=0)
        centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2 * 1.1, 1e-6)

        scale = size / 256 * line_scale
        self._collections = []
        for i in range(n):
            ax = fig.add_axes((i / n, 0, 1 / n, size / self.height))
            ax.set_xlim(centre[0] - half, centre[0] + half)
            ax.set_ylim(centre[1] - half, centre[1] + half)
            ax.set_axis_off()
            colors = np.concatenate([[PART_COLORS[p]] * len(self._bones[p]) for p in PARTS])
            widths = np.concatenate([[_LINE_WIDTH[p] * scale] * len(self._bones[p]) for p in PARTS])
            lc = LineCollection([], colors=colors, linewidths=widths, capstyle="round",
                                animated=True)
            ax.add_collection(lc)
            self._collections.append(lc)
            if titles:
                fig.text((i + 0.5) / n, (size + _PAD_PX / 2) / self.height, titles[i],
                         ha="center", va="bottom", fontsize=_TITLE_PT, weight="bold")
        for k, line in enumerate(lines):
            fig.text(0.5, 1 - (_PAD_PX / 2 + k * _LINE_PX) / self.height, line, ha="center",
                     va="top", fontsize=_TEXT_PT)
        self._counter = fig.text(3 / self.width, 1 - (header + 3) / self.height, "",
                                 ha="left", va="top", fontsize=7 * max(size / 256, 0.8),
                                 color="#808080", animated=True)
        self._canvas.draw()
        self._background = self._canvas.copy_from_bbox(fig.bbox)

    def __len__(self) -> int:
        return self.num_frames

    def frame(self, t: int) -> np.ndarray:
        """RGB uint8 ``[H, W, 3]`` of frame ``t`` (0-based; panels past their end hold still).

        Raises:
            IndexError: ``t`` outside ``0..len-1``.
        """
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside 0..{self.num_frames - 1}")
        self._canvas.restore_region(self._background)
        for pan, length, lc in zip(self._panels, self.lengths, self._collections):
            ti = min(t, length - 1)
            segs = [pan[p][ti][self._bones[p]] for p in PARTS]  # each [n_bones, 2, 2]
            lc.set_segments(np.concatenate(segs))
            self._fig.draw_artist(lc)
        self._counter.set_text(f"{t + 1}/{self.num_frames}")
        self._fig.draw_artist(self._counter)
        return np.asarray(self._canvas.buffer_rgba())[..., :3].copy()

    def frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """RGB uint8 ``[F, H, W, 3]`` of ``indices`` (default: every frame)."""
        idx = range(self.num_frames) if indices is None else indices
        return np.stack([self.frame(int(t)) for t in idx])


def animation(motion, fmt: MotionFormat | str = "keypoints", *, reference=None,
              text: str | None = None, titles: Sequence[str] | None = None, size: int = 256,
              model_dir=None) -> SkeletonAnimation:
    """A :class:`SkeletonAnimation` of ``motion`` (and ``reference`` beside it, if given).

    Args:
        motion: ``[T, D]`` in ``fmt``'s units (numpy or torch), e.g. the tokenizer's decode.
        fmt: format name or object.
        reference: optional ground truth ``[T', D]`` drawn on the right.
        text: the sentence, shown above.
        titles: panel titles; default ``("generated", "reference")`` with a reference, none
            without.
        size: pixels per square panel.
        model_dir: SMPL-X model directory (``smplx133``; default ``$MADIS_SMPLX_DIR``).
    Raises:
        ValueError: a motion of the wrong shape for ``fmt`` (see
            :func:`madis.viz.skeleton.as_motion`). FileNotFoundError: ``smplx133`` without model.
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    panels = [screen_joints(motion, fmt, model_dir)]
    if reference is not None:
        panels.append(screen_joints(reference, fmt, model_dir))
        if titles is None:
            titles = ("generated", "reference")
    return SkeletonAnimation(panels, fmt, titles=titles, text=text, size=size)


def render_frames(motion, fmt: MotionFormat | str = "keypoints", *, reference=None,
                  text: str | None = None, titles: Sequence[str] | None = None, size: int = 256,
                  indices: Sequence[int] | None = None, model_dir=None) -> np.ndarray:
    """RGB uint8 frames ``[F, H, W, 3]`` (every frame, or ``indices``); arguments as
    :func:`animation`. ``W = size`` (``2 * size`` with a reference); ``H = size`` plus a header
    for titles and text."""
    anim = animation(motion, fmt, reference=reference, text=text, titles=titles, size=size,
                     model_dir=model_dir)
    return anim.frames(indices)


def render_frame(motion, fmt: MotionFormat | str = "keypoints", t: int | None = None, *,
                 reference=None, text: str | None = None, titles: Sequence[str] | None = None,
                 size: int = 256, model_dir=None) -> np.ndarray:
    """One RGB uint8 frame ``[H, W, 3]`` (frame ``t``, default the middle one), ready for
    TensorBoard's ``add_image(tag, img, step, dataformats="HWC")``; arguments as
    :func:`animation`."""
    anim = animation(motion, fmt, reference=reference, text=text, titles=titles, size=size,
                     model_dir=model_dir)
    return anim.frame(len(anim) // 2 if t is None else t)


def hand_panels(joints: dict[str, np.ndarray], hand: str) -> dict[str, np.ndarray]:
    """Front-view joints reduced to one hand, wrist at the origin: the other parts collapse onto
    it (bones of zero length draw nothing), so an animation of these panels zooms on the hand's
    shape. ``joints``: :func:`~madis.viz.skeleton.screen_joints`'s dict part -> ``[T, J, 2]``."""
    if hand not in ("lhand", "rhand"):
        raise ValueError(f"hand must be lhand or rhand, got {hand!r}")
    h = joints[hand] - joints[hand][:, :1]
    return {p: h if p == hand else np.zeros_like(joints[p]) for p in PARTS}


def frame_strip(motion, fmt: MotionFormat | str = "keypoints", *, reference=None,
                frames: int = 8, hand: str | None = None, size: int = 128,
                model_dir=None) -> np.ndarray:
    """``frames`` evenly spaced frames of ``motion`` side by side (and of ``reference`` in a
    second row): RGB uint8 ``[rows * H, frames * size, 3]``, a picture to compare two motions at
    a glance (README, docs). With ``hand`` (``rhand``/``lhand``) each frame shows only that
    hand, wrist-centred and enlarged: the hand shapes fingerspelling is made of. Each row is
    sampled over its own length; all panels share one scale.

    Raises:
        ValueError: ``frames`` < 1, a bad ``hand`` or motion shape (see :func:`animation`).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    rows = [screen_joints(motion, fmt, model_dir)]
    if reference is not None:
        rows.append(screen_joints(reference, fmt, model_dir))
    if hand is not None:
        rows = [hand_panels(r, hand) for r in rows]
    panels = []
    for r in rows:
        idx = np.linspace(0, len(r["body"]) - 1, frames).round().astype(int)
        panels += [{p: r[p][t:t + 1] for p in PARTS} for t in idx]
    anim = SkeletonAnimation(panels, fmt, size=size, line_scale=2.5 if hand else 1.0)
    img = anim.frame(0)
    width = frames * size
    return np.concatenate([img[:, i * width:(i + 1) * width] for i in range(len(rows))], 0)


# ---------------------------------------------------------------- writers
def _check_frames(frames) -> np.ndarray:
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8 or len(f) == 0:
        raise ValueError(f"expected RGB uint8 frames [F, H, W, 3] with F >= 1, got {f.dtype} {f.shape}")
    return f


def write_png_frames(directory: str | os.PathLike, frames) -> list[Path]:
    """Write ``frames [F, H, W, 3]`` as ``directory/frame_00000.png`` ... (directory created)."""
    import imageio.v3 as iio

    f = _check_frames(frames)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / f"frame_{i:05d}.png" for i in range(len(f))]
    for p, img in zip(paths, f):
        iio.imwrite(p, img)
    return paths


def encode_gif(frames, fps: float, colors: int = 128) -> bytes:
    """GIF bytes of ``frames [F, H, W, 3]`` at ``fps``, looping.

    One palette of ``colors`` entries (Pillow's maximum-coverage quantizer over a sample of
    frames, no dithering) serves every frame: skeleton drawings have few colours, and Pillow's
    default per-frame adaptive palette costs about ten times as much for a larger file. (Median
    cut would average pure white with the anti-aliasing greys into an off-white background.) GIF delays are in 1/100 s, so
    25 fps is exact and 30 fps plays at 33.3. Pillow merges consecutive identical frames into
    one longer frame; :class:`SkeletonAnimation` frames always differ (the frame counter).
    """
    from PIL import Image

    f = _check_frames(frames)
    sample = np.concatenate(f[:: max(1, len(f) // 10)], axis=0)
    palette = Image.fromarray(sample).quantize(colors, method=Image.Quantize.MAXCOVERAGE,
                                               dither=Image.Dither.NONE)
    images = [Image.fromarray(x).quantize(palette=palette, dither=Image.Dither.NONE) for x in f]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=1000.0 / fps, loop=0)
    return buf.getvalue()


def encode_mp4(frames, fps: float) -> bytes:
    """H.264 MP4 bytes of ``frames [F, H, W, 3]`` at ``fps`` (yuv420p, plays in browsers).

    Uses PyAV (FFmpeg libraries bundled in its wheel; a dependency of pose-format) through
    imageio. Odd frame sizes are padded with white to even ones, as yuv420p needs.

    Raises:
        RuntimeError: PyAV is missing or its FFmpeg build has no H.264 encoder.
    """
    import imageio.v3 as iio

    f = _check_frames(frames)
    try:
        import av
    except ImportError as e:
        raise RuntimeError("MP4 output needs PyAV (`pip install av`); GIF and PNG work without "
                           "it") from e
    if "libx264" not in av.codecs_available:
        raise RuntimeError("MP4 output needs an H.264 encoder (libx264), which this PyAV "
                           "build lacks; write a GIF instead")
    ph, pw = f.shape[1] % 2, f.shape[2] % 2
    if ph or pw:
        f = np.pad(f, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=255)
    fps_arg = int(fps) if float(fps).is_integer() else fps
    return iio.imwrite("<bytes>", f, extension=".mp4", plugin="pyav", codec="libx264",
                       fps=fps_arg, out_pixel_format="yuv420p")


def save_frames(frames, path: str | os.PathLike, fps: float) -> Path:
    """Write frames by the suffix of ``path``: ``.gif``, ``.mp4``, ``.png`` (the middle frame),
    or a directory (no suffix) of PNG frames.

    Raises:
        ValueError: another suffix. RuntimeError: see :func:`encode_mp4`.
    """
    import imageio.v3 as iio

    p = Path(path)
    suffix = p.suffix.lower()
    f = _check_frames(frames)
    if suffix == ".gif":
        data = encode_gif(f, fps)
    elif suffix == ".mp4":
        data = encode_mp4(f, fps)
    elif suffix == ".png":
        p.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(p, f[len(f) // 2])
        return p
    elif suffix == "":
        write_png_frames(p, f)
        return p
    else:
        raise ValueError(f"{p}: unknown output type {suffix!r}; use .gif, .mp4, .png or a "
                         f"directory for PNG frames")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")  # never leave a half-written file under the real name
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return p


def render_motion(motion, path: str | os.PathLike, fmt: MotionFormat | str = "keypoints", *,
                  reference=None, text: str | None = None, titles: Sequence[str] | None = None,
                  size: int = 256, fps: float | None = None, frame: int | None = None,
                  model_dir=None) -> Path:
    """Render ``motion`` (and ``reference`` beside it) to ``path`` (see :func:`save_frames`)
    at ``fps`` (default: the format's). For ``.png``, ``frame`` picks the frame (default the
    middle). Other arguments as :func:`animation`.

    Raises:
        ValueError: bad motion shape for ``fmt`` or unknown output suffix (checked before any
            rendering). RuntimeError: MP4 without an encoder.
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    suffix = Path(path).suffix.lower()
    if suffix not in (".gif", ".mp4", ".png", ""):
        raise ValueError(f"{path}: unknown output type {suffix!r}; use .gif, .mp4, .png or a "
                         f"directory for PNG frames")
    anim = animation(motion, fmt, reference=reference, text=text, titles=titles, size=size,
                     model_dir=model_dir)
    if suffix == ".png":
        t = len(anim) // 2 if frame is None else frame
        return save_frames(anim.frame(t)[None], path, fps or fmt.fps)
    return save_frames(anim.frames(), path, fps or fmt.fps)
