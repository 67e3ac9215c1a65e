"""DTW-JPE against a naive recursion, hand-computed cases and dtw-python."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from madis.metrics import dtw_jpe, dtw_jpe_batch


def naive_dtw_jpe(gen, ref, align_index=0, joints=None):
    """The definition, written out: per-pair translation, mean joint distance, symmetric DTW."""
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    idx = range(gen.shape[1]) if joints is None else joints
    t1, t2 = len(gen), len(ref)
    acc = [[0.0] * t2 for _ in range(t1)]
    for i in range(t1):
        for j in range(t2):
            shift = ref[j, align_index] - gen[i, align_index]
            dist = [math.dist(gen[i, k] + shift, ref[j, k]) for k in idx]
            cost = sum(dist) / len(dist)
            if i == 0 and j == 0:
                acc[i][j] = cost
            elif i == 0:
                acc[i][j] = cost + acc[i][j - 1]
            elif j == 0:
                acc[i][j] = cost + acc[i - 1][j]
            else:
                acc[i][j] = cost + min(acc[i - 1][j], acc[i][j - 1], acc[i - 1][j - 1])
    return acc[-1][-1]


def _chain(rel_x):
    """Two-joint frames: joint 0 at a random place, joint 1 at ``+ (x, 0, 0)`` from it."""
    rng = np.random.default_rng(len(rel_x))
    root = rng.normal(size=(len(rel_x), 3))
    out = np.stack([root, root + np.array([[x, 0.0, 0.0] for x in rel_x])], axis=1)
    return out


def test_hand_computed_3x3():
    # relative offsets a = [0, 1, 2], b = [0, 2, 2]: costs |a_i - b_j| =
    # [[0,2,2],[1,1,1],[2,0,0]] -> D rows [0,2,4], [1,1,2], [3,1,1] -> D[2,2] = 1 (path length 4,
    # so a normalised score would be 0.25: the convention is the raw sum)
    gen, ref = _chain([0.0, 1.0, 2.0]), _chain([0.0, 2.0, 2.0])
    assert dtw_jpe(gen, ref, align_index=0, joints=[1]) == pytest.approx(1.0, abs=1e-12)
    # swapping roles transposes the cost matrix; symmetric steps give the same total
    assert dtw_jpe(ref, gen, align_index=0, joints=[1]) == pytest.approx(1.0, abs=1e-12)


def test_hand_computed_mean_over_joints_and_translation():
    # joint 1 at (3, 4, 0) from the root vs at the root: distance 5; joint 2 identical: 0.
    # mean over joints [1, 2] = 2.5 per frame pair; 3x3 all-equal costs -> cheapest path is
    # the diagonal with 3 cells: 7.5. Each frame sits at a different global position, which
    # the per-pair alignment must remove.
    rng = np.random.default_rng(0)
    gen = np.zeros((3, 3, 3))
    gen[:, 1] = [3.0, 4.0, 0.0]
    gen[:, 2] = [1.0, 1.0, 1.0]
    ref = np.zeros((3, 3, 3))
    ref[:, 2] = [1.0, 1.0, 1.0]
    gen += rng.normal(size=(3, 1, 3)) * 10
    ref += rng.normal(size=(3, 1, 3)) * 10
    assert dtw_jpe(gen, ref, 0, [1, 2]) == pytest.approx(7.5, abs=1e-12)
    # all joints (the aligned root adds a zero term): (5 + 0 + 0) / 3 per pair, 3 diagonal cells
    assert dtw_jpe(gen, ref) == pytest.approx(5.0, abs=1e-12)


def test_warped_copy_costs_zero():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(6, 4, 3))
    gen = ref[[0, 0, 1, 2, 2, 2, 3, 4, 5, 5]]
    assert dtw_jpe(gen, ref) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_matches_naive_recursion(seed):
    rng = np.random.default_rng(seed)
    t1, t2, n_joints = rng.integers(1, 14), rng.integers(1, 14), rng.integers(2, 7)
    gen, ref = rng.normal(size=(t1, n_joints, 3)), rng.normal(size=(t2, n_joints, 3))
    align = int(rng.integers(n_joints))
    joints = sorted(rng.choice(n_joints, size=rng.integers(1, n_joints + 1), replace=False))
    expected = naive_dtw_jpe(gen, ref, align, joints)
    assert abs(dtw_jpe(gen, ref, align, joints) - expected) < 1e-9
    assert abs(dtw_jpe(gen, ref, align) - naive_dtw_jpe(gen, ref, align)) < 1e-9


def test_batch_equals_single_calls_and_float32_is_close():
    rng = np.random.default_rng(2)
    gens = [rng.normal(size=(rng.integers(3, 30), 5, 3)) for _ in range(9)]
    refs = [rng.normal(size=(rng.integers(3, 30), 5, 3)) for _ in range(9)]
    batch = dtw_jpe_batch(gens, refs, 0, [1, 2, 3, 4])
    single = [naive_dtw_jpe(g, r, 0, [1, 2, 3, 4]) for g, r in zip(gens, refs)]
    np.testing.assert_allclose(batch, single, rtol=0, atol=1e-9)
    # float32 inputs take the float32-distance path: within float32 rounding of the exact value
    batch32 = dtw_jpe_batch([g.astype(np.float32) for g in gens],
                            [r.astype(np.float32) for r in refs], 0, [1, 2, 3, 4])
    np.testing.assert_allclose(batch32, single, rtol=1e-5)
    assert not np.array_equal(batch32, batch)  # it really is a different path


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(3)
    gen, ref = rng.normal(size=(11, 21, 3)), rng.normal(size=(8, 21, 3))
    expected = naive_dtw_jpe(gen, ref)
    assert abs(dtw_jpe(torch.from_numpy(gen), torch.from_numpy(ref)) - expected) < 1e-9
    assert abs(dtw_jpe(torch.from_numpy(gen), ref) - expected) < 1e-9
    got32 = dtw_jpe(torch.from_numpy(gen).float(), torch.from_numpy(ref).float())
    assert got32 == pytest.approx(expected, rel=1e-5)
    got16 = dtw_jpe(torch.from_numpy(gen).half(), torch.from_numpy(ref).half())
    assert got16 == pytest.approx(expected, rel=1e-2)


def test_matches_dtw_python_on_precomputed_cost():
    dtw_lib = pytest.importorskip("dtw")
    rng = np.random.default_rng(4)
    gen, ref = rng.normal(size=(37, 13, 3)), rng.normal(size=(52, 13, 3))
    cost_joints = list(range(1, 13))
    g_rel = gen[:, cost_joints] - gen[:, :1]
    r_rel = ref[:, cost_joints] - ref[:, :1]
    cost = np.linalg.norm(g_rel[:, None] - r_rel[None], axis=-1).mean(-1)  # [T1, T2]
    expected = dtw_lib.dtw(cost, step_pattern="symmetric1", distance_only=True).distance
    assert abs(dtw_jpe(gen, ref, 0, cost_joints) - expected) < 1e-9


@pytest.mark.parametrize(
    "gen, ref, kwargs, match",
    [
        (np.zeros((0, 2, 3)), np.zeros((3, 2, 3)), {}, "empty sequence"),
        (np.zeros((3, 2)), np.zeros((3, 2, 3)), {}, r"\[T, J, 3\]"),
        (np.full((3, 2, 3), np.nan), np.zeros((3, 2, 3)), {}, "NaN"),
        (np.zeros((3, 2, 3)), np.zeros((3, 4, 3)), {}, "joints"),
        (np.zeros((3, 2, 3)), np.zeros((3, 2, 3)), {"align_index": 5}, "align_index"),
        (np.zeros((3, 2, 3)), np.zeros((3, 2, 3)), {"joints": [7]}, "out of range"),
        (np.zeros((3, 2, 3)), np.zeros((3, 2, 3)), {"joints": []}, "empty"),
        (np.zeros((3, 2, 3)), np.zeros((3, 2, 3)), {"precision": "half"}, "precision"),
    ],
)
def test_bad_input_raises(gen, ref, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dtw_jpe(gen, ref, **kwargs)


def test_batch_bad_input_raises():
    with pytest.raises(ValueError, match="no sequence pairs"):
        dtw_jpe_batch([], [])
    with pytest.raises(ValueError, match="2 generated sequences but 1"):
        dtw_jpe_batch([np.zeros((2, 2, 3))] * 2, [np.zeros((2, 2, 3))])
