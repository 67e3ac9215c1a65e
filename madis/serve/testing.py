"""Runs written by code for the service's tests and benchmark: randomly initialised models in
the real checkpoint layout (no training, no download), and ``best.json`` files.

A run written here looks to the service exactly like a fine-tuning run::

    {root}/tokens/manifest.json                 languages of the train split (what the model knows)
    {root}/finetune/checkpoint_<step>/COMPLETE
    {root}/finetune/checkpoint_<step>/export/   model.safetensors, config.json, text tokenizer,
                                                tokenizer/ (motion tokenizer), metadata.json
    {root}/finetune/best.json                   (write_best, the fleet's registry writer)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from madis.mdlm import testing
from madis.mdlm.config import ModelConfig
from madis.tokenizer import DecoupledTokenizer, TokenizerConfig
from madis.train.checkpoints import (
    EXPORT_DIR, METADATA, checkpoint_dir_name, write_complete, write_json,
)

#: the MDLM tests' tiny sizes (:mod:`madis.mdlm.testing`), decoded in 6 steps, byte-level text
TINY_MODEL = {**testing.TINY_MODEL, "num_steps": 6, "text_tokenizer": "bytes"}
TINY_TOKENIZER = testing.TINY_TOKENIZER
LANGUAGES = ("ase", "gsg")


def random_tokenizer(cfg: TokenizerConfig, fmt: str = "keypoints", seed: int = 0,
                     mean=None, std=None) -> DecoupledTokenizer:
    """An untrained ``DecoupledTokenizer`` with spread-out codebooks (distinct codes decode to
    distinct motions); ``mean``/``std`` default to 0 and 0.1 format units."""
    torch.manual_seed(seed)
    dim = DecoupledTokenizer(cfg, fmt).format.dim
    tok = DecoupledTokenizer(cfg, fmt, mean=torch.zeros(dim) if mean is None else mean,
                             std=torch.full((dim,), 0.1) if std is None else std)
    with torch.no_grad():
        for cb in tok.codebooks:
            cb.copy_(torch.randn_like(cb))
    return tok.eval()


def write_export(directory: str | Path, tokenizer: DecoupledTokenizer, *, model_cfg: ModelConfig,
                 seed: int, step: int, shards: Sequence[str], run_name: str = "finetune",
                 full_length: bool = True) -> Path:
    """Write a random model export of ``model_cfg.architecture`` (``MaDiSModel``, or
    ``ARBaseline`` for ``ar``; the layout ``MDLMTask.export`` plus the loop's ``metadata.json``
    give) to ``directory``.

    Args:
        full_length: make ``[EOS]`` and ``[PAD]`` unreachable for the body head, so every
            generation fills all ``num_positions`` (a random model would otherwise stop at a
            random position, often the first).
    """
    from madis.mdlm.base import model_class
    from madis.mdlm.exports import TOKENIZER_DIR

    torch.manual_seed(seed)
    model = model_class(model_cfg.architecture)(model_cfg, tokenizer)
    if full_length:
        with torch.no_grad():
            model.heads.heads[0].bias[model.codebook_sizes[0]:] = -1e4
    d = Path(directory)
    model.save_pretrained(d)
    tokenizer.save_pretrained(str(d / TOKENIZER_DIR))
    meta = {"step": step, "epoch": 0, "run_name": run_name,
            "task": {"name": "mdlm", "stage": "finetune", "shards": list(shards),
                     "motion_format": tokenizer.format.name},
            "metrics": {"val_loss": 1.0 / step}}
    write_json(str(d / METADATA), meta, indent=1)
    return d


def write_run(root: str | Path, steps: Sequence[int] = (10, 20), *, fmt: str = "keypoints",
              languages: Sequence[str] = LANGUAGES, model_overrides: dict | None = None,
              tokenizer_overrides: dict | None = None, full_length: bool = True) -> dict[int, str]:
    """A fine-tuning run with one complete checkpoint per step (each a different random model,
    seeded by its step, sharing one tokenizer). The sizes are :data:`TINY_MODEL` and
    :data:`TINY_TOKENIZER` with the overrides on top. Returns ``{step: export_url}``."""
    root = Path(root)
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    (tokens / "manifest.json").write_text(json.dumps({
        "format": fmt, "tokens": True,
        "splits": {"train": {"shards": [], "samples": 0, "languages": {lg: 1 for lg in languages}}}}))
    tok = random_tokenizer(TokenizerConfig(**{**TINY_TOKENIZER, **(tokenizer_overrides or {})}), fmt)
    model_cfg = ModelConfig(**{**TINY_MODEL, **(model_overrides or {})})
    exports = {}
    for step in steps:
        ckpt = root / "finetune" / checkpoint_dir_name(step)
        exports[step] = str(write_export(ckpt / EXPORT_DIR, tok, model_cfg=model_cfg, seed=step,
                                         step=step, shards=[str(tokens)], full_length=full_length))
        write_complete(str(ckpt), step)
    return exports


def write_best(run_dir: str | Path, step: int, value: float, metric: str = "dtw_jpe",
               mode: str = "min") -> dict:
    """Record that the eval fleet evaluated checkpoint ``step`` of ``run_dir`` with ``metric``
    = ``value``, through the fleet's own registry writer (:func:`madis.fleet.registry.record`:
    atomic, ``best`` moves only to a better value). Returns the ``best.json`` written."""
    from madis.fleet.registry import history_entry, record

    ckpt = Path(run_dir) / checkpoint_dir_name(step)
    return record(str(run_dir), history_entry(step, str(ckpt), metrics={metric: value}), metric, mode)
