"""Shard reading throughput: the local S3 server vs local disk, same shards, same run.

Builds (or reuses) the sample corpus in ``shards/``, starts the local S3-compatible server on
127.0.0.1, uploads the shards, then reads the train split through ``iter_batches`` (the reader
training uses: decode, shuffle, pad into batches) alternately from disk and from S3, and prints
samples/s for each (median of the repeats) and their ratio. Target: S3 >= 50% of local disk.

Run: ``scripts/loopback.sh .venv/bin/python benchmarks/bench_shards.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from madis.data import storage
from madis.data.s3server import LocalS3Server
from madis.data.sample import build_sample_corpus, is_up_to_date
from madis.data.shards import ReadStats, iter_batches, read_manifest


def read_all(url: str, batch_size: int) -> tuple[int, float]:
    stats = ReadStats()
    t0 = time.perf_counter()
    n = sum(len(b["key"]) for b in iter_batches(url, "train", batch_size, seed=0, stats=stats))
    dt = time.perf_counter() - t0
    if stats.corrupt_shards or stats.bad_samples:
        raise RuntimeError(f"{url}: {stats}")
    return n, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="shards")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if not is_up_to_date(args.shards):
        build_sample_corpus(args.shards)
    m = read_manifest(args.shards)
    size = sum(os.path.getsize(os.path.join(args.shards, n)) for n in m["splits"]["train"]["shards"])
    with LocalS3Server() as server:
        server.apply_env()
        url = "s3://bench/shards"
        storage.upload_dir(args.shards, url)
        read_all(url, args.batch_size), read_all(args.shards, args.batch_size)  # warm-up
        rates = {"local": [], "s3": []}
        for _ in range(args.repeats):
            for name, u in (("local", args.shards), ("s3", url)):
                n, dt = read_all(u, args.batch_size)
                rates[name].append(n / dt)
    local, s3 = statistics.median(rates["local"]), statistics.median(rates["s3"])
    print(f"train split: {m['splits']['train']['samples']} samples, {len(m['splits']['train']['shards'])} "
          f"shards, {size / 2**20:.1f} MiB; batch {args.batch_size}; median of {args.repeats} runs")
    print(f"local disk : {local:8.0f} samples/s   (runs: {', '.join(f'{r:.0f}' for r in rates['local'])})")
    print(f"local S3   : {s3:8.0f} samples/s   (runs: {', '.join(f'{r:.0f}' for r in rates['s3'])})")
    print(f"ratio S3 / local = {s3 / local:.2f}  (target >= 0.50)")


if __name__ == "__main__":
    main()
