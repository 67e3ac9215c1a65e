"""The three pretraining objectives (paper 3.2,
docs/design.md#pretraining-losses-eq-3-5), as plain functions of tensors."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Target value of a hand head at an [EOS]/[PAD] position: that position has no hand token.
IGNORE = -100


def sign_nll(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """-log p(z_i | x_t) of sign positions: the sum over the three part heads
    (docs/design.md#token-space-eq-3).

    Args:
        logits: (body ``[M, K_B+2]``, lhand ``[M, K_L]``, rhand ``[M, K_R]``).
        targets: ``[M, 3]`` head-space targets; hand entries ``IGNORE`` at [EOS]/[PAD]
            positions contribute nothing.
    Returns:
        ``[M]`` float32.
    """
    out = torch.zeros(targets.shape[0], device=targets.device)
    for p, lg in enumerate(logits):
        out = out + F.cross_entropy(lg.float(), targets[:, p], ignore_index=IGNORE, reduction="none")
    return out


def diffusion_token_loss(nll: torch.Tensor, rows: torch.Tensor, t: torch.Tensor,
                         seq_len: torch.Tensor) -> torch.Tensor:
    """Eq. 3 with LLaDA's normalisation: per sample ``(1/t) * sum_{i in M} nll_i / (L+1+N)``,
    then the mean over the batch.

    Args:
        nll: ``[M]`` negative log-likelihoods of the masked positions (text and sign).
        rows: ``[M]`` batch index of each.
        t: ``[B]`` mask ratios; seq_len: ``[B]`` L_b + 1 + N.
    """
    per_sample = torch.zeros(t.shape[0], device=nll.device, dtype=torch.float32)
    per_sample = per_sample.index_add(0, rows, nll.float())
    return (per_sample / t / seq_len).mean()


def latent_loss(pred: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 4: ``sum_p mean_{i in M_s} SmoothL1(phi_p(h_i), C_p[z_i^p])`` (beta 1, the mean also
    over the d_p dimensions). Targets are detached. Zero (with a graph) when M_s is empty.

    Args:
        pred, target: per part ``[M_s, d_p]``.
    """
    total = pred[0].sum() * 0.0
    if pred[0].shape[0] == 0:
        return total
    for p, tg in zip(pred, target):
        total = total + F.smooth_l1_loss(p.float(), tg.detach().float(), reduction="mean")
    return total


def physical_loss(recon: torch.Tensor, target: torch.Tensor, frames: torch.Tensor,
                  part_index: Mapping[str, np.ndarray]) -> torch.Tensor:
    """Eq. 5: L1 between decoded and ground-truth motion on the frames of masked positions,
    the mean over those frames and the part's features, summed over the three parts.

    Args:
        recon: ``[B, T, D]`` motion decoded from the mapped hidden states (z-scored).
        target: ``[B, T, D]`` ground truth (z-scored).
        frames: bool ``[B, T]``, frames covered by masked real positions (4 per position).
        part_index: the motion format's feature indices per part.
    """
    total = recon.sum() * 0.0
    n = frames.sum()
    if n == 0:
        return total
    w = frames[..., None].to(recon.dtype)
    for idx in part_index.values():
        i = torch.as_tensor(np.asarray(idx), device=recon.device, dtype=torch.long)
        diff = (recon.float()[..., i] - target.float()[..., i]).abs() * w
        total = total + diff.sum() / (n * len(i))
    return total
