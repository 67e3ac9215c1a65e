"""The three pretraining objectives (paper 3.2, docs/design.md#pretraining-losses-eq-3-5):
eq. 3 (:func:`sign_nll`, :func:`diffusion_token_loss`), eq. 4 (:func:`latent_loss`) and eq. 5
(:func:`physical_space_loss`: the decoder inputs, packed decoding through the frozen tokenizer,
then :func:`physical_loss`), as functions of tensors and the frozen tokenizer."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from madis.motion.base import FRAMES_PER_POSITION, get_format

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


def physical_space_loss(tokenizer: Any, batch: Mapping[str, Any], phi: Sequence[torch.Tensor],
                        code_rows: Sequence[torch.Tensor], masked_real: torch.Tensor,
                        n: torch.Tensor) -> torch.Tensor:
    """Eq. 5 end to end: decode ``phi_p(h_i)`` at masked real positions and the true code rows
    ``C_p[z_i^p]`` at the other real positions through the frozen decoders, then
    :func:`physical_loss` on the frames of the masked positions
    (docs/design.md#physical-space-eq-5).

    Only the real positions are decoded: the rows are packed into one sequence
    (:func:`pack_rows`) with zero gaps wide enough (:func:`decoder_reach`) that the decoders,
    which re-zero padded steps after every layer, give each clip's frames exactly as if it were
    decoded alone over all ``4N`` frames (the training batch is mostly short clips, so this is
    several times less decoder work than ``[B, 4N]``).

    Args:
        tokenizer: the frozen ``DecoupledTokenizer`` (decoders, normalisation, motion format).
        batch: the training batch; ``motion`` ``[B, T, D]`` (format units) and ``mask``
            ``[B, T]`` are read (``T`` may be shorter than ``4N``: zero-padded here).
        phi: per part ``[B, N, d_p]``, the latent MLPs' outputs.
        code_rows: per part ``[B, N, d_p]``, the true codebook rows (detached).
        masked_real: bool ``[B, N]``, masked real sign positions ``M_s``.
        n: ``[B]`` real sign positions per row.
    Returns:
        scalar float32 (z-scored units), differentiable in ``phi``.
    Raises:
        ValueError: the batch has no ``motion`` or ``mask``.
    """
    if "motion" not in batch or "mask" not in batch:
        raise ValueError("the physical loss needs batch['motion'] and batch['mask']")
    dev = masked_real.device
    gap = decoder_reach(tokenizer)
    f = FRAMES_PER_POSITION
    real = torch.arange(masked_real.shape[1], device=n.device)[None, :] < n[:, None]
    latents = [pack_rows(torch.where(masked_real[..., None], z.float(), r), n, gap)
               for z, r in zip(phi, code_rows)]
    recon = tokenizer.decode_latents(latents, normalized=True,
                                     token_mask=pack_rows(real, n, gap))
    motion = batch["motion"].to(dev, torch.float32)
    frame_ok = batch["mask"].to(dev).bool()
    short = f * int(n.max()) - motion.shape[1] if n.numel() else 0
    if short > 0:
        motion = F.pad(motion, (0, 0, 0, short))
        frame_ok = F.pad(frame_ok, (0, short))
    target = tokenizer.normalize(pack_rows(motion, f * n, f * gap))
    frames = masked_real.repeat_interleave(f, dim=1)[:, : motion.shape[1]]
    frames = pack_rows(frames & frame_ok[:, : frames.shape[1]], f * n, f * gap)
    fmt = tokenizer.motion_format
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    return physical_loss(recon, target, frames, fmt.part_index)


def decoder_reach(tokenizer: Any) -> int:
    """Sign positions one layer of the tokenizer's decoders reads on either side: the widest
    dilation of its ResNet1D stacks (``dilation_growth_rate ** (depth - 1)``), at least 1.

    At the 2x and 4x up-sampled resolutions a gap of this many positions spans 2x and 4x as
    many steps, while no layer reaches further than this many steps, so it is wide enough at
    every layer.
    """
    cfg = tokenizer.config
    return max(1, int(cfg.dilation_growth_rate) ** (int(cfg.depth) - 1))


def pack_rows(x: torch.Tensor, lengths: torch.Tensor, gap: int) -> torch.Tensor:
    """Concatenate the first ``lengths[b]`` steps of every row of ``x [B, L, ...]``, each
    followed by ``gap`` zero (False) steps, into one row ``[1, sum(lengths) + B * gap, ...]``.

    Differentiable in ``x``. With a convolution stack that zeroes padded steps after every
    layer and reaches at most ``gap`` steps per layer, every row's outputs are the same as in
    the padded batch (see :func:`physical_space_loss`).
    """
    pieces = []
    for row, k in zip(x, lengths.tolist()):
        pieces += [row[:k], row.new_zeros((gap, *row.shape[1:]))]
    return torch.cat(pieces)[None]
