"""SiCLIP: retrieval ranks with ties, the contrastive losses, the model (learns, saves, refuses bad batches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from madis.metrics.contrastive import symmetric_cross_entropy, token_wise_similarity
from madis.metrics.retrieval import chance_recall_at_k, recall_at_k, retrieval_metrics, retrieval_ranks
from madis.metrics.siclip import SiCLIP, SiCLIPConfig, encode_texts

# --- retrieval -----------------------------------------------------------------------------------

SIM = np.array([
    [0.9, 0.9, 0.1, 0.2],   # tie with text 1 counts against: rank 2
    [0.3, 0.5, 0.7, 0.5],   # beaten by text 2, tied with text 3: rank 3
    [0.0, 0.0, 1.0, 0.0],   # rank 1
    [0.4, 0.4, 0.4, 0.4],   # all tied: rank 4 (never lucky)
])


def test_ranks_with_ties_are_pessimistic_and_order_free():
    assert retrieval_ranks(SIM).tolist() == [2, 3, 1, 4]
    assert retrieval_ranks(SIM.T).tolist() == [1, 2, 1, 2]
    perm = np.array([2, 0, 3, 1])
    assert retrieval_ranks(SIM[perm][:, perm]).tolist() == [1, 2, 4, 3]
    got = retrieval_metrics(torch.tensor(SIM), ks=(1, 2, 3))
    assert got["sign_to_text"] == {"R@1": 25.0, "R@2": 50.0, "R@3": 75.0}
    assert got["text_to_sign"] == {"R@1": 50.0, "R@2": 100.0, "R@3": 100.0}


def test_batches_of_45_see_only_their_own_batch():
    n = 90
    sim = np.eye(n) * 0.5
    sim[np.arange(n), (np.arange(n) + 45) % n] = 0.9  # each query's distractor is in the other batch
    full = retrieval_metrics(sim)
    assert full["sign_to_text"]["R@1"] == 0.0 and full["sign_to_text"]["R@5"] == 100.0
    batched = retrieval_metrics(sim, batch_size=45)
    assert batched["sign_to_text"] == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0}
    # 50 items: batches of 45 and 5, the last one kept
    sim50 = -np.ones((50, 50))
    sim50[np.arange(50), np.arange(50)] = 0.0
    sim50[44, 45] = 1.0  # across the batch boundary: ignored in batches
    sim50[46, 47] = 1.0  # inside the short last batch: counts
    got = retrieval_metrics(sim50, batch_size=45, ks=(1,))
    assert got["sign_to_text"]["R@1"] == pytest.approx(100 * 49 / 50)
    assert retrieval_metrics(sim50, ks=(1,))["sign_to_text"]["R@1"] == pytest.approx(100 * 48 / 50)


def test_duplicate_texts_as_positives():
    sim = np.array([[0.2, 0.8, 0.1], [0.1, 0.7, 0.6], [0.3, 0.3, 0.9]])
    pos = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool)  # texts 0 and 1 are the same sentence
    assert retrieval_ranks(sim).tolist() == [2, 1, 1]
    assert retrieval_ranks(sim, pos).tolist() == [1, 1, 1]


def test_chance_recall():
    assert chance_recall_at_k(4, 1) == pytest.approx(25.0)
    assert chance_recall_at_k(4, 5) == pytest.approx(100.0)
    assert chance_recall_at_k(10, 3) == pytest.approx(30.0)  # 1 - (9/10)(8/9)(7/8)
    pos = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool)
    assert chance_recall_at_k(pos, 1) == pytest.approx(100 * (0.5 + 0.5 + 0.25 + 0.25) / 4)
    # the all-tied similarity scores the tie rule's 0, below chance: ties never get lucky
    assert retrieval_metrics(np.zeros((4, 4)), ks=(1,))["sign_to_text"]["R@1"] == 0.0


@pytest.mark.parametrize("sim, match", [
    (np.zeros((0, 0)), "empty"),
    (np.zeros((2, 3)), "square"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
])
def test_retrieval_bad_input(sim, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(sim)
    with pytest.raises(ValueError, match="no ranks"):
        recall_at_k([])


# --- losses --------------------------------------------------------------------------------------

def test_symmetric_cross_entropy_matches_torch_and_spreads_over_duplicates():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.0, 0.3], [0.0, 0.2, 3.0]])
    eye = torch.arange(3)
    expected = (F.cross_entropy(logits, eye) + F.cross_entropy(logits.T, eye)) / 2
    assert symmetric_cross_entropy(logits).item() == pytest.approx(expected.item(), abs=1e-6)
    pos = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2
    assert symmetric_cross_entropy(logits, pos).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        symmetric_cross_entropy(logits[:1, :1])
    with pytest.raises(ValueError, match="NaN"):
        symmetric_cross_entropy(torch.full((2, 2), float("nan")))


def test_token_wise_similarity_by_hand():
    # one sign with tokens e0, e1 (second one padding), one text with tokens e0, e1
    e = torch.eye(2)
    sign = e[None]                     # [1, 2, 2]
    sign_mask = torch.tensor([[True, False]])
    sign_w = torch.tensor([[1.0, 0.0]])
    text = e[None]
    text_mask = torch.tensor([[True, True]])
    text_w = torch.tensor([[0.25, 0.75]])
    got = token_wise_similarity(sign, sign_w, sign_mask, text, text_w, text_mask)
    # sign->text: token e0 best-matches word e0 (1) with weight 1 -> 1
    # text->sign: word e0 -> 1, word e1 -> best real sign token e0 gives 0; 0.25*1 + 0.75*0
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx((1.0 + 0.25) / 2)


# --- model ---------------------------------------------------------------------------------------

TINY = SiCLIPConfig(width=32, embed_dim=32, num_heads=4, motion_layers=1, text_layers=1,
                    max_text_bytes=32, max_positions=16, dropout=0.0)
WORDS = [f"sentence number {c}" for c in range(8)]


def _class_batch(classes, seed):
    """Keypoint motions whose shape depends on the class (one sentence per class)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 6.28, 40)
    base = torch.stack([torch.sin(t[:, None] * (1 + c) + torch.arange(165) * 0.1 * c)
                        for c in range(len(WORDS))])
    x = base[classes] + 0.3 * torch.randn(len(classes), 40, 165, generator=g)
    return x, [WORDS[c] for c in classes]


def test_encode_texts_uses_the_mdlm_byte_ids():
    ids, mask = encode_texts(["ab", "é"], max_bytes=8)
    assert ids.tolist() == [[97, 98, 256], [0xC3, 0xA9, 256]]  # bytes, then [EOS] = 256
    assert mask.all()
    ids, mask = encode_texts(["abc", "a"], max_bytes=2)
    assert ids.tolist() == [[97, 98, 256], [97, 256, 257]]  # cut at 2 bytes; [PAD] = 257
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_loss_drops_and_retrieval_beats_chance():
    torch.manual_seed(0)
    model = SiCLIP(TINY, "keypoints")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(40):
        x, texts = _class_batch(torch.randint(0, 8, (16,), generator=g), seed=step)
        out = model(x, None, texts)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    model.eval()
    x, texts = _class_batch(torch.arange(8), seed=999)
    sim = model.similarity(model.encode_motion(x), model.encode_text(texts))
    r1 = retrieval_metrics(sim, ks=(1,))["sign_to_text"]["R@1"]
    assert r1 >= 50.0  # chance is 12.5


@pytest.mark.parametrize("overrides", [{"fine_grained_weight": 0.0}, {"decoupled": False},
                                       {"motion_layers": 0, "text_layers": 0}])
def test_ablation_variants_run(overrides):
    from dataclasses import replace

    model = SiCLIP(replace(TINY, **overrides), "keypoints")
    x, texts = _class_batch(torch.tensor([0, 1, 2]), seed=0)
    out = model(x, torch.ones(3, 40, dtype=torch.bool), texts)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    if overrides.get("fine_grained_weight") == 0.0:
        assert out.fine_loss.item() == 0.0


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = SiCLIP(TINY, "keypoints", mean=np.full(165, 0.5), std=np.full(165, 2.0)).eval()
    model.save_pretrained(str(tmp_path / "siclip"))
    again = SiCLIP.from_pretrained(str(tmp_path / "siclip"))
    x, texts = _class_batch(torch.tensor([0, 3]), seed=0)
    a = model.similarity(model.encode_motion(x), model.encode_text(texts))
    b = again.similarity(again.encode_motion(x), again.encode_text(texts))
    assert torch.equal(a, b)
    assert again.std[0].item() == 2.0 and again.config == TINY
    with pytest.raises(FileNotFoundError):
        SiCLIP.from_pretrained(str(tmp_path / "nothing"))



def test_backbone_text_encoder(tmp_path):
    """text_encoder=backbone (the paper profile): the first text_layers layers of a local Qwen3
    checkpoint with its weights and tokenizer, attending both ways; it trains (gradients reach
    the kept layer), exports with its tokenizer and backbone config, and loads without the
    original checkpoint."""
    import shutil
    from dataclasses import replace

    from madis.mdlm.testing import mini_qwen3

    d = tmp_path / "qwen3-mini"
    hf_tok, qwen = mini_qwen3(d, texts=WORDS)
    cfg = replace(TINY, text_encoder="backbone", text_backbone=str(d), text_layers=1)
    torch.manual_seed(0)
    model = SiCLIP(cfg, "keypoints")
    assert len(model.text_backbone.model.layers) == 1 and model.text_tokenizer.kind == "hf"
    assert not hasattr(model, "text_embed")
    kept = model.text_backbone.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(kept, qwen.model.layers[0].self_attn.q_proj.weight)
    ids = torch.tensor([hf_tok.encode("sentence number 1")])
    pos = torch.arange(ids.shape[1])[None]
    from madis.mdlm.backbone import backbone_hidden

    def first_hidden(i):
        e = model.text_backbone.get_input_embeddings()(i)
        return backbone_hidden(model.text_backbone, e, None, pos)[0, 0]

    other = ids.clone()
    other[0, -1] = (other[0, -1] + 1) % 300
    with torch.no_grad():
        assert (first_hidden(ids) - first_hidden(other)).abs().max() > 1e-5  # bidirectional

    x, texts = _class_batch(torch.tensor([0, 1, 2, 3]), seed=0)
    out = model(x, None, texts)
    out.loss.backward()
    assert torch.isfinite(out.loss) and kept.grad is not None and kept.grad.abs().sum() > 0
    model.eval()
    model.save_pretrained(str(tmp_path / "export"))
    shutil.rmtree(d)  # the export alone must do
    again = SiCLIP.from_pretrained(str(tmp_path / "export"))
    assert again.config == cfg and again.text_tokenizer.kind == "hf"
    with torch.no_grad():
        a = model.similarity(model.encode_motion(x), model.encode_text(texts))
        b = again.similarity(again.encode_motion(x), again.encode_text(texts))
    assert torch.allclose(a, b, atol=1e-6)
    mini_qwen3(d, texts=WORDS)
    with pytest.raises(ValueError, match="has 2 layers, fewer than siclip.text_layers=3"):
        SiCLIP(replace(cfg, text_layers=3), "keypoints")
    with pytest.raises(Exception, match="text_encoder must be bytes or backbone"):
        replace(cfg, text_encoder="bert")
    with pytest.raises(FileNotFoundError, match="no local Qwen3 checkpoint"):  # not a hub id
        SiCLIP(replace(cfg, text_backbone=str(tmp_path / "no" / "such")), "keypoints")
    for bad in ({"dropout": 1.5}, {"text_layers": 2.5}, {"fine_grained_weight": float("nan")},
                {"text_backbone": ""}):
        with pytest.raises(Exception, match="siclip"):
            replace(cfg, **bad)

def test_bad_batches_raise_clear_errors():
    model = SiCLIP(TINY, "keypoints")
    x, texts = _class_batch(torch.tensor([0, 1]), seed=0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        model(x[:1], None, texts[:1])
    with pytest.raises(ValueError, match="empty motion batch"):
        model.encode_motion(x[:0])
    with pytest.raises(ValueError, match="2 motions but 1 texts"):
        model(x, None, texts[:1])
    with pytest.raises(ValueError, match="text 1 is empty"):
        model(x, None, [texts[0], "  "])
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] have no real frames"):
        model(x, mask, texts)
    bad = x.clone()
    bad[0, 3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad, None, texts)
    with pytest.raises(ValueError, match="165"):
        model(x[..., :100], None, texts)
