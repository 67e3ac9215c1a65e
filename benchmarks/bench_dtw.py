"""DTW-JPE speed: ours against three baselines, measured in one process (issue 5,
docs/design.md#dtw-jpe).

Workload: ``--pairs`` (1,000) pairs of a 400-frame generated sequence against a reference of 200 to
400 frames, full DTW-JPE: body (13 joints: the alignment joint + 12 in the cost, as ``smplx133``)
and both hands (21 points, wrist-aligned). Joints are smooth random walks in metres, float32 (what
SMPL-X forward kinematics returns).

* ours: :func:`madis.metrics.dtw_jpe_batch` (numba, row-wise recursion with the cost fused in,
  parallel over pairs), all pairs; its float64 path too.
* naive: the cost matrix by numpy, the DTW recursion in pure Python; on ``--naive-pairs``,
  extrapolated to all pairs.
* anti-diagonal torch: cost matrices by torch, then the batched recursion over anti-diagonals
  (one ``torch.minimum`` over the three predecessors per anti-diagonal), the scheme of the paper's
  released evaluation, rebuilt from its description; on ``--torch-pairs`` (all with ``--full``),
  extrapolated.
* dtw-python: the maintained library (C core, ``symmetric1`` step) on a numpy cost matrix; on
  ``--lib-pairs``, extrapolated.

Every baseline's scores are checked against ours on its subset. Run::

    .venv/bin/python benchmarks/bench_dtw.py            # about a minute on 2 cores
    .venv/bin/python benchmarks/bench_dtw.py --full     # the torch baseline on all pairs (minutes)
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from madis.metrics import dtw_jpe_batch

BODY_JOINTS, HAND_JOINTS = 13, 21
BODY_COST = list(range(1, BODY_JOINTS))


def make_pairs(n_pairs: int, seed: int = 0):
    """``n_pairs`` of (generated [400, J, 3], reference [200..400, J, 3]) per part, float32 metres."""
    rng = np.random.default_rng(seed)

    def walk(frames, joints):
        steps = rng.normal(0.0, 0.01, size=(frames, joints, 3))
        return (np.cumsum(steps, axis=0) + rng.normal(0.0, 0.2, size=(1, joints, 3))).astype(np.float32)

    parts = {"body": ([], []), "lhand": ([], []), "rhand": ([], [])}
    for _ in range(n_pairs):
        t2 = int(rng.integers(200, 401))
        for part, (gen, ref) in parts.items():
            joints = BODY_JOINTS if part == "body" else HAND_JOINTS
            gen.append(walk(400, joints))
            ref.append(walk(t2, joints))
    return parts


def _layouts(parts, n):
    """(generated, references, cost joints) per part, first ``n`` pairs."""
    for part, (gen, ref) in parts.items():
        yield gen[:n], ref[:n], (BODY_COST if part == "body" else None)


def ours(parts, n, precision="auto"):
    out = []
    for gen, ref, cost in _layouts(parts, n):
        out.append(dtw_jpe_batch(gen, ref, align_index=0, joints=cost, precision=precision))
    return np.stack(out)


def _rel(x, cost):
    idx = list(range(x.shape[1])) if cost is None else cost
    return x[:, idx] - x[:, :1]


def naive(parts, n):
    out = np.zeros((3, n))
    for p, (gen, ref, cost) in enumerate(_layouts(parts, n)):
        for k in range(n):
            g, r = _rel(gen[k].astype(np.float64), cost), _rel(ref[k].astype(np.float64), cost)
            c = np.linalg.norm(g[:, None] - r[None], axis=-1).mean(-1).tolist()
            t1, t2 = len(c), len(c[0])
            prev = [0.0] * t2
            for i in range(t1):
                row, ci = [0.0] * t2, c[i]
                for j in range(t2):
                    if i == 0:
                        row[j] = ci[j] + (row[j - 1] if j else 0.0)
                    elif j == 0:
                        row[j] = ci[j] + prev[j]
                    else:
                        row[j] = ci[j] + min(prev[j], row[j - 1], prev[j - 1])
                prev = row
            out[p, k] = prev[-1]
    return out


def antidiagonal_torch(parts, n, chunk=10):
    """Batched anti-diagonal DTW in torch: pad references, one diagonal of ``chunk`` pairs at a time.

    ``chunk`` = 10 was the fastest of 10, 20, 60 on 2 cores (the accumulated-cost tensor of a
    larger chunk falls out of cache), so the baseline is measured at its best.
    """
    out = np.zeros((3, n))
    for p, (gen, ref, cost) in enumerate(_layouts(parts, n)):
        for s in range(0, n, chunk):
            g = torch.from_numpy(np.stack([_rel(x, cost) for x in gen[s : s + chunk]]))
            refs = [torch.from_numpy(_rel(x, cost)) for x in ref[s : s + chunk]]
            lens = torch.tensor([len(r) for r in refs])
            r = torch.nn.utils.rnn.pad_sequence(refs, batch_first=True)
            b, t1, k, _ = g.shape
            t2 = r.shape[1]
            c = torch.zeros(b, t1, t2)
            for j in range(k):  # per joint: keeps memory at [B, T1, T2]
                c += torch.cdist(g[:, :, j], r[:, :, j], compute_mode="donot_use_mm_for_euclid_dist")
            c /= k
            acc = torch.full((b, t1 + 1, t2 + 1), float("inf"))
            acc[:, 0, 0] = 0.0
            for d in range(2, t1 + t2 + 1):  # cells (i, j), 1-based, with i + j = d
                i = torch.arange(max(1, d - t2), min(t1, d - 1) + 1)
                jj = d - i
                best = torch.minimum(torch.minimum(acc[:, i - 1, jj], acc[:, i, jj - 1]),
                                     acc[:, i - 1, jj - 1])
                acc[:, i, jj] = c[:, i - 1, jj - 1] + best
            out[p, s : s + b] = acc[torch.arange(b), t1, lens].numpy()
    return out


def dtw_python(parts, n):
    import dtw

    out = np.zeros((3, n))
    for p, (gen, ref, cost) in enumerate(_layouts(parts, n)):
        for k in range(n):
            g, r = _rel(gen[k].astype(np.float64), cost), _rel(ref[k].astype(np.float64), cost)
            c = np.linalg.norm(g[:, None] - r[None], axis=-1).mean(-1)
            out[p, k] = dtw.dtw(c, step_pattern="symmetric1", distance_only=True).distance
    return out


def timed(fn, *args, **kw):
    """``(result, wall seconds, CPU seconds of all this process's threads)``."""
    t, c = time.perf_counter(), time.process_time()
    res = fn(*args, **kw)
    return res, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--naive-pairs", type=int, default=4)
    ap.add_argument("--torch-pairs", type=int, default=100)
    ap.add_argument("--lib-pairs", type=int, default=20)
    ap.add_argument("--torch-chunk", type=int, default=10, help="pairs per anti-diagonal batch")
    ap.add_argument("--full", action="store_true", help="anti-diagonal torch on all pairs")
    args = ap.parse_args()
    n = args.pairs
    torch_n = n if args.full else min(args.torch_pairs, n)
    print(f"load average before: {os.getloadavg()}, cores: {os.cpu_count()}, "
          f"torch threads: {torch.get_num_threads()}")
    parts = make_pairs(n)
    _, compile_s, _ = timed(ours, make_pairs(2, seed=1), 2)  # JIT compile (or load the cache)
    ours_scores, ours_s, ours_cpu = timed(ours, parts, n)
    _, ours64_s, ours64_cpu = timed(ours, parts, n, precision="float64")
    rows = [("ours (numba, float32 distances)", n, ours_s, ours_cpu),
            ("ours (numba, float64)", n, ours64_s, ours64_cpu)]
    baselines = [("naive Python recursion", naive, args.naive_pairs, {}),
                 ("anti-diagonal torch", antidiagonal_torch, torch_n, {"chunk": args.torch_chunk}),
                 ("dtw-python (C core)", dtw_python, args.lib_pairs, {})]
    for name, fn, m, kw in baselines:
        scores, s, cpu = timed(fn, parts, m, **kw)
        rel = np.abs(scores - ours_scores[:, :m]).max() / np.abs(ours_scores[:, :m]).max()
        rows.append((name, m, s, cpu))
        print(f"  {name}: max relative difference to ours on {m} pairs: {rel:.2e}")
    print(f"\nDTW-JPE, {n} pairs (400 vs 200-400 frames; body 12 + 2 hands x 21 joints); "
          f"ours' JIT compile/cache load: {compile_s:.2f} s")
    print("(wall: elapsed seconds; cpu: CPU seconds of all threads, less sensitive to other load)")
    print(f"{'method':34s} {'pairs run':>9s} {'wall s':>8s} {f'{n} pairs wall s':>16s} "
          f"{'x ours wall':>12s} {f'{n} pairs cpu s':>15s} {'x ours cpu':>11s}")
    for name, m, s, cpu in rows:
        full, full_cpu = s * n / m, cpu * n / m
        print(f"{name:34s} {m:9d} {s:8.2f} {full:16.2f} {full / ours_s:12.1f} {full_cpu:15.2f} "
              f"{full_cpu / ours_cpu:11.1f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
