"""Decoding speed: UTC and vanilla unmasking against the autoregressive baseline, in one process
(issue 4 "Performance", docs/design.md#latency, paper Table 2).

Workload: N = 100 sign positions, K = 25 steps, the prompts below; latency per
sentence at batch 1 and sentences per second at batch 32. The models have the profile's sizes:
``cpu-tiny`` (2-layer d=128 Qwen3) or ``paper`` (Qwen3-0.6B's architecture, randomly initialised
unless ``--weights`` names a local copy; decoding cost does not depend on the weights' values).

Before timing, the MDLMs (``--train-steps``, 600) and the baseline (``--ar-train-steps``, 300:
it converges faster here) are fine-tuned on a synthetic corpus: each word of a 25-word lexicon
stands for 8 sign positions, and a pool of 32 sentences of 4 to 8 words (32 to 64 positions, text
of about 40 byte tokens) is both the training set and the timed set. That makes [EOS] land where
the text says, which ``drop_after_eos`` and the baseline's early stop depend on, and gives the
accuracy columns a known answer. ``--cache-dir`` keeps the trained models for later runs. Rows:

* ``ar``: causal Qwen3, KV cache, SOKE multi-head greedy decoding, stops when every row said [EOS]
  (the baseline of every ratio); ``ar-full``: the same forced to all N positions.
* ``vanilla``: confidence-based unmasking (LLaDA), the default exact switches.
* ``utc-plain``: UTC with every speed-up off (head logits at all positions, whole sequence).
* one row per speed-up on top of ``utc-plain``, then all together:
  ``+masked-logits`` (exact), ``+text-kv`` (exact; needs the model trained with text attending
  only to text, a separate model here), ``+drop-eos`` and ``+stage-kv`` (both change outputs;
  the ``agree`` column is the share of sign positions whose tokens equal exact UTC decoding of
  the same model, and ``len`` the mean decoded length).
* ``thr-T`` (issue 15): confidence-threshold decoding at threshold T inside UTC's stages, on
  top of the exact switches (``utc-all-exact``, its reference for ``agree``); ``-one`` rows use
  Fast-dLLM's floor of one position per step instead of the schedule's count; ``+drop``/``+len``
  add ``drop_after_eos`` / ``length_first``, ``+stage`` the approximate ``stage_kv_cache``.
  ``steps`` is the mean ``steps_used`` at the large batch, ``SiBLEU4`` body/hands the token
  BLEU-4 against the synthetic truth.

Speed is only compared within one run (same process, interleaved repeats, median). Run::

    .venv/bin/python benchmarks/bench_decode.py --threads 1 --cache-dir /tmp/bench  # cpu-tiny:
    #   about 5 min of training on 2 free cores, then about 1.5 min of timing
    .venv/bin/python benchmarks/bench_decode.py --profile paper --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

import torch

from madis.config import load_tree, section
from madis.mdlm import ARBaseline, MaDiSModel, ModelConfig, load_pretrained
from madis.tokenizer import TokenizerConfig

#: Qwen3-0.6B-Base's architecture (its config.json), for a random-init paper-size model.
QWEN3_06B = dict(hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
                 intermediate_size=3072)
POSITIONS_PER_WORD = 8
LEXICON = ("sun moon tree house water fire book hand eye road city child mother father friend "
           "rain snow wind day night bread milk tea school work play").split()


class Corpus:
    """Synthetic parallel corpus: word w <-> a fixed random run of 8 sign positions; a fixed pool
    of sentences (lengths ``min_words..max_words`` words) that training and timing share."""

    def __init__(self, codebook_sizes, pool_size: int, min_words: int, max_words: int,
                 seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.codes = {w: torch.stack([torch.randint(0, k, (POSITIONS_PER_WORD,), generator=g)
                                      for k in codebook_sizes], -1) for w in LEXICON}
        self.rng = random.Random(seed)
        self.pool = [self.rng.choices(LEXICON, k=self.rng.randint(min_words, max_words))
                     for _ in range(pool_size)]

    def truth(self, words: list[str], num_positions: int) -> torch.Tensor:
        """Ground-truth codes ``[N, 3]`` of a sentence, -1 after its end."""
        out = torch.full((num_positions, 3), -1, dtype=torch.long)
        seq = torch.cat([self.codes[w] for w in words])[:num_positions]
        out[: len(seq)] = seq
        return out

    def batch(self, size: int, num_positions: int) -> dict:
        """A training batch in the data contract's layout, sentences drawn from the pool."""
        words = self.rng.choices(self.pool, k=size)
        tokens = torch.stack([self.truth(ws, num_positions) for ws in words])
        return {"text": [" ".join(ws) for ws in words], "lang": ["ase"] * size,
                "tokens": tokens, "token_mask": tokens[..., 0] >= 0}


def build_config(args) -> tuple[ModelConfig, TokenizerConfig]:
    tree = load_tree(args.profile)
    cfg = section(tree, "model", ModelConfig)
    tok_cfg = section(tree, "tokenizer", TokenizerConfig)
    changes = dict(latent_loss=False, physical_loss=False, num_steps=args.num_steps,
                   num_positions=args.positions)
    if args.profile == "paper" and not args.weights:
        changes.update(backbone="tiny", text_tokenizer="bytes", **QWEN3_06B)
    elif args.weights:
        changes.update(backbone=args.weights)
    if args.device == "cpu":
        changes["dtype"] = "float32"
    return dataclasses.replace(cfg, **changes), tok_cfg


def train(model, corpus: Corpus, steps: int, batch_size: int, lr: float, device) -> float:
    """Fine-tune on the synthetic corpus (AdamW, one-cycle schedule); returns the last loss."""
    if steps <= 0:
        return float("nan")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator(device=device).manual_seed(0)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = corpus.batch(batch_size, model.cfg.num_positions)
        kwargs = {"generator": g} if isinstance(model, MaDiSModel) else {}
        loss, _ = model.loss(batch, "finetune", **kwargs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return float(loss.detach())


def trained(name: str, build, corpus: Corpus, args, steps: int, lr: float, device):
    """Build and fine-tune a model, or load it from ``--cache-dir`` when this exact setting was
    trained before (save_pretrained / from_pretrained)."""
    tag = f"{args.profile}-{name}-{steps}-{lr:g}-{args.words}-{args.large_batch}"
    cache = Path(args.cache_dir) / tag if args.cache_dir else None
    if cache is not None and (cache / "config.json").exists():
        return load_pretrained(cache, map_location=device).eval(), float("nan")
    model = build().to(device)
    loss = train(model, corpus, steps, args.train_batch, lr, device)
    if cache is not None:
        model.save_pretrained(cache)
    return model, loss


def timed(fn, device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu-tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default="", help="local Qwen3 weights for the paper profile")
    ap.add_argument("--positions", type=int, default=100)
    ap.add_argument("--num-steps", type=int, default=25)
    ap.add_argument("--large-batch", type=int, default=32)
    ap.add_argument("--sentences", type=int, default=8, help="batch-1 sentences per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=600,
                    help="synthetic fine-tuning steps of the MDLMs before timing")
    ap.add_argument("--ar-train-steps", type=int, default=300,
                    help="the same for the baseline (it converges faster on this task)")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--only", default="", help="comma-separated row names to time")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--cache-dir", default="", help="reuse models trained by an earlier run")
    ap.add_argument("--words", default="4,8", help="min,max words of the timed sentences "
                    "(8 sign positions each)")
    ap.add_argument("--thresholds", default="0.9,0.7,0.5,0.3",
                    help="confidence thresholds of the thr-T rows ('' for none)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lr = args.lr or (3e-3 if args.profile == "cpu-tiny" else 2e-4)
    min_words, max_words = (int(w) for w in args.words.split(","))

    cfg, tok_cfg = build_config(args)
    sizes = tuple(tok_cfg.codebook_sizes)
    dims = (tok_cfg.code_dim,) * 3
    corpus = Corpus(sizes, args.large_batch, min_words, max_words)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    t2t_cfg = dataclasses.replace(cfg, text_attends_sign=False)
    builds = {
        "mdlm": lambda: MaDiSModel(cfg, codebook_sizes=sizes, code_dims=dims),
        "mdlm_t2t": lambda: MaDiSModel(t2t_cfg, codebook_sizes=sizes, code_dims=dims),
        "ar": lambda: ARBaseline(cfg, codebook_sizes=sizes, code_dims=dims),
    }
    models, losses = {}, {}
    for name, build in builds.items():
        torch.manual_seed(0)
        steps = args.ar_train_steps if name == "ar" else args.train_steps
        models[name], losses[name] = trained(name, build, corpus, args, steps, lr, device)
    mdlm, mdlm_t2t, ar = models["mdlm"], models["mdlm_t2t"], models["ar"]
    n_params = sum(p.numel() for p in mdlm.backbone.parameters())
    print(f"profile {args.profile} on {device} ({torch.get_num_threads()} threads): backbone "
          f"{n_params / 1e6:.1f}M parameters, N={cfg.num_positions}, K={cfg.num_steps}; "
          f"{args.train_steps}/{args.ar_train_steps} synthetic fine-tuning steps (MDLMs/baseline) "
          f"in {time.perf_counter() - t0:.0f} s, "
          f"last losses {', '.join(f'{k} {v:.3f}' for k, v in losses.items())}")

    plain = dict(logits_masked_only=False, text_kv_cache=False, drop_after_eos=False,
                 stage_kv_cache=False)
    rows = {
        "ar": (ar, dict(stop_at_eos=True)),
        "ar-full": (ar, dict(stop_at_eos=False)),
        "vanilla": (mdlm, dict(sampler="vanilla")),
        "utc-plain": (mdlm, dict(plain, sampler="utc")),
        "+masked-logits": (mdlm, dict(plain, sampler="utc", logits_masked_only=True)),
        "+text-kv": (mdlm_t2t, dict(plain, sampler="utc", text_kv_cache=True)),
        "+drop-eos": (mdlm, dict(plain, sampler="utc", drop_after_eos=True)),
        "+stage-kv": (mdlm, dict(plain, sampler="utc", stage_kv_cache=True)),
        "utc-all": (mdlm_t2t, dict(sampler="utc", logits_masked_only=True, text_kv_cache=True,
                                   drop_after_eos=True, stage_kv_cache=True)),
        "utc-all-exact": (mdlm_t2t, dict(sampler="utc", logits_masked_only=True, text_kv_cache=True)),
        "+length-first": (mdlm, dict(plain, sampler="utc", length_first=True)),
        "utc-length": (mdlm_t2t, dict(sampler="utc", logits_masked_only=True, text_kv_cache=True,
                                      drop_after_eos=True, length_first=True)),
        "utc-all+length": (mdlm_t2t, dict(sampler="utc", logits_masked_only=True,
                                          text_kv_cache=True, drop_after_eos=True,
                                          stage_kv_cache=True, length_first=True)),
    }
    exact = dict(sampler="utc", logits_masked_only=True, text_kv_cache=True)
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    for t in thresholds:
        rows[f"thr-{t:g}"] = (mdlm_t2t, dict(exact, threshold=t))
        rows[f"thr-{t:g}-one"] = (mdlm_t2t, dict(exact, threshold=t, threshold_floor="one"))
    if thresholds:
        t = thresholds[len(thresholds) // 2]
        rows[f"thr-{t:g}+drop"] = (mdlm_t2t, dict(exact, threshold=t, drop_after_eos=True))
        rows[f"thr-{t:g}+drop+len"] = (mdlm_t2t, dict(exact, threshold=t, drop_after_eos=True,
                                                     length_first=True))
        rows[f"thr-{t:g}+stage"] = (mdlm_t2t, dict(exact, threshold=t, stage_kv_cache=True))
        rows[f"thr-{t:g}+drop+stage"] = (mdlm_t2t, dict(exact, threshold=t, drop_after_eos=True,
                                                       stage_kv_cache=True))
    if args.only:
        keep = {"ar", *args.only.split(",")}
        rows = {k: v for k, v in rows.items() if k in keep}
    # which exact decoding each output-changing row is compared against
    reference = {"+drop-eos": "utc-plain", "+stage-kv": "utc-plain", "utc-all": "utc-all-exact",
                 "+text-kv": None, "+length-first": "utc-plain", "utc-length": "utc-all-exact",
                 "utc-all+length": "utc-all-exact"}
    reference.update({name: "utc-all-exact" for name in rows if name.startswith("thr-")})

    big_words = corpus.pool
    big = [" ".join(ws) for ws in big_words]
    sents = big[: args.sentences]
    truth = torch.stack([corpus.truth(ws, cfg.num_positions) for ws in big_words]).to(device)
    text_tokens = sum(len(mdlm.encode_texts([s], ["ase"]).ids[0]) for s in sents) / len(sents)
    with torch.no_grad():  # warm-up
        for m, kw in rows.values():
            m.generate(sents[:1], ["ase"], **kw)
    lat = {k: [] for k in rows}
    thr = {k: [] for k in rows}
    outputs = {}
    for _ in range(args.repeats):
        for name, (m, kw) in rows.items():
            total = 0.0
            toks = []
            for s in sents:
                dt, out = timed(lambda: m.generate([s], ["ase"], **kw), device)
                total += dt
                toks.append(out)
            lat[name].append(total / len(sents))
            outputs[name] = toks
            dt, out = timed(lambda: m.generate(big, ["ase"] * len(big), **kw), device)
            thr[name].append(len(big) / dt)
            outputs[name + "@big"] = out

    def same_share(a: torch.Tensor, b: torch.Tensor) -> float:
        """Share of the positions inside either sequence where both hold the same codes."""
        inside = (a[..., 0] >= 0) | (b[..., 0] >= 0)
        if not inside.any():
            return 1.0
        return float(((a == b).all(-1) & inside).sum() / inside.sum())

    def agreement(name: str) -> str:
        ref = reference.get(name, None)
        if name in ("ar", "ar-full"):
            return "-"
        if name not in reference or ref is None:
            return "exact"
        if ref + "@big" not in outputs:
            return "n/a"
        return f"{same_share(outputs[name + '@big'].tokens, outputs[ref + '@big'].tokens):.0%}"

    base_lat = statistics.median(lat["ar"])
    base_thr = statistics.median(thr["ar"])
    print(f"prompts ~{text_tokens:.0f} text tokens (incl. [EOS]); batch-1 latency over "
          f"{len(sents)} sentences and batch-{len(big)} throughput, median of {args.repeats}")
    from madis.metrics.sign_bleu import part_sibleu

    def bleu(out) -> dict[str, float]:
        return part_sibleu([t[t[:, 0] >= 0] for t in out.tokens.cpu()],
                           [t[t[:, 0] >= 0] for t in truth.cpu()])

    header = (f"{'row':<18}{'ms/sentence@1':>14}{'x ar':>7}{'sent/s@' + str(len(big)):>12}"
              f"{'x ar':>7}{'len':>6}{'acc':>6}{'agree':>8}{'steps':>7}{'SiBLEU4 b/h':>13}")
    print(header)
    print("-" * len(header))
    results = {}
    for name in rows:
        lt, tp = statistics.median(lat[name]), statistics.median(thr[name])
        length = float(outputs[name + "@big"].lengths.float().mean())
        agree = agreement(name)
        acc = same_share(outputs[name + "@big"].tokens, truth)
        used = outputs[name + "@big"].steps_used
        steps = float(used.float().mean()) if used is not None else float("nan")
        sb = bleu(outputs[name + "@big"])
        results[name] = {"latency_s": lt, "latency_ratio": lt / base_lat, "throughput": tp,
                         "throughput_ratio": tp / base_thr, "mean_length": length,
                         "accuracy": acc, "agree": agree, "steps_used": steps,
                         "sibleu4_body": sb["body"], "sibleu4_hands": sb["hands"]}
        print(f"{name:<18}{lt * 1000:>14.1f}{lt / base_lat:>7.2f}{tp:>12.1f}{tp / base_thr:>7.2f}"
              f"{length:>6.1f}{acc:>6.0%}{agree:>8}{steps:>7.1f}"
              f"{sb['body']:>7.1f}/{sb['hands']:<5.1f}")
    print(f"len: mean decoded length at batch {len(big)} (truth {float((truth[..., 0] >= 0).sum(1).float().mean()):.1f}); "
          "acc: share of positions equal to the synthetic truth; agree: share equal to exact "
          "UTC decoding of the same model")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "losses": losses, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
