"""SiCLIP: a CLIP model over ground-truth (sign motion, text) pairs, the evaluator of paper 3.4.

Sign side (decoupled, SOKE-style): the z-scored motion is split into the format's three parts;
each part has its own temporal Conv1d encoder down-sampling 4x (one feature per sign-token
position, like the tokenizer's pre-quantisation features); the three part features are
concatenated, fused by a linear layer and a small transformer. Text side (``text_encoder``):
``bytes``, a small transformer over UTF-8 bytes (the MDLM's byte tokenizer,
``madis.mdlm.text.ByteTokenizer``; the CPU profile), or ``backbone``, the first ``text_layers``
decoder layers of the MDLM's Qwen3 backbone with its own tokenizer (the paper profile, 3.4),
bidirectional as in the MDLM, followed by a linear map to ``width``. Each side ends
in an MLP projection into the shared space (512-d in the paper profile) and a learned
token-weight head. Objective (paper Table 6): global InfoNCE plus the
CiCo-style fine-grained token-wise loss, both symmetric cross-entropies with one learned logit
scale (see :mod:`madis.metrics.contrastive`).

Retrieval scores (:meth:`SiCLIP.similarity`) are the mean of the global cosine and the
fine-grained score (the global cosine alone when ``fine_grained_weight`` is 0).

The ``backbone`` encoder loads its weights once, when a model is first built for training
(:func:`madis.mdlm.backbone.pretrained_backbone`: the hub or a local directory); an exported
SiCLIP model carries the kept layers, the backbone's config and its tokenizer, so loading
one never touches the network.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from madis.config import ConfigError, check_bounds, from_dict, to_dict
from madis.metrics.contrastive import masked_softmax, symmetric_cross_entropy, token_wise_similarity
from madis.motion import FRAMES_PER_POSITION, PARTS, get_format
from madis.utils.pretrained import load_weights, local_copy, read_config, save_pretrained

__all__ = ["SiCLIPConfig", "SiCLIP", "SiCLIPEmbeddings", "SiCLIPOutput", "encode_texts"]

#: ``kind`` of an exported SiCLIP model's ``config.json``
KIND = "madis.SiCLIP"


@dataclass
class SiCLIPConfig:
    """SiCLIP sizes, objective and training switches (config section ``siclip``).

    Attributes:
        width: channels of the part encoders and width of both transformers.
        embed_dim: dimension of the shared embedding space (paper 512).
        num_heads: attention heads in both transformers.
        motion_layers: transformer layers fusing the three part features.
        text_encoder: ``bytes`` (a byte-level transformer of ``text_layers`` layers) or
            ``backbone`` (the first ``text_layers`` layers of ``text_backbone``, paper 3.4).
        text_backbone: Qwen3 checkpoint (hub id or local directory) of the ``backbone`` text
            encoder and its tokenizer: the MDLM's backbone (``model.backbone`` of the paper
            profile).
        text_layers: transformer layers of the text encoder (either kind).
        dropout: dropout inside the transformers.
        max_text_bytes: text tokens kept per text (UTF-8 bytes, or the backbone tokenizer's
            tokens; longer texts are cut at the end).
        max_positions: sign positions (T/4) the positional table holds (400 frames -> 100).
        decoupled: one encoder per part (paper); False encodes all features with one encoder
            (Table 6's "w/o decoupled sign encoders").
        fine_grained_weight: weight of the CiCo token-wise loss; 0 trains the global InfoNCE only
            (Table 6's plain contrastive row) and retrieval then uses the global cosine alone.
        init_temperature: initial softmax temperature (CLIP's 0.07; logit scale = 1/T).
        max_logit_scale: the logit scale is clamped here (CLIP's 100).
        retrieval_batch_size: batch of the released retrieval protocol (45).

    The optimisation (learning rate, batch size, epochs) is the shared loop's: section
    ``train_siclip`` over ``train`` (``madis.train.config``).
    """

    width: int = 512
    embed_dim: int = 512
    num_heads: int = 8
    motion_layers: int = 4
    text_layers: int = 4
    text_encoder: str = "bytes"
    text_backbone: str = "Qwen/Qwen3-0.6B-Base"
    dropout: float = 0.1
    max_text_bytes: int = 256
    max_positions: int = 128
    decoupled: bool = True
    fine_grained_weight: float = 1.0
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    retrieval_batch_size: int = 45

    def __post_init__(self) -> None:
        check_bounds(self, "siclip",
                     at_least_one=("width", "embed_dim", "num_heads", "max_text_bytes",
                                   "max_positions", "retrieval_batch_size"))
        if self.width % self.num_heads:
            raise ConfigError(f"siclip.width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.text_encoder not in ("bytes", "backbone"):
            raise ConfigError(f"siclip.text_encoder must be bytes or backbone, got {self.text_encoder!r}")
        if self.text_encoder == "backbone" and self.text_layers < 1:
            raise ConfigError("siclip.text_encoder=backbone needs text_layers >= 1")
        if self.text_encoder == "backbone" and not self.text_backbone:
            raise ConfigError("siclip.text_encoder=backbone needs text_backbone (a hub id or "
                              "a local Qwen3 directory)")
        for name in ("motion_layers", "text_layers"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"siclip.{name} must be an integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"siclip.dropout must be in [0, 1), got {self.dropout}")
        if not math.isfinite(self.fine_grained_weight):
            raise ConfigError(f"siclip.fine_grained_weight must be finite, got {self.fine_grained_weight}")
        if self.motion_layers < 0 or self.text_layers < 0 or self.fine_grained_weight < 0:
            raise ConfigError("siclip layer counts and fine_grained_weight must be >= 0")
        if not (self.init_temperature > 0.0 and self.max_logit_scale > 1.0):
            raise ConfigError("siclip.init_temperature must be > 0 and max_logit_scale > 1")


def encode_texts(texts: Sequence[str], max_bytes: int, tokenizer=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> ``(ids [B, L] int64, mask [B, L] bool)``: UTF-8 byte ids, then ``[EOS]``, padded.

    The ids are the MDLM's byte tokenizer's (bytes 0..255, ``eos_id``, ``pad_id``);
    ``L = 1 + min(max_bytes, longest text in bytes)``.

    Raises:
        ValueError: no texts, or an empty / whitespace-only text (nothing to match a sign with).
    """
    if tokenizer is None:
        from madis.mdlm.text import ByteTokenizer

        tokenizer = ByteTokenizer()
    if len(texts) == 0:
        raise ValueError("no texts to encode")
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i} is empty or not a string: {text!r}")
        rows.append(tokenizer.encode(text)[:max_bytes] + [tokenizer.eos_id])
    ids = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, ids != tokenizer.pad_id


@dataclass
class SiCLIPEmbeddings:
    """One side's embeddings.

    Attributes:
        pooled: ``[B, E]`` L2-normalised global embedding.
        tokens: ``[B, N, E]`` L2-normalised token embeddings (sign positions or text bytes).
        weights: ``[B, N]`` token weights, softmax over real tokens (0 at padding).
        mask: bool ``[B, N]``, True = real token.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    weights: torch.Tensor
    mask: torch.Tensor

    def __getitem__(self, rows) -> "SiCLIPEmbeddings":
        return SiCLIPEmbeddings(self.pooled[rows], self.tokens[rows], self.weights[rows],
                                self.mask[rows])


@dataclass
class SiCLIPOutput:
    """Training forward pass: ``loss = global_loss + fine_grained_weight * fine_loss``."""

    loss: torch.Tensor
    global_loss: torch.Tensor
    fine_loss: torch.Tensor
    logit_scale: torch.Tensor


class _PartEncoder(nn.Module):
    """``[B, T, D_p]`` -> ``[B, T/4, width]``: Conv1d stack with two stride-2 down-samplings."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(dim, width, 3, padding=1), nn.GELU(),
            nn.Conv1d(width, width, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(width, width, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2)).transpose(1, 2)


def _transformer(cfg: SiCLIPConfig, layers: int) -> nn.Module:
    if layers == 0:
        return nn.Identity()
    layer = nn.TransformerEncoderLayer(cfg.width, cfg.num_heads, 4 * cfg.width, cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _backbone_text_encoder(config: SiCLIPConfig, saved: tuple[dict, Any] | None):
    """``(text tokenizer, Qwen3 model)``: the first ``text_layers`` layers of
    ``config.text_backbone`` (bidirectional), or, when loading an export, the saved backbone
    config and tokenizer (random weights, overwritten by the export's)."""
    from madis.mdlm.backbone import new_backbone, pretrained_backbone
    from madis.mdlm.text import HFTextTokenizer

    if saved is not None:
        backbone_config, tokenizer = saved
        return tokenizer, new_backbone(backbone_config, causal=False)
    full = pretrained_backbone(config.text_backbone, causal=False, dtype=torch.float32)
    layers = full.model.layers
    if len(layers) < config.text_layers:
        raise ValueError(f"{config.text_backbone} has {len(layers)} layers, fewer than "
                         f"siclip.text_layers={config.text_layers}")
    full.model.layers = layers[: config.text_layers]
    full.config.num_hidden_layers = config.text_layers
    if getattr(full.config, "layer_types", None):
        full.config.layer_types = full.config.layer_types[: config.text_layers]
    return HFTextTokenizer.from_pretrained(config.text_backbone), full


def _mlp(width: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, out))


class SiCLIP(nn.Module):
    """SiCLIP model (paper 3.4): decoupled sign encoders, byte-level text encoder, shared space.

    Args:
        config: sizes and objective.
        motion_format: registered format name (``smplx133`` or ``keypoints``).
        mean, std: z-score statistics ``[D]`` of the training split (manifest ``stats``); None
            means 0 / 1. Std entries below 1e-6 count as 1.

    Raises:
        KeyError: unknown motion format.
        ValueError: mean/std not of shape ``[D]``; ``text_backbone`` is not a Qwen3 checkpoint
            or has fewer than ``text_layers`` layers.
        OSError: ``text_backbone`` cannot be found or fetched (``backbone`` text encoder).
    """

    def __init__(self, config: SiCLIPConfig, motion_format: str, mean=None, std=None, *,
                 _saved_text: tuple[dict, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.format = get_format(motion_format)
        dim = self.format.dim
        mean_t = torch.zeros(dim) if mean is None else torch.as_tensor(np.asarray(mean, np.float32))
        std_t = torch.ones(dim) if std is None else torch.as_tensor(np.asarray(std, np.float32))
        if mean_t.shape != (dim,) or std_t.shape != (dim,):
            raise ValueError(f"mean/std must have shape [{dim}], got {tuple(mean_t.shape)}, "
                             f"{tuple(std_t.shape)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", torch.where(std_t < 1e-6, torch.ones_like(std_t), std_t))
        w = config.width
        if config.decoupled:
            self.part_encoders = nn.ModuleDict(
                {p: _PartEncoder(d, w) for p, d in zip(PARTS, self.format.part_dims)})
            self.fuse = nn.Linear(len(PARTS) * w, w)
        else:
            self.part_encoders = nn.ModuleDict({"all": _PartEncoder(dim, w)})
            self.fuse = nn.Linear(w, w)
        self.sign_pos = nn.Parameter(torch.randn(config.max_positions, w) * 0.02)
        self.sign_encoder = _transformer(config, config.motion_layers)
        self.sign_norm = nn.LayerNorm(w)
        if config.text_encoder == "backbone":
            self.text_tokenizer, self.text_backbone = _backbone_text_encoder(config, _saved_text)
            self.text_in = nn.Linear(self.text_backbone.config.hidden_size, w)
        else:
            from madis.mdlm.text import ByteTokenizer

            self.text_tokenizer = ByteTokenizer()
            self.text_embed = nn.Embedding(self.text_tokenizer.vocab_size, w,
                                           padding_idx=self.text_tokenizer.pad_id)
            self.text_pos = nn.Parameter(torch.randn(config.max_text_bytes + 1, w) * 0.02)
            self.text_encoder = _transformer(config, config.text_layers)
        self.text_norm = nn.LayerNorm(w)
        self.sign_proj, self.text_proj = _mlp(w, config.embed_dim), _mlp(w, config.embed_dim)
        self.sign_weight, self.text_weight = nn.Linear(w, 1), nn.Linear(w, 1)
        # shape [1], not 0-d: DeepSpeed's initial parameter broadcast cannot handle 0-d tensors
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / config.init_temperature)))

    @property
    def motion_format(self) -> str:
        """Name of the motion format the model reads."""
        return self.format.name

    # -- encoders -----------------------------------------------------------------------------
    def _embed(self, hidden, mask, proj, weight_head) -> SiCLIPEmbeddings:
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1)
        return SiCLIPEmbeddings(
            pooled=F.normalize(proj(pooled), dim=-1),
            tokens=F.normalize(proj(hidden), dim=-1),
            weights=masked_softmax(weight_head(hidden).squeeze(-1), mask),
            mask=mask,
        )

    def encode_motion(self, motion: torch.Tensor, mask: torch.Tensor | None = None) -> SiCLIPEmbeddings:
        """Sign embeddings of a batch of motions.

        Args:
            motion: ``[B, T, D]`` in the format's units (z-scored inside with the stored stats).
            mask: bool ``[B, T]``, True = real frame (None: all real). A position (4 frames) is
                real when any of its frames is.

        Returns:
            :class:`SiCLIPEmbeddings` with ``N = ceil(T / 4)`` token positions.

        Raises:
            ValueError: empty batch, wrong shape, a sample without real frames, non-finite values,
                or more than ``4 * max_positions`` frames.
        """
        if motion.ndim != 3 or motion.shape[-1] != self.format.dim:
            raise ValueError(f"motion must be [B, T, {self.format.dim}], got {tuple(motion.shape)}")
        b, t, _ = motion.shape
        if b == 0 or t == 0:
            raise ValueError(f"empty motion batch {tuple(motion.shape)}")
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=motion.device)
        if mask.shape != (b, t):
            raise ValueError(f"mask must be [{b}, {t}], got {tuple(mask.shape)}")
        if not bool(mask.any(1).all()):
            raise ValueError(f"sample(s) {torch.nonzero(~mask.any(1)).flatten().tolist()} have no real frames")
        if not bool(torch.isfinite(motion).all()):
            raise ValueError("motion contains NaN or infinite values")
        n = -(-t // FRAMES_PER_POSITION)
        if n > self.config.max_positions:
            raise ValueError(f"{t} frames exceed max_positions={self.config.max_positions} positions")
        pad = n * FRAMES_PER_POSITION - t
        # the weights' dtype (bf16 under a bf16 DeepSpeed engine), after z-scoring in float32
        x = ((motion.float() - self.mean.float()) / self.std.float() * mask[..., None]).to(
            self.sign_pos.dtype)
        x = F.pad(x, (0, 0, 0, pad))
        pos_mask = F.pad(mask, (0, pad)).view(b, n, FRAMES_PER_POSITION).any(-1)
        if self.config.decoupled:
            parts = self.format.split_parts(x)
            feats = torch.cat([self.part_encoders[p](parts[p]) for p in PARTS], dim=-1)
        else:
            feats = self.part_encoders["all"](x)
        h = self.fuse(feats) + self.sign_pos[:n]
        h = self._run(self.sign_encoder, h, pos_mask)
        return self._embed(self.sign_norm(h), pos_mask, self.sign_proj, self.sign_weight)

    def encode_text(self, texts: Sequence[str]) -> SiCLIPEmbeddings:
        """Text embeddings of a list of sentences (tokens cut at ``max_text_bytes``).

        Raises:
            ValueError: no texts or an empty text.
        """
        ids, mask = encode_texts(texts, self.config.max_text_bytes, self.text_tokenizer)
        device = self.logit_scale.device
        ids, mask = ids.to(device), mask.to(device)
        if self.config.text_encoder == "backbone":
            from madis.mdlm.backbone import backbone_hidden

            pos = torch.arange(ids.shape[1], device=device)[None].expand_as(ids)
            embeds = self.text_backbone.get_input_embeddings()(ids)
            h = self.text_in(backbone_hidden(self.text_backbone, embeds, mask.long(), pos))
        else:
            h = self.text_embed(ids) + self.text_pos[: ids.shape[1]]
            h = self._run(self.text_encoder, h, mask)
        return self._embed(self.text_norm(h), mask, self.text_proj, self.text_weight)

    @staticmethod
    def _run(encoder: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if isinstance(encoder, nn.Identity):
            return h
        return encoder(h, src_key_padding_mask=~mask)

    # -- scores and loss ------------------------------------------------------------------------
    def _scores(self, sign: SiCLIPEmbeddings, text: SiCLIPEmbeddings) -> tuple[torch.Tensor, torch.Tensor | None]:
        glob = sign.pooled @ text.pooled.T
        if self.config.fine_grained_weight == 0:
            return glob, None
        fine = token_wise_similarity(sign.tokens, sign.weights, sign.mask,
                                     text.tokens, text.weights, text.mask)
        return glob, fine

    @torch.no_grad()
    def similarity(self, sign: SiCLIPEmbeddings, text: SiCLIPEmbeddings, chunk: int = 64) -> torch.Tensor:
        """Retrieval scores ``[Bs, Bt]``: mean of global cosine and fine-grained score.

        Computed ``chunk`` signs at a time (the fine-grained score holds ``[chunk, Bt, N, L]``).
        """
        rows = []
        for start in range(0, sign.pooled.shape[0], chunk):
            glob, fine = self._scores(sign[start : start + chunk], text)
            rows.append(glob if fine is None else (glob + fine) / 2)
        return torch.cat(rows)

    def forward(self, motion: torch.Tensor, mask: torch.Tensor | None, texts: Sequence[str]) -> SiCLIPOutput:
        """Contrastive loss of a batch of ground-truth pairs (sign i belongs to ``texts[i]``).

        Args:
            motion: ``[B, T, D]`` in format units; mask: bool ``[B, T]`` or None; texts: B strings.

        Raises:
            ValueError: fewer than 2 pairs, a text count that differs from B, an empty text, a
                sample without real frames, or non-finite values; never returns a NaN loss.
        """
        if motion.shape[0] != len(texts):
            raise ValueError(f"{motion.shape[0]} motions but {len(texts)} texts")
        if len(texts) < 2:
            raise ValueError(f"a contrastive batch needs at least 2 pairs, got {len(texts)}")
        sign, text = self.encode_motion(motion, mask), self.encode_text(texts)
        same = [[a == b for b in texts] for a in texts]
        positives = torch.tensor(same, dtype=torch.bool, device=sign.pooled.device)
        scale = self.logit_scale.exp().clamp(max=self.config.max_logit_scale)[0]
        glob, fine = self._scores(sign, text)
        global_loss = symmetric_cross_entropy(scale * glob, positives)
        fine_loss = (symmetric_cross_entropy(scale * fine, positives) if fine is not None
                     else torch.zeros((), device=glob.device))
        loss = global_loss + self.config.fine_grained_weight * fine_loss
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"SiCLIP loss is not finite ({loss.item()})")
        return SiCLIPOutput(loss, global_loss.detach(), fine_loss.detach(), scale.detach())

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, path: str) -> None:
        """Write ``model.safetensors`` and ``config.json`` under ``path`` (directory or URL);
        see :mod:`madis.utils.pretrained`. A ``backbone`` text encoder adds the backbone's
        config to ``config.json`` and its tokenizer under ``text_tokenizer/``."""
        meta = {"kind": KIND, "motion_format": self.motion_format, "siclip": to_dict(self.config)}
        if self.config.text_encoder == "backbone":
            from madis.data.storage import join, upload_dir
            from madis.mdlm.text import TEXT_TOKENIZER_DIR, save_text_tokenizer

            meta["text_backbone"] = self.text_backbone.config.to_dict()
            with tempfile.TemporaryDirectory(prefix="madis-siclip-") as tmp:
                save_text_tokenizer(self.text_tokenizer, tmp)
                upload_dir(f"{tmp}/{TEXT_TOKENIZER_DIR}", join(str(path), TEXT_TOKENIZER_DIR))
        save_pretrained(path, self, meta)

    @classmethod
    def from_pretrained(cls, path: str, map_location: str | torch.device = "cpu") -> "SiCLIP":
        """Load what :meth:`save_pretrained` wrote; returned in eval mode.

        Raises:
            FileNotFoundError: ``config.json`` or ``model.safetensors`` missing.
            ValueError: the directory holds something other than a SiCLIP model.
        """
        meta = read_config(path, {"kind": KIND}, "SiCLIP model")
        config = from_dict(SiCLIPConfig, meta["siclip"], "siclip")
        saved = None
        if config.text_encoder == "backbone":
            from madis.mdlm.text import load_text_tokenizer

            with local_copy(path) as d:
                saved = (meta["text_backbone"], load_text_tokenizer(d))
        model = cls(config, meta["motion_format"], _saved_text=saved)
        load_weights(path, model)
        return model.to(map_location).eval()
