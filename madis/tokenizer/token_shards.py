"""Token shards: every split of a motion shard set, with ``<key>.tokens.npy`` added."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from madis.motion.base import FRAMES_PER_POSITION
from madis.tokenizer.decoupled import DecoupledTokenizer

_BASE_FIELDS = ("text", "lang", "fps", "source", "composed")


def as_sample(decoded: dict, tokens=None):
    """A sample read by ``madis.data.shards.iter_samples`` back as a writable ``Sample``."""
    from madis.data.shards import Sample

    meta = dict(decoded["meta"])
    return Sample(key=decoded["key"], text=meta["text"], lang=meta["lang"], fps=meta["fps"],
                  source=meta["source"], composed=bool(meta.get("composed", False)),
                  meta={k: v for k, v in meta.items() if k not in _BASE_FIELDS},
                  motion=decoded["motion"], valid=decoded["valid"], tokens=tokens)


def _tokenized(tokenizer: DecoupledTokenizer, src: str, split: str, batch_size: int,
               manifest: dict) -> Iterator:
    from madis.data.shards import ReadStats, collate, iter_samples

    def flush(group):
        batch = collate(group)
        device = tokenizer.mean.device
        tokens = tokenizer.encode(batch["motion"].to(device), batch["mask"].to(device)).cpu()
        for b, s in enumerate(group):
            n = len(s["motion"]) // FRAMES_PER_POSITION
            yield as_sample(s, tokens[b, :n].numpy().astype("int16"))

    group: list[dict] = []
    stats, seen = ReadStats(), 0
    for s in iter_samples(src, split, shuffle=False, manifest=manifest, stats=stats):
        seen += 1
        group.append(s)
        if len(group) == batch_size:
            yield from flush(group)
            group = []
    expected = manifest["splits"][split]["samples"]
    if stats.corrupt_shards or stats.bad_samples or seen != expected:
        # a token set quietly missing samples would pass for the whole split later
        raise ValueError(f"{src} split {split!r}: read {seen} of {expected} samples "
                         f"({stats.corrupt_shards} unreadable shards, {stats.bad_samples} bad "
                         f"samples); refusing to write a partial token set")
    if group:
        yield from flush(group)


@torch.no_grad()
def encode_corpus(export_url: str, src: str, out: str, *, extra: dict[str, Any] | None = None,
                  device: str | torch.device = "cpu") -> dict:
    """The tokenizer job's work after training: load the exported tokenizer onto ``device``,
    measure its val reconstruction (:func:`~madis.tokenizer.evaluate.evaluate_tokenizer`) and
    write the token shards of every split (:func:`write_token_shards`).

    Returns:
        ``{"val": metrics, "manifest": the written manifest, "device": str, "pid": int}``.
    Raises:
        see :func:`write_token_shards`.
    """
    from madis.tokenizer.evaluate import evaluate_tokenizer
    from madis.tokenizer.task import TokenizerTask

    tokenizer = TokenizerTask.load(export_url, map_location=device)
    val = evaluate_tokenizer(tokenizer, src, "val")
    manifest = write_token_shards(tokenizer, src, out, extra=extra)
    return {"val": val, "manifest": manifest, "device": str(device), "pid": os.getpid()}


def write_token_shards(tokenizer: DecoupledTokenizer, src: str, out: str, *,
                       batch_size: int = 32, extra: dict[str, Any] | None = None) -> dict:
    """Encode every split of the motion shards at ``src`` and write token shards to ``out``.

    The output has the source's layout and manifest (same keys, texts, motion, validity, stats,
    provenance and licence) plus ``<key>.tokens.npy`` ``[T/4, 3]`` int16 per sample and
    ``"tokens": true``; ``extra`` is merged into the manifest (e.g. the tokenizer checkpoint).
    ``out`` is a local directory or ``s3://...`` (written locally, then uploaded). A local
    ``out`` is written beside itself and swapped in only when complete, so a failure leaves
    what was there.

    Returns:
        The written manifest.

    Raises:
        ValueError: the tokenizer's motion format differs from the shards'; a source split
            reads short (an unreadable shard or a bad sample: no partial token set is
            written); ``out`` holds files that are not a shard set.
    """
    from madis.data import storage
    from madis.data.shards import read_manifest, write_shards

    manifest = read_manifest(src)
    if manifest["format"] != tokenizer.motion_format:
        raise ValueError(f"{src} holds {manifest['format']!r} motion but the tokenizer was "
                         f"trained on {tokenizer.motion_format!r}")
    tokenizer.eval()
    info = {"tokenizer": {"codebook_sizes": list(tokenizer.codebook_sizes),
                          "frames_per_token": FRAMES_PER_POSITION}, "source_shards": str(src)}
    info.update(extra or {})
    def shards(local):
        return write_shards(
            local,
            {split: _tokenized(tokenizer, src, split, batch_size, manifest)
             for split in manifest["splits"]},
            motion_format=manifest["format"], fps=manifest["fps"],
            provenance=manifest.get("provenance"), licence=manifest.get("licence"),
            extra=info)

    if storage.is_s3(out):
        with tempfile.TemporaryDirectory(prefix="madis-tokens-") as tmp:
            written = shards(tmp)
            storage.upload_dir(tmp, out)
        return written
    final = storage.local_path(out)
    if final.exists() and any(final.iterdir()) and not (final / "manifest.json").exists():
        raise ValueError(f"{final} holds files but no shard set: refusing to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    # written beside the destination and swapped in whole: a failure leaves the old set intact
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        written = shards(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return written


def tokenize_like(src: str, like: str, out: str, *, batch_size: int = 32,
                  extra: dict[str, Any] | None = None) -> dict:
    """Encode the motion shards ``src`` with the tokenizer that wrote the token shards ``like``
    and write them to ``out``, recording the same ``tokenizer_export``, so that the MDLM jobs
    accept both sets together (``ray_jobs/pretrain.py --shards LIKE --shards OUT``: paper 3.2
    pretrains on every dataset with one tokenizer).

    ``extra`` is merged into the written manifest.

    Returns:
        The written manifest.
    Raises:
        ValueError: ``like`` records no tokenizer export (not written by the tokenizer job), or
            the motion formats differ.
        FileNotFoundError / StorageError: a manifest or the export cannot be read.
    """
    from madis.data.shards import read_manifest
    from madis.tokenizer import DecoupledTokenizer

    def norm(u: str) -> str:
        from madis.data import storage

        return str(u).rstrip("/") if storage.is_s3(u) else str(storage.local_path(u).resolve())

    if norm(out) in (norm(src), norm(like)):
        raise ValueError(f"--out {out} is the source or the --like shard set: writing there "
                         "would destroy it")
    recorded = read_manifest(like).get("tokenizer_export")
    if not recorded or not recorded.get("url"):
        raise ValueError(f"{like} records no tokenizer_export: give token shards written by "
                         "ray_jobs/train_tokenizer.py")
    tokenizer = DecoupledTokenizer.from_pretrained(recorded["url"])
    return write_token_shards(tokenizer, src, out, batch_size=batch_size,
                              extra={**(extra or {}), "tokenizer_export": recorded})
