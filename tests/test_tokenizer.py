"""The decoupled part VQ-VAE tokenizer: shapes, padding, EMA codebook, reset, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madis.config import ConfigError
from madis.motion import get_format
from madis.tokenizer import PAD_TOKEN, DecoupledTokenizer, EMACodebook, TokenizerConfig

TINY = TokenizerConfig(width=16, code_dim=8, codebook_sizes=(8, 16, 16), depth=2)


@pytest.fixture(params=["keypoints", "smplx133"])
def fmt(request):
    return get_format(request.param)


def make(fmt, seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    return DecoupledTokenizer(TINY, fmt.name, mean=rng.normal(size=fmt.dim),
                              std=rng.uniform(0.5, 2.0, fmt.dim))


def test_encode_decode_shapes_dtypes_and_padding(fmt):
    tok = make(fmt).eval()
    motion = torch.randn(2, 48, fmt.dim)
    mask = torch.ones(2, 48, dtype=torch.bool)
    mask[1, 24:] = False
    tokens = tok.encode(motion, mask)
    assert tokens.shape == (2, 12, 3) and tokens.dtype == torch.int64
    assert (tokens[1, 6:] == PAD_TOKEN).all() and (tokens[1, :6] >= 0).all()
    for j, k in enumerate(tok.codebook_sizes):
        assert tokens[..., j].max() < k
    out = tok.decode(tokens)
    assert out.shape == (2, 48, fmt.dim) and out.dtype == torch.float32
    assert (out[1, 24:] == 0).all() and (out[0] != 0).any()
    assert tok.codebook_sizes == (8, 16, 16) and tok.code_dims == (8, 8, 8)
    assert [tuple(c.shape) for c in tok.codebooks] == [(8, 8), (16, 8), (16, 8)]
    assert tok.motion_format == fmt.name


def test_tokens_deterministic_and_independent_of_batch_padding(fmt):
    tok = make(fmt).eval()
    clip = torch.randn(1, 40, fmt.dim)
    padded = torch.cat([clip, torch.randn(1, 24, fmt.dim) * 50], dim=1)  # garbage after the end
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[:, :40] = True
    alone = tok.encode(clip)
    assert torch.equal(alone, tok.encode(clip))
    assert torch.equal(tok.encode(padded, mask)[:, :10], alone)
    both = torch.cat([alone, torch.full((1, 6, 3), PAD_TOKEN)], dim=1)
    assert torch.allclose(tok.decode(both)[:, :40], tok.decode(alone), atol=1e-6)


def test_loss_and_ema_ignore_padded_frames(fmt):
    clip = torch.randn(1, 40, fmt.dim)
    padded = torch.cat([clip, torch.randn(1, 24, fmt.dim) * 50], dim=1)
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[:, :40] = True
    a, b = make(fmt, seed=3).train(), make(fmt, seed=3).train()
    torch.manual_seed(7)
    out_a = a(clip)
    torch.manual_seed(7)
    out_b = b(padded, mask)
    assert torch.allclose(out_a.loss, out_b.loss, atol=1e-6)
    for ca, cb in zip(a.codebooks, b.codebooks):
        assert torch.allclose(ca, cb, atol=1e-6)


def test_training_reduces_reconstruction_loss(fmt):
    tok = make(fmt).train()
    motion = torch.randn(4, 40, fmt.dim)
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = tok(motion)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.recon_loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_ema_update_known_answer():
    cb = EMACodebook(num_codes=2, code_dim=1, decay=0.5, dead_code_threshold=0.0).train()
    cb.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    cb.code_sum.copy_(torch.tensor([[0.0], [10.0]]))
    cb.code_count.fill_(1.0)
    cb.initialized.fill_(True)
    z = torch.tensor([[[1.0], [3.0], [9.0], [100.0]]])  # 100 is padding
    valid = torch.tensor([[True, True, True, False]])
    out = cb(z, valid)
    assert out.indices.tolist() == [[0, 0, 1, 1]]
    # code 0: sum = .5*0 + .5*(1+3) = 2, count = .5*1 + .5*2 = 1.5 -> 4/3
    # code 1: sum = .5*10 + .5*9 = 9.5, count = .5 + .5 = 1 -> 9.5
    assert torch.allclose(cb.codebook.squeeze(1), torch.tensor([4 / 3, 9.5]))
    # commitment on valid positions only: mean of (1-0)^2, (3-0)^2, (9-10)^2
    assert out.commit_loss.item() == pytest.approx((1 + 9 + 1) / 3)
    assert out.used.item() == 1.0


def test_dead_code_is_revived_by_reset():
    cb = EMACodebook(num_codes=4, code_dim=2, decay=0.99, dead_code_threshold=1.0).train()
    z = torch.randn(1, 32, 2)
    cb(z)  # initialises from the batch
    cb.codebook[3] = torch.tensor([1e4, 1e4])  # far away: never chosen
    cb.code_sum[3] = cb.codebook[3]
    cb.code_count[3] = 0.5  # below the threshold: dead
    out = cb(z)
    assert (out.indices != 3).all()
    revived = cb.codebook[3]
    assert revived.abs().max() < 1e3
    assert (z[0] == revived).all(-1).any(), "a dead code is reset to one of the batch's latents"
    assert cb.code_count[3].item() == 1.0


def test_eval_mode_never_changes_codebook(fmt):
    tok = make(fmt).train()
    tok(torch.randn(2, 40, fmt.dim))
    before = [c.clone() for c in tok.codebooks]
    tok.eval()
    tok(torch.randn(2, 40, fmt.dim))
    tok.train()
    tok.encode(torch.randn(2, 40, fmt.dim))
    assert all(torch.equal(a, b) for a, b in zip(before, tok.codebooks))


def test_decode_latents_is_differentiable_and_matches_decode(fmt):
    tok = make(fmt).eval()
    tokens = torch.stack([torch.randint(0, k, (2, 5)) for k in tok.codebook_sizes], dim=-1)
    latents = [c[tokens[..., j]].clone().requires_grad_(True) for j, c in enumerate(tok.codebooks)]
    z = tok.decode_latents(latents, normalized=True)
    assert z.shape == (2, 20, fmt.dim)
    assert torch.allclose(tok.denormalize(z), tok.decode(tokens), atol=1e-5)
    assert torch.allclose(tok.decode_latents(latents, normalized=False), tok.decode(tokens),
                          atol=1e-5)
    z.pow(2).sum().backward()
    assert all(lat.grad is not None and lat.grad.abs().sum() > 0 for lat in latents)


def test_save_and_reload_gives_identical_tokens(fmt, tmp_path):
    tok = make(fmt).train()
    tok(torch.randn(2, 40, fmt.dim))  # a training step moves the codebooks off their init
    tok.eval()
    tok.save_pretrained(tmp_path / "tok")
    again = DecoupledTokenizer.from_pretrained(tmp_path / "tok")
    motion = torch.randn(3, 44, fmt.dim)
    assert torch.equal(tok.encode(motion), again.encode(motion))
    assert torch.equal(again.mean, tok.mean) and torch.equal(again.std, tok.std)
    assert not again.training


def test_bad_inputs_raise_clear_errors(fmt, tmp_path):
    tok = make(fmt).eval()
    with pytest.raises(ValueError, match="multiple of 4"):
        tok.encode(torch.randn(1, 42, fmt.dim))
    with pytest.raises(ValueError, match="motion must be"):
        tok.encode(torch.randn(1, 40, fmt.dim + 1))
    with pytest.raises(ValueError, match="codebook size"):
        tok.decode(torch.full((1, 2, 3), 99))
    with pytest.raises(ValueError, match="mean must have shape"):
        DecoupledTokenizer(TINY, fmt.name, mean=np.zeros(3))
    with pytest.raises(FileNotFoundError):
        DecoupledTokenizer.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="codebook_sizes"):
        TokenizerConfig(codebook_sizes=(8, 8))


def test_bf16_cast_keeps_ema_state_in_float32(fmt):
    tok = make(fmt).to(torch.bfloat16).train()
    out = tok(torch.randn(2, 40, fmt.dim))
    assert out.recon.dtype == torch.bfloat16
    assert all(c.dtype == torch.float32 for c in tok.codebooks)


def test_part_never_detected_in_a_batch_changes_nothing():
    # one-handed fingerspelling: a batch may hold no valid left-hand frame at all
    cb = EMACodebook(num_codes=4, code_dim=2).train()
    z = torch.randn(1, 8, 2)
    none = torch.zeros(1, 8, dtype=torch.bool)
    cb(z, none)
    assert not bool(cb.initialized) and (cb.codebook == 0).all()
    cb(z)
    assert bool(cb.initialized)
    state = {k: v.clone() for k, v in cb.state_dict().items()}
    out = cb(z * 100, none)
    assert all(torch.equal(state[k], v) for k, v in cb.state_dict().items())
    assert out.commit_loss.item() == 0.0 and out.used.item() == 0.0


def test_wrist_hand_frame_normalises_hand_shapes_and_round_trips():
    from dataclasses import replace

    fmt = get_format("keypoints")
    rng = np.random.default_rng(1)
    motion = torch.as_tensor(rng.normal(size=(2, 8, fmt.dim)), dtype=torch.float32)
    feats = fmt.hands_to_wrist(motion)
    mean, std = feats.mean((0, 1)), feats.std((0, 1))
    tok = DecoupledTokenizer(replace(TINY, hand_frame="wrist"), fmt.name, mean=mean, std=std)
    z = tok.normalize(motion)
    torch.testing.assert_close(z, (feats - mean) / std)
    torch.testing.assert_close(tok.denormalize(z), motion, atol=1e-5, rtol=1e-5)
    # the same wrist moved: the hand features of the other points do not change
    moved = motion.clone()
    moved[..., 102:165] += torch.tensor([1.0, 2.0, 0.0]).repeat(21)
    dz = tok.normalize(moved) - z
    assert dz[..., 102:104].abs().min() > 0 and dz[..., 105:165].abs().max() < 1e-5
    with pytest.raises(ConfigError, match="hand_frame"):
        TokenizerConfig(hand_frame="elbow")
