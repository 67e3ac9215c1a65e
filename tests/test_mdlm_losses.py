"""The three pretraining losses on hand-computed cases, and where their gradients go."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from madis.mdlm import MaDiSModel
from madis.mdlm.losses import IGNORE, diffusion_token_loss, latent_loss, physical_loss, sign_nll
from mdlm_fixtures import one_thread, tiny_batch, tiny_config, tiny_tokenizer  # noqa: F401


def test_sign_nll_sums_part_heads_and_skips_hands_at_special_positions():
    # uniform logits: -log p = log C per head
    logits = [torch.zeros(2, 6), torch.zeros(2, 3), torch.zeros(2, 5)]
    targets = torch.tensor([[1, 2, 4], [4, IGNORE, IGNORE]])  # row 1 is an [EOS] position
    assert torch.allclose(sign_nll(logits, targets),
                          torch.tensor([math.log(6) + math.log(3) + math.log(5), math.log(6)]))


def test_token_loss_weighting_and_normalisation():
    """Eq. 3: per sample (1/t) sum nll / (L+1+N), then the batch mean."""
    nll = torch.tensor([1.0, 2.0, 3.0])
    rows = torch.tensor([0, 0, 1])
    t = torch.tensor([0.5, 0.25])
    seq_len = torch.tensor([4.0, 5.0])
    expected = ((1 + 2) / 0.5 / 4 + 3 / 0.25 / 5) / 2  # = 1.95
    assert diffusion_token_loss(nll, rows, t, seq_len).item() == pytest.approx(expected)
    # a sample without masked positions still counts in the mean (as zero)
    three = diffusion_token_loss(nll, rows, torch.tensor([0.5, 0.25, 0.9]),
                                 torch.tensor([4.0, 5.0, 6.0]))
    assert three.item() == pytest.approx(expected * 2 / 3)


def test_latent_loss_smooth_l1():
    pred = [torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0]]), torch.tensor([[0.0, 0.0, 3.0]])]
    target = [torch.tensor([[0.5, 2.0]]), torch.tensor([[1.0]]), torch.tensor([[0.0, 0.0, 0.0]])]
    # part B: (0.5*0.5^2 + (2-0.5)) / 2 = 0.8125; part L: 0; part R: (3-0.5)/3
    assert latent_loss(pred, target).item() == pytest.approx(0.8125 + 0.0 + 2.5 / 3)
    empty = [torch.zeros(0, 2, requires_grad=True)] * 3
    assert latent_loss(empty, [torch.zeros(0, 2)] * 3).item() == 0.0


def test_physical_loss_l1_on_masked_frames():
    part_index = {"body": np.array([0]), "lhand": np.array([1, 2]), "rhand": np.array([3])}
    recon = torch.zeros(1, 4, 4)
    target = torch.tensor([[[1.0, 2.0, 4.0, -1.0]] * 4])
    frames = torch.tensor([[True, True, False, False]])
    target[0, 2:] = 100.0  # frames outside the masked positions never count
    # body |1| ; lhand mean(|2|,|4|)=3 ; rhand |-1| = 1 -> 1 + 3 + 1
    assert physical_loss(recon, target, frames, part_index).item() == pytest.approx(5.0)
    assert physical_loss(recon, target, torch.zeros_like(frames), part_index).item() == 0.0


@pytest.fixture(scope="module")
def parts():
    tok = tiny_tokenizer()
    return tok, MaDiSModel(tiny_config(), tok)


def test_physical_gradients_reach_mlps_and_backbone_but_never_decoders(parts):
    tok, model = parts
    model.cfg.latent_loss, model.cfg.token_weight = False, 0.0
    try:
        frozen = {k: v.clone() for k, v in tok.state_dict().items()}
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        batch = tiny_batch(tok, lengths=(12, 7, 3))
        loss, metrics = model.loss(batch, "pretrain", generator=torch.Generator().manual_seed(0))
        assert metrics["loss_physical"] > 0
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in tok.parameters())
        for mlp in model.latent.mlps:
            assert mlp[0].weight.grad.abs().sum() > 0
        assert model.backbone.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
        opt.step()
        for k, v in tok.state_dict().items():
            assert torch.equal(v, frozen[k]), k
    finally:
        model.cfg.latent_loss, model.cfg.token_weight = True, 1.0


def test_latent_targets_are_the_codebook_rows(parts):
    """If phi_p returned exactly C_p[z], the latent loss would be 0: check the target rows."""
    tok, model = parts
    batch = tiny_batch(tok, lengths=(12, 4, 0))
    targets, n = model.sign_targets(batch["tokens"], batch["token_mask"])
    rows = model._code_rows(targets)
    for p, cb in enumerate(tok.codebooks):
        assert torch.equal(rows[p][0, 3], cb[batch["tokens"][0, 3, p]])
        assert not rows[p].requires_grad


def test_sign_targets_eos_and_pad(parts):
    tok, model = parts
    kb = tok.codebook_sizes[0]
    batch = tiny_batch(tok, lengths=(12, 5, 0), width=12)
    targets, n = model.sign_targets(batch["tokens"], batch["token_mask"])
    assert n.tolist() == [12, 5, 0]
    assert torch.equal(targets[0], batch["tokens"][0])
    assert targets[1, 5, 0] == kb and (targets[1, 6:, 0] == kb + 1).all()
    assert (targets[1, 5:, 1:] == IGNORE).all() and targets[2, 0, 0] == kb
    bad = dict(batch)
    bad["token_mask"] = batch["token_mask"].clone()
    bad["token_mask"][1, 8] = True
    with pytest.raises(ValueError, match="prefix"):
        model.sign_targets(bad["tokens"], bad["token_mask"])
    long = tiny_batch(tok, lengths=(13,))
    with pytest.raises(ValueError, match="num_positions"):
        model.sign_targets(long["tokens"], long["token_mask"])
    oob = batch["tokens"].clone()
    oob[0, 0, 1] = 99
    with pytest.raises(ValueError, match="outside"):
        model.sign_targets(oob, batch["token_mask"])
