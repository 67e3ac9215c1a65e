"""Eval-fleet latency: from a checkpoint landing in storage to its metrics in TensorBoard, with 1, 2
and 4 actors, in one run.

    scripts/loopback.sh .venv/bin/python benchmarks/bench_fleet.py [--checkpoints 3] [--s3]

cpu-tiny profile: the fine-tuned model of the ``model`` section (random init: decoding cost does
not depend on the weights), the ``fleet`` section's settings (UTC, K from the model, batch of 16
texts, every val sample of the sample corpus, 2 rendered samples, SiCLIP R@k with a randomly
initialised cpu-tiny SiCLIP), token shards of the sample corpus written by an untrained tokenizer
of the profile's sizes. For each actor count a fresh fleet watches its own run; once its actors
are up, ``--checkpoints`` checkpoints land one after another (written with ``COMPLETE`` last,
the next one when the previous is in TensorBoard, so the fleet keeps up), and the delay is
measured from the ``COMPLETE`` write to the moment ``eval/utc/siclip_s2t_R@1`` at that step is
readable from the run's ``tensorboard/fleet`` (read with TensorBoard's own ``EventAccumulator``).

Printed per actor count: each delay, the median, its ratio to 1 actor (the baseline, same run),
the fleet's own ``fleet/decode_s`` (decoding, spread over the actors) and ``fleet/eval_s``
(the whole evaluation, without the wait for the next poll), and the coordinator's CPU time.
``--poll`` sets the poll interval (default 0.5 s; cpu-tiny's 5 s adds up to 5 s, mean 2.5 s, to
every delay). Storage: a local directory (cpu-tiny's default), or with ``--s3`` a bucket on a
local S3 server. The load average is printed before and after: the cores are shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class EventWatch:
    """Scalars of the event files under a directory (local or s3), re-read only when a file
    changed, so that polling leaves the cores to the fleet."""

    def __init__(self, url: str) -> None:
        self.url, self._sig, self._acc = url, None, None

    def steps(self, tag: str) -> dict[int, float]:
        """``{step: value}`` of ``tag`` now."""
        import fsspec
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        fs, path = fsspec.core.url_to_fs(self.url)
        fs.invalidate_cache()
        try:
            files = fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        sig = sorted((name, info["size"]) for name, info in files.items())
        if sig and sig != self._sig:
            self._sig = sig
            local = path
            if "://" in self.url:
                # a target that does not exist yet receives the directory's files themselves
                local = f"{tempfile.mkdtemp(prefix='bench-fleet-tb-')}/events"
                fs.get(path, local, recursive=True)
            if self._acc is None or "://" in self.url:
                self._acc = EventAccumulator(local, size_guidance={"scalars": 0, "images": 1})
            self._acc.Reload()
        if self._acc is None or tag not in self._acc.Tags()["scalars"]:
            return {}
        return {e.step: e.value for e in self._acc.Scalars(tag)}


def build_exports(tree, tokens: str, out: str, n: int) -> tuple[list[str], dict]:
    """``n`` fine-tuning exports of the profile's model (different random weights)."""
    import torch

    from madis.mdlm.task import MDLMTask, model_config

    task = MDLMTask.from_shards("finetune", model_config(tree, "finetune"), [tokens])
    dirs = []
    for seed in range(n):
        torch.manual_seed(seed)
        task.export(task.build_model(), f"{out}/export{seed}")
        dirs.append(f"{out}/export{seed}")
    return dirs, task.describe()


def build_siclip(tree, shards: str, out: str) -> str:
    import torch

    from madis.config import section
    from madis.data.shards import read_manifest
    from madis.metrics.siclip import SiCLIP, SiCLIPConfig

    m = read_manifest(shards)
    torch.manual_seed(0)
    SiCLIP(section(tree, "siclip", SiCLIPConfig), m["format"], m["stats"]["mean"],
           m["stats"]["std"]).save_pretrained(f"{out}/siclip")
    return f"{out}/siclip"


def measure(cfg, run_url: str, siclip: str, exports: list[str], task: dict, tag: str
            ) -> dict:
    """One fleet with ``cfg.actors`` actors: delays of ``len(exports)`` checkpoints."""
    from madis.fleet.dashboard import fleet_tensorboard_url
    from madis.fleet.fleet import EvalFleet
    from madis.fleet.testing import write_checkpoint

    fleet = EvalFleet(cfg, run_url, siclip_url=siclip)
    thread = threading.Thread(target=fleet.run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    if not fleet.started.wait(600):
        raise SystemExit("the fleet's actors did not start in 10 minutes")
    startup = time.perf_counter() - t0
    events = EventWatch(fleet_tensorboard_url(run_url))
    delays = []
    cpu0 = time.process_time()
    for step, export in enumerate(exports, start=1):
        write_checkpoint(run_url, step, export, task=task)
        landed = time.perf_counter()
        while step not in events.steps(tag):
            time.sleep(0.05)
            if time.perf_counter() - landed > 900:
                raise SystemExit(f"checkpoint {step} not in TensorBoard after 15 minutes")
        delays.append(time.perf_counter() - landed)
    coordinator_cpu = time.process_time() - cpu0
    fleet.stop()
    thread.join(60)
    return {"actors": cfg.actors, "startup_s": startup, "delays": delays,
            "eval_s": list(events.steps("fleet/eval_s").values()),
            "decode_s": list(events.steps("fleet/decode_s").values()),
            "coordinator_cpu_s": coordinator_cpu / len(exports)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", default="shards", help="motion shard root (the sample corpus)")
    p.add_argument("--checkpoints", type=int, default=3, help="checkpoints per actor count")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--poll", type=float, default=0.5, help="fleet.poll_interval_s")
    p.add_argument("--s3", action="store_true", help="runs on a local S3 server")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. fleet.batch_size=8")
    args = p.parse_args(argv)

    import ray

    from bench_train import random_token_shards
    from madis.config import load_tree, section
    from madis.fleet import FleetConfig

    tree = load_tree("cpu-tiny", args.overrides)
    base = section(tree, "fleet", FleetConfig)
    tag = f"eval/{base.samplers[0]}/{base.metric}"
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        server = None
        if args.s3:
            import boto3

            from madis.data.s3server import LocalS3Server

            server = LocalS3Server().start()
            server.apply_env()
            boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="bench-fleet")
        print("preparing token shards, exports and SiCLIP ...", flush=True)
        tokens = random_token_shards(tree, args.shards, tmp)
        exports, task = build_exports(tree, tokens, tmp, args.checkpoints)
        siclip = build_siclip(tree, args.shards, tmp)
        ray.init(num_cpus=max(args.actors) + 1, include_dashboard=False, log_to_driver=False)
        storage = "s3://bench-fleet" if args.s3 else f"{tmp}/storage"
        try:
            for n in args.actors:
                cfg = dataclasses.replace(base, actors=n, poll_interval_s=args.poll,
                                          until_step=0, idle_timeout_s=0,
                                          stop_when_run_ends=False, log_dir=f"{tmp}/tb")
                rows.append(measure(cfg, f"{storage}/a{n}/finetune", siclip, exports, task, tag))
                print(f"  {n} actor(s): {[round(d, 2) for d in rows[-1]['delays']]}", flush=True)
        finally:
            ray.shutdown()
            if server is not None:
                server.stop()
    load1 = os.getloadavg()

    base_median = statistics.median(rows[0]["delays"])
    print(f"\ncpu-tiny eval fleet, {'local S3 server' if args.s3 else 'local directory'} "
          f"storage, poll {args.poll:g} s, batch {base.batch_size}, val samples "
          f"{base.val_samples or 'all'}, cpus_per_actor {base.cpus_per_actor:g}, "
          f"{os.cpu_count()} cores")
    print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f} (1-min)")
    print(f"{'actors':>6} {'start s':>8} {'delays s (landing -> TensorBoard)':>36} "
          f"{'median':>7} {'x 1 actor':>9} {'decode s':>9} {'eval s':>7} {'coord CPU s':>11}")
    for r in rows:
        med = statistics.median(r["delays"])
        print(f"{r['actors']:>6} {r['startup_s']:8.1f} "
              f"{' '.join(f'{d:6.2f}' for d in r['delays']):>36} {med:7.2f} "
              f"{med / base_median:9.2f} {statistics.median(r['decode_s']):9.2f} "
              f"{statistics.median(r['eval_s']):7.2f} {r['coordinator_cpu_s']:11.2f}")
    print("decode s: the decoding part of each evaluation (spread over the actors); eval s: the "
          "whole evaluation; coord CPU s: this process's CPU time per checkpoint (coordinator: "
          "metrics, TensorBoard; plus this benchmark's polling)")
    return rows


if __name__ == "__main__":
    main()
