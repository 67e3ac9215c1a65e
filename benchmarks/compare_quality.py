"""Quality on the sample test split: fine-tuned MaDiS against the same budget without pretraining
and against a nearest-neighbour baseline, all scored by the same code in one run (issue 6 s. 4).

Run (inside the loopback namespace; about 25 minutes on 2 idle cores with the cpu-tiny profile)::

    scripts/loopback.sh .venv/bin/python benchmarks/compare_quality.py
    scripts/loopback.sh .venv/bin/python benchmarks/compare_quality.py --tokens s3://b/tokens \\
        --json quality.json model.num_positions=100        # reuse token shards, override config

Steps, all through the real jobs (``ray_jobs/*.py``, the shared loop on a local Ray cluster):

1. the local S3-compatible server; the sample shards uploaded to it;
2. ``train_tokenizer.py`` writes token shards to S3 (skipped with ``--tokens``);
3. ``pretrain.py`` then ``finetune.py --init <pretraining checkpoint>``: **MaDiS**;
4. ``finetune.py --init none --steps P+F``: **no pretraining**, the same number of optimizer
   steps, data, schedule shape and model, every step spent on the fine-tuning objective; and
   the same with ``--steps F`` (the fine-tuning budget alone);
5. **nearest neighbour**: for each test text, the training clip of the same sign language whose
   text has the smallest character edit distance (Levenshtein, rapidfuzz; ties: the closer
   length, then the smaller key); its motion and tokens are the prediction. A second row
   decodes that clip's tokens instead, so that it passes through the tokenizer like the models;
6. **the test clips' own tokens, decoded**: what a token generator gets at best from this
   tokenizer (its DTW-JPE is the floor of every model row; SiBLEU and accuracy are 100).

Every row goes through :func:`madis.metrics.evaluate` (DTW-JPE over the keypoint joints,
body and hands, in shoulder widths; SiBLEU-4 and BLEU-1 of the token streams) plus the
position-wise token accuracy of :func:`madis.mdlm.task.token_accuracy` (the share of reference
positions x parts whose generated token is the reference token at the same position).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
METRICS = (("dtw_jpe_body", "DTW-JPE body ↓"), ("dtw_jpe_hands", "DTW-JPE hands ↓"),
           ("sibleu4_body", "SiBLEU-4 body ↑"), ("sibleu4_hands", "SiBLEU-4 hands ↑"),
           ("bleu1_body", "BLEU-1 body ↑"), ("bleu1_hands", "BLEU-1 hands ↑"),
           ("token_acc", "token acc. % ↑"))


def nearest_neighbour(train: dict, test: dict) -> dict[str, str]:
    """For each test key, the train key whose text is closest (see the module doc, step 5).

    Args:
        train, test: ``{key: Reference}`` (``text``, ``lang``).
    Returns:
        ``{test key: train key}``.
    """
    from rapidfuzz.distance import Levenshtein

    by_lang: dict[str, list[str]] = {}
    for k, r in train.items():
        by_lang.setdefault(r.lang, []).append(k)
    out = {}
    for key, ref in test.items():
        pool = by_lang.get(ref.lang) or list(train)
        out[key] = min(pool, key=lambda k: (Levenshtein.distance(ref.text, train[k].text),
                                            abs(len(ref.text) - len(train[k].text)), k))
    return out


def token_accuracy_of(predictions: dict, references: dict) -> float:
    """:func:`~madis.mdlm.task.token_accuracy` over a whole split, in percent."""
    from madis.mdlm.task import token_accuracy

    hits = total = 0
    for key, ref in references.items():
        r = torch.as_tensor(np.asarray(ref.tokens, np.int64))[None]
        g = torch.as_tensor(np.asarray(predictions[key].tokens, np.int64))[None]
        h, t = token_accuracy(g, r, torch.ones(r.shape[:2], dtype=torch.bool))
        hits, total = hits + h, total + t
    return 100.0 * hits / max(total, 1)


def length_bias(predictions: dict, references: dict) -> float:
    """Mean generated minus reference length in sign positions (negative: too short)."""
    return float(np.mean([len(predictions[k].tokens) - len(r.tokens)
                          for k, r in references.items()]))


def score(predictions: dict, references: dict, motion_format: str) -> dict[str, float]:
    """The table's metrics of one row (``evaluate`` plus token accuracy)."""
    from madis.metrics import evaluate

    res = evaluate(predictions, references, motion_format=motion_format)
    out = {k: float(v["value"]) for k, v in res.items()}
    out["token_acc"] = token_accuracy_of(predictions, references)
    return out


def baseline_rows(token_url: str) -> tuple[dict, dict, str]:
    """References of the test split and the two reference-free rows (nearest neighbour,
    tokenizer reconstruction): ``(references, {row: predictions}, motion format)``."""
    from madis.metrics.evaluation import load_references
    from madis.metrics.predictions import Prediction
    from madis.mdlm.task import load_tokenizer
    from madis.data.shards import read_manifest

    fmt, test = load_references(token_url, "test")
    _, train = load_references(token_url, "train")
    nn_of = nearest_neighbour(train, test)
    nn = {k: Prediction(np.asarray(train[j].motion), np.asarray(train[j].tokens))
          for k, j in nn_of.items()}
    tokenizer = load_tokenizer(read_manifest(token_url)["tokenizer_export"]["url"])
    def decoded(tokens):
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(tokens, np.int64))[None]
            return Prediction(tokenizer.decode(t)[0].numpy(), np.asarray(tokens))

    return test, {
        "nearest neighbour: its motion": nn,
        "nearest neighbour: its tokens, decoded": {k: decoded(train[j].tokens)
                                                   for k, j in nn_of.items()},
        "test clips' own tokens, decoded (floor)": {k: decoded(r.tokens) for k, r in test.items()},
    }, fmt


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    head = "| row | " + " | ".join(label for _, label in METRICS) + " |"
    line = "|---|" + "---:|" * len(METRICS)
    body = [f"| {name} | " + " | ".join(f"{r.get(k, float('nan')):.2f}" for k, _ in METRICS) + " |"
            for name, r in rows.items()]
    return "\n".join([head, line, *body])


def _job(name: str):
    """A job script of ``ray_jobs/`` as a module (its ``main(argv)`` runs the job here)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "ray_jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pretrain_tokens(token_url: str, out: str, per_language: int, local_dir: str) -> str:
    """Build the pretraining corpus (:func:`madis.data.sample.build_pretrain_corpus`) in
    ``local_dir``, upload it next to ``out`` and tokenize it with the tokenizer that wrote
    ``token_url`` (its manifest's ``tokenizer_export``), so that pretraining can mix both.

    Returns:
        the token shard root ``out``.
    """
    from madis.data import storage as st
    from madis.data.sample import build_pretrain_corpus
    from madis.tokenizer.token_shards import tokenize_like

    build_pretrain_corpus(local_dir, per_language=per_language)
    motion_url = f"{out.rstrip('/')}-motion"
    st.upload_dir(local_dir, motion_url)
    tokenize_like(motion_url, token_url, out)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="cpu-tiny")
    ap.add_argument("--tokens", help="token shard root to reuse (skips the tokenizer job)")
    ap.add_argument("--storage", help="run storage (default: a fresh temporary directory)")
    ap.add_argument("--pseudo-words", type=int, default=None, metavar="K",
                    help="pseudo-words per sign language in the pretraining corpus (default: "
                         "madis.data.sample.PRETRAIN_WORDS_PER_LANGUAGE; 0: pretrain on the "
                         "sample alone)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("overrides", nargs="*", help="config overrides for every job")
    args = ap.parse_args(argv)

    from madis.config import load_tree
    from madis.data import storage as st
    from madis.data.s3server import LocalS3Server
    from madis.data.sample import PRETRAIN_WORDS_PER_LANGUAGE, build_sample_corpus, is_up_to_date
    from madis.mdlm.predict import predict_references
    from madis.mdlm.task import load_generator
    from madis.train import train_config

    tree = load_tree(args.config, args.overrides)
    steps = {j: train_config(tree, j).steps for j in ("pretrain", "finetune")}
    if not (steps["pretrain"] and steps["finetune"]):
        raise SystemExit("set train_pretrain.steps and train_finetune.steps (the budget compared)")
    pseudo = PRETRAIN_WORDS_PER_LANGUAGE if args.pseudo_words is None else args.pseudo_words
    storage = args.storage or tempfile.mkdtemp(prefix="madis-quality-")
    common = ["--config", args.config, "--storage", storage, *args.overrides]
    t0 = time.perf_counter()
    timings = {}
    with LocalS3Server() as server, tempfile.TemporaryDirectory(prefix="madis-pretrain-") as tmp:
        server.apply_env()
        tokens = args.tokens
        if tokens and not st.is_s3(tokens):  # the jobs stream from object storage
            st.upload_dir(tokens, "s3://quality/tokens")
            tokens = "s3://quality/tokens"
        if tokens is None:
            if not is_up_to_date(REPO / "shards"):
                build_sample_corpus(REPO / "shards")
            st.upload_dir(REPO / "shards", "s3://quality/shards")
            tokens = "s3://quality/tokens"
            _job("train_tokenizer").main(["--config", args.config, "--shards",
                                          "s3://quality/shards", "--tokens", tokens,
                                          f"train.storage_path={storage}", *args.overrides])
            timings["tokenizer"] = time.perf_counter() - t0
        pre_shards = ["--shards", tokens]
        if pseudo:
            t = time.perf_counter()
            pre_shards += ["--shards", pretrain_tokens(tokens, "s3://quality/pretrain-tokens",
                                                       pseudo, tmp)]
            timings["pretraining corpus (build + tokenize)"] = time.perf_counter() - t
        t = time.perf_counter()
        pre = _job("pretrain").main([*pre_shards, "--run-name", "q-pretrain", *common])
        timings["pretrain"] = time.perf_counter() - t
        t = time.perf_counter()
        fin = _job("finetune").main(["--shards", tokens, "--run-name", "q-finetune",
                                     "--init", pre["checkpoint"], *common])
        timings["finetune"] = time.perf_counter() - t
        corpus = f"sample + {pseudo}/language pseudo-words" if pseudo else "sample"
        trained = {f"MaDiS: pretrain {steps['pretrain']} ({corpus}) + finetune "
                   f"{steps['finetune']} steps": fin}
        for budget in (steps["pretrain"] + steps["finetune"], steps["finetune"]):
            t = time.perf_counter()
            trained[f"no pretraining: finetune {budget} steps"] = _job("finetune").main(
                ["--shards", tokens, "--run-name", f"q-scratch-{budget}", "--init", "none",
                 "--steps", str(budget), *common])
            timings[f"no-pretraining finetune {budget}"] = time.perf_counter() - t

        refs, rows_pred, fmt = baseline_rows(tokens)
        rows, empties, lengths = {}, {}, {}
        for name, rep in trained.items():
            model = load_generator(rep["export"])
            preds, empties[name] = predict_references(model, refs)
            rows[name] = score(preds, refs, fmt)
            lengths[name] = length_bias(preds, refs)
        for name, preds in rows_pred.items():
            rows[name] = score(preds, refs, fmt)
            lengths[name] = length_bias(preds, refs)
    timings["total"] = time.perf_counter() - t0
    table = markdown_table(rows)
    print(f"\nsample test split: {len(refs)} clips; config {args.config} {' '.join(args.overrides)}")
    print(table)
    print("empty generations: " + ", ".join(f"{k}: {v}" for k, v in empties.items()))
    print("mean length - reference length (positions): "
          + ", ".join(f"{k}: {v:+.1f}" for k, v in lengths.items()))
    print("wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    result = {"rows": rows, "empty_generations": empties, "length_bias": lengths,
              "timings_s": timings, "config": args.config, "overrides": args.overrides,
              "pseudo_words_per_language": pseudo, "storage": storage, "tokens": tokens,
              "samples": len(refs)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
