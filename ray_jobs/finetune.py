"""Fine-tune a pretrained MaDiS model on one dataset: UTC index masks, MoP, L_ft (paper 3.3).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python ray_jobs/finetune.py
    python ray_jobs/finetune.py --config paper --shards s3://corpus/csl/tokens \\
        --init s3://madis-runs/pretrain/checkpoint_00200000

Set up: the model starts from a pretraining checkpoint: ``--init`` (a checkpoint or its
export), else the newest COMPLETE checkpoint of the pretraining run
(``{storage}/{train_pretrain.run_name}``); ``--init none`` trains from scratch (the no-pretraining
baseline). The token shards must come from the tokenizer the pretraining used. Train: the shared
loop with ``MDLMTask(stage="finetune")``: text never masked, UTC index masks
(``model.utc_checkpoints``), ``L_ft = L_token + lambda (L_latent + L_phys)``; a re-submitted
job resumes its run (and keeps the pretraining checkpoint it started from). Save: exports with
the tokenizer copy and metadata (step, epoch, config, metrics, tokenizer and pretraining
checkpoints); ``report.json`` in the run.
"""

from __future__ import annotations

import argparse

from madis import runs
from madis.config import load_tree, section
from madis.data.config import DataConfig
from madis.mdlm.exports import export_dir
from madis.mdlm.task import MDLMTask, model_config
from madis.train import fit, latest_checkpoint, read_metadata
from madis.train.checkpoints import write_report
from madis.train.jobargs import job_parser, job_train_config


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(__doc__, "data, model, model_finetune, train, train_finetune "
                            "(and train_pretrain, train_tokenizer for the defaults)")
    p.add_argument("--shards", default=None, metavar="URL",
                   help="token shard root of the dataset (default: the tokenizer job's tokens)")
    p.add_argument("--init", default=None, metavar="URL",
                   help="pretraining checkpoint or export to start from; 'none' = from scratch "
                        "(default: newest complete checkpoint of the pretraining run)")
    return p.parse_args(argv)


def resolve_init(tree, args, finetune_run: str) -> str | None:
    """The export the fine-tuning starts from (see the module doc).

    Raises:
        FileNotFoundError: no complete pretraining checkpoint and no ``--init``.
    """
    if args.init:
        return None if args.init.lower() == "none" else export_dir(args.init)
    mine = latest_checkpoint(finetune_run)
    if mine is not None:  # a resumed run keeps the checkpoint it started from
        return read_metadata(mine.export_url)["task"]["init_from"]
    try:
        return runs.newest_export(runs.job_run(tree, "pretrain", storage=args.storage))
    except FileNotFoundError as exn:
        raise FileNotFoundError(f"{exn} (pretraining): run ray_jobs/pretrain.py first, or pass "
                                f"--init URL (or --init none)") from None


def main(argv=None) -> dict:
    args = parse_args(argv)
    tree = load_tree(args.config, args.overrides)
    train_cfg = job_train_config(tree, "finetune", args)
    if args.shards is None:
        args.shards = runs.tokens_url(tree, storage=args.storage)
    init = resolve_init(tree, args, runs.run_url(train_cfg))
    task = MDLMTask.from_shards(
        "finetune", model_config(tree, "finetune"), [args.shards], init_from=init,
        shuffle_buffer=section(tree, "data", DataConfig).shuffle_buffer,
        job={"profile": args.config, "overrides": list(args.overrides)})
    if init:
        pretrained_with = read_metadata(init)["task"].get("tokenizer_checkpoint")
        if pretrained_with != task.tokenizer:
            raise ValueError(f"{args.shards} was tokenized by {task.tokenizer} but the pretraining "
                             f"checkpoint {init} used {pretrained_with}: codes would not match")

    result = fit(task, train_cfg)

    report = {"checkpoint": result.checkpoint.url, "export": result.checkpoint.export_url,
              "step": result.checkpoint.step, "shards": task.shards, "init_from": init,
              "tokenizer_checkpoint": task.tokenizer, "metrics": result.checkpoint.metrics}
    print(write_report(result.run_url, report))
    return report


if __name__ == "__main__":
    main()
