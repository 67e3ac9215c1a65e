"""The service's model side, without Ray: a loaded checkpoint that turns a batch of validated
requests into tokens and motion, and the response encodings (JSON, ``.pose``, GIF).

The Ray Serve deployment (:mod:`madis.serve.app`) holds one :class:`LoadedModel` at a time and
swaps in a new one when ``best.json`` changes; everything here runs in the worker threads of a
replica, one per batch in flight, computing in turns (:mod:`madis.serve.stage_gate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from madis.motion.base import FRAMES_PER_POSITION, PARTS, MotionFormat, get_format
from madis.serve.config import ServeConfig
from madis.serve.requests import SAMPLERS, GenerateRequest, Limits, RequestError
from madis.serve.source import ModelChoice, training_languages
from madis.serve.stage_gate import StageGate


@dataclass
class GenerationResult:
    """One request's output.

    Attributes:
        request: the validated request.
        tokens: ``[n, 3]`` int64 codes (body, lhand, rhand) up to the first [EOS].
        motion: ``[4n, D]`` float32 in the motion format's units (``n = 0``: the still mean
            pose of ``decode_motion``, docs/design.md#empty-generations).
        step: checkpoint step of the model that answered (None when unknown).
        timings: milliseconds: ``generate_ms`` (the batch's reverse process, with the turns
            other batches took between its stages, :mod:`madis.serve.stage_gate`), ``decode_ms``
            (tokens -> motion), and ``batch_size`` (requests decoded together).
        steps_used: unmasking steps that decided some of this request's positions.
        threshold: the confidence threshold decoded with (None: the fixed schedule).
    """

    request: GenerateRequest
    tokens: np.ndarray
    motion: np.ndarray
    step: int | None
    timings: dict[str, float] = field(default_factory=dict)
    steps_used: int | None = None
    threshold: float | None = None


@dataclass
class StageView:
    """A request's state after one UTC stage (``POST /generate/stream``).

    Attributes:
        stage: 1-based stage number; num_stages: stages of the sampler.
        tokens: ``[L, 3]`` int64 codes, -1 where still masked (L: see :func:`stage_views`).
        motion: ``[4L, D]`` float32, format units, decoded from the decided tokens with the
            masked positions interpolated.
    """

    stage: int
    num_stages: int
    tokens: np.ndarray
    motion: np.ndarray


class LoadedModel:
    """A checkpoint loaded for serving: the model, its tokenizer and the request limits.

    Args:
        model: a ``MaDiSModel`` or ``ARBaseline`` with its motion tokenizer attached
            (``load_generator``).
        choice: where it came from (:class:`~madis.serve.source.ModelChoice`).
        cfg: the ``serve`` section.
        languages: accepted sign-language codes.
    """

    def __init__(self, model, choice: ModelChoice, cfg: ServeConfig, languages: Sequence[str]):
        self.model, self.choice, self.cfg = model, choice, cfg
        self.languages = tuple(languages)
        fmt = model.tokenizer.motion_format
        self.format: MotionFormat = get_format(fmt) if isinstance(fmt, str) else fmt
        mcfg = model.cfg
        stages = model.decoding_stages("utc")
        # more steps than positions would only add steps that unmask nothing
        top = min(cfg.max_num_steps, mcfg.num_positions)
        self.limits = Limits(
            max_body_bytes=cfg.max_body_bytes, max_text_chars=cfg.max_text_chars,
            languages=self.languages, min_num_steps={"utc": stages, "vanilla": 1},
            max_num_steps=top, default_num_steps=min(mcfg.num_steps, top),
            default_sampler=mcfg.sampler, num_positions=mcfg.num_positions,
            codebook_sizes=tuple(model.codebook_sizes))

    @classmethod
    def load(cls, choice: ModelChoice, cfg: ServeConfig, device: str = "cpu") -> "LoadedModel":
        """Load ``choice``'s export onto ``device``.

        Raises:
            FileNotFoundError: no model or tokenizer there.
            ValueError: no languages known (``serve.languages`` empty and none recorded).
        """
        from madis.mdlm.exports import load_generator

        model = load_generator(choice.export_url, map_location=device)
        model.eval()
        languages = cfg.languages or training_languages(choice.export_url)
        return cls(model, choice, cfg, languages)

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerateRequest],
                 sinks: Sequence[Callable[[StageView], None] | None] | None = None,
                 gate: StageGate | None = None) -> list[GenerationResult | RequestError]:
        """Decode a batch; requests sharing ``(sampler, num_steps, threshold, temperature)`` and
        whether they pin tokens run as one ``generate`` call (docs/design.md#reverse-process-eq-2),
        each request sampling with its own seeded generator, so a request's answer never depends
        on its neighbours.

        Args:
            sinks: per request, None or a callable that gets a :class:`StageView` after each
                UTC stage (called on this thread, before the result is returned).
            gate: shared with the replica's other decoding threads: each group's decode
                computes only in its turns, one UTC stage per turn, the tokens -> motion
                decoding in the turn after its last stage (:class:`~madis.serve.stage_gate.StageGate`).
        Returns one entry per request, in order: a result, or a :class:`RequestError` (422)
        when the model refuses the request's settings.
        """
        out: list[GenerationResult | RequestError | None] = [None] * len(requests)
        sinks = list(sinks) if sinks is not None else [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.sampler, r.num_steps, r.threshold, r.pin is not None,
                               r.temperature), []).append(i)
        for (sampler, steps, threshold, pinned, temperature), idx in groups.items():
            if sampler not in SAMPLERS:
                for i in idx:
                    out[i] = RequestError(422, "unknown_sampler", f"unknown sampler {sampler!r}")
                continue
            on_stage = self._stage_sink([sinks[i] for i in idx], sampler)
            if gate is not None:
                ticket = gate.ticket()
                gate.acquire(0, ticket)
                on_stage = gate.between_stages(ticket, on_stage)
            try:
                out_group = self._generate_group(requests, idx, sampler, steps, threshold, pinned,
                                                 temperature, on_stage)
            finally:
                if gate is not None:
                    gate.release()
            for i, res in zip(idx, out_group):
                out[i] = res
        return out  # type: ignore[return-value]

    def _generate_group(self, requests, idx: list[int], sampler: str, steps, threshold, pinned,
                        temperature, on_stage) -> list[GenerationResult | RequestError]:
        """One ``generate`` call and its motion decoding for the requests ``idx`` (a group of
        :meth:`generate`); a refusal of the settings becomes a 422 for each."""
        t0 = time.perf_counter()
        try:
            gen = self.model.generate([requests[i].text for i in idx],
                                      [requests[i].lang for i in idx],
                                      num_steps=steps, sampler=sampler, threshold=threshold,
                                      pins=self._pins([requests[i] for i in idx]) if pinned else None,
                                      on_stage_end=on_stage, temperature=temperature,
                                      generator=[torch.Generator(device=self.model.device)
                                                 .manual_seed(requests[i].seed) for i in idx])
        except ValueError as exn:  # e.g. fewer steps than this model's UTC stages
            return [RequestError(422, "bad_settings", str(exn)) for _ in idx]
        t1 = time.perf_counter()
        motions = self.model.decode_motion(gen)
        t2 = time.perf_counter()
        tokens = gen.tokens.cpu().numpy()
        used = self.model.cfg.threshold if threshold is None else threshold
        return [GenerationResult(
            request=requests[i], tokens=tokens[row, :int(gen.lengths[row])].astype(np.int64),
            motion=motions[row], step=self.choice.step,
            timings={"generate_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1),
                     "batch_size": len(idx)},
            steps_used=int(gen.steps_used[row]), threshold=used) for row, i in enumerate(idx)]

    def _pins(self, requests: Sequence[GenerateRequest]) -> torch.Tensor:
        """``[B, N, 3]`` pins of the requests (-1 free)."""
        n = self.model.cfg.num_positions
        pins = torch.full((len(requests), n, 3), -1, dtype=torch.long)
        for b, r in enumerate(requests):
            if r.pin:
                pins[b, : len(r.pin)] = torch.tensor(r.pin, dtype=torch.long)
        return pins

    def _stage_sink(self, sinks: list, sampler: str):
        """The sampler's ``on_stage_end`` for one group: the stage views of the rows that have
        a sink (None when no row has one)."""
        rows = [b for b, s in enumerate(sinks) if s is not None]
        if not rows:
            return None
        num_stages = self.model.decoding_stages(sampler)

        def on_stage_end(stage: int, tokens: torch.Tensor, masked: torch.Tensor) -> None:
            views = stage_views(self.model.tokenizer, tokens[rows], masked[rows],
                                self.model.codebook_sizes[0])
            for b, (codes, motion) in zip(rows, views):
                sinks[b](StageView(stage + 1, num_stages, codes, motion))

        return on_stage_end

    # ------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """What ``GET /info`` reports about the model (JSON-able)."""
        c, m = self.choice, self.model.cfg
        return {
            "checkpoint": {"export_url": c.export_url, "step": c.step, "source": c.source,
                           "metric": c.metric, "mode": c.mode, "value": c.value,
                           "metrics": c.metrics, "best_updated_at": c.updated_at},
            "model": {"class": type(self.model).__name__, "backbone": m.backbone,
                      "parameters": sum(p.numel() for p in self.model.parameters()),
                      "num_positions": m.num_positions,
                      "max_frames": FRAMES_PER_POSITION * m.num_positions,
                      "sampler": m.sampler, "num_steps": m.num_steps,
                      "utc_checkpoints": list(m.utc_checkpoints),
                      "codebook_sizes": list(self.model.codebook_sizes),
                      "device": str(self.model.device)},
            "motion": {"format": self.format.name, "dim": self.format.dim, "fps": self.format.fps,
                       "units": self.format.units},
            "languages": list(self.languages),
            "language_names": language_names(self.languages),
            "limits": {"max_body_bytes": self.limits.max_body_bytes,
                       "max_text_chars": self.limits.max_text_chars,
                       "num_steps": {s: [self.limits.min_num_steps[s], self.limits.max_num_steps]
                                     for s in SAMPLERS},
                       "default_num_steps": self.limits.default_num_steps,
                       "default_sampler": self.limits.default_sampler,
                       "default_threshold": m.threshold,
                       "pin": {"max_positions": m.num_positions,
                               "codebook_sizes": dict(zip(PARTS, self.model.codebook_sizes)),
                               "eos": "[EOS]"}},
        }


def language_names(codes: Sequence[str]) -> dict[str, str]:
    """``{code: name}`` of ISO 639-3 sign-language codes (pycountry's ISO 639-3 table, e.g.
    ``ase`` -> ``American Sign Language``); a code it does not know keeps the code as name."""
    import pycountry

    out = {}
    for code in codes:
        lang = pycountry.languages.get(alpha_3=code) if len(code) == 3 else None
        out[code] = lang.name if lang is not None else code
    return out


# ---------------------------------------------------------------------- encodings
def result_json(result: GenerationResult, fmt: MotionFormat, *, screen: bool = False,
                decimals: int = 5) -> bytes:
    """The JSON body of ``POST /generate``, encoded.

    ``tokens`` holds the three streams ``{"body": [n], "lhand": [n], "rhand": [n]}``, ``motion``
    the ``[4n, D]`` frames (format units, rounded to ``decimals``). With ``screen``, also the
    front view the demo page draws: ``{"joints": {part: [4n, J_p, 2]}, "bones": {part:
    [[a, b], ...]}}`` (:func:`madis.viz.screen_joints`; empty for a motion without frames).

    orjson writes the float32 arrays directly (shortest float32 text): a 256 x 165 motion in
    about 1 ms and 0.35 MB, against 25 ms and 0.9 MB through ``json`` and Python floats.
    """
    import orjson

    r = result.request
    body: dict[str, Any] = {
        "text": r.text, "lang": r.lang, "sampler": r.sampler, "num_steps": r.num_steps,
        "threshold": result.threshold, "steps_used": result.steps_used,
        "checkpoint_step": result.step,
        "length": int(len(result.tokens)), "frames": int(len(result.motion)),
        "tokens": {p: np.ascontiguousarray(result.tokens[:, k]) for k, p in enumerate(PARTS)},
        "format": fmt.name, "fps": fmt.fps, "units": fmt.units,
        "motion": np.round(result.motion, decimals).astype(np.float32),
        "timings": rounded_timings(result.timings),
    }
    if screen:
        body["screen"] = screen_view(result.motion, fmt)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def stage_views(tokenizer, tokens: torch.Tensor, masked: torch.Tensor, body_codes: int
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokens and motion of partly decided sequences (docs/decoding.md, streaming).

    The length L of a row is its first decided ``[EOS]``/``[PAD]`` position (N while none is
    decided). Each part's codebook rows at the decided positions before L are interpolated
    linearly across the masked positions between them (held before the first and after the
    last decided one) and decoded by the tokenizer's decoders.

    Args:
        tokens: ``[B, N, 3]`` head-space tokens; masked: bool ``[B, N]``.
    Returns:
        per row ``(codes [L, 3] int64 with -1 where masked, motion [4L, D] float32)``; a row
        with no decided code before L has an empty motion.
    """
    b, n = masked.shape
    pos = torch.arange(n, device=tokens.device)
    special = ~masked & (tokens[..., 0] >= body_codes)
    lengths = torch.where(special, pos, n).min(1).values  # b
    known = ~masked & (pos[None, :] < lengths[:, None])  # b, n
    # nearest decided position on each side (-1 / n where none)
    prev = torch.where(known, pos, -1).cummax(1).values
    nxt = torch.where(known, pos, n).flip(1).cummin(1).values.flip(1)
    has_prev, has_next = prev >= 0, nxt < n
    lo = torch.where(has_prev, prev, nxt).clamp(0, n - 1)
    hi = torch.where(has_next, nxt, prev).clamp(0, n - 1)
    w = torch.where(has_prev & has_next & (hi > lo),
                    (pos[None, :] - lo).float() / (hi - lo).clamp(min=1).float(), 0.0)[..., None]
    latents = []
    with torch.no_grad():
        for j, part in enumerate(PARTS):
            q = tokenizer.parts[part].quantizer
            z = q.dequantize(tokens[..., j].clamp(0, tokenizer.codebook_sizes[j] - 1))  # b, n, d
            z_lo = z.gather(1, lo[..., None].expand_as(z))
            z_hi = z.gather(1, hi[..., None].expand_as(z))
            latents.append(z_lo + w * (z_hi - z_lo))
        real = pos[None, :] < lengths[:, None]
        motion = tokenizer.decode_latents(latents, normalized=False, token_mask=real)
    motion = motion.float().cpu().numpy()
    codes = torch.where(masked[..., None], -1, tokens).cpu().numpy()
    out = []
    for r in range(b):
        length = int(lengths[r])
        frames = motion[r, : FRAMES_PER_POSITION * length] if known[r].any() else motion[r, :0]
        out.append((codes[r, :length].astype(np.int64), frames.astype(np.float32)))
    return out


def stage_json(view: StageView, fmt: MotionFormat, *, screen: bool = False,
               decimals: int = 5) -> bytes:
    """The data of one ``event: stage`` of ``POST /generate/stream``: ``stage``,
    ``num_stages``, ``length``, ``frames``, ``tokens`` (``null`` where still masked),
    ``motion`` (and ``screen`` as in :func:`result_json`)."""
    import orjson

    body: dict[str, Any] = {
        "stage": view.stage, "num_stages": view.num_stages, "length": int(len(view.tokens)),
        "frames": int(len(view.motion)),
        "tokens": {p: [None if t < 0 else int(t) for t in view.tokens[:, k]]
                   for k, p in enumerate(PARTS)},
        "format": fmt.name, "fps": fmt.fps, "units": fmt.units,
        "motion": np.round(view.motion, decimals).astype(np.float32),
    }
    if screen:
        body["screen"] = screen_view(view.motion, fmt)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def rounded_timings(timings: dict[str, float]) -> dict[str, float]:
    """Timings with milliseconds to the microsecond."""
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in timings.items()}


def screen_view(motion: np.ndarray, fmt: MotionFormat, decimals: int = 4) -> dict[str, Any]:
    """Front-view 2-D joints (float32 arrays) and bones of a motion, for drawing (see
    :func:`result_json`)."""
    from madis.viz import screen_joints, skeleton_for

    sk = skeleton_for(fmt)
    bones = {p: sk.bone_index(p) for p in PARTS}
    if len(motion) == 0:
        return {"joints": {p: [] for p in PARTS}, "bones": bones}
    joints = screen_joints(motion, fmt)
    return {"joints": {p: np.round(joints[p], decimals).astype(np.float32) for p in PARTS},
            "bones": bones}


def render_gif(result: GenerationResult, fmt: MotionFormat, size: int = 256) -> bytes:
    """GIF bytes of the generated skeleton, the request's text above it, at the format's fps.

    Raises:
        FileNotFoundError: ``smplx133`` without SMPL-X model files.
    """
    from madis.viz import encode_gif, render_frames

    r = result.request
    frames = render_frames(result.motion, fmt, text=f"[{r.lang}] {r.text}", size=size)
    return encode_gif(frames, fmt.fps)


def render_pose(result: GenerationResult, fmt: MotionFormat) -> bytes:
    """``.pose`` bytes of the generated motion (:func:`madis.serve.pose.pose_bytes`)."""
    from madis.serve.pose import pose_bytes

    return pose_bytes(result.motion, fmt)
