"""The service's parts without a server: request rules, checkpoint choice, model side, .pose."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from madis.config import ConfigError, load_tree, section
from madis.serve.config import ServeConfig
from madis.serve.requests import Limits, RequestError, parse_generate, parse_output_format
from madis.fleet.registry import read_best
from madis.serve.source import choose_model, serve_target, training_languages
from madis.serve.testing import write_best, write_run

LIMITS = Limits(max_body_bytes=256, max_text_chars=20, languages=("ase", "gsg"),
                min_num_steps={"utc": 3, "vanilla": 1}, max_num_steps=12, default_num_steps=6,
                default_sampler="utc")


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_valid_request_gets_defaults_and_stripped_text():
    r = parse_generate(body(text="  Guten Tag \n", lang="gsg"), LIMITS)
    assert (r.text, r.lang, r.num_steps, r.sampler) == ("Guten Tag", "gsg", 6, "utc")
    r = parse_generate(body(text="HI", lang="ase", num_steps=1, sampler="vanilla"), LIMITS)
    assert (r.num_steps, r.sampler) == (1, "vanilla")


BAD = [
    (body(text="", lang="ase"), 422, "empty_text"),
    (body(text=" \t\n ", lang="ase"), 422, "empty_text"),
    (body(text="x" * 21, lang="ase"), 422, "text_too_long"),
    (body(text="HI", lang="xyz"), 422, "unknown_lang"),
    (body(text="HI", lang=None), 422, "bad_lang"),
    (body(text=5, lang="ase"), 422, "bad_text"),
    (body(lang="ase"), 422, "bad_text"),
    (b"text=HI&lang=ase", 400, "not_json"),
    (b'{"text": "caf\xe9", "lang": "ase"}', 400, "not_utf8"),
    (body(text="HI", lang="ase", pad="x" * 300), 413, "body_too_large"),
    (b'["HI", "ase"]', 400, "not_object"),
    (body(text="HI", lang="ase", steps=5), 422, "unknown_field"),
    (body(text="HI", lang="ase", num_steps=0), 422, "num_steps_out_of_range"),
    (body(text="HI", lang="ase", num_steps=13), 422, "num_steps_out_of_range"),
    (body(text="HI", lang="ase", num_steps=2), 422, "num_steps_out_of_range"),  # < 3 UTC stages
    (body(text="HI", lang="ase", num_steps="6"), 422, "bad_num_steps"),
    (body(text="HI", lang="ase", num_steps=6.0), 422, "bad_num_steps"),
    (body(text="HI", lang="ase", num_steps=True), 422, "bad_num_steps"),
    (body(text="HI", lang="ase", sampler="greedy"), 422, "unknown_sampler"),
]


@pytest.mark.parametrize("raw,status,code", BAD, ids=[c for _, _, c in BAD])
def test_bad_request_is_refused_with_its_code(raw, status, code):
    with pytest.raises(RequestError) as info:
        parse_generate(raw, LIMITS)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.to_json()["error"]["code"] == code


def test_vanilla_runs_with_fewer_steps_than_utc_stages():
    assert parse_generate(body(text="HI", lang="ase", num_steps=2, sampler="vanilla"),
                          LIMITS).num_steps == 2


def test_output_formats():
    assert [parse_output_format(v) for v in (None, "json", "POSE", "gif")] == ["json", "json", "pose", "gif"]
    with pytest.raises(RequestError) as info:
        parse_output_format("mp4")
    assert info.value.status == 400


def test_a_missing_model_file_is_a_503_that_keeps_its_path_private(tmp_path):
    """?format=gif of SMPL-X motion on a node without the licensed model: 503 with the error
    shape; the server path stays in the replica's log."""
    import asyncio

    from madis.motion.smplx133 import model_file
    from madis.serve.app import _missing_file

    with pytest.raises(FileNotFoundError) as missing:
        model_file(tmp_path / "no-smplx")
    reply = asyncio.run(_missing_file(None, missing.value))
    error = json.loads(reply.body)["error"]
    assert reply.status_code == 503 and error["code"] == "unavailable"
    assert "SMPL-X" in error["message"] and str(tmp_path) not in error["message"]


def test_serve_section_in_both_profiles_and_its_checks():
    for profile in ("cpu-tiny", "paper"):
        cfg = section(load_tree(profile), "serve", ServeConfig)
        assert cfg.host == "127.0.0.1" and cfg.concurrent_batches == 2
        assert cfg.max_ongoing_requests >= cfg.max_batch_size * cfg.concurrent_batches
    assert section(load_tree("paper"), "serve", ServeConfig).replica_gpus == 1.0
    with pytest.raises(ConfigError, match="never fill its batches"):
        ServeConfig(max_batch_size=16, max_ongoing_requests=8, concurrent_batches=1)
    with pytest.raises(ConfigError, match=r"\(8 x 3\)"):
        ServeConfig(max_batch_size=8, concurrent_batches=3, max_ongoing_requests=16)
    with pytest.raises(ConfigError, match="concurrent_batches"):
        ServeConfig(concurrent_batches=0)
    with pytest.raises(ConfigError, match="min_replicas"):
        ServeConfig(min_replicas=3, max_replicas=2)


def test_choose_model_latest_then_best_then_given(tmp_path):
    run = tmp_path / "finetune"
    assert read_best(str(run)) is None
    with pytest.raises(FileNotFoundError, match="no best.json"):
        choose_model(str(run))
    exports = write_run(tmp_path, steps=(10, 20))
    latest = choose_model(str(run))
    assert (latest.source, latest.step, latest.export_url) == ("latest", 20, exports[20])
    (run / "best.json").write_text('{"metric": "dtw_jpe", "mode": "min", "best": null, "history": []}')
    assert choose_model(str(run)).source == "latest"  # nothing evaluated successfully yet
    write_best(run, 10, 0.25)
    best = choose_model(str(run))
    assert (best.source, best.step, best.export_url) == ("best", 10, exports[10])
    assert (best.metric, best.mode, best.value, best.metrics) == ("dtw_jpe", "min", 0.25, {"dtw_jpe": 0.25})
    given = choose_model(str(run), checkpoint=str(run / "checkpoint_00000020"))
    assert (given.source, given.step, given.export_url) == ("given", 20, exports[20])
    assert training_languages(exports[10]) == ["ase", "gsg"]
    (run / "best.json").write_text('{"metric": "dtw_jpe", "mode": "min", "history": [], '
                                   '"best": {"value": 1.0}}')
    with pytest.raises(ValueError, match="lacks best.step"):
        choose_model(str(run))
    (run / "best.json").write_text('{"metric": "dtw_')  # caught half written
    with pytest.raises(ValueError):
        choose_model(str(run))


def test_serve_target_defaults_to_the_finetune_run(tmp_path, monkeypatch):
    tree = load_tree("cpu-tiny", [f"train.storage_path={tmp_path}"])
    assert serve_target(tree) == (f"{tmp_path}/finetune", None)
    monkeypatch.chdir(tmp_path)
    assert serve_target(tree, checkpoint="rel/ckpt") == (None, f"{tmp_path}/rel/ckpt")
    tree = load_tree("cpu-tiny", ["serve.run=s3://b/runs/ft"])
    assert serve_target(tree) == ("s3://b/runs/ft", None)
    job_dir = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "pkg"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)  # as under `ray job submit --working-dir .`
    with pytest.raises(ConfigError, match="absolute path"):
        serve_target(tree, run="storage/finetune")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from madis.serve.generator import LoadedModel

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    write_run(root, steps=(10,))
    return LoadedModel.load(choose_model(str(root / "finetune")), ServeConfig())


def test_batched_generation_equals_one_at_a_time(loaded):
    from madis.serve.requests import GenerateRequest

    reqs = [GenerateRequest("HELLO", "ase", 6, "utc"), GenerateRequest("BERLIN IST GROSS", "gsg", 6, "utc"),
            GenerateRequest("HELLO", "ase", 4, "vanilla")]
    together = loaded.generate(reqs)
    assert [r.timings["batch_size"] for r in together] == [2, 2, 1]  # grouped by (sampler, K)
    for req, res in zip(reqs, together):
        alone = loaded.generate([req])[0]
        assert res.tokens.shape == (12, 3) and res.motion.shape == (48, 165)
        np.testing.assert_array_equal(res.tokens, alone.tokens)
        np.testing.assert_allclose(res.motion, alone.motion, atol=1e-5)
        # the motion is the tokenizer's decoding of the tokens
        ref = loaded.model.tokenizer.decode(torch.as_tensor(res.tokens)[None])[0].numpy()
        np.testing.assert_allclose(res.motion, ref, atol=1e-5)
    assert not np.array_equal(together[0].tokens, together[1].tokens)


def test_sampled_requests_answer_by_their_own_seed(loaded):
    """At temperature > 0 a request's answer depends on its seed alone, not on its batch."""
    from madis.serve.requests import GenerateRequest

    def req(text, lang, seed):
        return GenerateRequest(text, lang, 6, "utc", temperature=1.0, seed=seed)

    together = loaded.generate([req("BERLIN IST GROSS", "gsg", 3), req("HELLO", "ase", 5),
                                req("HELLO", "ase", 6)])
    assert [r.timings["batch_size"] for r in together] == [3, 3, 3]
    alone = loaded.generate([req("HELLO", "ase", 5)])[0]
    np.testing.assert_array_equal(together[1].tokens, alone.tokens)
    assert not np.array_equal(together[1].tokens, together[2].tokens)  # another seed
    greedy = loaded.generate([GenerateRequest("HELLO", "ase", 6, "utc", temperature=0.0)])[0]
    assert not np.array_equal(greedy.tokens, alone.tokens)


def test_pose_file_holds_the_motion(loaded):
    from pose_format import Pose

    from madis.motion.keypoints import read_pose_points
    from madis.serve.generator import render_pose
    from madis.serve.requests import GenerateRequest

    res = loaded.generate([GenerateRequest("HELLO", "ase", 6, "utc")])[0]
    data = render_pose(res, loaded.format)
    points = read_pose_points(data)  # the project's own .pose reader accepts it
    assert points.fps == 25.0 and points.present.all()
    np.testing.assert_allclose(points.xyz.reshape(48, 165), res.motion, atol=1e-6)
    pose = Pose.read(data)
    names = [c.name for c in pose.header.components]
    assert names == ["POSE_LANDMARKS", "LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS"]
    hand = pose.header.components[1]
    assert hand.points[:5] == ["WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP"]
    assert len(hand.limbs) == 21 and "LEFT_SHOULDER" in pose.header.components[0].points


def test_json_body_holds_tokens_motion_and_screen_view(loaded):
    from madis.serve.generator import result_json
    from madis.serve.requests import GenerateRequest
    from madis.viz import screen_joints

    res = loaded.generate([GenerateRequest("HELLO", "ase", 6, "utc")])[0]
    out = json.loads(result_json(res, loaded.format, screen=True))
    assert (out["text"], out["length"], out["frames"], out["checkpoint_step"]) == ("HELLO", 12, 48, 10)
    got = np.stack([out["tokens"][p] for p in ("body", "lhand", "rhand")], -1)
    np.testing.assert_array_equal(got, res.tokens)
    np.testing.assert_allclose(np.asarray(out["motion"]), res.motion, atol=6e-6)
    want = screen_joints(res.motion, "keypoints")
    np.testing.assert_allclose(np.asarray(out["screen"]["joints"]["rhand"]), want["rhand"], atol=6e-5)
    assert len(out["screen"]["bones"]["lhand"]) == 21 and out["timings"]["batch_size"] == 1


def test_an_empty_generation_is_served_as_the_still_mean_pose(tmp_path):
    """docs/design.md#empty-generations: [EOS] first gives no tokens and one position (4 frames)
    of the tokenizer's mean pose, which JSON, GIF and .pose all carry."""
    from madis.serve.generator import LoadedModel, render_gif, render_pose, result_json
    from madis.serve.requests import GenerateRequest

    write_run(tmp_path, steps=(10,))
    lm = LoadedModel.load(choose_model(str(tmp_path / "finetune")), ServeConfig())
    with torch.no_grad():  # the body head says [EOS] at every position
        lm.model.heads.heads[0].bias[lm.model.codebook_sizes[0]] = 1e4
    res = lm.generate([GenerateRequest("HI", "ase", 6, "utc")])[0]
    assert res.tokens.shape == (0, 3) and res.motion.shape == (4, 165)
    mean = lm.model.tokenizer.mean.numpy()
    np.testing.assert_allclose(res.motion, np.broadcast_to(mean, (4, 165)), atol=1e-6)
    out = json.loads(result_json(res, lm.format, screen=True))
    assert (out["length"], out["frames"]) == (0, 4)
    assert render_gif(res, lm.format)[:6] == b"GIF89a" and len(render_pose(res, lm.format)) > 0


def test_an_autoregressive_export_is_served_like_a_madis_one(tmp_path):
    """model.architecture: ar (the Table 1 baseline) loads and answers through the same model
    side: batches, pins kept, one streamed stage, steps used; threshold decoding is refused."""
    from madis.serve.generator import LoadedModel
    from madis.serve.requests import GenerateRequest

    torch.set_num_threads(1)
    write_run(tmp_path, steps=(10,), model_overrides={"architecture": "ar"})
    lm = LoadedModel.load(choose_model(str(tmp_path / "finetune")), ServeConfig())
    assert type(lm.model).__name__ == "ARBaseline" and lm.info()["model"]["class"] == "ARBaseline"
    pin = ((3, -1, 5), (-1, 2, -1))
    reqs = [GenerateRequest("HELLO", "ase", 6, "utc"), GenerateRequest("HAUS", "gsg", 6, "utc"),
            GenerateRequest("HELLO", "ase", 6, "utc", pin=pin)]
    views = []
    res = lm.generate(reqs, [None, None, views.append])
    for r in res:
        assert r.tokens.shape == (12, 3) and r.motion.shape == (48, 165)
        assert r.steps_used == 12  # one step per position; [EOS] is unreachable here
    assert res[2].tokens[0, 0] == 3 and res[2].tokens[0, 2] == 5 and res[2].tokens[1, 1] == 2
    alone = lm.generate([reqs[1]])[0]
    np.testing.assert_array_equal(alone.tokens, res[1].tokens)
    assert [(v.stage, v.num_stages) for v in views] == [(1, 1)]
    np.testing.assert_array_equal(views[0].tokens, res[2].tokens)
    eos = lm.generate([GenerateRequest("HELLO", "ase", 6, "utc", pin=((-1, -1, -1), (2, -1, -1),
                                                                       (8, -1, -1)))])[0]
    assert eos.tokens.shape == (2, 3) and eos.steps_used == 3  # a pinned [EOS] ends the row
    refused = lm.generate([GenerateRequest("HELLO", "ase", 6, "utc", threshold=0.9)])[0]
    assert isinstance(refused, RequestError) and refused.status == 422


def test_stage_gate_gives_the_next_turn_to_the_least_advanced_decode():
    import threading

    from madis.serve.stage_gate import StageGate

    gate, order = StageGate(), []
    a, b, c = gate.ticket(), gate.ticket(), gate.ticket()
    gate.acquire(2, a)  # decode a computes its stage 3

    def wait_turn(stage, ticket):
        gate.acquire(stage, ticket)
        order.append((stage, ticket))
        gate.release()

    threads = [threading.Thread(target=wait_turn, args=k) for k in ((1, b), (0, c), (1, a))]
    for t in threads:
        t.start()
    while gate.waiting < 3:  # all three queued behind a's turn
        threading.Event().wait(0.001)
    assert order == []
    gate.release()
    for t in threads:
        t.join(10)
    # stage first, then arrival: c's first stage, then the second stages of a and b
    assert order == [(0, c), (1, a), (1, b)]
    with pytest.raises(RuntimeError, match="nobody holds"):
        gate.release()


def test_a_batch_arriving_mid_decode_streams_its_first_stage_before_the_first_batch_ends(loaded):
    """Two batches in flight through one gate: the second one's stage 1 runs at the first
    batch's next stage boundary, and both answers are what each batch decodes alone."""
    import threading

    from madis.serve.requests import GenerateRequest
    from madis.serve.stage_gate import StageGate

    gate, events, second = StageGate(), [], {}
    first_reqs = [GenerateRequest("HELLO", "ase", 6, "utc")]
    second_reqs = [GenerateRequest("BERLIN IST GROSS", "gsg", 6, "utc")]

    def start_second():
        second["result"] = loaded.generate(second_reqs, [lambda v: events.append(("B", v.stage))],
                                           gate)

    thread = threading.Thread(target=start_second)

    def first_sink(view):
        events.append(("A", view.stage))
        if view.stage == 1:  # the second batch arrives while the first one decodes
            thread.start()
            while gate.waiting < 1:
                threading.Event().wait(0.001)

    first = loaded.generate(first_reqs, [first_sink], gate)
    thread.join(60)
    stages = loaded.model.decoding_stages("utc")
    assert stages == 3
    assert events == [("A", 1), ("B", 1), ("A", 2), ("B", 2), ("A", 3), ("B", 3)]
    for reqs, got in ((first_reqs, first), (second_reqs, second["result"])):
        alone = loaded.generate(reqs)[0]
        np.testing.assert_array_equal(got[0].tokens, alone.tokens)
        np.testing.assert_allclose(got[0].motion, alone.motion, atol=1e-5)
    assert gate.waiting == 0

