"""The model side of MaDiS's reverse process: one ``generate`` call's ``predict`` callback for
the sampler (:func:`~madis.mdlm.sampling.unmask`), with the decoding speed-ups
(docs/design.md#the-sampler, docs/design.md#decoding-switches).

The sampler decides which positions to reveal; :class:`StepDecoder` answers "the logits of these
masked positions given the current tokens", reusing what a step does not change: the text
embeddings, the exact key/value cache of the text prefix (when text attends only to text), the
approximate per-stage cache of UTC's other positions, and only the rows or positions still in
the computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import DynamicCache

from madis.mdlm.base import TextBatch, positions
from madis.mdlm.masking import utc_stage_of_positions

if TYPE_CHECKING:
    from madis.mdlm.model import MaDiSModel


@dataclass
class DecodeOptions:
    """The speed-up switches of one ``generate`` call (docs/design.md#decoding-switches)."""

    logits_masked_only: bool
    text_kv_cache: bool
    drop_after_eos: bool
    stage_kv_cache: bool
    #: threshold decoding: a step runs only the rows with a position to decide (rows that
    #: finished the stage early wait for the others without computing)
    skip_idle_rows: bool = False


class StepDecoder:
    """The model side of one ``generate`` call: the sampler's ``predict`` with the speed-ups.

    Holds the text embeddings (text is never masked at inference), the exact text-prefix
    key/value cache when text attends only to text, and the approximate per-stage cache.
    """

    def __init__(self, model: MaDiSModel, text: TextBatch, checkpoints: list[float],
                 opts: DecodeOptions) -> None:
        self.m, self.text, self.opts = model, text, opts
        self.num_pos = model.cfg.num_positions
        self.lt = text.ids.shape[1]
        self.embed = model.embed_tokens()
        self.tables = None if model.cfg.embedding == "simple_avg" else model.sign_embedding.tables()
        self.text_emb = self.embed(text.ids)
        self.pos = positions(text, self.num_pos)
        self.stage_of = utc_stage_of_positions(self.num_pos, checkpoints, text.ids.device)
        self.eos = model.vocab.eos_class
        self.text_cache: DynamicCache | None = None
        self.stage_cache: DynamicCache | None = None
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._full: DynamicCache | None = None
        if opts.text_kv_cache:
            self.text_cache = DynamicCache(config=model.backbone.config)
            model.hidden(self.text_emb, text.valid, self.pos[:, : self.lt], self.text_cache)

    def alive(self, tokens: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Sign positions still in the computation ``[B, N]``: all, or with ``drop_after_eos``
        those up to the first committed [EOS]/[PAD]."""
        pos = torch.arange(self.num_pos, device=tokens.device)
        if not self.opts.drop_after_eos:
            return torch.ones_like(masked)
        ended = ~masked & (tokens[..., 0] >= self.eos)
        first = torch.where(ended, pos, self.num_pos).min(1).values
        return pos[None, :] <= first[:, None]

    def stage_start(self, stage: int, tokens: torch.Tensor, masked: torch.Tensor) -> None:
        """Full forward over every live position; keep the keys/values of the positions outside
        this stage (text, earlier stages' tokens, later stages' [M]) for the stage's steps.
        The pass's own outputs serve the stage's first step, which they compute exactly."""
        m, lt = self.m, self.lt
        alive = self.alive(tokens, masked)
        ns = int(alive.sum(1).max())
        cols = torch.arange(ns, device=tokens.device)
        h = self._run(tokens, masked, alive, cols, keep_cache=True)
        self.pending = (h, cols)
        in_stage = self.stage_of[:ns] == stage
        self.active, self.other = cols[in_stage], cols[~in_stage]
        keep = torch.cat([torch.arange(lt, device=cols.device), lt + self.other])
        self.stage_cache = DynamicCache(config=m.backbone.config)
        for i, layer in enumerate(self._full.layers):
            self.stage_cache.update(layer.keys[:, :, keep], layer.values[:, :, keep], i)
        if self.text_cache is not None:
            self.text_cache.crop(-ns)
        self._full = None

    def _run(self, tokens: torch.Tensor, masked: torch.Tensor, alive: torch.Tensor,
             cols: torch.Tensor, keep_cache: bool = False) -> torch.Tensor:
        """Hidden states ``[B, len(cols), d]`` of sign positions ``cols`` (a prefix ``0..ns-1``
        unless a stage cache supplies the other positions' keys/values)."""
        m, lt = self.m, self.lt
        emb, _ = m.sign_embedding(tokens[:, cols], masked[:, cols], self.embed, self.tables)
        pos = self.pos[:, lt + cols]
        if self.stage_cache is not None and not keep_cache:
            attn = torch.cat([self.text.valid, alive[:, self.other], alive[:, cols]], 1)
            h = m.hidden(emb, attn, pos, self.stage_cache)
            self.stage_cache.crop(-len(cols))
        elif self.text_cache is not None:
            attn = torch.cat([self.text.valid, alive[:, cols]], 1)
            h = m.hidden(emb, attn, pos, self.text_cache)
            if keep_cache:
                self._full = self.text_cache
            else:
                self.text_cache.crop(-len(cols))
        else:
            cache = DynamicCache(config=m.backbone.config) if keep_cache else None
            x = torch.cat([self.text_emb, emb], 1)
            attn = m.attention_mask(self.text.valid, alive[:, cols])
            h = m.hidden(x, attn, torch.cat([self.pos[:, :lt], pos], 1), cache)[:, lt:]
            self._full = cache
        return h

    def predict(self, tokens: torch.Tensor, masked: torch.Tensor,
                query: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The sampler's :data:`~madis.mdlm.sampling.Predictor`.

        Args:
            tokens: ``[B, N, 3]`` head-space tokens (arbitrary where masked).
            masked: bool ``[B, N]``, True at [M] positions.
            query: bool ``[B, N]``, the positions whose logits the sampler needs.
        Returns:
            (body ``[Q, K_B+2]``, lhand ``[Q, K_L]``, rhand ``[Q, K_R]``), one row per True
            entry of ``query`` in row-major order.
        """
        alive = self.alive(tokens, masked)
        if self.pending is not None:
            (h, cols), self.pending = self.pending, None
        elif self.stage_cache is not None:
            # the stage's own positions, up to the last row's first [EOS]
            cols = self.active[alive[:, self.active].any(0)]
            h = self._run(tokens, masked, alive, cols)
        else:
            # with drop_after_eos the sequence ends at the last row's first [EOS]
            cols = torch.arange(int(alive.sum(1).max()), device=tokens.device)
            busy = query.any(1)
            if self.opts.skip_idle_rows and not bool(busy.all()):
                return self._predict_rows(busy.nonzero()[:, 0], tokens, masked, alive, cols,
                                          query)
            h = self._run(tokens, masked, alive, cols)
        q = query[:, cols]  # every queried position is among cols
        if self.opts.logits_masked_only:
            return self.m.heads(h[q])
        return tuple(lg[q] for lg in self.m.heads(h))

    def _predict_rows(self, rows: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor,
                      alive: torch.Tensor, cols: torch.Tensor,
                      query: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`predict` computed on ``rows`` only (the rows holding every query); the other
        rows' caches and inputs are left as they are."""
        m, lt = self.m, self.lt
        text = self.text
        emb, _ = m.sign_embedding(tokens[rows][:, cols], masked[rows][:, cols], self.embed,
                                  self.tables)
        pos = self.pos[rows]
        if self.text_cache is not None:
            cache = DynamicCache(config=m.backbone.config)
            for i, layer in enumerate(self.text_cache.layers):
                cache.update(layer.keys[rows], layer.values[rows], i)
            attn = torch.cat([text.valid[rows], alive[rows][:, cols]], 1)
            h = m.hidden(emb, attn, pos[:, lt + cols], cache)
        else:
            x = torch.cat([self.text_emb[rows], emb], 1)
            attn = m.attention_mask(text.valid[rows], alive[rows][:, cols])
            h = m.hidden(x, attn, torch.cat([pos[:, :lt], pos[:, lt + cols]], 1))[:, lt:]
        q = query[rows][:, cols]
        if self.opts.logits_masked_only:
            return self.m.heads(h[q])
        return tuple(lg[q] for lg in self.m.heads(h))
