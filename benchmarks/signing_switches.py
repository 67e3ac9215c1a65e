"""Each of the switches that make the cpu-tiny model sign, put back one at a time (docs/signing.md).

Run (about an hour on 2 idle cores; rows run two at a time, one thread each)::

    .venv/bin/python benchmarks/signing_switches.py --out /tmp/switches
    .venv/bin/python benchmarks/signing_switches.py --out /tmp/switches --rows final sequential
    .venv/bin/python benchmarks/signing_switches.py --out /tmp/smoke train_tokenizer.steps=20 \
        train_pretrain.steps=10 train_finetune.steps=10          # a smoke test of the script

In-process and single-worker, so that many rows fit the budget: the tokenizer is trained with
:class:`madis.tokenizer.task.TokenizerTask`'s own loss, the MDLM with
:meth:`madis.mdlm.model.MaDiSModel.loss` (AdamW, the profile's learning rate, warm-up and cosine
decay, batch 32 = the jobs' two workers x 16), pretraining on the sample plus its pseudo-word
corpus then fine-tuning, as ``madis up`` does through Ray and DeepSpeed. Each row changes one
thing (``ROWS``); rows that change the data or the tokenizer build and train their own. Decoding
uses the sampler's defaults with a seeded generator. Reported per row, on the sample's test
split and on ``NOVEL_WORDS`` (words in no split): DTW-JPE, the stream figures with the
references' values, SiBLEU-4 and position-wise token accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

#: row -> (overrides, data variant); variants: "v3" (the sample as built), "stretch" (letters
#: stretched alone, SOKE's rule), "body" (tokenizer.hand_frame=body), "nopseudo" (pretraining on
#: the sample alone), "nopretrain" (fine-tuning only, the same total steps)
ROWS = {
    "final": ([], "v3"),
    "greedy": (["model.temperature=0"], "v3"),
    "first-eos": (["model.length_first=false"], "v3"),
    "paper-decoding": (["model.temperature=0", "model.length_first=false"], "v3"),
    "sequential": (["model.text_positions=sequential"], "v3"),
    "mask-text": (["model_pretrain.mask_text=true"], "v3"),
    "no-pseudo-words": ([], "nopseudo"),
    "no-pretraining": ([], "nopretrain"),
    "mop-text-scale": (["model.mop_init=text_scale"], "v3"),
    "dense-mop": (["model.embedding=dense"], "v3"),
    "hand-frame-body": (["tokenizer.hand_frame=body"], "body"),
    "stretched-letters": ([], "stretch"),
}
#: rows that only decode another row's model differently
DECODING_ONLY = {"greedy", "first-eos", "paper-decoding"}


def lr_factor(step: int, warmup: int, total: int) -> float:
    from madis.train.loop import lr_factor as shared

    return shared(step, warmup, total)


def train_tokenizer(shards: str, out: str, overrides: list[str], seed: int = 0) -> str:
    """Train the profile's tokenizer in-process on ``shards``; write token shards to ``out``."""
    from madis.config import load_tree, section
    from madis.data.shards import iter_batches
    from madis.tokenizer.config import TokenizerConfig
    from madis.tokenizer.task import TokenizerTask
    from madis.tokenizer.token_shards import write_token_shards
    from madis.train import train_config

    tree = load_tree("cpu-tiny", overrides)
    tcfg = train_config(tree, "tokenizer")
    task = TokenizerTask.from_shards(section(tree, "tokenizer", TokenizerConfig), shards)
    torch.manual_seed(seed)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, tcfg.warmup_steps, tcfg.steps))
    step, epoch = 0, 0
    model.train()
    while step < tcfg.steps:
        for batch in iter_batches(shards, "train", 2 * tcfg.batch_size, seed=seed, epoch=epoch):
            loss, _ = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            if step >= tcfg.steps:
                break
        epoch += 1
    model.eval()
    export = f"{out}-tokenizer"
    model.save_pretrained(export)
    write_token_shards(model, shards, out, extra={"tokenizer_export": {"url": export}})
    return out


def load_split(root: str, split: str) -> list[dict]:
    from madis.data.shards import iter_samples

    return list(iter_samples(root, split, shuffle=False, with_tokens=True))


def train_mdlm(model, data: list[dict], stage: str, overrides: list[str], seed: int) -> None:
    """The shared loss, one process: AdamW + warm-up + cosine, batch 32, the profile's steps."""
    from madis.config import load_tree
    from madis.data.shards import collate
    from madis.mdlm.task import truncate_sample
    from madis.train import train_config

    cfg = train_config(load_tree("cpu-tiny", overrides), stage)
    steps = cfg.steps
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, steps))
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    order: list[int] = []
    model.train()
    for _ in range(steps):
        if len(order) < 2 * cfg.batch_size:
            idx = list(range(len(data)))
            rng.shuffle(idx)
            order += idx
        pick, order = order[: 2 * cfg.batch_size], order[2 * cfg.batch_size:]
        batch = collate([truncate_sample(data[i], model.cfg.num_positions) for i in pick],
                        with_tokens=True)
        loss, _ = model.loss(batch, stage, generator=gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()


def novel_references(tokenizer) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
    """``NOVEL_WORDS`` and their references: the letters' clips composed, then encoded."""
    from madis.data.sample import NOVEL_WORDS, spell

    words = [(w, lg) for lg, ws in NOVEL_WORDS.items() for w in ws]
    refs = []
    for w, lg in words:
        motion, _, _ = spell(w, lg)
        with torch.no_grad():
            refs.append(tokenizer.encode(torch.as_tensor(motion)[None], None)[0].numpy())
    return words, refs


def evaluate(model, test: list[dict], **gen) -> dict:
    """DTW-JPE, stream figures, SiBLEU-4 and token accuracy on the test split; stream figures on
    the novel words."""
    from madis.data.shards import collate
    from madis.mdlm.task import token_accuracy
    from madis.metrics.evaluation import dtw_jpe_scores
    from madis.metrics.sign_bleu import part_sibleu
    from madis.metrics.streams import compare_streams
    from madis.motion import get_format

    model.eval()
    n = model.cfg.num_positions
    texts = [s["meta"]["text"] for s in test]
    langs = [s["meta"]["lang"] for s in test]
    refs = [s["tokens"][:n] for s in test]
    out = model.generate(texts, langs, generator=torch.Generator().manual_seed(0), **gen)
    toks = [out.tokens[i, : int(out.lengths[i])].numpy() for i in range(len(texts))]
    batch = collate([{**s, "tokens": s["tokens"][:n]} for s in test], with_tokens=True)
    hits, total = token_accuracy(out.tokens, batch["tokens"], batch["token_mask"])
    row = {f"dtw_{k}": v for k, v in dtw_jpe_scores(
        model.decode_motion(out), [s["motion"] for s in test], get_format("keypoints")).items()}
    row.update(compare_streams(toks, refs, langs, texts))
    row.update({f"sibleu4_{k}": v for k, v in part_sibleu(toks, refs, 4).items()})
    row["token_acc"] = 100.0 * hits / total
    words, novel_refs = novel_references(model.tokenizer)
    nt, nl = [w for w, _ in words], [lg for _, lg in words]
    out = model.generate(nt, nl, generator=torch.Generator().manual_seed(0), **gen)
    toks = [out.tokens[i, : int(out.lengths[i])].numpy() for i in range(len(nt))]
    row["novel"] = compare_streams(toks, [r[:n] for r in novel_refs], nl, nt)
    return row


#: overrides given on the command line, applied to every row (e.g. fewer steps)
EXTRA: list[str] = []


def data_for(variant: str, work: Path) -> tuple[str, str | None, list[str]]:
    """``(token shards, pretraining token shards or None, tokenizer overrides)`` of a variant,
    built under ``work`` unless there already."""
    from madis.data.sample import build_pretrain_corpus, build_sample_corpus, is_up_to_date
    from madis.data.sample import pretrain_fingerprint
    from madis.tokenizer.token_shards import tokenize_like

    rows = "stretch" if variant == "stretch" else "word_tempo"
    tok_ov = ["tokenizer.hand_frame=body"] if variant == "body" else []
    tag = {"stretch": "stretch", "body": "body"}.get(variant, "v3")
    shards, pre = work / f"shards-{rows}", work / "pretrain-motion"
    if not is_up_to_date(shards, letter_rows=rows):
        build_sample_corpus(shards, letter_rows=rows)
    if not is_up_to_date(pre, pretrain_fingerprint()):
        build_pretrain_corpus(pre)
    tokens, pretok = work / f"tokens-{tag}", work / f"pretrain-tokens-{tag}"
    if not (tokens / "manifest.json").exists():
        train_tokenizer(str(shards), str(tokens), [*tok_ov, *EXTRA])
    if not (pretok / "manifest.json").exists():
        tokenize_like(str(pre), str(tokens), str(pretok))
    return str(tokens), None if variant == "nopseudo" else str(pretok), tok_ov


def run_row(name: str, work: Path) -> dict:
    """Train (or reuse) and evaluate one row; returns its figures."""
    from madis.config import load_tree
    from madis.data.shards import read_manifest
    from madis.mdlm.exports import load_tokenizer
    from madis.mdlm.model import MaDiSModel
    from madis.mdlm.task import model_config

    overrides, variant = ROWS[name]
    overrides = [*overrides, *EXTRA]
    base = "final" if name in DECODING_ONLY else name
    tokens, pretok, tok_ov = data_for(variant, work)
    tree = load_tree("cpu-tiny", overrides + tok_ov)
    tok = load_tokenizer(read_manifest(tokens)["tokenizer_export"]["url"])
    saved = work / f"model-{base}.pt"
    t0 = time.perf_counter()
    model = MaDiSModel(model_config(tree, "finetune"), tok)
    if saved.exists():
        model.load_state_dict(torch.load(saved))
    else:
        torch.manual_seed(0)
        train = load_split(tokens, "train")
        if variant == "nopretrain":  # the same total steps, all of them fine-tuning
            from madis.train import train_config

            total = sum(train_config(tree, j).steps for j in ("pretrain", "finetune"))
            train_mdlm(model, train, "finetune", [*overrides, f"train_finetune.steps={total}"], 1)
        else:
            pre = MaDiSModel(model_config(tree, "pretrain"), tok)
            train_mdlm(pre, train + (load_split(pretok, "train") if pretok else []), "pretrain",
                       overrides, 0)
            model.load_state_dict(pre.state_dict())
            train_mdlm(model, train, "finetune", overrides, 1)
        torch.save(model.state_dict(), saved)
    row = evaluate(model, load_split(tokens, "test"))
    row["seconds"] = time.perf_counter() - t0
    return row


def markdown(rows: dict[str, dict]) -> str:
    head = ("| row | DTW-JPE body / hands ↓ | run share (ref) | distinct (ref) | length ratio | "
            "cross dist. (ref) | empty | SiBLEU-4 body / hands | token acc. % | novel words: "
            "run / distinct / length / cross (ref) |")
    lines = [head, "|---|" + "---:|" * 8 + "---|"]
    for name, r in rows.items():
        n = r["novel"]
        lines.append(
            f"| {name} | {r['dtw_body']:.2f} / {r['dtw_hands']:.2f} | {r['run_share']:.3f} "
            f"({r['ref_run_share']:.3f}) | {r['distinct']:.3f} ({r['ref_distinct']:.3f}) | "
            f"{r['length_ratio']:.2f} | {r['cross_distance']:.3f} ({r['ref_cross_distance']:.3f}) "
            f"| {int(r['empty'])} | {r['sibleu4_body']:.1f} / {r['sibleu4_hands']:.1f} | "
            f"{r['token_acc']:.1f} | {n['run_share']:.2f} ({n['ref_run_share']:.2f}) / "
            f"{n['distinct']:.2f} ({n['ref_distinct']:.2f}) / {n['length_ratio']:.2f} / "
            f"{n['cross_distance']:.2f} ({n['ref_cross_distance']:.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="working directory (data, models, results)")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--jobs", type=int, default=2, help="rows trained at once (one thread each)")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # a worker process: one row
    ap.add_argument("overrides", nargs="*", help="config overrides for every row")
    args = ap.parse_args(argv)
    EXTRA[:] = args.overrides
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.row:
        torch.set_num_threads(1)
        result = run_row(args.row, work)
        (work / f"row-{args.row}.json").write_text(json.dumps(result))
        return result
    t0 = time.perf_counter()
    for variant in sorted({ROWS[r][1] for r in args.rows} - {"nopseudo", "nopretrain"}):
        data_for(variant, work)  # tokenizers first, one at a time
    trained = [r for r in args.rows if r not in DECODING_ONLY]
    pending = trained + [r for r in args.rows if r in DECODING_ONLY]
    procs: list[subprocess.Popen] = []
    while pending or procs:
        # decoding-only rows wait for the model they decode
        ready = [r for r in pending if r not in DECODING_ONLY or (work / "model-final.pt").exists()]
        while ready and len(procs) < args.jobs:
            r = ready.pop(0)
            pending.remove(r)
            procs.append(subprocess.Popen([sys.executable, __file__, "--out", str(work),
                                           "--row", r, *args.overrides],
                                          env={**os.environ, "OMP_NUM_THREADS": "1"}))
        time.sleep(2)
        for p in list(procs):
            if p.poll() is not None:
                procs.remove(p)
                if p.returncode:
                    raise SystemExit(f"a row failed: {p.args}")
    rows = {r: json.loads((work / f"row-{r}.json").read_text()) for r in args.rows}
    table = markdown(rows)
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    (work / "table.md").write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
