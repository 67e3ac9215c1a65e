"""EMA codebook with dead-code reset, the quantiser of each part VQ-VAE (paper 3.1, SOKE)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _world() -> int:
    """Data-parallel world size, 1 when no process group is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _sample_rows(x: torch.Tensor, n: int) -> torch.Tensor | None:
    """``n`` rows drawn from ``x [M, d]`` (with repeats), the same on every rank, or ``None``
    when no rank has a row (e.g. a hand never detected in the whole batch)."""
    src = 0
    if _world() > 1:
        # Codebooks are buffers, not parameters: DeepSpeed never syncs them, so every rank
        # must take the same rows: those of the first rank that has any.
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        have = torch.zeros(world, device=x.device)
        have[rank] = float(x.shape[0])
        torch.distributed.all_reduce(have)
        ranks = (have > 0).nonzero().flatten()
        if len(ranks) == 0:
            return None
        src = int(ranks[0])
    elif x.shape[0] == 0:
        return None
    if x.shape[0] > 0:
        rows = x[torch.randint(0, x.shape[0], (n,), device=x.device)].contiguous()
    else:
        rows = x.new_zeros(n, x.shape[1])
    if _world() > 1:
        torch.distributed.broadcast(rows, src=src)
    return rows


@dataclass
class QuantizerOutput:
    """What :meth:`EMACodebook.forward` returns.

    Attributes:
        z_q: quantised latents with straight-through gradients, ``[B, N, d]``.
        indices: code index per position, int64 ``[B, N]``.
        commit_loss: mean of ``||z_e - sg(z_q)||^2 / d`` over valid positions (scalar).
        perplexity: ``exp`` of the entropy of code use over the valid positions (scalar).
        used: share of the K codes picked at least once in this batch (scalar in [0, 1]).
    """

    z_q: torch.Tensor
    indices: torch.Tensor
    commit_loss: torch.Tensor
    perplexity: torch.Tensor
    used: torch.Tensor


class EMACodebook(nn.Module):
    """K code vectors updated by exponential moving averages, not by gradients.

    In training mode each forward pass (a) initialises the codebook from the first batch's
    encoder outputs, (b) moves each code towards the mean of the encoder outputs assigned to it:
    ``sum_k <- mu * sum_k + (1 - mu) * sum(z_e -> k)``, ``count_k <- mu * count_k + (1 - mu) * n_k``,
    ``c_k = sum_k / count_k``, and (c) resets every code whose ``count_k`` fell below
    ``dead_code_threshold`` to a random encoder output of the batch (with ``count_k = 1``, so it
    survives if the next batch uses it once). Only valid (non-padded) positions take part.
    Under ``torch.distributed`` the batch sums are all-reduced and random rows broadcast from
    rank 0, so every replica holds the same codebook. In eval mode nothing changes.

    Args:
        num_codes: K.
        code_dim: d.
        decay: mu (paper 0.99).
        dead_code_threshold: see above (T2M-GPT: 1.0).
    """

    def __init__(self, num_codes: int, code_dim: int, decay: float = 0.99,
                 dead_code_threshold: float = 1.0) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("codebook", torch.zeros(num_codes, code_dim))
        self.register_buffer("code_sum", torch.zeros(num_codes, code_dim))
        self.register_buffer("code_count", torch.zeros(num_codes))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _apply(self, fn, recurse=True):
        # Keep the EMA state in float32 when the module is cast (DeepSpeed bf16 casts the whole
        # model): a 0.99-decay average loses its small updates in bf16's 8-bit mantissa.
        super()._apply(fn, recurse)
        for name in ("codebook", "code_sum", "code_count"):
            if self._buffers[name].dtype != torch.float32:
                self._buffers[name] = self._buffers[name].float()
        return self

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code (Euclidean) for each vector: ``[..., d]`` -> int64 ``[...]``."""
        flat = z.reshape(-1, self.code_dim).float()
        cb = self.codebook.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]
        return dist.argmin(dim=1).reshape(z.shape[:-1])

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for indices: int ``[...]`` -> ``[..., d]``."""
        return F.embedding(indices, self.codebook)

    @torch.no_grad()
    def _init_from(self, z_valid: torch.Tensor) -> None:
        rows = _sample_rows(z_valid.float(), self.num_codes)
        if rows is None:
            return  # no valid position anywhere yet: initialise on a later batch
        self.codebook.copy_(rows)
        self.code_sum.copy_(rows)
        self.code_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z_valid: torch.Tensor, idx_valid: torch.Tensor) -> torch.Tensor:
        """One EMA step; returns the global per-code counts of this batch ``[K]``."""
        onehot = F.one_hot(idx_valid, self.num_codes).to(torch.float32)  # M, K
        batch_sum = onehot.t() @ z_valid.float()  # K, d
        batch_count = onehot.sum(0)  # K
        if _world() > 1:
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(batch_count)
        if batch_count.sum() == 0:
            return batch_count  # nothing observed: no evidence to move or kill any code
        mu = self.decay
        self.code_sum.mul_(mu).add_(batch_sum, alpha=1 - mu)
        self.code_count.mul_(mu).add_(batch_count, alpha=1 - mu)
        alive = self.code_count >= self.dead_code_threshold
        updated = self.code_sum / self.code_count.clamp_min(1e-12)[:, None]
        fresh = _sample_rows(z_valid.float(), self.num_codes)
        assert fresh is not None  # some rank had data: batch_count.sum() > 0
        self.codebook.copy_(torch.where(alive[:, None], updated, fresh))
        self.code_sum.copy_(torch.where(alive[:, None], self.code_sum, fresh))
        self.code_count.copy_(torch.where(alive, self.code_count, torch.ones_like(self.code_count)))
        return batch_count

    def forward(self, z_e: torch.Tensor, valid: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantise encoder outputs.

        Args:
            z_e: encoder outputs ``[B, N, d]``.
            valid: bool ``[B, N]``, False at padded positions (kept out of the EMA statistics,
                the commitment loss and the usage numbers); ``None`` means all valid.

        Returns:
            :class:`QuantizerOutput`; in training mode the codebook was updated (after the
            indices were chosen with the previous codebook, as in T2M-GPT).
        """
        if valid is None:
            valid = torch.ones(z_e.shape[:2], dtype=torch.bool, device=z_e.device)
        z_valid = z_e[valid].detach()
        if self.training and not bool(self.initialized):
            self._init_from(z_valid)
        indices = self.quantize(z_e)
        z_q = self.dequantize(indices).to(z_e.dtype)
        if self.training:
            counts = self._ema_update(z_valid, indices[valid])
        else:
            counts = torch.bincount(indices[valid], minlength=self.num_codes).float()
        n_valid = valid.sum().clamp_min(1)
        err = (z_e - z_q.detach()).pow(2).mean(-1)
        commit_loss = (err * valid).sum() / n_valid
        probs = counts / counts.sum().clamp_min(1.0)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        used = (counts > 0).float().mean()
        z_q = z_e + (z_q - z_e).detach()  # straight-through estimator
        return QuantizerOutput(z_q, indices, commit_loss, perplexity, used)
