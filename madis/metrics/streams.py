"""Stream figures: does a generator sign, or hold one pose? (figures a collapse cannot win)

SiBLEU rewards a generator that repeats the most frequent token of each part: a held letter in
the references matches a held token in the output. These figures describe the shape of token
streams instead, for generated and reference streams alike, so that the two can be compared:

* ``run_share``: the longest run of one token over the stream's length (per part, averaged
  over parts and samples). A held pose gives 1.0; fingerspelled words about 0.3.
* ``distinct``: distinct tokens over the stream's length (per part, averaged). Low when a few
  tokens are repeated.
* ``length``: mean stream length in sign positions; ``length_ratio`` is the generated mean over
  the reference mean.
* ``cross_distance``: the mean normalised edit distance (Levenshtein over the token ids of one
  part, divided by the longer length; averaged over parts) between the streams of *different
  texts of one sign language*. A generator that ignores its input gives the same stream for
  every text: 0. Pairs are taken within a language because the languages' alphabets differ.
* ``empty``: generations with no sign position.

:func:`signing_score` combines SiBLEU with these figures into the eval fleet's ranking figure.
Empty streams count with run share 1 and distinct 0 (they sign nothing).
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np

from madis.motion.base import PARTS

__all__ = ["stream_figures", "compare_streams", "signing_score", "run_share", "distinct_share"]

FIGURES = ("run_share", "distinct", "length", "cross_distance")


def _streams(tokens) -> list[np.ndarray]:
    """``[N, 3]`` part tokens (padding < 0 dropped) -> three 1-D int arrays."""
    if hasattr(tokens, "detach"):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.size == 0:
        return [np.zeros(0, np.int64) for _ in PARTS]
    if arr.ndim != 2 or arr.shape[1] != len(PARTS):
        raise ValueError(f"expected part tokens [N, {len(PARTS)}], got shape {arr.shape}")
    return [arr[arr[:, p] >= 0, p].astype(np.int64) for p in range(len(PARTS))]


def run_share(stream: np.ndarray) -> float:
    """Longest run of one token in a 1-D stream over its length (1.0 for an empty stream)."""
    if len(stream) == 0:
        return 1.0
    change = np.flatnonzero(np.diff(stream) != 0)
    bounds = np.concatenate([[-1], change, [len(stream) - 1]])
    return float(np.diff(bounds).max() / len(stream))


def distinct_share(stream: np.ndarray) -> float:
    """Distinct tokens of a 1-D stream over its length (0.0 for an empty stream)."""
    return float(len(np.unique(stream)) / len(stream)) if len(stream) else 0.0


def _edit_distance(a: np.ndarray, b: np.ndarray) -> float:
    from rapidfuzz.distance import Levenshtein

    if len(a) == 0 and len(b) == 0:
        return 0.0
    return float(Levenshtein.normalized_distance(a.tolist(), b.tolist()))


def stream_figures(tokens: Sequence, langs: Sequence[str] | None = None,
                   texts: Sequence[str] | None = None, max_pairs: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """The figures of the module doc for one set of token streams.

    Args:
        tokens: per sample ``[N_i, 3]`` integer part tokens (EOS cut, padding < 0 ignored).
        langs: sign language of each sample (for ``cross_distance``; None: one language).
        texts: text of each sample; pairs with the same text are skipped (None: all distinct).
        max_pairs: at most this many pairs per language (a seeded sample of them), to bound
            the cost on large test sets.
    Returns:
        ``{"run_share", "distinct", "length", "cross_distance", "empty", "samples"}`` as floats
        (``cross_distance`` is NaN when no language has two different texts).
    Raises:
        ValueError: no samples, malformed tokens, or ``langs``/``texts`` of another length.
    """
    n = len(tokens)
    if n == 0:
        raise ValueError("stream figures need at least one sample")
    langs = list(langs) if langs is not None else [""] * n
    texts = list(texts) if texts is not None else [str(i) for i in range(n)]
    if len(langs) != n or len(texts) != n:
        raise ValueError(f"{n} token streams but {len(langs)} langs and {len(texts)} texts")
    streams = [_streams(t) for t in tokens]
    runs = [np.mean([run_share(s) for s in parts]) for parts in streams]
    distinct = [np.mean([distinct_share(s) for s in parts]) for parts in streams]
    lengths = [max(len(s) for s in parts) for parts in streams]
    by_lang: dict[str, list[int]] = {}
    for i, lg in enumerate(langs):
        by_lang.setdefault(lg, []).append(i)
    rng = np.random.default_rng(seed)
    dists = []
    for idx in by_lang.values():
        pairs = [(a, b) for a, b in itertools.combinations(idx, 2) if texts[a] != texts[b]]
        if len(pairs) > max_pairs:
            pairs = [pairs[j] for j in rng.choice(len(pairs), max_pairs, replace=False)]
        for a, b in pairs:
            dists.append(np.mean([_edit_distance(x, y) for x, y in zip(streams[a], streams[b])]))
    return {"run_share": float(np.mean(runs)), "distinct": float(np.mean(distinct)),
            "length": float(np.mean(lengths)),
            "cross_distance": float(np.mean(dists)) if dists else float("nan"),
            "empty": float(sum(1 for x in lengths if x == 0)), "samples": float(n)}


def compare_streams(generated: Sequence, references: Sequence, langs: Sequence[str] | None = None,
                    texts: Sequence[str] | None = None) -> dict[str, float]:
    """Stream figures of generations and of their references, and their ratios.

    Returns:
        ``{figure: generated value, f"ref_{figure}": reference value, "length_ratio",
        "empty", "samples"}`` for the figures of :data:`FIGURES`; ``length_ratio`` is the
        generated mean length over the reference mean length.
    Raises:
        ValueError: different numbers of generations and references (and see
            :func:`stream_figures`).
    """
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generations but {len(references)} references")
    gen = stream_figures(generated, langs, texts)
    ref = stream_figures(references, langs, texts)
    out = {k: gen[k] for k in FIGURES}
    out.update({f"ref_{k}": ref[k] for k in FIGURES})
    out["length_ratio"] = gen["length"] / ref["length"] if ref["length"] else float("nan")
    out["empty"], out["samples"] = gen["empty"], gen["samples"]
    return out


def signing_score(sibleu: float, figures: Mapping[str, float]) -> float:
    """SiBLEU gated by how much the generations vary with their input (the fleet's ranking).

    ``sibleu * min(1, cross_distance / ref_cross_distance) * min(1, distinct / ref_distinct)
    * (1 - empty / samples)``: a generator that gives every text the same stream, or repeats
    one token, scores near 0 whatever its SiBLEU; one that varies as much as the references
    keeps its SiBLEU. Figures from :func:`compare_streams`; NaN ratios count as 0.
    """
    def ratio(a: str, b: str) -> float:
        num, den = figures.get(a, float("nan")), figures.get(b, float("nan"))
        r = num / den if den and den == den and num == num else 0.0
        return float(min(1.0, max(0.0, r)))

    live = 1.0 - figures.get("empty", 0.0) / max(figures.get("samples", 1.0), 1.0)
    return float(sibleu * ratio("cross_distance", "ref_cross_distance")
                 * ratio("distinct", "ref_distinct") * live)
