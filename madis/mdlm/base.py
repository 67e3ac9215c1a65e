"""What the MDLM and the autoregressive baseline share: text batching, sign targets, the backbone
with its extended vocabulary, the frozen motion tokenizer, and save/load.

Both models read the training batch of the data contract (``text``, ``lang``, ``tokens``
``[B, N, 3]`` padded -1, ``token_mask``, ``motion``, ``mask``) and expose
``loss(batch, stage) -> (loss, metrics)`` and ``generate(texts, langs, ...) -> Generation``,
so the one training loop and the benchmarks treat them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from madis.config import from_dict, to_dict
from madis.mdlm.backbone import (
    DTYPES,
    extend_vocabulary,
    new_backbone,
    pretrained_backbone,
    tiny_qwen3_config,
)
from madis.mdlm.config import ModelConfig
from madis.mdlm.losses import IGNORE
from madis.mdlm.text import (
    ByteTokenizer,
    TextTokenizer,
    build_text_tokenizer,
    char_starts,
    format_prompt,
    load_text_tokenizer,
    save_text_tokenizer,
)
from madis.mdlm.vocab import SignVocab
from madis.motion.base import FRAMES_PER_POSITION
from madis.utils.pretrained import load_weights, read_config, save_pretrained

FORMAT = "madis-mdlm/1"
#: sign positions of the still mean pose an empty generation is decoded to
#: (docs/design.md#empty-generations)
EMPTY_POSITIONS = 1


@dataclass
class TextBatch:
    """Left-padded text prefixes ``[y ; EOS]``.

    Attributes:
        ids: ``[B, Lt]`` text ids; row b holds ``L_b`` text tokens then the separator ``[EOS]``
            (the text tokenizer's eos) in its last ``L_b + 1`` columns.
        valid: bool ``[B, Lt]``, False on left padding.
        lengths: ``[B]`` = L_b + 1.
        pos: ``[B, Lt]`` RoPE positions of the text tokens, or None for the paper's sequential
            ``0..L_b`` with the signs after them (see :func:`positions`).
        sign_start: ``[B]`` RoPE position of sign position 0 when ``pos`` is given.
    """

    ids: torch.Tensor
    valid: torch.Tensor
    lengths: torch.Tensor
    pos: torch.Tensor | None = None
    sign_start: torch.Tensor | None = None


@dataclass
class Generation:
    """Generated sign tokens.

    Attributes:
        tokens: ``[B, N, 3]`` int64 codes (body, lhand, rhand); -1 from the first [EOS] on.
        lengths: ``[B]`` int64, sign positions kept (4 frames each).
        gates: ``[B, N, 3]`` MoP gate weights of the final tokens (paper Figure 7), or None.
        trace: masked state ``[B, N]`` after every step (``record=True``), else empty.
        steps_used: ``[B]`` int64, decoding steps that decided some of the row's positions
            (unmasking steps of the MDLM; for the autoregressive baseline, one step per position
            up to and including its [EOS]).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    gates: torch.Tensor | None = None
    trace: list | None = None
    steps_used: torch.Tensor | None = None


class SignLanguageModel(nn.Module):
    """Base of :class:`~madis.mdlm.model.MaDiSModel` and :class:`~madis.mdlm.ar.ARBaseline`.

    Args:
        cfg: the ``model`` section.
        tokenizer: a ``DecoupledTokenizer`` (codebooks, sizes, frozen decoders). It is held
            outside the module tree: its weights are neither trained nor saved with the model,
            but ``.to()`` moves it along (keeping it fp32, see :meth:`_apply`). May be None when
            ``codebook_sizes``/``code_dims`` are given (e.g. loading for token generation only).
        codebook_sizes, code_dims: needed without a tokenizer.
    Raises:
        ValueError: neither a tokenizer nor the sizes, or a text tokenizer larger than the
            backbone's vocabulary.
    """

    causal: ClassVar[bool] = False
    #: the ``model.architecture`` this class implements
    architecture: ClassVar[str] = ""

    def __init__(self, cfg: ModelConfig, tokenizer: Any = None, *,
                 codebook_sizes: Sequence[int] | None = None,
                 code_dims: Sequence[int] | None = None,
                 _saved: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if cfg.architecture != self.architecture:  # the class decides: what it saves says so
            cfg = replace(cfg, architecture=self.architecture)
        self.cfg = cfg
        object.__setattr__(self, "tokenizer", None)
        if tokenizer is not None:
            codebook_sizes = tuple(int(k) for k in tokenizer.codebook_sizes)
            code_dims = tuple(int(d) for d in tokenizer.code_dims)
        if codebook_sizes is None or code_dims is None:
            raise ValueError("pass a tokenizer, or codebook_sizes and code_dims")
        self.codebook_sizes = tuple(int(k) for k in codebook_sizes)
        self.code_dims = tuple(int(d) for d in code_dims)
        dtype = DTYPES[cfg.dtype]
        if _saved is not None:
            self.text_tokenizer: TextTokenizer = _saved["text_tokenizer"]
            self.backbone = new_backbone(_saved["backbone"], causal=self.causal)
            text_size = int(_saved["text_size"])
        else:
            self.text_tokenizer = build_text_tokenizer(cfg.text_tokenizer, cfg.backbone)
            if cfg.backbone == "tiny":
                text_size = self.text_tokenizer.vocab_size
                vocab = SignVocab(text_size, self.codebook_sizes)
                self.backbone = new_backbone(
                    tiny_qwen3_config(cfg, vocab.size, causal=self.causal), causal=self.causal)
            else:
                self.backbone = pretrained_backbone(cfg.backbone, causal=self.causal, dtype=dtype)
                text_size = self.backbone.get_input_embeddings().weight.shape[0]
        if self.text_tokenizer.vocab_size > text_size:
            raise ValueError(f"text tokenizer has {self.text_tokenizer.vocab_size} ids but the "
                             f"backbone only {text_size} text rows")
        self.vocab = SignVocab(text_size, self.codebook_sizes)
        extend_vocabulary(self.backbone, self.vocab.size)
        self.d_model = self.backbone.config.hidden_size
        if tokenizer is not None:
            self.attach_tokenizer(tokenizer)

    # ------------------------------------------------------------------ tokenizer and devices
    def attach_tokenizer(self, tokenizer: Any) -> None:
        """Use ``tokenizer`` (frozen, eval mode) for latent targets and physical decoding.

        Raises:
            ValueError: its codebook sizes or dims differ from the model's.
        """
        if tuple(tokenizer.codebook_sizes) != self.codebook_sizes or \
                tuple(tokenizer.code_dims) != self.code_dims:
            raise ValueError(
                f"tokenizer codebooks {tuple(tokenizer.codebook_sizes)}/{tuple(tokenizer.code_dims)} "
                f"do not match the model's {self.codebook_sizes}/{self.code_dims}")
        tokenizer.requires_grad_(False)
        tokenizer.eval()
        p = next(self.parameters())
        tokenizer.to(p.device)
        object.__setattr__(self, "tokenizer", tokenizer)

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.cuda()``, ``.half()``, ``.bfloat16()``: parameters take the new device and
        dtype; floating buffers (RoPE's ``inv_freq``, the frozen codebook copies) and the motion
        tokenizer (not a submodule: decoders, codebooks, z-score statistics) take the new device
        only and keep their dtype (fp32).

        Why: a bf16 ``inv_freq`` puts RoPE's angles up to 0.26 rad off at position 229 (Qwen3's
        theta, head_dim 128), and a bf16 tokenizer would blur the latent targets and the decoded
        motion of the physical loss. DeepSpeed's own bf16 cast leaves buffers alone too
        (``_cast_module_mixed_precision``, 0.19.8).
        """
        buffers = {id(b) for b in self.buffers()}

        def same_dtype(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if out.dtype != t.dtype:  # a cast: keep the value, follow the device
                return t.to(out.device)
            return out

        def params_follow(t: torch.Tensor) -> torch.Tensor:
            return same_dtype(t) if id(t) in buffers else fn(t)

        if self.tokenizer is not None:
            self.tokenizer._apply(same_dtype, recurse)
        return super()._apply(params_follow, recurse)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed_tokens(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def decoding_stages(self, sampler: str | None = None) -> int:
        """Stages of ``generate`` with ``sampler`` (each ends with an ``on_stage_end`` call)."""
        return 1

    def _full_pins(self, pins: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``[B, N', 3]`` pins checked (:func:`~madis.mdlm.sampling.check_pins`) and padded with
        -1 (free) to ``[B, N, 3]``, on the model's device.

        Raises:
            ValueError: wrong shape, more than N positions, or pins ``check_pins`` refuses.
        """
        from madis.mdlm.sampling import check_pins

        n = self.cfg.num_positions
        pins = torch.as_tensor(pins, dtype=torch.long, device=self.device)
        if pins.ndim != 3 or pins.shape[0] != batch_size or pins.shape[2] != 3:
            raise ValueError(f"pins must be [{batch_size}, <= {n}, 3], got {tuple(pins.shape)}")
        if pins.shape[1] > n:
            raise ValueError(f"pins cover {pins.shape[1]} positions; the model has N = {n}")
        check_pins(pins, self.codebook_sizes)
        return torch.cat([pins, pins.new_full((batch_size, n - pins.shape[1], 3), -1)], 1)

    # ------------------------------------------------------------------ batching
    def encode_texts(self, texts: Sequence[str], langs: Sequence[str] | None = None) -> TextBatch:
        """Format (``cfg.text_template``), tokenize, cut to ``cfg.max_text_tokens``, append the
        separator and left-pad. Returns a :class:`TextBatch` on the model's device.

        Raises:
            ValueError: no texts, or ``langs`` of a different length than ``texts``.
        """
        if not texts:
            raise ValueError("no texts given")
        if langs is None:
            langs = [""] * len(texts)
        if len(langs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(langs)} langs")
        tok = self.text_tokenizer
        if self.cfg.text_positions == "aligned":
            rows, rpos, starts = zip(*(self._aligned_row(t, lg) for t, lg in zip(texts, langs)))
        else:
            rows = [tok.encode(format_prompt(self.cfg.text_template, t, lg))[: self.cfg.max_text_tokens]
                    + [tok.eos_id] for t, lg in zip(texts, langs)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        valid = torch.zeros((len(rows), width), dtype=torch.bool)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = torch.tensor(r)
            valid[b, width - len(r):] = True
            if self.cfg.text_positions == "aligned":
                pos[b, width - len(r):] = torch.tensor(rpos[b])
        dev = self.device
        if self.cfg.text_positions != "aligned":
            return TextBatch(ids.to(dev), valid.to(dev), valid.sum(1).to(dev))
        return TextBatch(ids.to(dev), valid.to(dev), valid.sum(1).to(dev), pos.to(dev),
                         torch.tensor(starts, dtype=torch.long, device=dev))

    def _aligned_row(self, text: str, lang: str) -> tuple[list[int], list[int], int]:
        """One prompt's ids, RoPE positions and sign start for ``text_positions: aligned``.

        The template's part before ``{text}`` (the language tag) takes positions ``0..H-1``;
        the text's tokens sit where their characters are expected to be signed, ``H +
        round(positions_per_char * (c + 0.5))`` for a token starting at character ``c``; the
        rest of the template and the separator follow the text; sign position i is at
        ``H + i``. Tokens beyond ``max_text_tokens`` are cut from the text's end.
        """
        tok, cfg = self.text_tokenizer, self.cfg
        head, _, tail = cfg.text_template.partition("{text}")
        if not lang and "{lang}" in head:
            head = ""
        head_ids = tok.encode(head.format(lang=lang)) if head else []
        tail_ids = tok.encode(tail.replace("{lang}", lang or "")) if tail else []
        text_ids, chars = char_starts(tok, text)
        keep = max(0, cfg.max_text_tokens - len(head_ids) - len(tail_ids))
        text_ids, chars = text_ids[:keep], chars[:keep]
        h = len(head_ids)
        end = h + round(cfg.positions_per_char * (chars[-1] + 1)) if chars else h
        pos = (list(range(h)) + [h + round(cfg.positions_per_char * (c + 0.5)) for c in chars]
               + [end + k for k in range(len(tail_ids) + 1)])
        return head_ids + text_ids + tail_ids + [tok.eos_id], pos, h

    def sign_targets(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch tokens -> head-space targets over the N sign positions.

        Position i < n_b holds the sample's codes, position n_b the body class [EOS] (when
        n_b < N), later positions [PAD] (padding is part of the sequence so the model learns
        where to stop, docs/design.md#multi-head-decoding); hand targets are ``IGNORE`` from n_b on.

        Args:
            tokens: ``[B, N', 3]`` int codes, padding -1.
            token_mask: bool ``[B, N']``, True on a prefix of each row.
        Returns:
            (targets ``[B, N, 3]`` int64, n ``[B]`` int64).
        Raises:
            ValueError: a mask that is not a prefix, more than N real positions, or a code
                outside its codebook.
        """
        n_max = self.cfg.num_positions
        tokens = tokens.to(self.device).long()
        token_mask = token_mask.to(self.device).bool()
        if tokens.ndim != 3 or tokens.shape[-1] != 3 or token_mask.shape != tokens.shape[:2]:
            raise ValueError(f"tokens must be [B, N, 3] with token_mask [B, N], got "
                             f"{tuple(tokens.shape)} and {tuple(token_mask.shape)}")
        n = token_mask.sum(1)
        width = tokens.shape[1]
        pos = torch.arange(width, device=tokens.device)
        if not torch.equal(token_mask, pos[None, :] < n[:, None]):
            raise ValueError("token_mask must be True on a prefix of each row (padding at the end)")
        if int(n.max()) > n_max:
            raise ValueError(f"a sample has {int(n.max())} sign positions, more than "
                             f"model.num_positions = {n_max} ({FRAMES_PER_POSITION * n_max} frames)")
        if width < n_max:
            tokens = torch.cat([tokens, tokens.new_full((tokens.shape[0], n_max - width, 3), -1)], 1)
        tokens = tokens[:, :n_max]
        pos = torch.arange(n_max, device=tokens.device)
        real = pos[None, :] < n[:, None]
        for p, k in enumerate(self.codebook_sizes):
            bad = real & ((tokens[..., p] < 0) | (tokens[..., p] >= k))
            if bad.any():
                raise ValueError(f"part {p} has codes outside [0, {k}) at real positions")
        v = self.vocab
        body = torch.where(real, tokens[..., 0],
                           torch.where(pos[None, :] == n[:, None], v.eos_class, v.pad_class))
        hands = torch.where(real[..., None], tokens[..., 1:], IGNORE)
        return torch.cat([body[..., None], hands], -1), n

    @torch.no_grad()
    def decode_motion(self, generation: Generation) -> list[np.ndarray]:
        """Generated tokens -> one motion per sentence through the frozen tokenizer's decoders:
        float32 ``[4 * length, D]`` in the motion format's units.

        The one place where text becomes motion: Serve, the eval fleet, ``madis generate`` and
        predictions all call it. An empty generation (``length`` 0: the body head put [EOS]
        first) becomes the tokenizer's mean pose held for ``EMPTY_POSITIONS`` position (4
        frames), so that every consumer gets a motion it can score, render or write; the
        emptiness stays visible as ``length`` 0 (docs/design.md#empty-generations).

        Raises:
            ValueError: no tokenizer attached.
        """
        if self.tokenizer is None:
            raise ValueError("decoding motion needs the tokenizer: attach_tokenizer(tok) first")
        tok = self.tokenizer
        motion = tok.decode(generation.tokens).float().cpu().numpy()
        lengths = [int(n) for n in generation.lengths]
        still = None
        if 0 in lengths:
            zeros = torch.zeros(EMPTY_POSITIONS * FRAMES_PER_POSITION, motion.shape[-1],
                                device=tok.mean.device)
            still = tok.denormalize(zeros).float().cpu().numpy()
        return [motion[b, : FRAMES_PER_POSITION * n] if n else still.copy()
                for b, n in enumerate(lengths)]

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` (model config, backbone config, sizes), ``model.safetensors``
        (:mod:`madis.utils.pretrained`) and the text tokenizer into a local directory. The
        motion tokenizer is not included (saved on its own)."""
        meta = {
            "format": FORMAT,
            "class": type(self).__name__,
            "model": to_dict(self.cfg),
            "backbone": self.backbone.config.to_dict(),
            "text_size": self.vocab.text_size,
            "codebook_sizes": list(self.codebook_sizes),
            "code_dims": list(self.code_dims),
        }
        save_text_tokenizer(self.text_tokenizer, directory)
        save_pretrained(directory, self, meta, indent=1)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, tokenizer: Any = None,
                        overrides: Mapping[str, Any] | None = None,
                        map_location: str | torch.device = "cpu") -> "SignLanguageModel":
        """Load a model written by :meth:`save_pretrained` from a local directory; no network
        access.

        Args:
            tokenizer: motion tokenizer to attach (needed for latent/physical losses and motion
                decoding), or None.
            overrides: model config fields to change (decoding switches; ``embedding`` to
                fine-tune a checkpoint pretrained with another variant, whose embedding weights
                then start fresh -- reported in the ``missing`` attribute).
        Raises:
            FileNotFoundError: no checkpoint there; ValueError: a checkpoint of another class.
        """
        d = Path(directory)
        meta = read_config(d, {"format": FORMAT}, "MaDiS MDLM checkpoint")
        if meta["class"] != cls.__name__ and cls is not SignLanguageModel:
            raise ValueError(f"{d} holds a {meta['class']}, not a {cls.__name__}")
        target = cls if cls is not SignLanguageModel else _model_class(meta["class"])
        cfg_dict = saved_model_config(meta)
        wanted = (overrides or {}).get("architecture", target.architecture)
        if wanted != target.architecture:
            raise ValueError(f"{d} holds a {meta['class']} (model.architecture "
                             f"{target.architecture}), not model.architecture {wanted}")
        cfg_dict.update(overrides or {})
        cfg = from_dict(ModelConfig, cfg_dict, where="model")
        saved = {"backbone": meta["backbone"], "text_size": meta["text_size"],
                 "text_tokenizer": load_text_tokenizer(d)}
        model = target(cfg, None, codebook_sizes=meta["codebook_sizes"],
                       code_dims=meta["code_dims"], _saved=saved)
        strict = cfg_dict.get("embedding") == meta["model"].get("embedding")
        missing, _ = load_weights(d, model, strict=strict)
        model.missing = sorted(missing)
        model.to(map_location)
        if tokenizer is not None:
            model.attach_tokenizer(tokenizer)
        return model


def saved_model_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section of a checkpoint's ``config.json``, with ``architecture`` filled
    in from its class for checkpoints written before that field existed."""
    out = dict(meta["model"])
    out.setdefault("architecture", _model_class(meta["class"]).architecture)
    return out


def model_class(architecture: str) -> type[SignLanguageModel]:
    """The class of a ``model.architecture`` (``mdlm``: MaDiSModel, ``ar``: ARBaseline).

    Raises:
        ValueError: an unknown architecture.
    """
    from madis.mdlm.ar import ARBaseline
    from madis.mdlm.model import MaDiSModel

    for c in (MaDiSModel, ARBaseline):
        if c.architecture == architecture:
            return c
    raise ValueError(f"unknown model architecture {architecture!r}")


def _model_class(name: str) -> type[SignLanguageModel]:
    from madis.mdlm.ar import ARBaseline
    from madis.mdlm.model import MaDiSModel

    classes = {"MaDiSModel": MaDiSModel, "ARBaseline": ARBaseline}
    if name not in classes:
        raise ValueError(f"unknown model class {name!r}")
    return classes[name]


def load_pretrained(directory: str | os.PathLike, tokenizer: Any = None,
                    overrides: Mapping[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> SignLanguageModel:
    """Load either model class from a checkpoint directory (dispatching on its config)."""
    return SignLanguageModel.from_pretrained(directory, tokenizer, overrides, map_location)


def positions(text: TextBatch, num_sign: int) -> torch.Tensor:
    """RoPE position ids ``[B, Lt + num_sign]``: text tokens 0..L_b, sign position i at
    ``L_b + 1 + i`` -- independent of how much left padding the batch added."""
    steps = torch.arange(num_sign, device=text.ids.device)[None, :]
    if text.pos is not None:  # model.text_positions: aligned (see SignLanguageModel._aligned_row)
        return torch.cat([text.pos, text.sign_start[:, None] + steps], 1)
    text_pos = (text.valid.long().cumsum(1) - 1).clamp(min=0)
    return torch.cat([text_pos, text.lengths[:, None] + steps], 1)


__all__ = ["Generation", "SignLanguageModel", "TextBatch", "load_pretrained", "model_class",
           "positions", "ByteTokenizer"]
