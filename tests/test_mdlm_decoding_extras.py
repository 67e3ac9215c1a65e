"""Beyond the paper (issue 15): pinned tokens, confidence-threshold decoding and the per-stage
callback of the sampler, on scripted predictors and on a tiny real MaDiSModel."""

from __future__ import annotations

import math

import pytest
import torch

from madis.mdlm import MaDiSModel, check_pins, truncate_at_eos, unmask, utc_stage_of_positions
from madis.mdlm.testing import tiny_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

N, BODY, HAND = 24, 10, 7  # body classes: 8 codes, [EOS] 8, [PAD] 9
CKPTS = [0.75, 0.5]


def random_predictor(seed: int = 0, sharp: float = 1.0):
    g = torch.Generator().manual_seed(seed)

    def predict(tokens, masked, query):
        q = int(query.sum())
        return [sharp * torch.randn(q, c, generator=g) for c in (BODY, HAND, HAND)]

    return predict


def stage_states(**kw):
    states = []
    out = unmask(random_predictor(), 2, N, 12, CKPTS, body_classes=BODY,
                 on_stage_end=lambda s, t, m: states.append((s, t.clone(), m.clone())), **kw)
    return out, states


def test_on_stage_end_sees_every_utc_checkpoint():
    out, states = stage_states()
    stage = utc_stage_of_positions(N, CKPTS)
    assert [s for s, _, _ in states] == [0, 1, 2]
    for s, tokens, masked in states:
        assert torch.equal(~masked, (stage <= s)[None].expand(2, -1))
    assert torch.equal(states[-1][1], out.tokens)
    assert out.steps.tolist() == [12, 12]


def test_pins_come_back_unchanged_and_stages_hold_for_the_rest():
    pins = torch.full((2, N, 3), -1)
    pins[0, 1] = torch.tensor([3, 4, 5])  # a whole position (stage 3)
    pins[0, 6, 2] = 6  # only the right hand (stage 2)
    pins[0, 8, 0] = 2  # only the body (stage 1)
    pins[1, 10, 0] = 8  # [EOS] at 10: length 10, [PAD] after
    pins[1, 3, 1] = 1
    check_pins(pins, (8, 7, 7))
    out, states = stage_states(pins=pins)
    got = out.tokens
    assert got[0, 1].tolist() == [3, 4, 5] and got[0, 6, 2] == 6 and got[0, 8, 0] == 2
    assert got[1, 10, 0] == 8 and (got[1, 11:, 0] == 9).all() and got[1, 3, 1] == 1
    codes, lengths = truncate_at_eos(got, 8)
    assert lengths[1] == 10
    assert (got[0, :9, 0] < 8).all()  # no [EOS] before the last pin (8)
    assert (got[1, :10, 0] < 8).all()  # nor before a pinned [EOS]
    stage = utc_stage_of_positions(N, CKPTS)
    whole = torch.zeros(2, N, dtype=torch.bool)
    whole[0, 1] = True
    whole[1, 10:] = True
    for s, _, masked in states:  # the unpinned positions follow UTC's stages
        decided = ~masked & ~whole
        assert torch.equal(decided, (stage <= s)[None].expand(2, -1) & ~whole)
    # a partly pinned position is masked until its stage decides it
    assert states[0][2][0, 6] and not states[1][2][0, 6]


def test_unpinned_positions_are_generated_from_the_pins_on_both_sides():
    """A predictor that copies the nearest decided body code: pins spread into the positions
    around them, before and after, from the first step on (they are context, not a patch)."""

    def copy_nearest(tokens, masked, query):
        b, i = query.nonzero(as_tuple=True)
        pos = torch.arange(N)
        dist = torch.where(masked[b], N + 1, (pos[None, :] - i[:, None]).abs())  # q, n
        near = dist.argmin(1)
        known = ~masked[b, near]
        body = torch.zeros(len(i), BODY)
        body[:, :8] = -1.0
        body[known, tokens[b, near, 0][known]] = 5.0
        body[:, 8:] = -9.0
        return [body, torch.zeros(len(i), HAND), torch.zeros(len(i), HAND)]

    free = unmask(copy_nearest, 1, N, 12, CKPTS, body_classes=BODY).tokens
    pins = torch.full((1, N, 3), -1)
    pins[0, 13] = torch.tensor([5, 1, 1])
    pinned = unmask(copy_nearest, 1, N, 12, CKPTS, body_classes=BODY, pins=pins).tokens
    assert (free[0, :, 0] == 0).all()  # nothing to copy: the first class everywhere
    assert (pinned[0, :, 0] == 5).all()  # the pin's code, on both sides of position 13


def test_pins_are_checked():
    ok = torch.full((1, 4, 3), -1)
    for pos, part, value, match in [(0, 0, 9, "outside"), (0, 1, 7, "outside"),
                                    (0, 2, -2, "outside")]:
        bad = ok.clone()
        bad[0, pos, part] = value
        with pytest.raises(ValueError, match=match):
            check_pins(bad, (8, 7, 7))
    bad = ok.clone()
    bad[0, 1, 0] = 8
    bad[0, 2, 2] = 3
    with pytest.raises(ValueError, match="after the pinned"):
        check_pins(bad, (8, 7, 7))
    bad[0, 2, 2] = -1
    bad[0, 1, 1] = 3  # a hand at the [EOS] position itself
    with pytest.raises(ValueError, match="at or after"):
        check_pins(bad, (8, 7, 7))


def test_threshold_commits_confident_positions_in_parallel_within_stages():
    """Positions whose parts are all near-certain are committed at once; the stage
    boundaries hold; a threshold that never passes gives the fixed schedule exactly."""
    stage = utc_stage_of_positions(N, CKPTS)
    sure = torch.arange(N) % 3 != 0  # two of three positions are certain

    def predict(tokens, masked, query):
        _, i = query.nonzero(as_tuple=True)
        out = []
        for c in (BODY, HAND, HAND):
            lg = torch.zeros(len(i), c)
            lg[:, 1] = torch.where(sure[i], 20.0, 0.5 + 0.01 * i)
            out.append(lg)
        return out

    fixed = unmask(predict, 1, N, 12, CKPTS, body_classes=BODY, record=True)
    never = unmask(predict, 1, N, 12, CKPTS, body_classes=BODY, record=True, threshold=1.5)
    assert torch.equal(fixed.tokens, never.tokens) and fixed.steps.tolist() == [12]
    assert all(torch.equal(a, b) for a, b in zip(fixed.trace, never.trace))
    states = []
    fast = unmask(predict, 1, N, 12, CKPTS, body_classes=BODY, threshold=0.9, record=True,
                  on_stage_end=lambda s, t, m: states.append(m.clone()))
    assert torch.equal(fast.tokens, fixed.tokens)
    assert fast.steps.item() < 12
    for s, masked in enumerate(states):
        assert torch.equal(~masked[0], stage <= s)
    first = ~fast.trace[0][0]
    assert first[(stage == 0) & sure].all()  # every sure stage-1 position in the first step
    assert not first[stage > 0].any()
    # Fast-dLLM's floor: one position per step where nothing is sure
    unsure = unmask(random_predictor(sharp=0.0), 1, N, 12, CKPTS, body_classes=BODY,
                    threshold=0.99, threshold_floor="one")
    assert unsure.steps.item() == N
    with pytest.raises(ValueError):
        unmask(predict, 1, N, 12, CKPTS, body_classes=BODY, threshold=0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MaDiSModel(tiny_config(num_positions=16, num_steps=8), tiny_tokenizer())
    with torch.no_grad():  # full length, so that every position is a sign position
        m.heads.heads[0].bias[m.codebook_sizes[0]:] = -1e4
    return m.eval()


def test_model_pins_condition_the_rest(model):
    texts, langs = ["Hello", "Hello"], ["ase", "ase"]
    free = model.generate(texts, langs)
    pins = torch.full((2, 6, 3), -1)
    pins[0, :4] = free.tokens[0, :4]  # keep the first word, regenerate the rest
    pins[1, :6, 2] = (free.tokens[1, :6, 2] + 3) % model.codebook_sizes[2]  # an edited right hand
    out = model.generate(texts, langs, pins=pins)
    assert torch.equal(out.tokens[0, :4], free.tokens[0, :4])
    assert torch.equal(out.tokens[1, :6, 2], pins[1, :6, 2])
    assert out.steps_used.tolist()[0] <= 8
    with pytest.raises(ValueError, match="N = 16"):
        model.generate(["a"], ["ase"], pins=torch.full((1, 17, 3), -1))
    with pytest.raises(ValueError, match="outside"):
        model.generate(["a"], ["ase"], pins=torch.tensor([[[0, 99, -1]]]))


def test_model_threshold_switch(model):
    texts, langs = ["Hello", "Guten Morgen"], ["ase", "gsg"]
    exact = model.generate(texts, langs)
    assert exact.steps_used.tolist() == [8, 8]
    same = model.generate(texts, langs, threshold=math.inf)
    assert torch.equal(same.tokens, exact.tokens)
    fast = model.generate(texts, langs, threshold=1e-6)  # everything passes: one step a stage
    assert fast.steps_used.tolist() == [3, 3]


def test_generate_cli_pins_an_earlier_answer(tmp_path, capsys):
    """madis generate TEXT --pin FILE --pin-parts --pin-positions [--pin-eos]: the pinned
    tokens come back; malformed pins are one-line errors (exit 2)."""
    import numpy as np

    from madis.cli import main
    from madis.serve.testing import write_run

    export = write_run(tmp_path / "run", steps=(5,))[5]
    assert main(["generate", "HELLO", "--lang", "ase", "--checkpoint", export,
                 "-o", str(tmp_path / "a")]) == 0
    first = np.load(tmp_path / "a" / "00_ase_HELLO.tokens.npy")
    edited = first.copy()
    edited[:, 2] = (edited[:, 2] + 5) % 16
    np.save(tmp_path / "edit.tokens.npy", edited)
    assert main(["generate", "HELLO", "--lang", "ase", "--checkpoint", export, "-o",
                 str(tmp_path / "b"), "--pin", str(tmp_path / "edit.tokens.npy"),
                 "--pin-parts", "body,rhand", "--pin-positions", "0:8", "--pin-eos", "10",
                 "--threshold", "0.5"]) == 0
    again = np.load(tmp_path / "b" / "00_ase_HELLO.tokens.npy")
    assert len(again) == 10
    np.testing.assert_array_equal(again[:8, [0, 2]], edited[:8, [0, 2]])
    capsys.readouterr()
    base = ["generate", "HELLO", "--lang", "ase", "--checkpoint", export, "-o", str(tmp_path / "c")]
    np.save(tmp_path / "big.tokens.npy", np.full((3, 3), 99))
    np.save(tmp_path / "long.tokens.npy", np.zeros((13, 3), np.int64))
    for extra, message in [
        (["--pin", str(tmp_path / "none.npy")], "cannot read"),
        (["--pin", str(tmp_path / "edit.tokens.npy"), "--pin-parts", "face"], "unknown part"),
        (["--pin", str(tmp_path / "edit.tokens.npy"), "--pin-positions", "4:99"], "positions"),
        (["--pin", str(tmp_path / "edit.tokens.npy"), "--pin-positions", "x"], "A:B"),
        (["--pin", str(tmp_path / "big.tokens.npy")], "outside the codebook"),
        (["--pin", str(tmp_path / "long.tokens.npy")], "N = 12"),
        (["--pin", str(tmp_path / "edit.tokens.npy"), "--pin-eos", "3"], "after the last pinned"),
        (["--pin-positions", "0:2"], "need --pin"),
    ]:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err, (extra, err)


def test_threshold_judges_an_end_position_by_its_body():
    """A sure [PAD] with (untrained, uniform) hands passes the threshold: its hands are no
    tokens. The whole suffix after a sure end goes in one step per stage."""

    def predict(tokens, masked, query):
        _, i = query.nonzero(as_tuple=True)
        body = torch.zeros(len(i), BODY)
        body[:, 1] = torch.where(i < 8, 20.0, 0.0)
        body[:, 9] = torch.where(i < 8, 0.0, 20.0)  # [PAD] from 8 on
        hand = torch.zeros(len(i), HAND)
        hand[:, 2] = torch.where(i < 8, 20.0, 0.0)  # sure hands only where there is a sign
        return [body, hand, hand]

    out = unmask(predict, 1, N, 12, CKPTS, body_classes=BODY, threshold=0.9)
    assert out.steps.item() == 3
    assert (out.tokens[0, 8:, 0] == 9).all() and (out.tokens[0, :8, 0] == 1).all()


def test_threshold_rows_that_finish_early_sit_out_without_changing_answers():
    """A row done with a stage skips its later steps (no compute): every answer equals the
    row decoded alone, with the text keys/values recomputed or cached."""
    many = ["Hello", "Guten Morgen", "你好，世界", "a", "Where is the station?"]
    for t2t in (False, True):
        torch.manual_seed(0)
        m = MaDiSModel(tiny_config(num_positions=16, num_steps=8, text_attends_sign=not t2t),
                       tiny_tokenizer())
        with torch.no_grad():
            for head in m.heads.heads:  # sharper heads: confidences differ between rows
                head.weight.mul_(5.0)
            m.heads.heads[0].bias[m.codebook_sizes[0]:] = -1e4
        m.eval()
        for thr in (0.9, 0.8, 0.7, 0.6, 0.5):  # one where the rows' step counts differ
            both = m.generate(many, ["ase"] * 5, threshold=thr)
            if len(set(both.steps_used.tolist())) > 1:
                break
        else:
            pytest.fail("no threshold made rows finish stages at different steps")
        for b, text in enumerate(many):
            alone = m.generate([text], ["ase"], threshold=thr)
            assert torch.equal(alone.tokens[0], both.tokens[b]), text
            assert alone.steps_used.item() == both.steps_used[b].item()
