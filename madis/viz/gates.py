"""Plot of the Mixture-of-Parts gate weights along a sign sequence (paper 3.2, Figure 7)."""

from __future__ import annotations

import os

import numpy as np

from madis.motion.base import FRAMES_PER_POSITION
from madis.viz.render import PART_COLORS

_LABELS = {"body": "body", "lhand": "left hand", "rhand": "right hand"}


def plot_gates(gates, path: str | os.PathLike | None = None, *, fps: float | None = None,
               frames_per_token: int = FRAMES_PER_POSITION, text: str | None = None,
               width: int = 640, height: int = 240) -> np.ndarray:
    """Stacked-area plot of MoP gate weights per sign position.

    Each position ``n`` holds its three gates (body, left hand, right hand) stacked to 1 over
    the interval it covers, so the dominant hand of each sign shows as the widest band (the
    paper's Figure 7 reading: one hand for one-handed signs, both about equal for two-handed).

    Args:
        gates: ``[N, 3]`` weights in ``[0, 1]`` (numpy or torch), e.g. one row of
            ``Generation.gates`` cut to the generated length.
        path: also write the plot there as PNG.
        fps: with a frame rate, the x axis is time in seconds (position ``n`` covers frames
            ``frames_per_token * n`` onwards); without, the sign position.
        frames_per_token: motion frames per token (the tokenizer's downsampling, 4).
        text: title (e.g. the sentence).
        width, height: image size in pixels.
    Returns:
        RGB uint8 ``[height, width, 3]`` of the plot.
    Raises:
        ValueError: not ``[N, 3]`` with N >= 1, or values not finite / outside ``[0, 1]``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if hasattr(gates, "detach"):
        gates = gates.detach().float().cpu().numpy()
    g = np.asarray(gates, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 3 or len(g) == 0:
        raise ValueError(f"expected gate weights [N, 3] (body, lhand, rhand) with N >= 1, got {g.shape}")
    if not np.isfinite(g).all() or g.min() < -1e-6 or g.max() > 1 + 1e-6:
        raise ValueError(f"gate weights must be finite and within [0, 1]; got range "
                         f"[{np.nanmin(g):.3g}, {np.nanmax(g):.3g}]")
    n = len(g)
    edges = np.arange(n + 1, dtype=np.float64)
    if fps:
        edges *= frames_per_token / fps
    y = np.concatenate([g, g[-1:]]).T  # the last interval needs a right edge for step="post"

    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    parts = ("body", "lhand", "rhand")
    ax.stackplot(edges, y, step="post", labels=[_LABELS[p] for p in parts],
                 colors=[PART_COLORS[p] for p in parts], alpha=0.75)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)" if fps else "sign position")
    ax.set_ylabel("MoP gate weight")
    if text:
        ax.set_title(text, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        import imageio.v3 as iio

        iio.imwrite(path, img)
    return img
