"""Forward masking (docs/design.md#forward-process-eq-1) and UTC's index masks (paper 3.3.1).

A sign position is masked or unmasked as a whole (its three part tokens together). Pretraining
masks every position independently with probability t; fine-tuning keeps the text and samples
only masks that the UTC sampler can reach, so training never sees a state inference cannot
produce ("training-inference consistency").
"""

from __future__ import annotations

from typing import Sequence

import torch


def utc_strides(checkpoints: Sequence[float]) -> list[int]:
    """Temporal strides of the UTC checkpoints: checkpoint c leaves 1 - c of the positions
    unmasked, a temporal resolution of 1/(1-c), i.e. every (1/(1-c))-th position.

    ``[0.75, 0.5] -> [4, 2]``, ``[0.75] -> [4]``, ``[0.5] -> [2]``, ``[] -> []``.

    Raises:
        ValueError: checkpoints not strictly decreasing in (0, 1), 1/(1-c) not an integer >= 2,
            or a stride that does not divide the previous one (the stages would not nest).
    """
    strides: list[int] = []
    prev = 1.0
    for c in checkpoints:
        if not 0.0 < c < prev:
            raise ValueError(f"checkpoints must decrease strictly inside (0, 1), got {list(checkpoints)}")
        prev = c
        s = 1.0 / (1.0 - c)
        if abs(s - round(s)) > 1e-6 or round(s) < 2:
            raise ValueError(f"checkpoint {c} gives resolution 1/{s:g}; 1/(1-c) must be an integer")
        s = int(round(s))
        if strides and strides[-1] % s:
            raise ValueError(f"stride {s} (checkpoint {c}) does not divide stride {strides[-1]}")
        strides.append(s)
    return strides


def utc_stage_of_positions(num_positions: int, checkpoints: Sequence[float],
                           device: torch.device | str | None = None) -> torch.Tensor:
    """Stage index of every sign position: ``[N]`` int64.

    Stage k (0-based) holds the positions unmasked between checkpoint k-1 and k: with the default
    checkpoints, stage 0 = positions i % 4 == 0, stage 1 = i % 4 == 2, stage 2 = odd positions.
    Without checkpoints every position is in stage 0 (vanilla unmasking).
    """
    i = torch.arange(num_positions, device=device)
    stage = torch.full((num_positions,), len(checkpoints), dtype=torch.long, device=device)
    for k, s in reversed(list(enumerate(utc_strides(checkpoints)))):
        stage[i % s == 0] = k
    return stage


def sample_mask_ratio(batch_size: int, eps: float, *, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """t ~ U(eps, 1] per sample (docs/design.md#forward-process-eq-1): ``[B]`` float32."""
    u = torch.rand(batch_size, generator=generator, device=device)
    return 1.0 - (1.0 - eps) * u


def uniform_mask(t: torch.Tensor, shape: tuple[int, int], *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 1: each of ``shape = (B, S)`` positions masked independently with probability t[b].

    Returns bool ``[B, S]`` (True = masked).
    """
    u = torch.rand(shape, generator=generator, device=t.device)
    return u < t[:, None]


def utc_index_mask(t: torch.Tensor, num_positions: int, checkpoints: Sequence[float], *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """UTC fine-tuning mask for mask ratio t (docs/design.md#index-masks).

    With checkpoints c_1 > c_2 > ... and bounds 1 = b_0 > c_1 > ... > 0, t in (b_{k+1}, b_k]
    selects stage k: positions of earlier stages are unmasked, those of later stages masked,
    and each position of stage k is masked with probability (t - b_{k+1}) / (b_k - b_{k+1}).
    For the default [0.75, 0.5] and t > 0.75 that masks everything but a random
    (1 - (t-0.75)/0.25) share of the stride-4 positions, and so on. Loss weight stays 1/t.

    Args:
        t: ``[B]`` mask ratios in (0, 1].
    Returns:
        bool ``[B, N]`` (True = masked).
    """
    stage = utc_stage_of_positions(num_positions, checkpoints, t.device)  # n
    bounds = torch.tensor([1.0, *checkpoints, 0.0], device=t.device, dtype=t.dtype)
    # stage k covers (bounds[k+1], bounds[k]]: k = number of checkpoints >= t
    k = (bounds[1:-1][None, :] >= t[:, None]).sum(1)  # b
    hi, lo = bounds[k], bounds[k + 1]
    frac = (t - lo) / (hi - lo)  # b
    u = torch.rand((t.shape[0], num_positions), generator=generator, device=t.device)
    current = stage[None, :] == k[:, None]
    return (stage[None, :] > k[:, None]) | (current & (u < frac[:, None]))
