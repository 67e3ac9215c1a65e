"""One evaluation API for the eval fleet, the jobs and ``madis eval`` (paper 4,
docs/design.md#metrics).

:func:`evaluate` returns a flat dict, every metric with its unit::

    {"num_samples":        {"value": 76,    "unit": "samples"},
     "dtw_jpe_body":       {"value": 12.3,  "unit": "shoulder widths"},   # the format's units
     "dtw_jpe_hands":      {"value": 20.1,  "unit": "shoulder widths"},
     "sibleu4_body":       {"value": 8.2,   "unit": "BLEU (0-100)"},      # when tokens exist
     "sibleu4_hands":      ..., "bleu1_body": ..., "bleu1_hands": ...,
     "siclip_s2t_R@1":     {"value": 25.0,  "unit": "%"},                 # with a SiCLIP model
     "siclip_s2t_R@5": ..., "siclip_s2t_R@10": ..., "siclip_t2s_R@1": ..., ...,
     "siclip_s2t_R@1_b45": ..., ...,                                      # released protocol
     "run_share": ..., "ref_run_share": ..., "distinct": ..., "ref_distinct": ...,
     "length": ..., "ref_length": ..., "length_ratio": ..., "cross_distance": ...,
     "ref_cross_distance": ..., "empty_generations": ...,                 # when tokens exist
     "signing_hands": {"value": 20.0, "unit": "BLEU (0-100)"}}           # SiBLEU-4 hands, gated

DTW-JPE is the mean over samples of the accumulated DTW cost (hands: of the mean of the two
hands); SiBLEU is corpus level; SiCLIP retrieval ranks generated motions against the reference
texts (sign-to-text) and back, over the full set and in the reference order's batches of 45.
The stream figures (:mod:`madis.metrics.streams`) describe generated and reference token
streams alike (longest run, distinct tokens, length, how much outputs of different texts of
one language differ); ``signing_hands`` is SiBLEU-4 hands gated by them, which a generator that
holds one pose for every text cannot win. A metric whose inputs are missing (no tokens, no SiCLIP model) is left out and logged.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch

from madis.metrics.dtw import dtw_jpe_batch
from madis.metrics.predictions import Prediction, Reference, load_predictions
from madis.metrics.retrieval import retrieval_metrics
from madis.metrics.sign_bleu import UNIT as BLEU_UNIT
from madis.metrics.sign_bleu import part_sibleu
from madis.motion import PARTS, MotionFormat, get_format

log = logging.getLogger(__name__)

__all__ = ["evaluate", "load_references", "part_dtw_jpe", "dtw_jpe_scores", "siclip_retrieval",
           "siclip_similarity"]


def part_dtw_jpe(generated: Sequence[np.ndarray], references: Sequence[np.ndarray],
                 motion_format: MotionFormat) -> dict[str, np.ndarray]:
    """Per-sample DTW-JPE of each part: ``{"body": [P], "lhand": [P], "rhand": [P]}``.

    Joints come from ``motion_format.joints`` (SMPL-X forward kinematics or the keypoints
    themselves), alignment and cost joints from ``motion_format.metric_joints``.

    Args:
        generated: per sample ``[T1, D]`` motion in the format's units.
        references: per sample ``[T2, D]``, same order.

    Raises:
        ValueError: different counts, no samples, a motion that is not ``[T, D]``.
    """
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated motions but {len(references)} references")
    if not generated:
        raise ValueError("no samples to evaluate")
    joints = {}
    for side, seqs in (("generated", generated), ("reference", references)):
        for i, m in enumerate(seqs):
            if np.ndim(m) != 2 or np.shape(m)[1] != motion_format.dim or len(m) == 0:
                raise ValueError(f"{side}[{i}]: motion must be [T>0, {motion_format.dim}] "
                                 f"({motion_format.name}), got shape {np.shape(m)}")
        # one joints() call for the whole side: SMPL-X forward kinematics batches over frames
        lengths = np.cumsum([len(m) for m in seqs])[:-1]
        stacked = motion_format.joints(np.concatenate([np.asarray(m, np.float32) for m in seqs]))
        joints[side] = {p: np.split(stacked[p], lengths) for p in PARTS}
    out = {}
    for part in PARTS:
        mj = motion_format.metric_joints[part]
        out[part] = dtw_jpe_batch(joints["generated"][part], joints["reference"][part],
                                  mj.align_index, mj.cost_joints)
    return out


def dtw_jpe_scores(generated, references, motion_format: MotionFormat) -> dict[str, float]:
    """Dataset DTW-JPE ``{"body": mean, "hands": mean of (left + right) / 2}`` (format units)."""
    per = part_dtw_jpe(generated, references, motion_format)
    return {"body": float(per["body"].mean()),
            "hands": float(((per["lhand"] + per["rhand"]) / 2).mean())}


def load_references(url: str, split: str = "test") -> tuple[str, dict[str, Reference]]:
    """Ground truth of one split of a shard set, in stored order: ``(format name, {key: ref})``.

    Raises:
        ValueError: a shard could not be read or a sample was dropped (an evaluation on part of
            the split would not compare with others), or the count differs from the manifest.
        KeyError: unknown split. StorageError / FileNotFoundError: see ``madis.data.shards``.
    """
    from madis.data.shards import ReadStats, iter_samples, read_manifest

    manifest = read_manifest(url)
    stats = ReadStats()
    refs = {}
    for s in iter_samples(url, split, shuffle=False, with_tokens=bool(manifest.get("tokens")),
                          stats=stats, manifest=manifest):
        refs[s["key"]] = Reference(text=s["meta"]["text"], motion=s["motion"],
                                   tokens=s.get("tokens"), lang=s["meta"].get("lang", ""))
    expected = manifest["splits"][split]["samples"]
    if stats.corrupt_shards or stats.bad_samples or len(refs) != expected:
        raise ValueError(f"{url} split {split!r}: read {len(refs)} of {expected} samples "
                         f"({stats.corrupt_shards} unreadable shards, {stats.bad_samples} bad "
                         f"samples); refusing to evaluate on part of the split")
    return manifest["format"], refs


def _pad(motions: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(m) for m in motions)
    x = torch.zeros(len(motions), t, motions[0].shape[1])
    mask = torch.zeros(len(motions), t, dtype=torch.bool)
    for i, m in enumerate(motions):
        x[i, : len(m)] = torch.as_tensor(np.asarray(m, np.float32))
        mask[i, : len(m)] = True
    return x, mask


@torch.no_grad()
def siclip_similarity(model, motions: Sequence[np.ndarray], texts: Sequence[str],
                      batch_size: int = 64) -> torch.Tensor:
    """``[N, N]`` SiCLIP retrieval scores of ``motions`` (rows) against ``texts`` (columns)."""
    model.eval()
    device = next(model.parameters()).device
    text_emb = [model.encode_text(texts[b : b + batch_size]) for b in range(0, len(texts), batch_size)]
    rows = []
    for a in range(0, len(motions), batch_size):
        x, mask = _pad(motions[a : a + batch_size])
        sign = model.encode_motion(x.to(device), mask.to(device))
        rows.append(torch.cat([model.similarity(sign, t) for t in text_emb], dim=1))
    return torch.cat(rows).cpu()


def _resolve_format(*names) -> MotionFormat:
    given = {n.name if isinstance(n, MotionFormat) else n for n in names if n}
    if not given:
        raise ValueError("unknown motion format: pass motion_format= or use shards/predictions "
                         "that name theirs")
    if len(given) > 1:
        raise ValueError(f"predictions, references, SiCLIP model and arguments disagree on the "
                         f"motion format: {sorted(given)}")
    fmt = next(n for n in names if n)
    return fmt if isinstance(fmt, MotionFormat) else get_format(fmt)


def evaluate(
    predictions: Mapping[str, Prediction] | str,
    references: Mapping[str, Reference] | str,
    *,
    split: str = "test",
    motion_format: str | MotionFormat | None = None,
    siclip=None,
    tokenizer=None,
    require_all: bool = True,
    batch_size: int = 64,
) -> dict[str, dict[str, float | str]]:
    """All metrics of generated samples against their references (see the module doc).

    Args:
        predictions: ``{key: Prediction}`` or a predictions directory
            (:mod:`madis.metrics.predictions`).
        references: ``{key: Reference}`` in evaluation order, or a shard root URL (its ``split``
            is read in stored order).
        split: split of a shard root.
        motion_format: format name or object (an ``SMPLX133(model_dir=...)`` for SMPL-X); needed
            only when neither predictions, references nor the SiCLIP model name one.
        siclip: a :class:`~madis.metrics.SiCLIP` model or a directory saved by it; None skips
            the retrieval metrics.
        tokenizer: a ``DecoupledTokenizer`` (or its directory) to tokenize reference motions for
            SiBLEU when the references carry no tokens.
        require_all: every reference must have a prediction; False evaluates the predicted keys
            only (the order stays the references').
        batch_size: SiCLIP encoding batch.

    Returns:
        ``{name: {"value": float, "unit": str}}``.

    Raises:
        ValueError: predictions for keys not in the references, missing predictions (with
            ``require_all``), formats that disagree, motions of the wrong width, tokens on some
            predictions only, or a SiCLIP model for another motion format.
    """
    pred_format = ref_format = None
    if isinstance(predictions, (str, bytes)) or hasattr(predictions, "__fspath__"):
        meta, predictions = load_predictions(predictions)
        pred_format = meta["format"]
    if isinstance(references, str):
        ref_format, references = load_references(references, split)
    fmt = _resolve_format(motion_format, pred_format, ref_format,
                          getattr(siclip, "motion_format", None))

    unknown = sorted(set(predictions) - set(references))
    if unknown:
        raise ValueError(f"{len(unknown)} predictions have no reference, e.g. {unknown[:5]}")
    missing = [k for k in references if k not in predictions]
    if missing and require_all:
        raise ValueError(f"{len(missing)} of {len(references)} references have no prediction, "
                         f"e.g. {missing[:5]} (`madis eval --partial`, require_all=False, evaluates the predicted ones)")
    keys = [k for k in references if k in predictions]
    gen = [np.asarray(predictions[k].motion) for k in keys]
    ref = [np.asarray(references[k].motion) for k in keys]

    results: dict[str, dict] = {"num_samples": {"value": len(keys), "unit": "samples"}}
    for part, value in dtw_jpe_scores(gen, ref, fmt).items():
        results[f"dtw_jpe_{part}"] = {"value": value, "unit": fmt.units}

    have_tokens = [predictions[k].tokens is not None for k in keys]
    if any(have_tokens) and not all(have_tokens):
        raise ValueError(f"{have_tokens.count(False)} predictions lack tokens while others have "
                         f"them; SiBLEU needs all or none")
    if all(have_tokens):
        ref_tokens = _reference_tokens(keys, references, tokenizer)
        if ref_tokens is None:
            log.warning("SiBLEU skipped: the references carry no tokens and no tokenizer was given")
        else:
            gen_tokens = [predictions[k].tokens for k in keys]
            for order, name in ((4, "sibleu4"), (1, "bleu1")):
                for part, value in part_sibleu(gen_tokens, ref_tokens, order).items():
                    results[f"{name}_{part}"] = {"value": value, "unit": BLEU_UNIT}
            results.update(stream_results(gen_tokens, ref_tokens,
                                          [references[k].lang for k in keys],
                                          [references[k].text for k in keys],
                                          results["sibleu4_hands"]["value"]))
    else:
        log.warning("SiBLEU skipped: the predictions carry no tokens")

    from madis.metrics.siclip import SiCLIP

    if siclip is None:
        log.warning("SiCLIP retrieval skipped: no SiCLIP model given")
    else:
        model = SiCLIP.from_pretrained(siclip) if isinstance(siclip, str) else siclip
        if model.motion_format != fmt.name:
            raise ValueError(f"the SiCLIP model reads {model.motion_format!r} motion, the "
                             f"evaluation is on {fmt.name!r}")
        results.update(siclip_retrieval(model, gen, [references[k].text for k in keys],
                                        batch_size))
    return results


#: units of the stream figures (:mod:`madis.metrics.streams`) that ``evaluate`` reports
STREAM_UNITS = {"run_share": "share of the stream", "distinct": "tokens per position",
                "length": "sign positions", "cross_distance": "normalised edit distance"}


def stream_results(gen_tokens, ref_tokens, langs, texts, sibleu4_hands: float
                   ) -> dict[str, dict[str, float | str]]:
    """The stream figures of generated and reference tokens (``run_share``, ``distinct``,
    ``length``, ``cross_distance``, each also as ``ref_*``), ``length_ratio``,
    ``empty_generations`` and ``signing_hands``: SiBLEU-4 hands gated by the figures
    (:func:`madis.metrics.streams.signing_score`), the figure a collapse cannot win."""
    from madis.metrics.streams import compare_streams, signing_score

    fig = compare_streams(gen_tokens, ref_tokens, langs, texts)
    out: dict[str, dict[str, float | str]] = {}
    for name, unit in STREAM_UNITS.items():
        out[name] = {"value": fig[name], "unit": unit}
        out[f"ref_{name}"] = {"value": fig[f"ref_{name}"], "unit": unit}
    out["length_ratio"] = {"value": fig["length_ratio"], "unit": "generated / reference"}
    out["empty_generations"] = {"value": fig["empty"], "unit": "samples"}
    out["signing_hands"] = {"value": signing_score(sibleu4_hands, fig), "unit": BLEU_UNIT}
    return out


def _reference_tokens(keys, references, tokenizer):
    if all(references[k].tokens is not None for k in keys):
        return [references[k].tokens for k in keys]
    if tokenizer is None:
        return None
    if isinstance(tokenizer, str):
        from madis.tokenizer import DecoupledTokenizer

        tokenizer = DecoupledTokenizer.from_pretrained(tokenizer)
    out = []
    with torch.no_grad():
        for k in keys:
            m = torch.as_tensor(np.asarray(references[k].motion, np.float32))[None]
            out.append(tokenizer.encode(m, None)[0].cpu().numpy())
    return out


def siclip_retrieval(siclip, motions: Sequence[np.ndarray], texts: Sequence[str],
                     batch_size: int = 64) -> dict[str, dict[str, float | str]]:
    """SiCLIP R@1/5/10 of ``motions[i]`` paired with ``texts[i]``, both directions, two protocols.

    Identical texts count as correct for each other's signs (see
    :func:`~madis.metrics.retrieval.retrieval_ranks`).

    Args:
        siclip: a :class:`~madis.metrics.SiCLIP` model or the directory it was saved to.
        motions: per sample ``[T, D]`` in the model's format units, in evaluation order.
        texts: the paired sentences.

    Returns:
        ``{"siclip_s2t_R@1": {"value": %, "unit": "%"}, ..., "siclip_t2s_R@10_b45": ...}``: full
        set, then the released protocol's consecutive batches (``retrieval_batch_size``).

    Raises:
        ValueError: no samples, different counts, or an empty text.
    """
    from madis.metrics.siclip import SiCLIP

    if len(motions) != len(texts):
        raise ValueError(f"{len(motions)} motions but {len(texts)} texts")
    if not motions:
        raise ValueError("no samples for SiCLIP retrieval")
    model = SiCLIP.from_pretrained(siclip) if isinstance(siclip, str) else siclip
    sim = siclip_similarity(model, motions, texts, batch_size)
    same_text = np.array([[a == b for b in texts] for a in texts])
    out = {}
    for suffix, batch in (("", None), (f"_b{model.config.retrieval_batch_size}",
                                       model.config.retrieval_batch_size)):
        r = retrieval_metrics(sim, batch_size=batch, positives=same_text)
        for direction, short in (("sign_to_text", "s2t"), ("text_to_sign", "t2s")):
            for k, v in r[direction].items():
                out[f"siclip_{short}_{k}{suffix}"] = {"value": v, "unit": "%"}
    return out
