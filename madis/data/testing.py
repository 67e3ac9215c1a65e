"""Small shard sets for tests and benchmarks: random-walk motion in any registered format."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from madis.data.shards import Sample, write_shards
from madis.motion import get_format

WORDS = ("HELLO", "THANK YOU", "GOOD MORNING", "YES", "NO", "PLEASE")


def write_random_shards(root: str | Path, motion_format: str = "keypoints",
                        counts: Mapping[str, int] | None = None, texts: Sequence[str] = WORDS,
                        seed: int = 0) -> dict:
    """Write shards of random-walk clips (``[T, D]`` float16, T = 40, 44 or 48 frames at 25 fps,
    sign language ``ase``, texts cycling through ``texts``) and return the manifest.

    Args:
        counts: samples per split (default 4 train, 6 val); keys are ``{split}-{i}``.
    """
    rng = np.random.default_rng(seed)
    dim = get_format(motion_format).dim

    def sample(split: str, i: int) -> Sample:
        frames = 40 + 4 * (i % 3)
        motion = np.cumsum(rng.normal(0, 0.05, (frames, dim)), 0).astype(np.float16)
        return Sample(key=f"{split}-{i}", text=texts[i % len(texts)], lang="ase", fps=25.0,
                      source="test", motion=motion, valid=np.ones((frames, 3), bool))

    counts = counts or {"train": 4, "val": 6}
    return write_shards(root, {s: [sample(s, i) for i in range(n)] for s, n in counts.items()},
                        motion_format=motion_format, fps=25.0, provenance="test", licence="test")
