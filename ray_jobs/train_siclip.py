"""Train SiCLIP on ground-truth (motion, text) pairs, then report its own test retrieval (paper 3.4).

    scripts/loopback.sh .venv/bin/python ray_jobs/train_siclip.py                  # cpu-tiny
    python ray_jobs/train_siclip.py --config paper --shards s3://corpus/shards \\
        --storage s3://runs --workers 8 --steps 20000

Set up: the shard manifest gives the motion format and z-score statistics. Train: the shared loop
(``madis.train.fit``) with ``SiCLIPTask``; a re-submitted job resumes its run. Save: the final
checkpoint's export is the evaluator that ``madis eval --siclip`` and the eval fleet load; its
sign-to-text / text-to-sign R@1/5/10 on the ground-truth test split (full set and the released
batches of 45) and the chance level are printed and stored as ``report.json`` in the run.
"""

from __future__ import annotations

import argparse

import numpy as np

from madis.config import load_tree, section
from madis.data.config import DataConfig
from madis.metrics.evaluation import load_references, siclip_retrieval
from madis.metrics.retrieval import chance_recall_at_k
from madis.metrics.siclip import SiCLIPConfig
from madis.metrics.siclip_task import SiCLIPTask
from madis.train import fit, write_report
from madis.train.jobargs import job_parser, job_train_config


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(__doc__, "data, siclip, train, train_siclip")
    p.add_argument("--shards", default=None,
                   help="motion shard root, dir or s3://... (default: data.shards)")
    p.add_argument("--split", default="test", help="split of the final report (default: test)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    tree = load_tree(args.config, args.overrides)
    data = section(tree, "data", DataConfig)
    shards = args.shards or data.shards
    task = SiCLIPTask.from_shards(section(tree, "siclip", SiCLIPConfig), shards,
                                  shuffle_buffer=data.shuffle_buffer)

    result = fit(task, job_train_config(tree, "siclip", args))

    model = SiCLIPTask.load(result.checkpoint.export_url)
    _, refs = load_references(task.shards, args.split)
    texts = [r.text for r in refs.values()]
    metrics = siclip_retrieval(model, [r.motion for r in refs.values()], texts)
    same_text = np.array([[a == b for b in texts] for a in texts])
    report = {
        "checkpoint": result.checkpoint.url, "step": result.checkpoint.step,
        "export": result.checkpoint.export_url, "split": args.split, "samples": len(texts),
        "retrieval": metrics,
        "chance": {f"siclip_s2t_R@{k}": {"value": chance_recall_at_k(same_text, k), "unit": "%"}
                   for k in (1, 5, 10)},
    }
    print(write_report(result.run_url, report))
    return report


if __name__ == "__main__":
    main()
