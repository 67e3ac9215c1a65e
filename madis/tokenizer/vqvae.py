"""One part's VQ-VAE: Conv1d encoder (4x down-sampling), EMA codebook, mirrored decoder (paper 3.1).

Layout follows SOKE's part tokenizers, themselves T2M-GPT's motion VQ-VAE: every down-sampling
block is a stride-2 convolution followed by a dilated ResNet1D stack; the decoder mirrors it
with nearest-neighbour up-sampling. Tensors here are ``[B, T, d]`` (time before channels) at the
interface and ``[B, C, T]`` inside the convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from madis.motion.base import FRAMES_PER_POSITION
from madis.tokenizer.codebook import EMACodebook, QuantizerOutput
from madis.tokenizer.config import TokenizerConfig

_NUM_DOWN = 2  # two stride-2 blocks: FRAMES_PER_POSITION == 2 ** _NUM_DOWN
assert FRAMES_PER_POSITION == 2**_NUM_DOWN


def _keep(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded time steps of ``x [B, C, T]`` (``mask [B, T]``, True = real)."""
    return x if mask is None else x * mask[:, None, :].to(x.dtype)


def _halve(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.view(mask.shape[0], -1, 2).any(-1)


def _double(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.repeat_interleave(2, dim=1)


class ResBlock1D(nn.Module):
    """``x + conv1x1(relu(conv3_dilated(relu(x))))``, length preserving."""

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.conv_dilated = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.conv_mix = nn.Conv1d(width, width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return _keep(x + self.conv_mix(F.relu(self.conv_dilated(F.relu(x)))), mask)


class ResNet1D(nn.Module):
    """Dilated stack, dilations ``growth**(depth-1) .. 1``: wide context first, then local detail."""

    def __init__(self, width: int, depth: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock1D(width, growth**j) for j in reversed(range(depth)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


# Every layer re-zeroes padded time steps: then a clip's latents and reconstruction are exactly
# those it gets alone (convolutions zero-pad at its end either way), whatever it is batched with.


class PartEncoder(nn.Module):
    """``[B, C_in, T]`` -> ``[B, code_dim, T/4]``; ``mask [B, T]`` marks real frames."""

    def __init__(self, in_dim: int, cfg: TokenizerConfig) -> None:
        super().__init__()
        w = cfg.width
        self.stem = nn.Conv1d(in_dim, w, 3, padding=1)
        # kernel 4, stride 2, padding 1 halves an even length exactly
        self.down = nn.ModuleList(nn.Conv1d(w, w, 4, stride=2, padding=1) for _ in range(_NUM_DOWN))
        self.res = nn.ModuleList(ResNet1D(w, cfg.depth, cfg.dilation_growth_rate)
                                 for _ in range(_NUM_DOWN))
        self.head = nn.Conv1d(w, cfg.code_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = _keep(F.relu(self.stem(_keep(x, mask))), mask)
        for down, res in zip(self.down, self.res):
            mask = _halve(mask)
            x = res(_keep(down(x), mask), mask)
        return _keep(self.head(x), mask)


class PartDecoder(nn.Module):
    """``[B, code_dim, N]`` -> ``[B, C_out, 4N]``; ``mask [B, N]`` marks real tokens."""

    def __init__(self, out_dim: int, cfg: TokenizerConfig) -> None:
        super().__init__()
        w = cfg.width
        self.stem = nn.Conv1d(cfg.code_dim, w, 3, padding=1)
        self.res = nn.ModuleList(ResNet1D(w, cfg.depth, cfg.dilation_growth_rate)
                                 for _ in range(_NUM_DOWN))
        self.up = nn.ModuleList(nn.Conv1d(w, w, 3, padding=1) for _ in range(_NUM_DOWN))
        self.post = nn.Conv1d(w, w, 3, padding=1)
        self.head = nn.Conv1d(w, out_dim, 3, padding=1)

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = _keep(F.relu(self.stem(_keep(z, mask))), mask)
        for res, up in zip(self.res, self.up):
            x = F.interpolate(res(x, mask), scale_factor=2, mode="nearest")
            mask = _double(mask)
            x = _keep(up(x), mask)
        x = _keep(F.relu(self.post(x)), mask)
        return _keep(self.head(x), mask)


@dataclass
class PartOutput:
    """One part's forward pass: reconstruction ``[B, T, d_p]`` plus the quantiser's output."""

    recon: torch.Tensor
    quant: QuantizerOutput


class PartVQVAE(nn.Module):
    """Encoder E_p, codebook C_p and decoder D_p of one part (paper 3.1).

    Args:
        in_dim: features of the part, d_in (e.g. 43 for the SMPL-X upper body).
        num_codes: K_p.
        cfg: sizes and EMA settings.
    """

    def __init__(self, in_dim: int, num_codes: int, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.encoder = PartEncoder(in_dim, cfg)
        self.quantizer = EMACodebook(num_codes, cfg.code_dim, cfg.ema_decay,
                                     cfg.dead_code_threshold)
        self.decoder = PartDecoder(in_dim, cfg)

    def encode_latents(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-quantisation latents: ``[B, T, d_in]`` (T a multiple of 4) -> ``[B, T/4, code_dim]``.

        ``mask [B, T]`` (True = real frame) zeroes padded steps after every layer.
        """
        return self.encoder(x.transpose(1, 2), mask).transpose(1, 2)

    def decode_latents(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, N, code_dim]`` -> ``[B, 4N, d_in]``; differentiable in ``z``.

        ``mask [B, N]`` (True = real token) zeroes padded steps after every layer.
        """
        z = z.to(self.decoder.stem.weight.dtype)
        return self.decoder(z.transpose(1, 2), mask).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                token_valid: torch.Tensor | None = None) -> PartOutput:
        """Encode, quantise (updating the EMA codebook in training mode) and decode.

        Args:
            x: normalised part motion ``[B, T, d_in]``.
            mask: bool ``[B, T]``, True at real frames.
            token_valid: bool ``[B, T/4]``; False positions stay out of the codebook statistics.
        """
        token_mask = None if mask is None else mask.view(mask.shape[0], -1, FRAMES_PER_POSITION).any(-1)
        quant = self.quantizer(self.encode_latents(x, mask), token_valid)
        return PartOutput(self.decode_latents(quant.z_q, token_mask), quant)
