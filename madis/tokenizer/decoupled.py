"""The decoupled sign tokenizer: three part VQ-VAEs (body, left hand, right hand), paper 3.1.

A motion ``[B, T, D]`` in its format's units is z-scored with the corpus statistics, split into
the format's three parts, and each part is encoded to one token per 4 frames. Token ``[..., p]``
indexes codebook ``C_p`` (``PARTS`` order). Padding is ``PAD_TOKEN`` (-1), as in token shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from madis.config import from_dict, to_dict
from madis.motion import PARTS, MotionFormat, get_format
from madis.motion.base import FRAMES_PER_POSITION
from madis.tokenizer.config import TokenizerConfig
from madis.tokenizer.vqvae import PartVQVAE
from madis.utils.pretrained import load_weights, read_config, save_pretrained

#: Token value at padded positions (token shards and the batch reader use it too).
PAD_TOKEN = -1
#: ``kind`` of an exported tokenizer's ``config.json``
KIND = "madis.DecoupledTokenizer"


@dataclass
class TokenizerOutput:
    """Training forward pass of :class:`DecoupledTokenizer`.

    Attributes:
        recon: reconstruction, z-scored, ``[B, T, D]``.
        tokens: int64 ``[B, T/4, 3]`` (``PAD_TOKEN`` where no real frame).
        loss: ``recon_loss + commitment_weight * commit_loss`` (scalar).
        recon_loss: SmoothL1 on z-scored features of real (and, per part, valid) frames, summed
            over the three parts.
        commit_loss: commitment loss summed over the three parts.
        perplexity: codebook perplexity per part over this batch's real tokens, ``[3]``.
        used: share of each part's codes used in this batch, ``[3]``.
    """

    recon: torch.Tensor
    tokens: torch.Tensor
    loss: torch.Tensor
    recon_loss: torch.Tensor
    commit_loss: torch.Tensor
    perplexity: torch.Tensor
    used: torch.Tensor


def _stat(value, dim: int, fill: float, name: str) -> torch.Tensor:
    if value is None:
        return torch.full((dim,), fill)
    t = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if t.shape != (dim,):
        raise ValueError(f"{name} must have shape [{dim}] (the format's D), got {tuple(t.shape)}")
    return t


class DecoupledTokenizer(nn.Module):
    """Three part VQ-VAEs over one motion format, with the corpus z-score statistics as buffers.

    Args:
        config: sizes and losses.
        motion_format: registered format name (``smplx133`` or ``keypoints``).
        mean, std: z-score statistics ``[D]`` over the training split of the features the
            VQ-VAEs see: the shard manifest's ``stats``, or with ``hand_frame: wrist`` those of
            the wrist-relative features (:func:`madis.tokenizer.task.feature_stats`); ``None``
            means 0 and 1. Std entries below 1e-6 (a constant feature) count as 1, so
            normalising never divides by zero.

    Raises:
        KeyError: unknown motion format.
        ValueError: mean/std of the wrong shape.
    """

    def __init__(self, config: TokenizerConfig, motion_format: str, mean=None, std=None) -> None:
        super().__init__()
        self.config = config
        self.format: MotionFormat = get_format(motion_format)
        dim = self.format.dim
        std_t = _stat(std, dim, 1.0, "std")
        self.register_buffer("mean", _stat(mean, dim, 0.0, "mean"))
        self.register_buffer("std", torch.where(std_t < 1e-6, torch.ones_like(std_t), std_t))
        for p in PARTS:
            idx = torch.as_tensor(np.asarray(self.format.part_index[p]), dtype=torch.long)
            self.register_buffer(f"index_{p}", idx, persistent=False)
        self.parts = nn.ModuleDict({
            p: PartVQVAE(d, k, config)
            for p, d, k in zip(PARTS, self.format.part_dims, config.codebook_sizes)
        })

    # -- contract properties ------------------------------------------------------------------
    @property
    def motion_format(self) -> str:
        """Name of the motion format the tokenizer was built for."""
        return self.format.name

    @property
    def codebooks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The code tables ``C_p [K_p, d_p]`` in PARTS order (live buffers: detach before use)."""
        return tuple(self.parts[p].quantizer.codebook for p in PARTS)  # type: ignore[return-value]

    @property
    def codebook_sizes(self) -> tuple[int, int, int]:
        """``(K_B, K_L, K_R)``."""
        return tuple(self.parts[p].quantizer.num_codes for p in PARTS)  # type: ignore[return-value]

    @property
    def code_dims(self) -> tuple[int, int, int]:
        """``(d_B, d_L, d_R)``."""
        return tuple(self.parts[p].quantizer.code_dim for p in PARTS)  # type: ignore[return-value]

    # -- normalisation ----------------------------------------------------------------------------
    def normalize(self, motion: torch.Tensor) -> torch.Tensor:
        """Format units -> z-scored features, ``[..., D]`` (with ``hand_frame: wrist`` the
        hands relative to their wrists first; ``mean``/``std`` are those features' stats)."""
        if self.config.hand_frame == "wrist":
            motion = self.format.hands_to_wrist(motion)
        return (motion - self.mean) / self.std

    def denormalize(self, motion: torch.Tensor) -> torch.Tensor:
        """Z-scored features -> format units, ``[..., D]``."""
        out = motion * self.std + self.mean
        return self.format.hands_from_wrist(out) if self.config.hand_frame == "wrist" else out

    # -- shared plumbing --------------------------------------------------------------------------
    def _check(self, motion: torch.Tensor, mask: torch.Tensor | None):
        if motion.dim() != 3 or motion.shape[-1] != self.format.dim:
            raise ValueError(
                f"motion must be [B, T, {self.format.dim}] for format {self.format.name!r}, "
                f"got {tuple(motion.shape)}"
            )
        B, T, _ = motion.shape
        if T == 0 or T % FRAMES_PER_POSITION:
            raise ValueError(f"frame count T={T} must be a positive multiple of {FRAMES_PER_POSITION}")
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=motion.device)
        elif mask.shape != (B, T):
            raise ValueError(f"mask must be [B, T] = {(B, T)}, got {tuple(mask.shape)}")
        mask = mask.bool()
        # a token is real when any of its 4 frames is (clips have a multiple of 4 frames anyway)
        token_mask = mask.view(B, T // FRAMES_PER_POSITION, FRAMES_PER_POSITION).any(-1)
        return mask, token_mask

    def _part_inputs(self, motion: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        # padded frames become the mean pose (0 after z-scoring) so they carry no signal
        x = self.normalize(motion.float()).float() * mask[..., None]
        x = x.to(self.parts[PARTS[0]].encoder.stem.weight.dtype)  # bf16 under DeepSpeed
        return {p: x[..., getattr(self, f"index_{p}")] for p in PARTS}

    def _merge(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        first = parts[PARTS[0]]
        out = first.new_zeros(first.shape[:-1] + (self.format.dim,))
        for p in PARTS:
            out = out.index_copy(-1, getattr(self, f"index_{p}"), parts[p])
        return out

    # -- training -------------------------------------------------------------------------------------
    def forward(self, motion: torch.Tensor, mask: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> TokenizerOutput:
        """Training pass: reconstruct, quantise (EMA update in train mode) and compute the loss.

        Args:
            motion: ``[B, T, D]`` in format units, T a multiple of 4, zero-padded.
            mask: bool ``[B, T]``, True at real frames; padded frames are kept out of the loss
                and of the codebook statistics.
            valid: bool ``[B, T, 3]`` per-part detection validity (keypoint data); frames where
                a part was not detected are left out of that part's loss and statistics.

        Raises:
            ValueError: wrong shapes or T not a multiple of 4.
        """
        mask, token_mask = self._check(motion, mask)
        B, T, _ = motion.shape
        if valid is None:
            valid = torch.ones(B, T, 3, dtype=torch.bool, device=motion.device)
        inputs = self._part_inputs(motion, mask)
        recon, tokens, recon_l, commit_l, ppl, used = {}, [], [], [], [], []
        for j, p in enumerate(PARTS):
            frame_ok = mask & valid[..., j].bool()
            tok_ok = token_mask & frame_ok.view(B, -1, FRAMES_PER_POSITION).any(-1)
            out = self.parts[p](inputs[p], mask, tok_ok)
            recon[p] = out.recon
            err = F.smooth_l1_loss(out.recon.float(), inputs[p].float(), reduction="none").mean(-1)
            recon_l.append((err * frame_ok).sum() / frame_ok.sum().clamp_min(1))
            commit_l.append(out.quant.commit_loss)
            ppl.append(out.quant.perplexity)
            used.append(out.quant.used)
            tokens.append(out.quant.indices.masked_fill(~token_mask, PAD_TOKEN))
        recon_loss = torch.stack(recon_l).sum()
        commit_loss = torch.stack(commit_l).sum()
        return TokenizerOutput(
            recon=self._merge(recon),
            tokens=torch.stack(tokens, dim=-1),
            loss=recon_loss + self.config.commitment_weight * commit_loss,
            recon_loss=recon_loss,
            commit_loss=commit_loss,
            perplexity=torch.stack(ppl).detach(),
            used=torch.stack(used).detach(),
        )

    # -- inference --------------------------------------------------------------------------------------
    def encode_latents(self, motion: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-quantisation latents per part, each ``[B, T/4, d_p]`` (differentiable)."""
        mask, _ = self._check(motion, mask)
        inputs = self._part_inputs(motion, mask)
        return tuple(self.parts[p].encode_latents(inputs[p], mask) for p in PARTS)  # type: ignore

    @torch.no_grad()
    def encode(self, motion: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Motion to tokens; never updates the codebooks.

        Args:
            motion: ``[B, T, D]`` in format units (T a multiple of 4).
            mask: bool ``[B, T]``, True at real frames; ``None`` means all real.

        Returns:
            int64 ``[B, T/4, 3]``, parts (body, lhand, rhand); ``PAD_TOKEN`` where a token
            covers no real frame.

        Raises:
            ValueError: wrong shapes or T not a multiple of 4.
        """
        _, token_mask = self._check(motion, mask)
        latents = self.encode_latents(motion, mask)
        tokens = [self.parts[p].quantizer.quantize(z) for p, z in zip(PARTS, latents)]
        return torch.stack(tokens, dim=-1).masked_fill(~token_mask[..., None], PAD_TOKEN)

    def decode_latents(self, latents: Sequence[torch.Tensor], normalized: bool = True,
                       token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decode per-part latents (code vectors or predictions of them) to motion.

        Used by the MDLM's physical-space loss (docs/design.md#physical-space-eq-5): gradients flow
        through the decoders into the latents; freezing the decoders' weights is the caller's
        choice.

        Args:
            latents: three tensors ``[B, N, d_p]`` in PARTS order.
            normalized: True returns z-scored motion, False format units.
            token_mask: optional bool ``[B, N]``, True at real positions; padded positions then
                do not influence the frames of real ones (and decode to the mean pose).

        Returns:
            ``[B, 4N, D]``.
        """
        if len(latents) != len(PARTS):
            raise ValueError(f"expected {len(PARTS)} latent tensors (body, lhand, rhand)")
        parts = {p: self.parts[p].decode_latents(z, token_mask) for p, z in zip(PARTS, latents)}
        out = self._merge(parts)
        return out if normalized else self.denormalize(out)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens to motion in format units.

        Args:
            tokens: int ``[B, N, 3]``; ``PAD_TOKEN`` (any negative value) marks padding.

        Returns:
            ``[B, 4N, D]`` float32; the 4 frames of each padded position are zeros, like the
            reader's padding.

        Raises:
            ValueError: wrong shape or a token outside its part's codebook.
        """
        if tokens.dim() != 3 or tokens.shape[-1] != len(PARTS):
            raise ValueError(f"tokens must be [B, N, 3], got {tuple(tokens.shape)}")
        tokens = tokens.long()
        pad = tokens < 0
        for j, k in enumerate(self.codebook_sizes):
            if bool((tokens[..., j] >= k).any()):
                raise ValueError(f"{PARTS[j]} token >= codebook size {k}")
        safe = tokens.clamp_min(0)
        latents = [self.parts[p].quantizer.dequantize(safe[..., j]) for j, p in enumerate(PARTS)]
        motion = self.decode_latents(latents, normalized=False, token_mask=~pad.any(-1))
        frame_pad = pad.any(-1).repeat_interleave(FRAMES_PER_POSITION, dim=1)
        return motion.masked_fill(frame_pad[..., None], 0.0)

    # -- persistence ------------------------------------------------------------------------------------
    def save_pretrained(self, path: str) -> None:
        """Write ``model.safetensors`` (float32) and ``config.json`` under ``path`` (a directory
        or URL); see :mod:`madis.utils.pretrained`.

        Loading needs neither DeepSpeed nor Ray: see :meth:`from_pretrained`.
        """
        save_pretrained(path, self, {"kind": KIND, "motion_format": self.motion_format,
                                     "tokenizer": to_dict(self.config)}, float32=True)

    @classmethod
    def from_pretrained(cls, path: str, map_location: str | torch.device = "cpu"
                        ) -> "DecoupledTokenizer":
        """Load what :meth:`save_pretrained` wrote (a directory or URL); returned in eval mode.

        Raises:
            FileNotFoundError: ``config.json`` or ``model.safetensors`` missing.
            ValueError: the directory holds something else than a tokenizer.
        """
        meta = read_config(path, {"kind": KIND}, "DecoupledTokenizer")
        model = cls(from_dict(TokenizerConfig, meta["tokenizer"], "tokenizer"),
                    meta["motion_format"])
        load_weights(path, model)
        return model.to(map_location).eval()
