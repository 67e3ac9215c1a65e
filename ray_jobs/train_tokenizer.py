"""Train the decoupled sign tokenizer, then write token shards for every split (paper 3.1).

    scripts/loopback.sh .venv/bin/python ray_jobs/train_tokenizer.py                # cpu-tiny
    python ray_jobs/train_tokenizer.py --config paper --shards s3://corpus/shards \\
        --storage s3://runs --workers 8 --zero-stage 2 --steps 20000

Set up: the shard manifest gives the motion format and z-score statistics; a format whose
joints need a file (SMPL-X: the licensed model) is checked now, so a node without it fails before
training, naming the path, instead of after it. Train: the shared
loop (``madis.train.fit``) with ``TokenizerTask``; a re-submitted job resumes its run. Save: the
final checkpoint's exported tokenizer encodes every split into token shards -- on a Ray worker
placed like a training worker (a GPU with ``train.use_gpu``), not on the driver's CPU -- and the
val reconstruction MPJPE and codebook use are printed and stored as ``report.json`` in the run.
"""

from __future__ import annotations

import argparse
import os

from madis import runs
from madis.config import load_tree, section
from madis.data.config import DataConfig
from madis.motion import get_format
from madis.tokenizer import TokenizerConfig
from madis.tokenizer.task import TokenizerTask
from madis.tokenizer.token_shards import encode_corpus
from madis.train import fit, run_on_worker, write_report
from madis.train.jobargs import job_parser, job_train_config


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(__doc__, "data, tokenizer, train, train_tokenizer")
    p.add_argument("--shards", default=None,
                   help="motion shard root, dir or s3://... (default: data.shards)")
    p.add_argument("--tokens", default=None,
                   help="token shard output (default: {storage_path}/{run_name}/tokens)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    tree = load_tree(args.config, args.overrides)
    data = section(tree, "data", DataConfig)
    shards = args.shards or data.shards
    tok_cfg = section(tree, "tokenizer", TokenizerConfig)
    train_cfg = job_train_config(tree, "tokenizer", args)
    task = TokenizerTask.from_shards(tok_cfg, shards, shuffle_buffer=data.shuffle_buffer)
    try:  # the val MPJPE after training needs joints: SMPL-X data needs the licensed model here
        get_format(task.motion_format).check_joints()
    except FileNotFoundError as exn:
        raise SystemExit(f"train_tokenizer: {exn}") from None

    result = fit(task, train_cfg)

    tokens_url = args.tokens or f"{result.run_url}/{runs.TOKENS_DIR}"
    print(f"[madis] writing token shards of every split to {tokens_url} (on a training worker)",
          flush=True)
    done = run_on_worker(train_cfg, encode_corpus, result.checkpoint.export_url, shards,
                         tokens_url, extra={"tokenizer_export": {
                             "url": result.checkpoint.export_url,
                             "step": result.checkpoint.step}})
    report = {"checkpoint": result.checkpoint.url, "step": result.checkpoint.step,
              "val": done["val"],
              "tokens": {"url": tokens_url, "samples": {
                  k: v["samples"] for k, v in done["manifest"]["splits"].items()}},
              "encoded_on": {"device": done["device"], "driver": done["pid"] == os.getpid()}}
    print(write_report(result.run_url, report))
    return report


if __name__ == "__main__":
    main()
