"""Reconstruction quality and codebook use of a trained tokenizer on a shard split (paper 3.1)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from madis.motion import PARTS
from madis.tokenizer.decoupled import DecoupledTokenizer


def codebook_usage(counts: np.ndarray) -> dict[str, float]:
    """Perplexity ``exp(H(p))`` of a code histogram ``[K]`` and the share of codes used.

    A perplexity of K means uniform use of all K codes; 1 means a single code.
    """
    total = counts.sum()
    if total == 0:
        return {"perplexity": 0.0, "used": 0.0}
    p = counts[counts > 0] / total
    return {"perplexity": float(math.exp(-(p * np.log(p)).sum())),
            "used": float((counts > 0).mean())}


@torch.no_grad()
def evaluate_tokenizer(tokenizer: DecoupledTokenizer, shards: str, split: str = "val",
                       batch_size: int = 16, max_batches: int = 0) -> dict[str, Any]:
    """Encode and decode a split; per-part reconstruction MPJPE and codebook use.

    MPJPE is the mean Euclidean distance between the joints of the original and reconstructed
    motion (``get_format(name).joints``, in the format's ``units``), over real frames where the
    part was detected, and over that part's joints; ``None`` for a part never detected in the
    split. ``mpjpe_mean`` averages the parts that have a value.

    Returns:
        ``{"split", "samples", "units", "mpjpe_<part>", "mpjpe_mean", "mean_pose_mpjpe_<part>"
        (the baseline of reconstructing every frame as the corpus mean pose), "perplexity_<part>",
        "codes_used_<part>", "codebook_size_<part>"}``; MPJPE entries are ``None`` with an
        ``mpjpe_error`` when the format's joints cannot be computed (an SMPL-X model missing).

    Raises:
        FileNotFoundError / StorageError: no shard root there; KeyError: unknown split.
    """
    from madis.data.shards import iter_batches

    fmt = tokenizer.format
    device = tokenizer.mean.device
    tokenizer.eval()
    counts = [np.zeros(k, np.int64) for k in tokenizer.codebook_sizes]
    err_sum = np.zeros(3)
    err_n = np.zeros(3)
    base_sum = np.zeros(3)  # baseline: every frame reconstructed as the corpus mean pose
    mean_joints = fmt.joints(tokenizer.mean.cpu().numpy()[None])
    samples = 0
    mpjpe_error = None
    for i, batch in enumerate(iter_batches(shards, split, batch_size, shuffle=False)):
        if max_batches and i >= max_batches:
            break
        motion, mask = batch["motion"].to(device), batch["mask"].to(device)
        tokens = tokenizer.encode(motion, mask)
        recon = tokenizer.decode(tokens).cpu().numpy()
        tokens = tokens.cpu().numpy()
        for j in range(3):
            t = tokens[..., j]
            counts[j] += np.bincount(t[t >= 0], minlength=len(counts[j]))
        for b in range(len(motion)):
            samples += 1
            if mpjpe_error:
                continue
            n = int(batch["mask"][b].sum())
            try:
                ref = fmt.joints(batch["motion"][b, :n].numpy())
                out = fmt.joints(recon[b, :n])
            except (FileNotFoundError, ImportError) as exn:
                mpjpe_error = f"{type(exn).__name__}: {exn}"
                continue
            valid = batch["valid"][b, :n].numpy()
            for j, p in enumerate(PARTS):
                dist = np.linalg.norm(ref[p] - out[p], axis=-1)[valid[:, j]]  # frames, joints
                err_sum[j] += dist.sum()
                err_n[j] += dist.size
                base_sum[j] += np.linalg.norm(ref[p] - mean_joints[p], axis=-1)[valid[:, j]].sum()
    result: dict[str, Any] = {"split": split, "samples": samples, "units": fmt.units}
    for j, p in enumerate(PARTS):
        result[f"mpjpe_{p}"] = None if mpjpe_error or not err_n[j] else float(err_sum[j] / err_n[j])
        result[f"mean_pose_mpjpe_{p}"] = (None if mpjpe_error or not err_n[j]
                                          else float(base_sum[j] / err_n[j]))
    parts = [result[f"mpjpe_{p}"] for p in PARTS if result[f"mpjpe_{p}"] is not None]
    result["mpjpe_mean"] = float(np.mean(parts)) if parts else None
    if mpjpe_error:
        result["mpjpe_error"] = mpjpe_error
    for j, p in enumerate(PARTS):
        use = codebook_usage(counts[j])
        result[f"perplexity_{p}"] = use["perplexity"]
        result[f"codes_used_{p}"] = use["used"]
        result[f"codebook_size_{p}"] = len(counts[j])
    return result
