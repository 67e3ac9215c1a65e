"""DTW-JPE: dynamic time warping over joint position errors (paper 4, docs/design.md#dtw-jpe).

Convention of the released SOKE/MaDiS evaluation, so numbers compare with the paper's tables:

* every generated frame is translated so that its alignment joint (pelvis for the body, the wrist
  for a hand) lands on the alignment joint of the reference frame it is compared with — the
  translation is per frame *pair*, which is the same as comparing joints relative to their own
  frame's alignment joint;
* local cost of frames (a, b) = mean over the cost joints of the Euclidean distance (in the motion
  format's units, metres for SMPL-X);
* exact DTW, symmetric step with unit weights:
  ``D[a, b] = c(a, b) + min(D[a-1, b], D[a, b-1], D[a-1, b-1])``, ``D[0, 0] = c(0, 0)``;
* the score is the accumulated cost ``D[T1-1, T2-1]`` — not divided by the path length.

The recursion runs row by row in a numba-compiled kernel with the local cost fused in (no
``T1 x T2`` cost matrix is ever stored) and a parallel loop over (sequence, part) pairs, so a whole
test set is one call per joint layout.

Precision: the per-joint distances are computed in the inputs' precision — float64 when any input
is float64, float32 otherwise (float16 shards and float32 model outputs carry no more than that) —
and the DTW accumulation is always float64. The square roots dominate the run time and float32 ones
are about three times faster; ``precision="float64"`` forces the exact path.
"""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

__all__ = ["dtw_jpe", "dtw_jpe_batch"]


def _as_numpy(x, name: str) -> np.ndarray:
    """numpy/torch ``[T, J, 3]`` -> numpy (float64 stays float64, other dtypes become float32)."""
    if hasattr(x, "detach"):  # torch tensor, on any device
        x = x.detach().cpu()
        x = x.numpy() if x.dtype.is_floating_point and x.dtype.itemsize == 8 else x.float().numpy()
    arr = np.asarray(x)
    if arr.dtype != np.float64:
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name}: expected joint positions [T, J, 3], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: empty sequence (0 frames); DTW-JPE is undefined")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: no joints")
    return arr


def _stack(seqs: list[np.ndarray], dtype, side: str) -> np.ndarray:
    """All sequences of one side stacked along time, ``[sum T, J, 3]`` in ``dtype``."""
    flat = np.concatenate(seqs, axis=0).astype(dtype, copy=False)
    if not np.isfinite(flat).all():
        bad = next(p for p, s in enumerate(seqs) if not np.isfinite(s).all())
        raise ValueError(f"{side}[{bad}]: contains NaN or infinite joint positions")
    return flat


@numba.njit(parallel=True, cache=True, nogil=True)
def _dtw_kernel(gen, gen_start, ref, ref_start, align, cost_idx, out):  # pragma: no cover - JIT
    """Accumulated DTW cost of each pair p (the whole computation, parallel over pairs).

    gen: [sum T1, J, 3] generated joints of all pairs stacked along time; ref: [sum T2, J, 3];
    *_start: [P + 1] frame offsets of each pair; align: alignment joint; cost_idx: [K] cost joints.
    """
    n_pairs = out.shape[0]
    n_cost = cost_idx.shape[0]
    inv_k = 1.0 / n_cost
    for p in numba.prange(n_pairs):
        g0 = gen_start[p]
        t1 = gen_start[p + 1] - g0
        r0 = ref_start[p]
        t2 = ref_start[p + 1] - r0
        # reference joints relative to their frame's alignment joint, one row per coordinate so
        # that the innermost loop below runs over contiguous reference frames and vectorises
        ref_rel = np.empty((3 * n_cost, t2), dtype=gen.dtype)
        for j in range(t2):
            for k in range(n_cost):
                for d in range(3):
                    ref_rel[3 * k + d, j] = ref[r0 + j, cost_idx[k], d] - ref[r0 + j, align, d]
        cost = np.empty(t2, dtype=gen.dtype)
        prev = np.empty(t2)
        cur = np.empty(t2)
        for i in range(t1):
            cost[:] = 0.0
            for k in range(n_cost):
                gx = gen[g0 + i, cost_idx[k], 0] - gen[g0 + i, align, 0]
                gy = gen[g0 + i, cost_idx[k], 1] - gen[g0 + i, align, 1]
                gz = gen[g0 + i, cost_idx[k], 2] - gen[g0 + i, align, 2]
                rx = ref_rel[3 * k]
                ry = ref_rel[3 * k + 1]
                rz = ref_rel[3 * k + 2]
                for j in range(t2):
                    dx = gx - rx[j]
                    dy = gy - ry[j]
                    dz = gz - rz[j]
                    cost[j] += np.sqrt(dx * dx + dy * dy + dz * dz)
            if i == 0:
                acc = 0.0
                for j in range(t2):
                    acc += cost[j] * inv_k
                    cur[j] = acc
            else:
                cur[0] = prev[0] + cost[0] * inv_k
                for j in range(1, t2):
                    best = prev[j - 1]
                    if prev[j] < best:
                        best = prev[j]
                    if cur[j - 1] < best:
                        best = cur[j - 1]
                    cur[j] = cost[j] * inv_k + best
            prev, cur = cur, prev
        out[p] = prev[t2 - 1]


def dtw_jpe_batch(
    generated: Sequence,
    references: Sequence,
    align_index: int = 0,
    joints: Sequence[int] | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """DTW-JPE of many (generated, reference) pairs sharing one joint layout, in one parallel call.

    Args:
        generated: sequence of ``[T1_p, J, 3]`` joint arrays (numpy or torch).
        references: sequence of ``[T2_p, J, 3]`` joint arrays, same length as ``generated``.
        align_index: alignment joint (translated onto the reference frame's, per frame pair).
        joints: joints averaged in the local cost; all ``J`` when None.
        precision: ``"auto"`` (float64 when any input is float64, else float32), ``"float32"`` or
            ``"float64"``: the precision of the per-joint distances (the DTW sum is float64).

    Returns:
        float64 ``[P]``: accumulated DTW cost of each pair, in the joints' units (not divided by
        the path length).

    Raises:
        ValueError: different numbers of sequences, no pairs, mismatched joint counts, an empty
            sequence, non-finite values, an index out of range, or an unknown precision.
    """
    if len(generated) != len(references):
        raise ValueError(
            f"{len(generated)} generated sequences but {len(references)} references"
        )
    if len(generated) == 0:
        raise ValueError("no sequence pairs to compare")
    gen = [_as_numpy(g, f"generated[{p}]") for p, g in enumerate(generated)]
    ref = [_as_numpy(r, f"reference[{p}]") for p, r in enumerate(references)]
    n_joints = gen[0].shape[1]
    for p, (g, r) in enumerate(zip(gen, ref)):
        if g.shape[1] != n_joints or r.shape[1] != n_joints:
            raise ValueError(f"pair {p}: generated has {g.shape[1]} joints, reference "
                             f"{r.shape[1]}; every sequence of a batch needs {n_joints}")
    if precision == "auto":
        precision = "float64" if any(a.dtype == np.float64 for a in gen + ref) else "float32"
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'float64', got {precision!r}")
    if not -n_joints <= align_index < n_joints:
        raise ValueError(f"align_index {align_index} out of range for {n_joints} joints")
    idx = np.arange(n_joints) if joints is None else np.asarray(list(joints), dtype=np.int64)
    if idx.size == 0:
        raise ValueError("the cost joint list is empty")
    if idx.min() < -n_joints or idx.max() >= n_joints:
        raise ValueError(f"cost joint index out of range for {n_joints} joints: {idx.tolist()}")
    gen_flat = _stack(gen, precision, "generated")
    ref_flat = _stack(ref, precision, "reference")
    gen_start = np.concatenate([[0], np.cumsum([len(g) for g in gen])]).astype(np.int64)
    ref_start = np.concatenate([[0], np.cumsum([len(r) for r in ref])]).astype(np.int64)
    align = align_index % n_joints
    idx = idx % n_joints
    out = np.empty(len(gen), dtype=np.float64)
    # Pairs differ in size (200..400 reference frames): hand them out one at a time so neither
    # core sits idle behind a static half of the list.
    old_chunk = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(1)
    try:
        _dtw_kernel(gen_flat, gen_start, ref_flat, ref_start, align, idx, out)
    finally:
        numba.set_parallel_chunksize(old_chunk)
    return out


def dtw_jpe(
    generated,
    reference,
    align_index: int = 0,
    joints: Sequence[int] | None = None,
    precision: str = "auto",
) -> float:
    """DTW-JPE of one generated sequence against its reference (paper 4, docs/design.md#dtw-jpe).

    Each generated frame is translated so that its joint ``align_index`` lands on the reference
    frame's (per frame pair); the local cost is the mean Euclidean distance over ``joints``; the
    result is the accumulated cost of exact DTW with the symmetric step and unit weights.

    Args:
        generated: ``[T1, J, 3]`` joint positions (numpy or torch).
        reference: ``[T2, J, 3]`` joint positions (numpy or torch), same ``J``.
        align_index: alignment joint (pelvis = 0 for the body, wrist = 0 for a hand).
        joints: joints averaged in the local cost; all ``J`` when None.
        precision: see :func:`dtw_jpe_batch` (float64 inputs give the exact float64 path).

    Returns:
        The accumulated cost ``D[T1-1, T2-1]`` in the joints' units (metres for SMPL-X).

    Raises:
        ValueError: see :func:`dtw_jpe_batch`.
    """
    return float(dtw_jpe_batch([generated], [reference], align_index, joints, precision)[0])
