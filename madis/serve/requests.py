"""``POST /generate`` request bodies: parsing and validation, with a clear 4xx for each fault.

No Ray and no web framework here: :func:`parse_generate` takes the raw body bytes, so every
rule is tested without a server, and the deployment only maps :class:`RequestError` to a JSON
response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SAMPLERS = ("utc", "vanilla")
#: ``?format=`` values of ``POST /generate``
OUTPUT_FORMATS = ("json", "pose", "gif")
FIELDS = ("text", "lang", "num_steps", "sampler", "threshold", "pin", "temperature", "seed")
#: largest ``"temperature"`` a request may ask for (beyond it a sample is noise)
MAX_TEMPERATURE = 10.0
#: parts of ``"pin"`` and the body's name for a pinned end of the sequence
PIN_PARTS = ("body", "lhand", "rhand")
PIN_EOS = "[EOS]"


class RequestError(ValueError):
    """A request the service refuses; ``status`` is the HTTP status (4xx), ``code`` a stable
    machine-readable name, ``message`` says what to change."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def to_json(self) -> dict:
        """The response body: ``{"error": {"code": ..., "message": ...}}``."""
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Limits:
    """What a request may ask of the loaded model.

    Attributes:
        max_body_bytes: request body size.
        max_text_chars: characters of the stripped text.
        languages: accepted sign-language codes.
        min_num_steps: per sampler, the fewest steps K it can run (UTC: one per stage).
        max_num_steps: the most steps K.
        default_num_steps, default_sampler: used when the request leaves them out.
        num_positions: N, the longest ``pin`` list (0: pins refused).
        codebook_sizes: ``(K_B, K_L, K_R)``, the ids a pin may hold.
    """

    max_body_bytes: int
    max_text_chars: int
    languages: tuple[str, ...]
    min_num_steps: dict[str, int]
    max_num_steps: int
    default_num_steps: int
    default_sampler: str
    num_positions: int = 0
    codebook_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerateRequest:
    """A validated request: ``text`` stripped, every field filled.

    Attributes:
        threshold: confidence threshold of the decoding (None: the model's ``model.threshold``).
        pin: ``((body, lhand, rhand), ...)`` per position up to the last pinned one, -1 where
            free and the body's ``K_B`` for ``[EOS]``; None without pins.
        temperature: sampling temperature (None: the model's ``model.temperature``; 0 greedy).
        seed: seeds this request's own sampling noise (default 0): the same request gives
            the same answer, whatever it is batched with.
    """

    text: str
    lang: str
    num_steps: int
    sampler: str
    threshold: float | None = None
    pin: tuple[tuple[int, int, int], ...] | None = None
    temperature: float | None = None
    seed: int = 0


def check_body_size(length: int, limits: Limits) -> None:
    """Raises :class:`RequestError` 413 when a body of ``length`` bytes is over the limit."""
    if length > limits.max_body_bytes:
        raise RequestError(413, "body_too_large", f"the request body has {length} bytes; the "
                                                  f"limit is {limits.max_body_bytes}")


def parse_output_format(value: str | None) -> str:
    """``?format=`` -> one of :data:`OUTPUT_FORMATS` (default ``json``).

    Raises:
        RequestError: 400 for another value.
    """
    fmt = (value or "json").lower()
    if fmt not in OUTPUT_FORMATS:
        raise RequestError(400, "unknown_format", f"format must be one of {list(OUTPUT_FORMATS)}, "
                                                  f"got {value!r}")
    return fmt


def parse_generate(body: bytes, limits: Limits) -> GenerateRequest:
    """Parse and validate a ``POST /generate`` body ``{"text", "lang", "num_steps"?,
    "sampler"?, "threshold"?, "pin"?, "temperature"?, "seed"?}``.

    Raises:
        RequestError: 413 body over ``max_body_bytes``; 400 body not UTF-8, not JSON, or not a
            JSON object; 422 a missing, unknown or mistyped field, empty or whitespace text,
            text over ``max_text_chars``, unknown language or sampler, ``num_steps`` out of
            ``[min_num_steps[sampler], max_num_steps]``, a temperature outside
            ``[0, MAX_TEMPERATURE]``, a seed that is not a non-negative integer.
    """
    check_body_size(len(body), limits)
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError as exn:
        raise RequestError(400, "not_utf8", f"the body is not UTF-8 ({exn.reason} at byte "
                                            f"{exn.start})") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exn:
        raise RequestError(400, "not_json", f"the body is not JSON ({exn.msg} at line "
                                            f"{exn.lineno} column {exn.colno})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "not_object", f"the body must be a JSON object with {list(FIELDS)}, "
                                              f"got a {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(422, "unknown_field", f"unknown field(s) {unknown}; known: {list(FIELDS)}")

    text = data.get("text")
    if not isinstance(text, str):
        raise RequestError(422, "bad_text", f"text must be a string, got {_kind(text)}")
    text = text.strip()
    if not text:
        raise RequestError(422, "empty_text", "text is empty (or only whitespace)")
    if len(text) > limits.max_text_chars:
        raise RequestError(422, "text_too_long", f"text has {len(text)} characters; the limit is "
                                                 f"{limits.max_text_chars}")

    lang = data.get("lang")
    if not isinstance(lang, str):
        raise RequestError(422, "bad_lang", f"lang must be a sign-language code string, got "
                                            f"{_kind(lang)}")
    if lang not in limits.languages:
        raise RequestError(422, "unknown_lang", f"unknown language {lang!r}; this model knows "
                                                f"{list(limits.languages)}")

    sampler = data.get("sampler", limits.default_sampler)
    if sampler not in SAMPLERS:
        raise RequestError(422, "unknown_sampler", f"sampler must be one of {list(SAMPLERS)}, got "
                                                   f"{sampler!r}")

    steps = data.get("num_steps", limits.default_num_steps)
    if not isinstance(steps, int) or isinstance(steps, bool):
        raise RequestError(422, "bad_num_steps", f"num_steps must be an integer, got {_kind(steps)}")
    lo, hi = limits.min_num_steps[sampler], limits.max_num_steps
    if not lo <= steps <= hi:
        raise RequestError(422, "num_steps_out_of_range", f"num_steps must be in [{lo}, {hi}] for "
                                                          f"the {sampler} sampler, got {steps}")
    threshold = data.get("threshold")
    if threshold is not None:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) \
                or not 0 < threshold < float("inf"):
            raise RequestError(422, "bad_threshold", f"threshold must be a number > 0 (a "
                                                     f"probability; above 1 = the fixed schedule) "
                                                     f"or null, got {_kind(threshold)}")
        threshold = float(threshold)
    pin = parse_pin(data["pin"], limits) if data.get("pin") is not None else None
    temperature = data.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) \
                or not 0 <= temperature <= MAX_TEMPERATURE:
            raise RequestError(422, "bad_temperature", f"temperature must be a number in "
                                                       f"[0, {MAX_TEMPERATURE}] (0: greedy) or "
                                                       f"null, got {_kind(temperature)}")
        temperature = float(temperature)
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
        raise RequestError(422, "bad_seed", f"seed must be an integer in [0, 2^63), got "
                                            f"{_kind(seed)}")
    return GenerateRequest(text=text, lang=lang, num_steps=steps, sampler=sampler,
                           threshold=threshold, pin=pin, temperature=temperature, seed=seed)


def parse_pin(value, limits: Limits) -> tuple[tuple[int, int, int], ...] | None:
    """``{"body" | "lhand" | "rhand": [id or null, ...]}`` -> one ``(body, lhand, rhand)`` per
    position up to the last pinned one (-1 free; ``"[EOS]"`` in the body list -> ``K_B``), or
    None when every entry is null. docs/decoding.md says what pinning does.

    Raises:
        RequestError: 422 ``bad_pin`` (not an object of lists of ids / null, an unknown part),
            ``pin_too_long`` (a list over N), ``bad_pin_id`` (an id outside its part's codebook,
            or a pin at or after a pinned ``[EOS]``; :func:`madis.mdlm.sampling.check_pins`).
    """
    import torch

    from madis.mdlm.sampling import check_pins

    if not isinstance(value, dict) or not value:
        raise RequestError(422, "bad_pin", f"pin must be an object {{part: [id or null, ...]}} "
                                           f"with parts {list(PIN_PARTS)}, got {_kind(value)}")
    unknown = sorted(set(value) - set(PIN_PARTS))
    if unknown:
        raise RequestError(422, "bad_pin", f"unknown pin part(s) {unknown}; parts: {list(PIN_PARTS)}")
    n = limits.num_positions
    kb = limits.codebook_sizes[0] if limits.codebook_sizes else 0
    width = 0
    for part, ids in value.items():
        if not isinstance(ids, list):
            raise RequestError(422, "bad_pin", f"pin.{part} must be a list of ids or null, got "
                                               f"{_kind(ids)}")
        if len(ids) > n:
            raise RequestError(422, "pin_too_long", f"pin.{part} has {len(ids)} entries; the model "
                                                    f"has N = {n} sign positions")
        for i, t in enumerate(ids):
            ok = t is None or (isinstance(t, int) and not isinstance(t, bool)) \
                or (part == "body" and t == PIN_EOS)
            if not ok:
                raise RequestError(422, "bad_pin", f"pin.{part}[{i}] must be an integer id or "
                                                   f"null{' or ' + repr(PIN_EOS) if part == 'body' else ''}"
                                                   f", got {_kind(t)}")
        width = max(width, len(ids))
    rows = [[-1, -1, -1] for _ in range(width)]
    for p, part in enumerate(PIN_PARTS):
        for i, t in enumerate(value.get(part) or []):
            if t is None:
                continue
            if t != PIN_EOS and not 0 <= t < limits.codebook_sizes[p]:
                raise RequestError(422, "bad_pin_id", f"pin.{part}[{i}] = {t} is outside the "
                                                      f"{part} codebook [0, {limits.codebook_sizes[p]})"
                                                      f"{'; the end is pinned as ' + repr(PIN_EOS) if p == 0 else ''}")
            rows[i][p] = kb if t == PIN_EOS else t
    try:
        check_pins(torch.tensor([rows], dtype=torch.long).view(1, width, 3),
                   limits.codebook_sizes)
    except ValueError as exn:
        raise RequestError(422, "bad_pin_id", f"pin: {exn}") from None
    last = max((i for i, r in enumerate(rows) if r != [-1, -1, -1]), default=-1)
    if last < 0:
        return None
    return tuple(tuple(r) for r in rows[: last + 1])


def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
