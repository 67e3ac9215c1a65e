"""The three pretraining losses on hand-computed cases, and where their gradients go."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from madis.mdlm import MaDiSModel
from madis.mdlm.losses import (
    IGNORE, decoder_reach, diffusion_token_loss, latent_loss, pack_rows, physical_loss,
    physical_space_loss, sign_nll,
)
from madis.mdlm.testing import tiny_batch, tiny_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


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


def _padded_physical(tok, batch, phi, rows, masked_real, n):
    """Eq. 5 the plain way: every row decoded over all 4N frames of the padded batch."""
    num_pos = masked_real.shape[1]
    real = torch.arange(num_pos)[None, :] < n[:, None]
    lat = [torch.where(masked_real[..., None], z, torch.where(real[..., None], r, torch.zeros_like(r)))
           for z, r in zip(phi, rows)]
    recon = tok.decode_latents(lat, normalized=True, token_mask=real)
    pad = 4 * num_pos - batch["motion"].shape[1]
    motion = torch.nn.functional.pad(batch["motion"], (0, 0, 0, pad))
    frame_ok = torch.nn.functional.pad(batch["mask"], (0, pad))
    frames = masked_real.repeat_interleave(4, 1) & frame_ok
    return physical_loss(recon, tok.normalize(motion), frames, tok.format.part_index)


def test_packed_physical_loss_equals_decoding_the_padded_batch(parts):
    """The physical loss decodes only real positions (rows packed with zero gaps); its value
    and its gradients equal decoding all 4N frames of every row."""
    tok, model = parts
    batch = tiny_batch(tok, lengths=(12, 7, 3, 0, 1), width=12)
    targets, n = model.sign_targets(batch["tokens"], batch["token_mask"])
    rows = model._code_rows(targets)
    g = torch.Generator().manual_seed(3)
    real = torch.arange(12)[None, :] < n[:, None]
    masked_real = (torch.rand(real.shape, generator=g) < 0.6) & real
    phi = [torch.randn(*real.shape, d, generator=g, requires_grad=True) for d in tok.code_dims]
    packed = physical_space_loss(tok, batch, phi, rows, masked_real, n)
    grads = torch.autograd.grad(packed, phi)
    ref = _padded_physical(tok, batch, phi, rows, masked_real, n)
    ref_grads = torch.autograd.grad(ref, phi)
    assert ref.item() > 0.01
    assert packed.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # the motion shorter than 4 x the longest row (the reader pads to the batch's clips)
    short = dict(batch, motion=batch["motion"][:, :44], mask=batch["mask"][:, :44])
    assert physical_space_loss(tok, short, phi, rows, masked_real, n).item() == \
        pytest.approx(_padded_physical(tok, short, phi, rows, masked_real, n).item(), rel=1e-5)


def test_pack_rows_gap_keeps_rows_apart_in_the_decoder(parts):
    """With the decoder's reach as the gap, a packed row decodes exactly as alone; without a
    gap its frames near the ends take in the neighbouring rows."""
    tok, _ = parts
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 6, tok.code_dims[1], generator=g)
    n = torch.tensor([6, 6])
    alone = tok.parts["lhand"].decode_latents(z[:1])[0]
    reach = decoder_reach(tok)
    assert reach == 3  # growth 3, depth 2
    for gap, same in ((reach, True), (0, False)):
        packed = pack_rows(z, n, gap)
        out = tok.parts["lhand"].decode_latents(packed, pack_rows(torch.ones(2, 6, dtype=torch.bool), n, gap))
        assert packed.shape[1] == 12 + 2 * gap
        assert torch.allclose(out[0, :24], alone, atol=1e-6) is same
