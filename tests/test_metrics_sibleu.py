"""SiBLEU: equal to sacrebleu on the ids written as words, and to a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from madis.metrics import part_sibleu, sibleu, token_streams


def test_hand_computed_single_sentence():
    # hyp 1 2 3 4 5 vs ref 1 2 3 4 6: matches 4/5, 3/4, 2/3, 1/2 n-grams, equal length (BP = 1)
    expected = 100 * math.exp(sum(math.log(p) for p in (4 / 5, 3 / 4, 2 / 3, 1 / 2)) / 4)
    assert sibleu([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 6]]) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(66.874, abs=1e-3)
    # BLEU-1: unigram precision 4/5 with BP 1
    assert sibleu([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 6]], max_order=1) == pytest.approx(80.0)


def test_hand_computed_brevity_penalty():
    # hyp 7 8 9 10 (4 ids) vs ref twice that (8): all n-gram precisions 1, BP = exp(1 - 8/4)
    hyp, ref = [7, 8, 9, 10], [7, 8, 9, 10] * 2
    assert sibleu([hyp], [ref]) == pytest.approx(100 * math.exp(-1.0), abs=1e-9)
    # a 3-id hypothesis has no 4-gram at all: BLEU-4 is 0 (sacrebleu's rule)
    assert sibleu([hyp[:3]], [ref]) == 0.0


def test_equals_sacrebleu_corpus_on_known_strings():
    hyp = [[12, 5, 5, 40, 3, 3, 9], [1, 2, 3], [], [100, 101, 102, 103, 104, 105]]
    ref = [[12, 5, 40, 3, 3, 9, 9], [1, 2, 3, 4], [8, 8], [100, 101, 102, 0, 104, 105]]
    hyp_s = ["12 5 5 40 3 3 9", "1 2 3", "", "100 101 102 103 104 105"]
    ref_s = ["12 5 40 3 3 9 9", "1 2 3 4", "8 8", "100 101 102 0 104 105"]
    for order in (1, 2, 4):
        expected = sacrebleu.corpus_bleu(hyp_s, [ref_s], tokenize="none")
        if order != 4:
            expected = sacrebleu.metrics.BLEU(tokenize="none", max_ngram_order=order).corpus_score(
                hyp_s, [ref_s]
            )
        assert sibleu(hyp, ref, max_order=order) == pytest.approx(expected.score, abs=1e-12)
    # corpus level, not the mean of sentence scores
    sentence_mean = np.mean([sibleu([h], [r]) for h, r in zip(hyp, ref)])
    assert abs(sibleu(hyp, ref) - sentence_mean) > 1.0


def test_ids_are_words_not_digits():
    # 12 vs 1 2: with tokenize='none' and ids as words these share no unigram
    assert sibleu([[12]], [[1, 2]], max_order=1) == 0.0


def test_part_sibleu_hands_is_mean_of_two_hands():
    gen = [np.array([[1, 10, 20], [2, 11, 21], [3, 12, 29], [-1, -1, -1]])]
    ref = [np.array([[1, 10, 20], [2, 11, 21], [3, 19, 22]])]
    got = part_sibleu(gen, ref, max_order=1)
    assert got["body"] == pytest.approx(100.0)
    assert got["hands"] == pytest.approx((100 * 2 / 3 + 100 * 2 / 3) / 2)
    assert token_streams(gen[0])["rhand"] == [20, 21, 29]  # padding dropped


@pytest.mark.parametrize(
    "hyp, ref, kw, match",
    [
        ([[1]], [], {}, "1 hypotheses but 0"),
        ([], [], {}, "at least one"),
        ([[1, -2]], [[1]], {}, "non-negative"),
        ([[1.5]], [[1]], {}, "integers"),
        ([[1]], [[1]], {"max_order": 0}, "max_order"),
    ],
)
def test_bad_input_raises(hyp, ref, kw, match):
    with pytest.raises(ValueError, match=match):
        sibleu(hyp, ref, **kw)
