"""The motion-format contract shared by data, tokenizer, metrics and rendering.

A motion is an array ``[T, D]`` (frames x features) in the format's own units; every format splits
its D features into the three parts the decoupled tokenizer models (paper 3.1): upper body
(``body``), left hand (``lhand``), right hand (``rhand``), always in that order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

#: Part names in token order: tokens[..., 0] is the body, 1 the left hand, 2 the right hand.
PARTS: tuple[str, str, str] = ("body", "lhand", "rhand")

#: Motion frames per sign position: the tokenizer's encoders halve the time axis twice, so one
#: token, one position of the MDLM, stands for 4 frames
#: (docs/data-formats.md#frames-per-sign-position).
FRAMES_PER_POSITION = 4

#: Length rules (docs/data-formats.md#length-rules-and-normalisation): clips are brought to
#: MIN_FRAMES..MAX_FRAMES, a multiple of FRAMES_PER_POSITION.
MIN_FRAMES = 40
MAX_FRAMES = 400


@dataclass(frozen=True)
class MetricJoints:
    """How DTW-JPE reads one part's joints (docs/design.md#dtw-jpe).

    Attributes:
        align_index: joint translated onto the reference's (pelvis / shoulder midpoint / wrist).
        cost_joints: joints averaged in the local cost; ``None`` means all of them.
    """

    align_index: int = 0
    cost_joints: tuple[int, ...] | None = None


class MotionFormat(ABC):
    """A motion representation: feature layout, part slices and joints for metrics.

    Subclasses set ``name``, ``dim``, ``fps``, ``units``, ``part_index`` and ``metric_joints``.
    """

    name: ClassVar[str]
    dim: ClassVar[int]
    fps: ClassVar[float]
    #: unit of the joint positions that ``joints`` returns (DTW-JPE is reported in it)
    units: ClassVar[str]
    #: feature indices (into D) of each part, in PARTS order
    part_index: ClassVar[Mapping[str, np.ndarray]]
    metric_joints: ClassVar[Mapping[str, MetricJoints]]

    @property
    def part_dims(self) -> tuple[int, int, int]:
        """Feature count per part, (body, lhand, rhand)."""
        return tuple(len(self.part_index[p]) for p in PARTS)  # type: ignore[return-value]

    def split_parts(self, motion):
        """``[..., T, D]`` (numpy or torch) -> dict part -> ``[..., T, D_p]``."""
        return {p: motion[..., self.part_index[p]] for p in PARTS}

    def merge_parts(self, parts):
        """Inverse of :meth:`split_parts`: dict part -> ``[..., T, D_p]`` gives ``[..., T, D]``."""
        first = parts[PARTS[0]]
        shape = tuple(first.shape[:-1]) + (self.dim,)
        if isinstance(first, np.ndarray):
            out = np.zeros(shape, dtype=first.dtype)
        else:
            import torch

            out = torch.zeros(shape, dtype=first.dtype, device=first.device)
        for p in PARTS:
            out[..., self.part_index[p]] = parts[p]
        return out

    def hands_to_wrist(self, motion):
        """Features with each hand's points relative to its wrist, ``[..., D]`` (numpy or
        torch), for a tokenizer that models hand shapes apart from where the hands are
        (``tokenizer.hand_frame: wrist``). The default is the identity: a format whose hands are
        already relative (SMPL-X hand rotations) has nothing to change."""
        return motion

    def hands_from_wrist(self, features):
        """Inverse of :meth:`hands_to_wrist`."""
        return features

    @abstractmethod
    def joints(self, motion: np.ndarray) -> dict[str, np.ndarray]:
        """Joint positions for metrics: ``[T, D]`` -> dict part -> ``[T, J_p, 3]`` (``units``)."""

    def check_joints(self) -> None:
        """Fail now if :meth:`joints` cannot run on this machine: a job calls it before training
        when it will need joints afterwards (metrics, rendering). Formats that need no file
        return; see the subclasses.

        Raises:
            FileNotFoundError: a file :meth:`joints` needs is missing; the message names its path.
        """


_REGISTRY: dict[str, MotionFormat] = {}


def register(fmt: MotionFormat) -> MotionFormat:
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_format(name: str) -> MotionFormat:
    """The registered format called ``name`` (``smplx133`` or ``keypoints``).

    Raises:
        KeyError: unknown format, with the known names in the message.
    """
    import madis.motion  # noqa: F401  (registers the built-in formats)

    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown motion format {name!r}; known: {sorted(_REGISTRY)}") from None
