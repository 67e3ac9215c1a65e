"""Output heads on the last hidden state: multi-head token prediction and the latent MLPs."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MultiPartHead(nn.Module):
    """Three linear heads, one per part (SOKE's multi-head decoding, paper 4): the body head over
    ``K_B + 2`` classes (codes, [EOS], [PAD]), each hand head over its codebook.

    ``forward(h [..., d]) -> (body [..., K_B+2], lhand [..., K_L], rhand [..., K_R])``.
    """

    def __init__(self, d_model: int, codebook_sizes: Sequence[int]) -> None:
        super().__init__()
        kb, kl, kr = codebook_sizes
        self.heads = nn.ModuleList([nn.Linear(d_model, kb + 2), nn.Linear(d_model, kl),
                                    nn.Linear(d_model, kr)])

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(head(h) for head in self.heads)  # type: ignore[return-value]


class LatentProjector(nn.Module):
    """phi_p: R^{d_model} -> R^{d_p}, one two-layer MLP per part (paper eq. 4).

    ``forward(h [..., d]) -> three tensors [..., d_p]``.
    """

    def __init__(self, d_model: int, code_dims: Sequence[int], hidden: int = 0) -> None:
        super().__init__()
        hidden = hidden or d_model
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d))
            for d in code_dims
        )

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        return [mlp(h) for mlp in self.mlps]
