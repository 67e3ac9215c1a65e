"""Rendering speed: a 100-frame skeleton GIF, ours against straightforward baselines, one process.

Workload: a 100-frame keypoints clip (the first val clip of the sample shards when ``shards/``
holds them, else a synthetic one), rendered alone and beside a reference, at 128 and 256 px.

* ours: :func:`madis.viz.animation` (one figure, blitting) + :func:`madis.viz.encode_gif` (one
  shared palette) and :func:`madis.viz.encode_mp4`.
* redraw baseline: the same figure drawn in full every frame (``canvas.draw()``), what a
  per-frame ``plot`` loop costs before any ``cla()``/figure-creation overhead.
* imageio GIF baseline: ``imageio.v3.imwrite(..., ".gif")`` on the same frames (Pillow's
  per-frame adaptive palette).

Run::

    .venv/bin/python benchmarks/bench_viz.py        # about half a minute on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def load_clip(frames: int) -> np.ndarray:
    try:
        from madis.data.shards import iter_samples

        m = next(iter(iter_samples("shards", "val", shuffle=False)))["motion"]
    except Exception:  # no sample shards built: a synthetic signer
        from madis.motion.keypoints import DIM

        rng = np.random.default_rng(0)
        m = np.cumsum(rng.normal(0, 0.01, (frames, DIM)), 0) + rng.normal(0, 0.5, DIM)
    idx = np.arange(frames) % len(m)
    return np.asarray(m, np.float32)[idx]


def timed(fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100)
    args = ap.parse_args()

    import imageio.v3 as iio

    from madis.viz import animation, encode_gif, encode_mp4

    clip = load_clip(args.frames)
    ref = clip[::-1].copy()
    animation(clip[:4], "keypoints", size=64).frames()  # imports, font cache
    print(f"{args.frames} frames, keypoints; best of 3 (seconds)")
    print(f"{'case':<28}{'build':>7}{'frames':>8}{'redraw':>8}{'x':>6}{'gif':>7}"
          f"{'imageio':>9}{'x':>6}{'mp4':>7}{'total':>7}")
    for size in (128, 256):
        for with_ref in (False, True):
            kw = dict(reference=ref if with_ref else None, text="SEATTLE", size=size)
            t_build, anim = timed(lambda: animation(clip, "keypoints", **kw))
            t_frames, frames = timed(anim.frames)

            def redraw():
                from madis.motion.base import PARTS

                for lc in anim._collections:
                    lc.set_animated(False)
                out = []
                for t in range(len(anim)):
                    for pan, n, lc in zip(anim._panels, anim.lengths, anim._collections):
                        lc.set_segments(np.concatenate(
                            [pan[p][min(t, n - 1)][anim._bones[p]] for p in PARTS]))
                    anim._canvas.draw()
                    out.append(np.asarray(anim._canvas.buffer_rgba())[..., :3].copy())
                for lc in anim._collections:
                    lc.set_animated(True)
                return out

            t_redraw, _ = timed(redraw, repeat=1)
            t_gif, _ = timed(lambda: encode_gif(frames, 25.0))
            t_iio, _ = timed(lambda: iio.imwrite("<bytes>", frames, extension=".gif", duration=40),
                             repeat=1)
            t_mp4, _ = timed(lambda: encode_mp4(frames, 25.0))
            name = f"{size}px {'gen|ref ' if with_ref else 'single  '}{frames.shape[2]}x{frames.shape[1]}"
            print(f"{name:<28}{t_build:7.2f}{t_frames:8.2f}{t_redraw:8.2f}{t_redraw / t_frames:6.1f}"
                  f"{t_gif:7.2f}{t_iio:9.2f}{t_iio / t_gif:6.1f}{t_mp4:7.2f}"
                  f"{t_build + t_frames + t_gif:7.2f}")
    print("total = build + frames + gif (our GIF path end to end)")


if __name__ == "__main__":
    main()
