"""``madis eval PREDICTIONS --references SHARDS``: every metric of a predictions directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="DTW-JPE, SiBLEU and SiCLIP R@k of generated predictions",
        description="Evaluate a predictions directory (<key>.motion.npy [+ <key>.tokens.npy] and "
                    "predictions.json, see madis/metrics/predictions.py) against one split of a "
                    "shard set. Prints every metric with its unit; --json also writes them.")
    p.add_argument("predictions", metavar="PREDICTIONS", help="predictions directory")
    p.add_argument("--references", required=True, metavar="SHARDS",
                   help="shard root (directory, file:// or s3:// URL)")
    p.add_argument("--split", default="test", help="split of the shard set (default: %(default)s)")
    p.add_argument("--siclip", metavar="DIR", help="saved SiCLIP model: adds R@1/5/10")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="saved tokenizer to tokenize the references for SiBLEU when the shards "
                        "carry no tokens")
    p.add_argument("--smplx-model", metavar="DIR",
                   help="directory with SMPLX_NEUTRAL.npz (smplx133 data only)")
    p.add_argument("--partial", action="store_true",
                   help="evaluate the predicted keys only instead of requiring every reference")
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON here")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from madis.metrics.evaluation import evaluate

    motion_format = None
    if args.smplx_model:
        from madis.motion.smplx133 import SMPLX133

        motion_format = SMPLX133(model_dir=args.smplx_model)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        print(f"error: --json {args.json}: its directory does not exist", file=sys.stderr)
        return 2
    tokenizer = _check_tokenizer(args.predictions, args.tokenizer)
    try:
        results = evaluate(args.predictions, args.references, split=args.split,
                           motion_format=motion_format, siclip=args.siclip,
                           tokenizer=tokenizer, require_all=not args.partial)
    except (ValueError, KeyError, FileNotFoundError) as exn:
        print(f"madis eval: {exn}", file=sys.stderr)
        return 2
    width = max(len(k) for k in results)
    for name, m in results.items():
        value = m["value"]
        shown = f"{value:d}" if isinstance(value, int) else f"{value:.4f}"
        print(f"{name:{width}s}  {shown:>12s}  {m['unit']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


def _check_tokenizer(predictions: str, given: str | None) -> str | None:
    """The tokenizer that SiBLEU should tokenize references with: ``given``, else the copy in
    the export that made the predictions (``predictions.json`` ``checkpoint``, as ``madis
    generate`` records it). Warns when ``given`` is not that tokenizer: token ids of two
    codebooks do not compare."""
    import hashlib

    try:
        meta = json.loads((Path(predictions) / "predictions.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return given
    made_with = Path(str(meta.get("checkpoint", ""))) / "tokenizer"
    weights = made_with / "model.safetensors"
    if not weights.is_file():
        return given
    if given is None:
        print(f"references tokenized with the predictions' own tokenizer: {made_with}",
              file=sys.stderr)
        return str(made_with)
    other = Path(given) / "model.safetensors"

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    if other.is_file() and digest(other) != digest(weights):
        print(f"warning: --tokenizer {given} is not the tokenizer that made the predictions "
              f"({made_with}); SiBLEU then compares ids of different codebooks", file=sys.stderr)
    return given
