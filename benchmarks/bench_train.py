"""Training throughput of the shared loop: samples/s with 1 and 2 workers, ZeRO 0 and 2.

    scripts/loopback.sh .venv/bin/python benchmarks/bench_train.py [--steps 40] [--shards shards]

Trains the cpu-tiny tokenizer (``TokenizerTask`` on the sample shards, batch 16 per worker) for
``--steps`` steps in each setting, all on one local Ray cluster in this process, and prints
samples/s (mean over the log windows after the first, which holds start-up), its ratio to the
baseline (1 worker, ZeRO 0) and the peak memory of the largest worker (max RSS). The machine's
load average is printed too: on shared cores the absolute numbers move with it.

``--case mdlm`` measures the MaDiS model instead: pretraining and fine-tuning (``MDLMTask``) on
token shards of the sample corpus (``--tokens``, else written here by a randomly initialised
tokenizer of the profile's sizes: throughput does not depend on the weights), reporting samples/s
and sequence tokens/s per worker (text + separator + N sign positions per sample)::

    scripts/loopback.sh .venv/bin/python benchmarks/bench_train.py --case mdlm       # cpu-tiny
    .venv/bin/python benchmarks/bench_train.py --case mdlm --profile paper --device cuda

``--case loader`` measures the loop's batch loader (``train.prefetch_batches``): the cpu-tiny
tokenizer (1 worker, ZeRO 0) on the sample corpus written in small shards (``--shard-mib``,
about one batch each, so every step needs a new shard), read from local disk and with
``--read-delay-ms`` (50) added to every shard read, with the loader reading ahead (the default)
and on the training thread (``prefetch_batches=0``, the loop before the loader). It prints the
step time of each and the ratio of the delayed to the local run::

    scripts/loopback.sh .venv/bin/python benchmarks/bench_train.py --case loader

The paper mode trains Qwen3-0.6B's architecture (random init; the weights cannot be downloaded
here) in bf16 on one GPU, one worker, ZeRO-2, batch 64, and also prints model FLOPs utilisation:
``tokens/s x (6 x non-embedding parameters + 12 x layers x d_attn x sequence length) / peak``
(PaLM's training-FLOPs count; the frozen tokenizer decoders of the physical loss are left out,
so the MFU is a lower bound). The peak is looked up from the GPU's name (bf16 dense) or given
with ``--peak-tflops``. Without a GPU, ``--device cuda`` stops with a clear message.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

SETTINGS = [(1, 0), (1, 2), (2, 0), (2, 2)]  # (workers, ZeRO stage); the first is the baseline
#: bf16 dense peak TFLOP/s by GPU name (vendor data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0,
               "L4": 121.0}


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
    p.add_argument("--case", choices=("tokenizer", "mdlm", "loader"), default="tokenizer")
    p.add_argument("--read-delay-ms", type=float, default=50.0, help="loader case")
    p.add_argument("--shard-mib", type=float, default=0.75, help="loader case: shard size")
    p.add_argument("--prefetch", type=int, default=4, help="loader case: batches read ahead")
    p.add_argument("--profile", default="cpu-tiny", help="mdlm case: cpu-tiny or paper")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="mdlm case")
    p.add_argument("--tokens", help="mdlm case: token shard root to read (default: written here)")
    p.add_argument("--peak-tflops", type=float, help="mdlm case on a GPU: peak for the MFU")
    p.add_argument("--stages", default="pretrain,finetune", help="mdlm case: stages measured")
    p.add_argument("--zero-stage", type=int, default=None,
                   help="mdlm case: DeepSpeed ZeRO stage (default: the profile's)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.case == "mdlm":
        return mdlm_main(args)
    if args.case == "loader":
        return loader_main(args)

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


# -- the loader case --------------------------------------------------------------------------------

def _delay_shard_reads(delay_s: float) -> None:
    """Make every shard read of this process wait ``delay_s`` first (``webdataset.gopen``,
    which the shard reader opens each shard with), as a far-away store would."""
    import webdataset

    original = getattr(webdataset.gopen, "undelayed", webdataset.gopen)

    def gopen(url, *a, **kw):
        time.sleep(delay_s)
        return original(url, *a, **kw)

    gopen.undelayed = original
    webdataset.gopen = gopen


def loader_main(args) -> list[dict]:
    import dataclasses

    import ray

    from madis.config import load_tree, section
    from madis.data.sample import build_sample_corpus
    from madis.data.shards import read_manifest
    from madis.tokenizer import TokenizerConfig
    from madis.tokenizer.task import TokenizerTask
    from madis.train import fit, train_config

    @dataclasses.dataclass
    class DelayedReads(TokenizerTask):
        """The tokenizer task with ``delay_s`` added to each shard read in its workers."""

        delay_s: float = 0.0

        def batches(self, **kw):
            if self.delay_s:
                _delay_shard_reads(self.delay_s)
            return super().batches(**kw)

    tree = load_tree("cpu-tiny")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        shards = f"{tmp}/shards"
        build_sample_corpus(shards, max_bytes=int(args.shard_mib * 2**20))
        m = read_manifest(shards)
        per_shard = m["splits"]["train"]["samples"] / len(m["splits"]["train"]["shards"])
        base = TokenizerTask.from_shards(section(tree, "tokenizer", TokenizerConfig), shards)
        for prefetch in (args.prefetch, 0):
            for delay in (0.0, args.read_delay_ms / 1000):
                name = f"p{prefetch}-d{int(delay * 1000)}"
                task = DelayedReads(**{**base.__dict__, "delay_s": delay})
                cfg = train_config(tree, "tokenizer")
                cfg.run_name, cfg.storage_path, cfg.log_dir = name, f"{tmp}/runs", f"{tmp}/tb"
                cfg.workers, cfg.zero_stage, cfg.steps = 1, 0, args.steps
                cfg.batch_size, cfg.log_every, cfg.checkpoint_every = args.batch_size, 10, 0
                cfg.progress, cfg.max_failures = False, 0
                cfg.prefetch_batches = prefetch
                load0 = os.getloadavg()[0]
                fit(task, cfg)
                sps = _window_means(f"{tmp}/tb/{name}", "train/samples_per_s")[1:]
                step_ms = 1000 * args.batch_size / (sum(sps) / len(sps))
                rows.append({"prefetch": prefetch, "delay_ms": delay * 1000, "step_ms": step_ms,
                             "load": load0})
    ray.shutdown()
    print(f"tokenizer cpu-tiny, 1 worker, batch {args.batch_size}, {args.steps} steps; "
          f"{len(m['splits']['train']['shards'])} train shards of ~{per_shard:.0f} samples; "
          f"{os.cpu_count()} CPUs")
    print(f"{'prefetch':>8} {'read delay ms':>13} {'step ms':>8} {'local/delayed':>13} {'load':>5}")
    for r in rows:
        local = next(x for x in rows if x["prefetch"] == r["prefetch"] and not x["delay_ms"])
        print(f"{r['prefetch']:>8} {r['delay_ms']:>13.0f} {r['step_ms']:>8.1f} "
              f"{local['step_ms'] / r['step_ms']:>13.2f} {r['load']:>5.1f}")
    return rows


# -- the MDLM case ---------------------------------------------------------------------------------

def peak_tflops(args) -> float:
    """The GPU's bf16 dense peak, from ``--peak-tflops`` or its name.

    Raises:
        SystemExit: an unknown GPU and no ``--peak-tflops``.
    """
    import torch

    if args.peak_tflops:
        return args.peak_tflops
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"unknown peak FLOP/s for {name!r}: pass --peak-tflops")


def random_token_shards(tree, shards: str, out: str) -> str:
    """Token shards of ``shards`` written by an untrained tokenizer of the profile's sizes."""
    import torch

    from madis.config import section
    from madis.data.shards import read_manifest
    from madis.tokenizer import DecoupledTokenizer, TokenizerConfig
    from madis.tokenizer.token_shards import write_token_shards

    m = read_manifest(shards)
    torch.manual_seed(0)
    tok = DecoupledTokenizer(section(tree, "tokenizer", TokenizerConfig), m["format"],
                             m["stats"]["mean"], m["stats"]["std"]).eval()
    for cb in tok.codebooks:  # spread codes, as a trained codebook would be
        cb.copy_(torch.randn_like(cb))
    tok.save_pretrained(f"{out}/tokenizer")
    write_token_shards(tok, shards, f"{out}/tokens",
                       extra={"tokenizer_export": {"url": f"{out}/tokenizer", "step": 0}})
    return f"{out}/tokens"


def mean_sequence_length(cfg, shards: str) -> float:
    """Mean over the train split of text tokens + separator + N sign positions."""
    from madis.data.shards import iter_samples
    from madis.mdlm.text import build_text_tokenizer, format_prompt

    tok = build_text_tokenizer(cfg.text_tokenizer, cfg.backbone)
    lengths = [min(len(tok.encode(format_prompt(cfg.text_template, s["meta"]["text"],
                                                s["meta"]["lang"]))), cfg.max_text_tokens)
               for s in iter_samples(shards, "train", shuffle=False)]
    return sum(lengths) / len(lengths) + 1 + cfg.num_positions


def training_flops_per_token(model, seq_len: float) -> float:
    """PaLM's count: 6 x non-embedding parameters + 12 x layers x d_attn x sequence length."""
    bb = model.backbone.config
    embed = model.embed_tokens().weight.numel()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad) - embed
    d_attn = bb.num_attention_heads * bb.head_dim
    return 6 * params + 12 * bb.num_hidden_layers * d_attn * seq_len


def mdlm_main(args) -> list[dict]:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train --device cuda: no CUDA device here "
                         "(torch.cuda.is_available() is False); run it on a GPU machine")
    import ray

    from madis.config import load_tree
    from madis.data.sample import build_sample_corpus, is_up_to_date
    from madis.mdlm.task import MDLMTask, model_config
    from madis.train import fit, train_config

    overrides = []
    if args.profile == "paper":
        from bench_decode import QWEN3_06B

        overrides = ["model.backbone=tiny", "model.text_tokenizer=bytes", "model.dtype=bfloat16",
                     *(f"model.{k}={v}" for k, v in QWEN3_06B.items())]
    tree = load_tree(args.profile, overrides)
    gpu = args.device == "cuda"
    if not args.tokens and not is_up_to_date(args.shards):
        build_sample_corpus(args.shards)
    ray.init(num_cpus=os.cpu_count() if gpu else 4, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mdlm-") as tmp:
        tokens = args.tokens or random_token_shards(tree, args.shards, tmp)
        for stage in args.stages.split(","):
            mcfg = model_config(tree, stage)
            task = MDLMTask.from_shards(stage, mcfg, tokens, val_generate=False)
            cfg = train_config(tree, stage)
            cfg.run_name, cfg.storage_path, cfg.log_dir = stage, f"{tmp}/runs", f"{tmp}/tb"
            cfg.steps, cfg.log_every, cfg.checkpoint_every = args.steps, 10, 0
            cfg.progress, cfg.max_failures, cfg.warmup_steps = False, 0, 0
            if args.zero_stage is not None:
                cfg.zero_stage = args.zero_stage
            if gpu:
                cfg.workers, cfg.use_gpu, cfg.cpus_per_worker = 1, True, 4
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            fit(task, cfg)
            wall = time.perf_counter() - t0
            sps = _window_means(f"{tmp}/tb/{stage}", "train/samples_per_s")[1:]
            per_worker = sum(sps) / len(sps) / cfg.workers
            seq = mean_sequence_length(mcfg, tokens)
            row = {"stage": stage, "workers": cfg.workers, "batch": cfg.batch_size,
                   "zero_stage": cfg.zero_stage,
                   "samples_per_s_per_worker": per_worker,
                   "tokens_per_s_per_worker": per_worker * seq, "seq_len": seq,
                   "peak_mem_mb": max(_window_means(f"{tmp}/tb/{stage}", "train/peak_mem_mb")),
                   "wall_s": wall, "load": load0, "steps": args.steps}
            if gpu:
                model = task.build_model().model
                flops = training_flops_per_token(model, seq) * row["tokens_per_s_per_worker"]
                row["tflops"] = flops / 1e12
                row["mfu"] = row["tflops"] / peak_tflops(args)
                del model
            rows.append(row)
    ray.shutdown()
    where = torch.cuda.get_device_name() if gpu else f"{os.cpu_count()} CPUs"
    print(f"MDLM {args.profile}, {args.steps} steps per stage, {where}")
    print(f"{'stage':>9} {'workers':>7} {'batch':>5} {'samples/s/w':>11} {'tokens/s/w':>10} "
          f"{'seq':>5} {'peak MiB':>9} {'wall s':>7} {'load':>5}"
          + (f" {'TFLOP/s':>8} {'MFU':>6}" if gpu else ""))
    for r in rows:
        print(f"{r['stage']:>9} {r['workers']:>7} {r['batch']:>5} "
              f"{r['samples_per_s_per_worker']:>11.2f} {r['tokens_per_s_per_worker']:>10.0f} "
              f"{r['seq_len']:>5.0f} {r['peak_mem_mb']:>9.0f} {r['wall_s']:>7.1f} "
              f"{r['load']:>5.1f}" + (f" {r['tflops']:>8.1f} {100 * r['mfu']:>5.1f}%" if gpu else ""))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"device": where, "profile": args.profile, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
