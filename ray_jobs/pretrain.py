"""Tri-level pretraining of the MaDiS masked diffusion LM on token shards (paper 3.2).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python ray_jobs/pretrain.py
    python ray_jobs/pretrain.py --config paper --workers 8 --zero-stage 2 \\
        --shards s3://corpus/csl/tokens --shards s3://corpus/phoenix/tokens \\
        --shards s3://corpus/how2sign/tokens

Set up: the token shard sets (default: the tokens the tokenizer job wrote,
``{storage}/{train_tokenizer.run_name}/tokens``) must come from one tokenizer checkpoint, which
is loaded frozen for the latent and physical losses. Train: the shared loop (``madis.train.fit``)
with ``MDLMTask(stage="pretrain")`` on the combined train splits, streamed from storage; text and
sign positions both masked (``model.mask_text``), ``L_token``, ``L_latent`` and ``L_phys`` logged
separately; a re-submitted job resumes its run. Save: every checkpoint's export holds the model,
a copy of the tokenizer and metadata (step, epoch, config, metrics, tokenizer checkpoint); the
final one's val metrics are printed and stored as ``report.json`` in the run.
"""

from __future__ import annotations

import argparse

from madis import runs
from madis.config import load_tree, section
from madis.data.config import DataConfig
from madis.mdlm.task import MDLMTask, model_config
from madis.train import fit
from madis.train.checkpoints import write_report
from madis.train.jobargs import job_parser, job_train_config


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(__doc__, "data, model, model_pretrain, train, train_pretrain")
    p.add_argument("--shards", action="append", default=None, metavar="URL",
                   help="a token shard root, dir or s3://...; repeat it for each dataset "
                        "(default: the tokenizer job's tokens)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    tree = load_tree(args.config, args.overrides)
    train_cfg = job_train_config(tree, "pretrain", args)
    shards = args.shards or [runs.tokens_url(tree, storage=args.storage)]
    task = MDLMTask.from_shards(
        "pretrain", model_config(tree, "pretrain"), shards,
        shuffle_buffer=section(tree, "data", DataConfig).shuffle_buffer,
        job={"profile": args.config, "overrides": list(args.overrides)})

    result = fit(task, train_cfg)

    report = {"checkpoint": result.checkpoint.url, "export": result.checkpoint.export_url,
              "step": result.checkpoint.step, "shards": task.shards,
              "tokenizer_checkpoint": task.tokenizer, "metrics": result.checkpoint.metrics}
    print(write_report(result.run_url, report))
    return report


if __name__ == "__main__":
    main()
