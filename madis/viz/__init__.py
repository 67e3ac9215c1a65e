"""Skeleton rendering of motions (RGB arrays, PNG, GIF, MP4) and MoP gate plots; no Ray here.

Typical uses::

    from madis.viz import render_motion, render_frame, plot_gates
    render_motion(generated, "out.gif", "keypoints", reference=gt, text="HELLO")
    writer.add_image("sample/0", render_frame(generated, "keypoints", reference=gt), step,
                     dataformats="HWC")
    writer.add_image("gates/0", plot_gates(gen.gates[0, :n]), step, dataformats="HWC")
"""

from madis.viz.gates import plot_gates
from madis.viz.render import (
    PART_COLORS,
    SkeletonAnimation,
    animation,
    encode_gif,
    encode_mp4,
    frame_strip,
    render_frame,
    render_frames,
    render_motion,
    save_frames,
    write_png_frames,
)
from madis.viz.skeleton import Skeleton, as_motion, screen_joints, skeleton_for

__all__ = [
    "PART_COLORS", "Skeleton", "SkeletonAnimation", "animation", "as_motion", "encode_gif",
    "encode_mp4", "frame_strip", "plot_gates", "render_frame", "render_frames", "render_motion", "save_frames",
    "screen_joints", "skeleton_for", "write_png_frames",
]
