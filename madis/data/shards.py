"""WebDataset shards: deterministic writing and the batch reader every job uses.

Layout (docs/data-formats.md#shards): a shard root (local dir, ``file://...`` or
``s3://bucket/prefix``) holds ``manifest.json`` and ``{split}-{index:06d}.tar``. Each sample is
``<key>.json`` (``text``, ``lang``, ``fps``, ``source``, ``composed``, ...), ``<key>.motion.npy``
``[T, D]`` float16 in the format's units, ``<key>.valid.npy`` ``[T, 3]`` bool and, in token shards,
``<key>.tokens.npy`` ``[T/4, 3]`` int16 (body, lhand, rhand).

Writing is byte-reproducible: tar headers carry fixed metadata (mtime 0, uid/gid 0, no user
names, mode 0644, USTAR), members go in sample order and, within a sample, by name; JSON is
written with sorted keys. A shard is closed when the next sample would take it past
``max_bytes`` (or past ``max_samples``).

Reading (:func:`iter_batches`) is a webdataset pipeline: shard list -> rank's shards -> tar
samples -> seeded shuffle buffer -> decode -> padded batches. A shard that cannot be read (corrupt,
truncated, missing) is skipped with a warning and counted in :class:`ReadStats`; an unreachable
endpoint or missing bucket raises :class:`~madis.data.storage.StorageError` at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from madis.data import storage
from madis.motion.base import FRAMES_PER_POSITION, MAX_FRAMES, MIN_FRAMES
from madis.motion.length import RunningStats

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
#: default shard size target; a few MB keeps S3 GETs efficient and gives several shards per split
DEFAULT_MAX_BYTES = 4 * 2**20


@dataclass
class Sample:
    """One (text, motion) pair before writing.

    Attributes:
        key: unique within the corpus, ``[A-Za-z0-9_-]`` (no dots: webdataset splits on them).
        motion: ``[T, D]`` in the format's units, T legal under the length rules.
        valid: ``[T, 3]`` bool per-part detection validity.
        meta: extra JSON fields (``composed``, ``units`` ...), written with ``text``/``lang``/...
        tokens: optional ``[T/4, 3]`` integer tokens.
    """

    key: str
    text: str
    lang: str
    fps: float
    source: str
    motion: np.ndarray
    valid: np.ndarray
    composed: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: np.ndarray | None = None

    def check(self) -> None:
        """Raises ValueError on a bad key or shapes that break the shard contract."""
        if not self.key or any(not (c.isascii() and (c.isalnum() or c in "_-")) for c in self.key):
            raise ValueError(f"bad sample key {self.key!r}: use ASCII letters, digits, '_' and '-'")
        T = len(self.motion)
        if self.motion.ndim != 2:
            raise ValueError(f"{self.key}: motion must be [T, D], got {self.motion.shape}")
        if T % FRAMES_PER_POSITION or not MIN_FRAMES <= T <= MAX_FRAMES:
            raise ValueError(f"{self.key}: T={T} breaks the length rules (apply_length_rules first)")
        if self.valid.shape != (T, 3):
            raise ValueError(f"{self.key}: valid must be [{T}, 3], got {self.valid.shape}")
        if not np.isfinite(self.motion).all():
            raise ValueError(f"{self.key}: motion has NaN/inf")
        if self.tokens is not None and self.tokens.shape != (T // FRAMES_PER_POSITION, 3):
            raise ValueError(f"{self.key}: tokens must be [{T // FRAMES_PER_POSITION}, 3], got {self.tokens.shape}")


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def sample_files(s: Sample) -> list[tuple[str, bytes]]:
    """The tar members of one sample, sorted by name."""
    s.check()
    meta = dict(s.meta)
    meta.update(text=s.text, lang=s.lang, fps=float(s.fps), source=s.source, composed=bool(s.composed),
                frames=int(len(s.motion)))
    files = {
        f"{s.key}.json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode(),
        f"{s.key}.motion.npy": _npy_bytes(s.motion.astype(np.float16)),
        f"{s.key}.valid.npy": _npy_bytes(s.valid.astype(bool)),
    }
    if s.tokens is not None:
        files[f"{s.key}.tokens.npy"] = _npy_bytes(s.tokens.astype(np.int16))
    return sorted(files.items())


def _tar_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


class SplitWriter:
    """Writes one split's samples into ``{split}-{index:06d}.tar`` files in a local directory."""

    def __init__(self, out_dir: str | Path, split: str, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_samples: int | None = None):
        self.out_dir, self.split = Path(out_dir), split
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.shards: list[str] = []
        self.counts: list[int] = []
        self._tf: tarfile.TarFile | None = None
        self._bytes = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self.shards.append(name)
        self.counts.append(0)
        self._tf = tarfile.open(self.out_dir / name, "w", format=tarfile.USTAR_FORMAT)
        self._bytes = 0

    def write(self, sample: Sample) -> None:
        files = sample_files(sample)
        size = sum(512 + (len(d) + 511) // 512 * 512 for _, d in files)
        full = self._tf is not None and self.counts[-1] > 0 and (
            self._bytes + size > self.max_bytes
            or (self.max_samples is not None and self.counts[-1] >= self.max_samples))
        if self._tf is None or full:
            self.close()
            self._open()
        for name, data in files:
            _tar_member(self._tf, name, data)
        self._bytes += size
        self.counts[-1] += 1

    def close(self) -> None:
        if self._tf is not None:
            self._tf.close()
            self._tf = None


def write_shards(
    out_dir: str | Path,
    splits: Mapping[str, Iterable[Sample]],
    *,
    motion_format: str,
    fps: float,
    provenance: Any,
    licence: Any,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_samples: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Write every split's samples (in the given order) and ``manifest.json``; return the manifest.

    ``stats`` (mean/std per feature, over the float16-rounded train frames) go into the manifest
    for z-score normalisation. Existing ``*.tar`` of the same splits in ``out_dir`` are removed
    first, so a rebuild never leaves a stale shard behind.

    Raises:
        ValueError: a duplicate key, a sample that breaks the contract, or an empty train split.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        for old in out.glob(f"{split}-*.tar"):
            old.unlink()
    manifest: dict[str, Any] = {"format": motion_format, "fps": float(fps), "splits": {}}
    seen: set[str] = set()
    stats: RunningStats | None = None
    has_tokens = False
    for split, samples in splits.items():
        w = SplitWriter(out, split, max_bytes=max_bytes, max_samples=max_samples)
        langs: dict[str, int] = {}
        composed = 0
        try:
            for s in samples:
                if s.key in seen:
                    raise ValueError(f"duplicate sample key {s.key!r}")
                seen.add(s.key)
                w.write(s)
                has_tokens |= s.tokens is not None
                langs[s.lang] = langs.get(s.lang, 0) + 1
                composed += bool(s.composed)
                if split == "train":
                    if stats is None:
                        stats = RunningStats(s.motion.shape[1])
                    stats.update(s.motion.astype(np.float16).astype(np.float32))
        finally:
            w.close()
        manifest["splits"][split] = {
            "shards": w.shards, "shard_samples": w.counts,
            "sha256": [hashlib.sha256((out / n).read_bytes()).hexdigest() for n in w.shards], "samples": int(sum(w.counts)),
            "languages": dict(sorted(langs.items())), "composed": composed,
        }
    if stats is None:
        raise ValueError("no train samples: the z-score statistics need a train split")
    mean, std = stats.result()
    manifest["stats"] = {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                         "frames": int(stats.count)}
    manifest["tokens"] = has_tokens
    manifest["provenance"] = provenance
    manifest["licence"] = licence
    if extra:
        manifest.update(extra)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                                encoding="utf-8")
    return manifest


# ------------------------------------------------------------------------------------ reading
@dataclass
class ReadStats:
    """What a reader met: shards opened, shards skipped as unreadable, samples dropped as bad."""

    shards_read: int = 0
    corrupt_shards: int = 0
    bad_samples: int = 0
    samples: int = 0
    skipped: list[str] = field(default_factory=list)


#: cumulative counts over every reader in this process (per-call counts: pass ``stats=``)
TOTALS = ReadStats()


def read_manifest(url: str) -> dict:
    """``manifest.json`` of a shard root.

    Raises:
        StorageError: S3 endpoint unreachable, bucket or manifest missing.
        FileNotFoundError: no manifest in a local directory.
    """
    try:
        raw = storage.read_bytes(storage.join(url, MANIFEST))
    except FileNotFoundError as exn:
        raise FileNotFoundError(f"no {MANIFEST} in {url}: not a shard root (build one with "
                                f"`madis data build-sample`)") from exn
    return json.loads(raw)


@dataclass(frozen=True)
class ShardRoot:
    """What a training task reads from a shard root's manifest (see :func:`open_shard_root`).

    Attributes:
        url: the root, a local path made absolute (workers may run elsewhere) or a URL.
        motion_format: ``keypoints`` or ``smplx133``.
        mean, std: z-score statistics over train, ``[D]`` each, in the format's units.
        splits: samples per split.
        manifest: the whole manifest.
    """

    url: str
    motion_format: str
    mean: list[float]
    std: list[float]
    splits: dict[str, int]
    manifest: dict


def open_shard_root(url: str | Path) -> ShardRoot:
    """Read the manifest of shard root ``url`` into a :class:`ShardRoot`.

    Raises:
        StorageError: S3 endpoint unreachable, bucket or manifest missing.
        FileNotFoundError: no manifest in a local directory.
    """
    url = storage.absolute(url)
    m = read_manifest(url)
    return ShardRoot(url=url, motion_format=m["format"], mean=list(m["stats"]["mean"]),
                     std=list(m["stats"]["std"]),
                     splits={k: int(v["samples"]) for k, v in m["splits"].items()}, manifest=m)


def shard_urls(url: str, split: str, manifest: Mapping | None = None) -> list[str]:
    """URLs of a split's shards, in manifest order.

    Raises:
        KeyError: the manifest has no such split.
    """
    manifest = manifest or read_manifest(url)
    if split not in manifest["splits"]:
        raise KeyError(f"split {split!r} not in {url} (has {sorted(manifest['splits'])})")
    return [storage.join(url, n) for n in manifest["splits"][split]["shards"]]


def _tar_samples(stats: ReadStats):
    """Pipeline stage: shard URLs -> raw samples; an unreadable shard is skipped and counted."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def stage(src):
        for item in src:
            url = item["url"]
            stats.shards_read += 1
            TOTALS.shards_read += 1
            try:
                stream = wds.gopen(url, "rb")
                try:
                    files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
                    for sample in group_by_keys(files):
                        yield sample
                finally:
                    stream.close()
            except storage.ObjectMissing as exn:
                _skip_shard(stats, url, exn)
            except (tarfile.TarError, OSError, ValueError, EOFError) as exn:
                _skip_shard(stats, url, exn)

    return stage


def _skip_shard(stats: ReadStats, url: str, exn: BaseException) -> None:
    log.warning("skipping unreadable shard %s: %s: %s", url, type(exn).__name__, exn)
    stats.corrupt_shards += 1
    stats.skipped.append(url)
    TOTALS.corrupt_shards += 1
    TOTALS.skipped.append(url)


def _decode(with_tokens: bool, dim: int, stats: ReadStats):
    def stage(src):
        for raw in src:
            try:
                meta = json.loads(raw["json"])
                motion = np.load(io.BytesIO(raw["motion.npy"]), allow_pickle=False).astype(np.float32)
                valid = np.load(io.BytesIO(raw["valid.npy"]), allow_pickle=False).astype(bool)
                if motion.ndim != 2 or motion.shape[1] != dim or valid.shape != (len(motion), 3):
                    raise ValueError(f"shapes motion {motion.shape}, valid {valid.shape} (D={dim})")
                out = {"key": raw["__key__"], "meta": meta, "motion": motion, "valid": valid}
                if with_tokens:
                    tok = np.load(io.BytesIO(raw["tokens.npy"]), allow_pickle=False).astype(np.int64)
                    if tok.shape != (len(motion) // FRAMES_PER_POSITION, 3):
                        raise ValueError(f"tokens shape {tok.shape} for T={len(motion)}")
                    out["tokens"] = tok
            except (KeyError, ValueError, OSError, EOFError) as exn:
                log.warning("dropping bad sample %s from %s: %s: %s", raw.get("__key__"),
                            raw.get("__url__"), type(exn).__name__, exn)
                stats.bad_samples += 1
                TOTALS.bad_samples += 1
                continue
            stats.samples += 1
            TOTALS.samples += 1
            yield out

    return stage


def collate(samples: list[dict], with_tokens: bool = False) -> dict:
    """Pad a list of decoded samples into the training batch
    (docs/data-formats.md#the-training-batch).

    Returns ``key``, ``text``, ``lang``, ``composed`` (lists), ``motion`` float32 ``[B, T, D]``
    zero-padded, ``mask`` bool ``[B, T]``, ``valid`` bool ``[B, T, 3]`` and, with tokens,
    ``tokens`` int64 ``[B, N, 3]`` (padding -1) and ``token_mask`` bool ``[B, N]``.
    """
    import torch

    B = len(samples)
    T = max(len(s["motion"]) for s in samples)
    D = samples[0]["motion"].shape[1]
    motion = torch.zeros(B, T, D)
    mask = torch.zeros(B, T, dtype=torch.bool)
    valid = torch.zeros(B, T, 3, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s["motion"])
        motion[i, :n] = torch.from_numpy(s["motion"])
        mask[i, :n] = True
        valid[i, :n] = torch.from_numpy(s["valid"])
    batch = {
        "key": [s["key"] for s in samples],
        "text": [s["meta"]["text"] for s in samples],
        "lang": [s["meta"]["lang"] for s in samples],
        "composed": [bool(s["meta"].get("composed", False)) for s in samples],
        "motion": motion, "mask": mask, "valid": valid,
    }
    if with_tokens:
        N = max(len(s["tokens"]) for s in samples)
        tokens = torch.full((B, N, 3), -1, dtype=torch.int64)
        token_mask = torch.zeros(B, N, dtype=torch.bool)
        for i, s in enumerate(samples):
            n = len(s["tokens"])
            tokens[i, :n] = torch.from_numpy(s["tokens"])
            token_mask[i, :n] = True
        batch["tokens"], batch["token_mask"] = tokens, token_mask
    return batch


def rank_assignment(num_shards: int, rank: int, world_size: int, seed: int, epoch: int,
                    shuffle: bool) -> tuple[list[int], bool]:
    """Which shard indices a rank reads, and whether it must also split samples.

    With at least ``world_size`` shards each rank gets its own shards (after a seeded shuffle
    of the shard order per epoch); with fewer, every rank reads all shards and keeps the samples
    whose position in the stream is ``rank`` modulo ``world_size``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"shards-{seed}-{epoch}").shuffle(order)
    if num_shards >= world_size:
        return order[rank::world_size], False
    return order, world_size > 1


def iter_samples(url: str, split: str, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 epoch: int = 0, shuffle: bool = True, with_tokens: bool = False,
                 shuffle_buffer: int = 256, stats: ReadStats | None = None,
                 manifest: Mapping | None = None) -> Iterator[dict]:
    """Decoded samples of one rank (``key``, ``meta``, ``motion [T, D]``, ``valid``, ``tokens``).

    See :func:`iter_batches` for the arguments and errors.
    """
    import webdataset as wds

    stats = stats if stats is not None else ReadStats()
    manifest = manifest or read_manifest(url)
    if with_tokens and not manifest.get("tokens"):
        raise ValueError(f"{url} holds no tokens (manifest 'tokens' is false): not a token shard set")
    urls = shard_urls(url, split, manifest)
    mine, split_samples = rank_assignment(len(urls), rank, world_size, seed, epoch, shuffle)
    dim = len(manifest["stats"]["mean"])
    stages: list = [wds.SimpleShardList([urls[i] for i in mine]), _tar_samples(stats)]
    if split_samples:
        stages.append(lambda src: (s for i, s in enumerate(src) if i % world_size == rank))
    if shuffle:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer,
                                  seed=random.Random(f"samples-{seed}-{epoch}-{rank}").getrandbits(31)))
    stages.append(_decode(with_tokens, dim, stats))
    return iter(wds.DataPipeline(*stages))


def iter_batches(url: str, split: str, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, epoch: int = 0, shuffle: bool = True, drop_last: bool = False,
                 with_tokens: bool = False, shuffle_buffer: int = 256,
                 stats: ReadStats | None = None) -> Iterator[dict]:
    """Padded batches (:func:`collate`) of one split, for one rank of ``world_size``.

    Deterministic for a given ``(seed, epoch, rank, world_size)``; ranks see disjoint samples
    (disjoint shards when the split has at least ``world_size`` shards, else disjoint samples
    of the same stream). Shards may give ranks unequal sample counts.

    Args:
        url: shard root (local dir, ``file://``, ``s3://bucket/prefix``).
        split: ``train``, ``val`` or ``test``.
        batch_size: samples per batch (the last one is smaller unless ``drop_last``).
        shuffle: shuffle the shard order (per epoch) and samples (buffer of ``shuffle_buffer``).
        with_tokens: also return ``tokens``/``token_mask`` (token shards only).
        stats: filled with the counts of shards read / skipped and samples dropped.
    Raises:
        StorageError: S3 endpoint unreachable, bucket missing (before any batch is produced).
        FileNotFoundError: no manifest at a local root.
        KeyError: unknown split. ValueError: ``with_tokens`` on shards without tokens.
    """
    import webdataset as wds

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    manifest = read_manifest(url)  # fails fast on storage problems, before the generator starts
    samples = iter_samples(url, split, rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                           shuffle=shuffle, with_tokens=with_tokens, shuffle_buffer=shuffle_buffer,
                           stats=stats, manifest=manifest)
    batches = wds.filters._batched(samples, batchsize=batch_size, partial=not drop_last,
                                   collation_fn=lambda b: collate(b, with_tokens))
    return iter(batches)
