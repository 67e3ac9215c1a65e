"""What ``evaluate`` compares: generated predictions and ground-truth references.

Predictions file format (what ``madis eval PREDICTIONS`` reads), a local directory that mirrors
the shard sample naming:

==========================  =====================================================================
``predictions.json``        ``{"format": "keypoints" | "smplx133", ...}`` (other fields free: the
                            checkpoint, sampler, num_steps...); required
``<key>.motion.npy``        ``[T, D]`` float16/float32 generated motion in the format's units;
                            required for every key
``<key>.tokens.npy``        ``[N, 3]`` integer generated part tokens (body, lhand, rhand) after the
                            first EOS cut, no padding; optional (SiBLEU needs them)
==========================  =====================================================================

``<key>`` is the reference sample's key in the shards (``[A-Za-z0-9_-]``, no dots).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["Prediction", "Reference", "save_predictions", "load_predictions", "PREDICTIONS_META"]

PREDICTIONS_META = "predictions.json"
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Prediction:
    """One generated sample: ``motion [T, D]`` (format units), optional ``tokens [N, 3]``."""

    motion: np.ndarray
    tokens: np.ndarray | None = None


@dataclass
class Reference:
    """One ground-truth sample: its ``text``, ``motion [T, D]``, optional ``tokens [N, 3]``."""

    text: str
    motion: np.ndarray
    tokens: np.ndarray | None = None
    lang: str = ""


def _check(key: str, pred: Prediction) -> None:
    if not _KEY.match(key):
        raise ValueError(f"bad sample key {key!r}: use ASCII letters, digits, '_' and '-'")
    if np.asarray(pred.motion).ndim != 2:
        raise ValueError(f"{key}: motion must be [T, D], got shape {np.shape(pred.motion)}")
    if pred.tokens is not None and (np.asarray(pred.tokens).ndim != 2 or np.shape(pred.tokens)[1] != 3):
        raise ValueError(f"{key}: tokens must be [N, 3], got shape {np.shape(pred.tokens)}")


def save_predictions(directory: str | Path, predictions: Mapping[str, Prediction],
                     motion_format: str, **meta) -> Path:
    """Write ``predictions`` in the predictions format (see module doc) under ``directory``.

    Extra keyword arguments go into ``predictions.json``.

    Raises:
        ValueError: a bad key or shape (nothing is written then).
    """
    for key, pred in predictions.items():
        _check(key, pred)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for key, pred in predictions.items():
        np.save(d / f"{key}.motion.npy", np.asarray(pred.motion), allow_pickle=False)
        if pred.tokens is not None:
            np.save(d / f"{key}.tokens.npy", np.asarray(pred.tokens, dtype=np.int16), allow_pickle=False)
    # the metadata last: a directory with it is complete
    (d / PREDICTIONS_META).write_text(json.dumps({"format": motion_format, **meta}, indent=2,
                                                 sort_keys=True))
    return d


def load_predictions(directory: str | Path) -> tuple[dict, dict[str, Prediction]]:
    """Read a predictions directory: ``(meta, {key: Prediction})``, keys sorted.

    Raises:
        FileNotFoundError: no such directory or no ``predictions.json`` in it.
        ValueError: a tokens file without its motion file, a file that does not load as the
            documented array, or no predictions at all.
    """
    d = Path(directory)
    meta_path = d / PREDICTIONS_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{d}: no {PREDICTIONS_META}; not a predictions directory "
                                f"(see madis/metrics/predictions.py for the format)")
    meta = json.loads(meta_path.read_text())
    if "format" not in meta:
        raise ValueError(f"{meta_path}: missing the motion 'format' field")
    motions = {p.name[: -len(".motion.npy")]: p for p in d.glob("*.motion.npy")}
    tokens = {p.name[: -len(".tokens.npy")]: p for p in d.glob("*.tokens.npy")}
    orphans = sorted(set(tokens) - set(motions))
    if orphans:
        raise ValueError(f"{d}: tokens without motion for keys {orphans[:5]}")
    if not motions:
        raise ValueError(f"{d}: no <key>.motion.npy files")
    out = {}
    for key in sorted(motions):
        try:
            motion = np.load(motions[key], allow_pickle=False)
            tok = np.load(tokens[key], allow_pickle=False) if key in tokens else None
        except (OSError, ValueError) as exn:
            raise ValueError(f"{d}: cannot read prediction {key!r}: {exn}") from exn
        if tok is not None:
            if not np.issubdtype(tok.dtype, np.integer) or (tok.size and tok.min() < 0):
                raise ValueError(f"{d}: {key}.tokens.npy must hold codebook indices (integers "
                                 f">= 0), got {tok.dtype} min {tok.min() if tok.size else '-'}")
            tok = tok.astype(np.int64)
        pred = Prediction(motion, tok)
        _check(key, pred)
        out[key] = pred
    return meta, out
