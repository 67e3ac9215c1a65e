"""The Qwen3 backbone: bidirectional for the MDLM, causal for the autoregressive baseline.

transformers 5.24's Qwen3 honours ``config.is_causal = False`` under the ``sdpa`` attention
implementation: every layer attends in both directions and 2-D padding masks (and custom 4-D
boolean masks, True = may attend) still apply. Tests check this numerically
(``tests/test_mdlm_backbone.py``) because simpler-looking switches silently stay causal
(docs/operations.md#stack-facts).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, Qwen3Config, Qwen3ForCausalLM

from madis.mdlm.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def tiny_qwen3_config(cfg: ModelConfig, vocab_size: int, *, causal: bool) -> Qwen3Config:
    """A from-scratch Qwen3 config from ``cfg``'s sizes (the CPU profile's backbone)."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=max(4096, cfg.max_text_tokens + cfg.num_positions + 8),
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
        is_causal=causal,
        attn_implementation="sdpa",
    )


def new_backbone(config: Qwen3Config | dict[str, Any], *, causal: bool) -> Qwen3ForCausalLM:
    """A randomly initialised backbone from a config (or a saved config dict)."""
    if isinstance(config, dict):
        config = Qwen3Config.from_dict(dict(config))
    config.is_causal = causal
    config._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(config)


def pretrained_backbone(name_or_path: str, *, causal: bool, dtype: torch.dtype) -> Qwen3ForCausalLM:
    """Qwen3 weights from the hub or a local directory (e.g. ``Qwen/Qwen3-0.6B-Base``), with
    the causal mask replaced by a bidirectional one unless ``causal`` (paper 4, as LLaDA).

    Raises:
        ValueError: the checkpoint is not a Qwen3 model.
        FileNotFoundError: ``name_or_path`` is a local path (absolute, ``./``, ``../``, ``~``)
            that does not exist (it would otherwise be taken for a hub id).
    """
    import os

    if name_or_path.startswith(("/", "./", "../", "~")) and not os.path.isdir(
            os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"no local Qwen3 checkpoint at {name_or_path}: the directory "
                                "does not exist")
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type != "qwen3":
        raise ValueError(f"{name_or_path} is a {config.model_type!r} model, expected qwen3")
    config.is_causal = causal
    return Qwen3ForCausalLM.from_pretrained(name_or_path, config=config,
                                            attn_implementation="sdpa", dtype=dtype)


def extend_vocabulary(model: Qwen3ForCausalLM, size: int) -> None:
    """Resize the (tied) input/output embeddings to ``size`` rows; new rows start at the mean
    of the old ones (transformers' ``mean_resizing``) so the special tokens begin in-distribution."""
    if model.get_input_embeddings().weight.shape[0] != size:
        model.resize_token_embeddings(size, mean_resizing=True)


def backbone_hidden(model: Qwen3ForCausalLM, inputs_embeds: torch.Tensor,
                    attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                    cache: Any = None) -> torch.Tensor:
    """Last hidden states ``[B, S, d]`` (after the final norm) for ``inputs_embeds [B, S, d]``.

    ``attention_mask`` is a 2-D key mask ``[B, past + S]`` or a 4-D boolean mask; a 2-D mask
    with no padding is dropped, so transformers builds no mask at all (the backbone's
    ``is_causal`` alone then decides, which is what that mask would have said). With ``cache``
    (a ``DynamicCache``) the new keys/values are appended to it.
    """
    if attention_mask is not None and attention_mask.dim() == 2 and bool(attention_mask.all()):
        attention_mask = None
    out = model.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      position_ids=position_ids, cache=cache, use_cache=cache is not None)
    return out.last_hidden_state
