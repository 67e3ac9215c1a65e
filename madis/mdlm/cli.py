"""``madis generate TEXT --lang LANG``: text to sign tokens and motion with a trained model."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate sign tokens and motion for texts with a trained model",
        description="Decode each TEXT with a fine-tuned MaDiS checkpoint (UTC unmasking by "
                    "default), print its part tokens and write the motion (format units) as "
                    "OUT/<i>_<lang>_<text>.motion.npy, the tokens as .tokens.npy, and with --gif "
                    "a skeleton animation. The checkpoint defaults to the newest complete one of "
                    "the fine-tuning run in the profile's storage. With --split, every text of "
                    "that split of --shards is generated instead and OUT becomes a predictions "
                    "directory for `madis eval OUT --references SHARDS --split SPLIT`.")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--lang", action="append", metavar="LANG",
                   help="sign language code (e.g. ase, gsg); once for all texts or once per text")
    p.add_argument("--split", help="generate every text of this split of --shards (e.g. test)")
    p.add_argument("--shards", help="shard root of --split (dir or s3://; the tokenizer job's "
                                    "token shards also carry the reference tokens)")
    p.add_argument("--checkpoint", metavar="URL",
                   help="checkpoint directory or its export (directory or s3://...)")
    p.add_argument("--config", default="cpu-tiny", help="profile locating the default checkpoint")
    p.add_argument("--storage", help="run storage (default: the profile's train.storage_path)")
    p.add_argument("--run-name", help="run to take the newest checkpoint of "
                                      "(default: train_finetune.run_name)")
    p.add_argument("-o", "--out", default="generated", help="output directory (default: %(default)s)")
    p.add_argument("--gif", action="store_true", help="also render OUT/<name>.gif (madis.viz)")
    p.add_argument("--num-steps", type=int, help="unmasking steps K (default: the model's)")
    p.add_argument("--sampler", choices=("utc", "vanilla"), help="default: the model's")
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="for temperature > 0")
    p.add_argument("--threshold", type=float,
                   help="confidence-threshold decoding inside UTC stages (a probability, e.g. "
                        "0.9; default: the model's model.threshold, null = fixed schedule)")
    pin = p.add_argument_group("pinned tokens (infilling and editing, docs/decoding.md)")
    pin.add_argument("--pin", metavar="FILE.tokens.npy",
                     help="keep tokens of an earlier answer ([n, 3] codes, as generate writes "
                          "them) and generate the rest around them, for every TEXT")
    pin.add_argument("--pin-parts", default="body,lhand,rhand",
                     help="parts of --pin to keep (default: %(default)s)")
    pin.add_argument("--pin-positions", metavar="A:B",
                     help="positions of --pin to keep, a Python slice (0:8, :8, 8:; default all)")
    pin.add_argument("--pin-eos", type=int, metavar="POS",
                     help="end the sequence at POS ([EOS] pinned there; e.g. the length of --pin)")
    p.set_defaults(func=cmd_generate)


def default_checkpoint(args: argparse.Namespace) -> str:
    """Export URL of the newest complete checkpoint of the fine-tuning run.

    Raises:
        FileNotFoundError: the run holds no complete checkpoint.
    """
    from madis import runs
    from madis.config import load_tree

    run = runs.job_run(load_tree(args.config), "finetune", storage=args.storage,
                       run_name=args.run_name)
    try:
        return runs.newest_export(run)
    except FileNotFoundError as exn:
        raise FileNotFoundError(f"{exn}: run ray_jobs/finetune.py first or pass --checkpoint") \
            from None


def file_stem(i: int, lang: str, text: str) -> str:
    """``<i>_<lang>_<text>`` with characters other than ASCII letters, digits, '-' as '_'; a
    text with none of those is named by a hash of it (``text-<8 hex>``), so that different
    texts never share a file."""
    import hashlib

    safe = (re.sub(r"[^A-Za-z0-9-]+", "_", text).strip("_")[:40]
            or "text-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:8])
    return f"{i:02d}_{re.sub(r'[^A-Za-z0-9-]+', '_', lang)}_{safe}"


def read_pins(args: argparse.Namespace):
    """``[n', 3]`` int64 pins (-1 free) from ``--pin``, ``--pin-parts``, ``--pin-positions``
    and ``--pin-eos``, or None without them. Codebook ranges and N are the model's to check.

    Raises:
        ValueError: an unreadable or malformed file, an unknown part, a bad slice, positions
            outside the file, an [EOS] at a pinned position or before one.
    """
    import numpy as np

    from madis.motion.base import PARTS

    if args.pin is None:
        if args.pin_eos is None:
            if args.pin_positions or args.pin_parts != "body,lhand,rhand":
                raise ValueError("--pin-parts / --pin-positions need --pin FILE")
            return None
        rows = np.full((0, 3), -1, np.int64)
    else:
        try:
            codes = np.load(args.pin, allow_pickle=False)
        except (OSError, ValueError) as exn:
            raise ValueError(f"--pin {args.pin}: cannot read it ({exn})") from None
        if codes.ndim != 2 or codes.shape[1] != 3 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"--pin {args.pin}: expected [n, 3] integer codes (a .tokens.npy), "
                             f"got {codes.dtype} {list(codes.shape)}")
        parts = [x.strip() for x in args.pin_parts.split(",") if x.strip()]
        unknown = sorted(set(parts) - set(PARTS))
        if unknown or not parts:
            raise ValueError(f"--pin-parts: unknown part(s) {unknown or parts}; parts: {list(PARTS)}")
        n = len(codes)
        spec = args.pin_positions or ":"
        try:
            a, _, b = spec.partition(":")
            if not _:
                raise ValueError
            lo, hi = int(a) if a else 0, int(b) if b else n
        except ValueError:
            raise ValueError(f"--pin-positions {spec!r}: expected A:B (e.g. 0:8)") from None
        if not 0 <= lo < hi <= n:
            raise ValueError(f"--pin-positions {spec}: {args.pin} has positions 0..{n - 1}")
        rows = np.full((hi, 3), -1, np.int64)
        for part in parts:
            j = PARTS.index(part)
            rows[lo:hi, j] = codes[lo:hi, j]
    if args.pin_eos is not None:
        pinned = np.nonzero((rows >= 0).any(1))[0]
        if args.pin_eos < 0 or (len(pinned) and args.pin_eos <= pinned[-1]):
            raise ValueError(f"--pin-eos {args.pin_eos}: the end must come after the last pinned "
                             f"position ({int(pinned[-1]) if len(pinned) else 'none'})")
        if args.pin_eos >= len(rows):
            rows = np.concatenate([rows, np.full((args.pin_eos + 1 - len(rows), 3), -1)])
        rows[args.pin_eos, 0] = -3  # replaced by K_B, the body head's [EOS], once the model is known
    return rows


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from madis.mdlm.exports import export_dir, load_generator

    if args.split or args.shards:
        if not (args.split and args.shards) or args.texts or args.lang or args.gif:
            print("error: --split and --shards go together, without TEXT, --lang or --gif",
                  file=sys.stderr)
            return 2
    elif not args.texts or not args.lang:
        print("error: give TEXT... --lang LANG, or --split SPLIT --shards URL", file=sys.stderr)
        return 2
    langs = args.lang or []
    if len(langs) == 1:
        langs = langs * len(args.texts)
    texts = [t.strip() for t in args.texts]
    if any(not t for t in texts):
        print("error: a TEXT is empty or only whitespace", file=sys.stderr)
        return 2
    dest = Path(args.out)
    if dest.exists() and not dest.is_dir():
        print(f"error: -o {dest} exists and is not a directory", file=sys.stderr)
        return 2
    if args.split and dest.exists() and any(dest.iterdir()):
        from madis.metrics.predictions import PREDICTIONS_META

        if not (dest / PREDICTIONS_META).exists():
            print(f"error: -o {dest} holds other files; give an empty or new directory for "
                  f"the predictions", file=sys.stderr)
            return 2
    if not args.split and len(langs) != len(args.texts):
        print(f"error: {len(args.texts)} texts but {len(langs)} --lang values (give one, or one "
              f"per text)", file=sys.stderr)
        return 2
    if (args.pin is not None or args.pin_eos is not None) and args.split:
        print("error: --pin/--pin-eos go with TEXT, not --split", file=sys.stderr)
        return 2
    try:
        pins = read_pins(args)
    except ValueError as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    if args.threshold is not None and not args.threshold > 0:
        print(f"error: --threshold must be > 0, got {args.threshold}", file=sys.stderr)
        return 2
    if args.checkpoint and "://" not in args.checkpoint and not Path(args.checkpoint).exists():
        print(f"error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        export = export_dir(args.checkpoint) if args.checkpoint else default_checkpoint(args)
    except (FileNotFoundError, ValueError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    try:
        model = load_generator(export)
    except (FileNotFoundError, ValueError) as exn:
        print(f"error: cannot load a model from {export}: {exn}", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(args.seed)
    if args.split:
        return _generate_split(model, export, args, g)
    if pins is not None:
        pins = torch.as_tensor(pins)
        pins[..., 0] = torch.where(pins[..., 0] == -3, model.codebook_sizes[0], pins[..., 0])
        pins = pins[None].expand(len(texts), -1, -1)
    try:
        out = model.generate(texts, langs, num_steps=args.num_steps, sampler=args.sampler,
                             temperature=args.temperature, generator=g, pins=pins,
                             threshold=args.threshold)
    except ValueError as exn:  # pins outside the codebooks or longer than N
        print(f"error: {exn}", file=sys.stderr)
        return 2
    motions = model.decode_motion(out)
    fmt = model.tokenizer.motion_format
    fmt_name = fmt if isinstance(fmt, str) else fmt.name
    dest.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint: {export}")
    for i, (text, lang) in enumerate(zip(texts, langs)):
        n = int(out.lengths[i])
        tokens = out.tokens[i, :n].cpu().numpy()
        frames = motions[i]
        stem = dest / file_stem(i, lang, text)
        np.save(f"{stem}.motion.npy", frames.astype(np.float32), allow_pickle=False)
        np.save(f"{stem}.tokens.npy", tokens.astype(np.int16), allow_pickle=False)
        print(f"\n[{lang}] {text!r}: {n} sign positions, {len(frames)} frames, "
              f"{int(out.steps_used[i])} steps")
        for j, part in enumerate(("body", "lhand", "rhand")):
            print(f"  {part:5s} " + " ".join(str(int(t)) for t in tokens[:, j]))
        print(f"  motion [{frames.shape[0]}, {frames.shape[1]}] ({fmt_name}) -> {stem}.motion.npy"
              + ("  (empty generation: the still mean pose)" if n == 0 else ""))
        if args.gif:
            from madis.viz import render_motion

            gif = render_motion(frames, f"{stem}.gif", fmt_name, text=f"[{lang}] {text}")
            print(f"  animation -> {gif}")
    return 0



def _generate_split(model, export: str, args: argparse.Namespace, generator) -> int:
    """Every text of ``args.split`` of ``args.shards`` -> a predictions directory ``args.out``."""
    from madis.mdlm.predict import predict_references
    from madis.metrics.evaluation import load_references
    from madis.metrics.predictions import save_predictions

    from madis.data import storage
    from madis.metrics.predictions import PREDICTIONS_META

    fmt, refs = load_references(args.shards, args.split)
    preds, empty = predict_references(model, refs, num_steps=args.num_steps,
                                      sampler=args.sampler, temperature=args.temperature,
                                      generator=generator)
    dest = Path(args.out)
    if dest.exists():  # a previous predictions directory: replaced, never mixed with this one
        (dest / PREDICTIONS_META).unlink(missing_ok=True)
        for f in dest.glob("*.npy"):
            f.unlink()
    refs_url = args.shards if storage.is_s3(args.shards) else str(Path(args.shards).resolve())
    save_predictions(dest, preds, fmt, checkpoint=export, references=refs_url, split=args.split,
                     sampler=args.sampler or model.cfg.sampler,
                     num_steps=args.num_steps or model.cfg.num_steps,
                     temperature=model.cfg.temperature if args.temperature is None
                     else args.temperature, seed=args.seed)
    print(f"checkpoint: {export}\n{len(preds)} predictions of {args.shards} split {args.split} "
          f"({empty} empty) -> {args.out}\nscore them: madis eval {args.out} --references "
          f"{args.shards} --split {args.split}")
    return 0
