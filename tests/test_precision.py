"""Numeric precision rules: under bf16 only parameters are bf16 (RoPE's inv_freq, the frozen
codebook copies and the motion tokenizer stay fp32), and fp32 jobs on a GPU use TF32."""

from __future__ import annotations

import math

import pytest
import torch

from madis.mdlm import ARBaseline, MaDiSModel
from madis.mdlm.testing import mini_qwen3, tiny_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

QWEN3_THETA, QWEN3_HEAD_DIM = 1_000_000.0, 128


def _rotary_angle_error(model, position: int) -> float:
    """Largest error (rad) of the backbone's RoPE angles at ``position`` against float64."""
    rotary = model.backbone.model.rotary_emb
    head_dim = model.backbone.config.head_dim
    theta = model.backbone.config.rope_parameters["rope_theta"]
    x = torch.zeros(1, 1, head_dim)  # only its dtype and device matter: fp32 cos/sin out
    cos, sin = rotary(x, torch.tensor([[position]]))
    got = torch.atan2(sin[0, 0, : head_dim // 2].double(), cos[0, 0, : head_dim // 2].double())
    exact = position / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    diff = torch.remainder(got - exact + math.pi, 2 * math.pi) - math.pi
    return float(diff.abs().max())


def _assert_fp32_buffers_and_tokenizer(model):
    for name, b in model.named_buffers():
        if b.is_floating_point():
            assert b.dtype == torch.float32, name
    for name, t in [*model.tokenizer.named_parameters(), *model.tokenizer.named_buffers()]:
        if t.is_floating_point():
            assert t.dtype == torch.float32, f"tokenizer {name}"


@pytest.mark.parametrize("cast", ["config", ".to(bfloat16)", ".half()", "deepspeed-style"])
def test_bf16_model_keeps_rope_codebooks_and_tokenizer_in_fp32(cast):
    tok = tiny_tokenizer()
    cfg = tiny_config(hidden_size=64, num_heads=1, num_kv_heads=1, head_dim=QWEN3_HEAD_DIM,
                      intermediate_size=64, rope_theta=QWEN3_THETA)
    if cast == "config":
        model = MaDiSModel(tiny_config(**{**cfg.__dict__, "dtype": "bfloat16"}), tok)
        want = torch.bfloat16
    else:
        model = MaDiSModel(cfg, tok)
        want = torch.float16 if cast == ".half()" else torch.bfloat16
        if cast == ".to(bfloat16)":
            model.to(torch.bfloat16)
        elif cast == ".half()":
            model.half()
        else:  # what DeepSpeed 0.19.8 does with bf16 enabled: params cast, then a device move
            for p in model.parameters():
                p.data = p.data.to(torch.bfloat16)
            model.to("cpu")
    assert {p.dtype for p in model.parameters()} == {want}
    rotary = model.backbone.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32
    _assert_fp32_buffers_and_tokenizer(model)
    # Qwen3's RoPE at position 229: fp32 angles are exact to ~1e-5 rad; a bf16 inv_freq is
    # 0.26 rad off (the bug this rule fixes)
    assert _rotary_angle_error(model, 229) < 1e-4
    rotary.inv_freq = rotary.inv_freq.to(torch.bfloat16)
    assert _rotary_angle_error(model, 229) > 0.2
    # the model still runs in bf16 with its fp32 tokenizer (physical loss, motion decoding)
    from madis.mdlm.testing import tiny_batch

    rotary.inv_freq = rotary.original_inv_freq.clone()
    loss, _ = model.loss(tiny_batch(tok, lengths=(12, 5)), "pretrain",
                         generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_pretrained_bf16_backbone_and_baseline_keep_fp32_rope(tmp_path):
    mini_qwen3(tmp_path)
    tok = tiny_tokenizer()
    cfg = tiny_config(backbone=str(tmp_path), text_tokenizer="auto", dtype="bfloat16")
    for model in (MaDiSModel(cfg, tok), ARBaseline(cfg, tok)):
        assert model.embed_tokens().weight.dtype == torch.bfloat16
        assert model.backbone.model.rotary_emb.inv_freq.dtype == torch.float32
        _assert_fp32_buffers_and_tokenizer(model)
        moved = model.to("cpu", torch.bfloat16)  # a second cast changes nothing
        assert moved.backbone.model.rotary_emb.inv_freq.dtype == torch.float32


def test_tf32_is_on_for_gpu_jobs_only():
    from madis.train.config import TrainConfig
    from madis.train.loop import set_matmul_precision

    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        set_matmul_precision(TrainConfig(use_gpu=False))
        assert torch.get_float32_matmul_precision() == "highest"
        set_matmul_precision(TrainConfig(use_gpu=True, bf16=False))
        assert torch.get_float32_matmul_precision() == "high"  # TF32 tensor cores
        assert torch.backends.cudnn.allow_tf32
        torch.set_float32_matmul_precision("highest")
        set_matmul_precision(TrainConfig(use_gpu=True, tf32=False))
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(old)
