"""Length rules and z-score normalisation shared by every motion format
(docs/data-formats.md#length-rules-and-normalisation).

The length rules are SOKE's: a clip shorter than ``MIN_FRAMES`` has frames repeated (indices
``linspace(0, T-1, MIN_FRAMES)`` truncated to integers, as SOKE's ``dtype=int``) up to
``MIN_FRAMES``; one longer than ``MAX_FRAMES`` is subsampled the same way down to ``MAX_FRAMES``; otherwise it is centre-cropped to a multiple of
``FRAMES_PER_POSITION`` so that the tokenizer's 4x down-sampling gives a whole number of positions.
Ground truth for evaluation goes through the same rules.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from madis.motion.base import FRAMES_PER_POSITION, MAX_FRAMES, MIN_FRAMES

#: Smallest standard deviation used by :func:`zscore`; features that never move (a joint the
#: data fixes at zero) would otherwise divide by zero.
MIN_STD = 1e-4


def length_indices(
    num_frames: int,
    min_frames: int = MIN_FRAMES,
    max_frames: int = MAX_FRAMES,
    multiple: int = FRAMES_PER_POSITION,
) -> np.ndarray:
    """Frame indices (int64, into ``0..num_frames-1``) that bring a clip to a legal length.

    Args:
        num_frames: T of the input clip (frames), at least 1.
    Returns:
        ``[T']`` indices with ``min_frames <= T' <= max_frames`` and ``T' % multiple == 0``.
    Raises:
        ValueError: ``num_frames < 1`` or inconsistent limits.
    """
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    if min_frames % multiple or max_frames % multiple or min_frames > max_frames:
        raise ValueError(f"bad length limits {min_frames}..{max_frames} (multiple {multiple})")
    if num_frames < min_frames:
        return np.linspace(0, num_frames - 1, min_frames).astype(np.int64)
    if num_frames > max_frames:
        return np.linspace(0, num_frames - 1, max_frames).astype(np.int64)
    keep = num_frames - num_frames % multiple
    start = (num_frames - keep) // 2
    return np.arange(start, start + keep, dtype=np.int64)


def apply_length_rules(motion: np.ndarray, *others: np.ndarray, **limits) -> tuple[np.ndarray, ...]:
    """Apply :func:`length_indices` to ``motion [T, D]`` and to any arrays sharing its first axis.

    Returns a tuple ``(motion', *others')``, each indexed by the same frame indices (e.g. the
    ``[T, 3]`` validity mask travels with the motion).
    """
    idx = length_indices(len(motion), **limits)
    for o in others:
        if len(o) != len(motion):
            raise ValueError(f"companion array has {len(o)} frames, motion has {len(motion)}")
    return (motion[idx],) + tuple(o[idx] for o in others)


class RunningStats:
    """Per-feature mean and standard deviation over many ``[T, D]`` clips (float64 sums).

    Every frame of every clip counts once (longer clips weigh more), as SOKE's mean/std over
    the concatenated training frames.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self._sum = np.zeros(dim, np.float64)
        self._sumsq = np.zeros(dim, np.float64)
        self._shift: np.ndarray | None = None  # first frame; keeps sum-of-squares well conditioned

    def update(self, motion: np.ndarray) -> None:
        x = np.asarray(motion, np.float64).reshape(-1, self.dim)
        if len(x) == 0:
            return
        if self._shift is None:
            self._shift = x[0].copy()
        x = x - self._shift
        self.count += len(x)
        self._sum += x.sum(0)
        self._sumsq += (x * x).sum(0)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean [D], std [D])`` as float32 (population std, not clamped).

        Raises:
            ValueError: no frame was added.
        """
        if self.count == 0:
            raise ValueError("no frames: cannot compute mean/std of an empty set")
        m = self._sum / self.count
        var = np.maximum(self._sumsq / self.count - m * m, 0.0)
        return (m + self._shift).astype(np.float32), np.sqrt(var).astype(np.float32)


def compute_stats(motions: Iterable[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std ``[D]`` over all frames of ``motions`` (each ``[T, D]``)."""
    rs = RunningStats(dim)
    for m in motions:
        rs.update(m)
    return rs.result()


def zscore(motion, mean, std, min_std: float = MIN_STD):
    """``(motion - mean) / max(std, min_std)``; numpy or torch, broadcast over ``[..., D]``."""
    return (motion - mean) / _clamp(std, min_std)


def unzscore(motion, mean, std, min_std: float = MIN_STD):
    """Inverse of :func:`zscore` (with the same ``min_std``)."""
    return motion * _clamp(std, min_std) + mean


def _clamp(std, min_std):
    if isinstance(std, np.ndarray):
        return np.maximum(std, min_std)
    return std.clamp(min=min_std)
