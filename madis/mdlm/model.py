"""MaDiS's masked diffusion language model: tri-level losses (3.2), UTC fine-tuning (3.3.1),
MoP embeddings (3.3.2) and multi-head decoding (4).

:meth:`MaDiSModel.loss` reads in the paper's order (masking: eq. 1 or UTC's index masks, then
eq. 3, 4, 5 and the total), the losses themselves are in :mod:`madis.mdlm.losses`;
:meth:`MaDiSModel.generate` runs the sampler (:mod:`madis.mdlm.sampling`) with the model side of
each step in :mod:`madis.mdlm.step_decoder`.

The input is ``x = [y ; EOS ; z]``: L text tokens, the separator, N sign positions. The model has
no t input (RADD): it predicts masked tokens from the unmasked ones
(docs/design.md#reverse-process-eq-2).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from madis.mdlm.backbone import DTYPES, backbone_hidden
from madis.mdlm.base import Generation, SignLanguageModel, TextBatch, positions
from madis.mdlm.config import ModelConfig
from madis.mdlm.embedding import SignEmbedding
from madis.mdlm.heads import LatentProjector, MultiPartHead
from madis.mdlm.losses import diffusion_token_loss, latent_loss, physical_space_loss, sign_nll
from madis.mdlm.masking import sample_mask_ratio, uniform_mask, utc_index_mask
from madis.mdlm.sampling import truncate_at_eos, unmask
from madis.mdlm.step_decoder import DecodeOptions, StepDecoder
from madis.motion.base import PARTS

STAGES = ("pretrain", "finetune")


class MaDiSModel(SignLanguageModel):
    """Non-causal Qwen3 with MoP sign embeddings, three part heads and three latent MLPs.

    Args:
        cfg: the ``model`` section.
        tokenizer: the trained ``DecoupledTokenizer`` (frozen): its codebooks seed the MoP
            layer and are the latent targets, its decoders give the physical loss.
        codebook_sizes, code_dims: instead of a tokenizer, for generation-only use.

    Example::

        model = MaDiSModel(cfg, tokenizer)
        loss, metrics = model.loss(batch, stage="pretrain")
        out = model.generate(["Guten Morgen"], ["dgs"], num_steps=25)
    """

    causal = False
    architecture = "mdlm"

    def __init__(self, cfg: ModelConfig, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(cfg, tokenizer, **kwargs)
        cfg = self.cfg
        codebooks = tokenizer.codebooks if tokenizer is not None else None
        self.sign_embedding = SignEmbedding(cfg.embedding, self.vocab, self.d_model,
                                            self.code_dims, codebooks, cfg.train_codebooks)
        if cfg.mop_init == "text_scale" and codebooks is not None:
            text_rows = self.embed_tokens().weight[: self.vocab.text_size]
            self.sign_embedding.match_scale(float(text_rows.detach().float().pow(2).mean().sqrt()))
        self.heads = MultiPartHead(self.d_model, self.codebook_sizes)
        self.latent = LatentProjector(self.d_model, self.code_dims, cfg.latent_mlp_hidden)
        self.to(DTYPES[cfg.dtype])

    # ------------------------------------------------------------------ forward pieces
    def attention_mask(self, text_valid: torch.Tensor, sign_valid: torch.Tensor) -> torch.Tensor:
        """Keys each query may attend to. Full bidirectional attention gives the 2-D padding
        mask ``[B, Lt + Ns]``; with ``text_attends_sign=False`` a 4-D boolean mask
        ``[B, 1, S, S]`` (True = attend) keeps text queries on text keys."""
        key_valid = torch.cat([text_valid, sign_valid], 1)
        if self.cfg.text_attends_sign:
            return key_valid
        is_sign = torch.arange(key_valid.shape[1], device=key_valid.device) >= text_valid.shape[1]
        allowed = is_sign[:, None] | ~is_sign[None, :]  # q, k
        return key_valid[:, None, None, :] & allowed[None, None]

    def hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: torch.Tensor, cache: DynamicCache | None = None) -> torch.Tensor:
        """Last hidden states ``[B, S, d_model]`` of the backbone (after its final norm)."""
        return backbone_hidden(self.backbone, inputs_embeds, attention_mask, position_ids, cache)

    def mop_gates(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """MoP gate weights ``[B, N, 3]`` of unmasked codes ``tokens [B, N, 3]`` (Figure 7);
        None for ``simple_avg``."""
        masked = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self.sign_embedding(tokens.clamp(min=0), masked, self.embed_tokens())[1]

    # ------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Any], stage: str = "pretrain", *,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of one batch (paper 3.2 pretraining, 3.3 fine-tuning,
        docs/design.md#pretraining-losses-eq-3-5).

        ``pretrain``: t ~ U(eps, 1], text (if ``mask_text``) and sign positions masked with
        probability t (eq. 1); ``L_pre = w_tok L_token + w_lat L_latent + w_phys L_phys``.
        ``finetune``: text never masked, sign masks from UTC's index masks;
        ``L_ft = w_tok L_token + lambda (w_lat L_latent + w_phys L_phys)``.

        Args:
            batch: the data contract's dict: ``text`` list[str], ``lang`` list[str] (optional),
                ``tokens`` ``[B, N', 3]`` (padding -1), ``token_mask`` ``[B, N']``, and for the
                physical loss ``motion`` ``[B, T, D]`` (format units) with ``mask`` ``[B, T]``.
            stage: ``pretrain`` or ``finetune``.
            generator: for the mask ratios and masks (on the model's device).
        Returns:
            (scalar loss, metrics: detached scalars ``loss_token``, ``loss_latent``,
            ``loss_physical``, ``mask_ratio``, ``acc_body``, and the mean MoP gates
            ``gate_body``/``gate_lhand``/``gate_rhand`` over unmasked real positions).
        Raises:
            ValueError: unknown stage, malformed batch, or a latent/physical loss without a
                tokenizer (or physical without motion).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        cfg, dev = self.cfg, self.device
        text = self.encode_texts(batch["text"], batch.get("lang"))
        targets, n = self.sign_targets(batch["tokens"], batch["token_mask"])
        bsz, num_pos = targets.shape[:2]
        lt = text.ids.shape[1]
        real = torch.arange(num_pos, device=dev)[None, :] < n[:, None]

        # eq. 1 / UTC: the mask ratio t and the [M] positions x_t
        t, text_masked, sign_masked = self._masks(stage, text, num_pos, generator)
        masked_real = sign_masked & real
        # one pass of the backbone over x_t = [y ; EOS ; z] with the masked positions as [M]
        embed = self.embed_tokens()
        sign_emb, gates = self.sign_embedding(targets.clamp(min=0), sign_masked, embed)
        x = torch.cat([embed(text.ids.masked_fill(text_masked, self.vocab.mask_id)), sign_emb], 1)
        sign_valid = torch.ones(bsz, num_pos, dtype=torch.bool, device=dev)
        h = self.hidden(x, self.attention_mask(text.valid, sign_valid), positions(text, num_pos))
        h_text, h_sign = h[:, :lt], h[:, lt:]
        zero = h.sum() * 0.0

        # eq. 3: masked text positions through the (tied) LM head over the text vocabulary
        # only, masked sign positions through the three part heads
        rt, ct = text_masked.nonzero(as_tuple=True)
        text_logits = self.backbone.lm_head(h_text[rt, ct])[:, : self.vocab.text_size]
        nll_text = F.cross_entropy(text_logits.float(), text.ids[rt, ct], reduction="none")
        rs, cs = sign_masked.nonzero(as_tuple=True)
        sign_logits = self.heads(h_sign[rs, cs])
        nll = sign_nll(sign_logits, targets[rs, cs])
        l_token = diffusion_token_loss(torch.cat([nll_text, nll]), torch.cat([rt, rs]), t,
                                       (text.lengths + num_pos).float())

        # eq. 4 and 5 both read phi_p(h_i) and the true code rows C_p[z_i^p]
        l_latent, l_phys = zero, zero
        if cfg.latent_loss or cfg.physical_loss:
            if self.tokenizer is None:
                raise ValueError("latent/physical losses need the motion tokenizer: pass it to the "
                                 "model or set model.latent_loss/physical_loss to false")
            phi = self.latent(h_sign)  # 3 x [b, n, d_p]
            code_rows = self._code_rows(targets)  # 3 x [b, n, d_p]
            # eq. 4
            if cfg.latent_loss:
                l_latent = latent_loss([f[masked_real] for f in phi],
                                       [r[masked_real] for r in code_rows])
            # eq. 5
            if cfg.physical_loss:
                l_phys = physical_space_loss(self.tokenizer, batch, phi, code_rows, masked_real, n)

        # the total (docs/design.md#the-total-loss)
        if stage == "pretrain":
            total = (cfg.token_weight * l_token + cfg.latent_weight * l_latent
                     + cfg.physical_weight * l_phys)
        else:
            total = cfg.token_weight * l_token + cfg.finetune_lambda * (
                cfg.latent_weight * l_latent + cfg.physical_weight * l_phys)

        metrics = {
            "loss": total.detach(),
            "loss_token": l_token.detach(),
            "loss_latent": l_latent.detach(),
            "loss_physical": l_phys.detach(),
            "mask_ratio": t.mean().detach(),
            "acc_body": (sign_logits[0].argmax(-1) == targets[rs, cs, 0]).float().mean().detach()
            if rs.numel() else zero.detach(),
        }
        shown = real & ~sign_masked
        if gates is not None and shown.any():
            g = gates[shown].mean(0).detach()
            metrics.update({f"gate_{p}": g[i] for i, p in enumerate(PARTS)})
        return total, metrics

    def _masks(self, stage: str, text: TextBatch, num_pos: int,
               generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """Eq. 1 (pretraining) or UTC's index masks (fine-tuning, docs/design.md#index-masks).

        Returns:
            ``t`` ``[B]`` mask ratios in ``(eps, 1]``, ``text_masked`` bool ``[B, Lt]`` (never the
            separator or padding; all False when fine-tuning or without ``model.mask_text``),
            ``sign_masked`` bool ``[B, N]``.
        """
        cfg, dev = self.cfg, self.device
        bsz, lt = text.ids.shape
        t = sample_mask_ratio(bsz, cfg.mask_eps, generator=generator, device=dev)
        if stage == "finetune":
            sign_masked = utc_index_mask(t, num_pos, cfg.utc_checkpoints, generator=generator)
            return t, torch.zeros_like(text.valid), sign_masked
        sign_masked = uniform_mask(t, (bsz, num_pos), generator=generator)
        not_sep = torch.arange(lt, device=dev)[None, :] < lt - 1
        text_masked = uniform_mask(t, (bsz, lt), generator=generator) & text.valid & not_sep
        if not cfg.mask_text:
            text_masked = torch.zeros_like(text_masked)
        return t, text_masked, sign_masked

    def _code_rows(self, targets: torch.Tensor) -> list[torch.Tensor]:
        """Detached codebook rows ``C_p[z^p]`` ``[B, N, d_p]`` of the tokenizer (eq. 4 targets);
        rows of [EOS]/[PAD] positions are arbitrary and must be masked by the caller."""
        rows = []
        for p, cb in enumerate(self.tokenizer.codebooks):
            cb = cb.detach().to(self.device, torch.float32)
            rows.append(cb[targets[..., p].clamp(0, cb.shape[0] - 1)])
        return rows

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def generate(self, texts: list[str], langs: list[str] | None = None, *,
                 num_steps: int | None = None, sampler: str | None = None,
                 temperature: float | None = None, generator=None,
                 logits_masked_only: bool | None = None, text_kv_cache: bool | None = None,
                 drop_after_eos: bool | None = None, stage_kv_cache: bool | None = None,
                 length_first: bool | None = None, return_gates: bool = False, record: bool = False,
                 pins: torch.Tensor | None = None, threshold: float | None = None,
                 threshold_floor: str | None = None,
                 on_stage_end: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                 ) -> Generation:
        """Text -> sign tokens by the reverse process with UTC or vanilla unmasking
        (docs/design.md#reverse-process-eq-2); multi-head decoding; everything from the first
        [EOS] on is discarded.

        Unset keyword arguments take the config's decoding defaults (``sampler``,
        ``num_steps`` K, ``temperature``, ``threshold``, and the speed-up switches, see
        :class:`~madis.mdlm.config.ModelConfig`).

        Args:
            generator: the sampling noise at ``temperature`` > 0: a ``torch.Generator``, or
                one per text, so that each text's sample depends on its own seed alone (the
                service seeds each request; :data:`~madis.mdlm.sampling.Generators`).
            pins: ``[B, N', 3]`` int (N' <= N), -1 where free: tokens kept as given, the rest
                generated around them (:func:`~madis.mdlm.sampling.unmask`; body ``K_B`` pins
                ``[EOS]``).
            threshold: confidence-threshold decoding inside UTC stages (``model.threshold``;
                pass ``float("inf")`` to force the fixed schedule over a config threshold).
            on_stage_end: ``(stage, tokens [B, N, 3], masked [B, N])`` after each UTC stage, in
                head space (streamed coarse-to-fine decoding).
        Returns:
            :class:`~madis.mdlm.base.Generation` (tokens ``[B, N, 3]``, lengths ``[B]``,
            ``steps_used`` ``[B]``).
        Raises:
            ValueError: unknown sampler, num_steps < 1 or fewer steps than UTC stages, a
                negative or NaN temperature, a bad threshold, pins that break
                :func:`~madis.mdlm.sampling.check_pins` or are longer than N.
        """
        cfg = self.cfg
        sampler = sampler or cfg.sampler
        if sampler not in ("utc", "vanilla"):
            raise ValueError(f"sampler must be utc or vanilla, got {sampler!r}")
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if temperature is not None and not temperature >= 0:  # NaN fails too
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
        opts = DecodeOptions(
            logits_masked_only=_pick(logits_masked_only, cfg.logits_masked_only),
            text_kv_cache=_pick(text_kv_cache, cfg.text_kv_cache) and not cfg.text_attends_sign,
            drop_after_eos=_pick(drop_after_eos, cfg.drop_after_eos),
            stage_kv_cache=_pick(stage_kv_cache, cfg.stage_kv_cache),
        )
        checkpoints = cfg.utc_checkpoints if sampler == "utc" else []
        threshold = cfg.threshold if threshold is None else threshold
        if threshold is not None and math.isinf(threshold):
            threshold = None
        opts.skip_idle_rows = threshold is not None
        if pins is not None:
            pins = self._full_pins(pins, len(texts))
        was_training = self.training
        self.eval()
        try:
            text = self.encode_texts(texts, langs)
            dec = StepDecoder(self, text, checkpoints, opts)
            out = unmask(
                dec.predict, len(texts), cfg.num_positions, num_steps or cfg.num_steps,
                checkpoints, body_classes=self.vocab.body_classes,
                temperature=cfg.temperature if temperature is None else temperature,
                generator=generator, drop_after_eos=opts.drop_after_eos,
                length_first=_pick(length_first, cfg.length_first), device=self.device,
                on_stage_start=dec.stage_start if opts.stage_kv_cache else None, record=record,
                on_stage_end=on_stage_end, pins=pins, threshold=threshold,
                threshold_floor=threshold_floor or cfg.threshold_floor)
            codes, lengths = truncate_at_eos(out.tokens, self.codebook_sizes[0])
            gates = self.mop_gates(codes) if return_gates else None
        finally:
            self.train(was_training)
        return Generation(codes, lengths, gates, out.trace, out.steps)

    def decoding_stages(self, sampler: str | None = None) -> int:
        """UTC stages (``len(model.utc_checkpoints) + 1``) for ``utc``, 1 for ``vanilla``."""
        return len(self.cfg.utc_checkpoints) + 1 if (sampler or self.cfg.sampler) == "utc" else 1


def _pick(value: bool | None, default: bool) -> bool:
    return default if value is None else bool(value)
