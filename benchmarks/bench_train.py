"""Training throughput of the shared loop: samples/s with 1 and 2 workers, ZeRO 0 and 2.

    scripts/loopback.sh .venv/bin/python benchmarks/bench_train.py [--steps 40] [--shards shards]

Trains the cpu-tiny tokenizer (``TokenizerTask`` on the sample shards, batch 16 per worker) for
``--steps`` steps in each setting, all on one local Ray cluster in this process, and prints
samples/s (mean over the log windows after the first, which holds start-up), its ratio to the
baseline (1 worker, ZeRO 0) and the peak memory of the largest worker (max RSS). The machine's
load average is printed too: on shared cores the absolute numbers move with it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

SETTINGS = [(1, 0), (1, 2), (2, 0), (2, 2)]  # (workers, ZeRO stage); the first is the baseline


def _window_means(logdir: str, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shards", default="shards")
    args = p.parse_args(argv)

    import ray

    from madis.config import load_tree, section
    from madis.tokenizer import TokenizerConfig
    from madis.tokenizer.task import TokenizerTask
    from madis.train import fit, train_config

    tree = load_tree("cpu-tiny")
    task = TokenizerTask.from_shards(section(tree, "tokenizer", TokenizerConfig), args.shards)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for workers, zero in SETTINGS:
            name = f"w{workers}-z{zero}"
            cfg = train_config(tree, "tokenizer")
            cfg.run_name, cfg.storage_path, cfg.log_dir = name, f"{tmp}/runs", f"{tmp}/tb"
            cfg.workers, cfg.zero_stage, cfg.steps = workers, zero, args.steps
            cfg.batch_size, cfg.log_every, cfg.checkpoint_every = args.batch_size, 10, 0
            cfg.progress, cfg.max_failures = False, 0
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            fit(task, cfg)
            wall = time.perf_counter() - t0
            sps = _window_means(f"{tmp}/tb/{name}", "train/samples_per_s")[1:]
            mem = _window_means(f"{tmp}/tb/{name}", "train/peak_mem_mb")
            rows.append({"workers": workers, "zero": zero, "samples_per_s": sum(sps) / len(sps),
                         "peak_mem_mb": max(mem), "wall_s": wall, "load": load0})
    ray.shutdown()
    base = rows[0]["samples_per_s"]
    print(f"tokenizer cpu-tiny, batch {args.batch_size}/worker, {args.steps} steps, "
          f"{os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'ZeRO':>4} {'samples/s':>10} {'x base':>7} {'peak MiB/worker':>16} "
          f"{'wall s':>7} {'load':>5}")
    for r in rows:
        print(f"{r['workers']:>7} {r['zero']:>4} {r['samples_per_s']:>10.1f} "
              f"{r['samples_per_s'] / base:>7.2f} {r['peak_mem_mb']:>16.0f} {r['wall_s']:>7.1f} "
              f"{r['load']:>5.1f}")
    return rows


if __name__ == "__main__":
    main()
