"""Stream figures (madis.metrics.streams): a held pose and an input-blind generator lose."""

from __future__ import annotations

import numpy as np
import pytest

from madis.metrics.streams import (
    compare_streams,
    distinct_share,
    run_share,
    signing_score,
    stream_figures,
)


def _tok(*parts):
    return np.stack([np.asarray(p) for p in parts], 1)


def test_run_and_distinct_of_single_streams():
    assert run_share(np.array([5, 5, 5, 5])) == 1.0
    assert run_share(np.array([1, 2, 2, 2, 3, 1])) == pytest.approx(3 / 6)
    assert run_share(np.array([], int)) == 1.0
    assert distinct_share(np.array([1, 2, 2, 3])) == pytest.approx(3 / 4)
    assert distinct_share(np.array([], int)) == 0.0


def test_figures_average_over_parts_and_samples():
    a = _tok([1, 1, 1, 1], [1, 2, 3, 4], [1, 1, 2, 2])  # runs 1, .25, .5; distinct .25, 1, .5
    fig = stream_figures([a])
    assert fig["run_share"] == pytest.approx((1 + 0.25 + 0.5) / 3)
    assert fig["distinct"] == pytest.approx((0.25 + 1 + 0.5) / 3)
    assert fig["length"] == 4 and fig["empty"] == 0
    assert np.isnan(fig["cross_distance"])  # one sample: no pair


def test_padding_and_empty_generations():
    padded = np.array([[1, 2, 3], [4, 5, 6], [-1, -1, -1]])
    empty = np.zeros((0, 3), int)
    fig = stream_figures([padded, empty], ["x", "x"], ["A", "B"])
    assert fig["length"] == pytest.approx(1.0) and fig["empty"] == 1
    # an empty stream against a 2-long one: every token must be inserted
    assert fig["cross_distance"] == pytest.approx(1.0)


def test_cross_distance_is_within_language_and_skips_equal_texts():
    x = _tok([1, 2, 3], [1, 2, 3], [1, 2, 3])
    y = _tok([7, 8, 9], [7, 8, 9], [7, 8, 9])
    # same language, different texts: fully different streams
    assert stream_figures([x, y], ["a", "a"], ["P", "Q"])["cross_distance"] == 1.0
    # different languages are not compared; the same text twice is not a pair
    assert np.isnan(stream_figures([x, y], ["a", "b"], ["P", "Q"])["cross_distance"])
    assert np.isnan(stream_figures([x, y], ["a", "a"], ["P", "P"])["cross_distance"])


def test_a_collapsed_generator_scores_zero_a_faithful_one_keeps_sibleu():
    rng = np.random.default_rng(0)
    refs = [rng.integers(0, 20, size=(12, 3)) for _ in range(6)]
    langs, texts = ["ase"] * 6, [f"W{i}" for i in range(6)]
    held = [np.full((12, 3), 7) for _ in refs]  # one pose for every text
    collapsed = compare_streams(held, refs, langs, texts)
    assert collapsed["run_share"] == 1.0 and collapsed["cross_distance"] == 0.0
    assert signing_score(40.0, collapsed) == 0.0
    faithful = compare_streams(refs, refs, langs, texts)
    assert faithful["length_ratio"] == 1.0
    assert signing_score(40.0, faithful) == pytest.approx(40.0)
    # half the variety of the references: half the score (distinct ratio 0.5 gates it)
    half = [np.repeat(r[::2], 2, axis=0) for r in refs]
    part = compare_streams(half, refs, langs, texts)
    assert 0.0 < signing_score(40.0, part) < 40.0


def test_empty_generations_gate_the_score():
    refs = [np.arange(12).reshape(4, 3) + i for i in range(4)]
    gens = refs[:2] + [np.zeros((0, 3), int)] * 2
    fig = compare_streams(gens, refs, ["a"] * 4, list("ABCD"))
    assert fig["empty"] == 2
    assert signing_score(10.0, fig) <= 10.0 * 0.5 + 1e-9


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        stream_figures([])
    with pytest.raises(ValueError, match="langs"):
        stream_figures([np.zeros((2, 3), int)], ["a", "b"])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        stream_figures([np.zeros((2, 2), int)])
    with pytest.raises(ValueError, match="references"):
        compare_streams([np.zeros((2, 3), int)], [])
