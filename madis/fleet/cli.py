"""``madis best RUN``: the best checkpoint of a training run, as the eval fleet ranked it."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "best", help="print the best checkpoint of a run (the eval fleet's best.json)",
        description="Read {RUN}/best.json, written by the eval fleet (ray_jobs/eval_fleet.py), "
                    "and print the best checkpoint: step, metric value, export URL. Exit status "
                    "1 when the fleet has not ranked a checkpoint yet.")
    p.add_argument("run", metavar="RUN",
                   help="the run directory: {train.storage_path}/{run_name}, a directory or "
                        "s3://bucket/prefix/run (endpoint from AWS_ENDPOINT_URL)")
    p.add_argument("--history", action="store_true", help="also list every evaluated checkpoint")
    p.add_argument("--json", action="store_true", help="print the whole best.json")
    p.set_defaults(func=cmd_best)


def cmd_best(args) -> int:
    from madis.fleet.registry import best_url, read_best

    try:
        doc = read_best(args.run)
    except (OSError, ValueError) as exn:
        print(f"madis best: {exn}", file=sys.stderr)
        return 2
    if args.json and doc is not None:
        print(json.dumps(doc, indent=1))
        return 0 if doc["best"] else 1
    if doc is None:
        if "://" not in str(args.run) and not Path(args.run).is_dir():
            print(f"madis best: no run directory {args.run}", file=sys.stderr)
            return 2
        print(f"madis best: no {best_url(args.run)} yet: run ray_jobs/eval_fleet.py beside the "
              f"training job", file=sys.stderr)
        return 1
    best = doc["best"]
    if best is None:
        print(f"no checkpoint of {args.run} ranked by {doc['metric']} yet "
              f"({len(doc['history'])} evaluated, none with a finite value)")
    else:
        print(f"best: step {best['step']}  {doc['metric']} = {best['value']:.4g} ({doc['mode']})")
        print(f"export: {best['export_url']}")
    if args.history:
        for h in doc["history"]:
            value = "-" if h["value"] is None else f"{h['value']:.4g}"
            note = f"  {h['error']}" if h["status"] == "failed" else ""
            print(f"  step {h['step']:>8}  {h['status']:<6} {value:>10}  {h['evaluated_at']}{note}")
    return 0 if best else 1
