"""Serving speed: p50/p99 latency and requests/s of ``POST /generate`` at concurrency 1, 8 and 32,
with ``@serve.batch`` off (max_batch_size 1, the baseline) and on, in one run (issue 8).

One Ray Serve instance holds one application per batch size (``/b1``, ``/b8``, ...), each one
replica (autoscaling pinned, ``torch_threads`` replica threads) serving the same checkpoint: a
random model with the profile's sizes (``cpu-tiny``: 2-layer d=128 Qwen3, N = 100, K = 25 UTC
steps) whose [EOS] is made unreachable, so every request decodes all 100 positions to 400 frames
-- the worst case; decoding cost does not depend on the weights' values. Levels are measured
interleaved (for each concurrency, every batch size in turn, ``--repeats`` rounds, the median
round reported) so that load from other processes on the machine hits all of them alike; the
load average before and after is printed. The client is :func:`madis.serve.load.run_load`
(aiohttp, in this process). Speed-ups are ratios against max_batch_size 1 at the same
concurrency.

Streaming (issue 15): the same rounds against ``POST /generate/stream`` of the
``--stream-batch`` application at each ``--stream-concurrency``: the time to the first motion
(the first ``event: stage``, UTC's quarter-resolution stage) against the time to the final answer
(``event: done``), medians over the round's requests, and, for the same round, ``/generate``'s
latency at that concurrency. Target: first motion at <= 0.4x the final answer.
``--concurrent-batches 1 2`` makes every application once per ``serve.concurrent_batches``
value (one batch at a time, or two taking turns stage by stage), measured interleaved in the
same rounds. Run::

    scripts/loopback.sh .venv/bin/python benchmarks/bench_serve.py            # about 4 min
    scripts/loopback.sh .venv/bin/python benchmarks/bench_serve.py --batch-sizes 1 8 --repeats 1
    scripts/loopback.sh .venv/bin/python benchmarks/bench_serve.py --batch-sizes 8 --concurrency 8 \
        --stream-concurrency 1 8                                               # streaming only
    scripts/loopback.sh .venv/bin/python benchmarks/bench_serve.py --batch-sizes 8 --concurrency 8 32 \
        --stream-concurrency 1 8 --concurrent-batches 1 2                      # stage turns vs none
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time

from madis.config import load_tree, section, to_dict
from madis.serve.config import ServeConfig
from madis.serve.load import run_load
from madis.serve.testing import write_run
from madis.tokenizer import TokenizerConfig

TEXTS = [("HELLO", "ase"), ("GUTEN MORGEN", "gsg"), ("WHERE IS THE STATION", "ase"),
         ("BERLIN", "gsg"), ("THANK YOU VERY MUCH", "ase"), ("WIE GEHT ES DIR", "gsg")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu-tiny",
                   help="profile whose model/tokenizer sizes and serve section are used (a "
                        "pretrained backbone, as in paper, needs its weights locally)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32],
                   help="max_batch_size of each application; the first is the baseline")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=4,
                   help="requests per round = this x concurrency (at least 16)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds per level")
    p.add_argument("--batch-wait-s", type=float, default=None, help="default: the profile's")
    p.add_argument("--batch-wait-idle-s", type=float, default=None,
                   help="serve.batch_wait_idle_s (default: the profile's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    p.add_argument("--stream-concurrency", type=int, nargs="*", default=[1, 8],
                   help="concurrency levels of the streaming rounds (none: skip them)")
    p.add_argument("--stream-batch", type=int, default=None,
                   help="the application streamed from (default: the largest batch size)")
    p.add_argument("--concurrent-batches", type=int, nargs="+", default=None,
                   help="serve.concurrent_batches of the applications, one set per value (the "
                        "first is the baseline of the comparison; default: the profile's)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    import ray
    from ray import serve

    from madis.serve.app import build_app

    args = parse_args(argv)
    tree = load_tree(args.profile)
    base = section(tree, "serve", ServeConfig)
    model = {k: v for k, v in tree["model"].items()}
    tok = to_dict(section(tree, "tokenizer", TokenizerConfig))
    root = tempfile.mkdtemp(prefix="bench-serve-")
    write_run(root, steps=(1,), model_overrides=model,
              tokenizer_overrides={k: tok[k] for k in ("width", "code_dim", "codebook_sizes", "depth",
                                                       "dilation_growth_rate")})
    load_before = os.getloadavg()
    sets = args.concurrent_batches or [base.concurrent_batches]
    ray.init(address="local", num_cpus=len(args.batch_sizes) * len(sets) + 1,
             include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    urls = {}
    for n in sets:
        for b in args.batch_sizes:
            name = f"b{b}" if len(sets) == 1 else f"b{b}c{n}"
            cfg = ServeConfig(**{
                **to_dict(base), "port": port, "app_name": name, "route_prefix": f"/{name}",
                "min_replicas": 1, "max_replicas": 1, "max_batch_size": b,
                "concurrent_batches": n, "max_ongoing_requests": max(b * n, max(args.concurrency)),
                "batch_wait_s": (base.batch_wait_s if args.batch_wait_s is None
                                 else args.batch_wait_s) if b > 1 else 0.0,
                "batch_wait_idle_s": (base.batch_wait_idle_s if args.batch_wait_idle_s is None
                                      else args.batch_wait_idle_s) if b > 1 else 0.0,
                "replica_cpus": 1.0, "torch_threads": args.threads})
            serve.run(build_app(cfg, run_url=f"{root}/finetune"), name=cfg.app_name,
                      route_prefix=cfg.route_prefix, blocking=False)
            urls[b, n] = f"http://127.0.0.1:{port}/{name}/generate"
    payloads = [{"text": t, "lang": lg} for t, lg in TEXTS]
    for url in urls.values():  # warm up: first calls build caches and JIT paths
        run_load(url, payloads, total=8, concurrency=4)

    rounds: dict[tuple[int, int, int], list] = {}
    for c in args.concurrency:
        total = max(16, args.requests * c)
        for _ in range(args.repeats):
            for (b, n), url in urls.items():
                rep = run_load(url, payloads, total=total, concurrency=c)
                if rep.failed:
                    raise RuntimeError(f"batch {b} x {n} concurrency {c}: {rep.summary()}")
                sizes = [t["batch_size"] for t in rep.timings]
                rounds.setdefault((c, b, n), []).append((rep, statistics.mean(sizes)))
    streams = stream_rounds(args, urls, payloads)
    load_after = os.getloadavg()
    serve.shutdown()
    ray.shutdown()

    rows = []
    for (c, b, n), reps in rounds.items():
        rps = [r.requests_per_s for r, _ in reps]
        mid = sorted(range(len(reps)), key=lambda i: rps[i])[len(reps) // 2]
        rep, mean_batch = reps[mid]
        rows.append({"concurrency": c, "max_batch_size": b, "concurrent_batches": n,
                     "requests": rep.total, "p50_ms": rep.percentile_ms(50),
                     "p99_ms": rep.percentile_ms(99), "requests_per_s": rep.requests_per_s,
                     "mean_batch": mean_batch})
    by = {(r["concurrency"], r["max_batch_size"], r["concurrent_batches"]): r for r in rows}
    b0, n0 = args.batch_sizes[0], sets[0]
    for r in rows:
        r["speedup"] = r["requests_per_s"] / by[(r["concurrency"], b0, n0)]["requests_per_s"]
    print(f"\nbench_serve: profile {args.profile}, {len(TEXTS)} texts, full-length decoding "
          f"(N = {model.get('num_positions')}, K = {model.get('num_steps')}), 1 replica per app, "
          f"{args.threads} torch thread(s); {os.cpu_count()} cores, load average "
          f"{load_before[0]:.1f} before / {load_after[0]:.1f} after\n")
    print("| concurrency | max_batch_size | concurrent_batches | mean batch | p50 ms | p99 ms | "
          f"req/s | speed-up vs batch {b0} x {n0} |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["max_batch_size"],
                                         r["concurrent_batches"])):
        print(f"| {r['concurrency']} | {r['max_batch_size']} | {r['concurrent_batches']} | "
              f"{r['mean_batch']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['requests_per_s']:.2f} | {r['speedup']:.2f}x |")
    if streams:
        b = args.stream_batch or max(args.batch_sizes)
        print(f"\nStreaming: POST /generate/stream of the max_batch_size {b} application, "
              f"medians over each round's requests (median round)\n")
        print("| concurrency | concurrent_batches | first motion ms | final answer ms | "
              "first / final | POST /generate ms (same round) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in streams:
            print(f"| {r['concurrency']} | {r['concurrent_batches']} | {r['first_ms']:.0f} | "
                  f"{r['final_ms']:.0f} | {r['ratio']:.2f}x | {r['plain_ms']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "streams": streams, "load_before": load_before,
                       "load_after": load_after}, f, indent=1)
    return rows


def stream_rounds(args, urls: dict, payloads: list) -> list[dict]:
    """Time to first motion vs the final answer on ``/generate/stream`` (each round also
    times ``/generate`` alone at the same concurrency, interleaved)."""
    if not args.stream_concurrency:
        return []
    b = args.stream_batch or max(args.batch_sizes)
    apps = {n: url for (bb, n), url in urls.items() if bb == b}
    out = []
    for c in args.stream_concurrency:
        total = max(16, args.requests * c)
        rounds: dict[int, list] = {}
        for _ in range(args.repeats):
            for n, url in apps.items():  # interleaved: load from elsewhere hits each alike
                rep = run_load(url + "/stream", payloads, total=total, concurrency=c, stream=True)
                plain = run_load(url, payloads, total=total, concurrency=c)
                if rep.failed or plain.failed:
                    raise RuntimeError(f"stream concurrency {c}: {rep.summary()} "
                                       f"{plain.summary()}")
                first = 1e3 * statistics.median(rep.first_event_s)
                final = rep.percentile_ms(50)
                rounds.setdefault(n, []).append({
                    "concurrency": c, "concurrent_batches": n, "first_ms": first,
                    "final_ms": final, "ratio": first / final, "plain_ms": plain.percentile_ms(50)})
        for n, rs in rounds.items():
            rs.sort(key=lambda r: r["ratio"])
            out.append(rs[len(rs) // 2])
    return out


if __name__ == "__main__":
    main()
