"""Retrieval recall (R@k) for SiCLIP (paper 3.4, 4; docs/design.md#siclip).

Convention: ``similarity[i, j]`` scores sign ``i`` against text ``j`` and the correct pairs are the
diagonal. Sign-to-text ranks row ``i`` against all texts, text-to-sign ranks column ``j``.

Ties are handled deterministically and pessimistically: every *other* candidate whose score is
greater than **or equal to** the correct one's ranks ahead of it,

    rank(i) = 1 + #{j != i : s[i, j] >= s[i, i]},

so a model that gives every candidate the same score gets rank N for every query (R@1 = 0 for
N > 1, never chance-by-luck), and the result does not depend on the order of the candidates.

Several correct candidates (the same sentence occurring twice in a test set) can be declared with
``positives``: the query's rank is then that of its best-scoring positive among the negatives,
``rank(i) = 1 + #{j not positive : s[i, j] >= max_{p positive} s[i, p]}``.

Two protocols: over the full set (every query against every candidate), and the released one —
the set cut, in its stored order (unshuffled), into consecutive batches of 45, each query ranked
only against the candidates of its own batch. The last batch keeps whatever is left
(``drop_last=False``, like an unshuffled test loader); R@k pools all queries of all batches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["RELEASED_BATCH_SIZE", "retrieval_ranks", "recall_at_k", "retrieval_metrics",
           "chance_recall_at_k"]

#: the released evaluation's test batch size (docs/design.md#siclip)
RELEASED_BATCH_SIZE = 45


def _check_square(similarity) -> np.ndarray:
    if hasattr(similarity, "detach"):
        similarity = similarity.detach().float().cpu().numpy()
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be a square [N, N] matrix, got shape {sim.shape}")
    if sim.shape[0] == 0:
        raise ValueError("similarity matrix is empty: no pairs to retrieve")
    if not np.isfinite(sim).all():
        raise ValueError("similarity matrix contains NaN or infinite scores")
    return sim


def _check_positives(positives, n: int) -> np.ndarray:
    if positives is None:
        return np.eye(n, dtype=bool)
    if hasattr(positives, "detach"):
        positives = positives.detach().cpu().numpy()
    pos = np.asarray(positives, dtype=bool)
    if pos.shape != (n, n) or not np.diagonal(pos).all():
        raise ValueError(f"positives must be a bool [{n}, {n}] matrix with a True diagonal")
    return pos


def retrieval_ranks(similarity, positives=None) -> np.ndarray:
    """1-based rank of the correct candidate for each row query.

    Args:
        similarity: ``[N, N]`` scores (numpy or torch), row = query, column = candidate.
        positives: optional bool ``[N, N]`` (True diagonal): all correct candidates of each row;
            None means the diagonal only.

    Returns:
        int64 ``[N]`` ranks in ``1..N``, ties counted against the correct candidate.

    Raises:
        ValueError: not square, empty, non-finite scores, or a malformed ``positives``.
    """
    sim = _check_square(similarity)
    pos = _check_positives(positives, sim.shape[0])
    best = np.where(pos, sim, -np.inf).max(axis=1, keepdims=True)
    return (1 + ((sim >= best) & ~pos).sum(axis=1)).astype(np.int64)


def recall_at_k(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"R@k": percent of queries whose rank <= k}`` for each k.

    Raises:
        ValueError: no ranks, or a k below 1.
    """
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks: recall is undefined for an empty set")
    if min(ks) < 1:
        raise ValueError(f"k must be >= 1, got {list(ks)}")
    return {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}


def retrieval_metrics(
    similarity,
    batch_size: int | None = None,
    ks: Sequence[int] = (1, 5, 10),
    positives=None,
) -> dict[str, dict[str, float]]:
    """Sign-to-text and text-to-sign R@k over the full set or in consecutive batches.

    Args:
        similarity: ``[N, N]`` sign-by-text scores (numpy or torch), correct pairs on the diagonal,
            rows in the test set's stored order.
        batch_size: None for the full set; 45 for the released protocol (consecutive, unshuffled
            batches; the last one may be smaller).
        ks: recall cut-offs.
        positives: optional bool ``[N, N]`` of correct pairs (see :func:`retrieval_ranks`).

    Returns:
        ``{"sign_to_text": {"R@1": %, "R@5": %, "R@10": %}, "text_to_sign": {...}}`` in percent.

    Raises:
        ValueError: not square, empty, non-finite scores, ``batch_size < 1``, a bad k, or a
            malformed ``positives``.
    """
    sim = _check_square(similarity)
    n = sim.shape[0]
    pos = _check_positives(positives, n)
    if batch_size is None:
        batch_size = n
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    s2t, t2s = [], []
    for start in range(0, n, batch_size):
        cut = slice(start, start + batch_size)
        s2t.append(retrieval_ranks(sim[cut, cut], pos[cut, cut]))
        t2s.append(retrieval_ranks(sim[cut, cut].T, pos[cut, cut].T))
    return {
        "sign_to_text": recall_at_k(np.concatenate(s2t), ks),
        "text_to_sign": recall_at_k(np.concatenate(t2s), ks),
    }


def chance_recall_at_k(positives, k: int) -> float:
    """Expected R@k (%) of a uniformly random ranking, the baseline to report beside R@k.

    A query with ``p`` correct among ``n`` candidates misses the top k when its first k
    candidates are all negatives: ``P(rank <= k) = 1 - prod_{i<k} (n - p - i) / (n - i)``.

    Args:
        positives: bool ``[N, N]`` with a True diagonal (e.g. identical texts), or an int N for
            one correct candidate per query.

    Raises:
        ValueError: a malformed ``positives`` or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(positives, (int, np.integer)):
        positives = np.eye(int(positives), dtype=bool)
    pos = np.asarray(positives, dtype=bool)
    n = pos.shape[0]
    pos = _check_positives(pos, n)
    hit = []
    for p in pos.sum(axis=1):
        miss = np.prod([(n - p - i) / (n - i) for i in range(k)]) if n - p >= k else 0.0
        hit.append(1.0 - miss)
    return float(100.0 * np.mean(hit))
