"""The service's model side, without Ray: a loaded checkpoint that turns a batch of validated
requests into tokens and motion, and the response encodings (JSON, ``.pose``, GIF).

The Ray Serve deployment (:mod:`madis.serve.app`) holds one :class:`LoadedModel` at a time and
swaps in a new one when ``best.json`` changes; everything here runs in a worker thread of a
replica, one batch at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from madis.motion.base import PARTS, MotionFormat, get_format
from madis.serve.config import ServeConfig
from madis.serve.requests import SAMPLERS, GenerateRequest, Limits, RequestError
from madis.serve.source import ModelChoice, training_languages


@dataclass
class GenerationResult:
    """One request's output.

    Attributes:
        request: the validated request.
        tokens: ``[n, 3]`` int64 codes (body, lhand, rhand) up to the first [EOS].
        motion: ``[4n, D]`` float32 in the motion format's units.
        step: checkpoint step of the model that answered (None when unknown).
        timings: milliseconds: ``generate_ms`` (the batch's reverse process), ``decode_ms``
            (tokens -> motion), and ``batch_size`` (requests decoded together).
    """

    request: GenerateRequest
    tokens: np.ndarray
    motion: np.ndarray
    step: int | None
    timings: dict[str, float] = field(default_factory=dict)


class LoadedModel:
    """A checkpoint loaded for serving: the model, its tokenizer and the request limits.

    Args:
        model: a ``MaDiSModel`` with its motion tokenizer attached (``load_generator``).
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
        stages = len(mcfg.utc_checkpoints) + 1
        # more steps than positions would only add steps that unmask nothing
        top = min(cfg.max_num_steps, mcfg.num_positions)
        self.limits = Limits(
            max_body_bytes=cfg.max_body_bytes, max_text_chars=cfg.max_text_chars,
            languages=self.languages, min_num_steps={"utc": stages, "vanilla": 1},
            max_num_steps=top, default_num_steps=min(mcfg.num_steps, top),
            default_sampler=mcfg.sampler)

    @classmethod
    def load(cls, choice: ModelChoice, cfg: ServeConfig, device: str = "cpu") -> "LoadedModel":
        """Load ``choice``'s export onto ``device``.

        Raises:
            FileNotFoundError: no model or tokenizer there.
            ValueError: no languages known (``serve.languages`` empty and none recorded).
        """
        from madis.mdlm.task import load_generator

        model = load_generator(choice.export_url, map_location=device)
        model.eval()
        languages = cfg.languages or training_languages(choice.export_url)
        return cls(model, choice, cfg, languages)

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerationResult | RequestError]:
        """Decode a batch; requests sharing ``(sampler, num_steps)`` run as one ``generate``
        call (docs/design.md#reverse-process-eq-2, greedy unless ``model.temperature`` > 0).

        Returns one entry per request, in order: a result, or a :class:`RequestError` (422)
        when the model refuses the request's settings.
        """
        out: list[GenerationResult | RequestError | None] = [None] * len(requests)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.sampler, r.num_steps), []).append(i)
        for (sampler, steps), idx in groups.items():
            if sampler not in SAMPLERS:
                for i in idx:
                    out[i] = RequestError(422, "unknown_sampler", f"unknown sampler {sampler!r}")
                continue
            t0 = time.perf_counter()
            try:
                gen = self.model.generate([requests[i].text for i in idx],
                                          [requests[i].lang for i in idx],
                                          num_steps=steps, sampler=sampler)
            except ValueError as exn:  # e.g. fewer steps than this model's UTC stages
                for i in idx:
                    out[i] = RequestError(422, "bad_settings", str(exn))
                continue
            t1 = time.perf_counter()
            with torch.no_grad():
                motion = self.model.tokenizer.decode(gen.tokens).float().cpu().numpy()
            t2 = time.perf_counter()
            tokens = gen.tokens.cpu().numpy()
            for row, i in enumerate(idx):
                n = int(gen.lengths[row])
                out[i] = GenerationResult(
                    request=requests[i], tokens=tokens[row, :n].astype(np.int64),
                    motion=motion[row, : 4 * n].astype(np.float32), step=self.choice.step,
                    timings={"generate_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1),
                             "batch_size": len(idx)})
        return out  # type: ignore[return-value]

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
                      "num_positions": m.num_positions, "max_frames": 4 * m.num_positions,
                      "sampler": m.sampler, "num_steps": m.num_steps,
                      "utc_checkpoints": list(m.utc_checkpoints),
                      "codebook_sizes": list(self.model.codebook_sizes),
                      "device": str(self.model.device)},
            "motion": {"format": self.format.name, "dim": self.format.dim, "fps": self.format.fps,
                       "units": self.format.units},
            "languages": list(self.languages),
            "limits": {"max_body_bytes": self.limits.max_body_bytes,
                       "max_text_chars": self.limits.max_text_chars,
                       "num_steps": {s: [self.limits.min_num_steps[s], self.limits.max_num_steps]
                                     for s in SAMPLERS},
                       "default_num_steps": self.limits.default_num_steps,
                       "default_sampler": self.limits.default_sampler},
        }


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
        RequestError: 422 when the model generated no frames for this text.
        FileNotFoundError: ``smplx133`` without SMPL-X model files.
    """
    from madis.viz import encode_gif, render_frames

    _require_frames(result)
    r = result.request
    frames = render_frames(result.motion, fmt, text=f"[{r.lang}] {r.text}", size=size)
    return encode_gif(frames, fmt.fps)


def render_pose(result: GenerationResult, fmt: MotionFormat) -> bytes:
    """``.pose`` bytes of the generated motion (:func:`madis.serve.pose.pose_bytes`).

    Raises:
        RequestError: 422 when the model generated no frames for this text.
    """
    from madis.serve.pose import pose_bytes

    _require_frames(result)
    return pose_bytes(result.motion, fmt)


def _require_frames(result: GenerationResult) -> None:
    if len(result.motion) == 0:
        raise RequestError(422, "no_frames", "the model ended the sign sequence at once ([EOS] "
                                             "first): there are no frames to write")
