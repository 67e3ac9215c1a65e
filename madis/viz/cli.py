"""``madis render MOTION.npy -o out.gif``: draw a motion (optionally beside its reference)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "render", help="render a motion .npy as a skeleton GIF/MP4/PNG",
        description="Render a motion [T, D] saved with numpy (.npy) as a front-view skeleton: "
                    "OUT.gif, OUT.mp4, OUT.png (one frame) or a directory of PNG frames. With "
                    "--reference, the generated and the reference motion are drawn side by side.")
    p.add_argument("motion", metavar="MOTION.npy")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="output: .gif, .mp4, .png, or a directory (no suffix) for PNG frames")
    p.add_argument("--format", dest="fmt", choices=("keypoints", "smplx133"), default=None,
                   help="motion format (default: the one whose D matches the file)")
    p.add_argument("--reference", metavar="REF.npy", help="ground-truth motion drawn on the right")
    p.add_argument("--text", help="the sentence, shown above the skeleton")
    p.add_argument("--size", type=int, default=256, help="panel size in pixels (default: %(default)s)")
    p.add_argument("--fps", type=float, default=None, help="frame rate (default: the format's)")
    p.add_argument("--frame", type=int, default=None,
                   help="for .png: the frame to draw (default: the middle one)")
    p.add_argument("--strip", type=int, default=0, metavar="N",
                   help="for .png: N evenly spaced frames side by side (the reference in a "
                        "second row) instead of one frame")
    p.add_argument("--hand", choices=("lhand", "rhand"), default=None,
                   help="with --strip: only this hand, wrist-centred and enlarged")
    p.add_argument("--smplx-dir", default=None,
                   help="SMPL-X model directory for smplx133 (default: $MADIS_SMPLX_DIR)")
    p.set_defaults(func=cmd_render)


def _load(path: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None


def cmd_render(args: argparse.Namespace) -> int:
    from madis.motion import get_format
    from madis.viz.render import render_motion

    if args.fps is not None and not args.fps > 0:
        print(f"error: --fps must be > 0, got {args.fps}", file=sys.stderr)
        return 2
    try:
        motion = _load(args.motion)
        reference = _load(args.reference) if args.reference else None
        fmt = args.fmt
        if fmt is None:
            dim = motion.shape[-1] if motion.ndim else None
            fmt = next((n for n in ("keypoints", "smplx133") if get_format(n).dim == dim), None)
            if fmt is None:
                raise ValueError(f"{args.motion}: shape {motion.shape} matches no format "
                                 f"(keypoints D = 165, smplx133 D = 133)")
        if args.strip or args.hand:
            if Path(args.out).suffix.lower() != ".png" or args.strip < 1:
                raise ValueError("--strip N (N >= 1) writes a .png; --hand needs --strip")
            from madis.viz.render import frame_strip, save_frames

            img = frame_strip(motion, fmt, reference=reference, frames=args.strip,
                              hand=args.hand, size=args.size, model_dir=args.smplx_dir)
            out = save_frames(img[None], args.out, 1.0)
        else:
            out = render_motion(motion, args.out, fmt, reference=reference, text=args.text,
                                size=args.size, fps=args.fps, frame=args.frame,
                                model_dir=args.smplx_dir)
    except (ValueError, IndexError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}" + (" (PNG frames)" if Path(out).is_dir() else ""))
    return 0
