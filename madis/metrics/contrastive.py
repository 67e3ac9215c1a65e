"""SiCLIP's contrastive objectives (paper 3.4 and its supplement;
docs/design.md#siclip).

* Global InfoNCE (CLIP): one embedding per sign and per text, logits = scale * cosine, symmetric
  cross-entropy over the batch.
* Fine-grained token-wise similarity (CiCo, after DRL's weighted token-wise interaction): every
  sign token is matched to its most similar word token and vice versa; the matches are averaged
  with learned, softmax-normalised token weights, and the two directions are averaged. Trained
  with the same symmetric cross-entropy.

Identical texts in a batch (a lexicon holds the same word signed by several people) are all
positives of each other's signs: the target row spreads evenly over them instead of calling a
correct match a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["symmetric_cross_entropy", "token_wise_similarity", "masked_softmax"]


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``mask`` (True = real); padding gets weight 0.

    Raises:
        ValueError: a row with no real entry (its weights would be NaN).
    """
    if not bool(mask.any(-1).all()):
        raise ValueError("a sequence has no real tokens; cannot weight its tokens")
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def symmetric_cross_entropy(logits: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric CLIP cross-entropy of a ``[B, B]`` sign-by-text logit matrix.

    Args:
        logits: ``[B, B]`` scaled similarities, row = sign, column = text.
        positives: bool ``[B, B]``, True where sign i and text j match (None: the diagonal). Each
            row's and column's target is uniform over its positives.

    Returns:
        Scalar ``(CE(sign->text) + CE(text->sign)) / 2``.

    Raises:
        ValueError: not square, fewer than 2 pairs (no negatives), a row or column without a
            positive, or non-finite logits.
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be [B, B], got {tuple(logits.shape)}")
    n = logits.shape[0]
    if n < 2:
        raise ValueError(f"a contrastive batch needs at least 2 pairs, got {n}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("contrastive logits contain NaN or infinite values")
    if positives is None:
        positives = torch.eye(n, dtype=torch.bool, device=logits.device)
    if not bool(positives.any(0).all() and positives.any(1).all()):
        raise ValueError("every sign and every text needs at least one positive")
    target = positives.float()
    s2t = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    t2s = -(target / target.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return (s2t + t2s) / 2


def token_wise_similarity(
    sign_tokens: torch.Tensor,
    sign_weights: torch.Tensor,
    sign_mask: torch.Tensor,
    text_tokens: torch.Tensor,
    text_weights: torch.Tensor,
    text_mask: torch.Tensor,
) -> torch.Tensor:
    """CiCo-style fine-grained similarity of every sign against every text.

    ``S[s, t, n, l] = <sign_tokens[s, n], text_tokens[t, l]>``;
    sign->text = ``sum_n w_s[n] max_l S``, text->sign = ``sum_l w_t[l] max_n S`` (padding excluded
    from the max), the score is their mean.

    Args:
        sign_tokens: ``[Bs, N, E]`` L2-normalised sign token embeddings.
        sign_weights: ``[Bs, N]`` token weights summing to 1 over real tokens (0 at padding).
        sign_mask: bool ``[Bs, N]``, True = real.
        text_tokens, text_weights, text_mask: the same for texts, ``[Bt, L, E]``, ``[Bt, L]``.

    Returns:
        ``[Bs, Bt]`` scores in [-1, 1].
    """
    sim = torch.einsum("snd,tld->stnl", sign_tokens, text_tokens)
    neg = torch.finfo(sim.dtype).min
    best_word = sim.masked_fill(~text_mask[None, :, None, :], neg).amax(-1)  # s, t, n
    best_sign = sim.masked_fill(~sign_mask[:, None, :, None], neg).amax(-2)  # s, t, l
    s2t = (best_word * sign_weights[:, None, :]).sum(-1)
    t2s = (best_sign * text_weights[None, :, :]).sum(-1)
    return (s2t + t2s) / 2
