"""Shard writing and reading: determinism, batch contract, ranks, corrupt shards, real S3 server."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from madis.data import storage
from madis.data.shards import (
    ReadStats, Sample, iter_batches, open_shard_root, read_manifest, write_shards,
)

D = 6


def _samples(split, n, seed, tokens=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        T = int(rng.integers(10, 26)) * 4
        valid = rng.random((T, 3)) > 0.2
        out.append(Sample(
            key=f"{split}-{i:04d}", text=f"word {split} {i}", lang=("ase", "gsg")[i % 2], fps=25.0,
            source="synthetic", motion=rng.normal(0, 1, (T, D)).astype(np.float32), valid=valid,
            composed=bool(i % 3 == 0), meta={"units": "test"},
            tokens=rng.integers(0, 90, (T // 4, 3)) if tokens else None))
    return out


def _build(out, tokens=False):
    return write_shards(out, {"train": _samples("train", 40, 1, tokens), "val": _samples("val", 7, 2, tokens)},
                        motion_format="keypoints", fps=25.0, provenance={"what": "synthetic"},
                        licence="CC0", max_bytes=16 * 1024)


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    _build(root)
    return root


def _all(url, split, **kw):
    keys, batches = [], []
    for b in iter_batches(url, split, 4, **kw):
        keys += b["key"]
        batches.append(b)
    return keys, batches


def _digest(root: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_rebuild_is_byte_identical(shard_root, tmp_path):
    _build(tmp_path)
    assert _digest(tmp_path) == _digest(shard_root)


def test_manifest_counts_and_stats(shard_root):
    m = read_manifest(str(shard_root))
    assert m["format"] == "keypoints" and m["fps"] == 25.0 and m["licence"] == "CC0"
    assert m["splits"]["train"]["samples"] == 40 and m["splits"]["val"]["samples"] == 7
    assert len(m["splits"]["train"]["shards"]) >= 4
    assert sum(m["splits"]["train"]["shard_samples"]) == 40
    assert m["splits"]["train"]["languages"] == {"ase": 20, "gsg": 20}
    train = np.concatenate([s.motion.astype(np.float16).astype(np.float32) for s in _samples("train", 40, 1)])
    np.testing.assert_allclose(m["stats"]["mean"], train.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["stats"]["std"], train.std(0), rtol=1e-5)


def test_open_shard_root_makes_a_relative_path_absolute(shard_root, monkeypatch):
    monkeypatch.chdir(shard_root.parent)
    root = open_shard_root(shard_root.name)  # relative to the working directory
    assert root.url == str(shard_root) and root.motion_format == "keypoints"
    assert root.splits == {"train": 40, "val": 7}
    assert root.mean == read_manifest(str(shard_root))["stats"]["mean"] and len(root.std) == D
    assert open_shard_root(f"file://{shard_root}").url == f"file://{shard_root}"  # URLs as given


def test_batches_follow_the_contract(shard_root):
    ref = {s.key: s for s in _samples("train", 40, 1)}
    keys, batches = _all(str(shard_root), "train", shuffle=False)
    assert sorted(keys) == sorted(ref) and len(keys) == 40
    b = batches[0]
    assert b["motion"].dtype == torch.float32 and b["mask"].dtype == torch.bool
    assert b["valid"].shape == b["motion"].shape[:2] + (3,) and "tokens" not in b
    for batch in batches:
        for i, k in enumerate(batch["key"]):
            s = ref[k]
            T = len(s.motion)
            assert int(batch["mask"][i].sum()) == T
            np.testing.assert_array_equal(batch["motion"][i, :T].numpy(), s.motion.astype(np.float16).astype(np.float32))
            assert float(batch["motion"][i, T:].abs().sum()) == 0.0
            np.testing.assert_array_equal(batch["valid"][i, :T].numpy(), s.valid)
            assert batch["text"][i] == s.text and batch["lang"][i] == s.lang
            assert batch["composed"][i] == s.composed
    assert [len(b["key"]) for b in batches] == [4] * 10
    assert len(list(iter_batches(str(shard_root), "val", 4, drop_last=True))) == 1


def test_shuffle_is_deterministic_per_seed_and_epoch(shard_root):
    url = f"file://{shard_root}"
    a, _ = _all(url, "train", seed=3, epoch=0)
    b, _ = _all(url, "train", seed=3, epoch=0)
    c, _ = _all(url, "train", seed=3, epoch=1)
    assert a == b and a != c and sorted(a) == sorted(c)


@pytest.mark.parametrize("split, n", [("train", 40), ("val", 7)])  # val: 1 shard < 3 ranks
def test_ranks_are_disjoint_and_complete(shard_root, split, n):
    seen = [set(_all(str(shard_root), split, rank=r, world_size=3, seed=5)[0]) for r in range(3)]
    assert sum(len(s) for s in seen) == n
    assert len(set.union(*seen)) == n
    assert all(len(s) > 0 for s in seen)


def test_tokens_are_padded_with_minus_one(tmp_path):
    _build(tmp_path, tokens=True)
    ref = {s.key: s for s in _samples("train", 40, 1, tokens=True)}
    for b in iter_batches(str(tmp_path), "train", 5, with_tokens=True, shuffle=False):
        for i, k in enumerate(b["key"]):
            n = len(ref[k].tokens)
            np.testing.assert_array_equal(b["tokens"][i, :n].numpy(), ref[k].tokens)
            assert (b["tokens"][i, n:] == -1).all() and int(b["token_mask"][i].sum()) == n
    plain = tmp_path / "plain"
    _build(plain)
    with pytest.raises(ValueError, match="no tokens"):
        iter_batches(str(plain), "val", 2, with_tokens=True)


def test_corrupt_and_truncated_shards_are_skipped_and_counted(shard_root, tmp_path, caplog):
    root = tmp_path / "bad"
    shutil.copytree(shard_root, root)
    m = read_manifest(str(root))
    names, counts = m["splits"]["train"]["shards"], m["splits"]["train"]["shard_samples"]
    data = (root / names[1]).read_bytes()
    (root / names[1]).write_bytes(data[:700])  # cut inside the first sample
    (root / names[2]).write_bytes(b"\x00garbage" * 300)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="madis.data.shards"):
        keys, _ = _all(str(root), "train", stats=stats)
    assert stats.corrupt_shards == 2 and stats.shards_read == len(names)
    assert len(keys) == 40 - counts[1] - counts[2] == stats.samples
    assert sorted(stats.skipped) == sorted(str(root / n) for n in names[1:3])
    assert sum("skipping unreadable shard" in r.message for r in caplog.records) == 2


def test_missing_local_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest(str(tmp_path))


# ------------------------------------------------------------------- real S3 server (moto)
def test_s3_round_trip_matches_local(shard_root, s3_bucket):
    url = f"{s3_bucket}/corpus/v1"
    written = storage.upload_dir(shard_root, url)
    assert written[-1].endswith("manifest.json")
    assert read_manifest(url) == read_manifest(str(shard_root))
    for kw in ({"shuffle": False}, {"seed": 7, "epoch": 2}, {"rank": 1, "world_size": 2}):
        local = list(iter_batches(str(shard_root), "train", 4, **kw))
        remote = list(iter_batches(url, "train", 4, **kw))
        assert [b["key"] for b in local] == [b["key"] for b in remote]
        for a, b in zip(local, remote):
            assert torch.equal(a["motion"], b["motion"]) and torch.equal(a["valid"], b["valid"])


def test_upload_creates_missing_bucket(shard_root, s3_server):
    import uuid

    url = f"s3://new-{uuid.uuid4().hex[:10]}/x"
    with pytest.raises(storage.BucketMissing):
        read_manifest(url)
    storage.upload_dir(shard_root, url)
    assert read_manifest(url)["splits"]["val"]["samples"] == 7


def test_missing_shard_object_on_s3_is_skipped(shard_root, s3_bucket):
    import boto3

    url = f"{s3_bucket}/c"
    storage.upload_dir(shard_root, url)
    name = read_manifest(url)["splits"]["train"]["shards"][0]
    boto3.client("s3").delete_object(Bucket=s3_bucket[5:], Key=f"c/{name}")
    stats = ReadStats()
    _all(url, "train", stats=stats)
    assert stats.corrupt_shards == 1 and stats.skipped == [f"{url}/{name}"]


def test_unreachable_endpoint_fails_with_a_clear_error(s3_server, monkeypatch):
    from madis.data.s3server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(storage.EndpointUnreachable, match="cannot reach the S3 endpoint http://127.0.0.1"):
        iter_batches("s3://anything/prefix", "train", 2)
