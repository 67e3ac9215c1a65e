"""MaDiSModel and ARBaseline end to end on tiny real parts (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from madis.mdlm import ARBaseline, MaDiSModel, format_prompt, load_pretrained
from madis.mdlm.base import positions
from madis.mdlm.text import ByteTokenizer
from madis.mdlm.testing import LANGS, TEXTS, tiny_batch, tiny_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return MaDiSModel(tiny_config(), tok).eval()


def _sign_hidden(model, text_ids_batch, sign_tokens, masked):
    embed = model.embed_tokens()
    sign_emb, _ = model.sign_embedding(sign_tokens, masked, embed)
    x = torch.cat([embed(text_ids_batch.ids), sign_emb], 1)
    n = sign_tokens.shape[1]
    attn = model.attention_mask(text_ids_batch.valid, torch.ones(x.shape[0], n, dtype=torch.bool))
    return model.hidden(x, attn, positions(text_ids_batch, n))


def test_backbone_is_bidirectional_and_ignores_padding(model):
    """Position 0 changes when only the last input changes; padding is never attended to."""
    text = model.encode_texts(["short", "a much longer sentence"], ["ase", "ase"])
    assert not text.valid[0, 0] and text.valid[1].all()  # row 0 is left-padded
    n = model.cfg.num_positions
    tokens = torch.zeros(2, n, 3, dtype=torch.long)
    masked = torch.ones(2, n, dtype=torch.bool)
    with torch.no_grad():
        h1 = _sign_hidden(model, text, tokens, masked)
        masked2 = masked.clone()
        masked2[:, -1] = False  # only the last sign position differs
        h2 = _sign_hidden(model, text, tokens, masked2)
        first = text.valid.int().argmax(1)
        for b in range(2):
            assert (h1[b, first[b]] - h2[b, first[b]]).abs().max() > 1e-4
        # changing the ids under the padding changes nothing at real positions
        pad = int((~text.valid[0]).sum())
        text.ids[0, :pad] = 7
        h3 = _sign_hidden(model, text, tokens, masked)
        assert torch.allclose(h1[0, pad:], h3[0, pad:], atol=1e-6)
        # and a padded row equals the same row alone (padding-independent positions)
        alone = model.encode_texts(["short"], ["ase"])
        h4 = _sign_hidden(model, alone, tokens[:1], masked[:1])
        assert torch.allclose(h1[0, pad:], h4[0], atol=1e-5)
        # without padding no mask is built at all: still bidirectional
        h5 = _sign_hidden(model, alone, tokens[:1], masked2[:1])
        assert (h4[0, 0] - h5[0, 0]).abs().max() > 1e-4


def test_text_prompt_and_byte_tokenizer():
    assert format_prompt("[{lang}] {text}", "Hallo", "gsg") == "[gsg] Hallo"
    assert format_prompt("[{lang}] {text}", "Hallo", "") == "Hallo"
    bt = ByteTokenizer()
    for s in TEXTS + ["Dobrý den", "Ελληνικά", "日本語のテキスト", "שלום", "مرحبا"]:
        ids = bt.encode(s)
        assert max(ids) < 256 and bt.decode(ids) == s


def test_mop_gates_sum_to_one_and_sparse_variants(tok):
    torch.manual_seed(0)
    codes = torch.stack([torch.randint(0, k, (2, 12)) for k in tok.codebook_sizes], -1)
    for variant, nonzero in (("dense", 3), ("sparse_top2", 2), ("sparse_top1", 1)):
        m = MaDiSModel(tiny_config(embedding=variant), tok)
        g = m.mop_gates(codes)
        assert g.shape == (2, 12, 3)
        assert torch.allclose(g.sum(-1), torch.ones(2, 12), atol=1e-6)
        assert ((g > 0).sum(-1) == nonzero).all()
    assert MaDiSModel(tiny_config(embedding="simple_avg"), tok).mop_gates(codes) is None


def test_mop_embedding_is_the_gated_sum(tok, model):
    codes = torch.tensor([[[1, 2, 3]]])
    masked = torch.zeros(1, 1, dtype=torch.bool)
    e, g = model.sign_embedding(codes, masked, model.embed_tokens())
    emb = model.sign_embedding
    u = [emb.part_fc[p](tok.codebooks[p][codes[0, 0, p]]) for p in range(3)]
    assert torch.allclose(e[0, 0], sum(g[0, 0, p] * u[p] for p in range(3)), atol=1e-6)
    # masked and [EOS] positions use their vocabulary rows
    e_m, _ = emb(codes, torch.ones(1, 1, dtype=torch.bool), model.embed_tokens())
    assert torch.equal(e_m[0, 0], model.embed_tokens().weight[model.vocab.mask_id])
    eos = torch.tensor([[[tok.codebook_sizes[0], 0, 0]]])
    e_e, _ = emb(eos, masked, model.embed_tokens())
    assert torch.equal(e_e[0, 0], model.embed_tokens().weight[model.vocab.eos_id])


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_training_lowers_the_loss(tok, stage):
    torch.manual_seed(0)
    m = MaDiSModel(tiny_config(), tok).train()
    batch = tiny_batch(tok, lengths=(12, 6, 9))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)

    def fixed_loss():  # the same t and masks every time
        with torch.no_grad():
            _, met = m.loss(batch, stage, generator=torch.Generator().manual_seed(123))
        return {k: float(v) for k, v in met.items()}

    before = fixed_loss()
    assert set(before) >= {"loss", "loss_token", "loss_latent", "loss_physical", "gate_body"}
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, _ = m.loss(batch, stage, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after["loss_token"] < 0.85 * before["loss_token"], (before, after)
    # the random tiny decoders barely depend on their input: these drop slowly but must drop
    assert after["loss_latent"] < 0.95 * before["loss_latent"], (before, after)
    assert after["loss_physical"] < before["loss_physical"], (before, after)


def test_finetune_never_masks_text_and_uses_utc_masks(tok, model):
    """With t forced into stage 1 (every draw > 0.75), only stride-4 positions may be visible."""
    seen = []
    orig = model.sign_embedding.forward

    def spy(tokens, masked, embed):
        seen.append(masked.clone())
        return orig(tokens, masked, embed)

    model.sign_embedding.forward = spy
    try:
        cfg_eps = model.cfg.mask_eps
        model.cfg.mask_eps = 0.76  # t ~ U(0.76, 1]
        model.loss(tiny_batch(tok), "finetune", generator=torch.Generator().manual_seed(1))
    finally:
        model.cfg.mask_eps = cfg_eps
        del model.sign_embedding.forward
    pos = torch.arange(model.cfg.num_positions)
    assert seen[0][:, pos % 4 != 0].all()


def test_generate_shapes_stages_and_truncation(model):
    out = model.generate(TEXTS, LANGS, num_steps=6, record=True, return_gates=True)
    n = model.cfg.num_positions
    assert out.tokens.shape == (3, n, 3) and out.gates.shape == (3, n, 3)
    for b, length in enumerate(out.lengths.tolist()):
        assert (out.tokens[b, :length] >= 0).all() and (out.tokens[b, length:] == -1).all()
    pos = torch.arange(n)
    # N=12, K=6: stages of 3, 3, 6 positions get 2, 1, 3 steps -> boundaries after steps 2 and 3
    assert torch.equal(~out.trace[1], (pos % 4 == 0).expand(3, -1))
    assert torch.equal(~out.trace[2], (pos % 2 == 0).expand(3, -1))
    motions = model.decode_motion(out)
    # an empty generation decodes to one position of the still mean pose
    assert [m.shape[0] for m in motions] == [4 * max(int(n), 1) for n in out.lengths]
    assert all(m.shape[1] == 133 for m in motions)
    with pytest.raises(ValueError):
        model.generate([], [])
    # greedy decoding of a padded batch equals decoding each sentence alone
    alone = model.generate(TEXTS[1:2], LANGS[1:2], num_steps=6)
    assert torch.equal(alone.tokens[0], out.tokens[1])


def test_an_empty_generation_decodes_to_the_still_mean_pose(model):
    """docs/design.md#empty-generations: one position of the tokenizer's mean pose."""
    out = model.generate(TEXTS, LANGS, num_steps=6)
    out.tokens, out.lengths = out.tokens.clone(), out.lengths.clone()
    out.tokens[0], out.lengths[0] = -1, 0
    motions = model.decode_motion(out)
    mean = model.tokenizer.mean.float().numpy()
    assert motions[0].shape == (4, 133) and motions[0].dtype == np.float32
    np.testing.assert_allclose(motions[0], np.broadcast_to(mean, (4, 133)), atol=1e-5)
    for m, n in zip(motions[1:], out.lengths[1:].tolist()):
        assert m.shape == (4 * max(n, 1), 133)

def test_speedups_that_must_not_change_outputs(tok):
    torch.manual_seed(0)
    m = MaDiSModel(tiny_config(text_attends_sign=False), tok).eval()
    ref = m.generate(TEXTS, LANGS, num_steps=6, text_kv_cache=False, logits_masked_only=False)
    for kw in ({"text_kv_cache": True}, {"logits_masked_only": True},
               {"text_kv_cache": True, "logits_masked_only": True}):
        assert torch.equal(m.generate(TEXTS, LANGS, num_steps=6, **kw).tokens, ref.tokens), kw
    # the text's hidden states do not depend on the sign positions when text attends to text
    text = m.encode_texts(TEXTS, LANGS)
    n = m.cfg.num_positions
    zeros = torch.zeros(3, n, 3, dtype=torch.long)
    with torch.no_grad():
        a = _sign_hidden(m, text, zeros, torch.ones(3, n, dtype=torch.bool))
        b = _sign_hidden(m, text, zeros, torch.zeros(3, n, dtype=torch.bool))
    lt = text.ids.shape[1]
    assert torch.allclose(a[:, :lt][text.valid], b[:, :lt][text.valid], atol=1e-6)
    assert (a[:, lt:] - b[:, lt:]).abs().max() > 1e-4


def test_stage_cache_is_exact_with_one_step_per_stage(model):
    """Each stage's first step reuses the stage's full pass, so with K = number of stages the
    approximate stage cache must reproduce exact decoding."""
    exact = model.generate(TEXTS, LANGS, num_steps=3)
    assert torch.equal(model.generate(TEXTS, LANGS, num_steps=3, stage_kv_cache=True).tokens,
                       exact.tokens)


def test_approximate_speedups_run(model):
    for kw in ({"drop_after_eos": True}, {"stage_kv_cache": True},
               {"drop_after_eos": True, "stage_kv_cache": True}):
        for sampler in ("utc", "vanilla"):
            out = model.generate(TEXTS, LANGS, num_steps=6, sampler=sampler, **kw)
            assert out.tokens.shape == (3, model.cfg.num_positions, 3)


def test_save_load_round_trip(tmp_path, tok, model):
    model.save_pretrained(tmp_path / "m")
    loaded = MaDiSModel.from_pretrained(tmp_path / "m", tok)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert loaded.cfg == model.cfg
    a = model.generate(TEXTS, LANGS, num_steps=6)
    b = loaded.generate(TEXTS, LANGS, num_steps=6)
    assert torch.equal(a.tokens, b.tokens)
    batch = tiny_batch(tok)
    la, _ = model.loss(batch, "finetune", generator=torch.Generator().manual_seed(0))
    lb, _ = loaded.loss(batch, "finetune", generator=torch.Generator().manual_seed(0))
    assert torch.allclose(la, lb)
    # a fine-tuning run may switch the embedding variant: the new layer starts fresh
    other = load_pretrained(tmp_path / "m", tok, overrides={"embedding": "simple_avg"})
    assert isinstance(other, MaDiSModel) and other.cfg.embedding == "simple_avg"
    with pytest.raises(ValueError, match="ARBaseline"):
        ARBaseline.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        MaDiSModel.from_pretrained(tmp_path / "nothing")


def test_ar_baseline_trains_and_decodes_with_cache(tmp_path, tok):
    torch.manual_seed(0)
    ar = ARBaseline(tiny_config(), tok)
    assert ar.backbone.config.is_causal
    batch = tiny_batch(tok, lengths=(12, 6, 9))
    opt = torch.optim.AdamW(ar.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, metrics = ar.loss(batch, "finetune")
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.5 * first
    out = ar.generate(batch["text"], batch["lang"])
    # the KV-cached decoding agrees with teacher forcing: it reproduces the memorised tokens
    assert out.lengths.tolist() == [12, 6, 9]
    # one step per position, [EOS] included (row 0 fills all N = 12: no [EOS] step)
    assert out.steps_used.tolist() == [12, 7, 10]
    for b, n in enumerate([12, 6, 9]):
        assert torch.equal(out.tokens[b, :n], batch["tokens"][b, :n])
    ar.save_pretrained(tmp_path / "ar")
    again = load_pretrained(tmp_path / "ar", tok)
    assert isinstance(again, ARBaseline)
    assert torch.equal(again.generate(batch["text"], batch["lang"]).tokens, out.tokens)


def test_architecture_switch_picks_the_class_and_survives_save_load(tmp_path, tok):
    import json

    from madis.config import ConfigError
    from madis.mdlm import model_class

    assert model_class("ar") is ARBaseline and model_class("mdlm") is MaDiSModel
    with pytest.raises(ConfigError, match="architecture"):
        tiny_config(architecture="gpt")
    ar = ARBaseline(tiny_config(), tok)  # the class decides what its config says
    assert ar.cfg.architecture == "ar" and MaDiSModel(tiny_config(), tok).cfg.architecture == "mdlm"
    ar.save_pretrained(tmp_path / "ar")
    cfg_file = tmp_path / "ar" / "config.json"
    saved = json.loads(cfg_file.read_text())
    assert saved["model"]["architecture"] == "ar"
    del saved["model"]["architecture"]  # an export written before the field existed
    cfg_file.write_text(json.dumps(saved))
    again = load_pretrained(tmp_path / "ar", tok)
    assert isinstance(again, ARBaseline) and again.cfg.architecture == "ar"
    with pytest.raises(ValueError, match="architecture mdlm"):
        load_pretrained(tmp_path / "ar", tok, overrides={"architecture": "mdlm"})


def test_ar_pins_are_kept_and_a_threshold_is_refused(tok):
    torch.manual_seed(0)
    ar = ARBaseline(tiny_config(), tok).eval()
    with torch.no_grad():  # never [EOS]/[PAD] unless pinned: every row runs to N
        ar.heads.heads[0].bias[ar.codebook_sizes[0]:] = -1e4
    pins = torch.full((2, 3, 3), -1, dtype=torch.long)
    pins[0, 0] = torch.tensor([1, 2, 3])
    pins[1, 1, 2] = 7
    pins[1, 2, 0] = ar.codebook_sizes[0]  # [EOS] at position 2
    stages = []
    out = ar.generate(TEXTS[:2], LANGS[:2], pins=pins,
                      on_stage_end=lambda *a: stages.append(a))
    assert out.tokens[0, 0].tolist() == [1, 2, 3] and int(out.tokens[1, 1, 2]) == 7
    assert out.lengths.tolist() == [ar.cfg.num_positions, 2]
    assert out.steps_used.tolist() == [ar.cfg.num_positions, 3]
    assert len(stages) == 1 and stages[0][0] == 0 and not stages[0][2].any()
    free = ar.generate(TEXTS[:2], LANGS[:2])
    assert not torch.equal(free.tokens[0, 0], out.tokens[0, 0])  # the pin changed something
    with pytest.raises(ValueError, match="threshold"):
        ar.generate(TEXTS[:1], LANGS[:1], threshold=0.9)
    with pytest.raises(ValueError, match="outside the codebook"):
        ar.generate(TEXTS[:1], LANGS[:1], pins=torch.full((1, 1, 3), 99))


def test_pretrained_backbone_path_extends_vocabulary(tmp_path, tok):
    """``backbone`` naming local Qwen3 weights + tokenizer (what a hub download gives)."""
    from madis.mdlm.testing import mini_qwen3

    d = tmp_path / "qwen3-mini"
    hf_tok, _ = mini_qwen3(d)

    m = MaDiSModel(tiny_config(backbone=str(d)), tok)
    assert m.text_tokenizer.kind == "hf" and m.vocab.text_size == 320
    assert m.embed_tokens().weight.shape[0] == m.vocab.size == 320 + 3 + sum(tok.codebook_sizes)
    assert not m.backbone.config.is_causal
    assert m.vocab.name(m.vocab.mask_id) == "[M]" and m.vocab.name(m.vocab.part_offset(2) + 3) == "<rhand_3>"
    # user text that spells a special token is not turned into it
    assert hf_tok.eos_token_id not in m.text_tokenizer.encode("a <|endoftext|> b")
    loss, _ = m.loss(tiny_batch(tok), "pretrain")
    assert torch.isfinite(loss)
    text = m.encode_texts(["Hello"], ["ase"])
    n = m.cfg.num_positions
    z = torch.zeros(1, n, 3, dtype=torch.long)
    masked = torch.ones(1, n, dtype=torch.bool)
    with torch.no_grad():
        h1 = _sign_hidden(m, text, z, masked)
        masked[:, -1] = False
        h2 = _sign_hidden(m, text, z, masked)
    assert (h1[0, 0] - h2[0, 0]).abs().max() > 1e-4  # bidirectional after from_pretrained
    m.save_pretrained(tmp_path / "ck")
    again = MaDiSModel.from_pretrained(tmp_path / "ck", tok)
    assert again.text_tokenizer.kind == "hf"
    assert torch.equal(again.generate(["Hello"], ["ase"], num_steps=6).tokens,
                       m.generate(["Hello"], ["ase"], num_steps=6).tokens)
