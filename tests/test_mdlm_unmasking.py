"""UTC index masks, samplers, schedules and order counts
(docs/design.md#unmasking-orders-eq-6-7)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madis.mdlm import (
    llada_schedule,
    num_orders_utc,
    num_orders_vanilla,
    split_steps,
    truncate_at_eos,
    unmask,
    utc_index_mask,
    utc_schedule,
    utc_stage_of_positions,
    utc_strides,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINTS = [[0.75, 0.5], [0.75], [0.5], []]
F = math.factorial


def test_strides_and_stages():
    assert utc_strides([0.75, 0.5]) == [4, 2]
    assert utc_strides([0.875, 0.75, 0.5]) == [8, 4, 2]
    assert utc_stage_of_positions(9, [0.75, 0.5]).tolist() == [0, 2, 1, 2, 0, 2, 1, 2, 0]
    assert utc_stage_of_positions(5, [0.5]).tolist() == [0, 1, 0, 1, 0]
    assert utc_stage_of_positions(3, []).tolist() == [0, 0, 0]
    for bad in ([0.5, 0.75], [0.6], [1.0], [0.75, 0.6666666]):
        with pytest.raises(ValueError):
            utc_strides(bad)


def test_schedules():
    assert llada_schedule(100, 25) == [4] * 25
    assert llada_schedule(25, 6) == [5, 4, 4, 4, 4, 4]
    assert split_steps([25, 25, 50], 25) == [6, 6, 13]
    assert split_steps([25, 75], 25) == [6, 19]
    assert utc_schedule(100, 25, [0.75, 0.5]) == [[5, 4, 4, 4, 4, 4]] * 2 + [[4] * 11 + [3] * 2]
    assert utc_schedule(100, 25, []) == [[4] * 25]
    with pytest.raises(ValueError):
        split_steps([1, 1, 1], 2)


def test_order_counts_exact():
    vanilla = F(100) // F(4) ** 25
    assert num_orders_vanilla(100, 25) == vanilla
    stage12 = F(25) // (F(5) * F(4) ** 5)
    utc = stage12 * stage12 * (F(50) // (F(4) ** 11 * F(3) ** 2))
    assert num_orders_utc(100, 25) == utc
    assert num_orders_utc(100, 25, []) == vanilla
    assert 123 < math.log10(vanilla) < 124  # docs/design.md#unmasking-orders-eq-6-7: about 10^123.5
    ratio = math.log10(vanilla) - math.log10(utc)
    assert 43 < ratio < 44  # about 10^43 ("over 10^41")
    # the reduction is the multinomial N!/(n1! n2! n3!) times the schedules' factor (5!^2 3!^2 / 4!^4)
    multinomial = F(100) // (F(25) ** 2 * F(50))
    assert vanilla * F(4) ** 4 == utc * multinomial * F(5) ** 2 * F(3) ** 2


@pytest.mark.parametrize("checkpoints", CHECKPOINTS)
def test_index_mask_structure(checkpoints):
    g = torch.Generator().manual_seed(0)
    n = 40
    t = torch.rand(2000, generator=g) * 0.999 + 0.001
    m = utc_index_mask(t, n, checkpoints, generator=g)
    stage = utc_stage_of_positions(n, checkpoints)
    bounds = [1.0, *checkpoints, 0.0]
    for k in range(len(bounds) - 1):
        rows = (t <= bounds[k]) & (t > bounds[k + 1])
        assert m[rows][:, stage < k].sum() == 0  # earlier stages unmasked
        assert m[rows][:, stage > k].all()  # later stages masked
    # the masked share tracks t (N=40 divides evenly into the stages)
    assert abs(float(m.float().mean(1).mean() - t.mean())) < 0.02


def _scripted_predictor(target_masked: torch.Tensor, body_classes: int, hand_classes: int):
    """Confident (peaked logits) where the target state is unmasked, unsure elsewhere."""

    def predict(tokens, masked, query):
        _, i = query.nonzero(as_tuple=True)
        score = torch.where(target_masked[i], -4.0, 4.0)
        out = []
        for c in (body_classes, hand_classes, hand_classes):
            lg = torch.zeros(len(i), c)
            lg[:, 0] = score
            out.append(lg)
        return out

    return predict


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(4, 48), t=st.floats(1e-3, 1.0), checkpoints=st.sampled_from(CHECKPOINTS),
       seed=st.integers(0, 2**31 - 1))
def test_every_training_mask_is_reachable(n, t, checkpoints, seed):
    """Training-inference consistency: for any t, the fine-tuning mask is a state of the UTC
    sampler (K = N steps, so every count of unmasked positions occurs once)."""
    g = torch.Generator().manual_seed(seed)
    target = utc_index_mask(torch.tensor([t]), n, checkpoints, generator=g)[0]
    out = unmask(_scripted_predictor(target, 6, 5), 1, n, n, checkpoints, body_classes=6, record=True)
    states = [torch.ones(n, dtype=torch.bool)] + [s[0] for s in out.trace]
    assert any(torch.equal(s, target) for s in states)


@pytest.mark.parametrize("checkpoints", CHECKPOINTS)
def test_sampler_stage_boundaries(checkpoints):
    """After each stage exactly that stage's positions (and the earlier ones) are unmasked."""
    n, k = 100, 25
    g = torch.Generator().manual_seed(1)

    def predict(tokens, masked, query):
        q = int(query.sum())
        return [torch.randn(q, c, generator=g) for c in (10, 7, 7)]

    out = unmask(predict, 3, n, k, checkpoints, body_classes=10, record=True,
                 temperature=1.0, generator=g)
    assert len(out.trace) == k
    stage = utc_stage_of_positions(n, checkpoints)
    end = 0
    for s, counts in enumerate(utc_schedule(n, k, checkpoints)):
        end += len(counts)
        state = out.trace[end - 1]
        assert torch.equal(~state, (stage <= s)[None].expand(3, -1))
    if checkpoints == [0.75, 0.5]:
        pos = torch.arange(n)
        assert torch.equal(~out.trace[5][0], pos % 4 == 0)  # after stage 1 (6 steps)
        assert torch.equal(~out.trace[11][0], pos % 2 == 0)  # after stage 2 (6 more)
    # every step commits exactly its scheduled count
    sizes = [int(c) for cs in utc_schedule(n, k, checkpoints) for c in cs]
    prev = torch.full((3,), n)
    for state, c in zip(out.trace, sizes):
        now = state.sum(1)
        assert torch.equal(prev - now, torch.full((3,), c))
        prev = now


def test_drop_after_eos_commits_padding():
    """With drop_after_eos, an [EOS] committed in stage 1 ends the sequence at once."""
    n, body_classes = 16, 6  # eos class 4, pad 5

    def predict(tokens, masked, query):
        _, i = query.nonzero(as_tuple=True)
        body = torch.zeros(len(i), body_classes)
        body[:, 0] = 1.0
        body[i == 8, 4] = 9.0  # position 8 (stride-4, stage 1) is a confident [EOS]
        return [body, torch.zeros(len(i), 3), torch.zeros(len(i), 3)]

    out = unmask(predict, 1, n, 8, [0.75, 0.5], body_classes=body_classes, drop_after_eos=True,
                 record=True)
    assert out.trace[0][0, 9:].sum() == 0  # positions after 8 left the computation at once
    assert (out.tokens[0, 9:, 0] == 5).all() and out.tokens[0, 8, 0] == 4
    codes, lengths = truncate_at_eos(out.tokens, 4)
    assert lengths.tolist() == [8] and (codes[0, 8:] == -1).all() and (codes[0, :8] >= 0).all()



def test_length_first_decides_the_expected_length():
    """length_first: the all-masked prediction's special-class probabilities set the length
    (8 - 0.6 - 0.2 - 0.4 = 6.8 -> 7), [EOS] at 7 and [PAD] after; position 2, where the model
    prefers [EOS] (0.6), ends the paper's rule at 2 but is barred from the special classes."""
    n, body_classes = 16, 6  # eos class 4, pad 5
    calls = []
    p_special = {2: (4, 0.6), 6: (5, 0.2), 7: (5, 0.4)}

    def predict(tokens, masked, query):
        calls.append(int(query.sum()))
        _, i = query.nonzero(as_tuple=True)
        body = torch.full((len(i), body_classes), -30.0)
        body[:, 1] = 0.0
        for r, pos in enumerate(i.tolist()):
            if pos >= 8:
                body[r, 5] = 30.0
            elif pos in p_special:
                cls, p = p_special[pos]
                body[r, cls] = math.log(p / (1 - p))
        return [body, torch.zeros(len(i), 3), torch.zeros(len(i), 3)]

    plain = unmask(predict, 1, n, 8, [], body_classes=body_classes)
    assert truncate_at_eos(plain.tokens, 4)[1].tolist() == [2]
    calls.clear()
    out = unmask(predict, 1, n, 8, [], body_classes=body_classes, length_first=True)
    assert calls[0] == n and sum(calls[1:]) < 7 * 8  # later steps query only positions < 7
    codes, lengths = truncate_at_eos(out.tokens, 4)
    assert lengths.tolist() == [7]
    assert out.tokens[0, 7, 0] == 4 and (out.tokens[0, 8:, 0] == 5).all()
    assert out.tokens[0, :7, 0].tolist() == [1] * 7


def test_truncate_at_eos():
    kb = 5
    tokens = torch.tensor([[[1, 2, 3], [kb, 0, 0], [2, 2, 2]],  # EOS at 1: drop what follows
                           [[1, 1, 1], [2, 2, 2], [3, 3, 3]],  # no EOS: keep all
                           [[kb + 1, 0, 0], [kb, 0, 0], [1, 1, 1]]])  # PAD first: empty
    codes, lengths = truncate_at_eos(tokens, kb)
    assert lengths.tolist() == [1, 3, 0]
    assert codes[0].tolist() == [[1, 2, 3], [-1, -1, -1], [-1, -1, -1]]
    assert torch.equal(codes[1], tokens[1]) and (codes[2] == -1).all()


def test_greedy_confidence_order_and_gumbel_determinism():
    """Vanilla greedy unmasking commits the most confident positions first; Gumbel sampling
    is reproducible with a seeded generator and differs from greedy."""
    n = 8
    conf = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0])

    def predict(tokens, masked, query):
        _, i = query.nonzero(as_tuple=True)
        lg = torch.zeros(len(i), 4)
        lg[:, 1] = conf[i]
        return [lg, lg[:, :3], lg[:, :3]]

    out = unmask(predict, 1, n, 4, [], body_classes=4, record=True)
    assert (~out.trace[0][0]).nonzero()[:, 0].tolist() == [6, 7]
    assert (~out.trace[1][0]).nonzero()[:, 0].tolist() == [1, 3, 6, 7]

    def noisy(tokens, masked, query):
        q = int(query.sum())
        return [torch.zeros(q, 50), torch.zeros(q, 50), torch.zeros(q, 50)]

    a = unmask(noisy, 2, n, 4, [], body_classes=50, temperature=1.0,
               generator=torch.Generator().manual_seed(3)).tokens
    b = unmask(noisy, 2, n, 4, [], body_classes=50, temperature=1.0,
               generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(a, b) and a.unique().numel() > 3


def test_per_row_generators_make_a_rows_sample_its_own():
    """One generator per row: a row's sample depends on its seed alone, not on the rows it is
    batched with (the service seeds each request)."""
    def predict(tokens, masked, query):
        q = int(query.sum())
        return [torch.zeros(q, 12), torch.zeros(q, 10), torch.zeros(q, 10)]

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return unmask(predict, len(seeds), 8, 4, [0.75, 0.5], body_classes=12,
                      temperature=1.0, generator=gens).tokens

    alone = run([7])
    batched = run([1, 7, 2])
    assert torch.equal(batched[1], alone[0])
    assert not torch.equal(batched[0], batched[1])
    assert torch.equal(run([1, 7, 2]), batched)
    with pytest.raises(ValueError, match="row"):
        from madis.mdlm.sampling import pick_tokens
        pick_tokens(torch.zeros(2, 3), 1.0, [torch.Generator()])
