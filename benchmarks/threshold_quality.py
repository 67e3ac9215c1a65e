"""Confidence-threshold decoding on a model that signs: what it saves in steps and costs in quality
(issue 15, s. 3; docs/decoding.md).

Decodes the sample's test split and :data:`~madis.data.sample.NOVEL_WORDS` with a trained export
(``madis up`` leaves one in ``storage/finetune/checkpoint_*/export``) at the fixed UTC schedule and
at each ``--thresholds`` value, greedily and by sampling at the export's temperature (seeds
``0..--seeds-1``, mean), and prints per row: the mean ``steps_used``, SiBLEU-4 body / hands, the
stream figures (longest-run share, distinct tokens per position, length ratio) and the
agreement of the greedy tokens with the fixed schedule's. Target: SiBLEU-4 within 1 point of the
fixed schedule. Run::

    .venv/bin/python benchmarks/threshold_quality.py storage/finetune/checkpoint_00000600/export
    .venv/bin/python benchmarks/threshold_quality.py EXPORT --shards shards --thresholds 0.9 0.7
    .venv/bin/python benchmarks/threshold_quality.py EXPORT --thresholds 0.5 --stage-kv-cache

The references' tokens come from the export's own tokenizer applied to ``--shards`` (the motion
shards of the sample, built by ``madis data build-sample``), as the token shards are made.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def references(shards: str, tokenizer) -> dict[str, dict]:
    """``{"test": refs, "novel": refs}`` with tokens from ``tokenizer``."""
    from compare_quality import novel_references  # this directory: the novel words, tokenized

    from madis.metrics.evaluation import load_references
    from madis.metrics.predictions import Reference

    _, test = load_references(shards, "test")
    with torch.no_grad():
        test = {k: Reference(text=r.text, motion=r.motion, lang=r.lang,
                             tokens=tokenizer.encode(torch.as_tensor(r.motion)[None],
                                                     None)[0].cpu().numpy())
                for k, r in test.items()}
    return {"test": test, "novel": novel_references(tokenizer)}


def decode(model, refs: dict, **kwargs) -> tuple[dict, float, dict]:
    """``({key: Prediction}, mean steps_used, {key: tokens})`` for one setting."""
    from madis.metrics.predictions import Prediction

    keys = list(refs)
    out = model.generate([refs[k].text for k in keys], [refs[k].lang for k in keys], **kwargs)
    motions = model.decode_motion(out)
    preds, toks = {}, {}
    for i, k in enumerate(keys):
        n = int(out.lengths[i])
        toks[k] = out.tokens[i, :n].cpu().numpy().astype(np.int64)
        preds[k] = Prediction(motions[i], toks[k])
    return preds, float(out.steps_used.float().mean()), toks


def agreement(a: dict, b: dict) -> float:
    """Share of (position, part) tokens equal in two decodings, over the longer of each pair."""
    same = total = 0
    for k in a:
        n = max(len(a[k]), len(b[k]))
        m = min(len(a[k]), len(b[k]))
        same += int((a[k][:m] == b[k][:m]).sum())
        total += n * a[k].shape[1] if len(a[k]) else n * b[k].shape[1]
    return same / max(total, 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("export", help="a trained MaDiS export (UTC sampler)")
    ap.add_argument("--shards", default=str(REPO / "shards"), help="the sample's motion shards")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.95, 0.9, 0.8, 0.7, 0.5])
    ap.add_argument("--seeds", type=int, default=3, help="sampling seeds per row (mean)")
    ap.add_argument("--length-first", choices=("on", "off", "both"), default="both",
                    help="decide the length first (cpu-tiny) or the first-[EOS] rule (paper)")
    ap.add_argument("--stage-kv-cache", action="store_true",
                    help="threshold rows also use the approximate per-stage key/value cache "
                         "(model.stage_kv_cache; the fixed rows stay exact)")
    args = ap.parse_args(argv)

    from madis.metrics import evaluate
    from madis.mdlm.exports import load_generator

    torch.set_num_threads(1)
    model = load_generator(args.export)
    refs = references(args.shards, model.tokenizer)
    temperature = model.cfg.temperature
    print(f"{args.export}: sampler {model.cfg.sampler}, K = {model.cfg.num_steps}, sampling at "
          f"temperature {temperature}; test {len(refs['test'])} words, novel {len(refs['novel'])}")
    cols = ("sibleu4_body", "sibleu4_hands", "run_share", "distinct", "length_ratio")
    lfs = {"on": [True], "off": [False], "both": [True, False]}[args.length_first]
    print("| split | length first | threshold | decoding | steps used | SiBLEU-4 body | SiBLEU-4 hands | run share "
          "| distinct | length ratio | agree (greedy) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for split, lf in itertools.product(refs, lfs):
        r, fixed_greedy = refs[split], None
        for thr in [None, *args.thresholds]:
            for mode in ("greedy", f"T={temperature:g}"):
                seeds = [None] if mode == "greedy" else list(range(args.seeds))
                rows, steps = [], []
                for seed in seeds:
                    kw = {"threshold": thr, "length_first": lf,
                          "stage_kv_cache": args.stage_kv_cache and thr is not None}
                    if seed is None:
                        kw["temperature"] = 0.0
                    else:
                        kw["generator"] = torch.Generator().manual_seed(seed)
                    preds, used, toks = decode(model, r, **kw)
                    res = evaluate(preds, r, motion_format=model.tokenizer.motion_format)
                    rows.append({c: float(res[c]["value"]) for c in cols})
                    steps.append(used)
                    if seed is None and thr is None:
                        fixed_greedy = toks
                agree = f"{agreement(toks, fixed_greedy):.3f}" if seed is None else ""
                mean = {c: np.mean([x[c] for x in rows]) for c in cols}
                print(f"| {split} | {'on' if lf else 'off'} | {'fixed' if thr is None else thr} "
                      f"| {mode} | "
                      f"{np.mean(steps):.1f} | {mean['sibleu4_body']:.1f} | "
                      f"{mean['sibleu4_hands']:.1f} | {mean['run_share']:.3f} | "
                      f"{mean['distinct']:.3f} | {mean['length_ratio']:.2f} | {agree} |",
                      flush=True)


if __name__ == "__main__":
    sys.exit(main())
