"""The autoregressive baseline of the same backbone size (paper Table 2,
docs/design.md#the-autoregressive-baseline).

SOKE-style: a causal Qwen3 reads ``[y ; EOS]`` and then one sign position per step, embedded as
the weighted average of its three part tokens' learned embeddings (0.2 body, 0.4 per hand); three
heads predict the next position's part tokens at once (multi-head greedy decoding) until the body
head says [EOS]. Decoding uses a key/value cache. It trains with the same ``loss(batch, stage)``
shape as :class:`~madis.mdlm.model.MaDiSModel`, so the shared training loop can train it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from madis.mdlm.backbone import DTYPES, backbone_hidden
from madis.mdlm.base import Generation, SignLanguageModel, positions
from madis.mdlm.config import ModelConfig
from madis.mdlm.embedding import SignEmbedding
from madis.mdlm.heads import MultiPartHead
from madis.mdlm.losses import sign_nll
from madis.mdlm.sampling import pick_tokens, truncate_at_eos

STAGES = ("pretrain", "finetune")


class ARBaseline(SignLanguageModel):
    """Causal Qwen3 + SOKE multi-head decoding; arguments as :class:`MaDiSModel`."""

    causal = True
    architecture = "ar"

    def __init__(self, cfg: ModelConfig, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(cfg, tokenizer, **kwargs)
        self.sign_embedding = SignEmbedding("simple_avg", self.vocab, self.d_model, self.code_dims,
                                            avg_weights=cfg.ar_embed_weights)
        self.heads = MultiPartHead(self.d_model, self.codebook_sizes)
        self.to(DTYPES[cfg.dtype])

    def _hidden(self, x: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
                cache: DynamicCache | None = None) -> torch.Tensor:
        return backbone_hidden(self.backbone, x, attn, pos, cache)

    def loss(self, batch: Mapping[str, Any], stage: str = "finetune", *,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher-forced next-position loss: the separator predicts position 0, position i
        predicts i+1, up to and including [EOS] (positions after it are not trained). Per sample
        the mean over its targets (sum of the three part heads), then the batch mean.
        ``pretrain`` adds the text's next-token loss (same normalisation).

        Args and returns as :meth:`MaDiSModel.loss` (``generator`` is unused: nothing random).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        text = self.encode_texts(batch["text"], batch.get("lang"))
        targets, n = self.sign_targets(batch["tokens"], batch["token_mask"])
        bsz, num_pos = targets.shape[:2]
        lt = text.ids.shape[1]
        dev = self.device
        embed = self.embed_tokens()
        inputs = targets[:, : num_pos - 1].clamp(min=0)
        no_mask = torch.zeros(inputs.shape[:2], dtype=torch.bool, device=dev)
        sign_emb, _ = self.sign_embedding(inputs, no_mask, embed)
        x = torch.cat([embed(text.ids), sign_emb], 1)
        attn = torch.cat([text.valid, torch.ones_like(no_mask)], 1)
        h = self._hidden(x, attn, positions(text, num_pos - 1))
        h_pred = h[:, lt - 1:]  # b, n, d: separator, then sign inputs 0..N-2
        wanted = torch.arange(num_pos, device=dev)[None, :] <= n[:, None]
        rows, cols = wanted.nonzero(as_tuple=True)
        logits = self.heads(h_pred[rows, cols])
        nll = sign_nll(logits, targets[rows, cols])
        per = torch.zeros(bsz, device=dev).index_add(0, rows, nll) / wanted.sum(1)
        l_sign = per.mean()
        l_text = h.sum() * 0.0
        if stage == "pretrain":
            pairs = text.valid[:, :-1] & text.valid[:, 1:]
            rt, ct = pairs.nonzero(as_tuple=True)
            tl = self.backbone.lm_head(h[rt, ct])[:, : self.vocab.text_size]
            nll_t = F.cross_entropy(tl.float(), text.ids[rt, ct + 1], reduction="none")
            count = pairs.sum(1).clamp(min=1)
            l_text = (torch.zeros(bsz, device=dev).index_add(0, rt, nll_t) / count).mean()
        total = l_sign + l_text
        acc = (logits[0].argmax(-1) == targets[rows, cols, 0]).float().mean()
        return total, {"loss": total.detach(), "loss_token": l_sign.detach(),
                       "loss_text": l_text.detach(), "acc_body": acc.detach()}

    @torch.inference_mode()
    def generate(self, texts: list[str], langs: list[str] | None = None, *,
                 num_steps: int | None = None, sampler: str | None = None,
                 temperature: float | None = None, generator: torch.Generator | None = None,
                 stop_at_eos: bool = True, pins: torch.Tensor | None = None,
                 threshold: float | None = None,
                 on_stage_end: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                 **_: Any) -> Generation:
        """Greedy (or Gumbel, ``temperature`` > 0) multi-head decoding with a KV cache: one
        forward of the prefix, then one single-position forward per sign position.

        ``num_steps``, ``sampler`` and the MDLM speed-up switches are accepted and ignored (the
        baseline takes one step per position until every row has said [EOS] with
        ``stop_at_eos``, else N), so callers treat both models alike.

        Args:
            pins: ``[B, N', 3]`` int, -1 where free (as :meth:`MaDiSModel.generate
                <madis.mdlm.model.MaDiSModel.generate>`): a pinned part is forced at its
                position and the next positions are decoded after it (teacher forcing); a
                pinned body ``K_B`` ends the row there.
            threshold: must be None (or inf): confidence-threshold decoding is the MDLM's.
            on_stage_end: called once at the end, as the single stage ``(0, tokens [B, N, 3],
                masked [B, N] all False)`` in head space (streamed decoding sees one stage).
        Returns:
            :class:`~madis.mdlm.base.Generation`; ``steps_used`` per row is the positions it
            decoded up to and including its [EOS].
        Raises:
            ValueError: a negative or NaN temperature, a threshold, pins ``_full_pins`` refuses.
        """
        cfg, vocab = self.cfg, self.vocab
        num_pos = cfg.num_positions
        temperature = cfg.temperature if temperature is None else temperature
        if not temperature >= 0:  # NaN fails too
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
        if threshold is not None and not math.isinf(threshold):
            raise ValueError("threshold decoding applies to the masked diffusion model; the "
                             "autoregressive baseline decodes one position per step")
        if pins is not None:
            pins = self._full_pins(pins, len(texts))
        was_training = self.training
        self.eval()
        try:
            text = self.encode_texts(texts, langs)
            bsz, lt = text.ids.shape
            dev = self.device
            embed = self.embed_tokens()
            pos = positions(text, num_pos)
            cache = DynamicCache(config=self.backbone.config)
            attn = text.valid
            h = self._hidden(embed(text.ids), attn, pos[:, :lt], cache)[:, -1]
            tokens = torch.zeros(bsz, num_pos, 3, dtype=torch.long, device=dev)
            tokens[..., 0] = vocab.eos_class  # positions never reached read as ended
            done = torch.zeros(bsz, dtype=torch.bool, device=dev)
            steps = torch.full((bsz,), num_pos, dtype=torch.long, device=dev)
            no_mask = torch.zeros(bsz, 1, dtype=torch.bool, device=dev)
            one = torch.ones(bsz, 1, dtype=torch.bool, device=dev)
            for i in range(num_pos):
                rows = torch.arange(bsz, device=dev)  # every row queried, in order
                choice = torch.stack([pick_tokens(lg, temperature, generator, rows)[0]
                                      for lg in self.heads(h)], -1)  # b, 3
                if pins is not None:
                    choice = torch.where(pins[:, i] >= 0, pins[:, i], choice)
                tokens[:, i] = choice
                ends = ~done & (choice[:, 0] >= vocab.eos_class)
                steps[ends] = i + 1
                done |= ends
                if (stop_at_eos and bool(done.all())) or i == num_pos - 1:
                    break
                emb, _ = self.sign_embedding(choice[:, None], no_mask, embed)
                attn = torch.cat([attn, one], 1)
                h = self._hidden(emb, attn, pos[:, lt + i: lt + i + 1], cache)[:, -1]
            if on_stage_end is not None:
                on_stage_end(0, tokens, torch.zeros(bsz, num_pos, dtype=torch.bool, device=dev))
            codes, lengths = truncate_at_eos(tokens, self.codebook_sizes[0])
        finally:
            self.train(was_training)
        return Generation(codes, lengths, None, [], steps)
