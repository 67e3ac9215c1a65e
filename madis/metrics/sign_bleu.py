"""SiBLEU: BLEU over sign-token streams (paper 3.4, docs/design.md#sibleu).

Each part's token stream is written as words (the integer ids separated by spaces) and scored by
sacrebleu's corpus BLEU with ``tokenize='none'`` (default ``exp`` smoothing), so SiBLEU-4 is exactly
sacrebleu's number on those strings, on sacrebleu's 0-100 scale. "Body" scores the body stream,
"Hands" is the mean of the left- and right-hand scores. The released evaluation code reports a
BLEU-1-like precision; :func:`part_sibleu` gives BLEU-1 beside BLEU-4, labelled as such.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sacrebleu.metrics import BLEU

from madis.motion.base import PARTS

__all__ = ["sibleu", "part_sibleu", "token_streams", "UNIT"]

#: unit of every SiBLEU/BLEU value returned here
UNIT = "BLEU (0-100)"


def _as_words(streams: Sequence[Sequence[int]], name: str) -> list[str]:
    out = []
    for n, ids in enumerate(streams):
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"{name}[{n}]: expected a flat list of token ids, got shape {arr.shape}")
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0):
            raise ValueError(f"{name}[{n}]: token ids must be non-negative integers")
        out.append(" ".join(str(int(i)) for i in arr))
    return out


def sibleu(
    hypotheses: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    max_order: int = 4,
) -> float:
    """Corpus-level SiBLEU-``max_order`` of token-id streams (paper 3.4).

    Args:
        hypotheses: one generated token-id list per sample (one part's stream, EOS and padding
            already removed); an empty list is a legal (zero-scoring) generation.
        references: the ground-truth token-id list of each sample, same order.
        max_order: highest n-gram order (4 for SiBLEU-4, 1 for BLEU-1).

    Returns:
        sacrebleu's corpus BLEU (0-100) with ``tokenize='none'`` on the ids written as words.

    Raises:
        ValueError: different numbers of hypotheses and references, no samples, a non-integer or
            negative id, or ``max_order < 1``.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if len(hypotheses) == 0:
        raise ValueError("SiBLEU needs at least one sample")
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}")
    hyp = _as_words(hypotheses, "hypotheses")
    ref = _as_words(references, "references")
    bleu = BLEU(tokenize="none", max_ngram_order=max_order)
    return float(bleu.corpus_score(hyp, [ref]).score)


def token_streams(tokens) -> dict[str, list[int]]:
    """``[N, 3]`` part tokens (numpy/torch; padding < 0) -> dict part -> id list, padding dropped.

    Raises:
        ValueError: tokens not shaped ``[N, 3]``.
    """
    if hasattr(tokens, "detach"):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 2 or arr.shape[1] != len(PARTS):
        raise ValueError(f"expected part tokens [N, {len(PARTS)}], got shape {arr.shape}")
    return {p: [int(t) for t in arr[:, i] if t >= 0] for i, p in enumerate(PARTS)}


def part_sibleu(
    generated_tokens: Sequence, reference_tokens: Sequence, max_order: int = 4
) -> dict[str, float]:
    """SiBLEU of whole test sets of ``[N, 3]`` part tokens: ``{"body": ..., "hands": ...}``.

    ``hands`` is the mean of the left-hand and right-hand corpus scores (docs/design.md#sibleu).

    Args:
        generated_tokens: per sample ``[N_i, 3]`` generated tokens (after the first EOS cut).
        reference_tokens: per sample ``[M_i, 3]`` ground-truth tokens, same order.
        max_order: 4 for SiBLEU-4, 1 for BLEU-1.

    Raises:
        ValueError: see :func:`sibleu` and :func:`token_streams`.
    """
    gen = [token_streams(t) for t in generated_tokens]
    ref = [token_streams(t) for t in reference_tokens]
    score = {
        p: sibleu([g[p] for g in gen], [r[p] for r in ref], max_order) for p in PARTS
    }
    return {"body": score["body"], "hands": (score["lhand"] + score["rhand"]) / 2}
