"""Where the HTTP time goes at concurrency 32 (issue 15 "Serve at the model's speed").

One run measures, against the same checkpoint (a random model with the profile's sizes whose
[EOS] is unreachable: every answer is the worst case, N = 100 positions, 400 frames):

* **model in-process**: ``LoadedModel.generate`` on batches of ``--batch-size`` requests in this
  process with the replica's torch threads (the reverse process plus tokens -> motion), and
  the JSON encoding of each answer -- the ceiling the service is compared with;
* **HTTP** ``POST /generate`` at ``--concurrency`` through Ray Serve (one replica,
  ``max_batch_size`` = ``--batch-size``): requests/s, the mean batch the replica formed, the
  replica's own per-request timings (queue, generate, decode) and the client's latency;
* **HTTP** ``GET /healthz`` at the same concurrency: Serve's proxy and routing with no model
  and a tiny body;
* the **CPU seconds** each process spent during the ``/generate`` run (psutil): Serve's proxy,
  the replica, Serve's controller, Ray's core processes and this client, per request.

With two shared cores the CPU table says what the machine can give: if the proxy, client and
Ray spend X CPU-s per request and the replica Y, requests/s cannot pass ``cores / (X + Y)``.
Run::

    scripts/loopback.sh .venv/bin/python benchmarks/profile_serve.py          # about 2 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import psutil
import torch

from madis.config import load_tree, section, to_dict
from madis.serve.config import ServeConfig
from madis.serve.load import run_load
from madis.serve.requests import GenerateRequest
from madis.serve.testing import write_run
from madis.tokenizer import TokenizerConfig

TEXTS = [("HELLO", "ase"), ("GUTEN MORGEN", "gsg"), ("WHERE IS THE STATION", "ase"),
         ("BERLIN", "gsg"), ("THANK YOU VERY MUCH", "ase"), ("WIE GEHT ES DIR", "gsg")]
#: process title (Ray sets ``ray::<Actor>``) -> row of the CPU table
GROUPS = (("ProxyActor", "Serve proxy (HTTP)"), ("ServeReplica", "replica (model + FastAPI)"),
          ("ServeController", "Serve controller"), ("gcs_server", "Ray core (GCS, raylet, ...)"),
          ("raylet", "Ray core (GCS, raylet, ...)"), ("dashboard", "Ray core (GCS, raylet, ...)"),
          ("ray", "Ray core (GCS, raylet, ...)"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu-tiny")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32, help="the replica's max_batch_size")
    p.add_argument("--batch-wait-s", type=float, default=None, help="default: the profile's")
    p.add_argument("--requests", type=int, default=6, help="requests per round = this x concurrency")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (replica and in-process)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def write_checkpoint(tree) -> str:
    model = dict(tree["model"])
    tok = to_dict(section(tree, "tokenizer", TokenizerConfig))
    root = tempfile.mkdtemp(prefix="profile-serve-")
    write_run(root, steps=(1,), model_overrides=model,
              tokenizer_overrides={k: tok[k] for k in ("width", "code_dim", "codebook_sizes",
                                                       "depth", "dilation_growth_rate")})
    return f"{root}/finetune"


def in_process(run_url: str, cfg: ServeConfig, batch: int, repeats: int) -> dict:
    """Sentences/s of the loaded model at ``batch`` (generate + motion) and the JSON encoding."""
    from madis.serve.generator import LoadedModel, result_json
    from madis.serve.source import choose_model

    loaded = LoadedModel.load(choose_model(run_url), cfg)
    reqs = [GenerateRequest(t, lg, loaded.limits.default_num_steps, loaded.limits.default_sampler)
            for t, lg in (TEXTS * batch)[:batch]]
    loaded.generate(reqs[:2])  # warm-up
    runs, cpu, json_s = [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        results = loaded.generate(reqs)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        t1 = time.process_time()
        size = sum(len(result_json(r, loaded.format)) for r in results)
        json_s.append(time.process_time() - t1)
    gen_ms = statistics.median(r.timings["generate_ms"] for r in results)
    dec_ms = statistics.median(r.timings["decode_ms"] for r in results)
    return {"sentences_per_s": batch / statistics.median(runs),
            "cpu_ms_per_answer": 1e3 * statistics.median(cpu) / batch,
            "batch_s": statistics.median(runs), "generate_ms": gen_ms, "decode_ms": dec_ms,
            "json_ms_per_answer": 1e3 * statistics.median(json_s) / batch,
            "answer_bytes": size / batch}


def group_of(proc: psutil.Process) -> str | None:
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if proc.pid == os.getpid():
        return "this client (aiohttp)"
    for key, name in GROUPS:
        if key in title:
            return name
    return None


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process and its descendants (the Ray cluster this run
    started: GCS, raylet, workers), by :data:`GROUPS`; other clusters on the machine are not."""
    out: dict[str, float] = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        name = group_of(proc)
        if name is None:
            continue
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[name] = out.get(name, 0.0) + t.user + t.system
    return out


def main(argv=None) -> dict:
    import ray
    from ray import serve

    from madis.serve.app import build_app
    from madis.serve.load import run_load as load

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tree = load_tree(args.profile)
    base = section(tree, "serve", ServeConfig)
    run_url = write_checkpoint(tree)
    cfg = ServeConfig(**{**to_dict(base), "app_name": "profile", "route_prefix": "/",
                         "min_replicas": 1, "max_replicas": 1, "max_batch_size": args.batch_size,
                         "max_ongoing_requests": max(args.batch_size * base.concurrent_batches,
                                                     args.concurrency),
                         "batch_wait_s": base.batch_wait_s if args.batch_wait_s is None
                         else args.batch_wait_s, "torch_threads": args.threads,
                         "languages": ["ase", "gsg"]})
    load_before = os.getloadavg()
    model = in_process(run_url, cfg, args.batch_size, args.repeats)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    from bench_serve import free_port

    port = free_port()
    cfg.port = port
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg, run_url=run_url), name=cfg.app_name, route_prefix="/",
              blocking=False)
    url = f"http://127.0.0.1:{port}/"
    payloads = [{"text": t, "lang": lg} for t, lg in TEXTS]
    load(url + "generate", payloads, total=2 * args.concurrency, concurrency=args.concurrency)
    total = args.requests * args.concurrency

    def healthz_load() -> float:
        import asyncio

        import aiohttp

        async def go() -> float:
            async with aiohttp.ClientSession() as s:
                async def worker(n):
                    for _ in range(n):
                        async with s.get(url + "healthz") as r:
                            await r.read()
                t0 = time.perf_counter()
                await asyncio.gather(*(worker(total // args.concurrency)
                                       for _ in range(args.concurrency)))
                return total / (time.perf_counter() - t0)
        return asyncio.run(go())

    http, health, cpu = [], [], []
    for _ in range(args.repeats):
        c0, w0 = cpu_seconds(), time.perf_counter()
        rep = run_load(url + "generate", payloads, total=total, concurrency=args.concurrency)
        wall = time.perf_counter() - w0
        c1 = cpu_seconds()
        if rep.failed:
            raise RuntimeError(rep.summary())
        http.append(rep)
        cpu.append(({k: c1.get(k, 0.0) - c0.get(k, 0.0) for k in c1}, wall))
        health.append(healthz_load())
    serve.shutdown()
    ray.shutdown()
    load_after = os.getloadavg()

    mid = sorted(range(len(http)), key=lambda i: http[i].requests_per_s)[len(http) // 2]
    rep, (cpu_used, wall) = http[mid], cpu[mid]
    n = rep.total
    t = rep.timings
    mean = {k: statistics.mean(x[k] for x in t) for k in ("queue_ms", "generate_ms", "decode_ms",
                                                         "batch_size", "total_ms")}
    client_ms = statistics.mean(rep.latencies_s) * 1e3
    http_rps = rep.requests_per_s
    ratio = http_rps / model["sentences_per_s"]
    print(f"\nprofile_serve: profile {args.profile}, full-length answers (N = "
          f"{tree['model'].get('num_positions')}, K = {tree['model'].get('num_steps')}), "
          f"{args.threads} torch thread(s), max_batch_size {args.batch_size}, batch_wait_s "
          f"{cfg.batch_wait_s}; {os.cpu_count()} cores, load average {load_before[0]:.1f} before / "
          f"{load_after[0]:.1f} after\n")
    print("| measure | value |\n|---|---:|")
    print(f"| model in-process, batch {args.batch_size}: sentences/s (generate + motion) | "
          f"{model['sentences_per_s']:.1f} |")
    print(f"| ... of which reverse process / tokens -> motion, ms per batch | "
          f"{model['generate_ms']:.0f} / {model['decode_ms']:.0f} |")
    print(f"| model in-process: CPU-ms per answer (one thread; what a quiet core gives: "
          f"{1e3 / model['cpu_ms_per_answer']:.0f} sentences/s) | {model['cpu_ms_per_answer']:.1f} |")
    print(f"| JSON encoding per answer, CPU-ms ({model['answer_bytes'] / 1e3:.0f} kB) | "
          f"{model['json_ms_per_answer']:.2f} |")
    print(f"| HTTP POST /generate at concurrency {args.concurrency}: requests/s | {http_rps:.1f} |")
    print(f"| **HTTP / in-process** | **{ratio:.2f}x** |")
    print(f"| HTTP GET /healthz at concurrency {args.concurrency}: requests/s (proxy ceiling) | "
          f"{statistics.median(health):.0f} |")
    print(f"| mean batch formed by the replica | {mean['batch_size']:.1f} |")
    print(f"| per request, replica: queue / generate / decode / in-replica total, ms | "
          f"{mean['queue_ms']:.0f} / {mean['generate_ms']:.0f} / {mean['decode_ms']:.0f} / "
          f"{mean['total_ms']:.0f} |")
    print(f"| per request, client latency (proxy + transfer on top of the replica's), ms | "
          f"{client_ms:.0f} (+{client_ms - mean['total_ms']:.0f}) |")
    print(f"\nCPU seconds during the /generate run ({n} requests, {wall:.1f} s wall, "
          f"{2 * wall:.1f} CPU-s on 2 cores):\n")
    print("| process | CPU-s | share | CPU-ms per request |\n|---|---:|---:|---:|")
    busy = sum(cpu_used.values())
    for k, v in sorted(cpu_used.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.1f} | {v / max(busy, 1e-9):.0%} | {1e3 * v / n:.1f} |")
    print(f"| all | {busy:.1f} | 100% | {1e3 * busy / n:.1f} |")
    model_cpu_ms = model["cpu_ms_per_answer"]
    per_req = 1e3 * busy / n
    replica = 1e3 * sum(v for k, v in cpu_used.items() if k.startswith("replica")) / n
    bound = min(2000 / per_req, 1000 / max(replica, 1e-9))
    print(f"\nCPU bound (independent of other load on the machine): the model alone needs "
          f"{model_cpu_ms:.1f} CPU-ms per answer in-process ({1000 / model_cpu_ms:.0f} sentences/s "
          f"on one free core); the service spends {per_req:.1f} CPU-ms per answer in all, "
          f"{replica:.1f} of them in the replica (one thread). Two free cores could give at most "
          f"min(2000 / {per_req:.1f}, 1000 / {replica:.1f}) = {bound:.1f} requests/s = "
          f"{bound * model_cpu_ms / 1000:.2f}x the in-process model.")
    out = {"model": model, "http_requests_per_s": http_rps, "ratio": ratio,
           "cpu_ms_per_request": per_req, "replica_cpu_ms_per_request": replica,
           "cpu_bound_requests_per_s": bound,
           "healthz_requests_per_s": statistics.median(health), "replica_timings_ms": mean,
           "client_ms": client_ms, "cpu_s": cpu_used, "wall_s": wall, "requests": n,
           "load_before": load_before, "load_after": load_after}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
