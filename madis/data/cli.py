"""``madis data ...``: build, inspect, upload and round-trip shard sets."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from madis.data.config import DataConfig

DEFAULT_OUT = DataConfig.shards
DEFAULT_LOCAL_URL = DataConfig.upload_url
#: frame-count bins of the length histogram (the length rules keep T in 40..400)
LENGTH_BINS = (40, 80, 120, 160, 200, 300, 401)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="build, inspect and upload WebDataset shard sets",
                              description="Build, inspect and upload WebDataset shard sets.")
    sub = p.add_subparsers(dest="data_cmd", required=True, metavar="COMMAND")

    b = sub.add_parser("build-sample", help="build the sample corpus shards from spoken-to-signed",
                       description="Build the sample corpus (fingerspelling lexicon of the installed "
                                   "spoken-to-signed package) into WebDataset shards; skipped when "
                                   "an identical build is already there.")
    b.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument("--letter-rows", choices=("word_tempo", "stretch"), default="word_tempo",
                   help="letter clips as rows of letters at word tempo (default) or, as SOKE's "
                        "length rule, each stretched alone to 40 frames (docs/signing.md)")
    b.set_defaults(func=cmd_build_sample)

    t = sub.add_parser("build-pretrain", help="build the pretraining corpus (pseudo-words) shards",
                       description="Build the sample's pretraining corpus: fingerspelled "
                                   "pseudo-words composed from the same lexicon clips, none a "
                                   "sample word (madis.data.sample.build_pretrain_corpus), train "
                                   "split only; for ray_jobs/pretrain.py beside the sample "
                                   "(tokenize it with `madis data tokenize`). Skipped when an "
                                   "identical build is already there.")
    t.add_argument("--out", default="pretrain_shards", help="output directory (default: %(default)s)")
    t.add_argument("--words-per-language", type=int, default=None, metavar="K",
                   help="pseudo-words per sign language (default: "
                        "madis.data.sample.PRETRAIN_WORDS_PER_LANGUAGE)")
    t.add_argument("--force", action="store_true", help="rebuild even when up to date")
    t.set_defaults(func=cmd_build_pretrain)

    q = sub.add_parser("build-pose", help="build keypoints shards from your own .pose files",
                       description="Build keypoints shards from an index of .pose files (CSV, or "
                                   "JSON lines for *.jsonl): columns path, text, lang and optional "
                                   "split, start, end (seconds), fps, person. MediaPipe Holistic "
                                   "(full or reduced) and OpenPose files; see "
                                   "madis/data/posecorpus.py and README 'Your own .pose data'. "
                                   "Every row's outcome goes to OUT/build_report.json.")
    q.add_argument("index", metavar="INDEX", help="the index (local path or s3://)")
    q.add_argument("--out", required=True, help="output shard directory (local, or s3://: built "
                                                "in a temporary directory, then uploaded)")
    q.add_argument("--person", type=int, default=0,
                   help="person of each file, 0-based (default 0: the first; a row's person wins)")
    q.add_argument("--seed", type=int, default=0, help="split and order seed (default 0)")
    q.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of texts without a split column value that go to val (default 0.1)")
    q.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                   help="share that goes to test (default 0.1)")
    q.add_argument("--estimates-valid", action="store_true",
                   help="count body points estimated from the face (reduced holistic, OpenPose "
                        "mouth corners) as valid, so the tokenizer trains on those bodies")
    q.add_argument("--licence", default=None, help="licence of the corpus, for the manifest")
    q.add_argument("--strict", action="store_true",
                   help="write nothing (and exit 1) if any row is refused")
    q.add_argument("--force", action="store_true", help="replace another shard set at --out")
    q.set_defaults(func=cmd_build_pose)

    z = sub.add_parser("tokenize", help="encode motion shards with the tokenizer of a token set",
                       description="Encode the motion shards SHARDS with the tokenizer that wrote "
                                   "the token shards LIKE (its manifest's tokenizer_export) and "
                                   "write token shards to OUT, so that the MDLM jobs take both: "
                                   "ray_jobs/pretrain.py --shards LIKE --shards OUT.")
    z.add_argument("shards", metavar="SHARDS", help="motion shard root (dir or s3://)")
    z.add_argument("--like", required=True, help="token shard root written by the tokenizer job")
    z.add_argument("--out", required=True, help="token shard output (dir or s3://)")
    z.add_argument("--force", action="store_true", help="replace a shard set already at --out")
    z.set_defaults(func=cmd_tokenize)

    k = sub.add_parser("build-soke", help="build 133-d SMPL-X shards from SOKE-layout datasets",
                       description="Read How2Sign / CSL-Daily / Phoenix-2014T in SOKE's on-disk layout "
                                   "(see madis/data/soke.py) into one smplx133 shard set.")
    k.add_argument("--how2sign", metavar="DIR", help="How2Sign root (holds train/ val/ test/)")
    k.add_argument("--csl", metavar="DIR", help="CSL-Daily root (csl_clean.* and poses/)")
    k.add_argument("--phoenix", metavar="DIR", help="Phoenix-2014T root (phoenix14t.* and frames)")
    k.add_argument("--out", required=True, help="output directory")
    k.set_defaults(func=cmd_build_soke)

    sp = sub.add_parser("spell", help="fingerspell any word from the lexicon's clips (a reference)",
                        description="Compose a word from the fingerspelling lexicon's letter clips, "
                                    "as the sample corpus composes its words (longest-match units, "
                                    "3-frame cross-fade, length rules): the reference to put beside "
                                    "a generation (`madis render GEN.npy --reference REF.npy`).")
    sp.add_argument("word")
    sp.add_argument("--lang", required=True, help="sign-language code, e.g. ase")
    sp.add_argument("-o", "--out", required=True, metavar="REF.npy", help="motion [T, 165] .npy")
    sp.set_defaults(func=cmd_spell)

    i = sub.add_parser("inspect", help="counts per split and language, length histogram",
                       description="Read a shard set (directory, file:// or s3:// URL) and print "
                                   "sample counts per split and language and a length histogram.")
    i.add_argument("url", metavar="PATH_OR_URL")
    i.set_defaults(func=cmd_inspect)

    u = sub.add_parser("upload", help="copy a shard directory to s3://bucket/prefix",
                       description="Upload a shard directory to S3 (endpoint from AWS_ENDPOINT_URL); "
                                   "creates the bucket when missing; manifest.json goes last.")
    u.add_argument("dir", metavar="DIR")
    u.add_argument("url", metavar="S3_URL")
    u.set_defaults(func=cmd_upload)

    r = sub.add_parser("roundtrip", help="build/verify, upload to a local S3 server, stream back, summarise",
                       description="The embedded default's data step: build or verify the sample "
                                   "shards, start a local S3-compatible server on 127.0.0.1, upload, "
                                   "stream every split back through the training reader, check the "
                                   "counts against the manifest, print a summary, stop the server.")
    r.add_argument("--out", default=DEFAULT_OUT, help="shard directory (default: %(default)s)")
    r.add_argument("--url", default=DEFAULT_LOCAL_URL, help="destination (default: %(default)s)")
    r.set_defaults(func=cmd_roundtrip)


def cmd_build_sample(args: argparse.Namespace) -> int:
    from madis.data.sample import build_sample_corpus, is_up_to_date

    out = Path(args.out)
    rows = getattr(args, "letter_rows", "word_tempo")  # `roundtrip` builds the default
    if not args.force and is_up_to_date(out, letter_rows=rows):
        print(f"{out}/: sample shards up to date (checksums verified)")
        return 0
    m = build_sample_corpus(out, letter_rows=rows)
    print(f"{out}/: built " + ", ".join(f"{s} {v['samples']} samples in {len(v['shards'])} shards"
                                        for s, v in m["splits"].items()))
    return 0


def cmd_spell(args: argparse.Namespace) -> int:
    import numpy as np

    from madis.data.sample import spell

    motion, _, units = spell(args.word, args.lang)
    np.save(args.out, motion.astype(np.float32))
    print(f"{args.out}: {args.word!r} [{args.lang}] = {' + '.join(units)}, {len(motion)} frames")
    return 0


def cmd_build_pretrain(args: argparse.Namespace) -> int:
    from madis.data.sample import (PRETRAIN_WORDS_PER_LANGUAGE, build_pretrain_corpus,
                                   is_up_to_date, pretrain_fingerprint)

    k = PRETRAIN_WORDS_PER_LANGUAGE if args.words_per_language is None else args.words_per_language
    if k < 1:
        print(f"error: --words-per-language must be >= 1, got {k}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not args.force and is_up_to_date(out, pretrain_fingerprint(per_language=k)):
        print(f"{out}/: pretraining corpus up to date (checksums verified)")
        return 0
    if not args.force and _holds_other_shards(out, "pretrain-pseudo-words"):
        print(f"error: {out} holds another shard set; pick another --out or pass --force to "
              f"replace it", file=sys.stderr)
        return 2
    m = build_pretrain_corpus(out, per_language=k)
    print(f"{out}/: built {m['splits']['train']['samples']} pseudo-words ({k} per sign language) "
          f"in {len(m['splits']['train']['shards'])} shards")
    return 0


def cmd_build_pose(args: argparse.Namespace) -> int:
    import tempfile

    from madis.data import storage
    from madis.data.posecorpus import CORPUS, DEFAULT_LICENCE, REPORT, build_pose_corpus

    if args.person < 0:
        print(f"error: --person must be >= 0, got {args.person}", file=sys.stderr)
        return 2
    remote = storage.is_s3(args.out)
    if not args.force and not remote and _holds_other_shards(storage.local_path(args.out), CORPUS):
        print(f"error: {args.out} holds another shard set; pick another --out or pass --force to "
              f"replace it", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="madis-build-pose-") as tmp:
        out = tmp if remote else args.out
        try:
            result = build_pose_corpus(
                args.index, out, person=args.person, seed=args.seed,
                val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                strict=args.strict, estimates_valid=args.estimates_valid,
                licence=args.licence or DEFAULT_LICENCE)
        except (ValueError, FileNotFoundError) as exn:
            print(f"error: {exn}", file=sys.stderr)
            return 2
        if remote:
            storage.upload_dir(tmp, args.out)
    for o in result.outcomes:
        if o.outcome != "ok":
            print(f"row {o.row} {o.path}: refused: {o.reason}")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    n, used = len(result.outcomes), result.used
    print(f"{args.out}: {used} of {n} rows used, {n - used} refused; report "
          f"{storage.join(args.out, REPORT)}")
    if result.manifest is None:
        print(f"error: nothing written to {args.out}", file=sys.stderr)
        return 1
    print(f"{args.out}: " + ", ".join(f"{s} {v['samples']} samples in {len(v['shards'])} shards"
                                      for s, v in result.manifest["splits"].items()))
    return 0


def _holds_other_shards(out: Path, corpus: str | None) -> bool:
    """True when ``out`` has a shard manifest of something other than ``corpus`` (None: any)."""
    from madis.data.shards import read_manifest

    try:
        manifest = read_manifest(str(out))
    except FileNotFoundError:
        return False
    except ValueError:  # an unreadable manifest still marks a shard set
        return True
    return corpus is None or (manifest.get("build") or {}).get("corpus") != corpus


def cmd_tokenize(args: argparse.Namespace) -> int:
    from madis.data import storage
    from madis.tokenizer.token_shards import tokenize_like

    if not args.force and not storage.is_s3(args.out) and _holds_other_shards(
            storage.local_path(args.out), None):
        print(f"error: {args.out} already holds a shard set; pass --force to replace it",
              file=sys.stderr)
        return 2

    m = tokenize_like(args.shards, args.like, args.out)
    print(f"{args.out}: " + ", ".join(f"{s} {v['samples']}" for s, v in m["splits"].items())
          + f" (tokenizer {m['tokenizer_export']['url']})")
    return 0


def cmd_build_soke(args: argparse.Namespace) -> int:
    from madis.data.soke import build_soke_shards

    roots = {n: getattr(args, n) for n in ("how2sign", "csl", "phoenix") if getattr(args, n)}
    if not roots:
        print("error: give at least one of --how2sign, --csl, --phoenix", file=sys.stderr)
        return 2
    manifest, reports = build_soke_shards(args.out, roots)
    for name, rep in sorted(reports.items()):
        print(f"{name}: {rep.read} clips read, {len(rep.skipped)} skipped")
    print(f"{args.out}/: " + ", ".join(f"{s} {v['samples']}" for s, v in manifest["splits"].items()))
    return 0


def summarize(url: str, out=None) -> dict:
    """Read every split of ``url`` and print counts per split/language and a length histogram.

    Returns ``{split: {"samples": n, "languages": Counter, "lengths": Counter, "skipped": k}}``.
    """
    from madis.data.shards import ReadStats, iter_samples, read_manifest

    out = out or sys.stdout
    manifest = read_manifest(url)
    print(f"{url}: format {manifest['format']}, {manifest['fps']} fps", file=out)
    result = {}
    order = {"train": 0, "val": 1, "test": 2}
    for split in sorted(manifest["splits"], key=lambda s: (order.get(s, 3), s)):
        stats = ReadStats()
        langs, lengths, composed = Counter(), Counter(), 0
        for s in iter_samples(url, split, shuffle=False, stats=stats, manifest=manifest):
            langs[s["meta"]["lang"]] += 1
            composed += bool(s["meta"].get("composed"))
            T = len(s["motion"])
            lo = max(b for b in LENGTH_BINS[:-1] if b <= T) if T >= LENGTH_BINS[0] else 0
            lengths[lo] += 1
        n = sum(langs.values())
        result[split] = {"samples": n, "languages": langs, "lengths": lengths,
                         "skipped": stats.corrupt_shards, "bad_samples": stats.bad_samples}
        print(f"\n[{split}] {n} samples ({composed} composed) in {stats.shards_read} shards"
              + (f"; SKIPPED {stats.corrupt_shards} unreadable shards" if stats.corrupt_shards else ""),
              file=out)
        print("  per language: " + " ".join(f"{k}:{v}" for k, v in sorted(langs.items())), file=out)
        print("  length (frames):", file=out)
        for lo, hi in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
            c = lengths.get(lo, 0)
            print(f"    {lo:>3}-{hi - 1:<3} {c:>5} {'#' * min(60, (c * 60 + n - 1) // max(n, 1))}", file=out)
    return result


def cmd_inspect(args: argparse.Namespace) -> int:
    result = summarize(args.url)
    damaged = {k: v for k, v in result.items() if isinstance(v, dict)
               and (v.get("skipped") or v.get("bad_samples"))}
    if damaged:  # a shard set that reads short must not pass a scripted check
        print("error: unreadable shards or bad samples in " + ", ".join(sorted(damaged)),
              file=sys.stderr)
        return 1
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from madis.data import storage

    if not storage.is_s3(args.url):
        print(f"error: {args.url} is not an s3:// URL", file=sys.stderr)
        return 2
    written = storage.upload_dir(args.dir, args.url)
    print(f"uploaded {len(written)} files to {args.url} (endpoint {storage.endpoint()})")
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    from madis.data import storage
    from madis.data.s3server import LocalS3Server
    from madis.data.shards import read_manifest

    cmd_build_sample(argparse.Namespace(out=args.out, force=False))
    local = read_manifest(args.out)
    with LocalS3Server() as server:
        saved = {k: os.environ.get(k) for k in server.env}
        server.apply_env()
        try:
            storage.upload_dir(args.out, args.url)
            print(f"uploaded {args.out}/ to {args.url} on the local S3 server {server.endpoint}")
            got = summarize(args.url)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    bad = [s for s, v in local["splits"].items() if got[s]["samples"] != v["samples"] or got[s]["skipped"]]
    if bad:
        print(f"error: splits {bad} streamed back with different counts than the manifest", file=sys.stderr)
        return 1
    print("\nround trip OK: every sample streamed back from S3")
    return 0
