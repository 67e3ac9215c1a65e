"""Issue 15 in the service, without a server: pin and threshold request fields, steps_used,
the stage views a stream sends (tokens with holes, interpolated motion)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_serve_units import loaded  # noqa: F401  (the module's served checkpoint)

from madis.serve.requests import GenerateRequest, Limits, RequestError, parse_generate

LIMITS = Limits(max_body_bytes=4096, max_text_chars=20, languages=("ase", "gsg"),
                min_num_steps={"utc": 3, "vanilla": 1}, max_num_steps=12, default_num_steps=6,
                default_sampler="utc", num_positions=12, codebook_sizes=(8, 16, 16))


def body(**fields) -> bytes:
    return json.dumps({"text": "HI", "lang": "ase", **fields}).encode()


def test_pin_and_threshold_fields():
    r = parse_generate(body(threshold=0.9, pin={"rhand": [None, 3, 15], "body": [1, None, None, "[EOS]"]}),
                       LIMITS)
    assert r.threshold == 0.9
    assert r.pin == ((1, -1, -1), (-1, -1, 3), (-1, -1, 15), (8, -1, -1))
    assert parse_generate(body(pin={"lhand": [None, None]}), LIMITS).pin is None
    assert parse_generate(body(), LIMITS).threshold is None


def test_temperature_and_seed_fields():
    r = parse_generate(body(temperature=0.7, seed=12), LIMITS)
    assert (r.temperature, r.seed) == (0.7, 12)
    r = parse_generate(body(), LIMITS)
    assert (r.temperature, r.seed) == (None, 0)


BAD = [
    (body(temperature=-1), "bad_temperature"),
    (body(temperature="hot"), "bad_temperature"),
    (body(temperature=11), "bad_temperature"),
    (body(seed=-3), "bad_seed"),
    (body(seed=1.5), "bad_seed"),
    (body(seed=True), "bad_seed"),
    (body(threshold=0), "bad_threshold"),
    (body(threshold="high"), "bad_threshold"),
    (body(threshold=True), "bad_threshold"),
    (body(pin=[1, 2]), "bad_pin"),
    (body(pin={"face": [1]}), "bad_pin"),
    (body(pin={"body": 3}), "bad_pin"),
    (body(pin={"body": [1.5]}), "bad_pin"),
    (body(pin={"lhand": ["[EOS]"]}), "bad_pin"),
    (body(pin={"body": [0] * 13}), "pin_too_long"),
    (body(pin={"body": [8]}), "bad_pin_id"),  # K_B is [EOS]: spelt "[EOS]"
    (body(pin={"rhand": [16]}), "bad_pin_id"),
    (body(pin={"rhand": [-1]}), "bad_pin_id"),
    (body(pin={"body": [1, "[EOS]"], "lhand": [None, None, 2]}), "bad_pin_id"),
]


@pytest.mark.parametrize("raw,code", BAD, ids=[f"{c}-{i}" for i, (_, c) in enumerate(BAD)])
def test_bad_pins_and_thresholds_are_422(raw, code):
    with pytest.raises(RequestError) as info:
        parse_generate(raw, LIMITS)
    assert (info.value.status, info.value.code) == (422, code), info.value.message


def test_pinned_request_keeps_its_pins_and_its_neighbours_are_unchanged(loaded):
    free = GenerateRequest("HELLO", "ase", 6, "utc")
    base = loaded.generate([free])[0]
    assert base.steps_used == 6 and base.threshold is None
    pin = tuple((-1, -1, int(t)) for t in (base.tokens[:5, 2] + 1) % 16)  # edit the right hand
    edited = GenerateRequest("HELLO", "ase", 6, "utc", pin=pin)
    fast = GenerateRequest("HELLO", "ase", 6, "utc", threshold=1e-9)
    out = loaded.generate([free, edited, fast])
    np.testing.assert_array_equal(out[0].tokens, base.tokens)  # grouped apart: unchanged
    np.testing.assert_array_equal(out[1].tokens[:5, 2], [p[2] for p in pin])
    assert out[2].steps_used == 3 and out[2].threshold == 1e-9  # one step per stage


def test_stage_views_fill_in_coarse_to_fine(loaded):
    from madis.serve.generator import result_json, stage_json

    views = []
    req = GenerateRequest("HELLO", "ase", 6, "utc")
    res = loaded.generate([req], [views.append])[0]
    assert [v.stage for v in views] == [1, 2, 3] and views[0].num_stages == 3
    holes = [(v.tokens[:, 0] < 0).tolist() for v in views]
    assert holes[0] == [i % 4 != 0 for i in range(12)]
    assert holes[1] == [i % 2 != 0 for i in range(12)]
    assert not any(holes[2])
    for v in views:
        assert v.motion.shape == (48, 165) and np.isfinite(v.motion).all()
        np.testing.assert_array_equal(v.tokens[v.tokens >= 0], res.tokens[v.tokens >= 0])
    # the last stage is the answer; the first a smooth stand-in from a quarter of the tokens
    np.testing.assert_allclose(views[-1].motion, res.motion, atol=1e-5)
    assert not np.allclose(views[0].motion, res.motion, atol=1e-3)
    data = json.loads(stage_json(views[0], loaded.format, screen=True))
    assert data["stage"] == 1 and data["tokens"]["body"][1] is None
    assert data["tokens"]["body"][0] == int(res.tokens[0, 0]) and data["frames"] == 48
    assert "joints" in data["screen"]
    final = json.loads(result_json(res, loaded.format))
    assert final["steps_used"] == 6 and final["threshold"] is None
