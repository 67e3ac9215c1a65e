"""What the eval fleet does to one checkpoint, without Ray: the validation set, decoding a batch of
its texts with a checkpoint (paper 3.3, UTC or vanilla sampling), and the checkpoint's metrics
(paper 4: DTW-JPE, SiBLEU, SiCLIP R@k through :func:`madis.metrics.evaluate`) and renders.

:mod:`madis.fleet.fleet` runs :class:`CheckpointDecoder` inside Ray actors and the rest in the
coordinator; a test or a script can run the same steps in one process.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from madis.fleet.retry import is_transient, with_backoff

log = logging.getLogger(__name__)


class CheckpointLoadError(RuntimeError):
    """A checkpoint's export cannot be loaded (missing or corrupt files, wrong format).

    Attributes:
        export_url: what was loaded.
    """

    def __init__(self, export_url: str, message: str) -> None:
        super().__init__(f"cannot load checkpoint export {export_url}: {message}")
        self.export_url, self.message = export_url, message

    def __reduce__(self):  # Ray pickles the error back to the coordinator
        return (type(self), (self.export_url, self.message))


@dataclass
class ValidationSet:
    """The samples every checkpoint is decoded and scored on, in stored order.

    Attributes:
        keys: sample keys, evaluation order.
        references: ``{key: Reference}`` (text, lang, motion ``[T, D]`` in format units,
            tokens ``[N, 3]``).
        motion_format: format name of every shard set.
        fps: frames per second of the motion.
        shards: the shard roots read.
    """

    keys: list[str]
    references: dict[str, Any]
    motion_format: str
    fps: float
    shards: list[str]

    def batches(self, batch_size: int, multiple_of: int = 1) -> list[list[str]]:
        """Consecutive key batches of at most ``batch_size``, of equal sizes (within one), their
        count a multiple of ``multiple_of`` (the actors, so that none idles while another
        decodes a last full batch; at most one batch per key). Batch ``i`` is decoded with seed
        ``seed + i`` wherever it runs."""
        n = len(self.keys)
        count = -(-n // batch_size)
        count = min(n, -(-count // multiple_of) * multiple_of)
        edges = [i * n // count for i in range(count + 1)]
        return [self.keys[a:b] for a, b in zip(edges, edges[1:])]

    def spread(self, n: int) -> list[str]:
        """``n`` keys evenly spaced over the set (the samples rendered for the dashboard): they
        fall into different batches, so different actors render them in parallel."""
        n = min(n, len(self.keys))
        return [self.keys[i * len(self.keys) // n] for i in range(n)]


def load_validation_set(shards: Sequence[str], split: str = "val",
                        limit: int = 0) -> ValidationSet:
    """Read ``split`` of every token shard root (whole, or :func:`load_references` refuses).

    Args:
        shards: token shard roots (directories or ``s3://``).
        limit: keep the first ``limit`` samples over all roots (0: all).

    Raises:
        ValueError: no shard root, roots of different formats, a key in two roots, an empty
            split, or a partly unreadable split.
        KeyError: a root without ``split``.
    """
    from madis.data.shards import read_manifest
    from madis.metrics.evaluation import load_references

    if not shards:
        raise ValueError("no validation shard root: set fleet.shards or evaluate checkpoints "
                         "whose metadata names their shards")
    refs: dict[str, Any] = {}
    formats, fps = set(), set()
    for root in shards:
        fmt, part = load_references(root, split)
        formats.add(fmt)
        fps.add(float(read_manifest(root)["fps"]))
        twice = sorted(set(part) & set(refs))
        if twice:
            raise ValueError(f"{root} repeats sample keys of another shard root, e.g. {twice[:3]}")
        refs.update(part)
    if len(formats) > 1:
        raise ValueError(f"validation shard roots hold different motion formats: {sorted(formats)}")
    keys = list(refs)[: limit or None]
    if not keys:
        raise ValueError(f"split {split!r} of {list(shards)} holds no sample")
    return ValidationSet(keys, {k: refs[k] for k in keys}, formats.pop(), fps.pop(), list(shards))


@dataclass
class RenderSpec:
    """How a decoder renders the samples it is asked to (see :func:`render_sample`)."""

    motion_format: str
    fps: float
    frames: int = 4
    size: int = 192


@dataclass
class Decoded:
    """One decoded validation sample (numpy, picklable for Ray).

    Attributes:
        key: the sample's key.
        tokens: ``[n, 3]`` int codes (body, lhand, rhand) before [EOS]; ``n`` may be 0.
        motion: ``[4n, D]`` float32 in the format's units; for ``n = 0`` the tokenizer's mean
            pose held for one position (``MaDiSModel.decode_motion``,
            docs/design.md#empty-generations).
        gates: ``[n, 3]`` MoP gate weights, or None (dense embedding / not asked).
        image: the rendered sample beside its ground truth (:func:`render_sample`), when asked.
        gate_image: the MoP gate plot (:func:`gate_plot`), when asked and there are gates.
        render_error: why ``image`` is missing though asked (e.g. no SMPL-X model files).
    """

    key: str
    tokens: np.ndarray
    motion: np.ndarray
    gates: np.ndarray | None = None
    image: np.ndarray | None = None
    gate_image: np.ndarray | None = None
    render_error: str | None = None

    @property
    def empty(self) -> bool:
        return len(self.tokens) == 0


class CheckpointDecoder:
    """Decodes validation texts with one checkpoint at a time (the body of a fleet actor).

    The loaded model is cached by export URL, so an actor loads each checkpoint once however
    many batches it decodes; a new URL drops the previous model.

    Args:
        threads: torch CPU threads.
        device: ``cpu`` or ``cuda``.
        attempts, backoff_s: storage retries while copying the export (see
            :func:`madis.fleet.retry.with_backoff`).
    """

    def __init__(self, threads: int = 1, device: str = "cpu", attempts: int = 6,
                 backoff_s: float = 0.5) -> None:
        import madis.mdlm.task  # noqa: F401 - import transformers now, not on the first checkpoint

        torch.set_num_threads(max(1, int(threads)))
        self.device = device
        self.attempts, self.backoff_s = attempts, backoff_s
        self._url: str | None = None
        self._model = None

    def ready(self) -> bool:
        """True once the actor is up (imports done)."""
        return True

    def model(self, export_url: str):
        """The generator exported at ``export_url`` (a :class:`~madis.mdlm.MaDiSModel` with its
        tokenizer), loaded on first use.

        Raises:
            CheckpointLoadError: files missing or corrupt (after retrying a storage outage).
        """
        if self._url == export_url:
            return self._model
        from madis.mdlm.exports import load_generator
        from madis.utils.pretrained import local_copy

        self._url = self._model = None
        with contextlib.ExitStack() as copies:  # a copy of an s3:// export goes after loading
            try:
                local = with_backoff(lambda: copies.enter_context(local_copy(export_url)),
                                     f"copy {export_url}", attempts=self.attempts,
                                     backoff_s=self.backoff_s)
            except Exception as exn:  # noqa: BLE001 - any failure to fetch is a bad checkpoint here
                raise CheckpointLoadError(export_url, f"{type(exn).__name__}: {exn}") from None
            try:
                model = load_generator(local, map_location=self.device)
            except Exception as exn:  # noqa: BLE001 - corrupt weights, wrong format, no tokenizer
                if is_transient(exn):
                    raise
                raise CheckpointLoadError(export_url, f"{type(exn).__name__}: {exn}") from None
        model.eval()
        self._url, self._model = export_url, model
        return model

    @torch.no_grad()
    def decode(self, export_url: str, keys: Sequence[str], texts: Sequence[str],
               langs: Sequence[str], *, sampler: str = "utc", num_steps: int = 0, seed: int = 0,
               render: Mapping[str, Any] | None = None,
               spec: RenderSpec | None = None) -> list[Decoded]:
        """Generate sign tokens for ``texts`` and decode them to motion.

        Args:
            keys, texts, langs: one entry per sample.
            sampler: ``utc`` or ``vanilla``.
            num_steps: decoding steps K (0: the checkpoint's config).
            seed: seeds the sampling generator (matters only at temperature > 0).
            render: ``{key: Reference}`` of the samples to render (generated | ground truth)
                with ``spec``, and to plot the MoP gates of; rendering here, in the actor that
                decoded them, keeps it off the coordinator's serial path.

        Returns:
            One :class:`Decoded` per key, in order.
        Raises:
            CheckpointLoadError: see :meth:`model`.
        """
        model = self.model(export_url)
        gen = torch.Generator(device=model.device).manual_seed(int(seed))
        render = dict(render or {})
        out = model.generate(list(texts), list(langs), sampler=sampler,
                             num_steps=num_steps or None, generator=gen, return_gates=bool(render))
        motions = model.decode_motion(out)
        result = []
        for b, key in enumerate(keys):
            n = int(out.lengths[b])
            tokens = out.tokens[b, :n].cpu().numpy()
            gates = None
            if out.gates is not None and n:
                gates = out.gates[b, :n].float().cpu().numpy()
            d = Decoded(key, tokens.astype(np.int64), motions[b], gates)
            if key in render and spec is not None:
                ref = render[key]
                try:
                    d.image = render_sample(d, ref, spec.motion_format, frames=spec.frames,
                                            size=spec.size)
                except (FileNotFoundError, ValueError) as exn:
                    d.render_error = f"{type(exn).__name__}: {exn}"
                d.gate_image = gate_plot(d, spec.fps, text=ref.text)
            result.append(d)
        return result


def checkpoint_metrics(decoded: Mapping[str, Decoded], val: ValidationSet, siclip=None
                       ) -> tuple[dict[str, float], dict[str, str]]:
    """Metrics of one checkpoint's decoded validation set.

    Args:
        decoded: ``{key: Decoded}`` for every key of ``val``.
        siclip: a loaded :class:`~madis.metrics.SiCLIP`, or None (R@k left out, logged).

    Returns:
        ``(values, units)``: :func:`madis.metrics.evaluate`'s metrics (``dtw_jpe_body``,
        ``dtw_jpe_hands``, ``sibleu4_*``, ``bleu1_*``, ``siclip_*_R@k``...) plus
        ``gen_positions`` (mean generated sign positions) and ``empty_generations`` (texts
        decoded to nothing, scored as a still mean pose).
    Raises:
        ValueError: a key of ``val`` was not decoded, or see :func:`madis.metrics.evaluate`.
    """
    from madis.metrics import evaluate
    from madis.metrics.predictions import Prediction

    missing = [k for k in val.keys if k not in decoded]
    if missing:
        raise ValueError(f"{len(missing)} validation samples were not decoded, e.g. {missing[:3]}")
    # arrays that came through Ray are read-only; torch warns on wrapping those
    preds = {k: Prediction(motion=np.require(decoded[k].motion, requirements="W"),
                           tokens=decoded[k].tokens) for k in val.keys}
    result = evaluate(preds, val.references, motion_format=val.motion_format, siclip=siclip)
    values = {k: float(v["value"]) for k, v in result.items()}
    units = {k: str(v["unit"]) for k, v in result.items()}
    values["gen_positions"] = float(np.mean([len(decoded[k].tokens) for k in val.keys]))
    units["gen_positions"] = "sign positions"
    values["empty_generations"] = float(sum(decoded[k].empty for k in val.keys))
    units["empty_generations"] = "samples"
    return values, units


def render_sample(decoded: Decoded, reference, motion_format: str, *, frames: int = 4,
                  size: int = 192) -> np.ndarray:
    """``frames`` evenly spaced frames of the generated motion beside the ground truth, stacked
    top to bottom: RGB uint8 ``[frames * H, 2 * size, 3]`` for TensorBoard's ``add_image``.

    Raises:
        FileNotFoundError: ``smplx133`` without an SMPL-X model (see :mod:`madis.viz`).
    """
    from madis.viz import animation

    anim = animation(decoded.motion, motion_format, reference=reference.motion,
                     text=f"[{reference.lang}] {reference.text}", size=size)
    idx = np.linspace(0, len(anim) - 1, num=min(frames, len(anim))).round().astype(int)
    return np.concatenate(list(anim.frames(idx)), axis=0)


def gate_plot(decoded: Decoded, fps: float, text: str | None = None) -> np.ndarray | None:
    """The MoP gate plot (paper Figure 7) of a decoded sample, or None without gates."""
    if decoded.gates is None or len(decoded.gates) == 0:
        return None
    from madis.viz import plot_gates

    return plot_gates(decoded.gates, fps=fps, text=text)
