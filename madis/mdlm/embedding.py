"""Sign-position embeddings: the mixture-of-parts (MoP) layer and its ablation variants (3.3.2).

For a position with part tokens (z^B, z^L, z^R)::

    u_p = FC_p(C_p[z^p])                        (C_p: the tokenizer's codebook, frozen by default)
    g   = softmax(MLP([u_B ; u_L ; u_R]))       in R^3
    e   = sum_p g_p u_p                         (dense MoP, the default)

``sparse_top1`` / ``sparse_top2`` keep the k largest gates and renormalise them (Table 5);
``simple_avg`` is SOKE's mean of three learned per-part embeddings (rows of the extended
vocabulary), and with other weights it is the autoregressive baseline's 0.2/0.4/0.4 average.
A masked position is the learned ``[M]`` row; ``[EOS]``/``[PAD]`` positions their own rows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from madis.mdlm.vocab import SignVocab


class SignEmbedding(nn.Module):
    """Embeds the N sign positions.

    Args:
        variant: ``dense``, ``sparse_top1``, ``sparse_top2`` or ``simple_avg``.
        vocab: ids of the special and sign rows of the backbone's embedding matrix.
        d_model: backbone width.
        code_dims: (d_B, d_L, d_R) of the codebooks.
        codebooks: the tokenizer's codebooks ``[K_p, d_p]`` to copy (None: zeros, to be loaded
            from a checkpoint).
        train_codebooks: make the copies trainable (frozen buffers otherwise).
        avg_weights: part weights of ``simple_avg`` (default equal thirds).
    """

    def __init__(self, variant: str, vocab: SignVocab, d_model: int, code_dims: Sequence[int],
                 codebooks: Sequence[torch.Tensor] | None = None, train_codebooks: bool = False,
                 avg_weights: Sequence[float] = (1 / 3, 1 / 3, 1 / 3)) -> None:
        super().__init__()
        self.variant = variant
        self.vocab = vocab
        self.register_buffer("avg_weights", torch.tensor(list(avg_weights)), persistent=False)
        self.top_k = {"sparse_top1": 1, "sparse_top2": 2}.get(variant, 3)
        if variant == "simple_avg":
            return
        for p, (k, d) in enumerate(zip(vocab.codebook_sizes, code_dims)):
            cb = torch.zeros(k, d) if codebooks is None else codebooks[p].detach().float().clone()
            if tuple(cb.shape) != (k, d):
                raise ValueError(f"codebook {p} has shape {tuple(cb.shape)}, expected {(k, d)}")
            if train_codebooks:
                self.register_parameter(f"codebook_{p}", nn.Parameter(cb))
            else:
                self.register_buffer(f"codebook_{p}", cb)
        self.part_fc = nn.ModuleList(nn.Linear(d, d_model) for d in code_dims)
        self.gate = nn.Sequential(nn.Linear(3 * d_model, d_model), nn.GELU(), nn.Linear(d_model, 3))

    @torch.no_grad()
    def match_scale(self, rms: float) -> None:
        """Rescale the part projections ``FC_p`` so that ``u_p = FC_p(C_p[z])`` has root mean
        square ``rms`` over the codebook's rows (issue 13, ``model.mop_init: text_scale``).

        A default-initialised Linear on codebook rows gives sign embeddings about 30x the RMS of
        the backbone's token rows (0.6 vs 0.02 in cpu-tiny): the sign positions then drown the
        text and ``[M]`` in the residual stream. No-op for ``simple_avg``.
        """
        if self.variant == "simple_avg":
            return
        for p, fc in enumerate(self.part_fc):
            cb = self.codebook(p).float()
            now = fc(cb.to(fc.weight.dtype)).float().pow(2).mean().sqrt()
            if now > 0:
                fc.weight.mul_(rms / now)
                fc.bias.mul_(rms / now)

    def codebook(self, part: int) -> torch.Tensor:
        return getattr(self, f"codebook_{part}")

    def gates(self, parts: torch.Tensor) -> torch.Tensor:
        """Gate weights from the part embeddings ``u`` ``[..., 3, d]`` -> ``[..., 3]`` (sum 1)."""
        g = torch.softmax(self.gate(parts.flatten(-2)).float(), dim=-1)
        if self.top_k < 3:
            top = g.topk(self.top_k, dim=-1)
            g = torch.zeros_like(g).scatter(-1, top.indices, top.values)
            g = g / g.sum(-1, keepdim=True)
        return g

    def tables(self, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """``FC_p(C_p)`` for every code, ``[K_p, d_model]`` per part: projecting the codebooks
        once and gathering rows equals projecting each position's code row."""
        dtype = dtype or self.part_fc[0].weight.dtype
        return [self.part_fc[p](self.codebook(p).to(dtype)) for p in range(3)]

    def forward(self, tokens: torch.Tensor, masked: torch.Tensor, embed_tokens: nn.Embedding,
                tables: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed sign positions.

        Args:
            tokens: ``[B, N, 3]`` head-space tokens (body ``K_B`` = [EOS], ``K_B+1`` = [PAD]);
                entries of masked positions are ignored.
            masked: bool ``[B, N]``.
            embed_tokens: the backbone's (extended) input embedding.
            tables: :meth:`tables`, when the caller reuses them across calls (decoding).
        Returns:
            (embeddings ``[B, N, d_model]``, gates ``[B, N, 3]`` -- zeros at masked and
            special positions -- or None for ``simple_avg``).
        """
        vocab = self.vocab
        kb = vocab.codebook_sizes[0]
        special = tokens[..., 0] >= kb
        special_id = torch.where(masked, vocab.mask_id, vocab.eos_id + (tokens[..., 0] - kb).clamp(0, 1))
        out = embed_tokens(special_id)  # b, n, d: right for masked and special positions
        gates = None
        if self.variant != "simple_avg":
            gates = out.new_zeros(out.shape[:-1] + (3,), dtype=torch.float32)
        # no early return when no position holds a code: under ZeRO-3 every rank must run the
        # same submodules (each forward gathers their partitioned weights from all ranks)
        rows, cols = (~(masked | special)).nonzero(as_tuple=True)
        codes = torch.stack([tokens[rows, cols, p].clamp(0, vocab.codebook_sizes[p] - 1)
                             for p in range(3)], -1)  # m, 3
        if self.variant == "simple_avg":
            parts = embed_tokens(vocab.sign_vocab_ids(codes))  # m, 3, d
            sign = (parts * self.avg_weights.to(parts.dtype)[:, None]).sum(-2)
        else:
            tables = tables if tables is not None else self.tables(out.dtype)
            u = torch.stack([tables[p][codes[:, p]] for p in range(3)], -2)  # m, 3, d
            g = self.gates(u)
            sign = (g.to(u.dtype)[..., None] * u).sum(-2)
            gates = gates.index_put((rows, cols), g)
        return out.index_put((rows, cols), sign.to(out.dtype)), gates
