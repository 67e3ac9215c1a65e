"""Tiny real parts for the MDLM's tests and benchmarks: a randomly initialised
``DecoupledTokenizer``, model configs, batches in the training layout, a local Qwen3 checkpoint.

Builders of artefacts live beside the package whose formats they write
(``madis/<package>/testing.py``); pytest fixtures live in ``tests/conftest.py``
(docs/architecture.md#tests-and-benchmarks).
"""

from __future__ import annotations

import numpy as np
import torch

from madis.mdlm import ModelConfig
from madis.motion import FRAMES_PER_POSITION, get_format
from madis.tokenizer import DecoupledTokenizer, TokenizerConfig

#: a tokenizer and a model small enough that a test decodes a batch in milliseconds on one core
TINY_TOKENIZER = dict(width=16, code_dim=8, codebook_sizes=(8, 16, 16), depth=2)
TINY_MODEL = dict(num_positions=12, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_text_tokens=48)
TOK_CFG = TokenizerConfig(**TINY_TOKENIZER)
TEXTS = ["Hello world", "你好，世界", "Guten Morgen, wie geht's?"]
LANGS = ["ase", "csl", "gsg"]


def tiny_tokenizer(seed: int = 0, fmt: str = "smplx133") -> DecoupledTokenizer:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim = get_format(fmt).dim
    tok = DecoupledTokenizer(TOK_CFG, fmt, mean=rng.normal(size=dim), std=rng.uniform(0.5, 2.0, dim))
    # spread the codebooks so that codes are distinguishable targets
    for cb in tok.codebooks:
        cb.copy_(torch.randn_like(cb))
    return tok.eval()


def mini_qwen3(directory, texts=TEXTS, seed: int = 0):
    """A local Qwen3 checkpoint as a hub download gives it, without a download: a 2-layer
    Qwen3ForCausalLM (hidden 32, vocabulary 320) and a byte-level BPE tokenizer trained on
    ``texts``, both saved in ``directory``. Returns ``(hf_tokenizer, model)``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts) * 20, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    hf_tok.save_pretrained(directory)
    qcfg = Qwen3Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qcfg)
    model.save_pretrained(directory)
    return hf_tok, model


def tiny_config(**kw) -> ModelConfig:
    """:data:`TINY_MODEL` with ``kw`` on top."""
    return ModelConfig(**{**TINY_MODEL, **kw})


def tiny_batch(tok: DecoupledTokenizer, lengths=(12, 5, 0), width: int | None = None, seed: int = 0):
    """A batch in the data contract's layout; sign positions beyond ``lengths`` padded -1."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    width = width or max(max(lengths), 1)
    tokens = torch.full((b, width, 3), -1, dtype=torch.long)
    token_mask = torch.zeros(b, width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        for p, k in enumerate(tok.codebook_sizes):
            tokens[i, :n, p] = torch.randint(0, k, (n,), generator=g)
        token_mask[i, :n] = True
    # the motion the tokens stand for, so that the physical loss has a reachable optimum
    motion = tok.decode(tokens)
    mask = token_mask.repeat_interleave(FRAMES_PER_POSITION, 1)
    return {"text": (TEXTS * b)[:b], "lang": (LANGS * b)[:b], "tokens": tokens,
            "token_mask": token_mask, "motion": motion, "mask": mask}
