"""The paper profile at full size on CPU: a Qwen3-0.6B-shaped MaDiS model through the real jobs.

    scripts/loopback.sh .venv/bin/python benchmarks/bench_paper_cpu.py [--steps 3] [--workers 2]

What runs, all on one local Ray cluster in this process (storage: a local directory):

1. token shards of the sample corpus (``--shards``, built if missing) written by a randomly
   initialised tokenizer of the paper's sizes (width 512, codebooks 96/192/192);
2. ``ray_jobs/pretrain.py --config paper`` with Qwen3-0.6B's architecture (28 layers, d=1024,
   16/8 heads, MLP 3072; random init, nothing downloaded: the byte-level text tokenizer replaces
   Qwen's, so the embedding has a few hundred rows instead of 151,936), bf16, DeepSpeed ZeRO-3
   over ``--workers`` CPU workers, batch ``--batch-size`` per worker, N = 100, K = 25: ``--steps``
   optimizer steps, one checkpoint at the last (validation, DeepSpeed state, export);
3. ``ray_jobs/eval_fleet.py``: one fleet actor evaluates that checkpoint (UTC decoding of
   ``--val-samples`` val texts, DTW-JPE, SiBLEU; no SiCLIP model here), then stops;
4. ``ray_jobs/serve.py`` deploys the checkpoint; one ``POST /generate`` is answered.

Printed: parameters, step time, checkpoint seconds (``train/checkpoint_s``: the DeepSpeed
state of every rank, the gathered export and the upload), validation seconds, peak memory per
training worker (max RSS, from the loop's ``train/peak_mem_mb``), the peak RSS of the fleet
actor and the Serve replica (sampled every 0.5 s), the machine's peak used memory over its use
at start, and the fleet's and Serve's timings. Too heavy for the test suite (about 15 GiB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
QWEN3_LAYERS = 28  # Qwen3-0.6B's depth (bench_decode.QWEN3_06B)


def job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "ray_jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MemoryWatch:
    """Peak RSS (MiB) per Ray process title (``ray::RayTrainWorker``, ``ray::ServeReplica...``)
    of this process's own cluster, and the machine's peak used memory, sampled on a thread."""

    def __init__(self, every_s: float = 0.5) -> None:
        import psutil

        self.psutil, self.every_s = psutil, every_s
        self.base_used = psutil.virtual_memory().used / 2**20
        self.peak_used = self.base_used
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_used = max(self.peak_used, self.psutil.virtual_memory().used / 2**20)
            # this process's own Ray cluster only (the machine may run others)
            for p in self.psutil.Process().children(recursive=True):
                try:
                    title = (p.cmdline() or [""])[0]
                    if title.startswith("ray::"):
                        role = title.split()[0].split(".")[0]
                        rss = p.memory_info().rss / 2**20
                        self.peak[role] = max(self.peak.get(role, 0.0), rss)
                except (self.psutil.Error, IndexError):
                    continue
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def role(self, prefix: str) -> float:
        return max((v for k, v in self.peak.items() if k.startswith(prefix)), default=float("nan"))


def scalars(logdir: str, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)] \
        if tag in acc.Tags()["scalars"] else []


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2, help="per worker")
    p.add_argument("--val-samples", type=int, default=2, help="fleet: val texts decoded")
    p.add_argument("--shards", default="shards")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--layers", type=int, default=QWEN3_LAYERS,
                   help="transformer layers (the slow test runs 2 at the paper's widths)")
    p.add_argument("--work-dir", default=None, help="keep runs here (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    import ray
    import torch

    from bench_decode import QWEN3_06B
    from bench_train import random_token_shards
    from madis.config import load_tree
    from madis.data.sample import build_sample_corpus, is_up_to_date
    from madis.train import list_checkpoints

    shape = {**QWEN3_06B, "num_layers": args.layers}
    model = ["model.backbone=tiny", "model.text_tokenizer=bytes", f"model.dtype={args.dtype}",
             *(f"model.{k}={v}" for k, v in shape.items())]
    out_shape = {"layers": args.layers}
    if not is_up_to_date(args.shards):
        build_sample_corpus(args.shards)
    out: dict = {"workers": args.workers, "batch_per_worker": args.batch_size,
                 "dtype": args.dtype, "cpus": os.cpu_count(), **out_shape}
    work = args.work_dir or tempfile.mkdtemp(prefix="bench-paper-cpu-")
    runs, tb = f"{work}/runs", f"{work}/tb"
    t0 = time.perf_counter()
    tokens = random_token_shards(load_tree("paper", model), args.shards, work) \
        if not Path(work, "tokens", "manifest.json").exists() else f"{work}/tokens"
    out["token_shards_s"] = time.perf_counter() - t0

    started = not ray.is_initialized()
    if started:
        # the paper profile places training on madis_train, the fleet and Serve on madis_eval
        # (cluster.yaml's node groups): this one node offers both
        ray.init(address="local", num_cpus=max(4, args.workers + 2), include_dashboard=False,
                 log_to_driver=False, resources={"madis_train": args.workers, "madis_eval": 2})
    watch = MemoryWatch()
    try:
        t0 = time.perf_counter()
        pre = job("pretrain").main([
            "--config", "paper", "--shards", tokens, "--storage", runs, "--workers",
            str(args.workers), "--gpus-per-worker", "0", "--zero-stage", "3", "--steps",
            str(args.steps), *model, "train.cpus_per_worker=1", f"train.log_dir={tb}",
            f"train_pretrain.batch_size={args.batch_size}",
            f"train_pretrain.checkpoint_every={args.steps}", "train_pretrain.warmup_steps=0",
            "train.log_every=1", "train.progress=false", "train.max_failures=0",
            "data.shuffle_buffer=64"])
        out["pretrain_job_s"] = time.perf_counter() - t0
        run = f"{runs}/pretrain"
        steps_ms = [1000 * args.batch_size * args.workers / v
                    for v in scalars(f"{tb}/pretrain", "train/samples_per_s")]
        out["step_s"] = [s / 1000 for s in steps_ms]
        out["checkpoint_s"] = scalars(f"{tb}/pretrain", "train/checkpoint_s")
        out["validation_s"] = scalars(f"{tb}/pretrain", "train/validation_s")
        out["peak_mem_mb_per_worker"] = max(scalars(f"{tb}/pretrain", "train/peak_mem_mb"))
        out["checkpoints"] = [c.step for c in list_checkpoints(run)]
        out["checkpoint_gb"] = sum(f.stat().st_size for f in Path(pre["checkpoint"]).rglob("*")
                                   if f.is_file()) / 2**30
        out["val_metrics"] = {k: v for k, v in pre["metrics"].items() if k.startswith("val_")}

        t0 = time.perf_counter()
        fleet = job("eval_fleet").main([
            "--config", "paper", "--run-url", run, "--until-step", str(args.steps), *model,
            "fleet.actors=1", "fleet.cpus_per_actor=1", "fleet.gpus_per_actor=0",
            f"fleet.val_samples={args.val_samples}", "fleet.siclip=", "fleet.batch_size=2",
            "fleet.metric=sibleu4_hands", "fleet.render_samples=1", f"fleet.log_dir={work}/fleet"])
        out["fleet_s"] = time.perf_counter() - t0
        out["fleet"] = {k: fleet.get(k) for k in ("evaluated", "failed", "stop_reason")}
        out["fleet"]["metrics"] = ((fleet.get("best") or {}).get("metrics") or {})

        t0 = time.perf_counter()
        served = job("serve").main([
            "--config", "paper", "--checkpoint", pre["checkpoint"], *model,
            "serve.replica_cpus=1", "serve.replica_gpus=0", "serve.min_replicas=1",
            "serve.max_replicas=1", f"serve.torch_threads={min(2, os.cpu_count())}"])
        out["serve_deploy_s"] = time.perf_counter() - t0
        body = json.dumps({"text": "HELLO", "lang": "ase"}).encode()
        t0 = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(
                served["url"] + "generate", data=body, method="POST"), timeout=1800) as res:
            answer = json.load(res)
        out["serve_request_s"] = time.perf_counter() - t0
        out["serve_answer"] = {"positions": len(answer.get("tokens", [])),
                               "frames": len(answer.get("motion", []))}
        from ray import serve

        serve.shutdown()
    finally:
        watch.stop()
        if started:
            ray.shutdown()
    out["peak_rss_mb"] = {"training worker": watch.role("ray::RayTrainWorker"),
                          "fleet actor": watch.role("ray::CheckpointDecoder"),
                          "serve replica": watch.role("ray::ServeReplica")}
    out["machine_peak_used_over_start_mb"] = watch.peak_used - watch.base_used
    out["process_roles"] = sorted(watch.peak)
    with torch.no_grad():
        from madis.mdlm import MaDiSModel
        from madis.mdlm.task import model_config

        cfg = model_config(load_tree("paper", [*model, "model.latent_loss=false",
                                               "model.physical_loss=false"]), "pretrain")
        m = MaDiSModel(cfg, codebook_sizes=(96, 192, 192), code_dims=(512, 512, 512))
        out["parameters_m"] = sum(p.numel() for p in m.parameters()) / 1e6
        del m
    print(json.dumps(out, indent=1, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
