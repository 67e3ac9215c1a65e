"""The paper's Table 1 (and Tables 3-5) on the sample: every row through the real jobs, N seeds.

Every trained row goes through the real jobs, over several seeds, and every row is scored by the
same code (issue 13, s. 5).

Run (inside the loopback namespace)::

    scripts/loopback.sh .venv/bin/python benchmarks/compare_quality.py               # Table 1, 3 seeds
    scripts/loopback.sh .venv/bin/python benchmarks/compare_quality.py --seeds 1 \\
        train_pretrain.steps=20 train_finetune.steps=20                             # a smoke run
    scripts/loopback.sh .venv/bin/python benchmarks/compare_quality.py --tokens s3://b/tokens \\
        --ablations --storage quality-runs --json q.json --markdown q.md            # + Tables 3-5

Rows (``--rows`` picks some; ``--ablations`` adds every ``configs/ablations/*.yaml``):

* ``ar`` -- **AR baseline**: ``model.architecture=ar`` (causal Qwen3 of the same sizes,
  SOKE-style multi-head decoding, :class:`~madis.mdlm.ar.ARBaseline`), ``finetune.py --init
  none`` for P + F steps (P, F: the profile's ``train_pretrain.steps`` and
  ``train_finetune.steps``).
* ``mdlm`` -- **MDLM baseline**: no pretraining, no UTC (``model.utc_checkpoints=[]``,
  ``model.sampler=vanilla``), ``model.embedding=simple_avg``; ``finetune.py --init none`` for
  P + F steps.
* ``madis`` -- **MaDiS**, the profile's recipe: ``pretrain.py`` (P steps) then ``finetune.py
  --init <that checkpoint>`` (F steps).
* ``nn`` / ``nn_tokens`` -- **nearest neighbour**: for each test text, the training clip of the
  same sign language whose text has the smallest character edit distance (Levenshtein; ties:
  the closer length, then the smaller key); its motion, or its tokens decoded by the tokenizer.
* ``floor`` -- the test clips' own tokens decoded: what a token generator gets at best from this
  tokenizer (SiBLEU and accuracy 100; its DTW-JPE is the floor of every model row).
* ``t3-*``, ``t4-*``, ``t5-*`` -- an ablation config: ``pretrain.py`` then ``finetune.py`` with
  that file as ``--config``.

Every config is read from the profile (``--config``) or the ablation file, with the command's
``section.field=value`` overrides on top: nothing here fixes a recipe. The benchmark adds only
where runs go (``--storage``), ``train.seed``, and a final checkpoint per job
(``train_<job>.checkpoint_every=0``, before the overrides, so an override wins).

One tokenizer serves every row and seed (``ray_jobs/train_tokenizer.py`` once; ``--tokens``
reuses a token shard set). A seed sets ``train.seed`` of every job (initial weights, batch
order, masks) and seeds decoding. Runs are named by a digest of everything that shapes them
(resolved model and train sections, shards, start checkpoint, seed): two rows that resolve to
the same run train it once (a Table 4 row shares MaDiS's pretraining), and with the same
``--storage`` a second invocation reuses every finished run. ``--decode temperature=0``
re-scores those runs decoded another way (here greedily, the paper's decoding) without
training anything.

Scored on the sample's test split (76 composed words in no other split) and on
:data:`~madis.data.sample.NOVEL_WORDS` (20 words in no split and no word list, composed from
the letter clips as the sample's words are), each with :func:`madis.metrics.evaluate`: DTW-JPE
body / hands (shoulder widths), SiBLEU-4 body / hands, the stream figures (longest-run share,
distinct tokens per position, length ratio, cross-input edit distance, empty generations; the
references' own values in the ``references`` row) and ``signing_hands``; plus the position-wise
token accuracy of :func:`madis.mdlm.task.token_accuracy`. Output: a markdown table per split
(mean ± sd over seeds), the JSON of every seed's numbers (``--json``), and the time of each part.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from madis.data.sample import PRETRAIN_WORDS_PER_LANGUAGE

REPO = Path(__file__).resolve().parent.parent

ABLATIONS = REPO / "configs" / "ablations"

#: (metric key, column label, decimals); the table's columns in order
COLUMNS = (("dtw_jpe_body", "DTW-JPE body ↓", 2), ("dtw_jpe_hands", "DTW-JPE hands ↓", 2),
           ("sibleu4_body", "SiBLEU-4 body ↑", 2), ("sibleu4_hands", "SiBLEU-4 hands ↑", 2),
           ("token_acc", "token acc. % ↑", 2), ("run_share", "run share", 3),
           ("distinct", "distinct / pos.", 3), ("length_ratio", "length ratio", 2),
           ("cross_distance", "cross-input dist.", 3), ("empty_generations", "empty", 1),
           ("signing_hands", "signing hands ↑", 2))
#: the stream figures whose reference value the ``references`` row shows
STREAM_FIGURES = ("run_share", "distinct", "cross_distance")
MAIN_ROWS = ("ar", "mdlm", "madis", "nn", "nn_tokens", "floor")
SPLITS = ("test", "novel")
#: TrainConfig fields that do not change what a run learns (left out of its digest)
NOT_LEARNING = ("run_name", "storage_path", "log_dir", "progress", "log_every", "keep_checkpoints",
                "checkpoint_every", "max_failures", "prefetch_batches", "tensorboard_sync_s",
                "collective_timeout_s", "resources_per_worker")
#: ModelConfig fields that only say how a trained model decodes (``--decode`` may set them)
DECODING = ("sampler", "num_steps", "temperature", "logits_masked_only", "text_kv_cache",
            "drop_after_eos", "length_first", "stage_kv_cache", "threshold", "threshold_floor")
#: ModelConfig fields pretraining's weights do not depend on (UTC masks and lambda are
#: fine-tuning's, the rest decoding's): left out of a pretraining run's digest, so that Table 4's
#: rows share one pretraining run, as configs/ablations/README.md says they do
NOT_IN_PRETRAINING = ("utc_checkpoints", "finetune_lambda", *DECODING)


@dataclass
class TrainedRow:
    """A row whose generator is trained.

    Attributes:
        name: row key (``--rows``); label: its name in the table.
        config: profile name or YAML path of both jobs.
        pretrain: pretraining then fine-tuning from it; else ``finetune.py --init none`` for
            the pretraining plus fine-tuning steps.
        overrides: the row's own overrides (before the command's).
    """

    name: str
    label: str
    config: str
    pretrain: bool
    overrides: list[str] = field(default_factory=list)


def main_rows(config: str) -> dict[str, TrainedRow]:
    """Table 1's trained rows on the profile ``config``."""
    return {
        "ar": TrainedRow("ar", "AR baseline (causal Qwen3, multi-head; same size and steps)",
                         config, False, ["model.architecture=ar"]),
        "mdlm": TrainedRow("mdlm", "MDLM baseline (no pretraining, no UTC, simple average)",
                           config, False, ["model.utc_checkpoints=[]", "model.sampler=vanilla",
                                           "model.embedding=simple_avg"]),
        "madis": TrainedRow("madis", "MaDiS (pretraining + UTC + MoP)", config, True),
    }


def ablation_rows() -> dict[str, TrainedRow]:
    """A row per ``configs/ablations/*.yaml``, labelled by its leading comment up to the
    first ``;`` (e.g. "Table 4: UTC checkpoints [] for fine-tuning masks and the sampler")."""
    rows = {}
    for path in sorted(ABLATIONS.glob("*.yaml")):
        lines = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("# ").strip())
        first = " ".join(lines).split(";")[0].rstrip(".")
        rows[path.stem] = TrainedRow(path.stem, f"{path.stem}: {first}", str(path), True)
    return rows


REFERENCE_FREE = {"nn": "nearest neighbour: its motion",
                  "nn_tokens": "nearest neighbour: its tokens, decoded",
                  "floor": "test clips' own tokens, decoded (floor)"}


def nearest_neighbour(train: dict, test: dict) -> dict[str, str]:
    """For each test key, the train key whose text is closest (see the module doc).

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
        g = torch.as_tensor(np.asarray(predictions[key].tokens, np.int64)).reshape(1, -1, 3)
        h, t = token_accuracy(g, r, torch.ones(r.shape[:2], dtype=torch.bool))
        hits, total = hits + h, total + t
    return 100.0 * hits / max(total, 1)


def score(predictions: dict, references: dict, motion_format: str) -> dict[str, float]:
    """Every metric of one row on one split: :func:`madis.metrics.evaluate` (values only) plus
    ``token_acc``."""
    from madis.metrics import evaluate

    res = evaluate(predictions, references, motion_format=motion_format)
    out = {k: float(v["value"]) for k, v in res.items()}
    out["token_acc"] = token_accuracy_of(predictions, references)
    return out


def novel_references(tokenizer) -> dict:
    """``{key: Reference}`` of :data:`~madis.data.sample.NOVEL_WORDS`: the words composed as the
    sample builder composes its words, stored at the shards' float16 precision, tokenized by
    ``tokenizer`` as the token shards are."""
    from madis.data.sample import novel_word_samples
    from madis.metrics.predictions import Reference

    out = {}
    with torch.no_grad():
        for s in novel_word_samples():
            motion = s.motion.astype(np.float16).astype(np.float32)
            tokens = tokenizer.encode(torch.as_tensor(motion)[None], None)[0].cpu().numpy()
            out[s.key] = Reference(text=s.text, motion=motion, tokens=tokens, lang=s.lang)
    return out


def reference_free_rows(train: dict, refs: dict, tokenizer) -> dict[str, dict]:
    """Predictions of the rows that train nothing on one split: ``{row: {key: Prediction}}``."""
    from madis.metrics.predictions import Prediction

    def decoded(tokens):
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(tokens, np.int64))[None]
            return Prediction(tokenizer.decode(t)[0].numpy(), np.asarray(tokens))

    nn_of = nearest_neighbour(train, refs)
    return {"nn": {k: Prediction(np.asarray(train[j].motion), np.asarray(train[j].tokens))
                   for k, j in nn_of.items()},
            "nn_tokens": {k: decoded(train[j].tokens) for k, j in nn_of.items()},
            "floor": {k: decoded(r.tokens) for k, r in refs.items()}}


def reference_figures(scores: dict[str, float]) -> dict[str, float]:
    """The references' own stream figures, from any row's scores (``ref_*``)."""
    out = {k: scores[f"ref_{k}"] for k in STREAM_FIGURES}
    out.update(length_ratio=1.0, empty_generations=0.0)
    return out


def summarize(per_seed: dict) -> dict[str, dict[str, float]]:
    """``{seed: {metric: value}}`` -> ``{metric: {"mean", "sd", "n"}}`` (sample sd, 0 for one
    seed; NaN values are left out)."""
    metrics = sorted({k for v in per_seed.values() for k in v})
    out = {}
    for k in metrics:
        vals = np.array([v[k] for v in per_seed.values() if k in v and v[k] == v[k]], float)
        out[k] = {"mean": float(vals.mean()) if len(vals) else float("nan"),
                  "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "n": int(len(vals))}
    return out


def _cell(stat: dict | float | None, decimals: int) -> str:
    if stat is None:
        return ""
    if isinstance(stat, dict):
        mean, sd, n = stat["mean"], stat["sd"], stat["n"]
        if mean != mean:
            return "–"
        return f"{mean:.{decimals}f} ± {sd:.{decimals}f}" if n > 1 else f"{mean:.{decimals}f}"
    return "–" if stat != stat else f"{stat:.{decimals}f}"


def markdown_table(rows: dict[str, dict], split: str) -> str:
    """One split's table: a line per row (``{"label", "summary": {split: ...}}`` or a
    reference-free row's ``{"label", "scores": {split: ...}}``)."""
    head = "| row | " + " | ".join(label for _, label, _ in COLUMNS) + " |"
    line = "|---|" + "---:|" * len(COLUMNS)
    body = []
    for r in rows.values():
        values = (r.get("summary") or r.get("scores") or {}).get(split)
        if values is not None:
            cells = [_cell(values.get(k), decimals) for k, _, decimals in COLUMNS]
            body.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join([head, line, *body])


def markdown_tables(rows: dict[str, dict], order: list[str], head: str) -> str:
    """Table 1 (the main rows) and a table per ablation table asked for, each on both splits
    and each ending with the references' own figures."""
    titles = {"test": "sample test split", "novel": "NOVEL_WORDS (in no split)"}
    groups = [("Table 1", [n for n in order if not n.startswith(("t3-", "t4-", "t5-"))])]
    groups += [(f"Table {t}", [n for n in order if n.startswith(f"t{t}-")]) for t in (3, 4, 5)]
    out = [f"<!-- {head} -->"]
    for title, names in groups:
        if not names:
            continue
        for split in SPLITS:
            chosen = {n: rows[n] for n in [*names, "references"]}
            out.append(f"\n{title}, {titles[split]}:\n\n" + markdown_table(chosen, split))
    return "\n".join(out)


def _job(name: str):
    """A job script of ``ray_jobs/`` as a module (its ``main(argv)`` runs the job here)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "ray_jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pretrain_tokens(token_url: str, out: str, per_language: int, local_dir: str) -> str:
    """Build the pseudo-word pretraining corpus (:func:`madis.data.sample.build_pretrain_corpus`)
    in ``local_dir``, upload it next to ``out`` and tokenize it with the tokenizer that wrote
    ``token_url``, so that pretraining can mix both. Returns the token shard root ``out``."""
    from madis.data import storage as st
    from madis.data.sample import build_pretrain_corpus
    from madis.tokenizer.token_shards import tokenize_like

    build_pretrain_corpus(local_dir, per_language=per_language)
    motion_url = f"{out.rstrip('/')}-motion"
    st.upload_dir(local_dir, motion_url)
    tokenize_like(motion_url, token_url, out)
    return out


def run_digest(tree, job: str, shards: list[str], init: str | None) -> str:
    """What shapes a run of ``job`` (see the module doc), as 10 hex digits."""
    from madis.config import to_dict
    from madis.mdlm.task import model_config
    from madis.train import train_config

    train = {k: v for k, v in to_dict(train_config(tree, job)).items() if k not in NOT_LEARNING}
    model = to_dict(model_config(tree, job))
    if job == "pretrain":
        model = {k: v for k, v in model.items() if k not in NOT_IN_PRETRAINING}
    what = {"job": job, "model": model, "train": train, "shards": shards, "init": init}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]


def git_commit() -> str:
    """The checkout's commit, ``+dirty`` when it has changes (provenance of the numbers)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Runner:
    """Trains the runs of every row and seed, each once (by digest), and times them."""

    def __init__(self, storage: str, tokens: str, pre_shards: list[str], overrides: list[str]):
        self.storage, self.tokens, self.pre_shards = storage, tokens, pre_shards
        self.overrides = overrides
        self.done: dict[str, dict] = {}
        self.timings: dict[str, float] = {}

    def _args(self, row: TrainedRow, seed: int) -> list[str]:
        # checkpoints only at the end: the benchmark scores the final model only
        return [f"train.seed={seed}", "train.progress=false",
                f"train.log_dir={self.storage}/tensorboard-local",
                "train_pretrain.checkpoint_every=0", "train_finetune.checkpoint_every=0",
                *row.overrides, *self.overrides]

    def run(self, job: str, row: TrainedRow, seed: int, shards: list[str], init: str | None,
            steps: int | None = None) -> dict:
        """Run ``job`` for ``row`` and ``seed`` unless a run with the same digest has run;
        returns its report (``checkpoint``, ``export``, ``step``, ...)."""
        from madis.config import load_tree

        extra = self._args(row, seed)
        if steps is not None:
            extra.append(f"train_{job}.steps={steps}")
        tree = load_tree(row.config, extra)
        digest = run_digest(tree, job, shards, init)
        if digest in self.done:
            return self.done[digest]
        name = f"q-{job}-{digest}-s{seed}"
        argv = [*sum((["--shards", s] for s in shards), []), "--run-name", name,
                "--config", row.config, "--storage", self.storage]
        if job == "finetune":
            argv += ["--init", init or "none"]
        t = time.perf_counter()
        rep = _job(job).main([*argv, *extra])
        self.timings[name] = time.perf_counter() - t
        rep = {**rep, "run": name, "seconds": self.timings[name]}
        self.done[digest] = rep
        return rep

    def train(self, row: TrainedRow, seed: int) -> list[dict]:
        """The row's job reports for ``seed``: ``[pretraining, fine-tuning]`` or
        ``[fine-tuning]`` (the last one's ``export`` is the model to score)."""
        from madis.config import load_tree
        from madis.train import train_config

        tree = load_tree(row.config, self._args(row, seed))
        p, f = (train_config(tree, j).steps for j in ("pretrain", "finetune"))
        if not (p and f):
            raise SystemExit(f"{row.name}: set train_pretrain.steps and train_finetune.steps "
                             f"(the budget compared)")
        if not row.pretrain:
            return [self.run("finetune", row, seed, [self.tokens], None, steps=p + f)]
        pre = self.run("pretrain", row, seed, self.pre_shards, None)
        return [pre, self.run("finetune", row, seed, [self.tokens], pre["export"])]


def parse_decode(items: list[str]) -> dict:
    """``--decode`` items ``field=value`` (read as config overrides are) -> ``{field: value}``.

    Raises:
        SystemExit: an item without ``=`` or a field that is not one of :data:`DECODING`.
    """
    from madis.config import ConfigError, split_override

    out = {}
    for item in items:
        try:
            key, value = split_override(item)
        except ConfigError:
            key, value = "", None
        key = key.removeprefix("model.")
        if key not in DECODING:
            raise SystemExit(f"--decode {item!r}: give field=value with a decoding field of the "
                             f"model section ({', '.join(DECODING)})")
        out[key] = value
    return out


def evaluate_export(export: str, refs: dict, fmt: str, seed: int,
                    decode: dict | None = None) -> tuple[dict, dict]:
    """Scores of one trained export on every split: ``({split: scores}, info)``; ``decode``
    replaces decoding fields of the export's model config (no retraining), checked as a
    config file's would be."""
    from madis.config import from_dict, to_dict
    from madis.mdlm.predict import predict_references
    from madis.mdlm.exports import load_generator

    model = load_generator(export)
    if decode:
        model.cfg = from_dict(type(model.cfg), {**to_dict(model.cfg), **decode}, where="model")
    out = {}
    for split, r in refs.items():
        g = torch.Generator().manual_seed(seed)
        preds, _ = predict_references(model, r, generator=g)
        out[split] = score(preds, r, fmt)
    info = {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "sampler": model.cfg.sampler, "num_steps": model.cfg.num_steps,
            "temperature": model.cfg.temperature}
    return out, info


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]``; ``"0,5"`` -> ``[0, 5]``."""
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("--seeds must be >= 1")
    return list(range(n))


def choose_rows(args) -> tuple[dict[str, TrainedRow], list[str]]:
    """The trained rows and the reference-free rows asked for."""
    trained = {**main_rows(args.config), **ablation_rows()}
    names = args.rows.split(",") if args.rows else list(MAIN_ROWS)
    if args.ablations:
        names += [n for n in ablation_rows() if n not in names]
    unknown = [n for n in names if n not in trained and n not in REFERENCE_FREE]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {[*trained, *REFERENCE_FREE]}")
    return ({n: trained[n] for n in names if n in trained},
            [n for n in names if n in REFERENCE_FREE])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--config", default="cpu-tiny", help="profile of the Table 1 rows")
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds("3"), metavar="N|S1,S2",
                    help="N seeds 0..N-1, or a comma list (default 3)")
    ap.add_argument("--rows", help=f"comma list of rows (default: {','.join(MAIN_ROWS)}); "
                                   "ablation rows are the stems of configs/ablations/*.yaml")
    ap.add_argument("--ablations", action="store_true", help="add every ablation row")
    ap.add_argument("--tokens", help="token shard root to reuse (skips the tokenizer job)")
    ap.add_argument("--storage", help="run storage (default: a fresh temporary directory); "
                                      "finished runs in it are reused")
    ap.add_argument("--pseudo-words", type=int, default=PRETRAIN_WORDS_PER_LANGUAGE,
                    metavar="K",
                    help="pretrain on the sample plus K composed pseudo-words per sign language "
                         "(madis.data.sample.build_pretrain_corpus), as `madis up` does "
                         f"(default {PRETRAIN_WORDS_PER_LANGUAGE}; 0: the sample alone)")
    ap.add_argument("--decode", action="append", default=[], metavar="FIELD=VALUE",
                    help="decode every trained row's model with this decoding field of the "
                         "model section instead of its own, repeatable (temperature=0: greedy, the "
                         "paper's decoding); training and run digests are unchanged, so a "
                         "second invocation with the same --storage only re-scores")
    ap.add_argument("--json", help="write every seed's numbers and the timings here")
    ap.add_argument("--markdown", help="write the tables here")
    ap.add_argument("overrides", nargs="*", help="config overrides for every job")
    args = ap.parse_args(argv)
    trained_rows, free_rows = choose_rows(args)
    decode = parse_decode(args.decode)

    import ray

    from madis.data import storage as st
    from madis.data.s3server import LocalS3Server
    from madis.data.sample import build_sample_corpus, is_up_to_date
    from madis.data.shards import read_manifest
    from madis.mdlm.exports import load_tokenizer
    from madis.metrics.evaluation import load_references

    storage = str(Path(args.storage).resolve()) if args.storage else \
        tempfile.mkdtemp(prefix="madis-quality-")
    Path(storage).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    rows: dict[str, dict] = {}
    # a generous start-up limit: the machine may be busy with the jobs of other runs
    with LocalS3Server(timeout_s=120) as server, \
            tempfile.TemporaryDirectory(prefix="madis-quality-") as tmp:
        server.apply_env()
        # a cluster of this process's own (token authentication on: Ray's default for a local
        # cluster), never one a `ray start` left running on the machine
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            tokens = args.tokens
            if tokens and not st.is_s3(tokens):  # the jobs stream from object storage
                st.upload_dir(tokens, "s3://quality/tokens")
                tokens = "s3://quality/tokens"
            if tokens is None:
                t = time.perf_counter()
                if not is_up_to_date(REPO / "shards"):
                    build_sample_corpus(REPO / "shards")
                st.upload_dir(REPO / "shards", "s3://quality/shards")
                tokens = "s3://quality/tokens"
                _job("train_tokenizer").main(
                    ["--config", args.config, "--shards", "s3://quality/shards", "--tokens",
                     tokens, f"train.storage_path={storage}", "train.progress=false",
                     *args.overrides])
                timings["tokenizer"] = time.perf_counter() - t
            pre_shards = [tokens]
            if args.pseudo_words and any(r.pretrain for r in trained_rows.values()):
                t = time.perf_counter()
                pre_shards.append(pretrain_tokens(tokens, "s3://quality/pretrain-tokens",
                                                  args.pseudo_words, f"{tmp}/pretrain"))
                timings["pretraining corpus (build + tokenize)"] = time.perf_counter() - t

            t = time.perf_counter()
            tokenizer = load_tokenizer(read_manifest(tokens)["tokenizer_export"]["url"])
            fmt, test = load_references(tokens, "test")
            _, train = load_references(tokens, "train")
            refs = {"test": test, "novel": novel_references(tokenizer)}
            rows["references"] = {"label": "references (the test clips themselves)", "scores": {}}
            for name in free_rows:
                rows[name] = {"label": REFERENCE_FREE[name], "scores": {}}
            for split, r in refs.items():
                preds = reference_free_rows(train, r, tokenizer)
                for name in free_rows:
                    rows[name]["scores"][split] = score(preds[name], r, fmt)
                any_scores = score(preds["floor"], r, fmt)
                rows["references"]["scores"][split] = reference_figures(any_scores)
            timings["reference-free rows"] = time.perf_counter() - t

            runner = Runner(storage, tokens, pre_shards, list(args.overrides))
            for name, row in trained_rows.items():
                rows[name] = {"label": row.label, "config": row.config, "pretrain": row.pretrain,
                              "overrides": row.overrides, "seeds": {}}
            for seed in args.seeds:  # seed-major: a stopped run still holds whole seeds
                for name, row in trained_rows.items():
                    reps = runner.train(row, seed)
                    t = time.perf_counter()
                    scores, info = evaluate_export(reps[-1]["export"], refs, fmt, seed, decode)
                    seconds = time.perf_counter() - t
                    timings[f"evaluate {name} seed {seed}"] = seconds
                    rows[name]["seeds"][seed] = {
                        "scores": scores, "model": info, "export": reps[-1]["export"],
                        "runs": {r["run"]: round(r["seconds"], 1) for r in reps}}
                    print(f"[quality] {name} seed {seed}: test SiBLEU-4 hands "
                          f"{scores['test']['sibleu4_hands']:.2f}, DTW-JPE hands "
                          f"{scores['test']['dtw_jpe_hands']:.2f} ({seconds:.0f} s to score)",
                          flush=True)
                    # what a stopped benchmark has finished stays readable (a rerun with the
                    # same --storage reuses the finished runs)
                    write_results(args, rows, trained_rows, free_rows, refs, storage, tokens,
                                  {**timings, "train (so far)": sum(runner.timings.values())},
                                  partial=True)
            timings.update({f"train {k}": v for k, v in runner.timings.items()})
        finally:
            ray.shutdown()
    timings["total"] = time.perf_counter() - t0
    return write_results(args, rows, trained_rows, free_rows, refs, storage, tokens, timings)


def write_results(args, rows: dict, trained_rows: dict, free_rows: list[str], refs: dict,
                  storage: str, tokens: str, timings: dict, partial: bool = False) -> dict:
    """Summarise the seeds done so far, print the tables (unless ``partial``) and write
    ``--json`` / ``--markdown``; returns the result dictionary."""
    for name in trained_rows:
        seeds = rows[name]["seeds"]
        rows[name]["summary"] = {split: summarize({s: v["scores"][split] for s, v in seeds.items()})
                                 for split in SPLITS}
    done = {n: sorted(rows[n]["seeds"]) for n in trained_rows}
    decoded = f"; decoded with {' '.join(args.decode)}" if args.decode else ""
    head = (f"config {args.config} {' '.join(args.overrides)}{decoded}; seeds {args.seeds}"
            f"{f' (partial: {done})' if partial else ''}; commit {git_commit()}; test split "
            f"{len(refs['test'])} clips, novel words {len(refs['novel'])}")
    markdown = markdown_tables(rows, [*trained_rows, *free_rows], head)
    if not partial:
        print("\n" + markdown)
        print("\nwall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    result = {"config": args.config, "overrides": list(args.overrides),
              "decode": list(args.decode), "seeds": args.seeds,
              "partial": partial, "commit": git_commit(), "storage": storage, "tokens": tokens,
              "pseudo_words_per_language": args.pseudo_words,
              "samples": {k: len(v) for k, v in refs.items()}, "rows": rows,
              "timings_s": timings}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if args.markdown:
        Path(args.markdown).write_text(markdown + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
