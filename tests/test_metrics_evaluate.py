"""evaluate(): known answers on keypoint motions, real shards, the predictions format and `madis eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from madis.cli import main as madis_main
from madis.data.shards import Sample, write_shards
from madis.metrics import dtw_jpe
from madis.metrics.evaluation import dtw_jpe_scores, evaluate
from madis.metrics.predictions import Prediction, Reference, load_predictions, save_predictions
from madis.metrics.siclip import SiCLIP, SiCLIPConfig
from madis.motion import get_format

FMT = get_format("keypoints")


def _motion(seed, frames=40):
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.normal(0, 0.02, (frames, FMT.dim)), axis=0)
            + rng.normal(0, 1, (1, FMT.dim))).astype(np.float32)


def _tokens(seed, n=10):
    return np.random.default_rng(seed).integers(0, 20, (n, 3))


def _refs(n=4):
    return {f"s{i}": Reference(text=f"word {i}", motion=_motion(i), tokens=_tokens(i), lang="ase")
            for i in range(n)}


def test_identical_and_time_warped_predictions_score_perfectly():
    refs = _refs()
    preds = {k: Prediction(np.repeat(r.motion, 2, axis=0), r.tokens) for k, r in refs.items()}
    res = evaluate(preds, refs, motion_format="keypoints")
    assert res["num_samples"] == {"value": 4, "unit": "samples"}
    assert res["dtw_jpe_body"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert res["dtw_jpe_hands"] == {"value": pytest.approx(0.0, abs=1e-5), "unit": "shoulder widths"}
    for name in ("sibleu4_body", "sibleu4_hands", "bleu1_body", "bleu1_hands"):
        assert res[name] == {"value": pytest.approx(100.0), "unit": "BLEU (0-100)"}
    assert not any(k.startswith("siclip") for k in res)
    # the stream figures: generated equal to reference, so the gate keeps SiBLEU whole
    for name in ("run_share", "distinct", "length", "cross_distance"):
        assert res[name]["value"] == pytest.approx(res[f"ref_{name}"]["value"])
    assert res["length_ratio"]["value"] == pytest.approx(1.0)
    assert res["empty_generations"]["value"] == 0
    assert res["signing_hands"]["value"] == pytest.approx(res["sibleu4_hands"]["value"])


def test_dtw_is_built_on_dtw_jpe_and_hands_average_the_two_hands():
    refs = _refs(3)
    preds = {}
    for k, r in refs.items():
        m = r.motion.copy()
        m[:, FMT.part_index["lhand"][3:]] += 0.5  # moves lhand points 1..20 off the wrist
        preds[k] = Prediction(m)
    res = evaluate(preds, refs, motion_format="keypoints")
    lhand = np.mean([
        dtw_jpe(FMT.joints(preds[k].motion)["lhand"], FMT.joints(r.motion)["lhand"])
        for k, r in refs.items()])
    assert lhand > 0.1
    assert res["dtw_jpe_hands"]["value"] == pytest.approx(lhand / 2, rel=1e-6)  # rhand is 0
    assert res["dtw_jpe_body"]["value"] == pytest.approx(0.0, abs=1e-5)
    # body: cost over the 13 landmarks, aligned on the shoulder midpoint (joint 0)
    g, r = FMT.joints(preds["s0"].motion)["body"], FMT.joints(refs["s0"].motion)["body"]
    assert g.shape[1] == 14
    assert dtw_jpe_scores([preds["s0"].motion], [refs["s0"].motion], FMT)["body"] == pytest.approx(
        dtw_jpe(g, r, 0, list(range(1, 14))), rel=1e-6)
    assert "sibleu4_body" not in res  # no predicted tokens


def test_siclip_metrics_use_the_released_batches():
    refs = _refs(3)
    preds = {k: Prediction(r.motion) for k, r in refs.items()}
    torch.manual_seed(0)
    model = SiCLIP(SiCLIPConfig(width=16, embed_dim=16, num_heads=2, motion_layers=1,
                                text_layers=1, max_text_bytes=16, max_positions=16,
                                retrieval_batch_size=2), "keypoints")
    res = evaluate(preds, refs, siclip=model)
    names = {k for k in res if k.startswith("siclip")}
    assert names == {f"siclip_{d}_R@{k}{s}" for d in ("s2t", "t2s") for k in (1, 5, 10)
                     for s in ("", "_b2")}
    assert res["siclip_s2t_R@5"] == {"value": 100.0, "unit": "%"}  # 3 candidates only
    assert 0.0 <= res["siclip_s2t_R@1"]["value"] <= 100.0


def test_key_mismatches_and_bad_inputs_are_clear_errors():
    refs = _refs(3)
    preds = {k: Prediction(r.motion) for k, r in refs.items()}
    with pytest.raises(ValueError, match="1 of 3 references have no prediction"):
        evaluate({k: preds[k] for k in ("s0", "s1")}, refs, motion_format="keypoints")
    partial = evaluate({k: preds[k] for k in ("s0", "s1")}, refs, motion_format="keypoints",
                       require_all=False)
    assert partial["num_samples"]["value"] == 2
    with pytest.raises(ValueError, match="no reference"):
        evaluate({**preds, "zz": preds["s0"]}, refs, motion_format="keypoints")
    with pytest.raises(ValueError, match="165"):
        evaluate({**preds, "s0": Prediction(np.zeros((40, 10)))}, refs, motion_format="keypoints")
    with pytest.raises(ValueError, match="lack tokens"):
        evaluate({**preds, "s0": Prediction(refs["s0"].motion, refs["s0"].tokens)}, refs,
                 motion_format="keypoints")
    with pytest.raises(ValueError, match="motion format"):
        evaluate(preds, refs)


def test_predictions_directory_roundtrip_and_errors(tmp_path):
    preds = {"a": Prediction(_motion(0), _tokens(0)), "b": Prediction(_motion(1))}
    save_predictions(tmp_path / "p", preds, "keypoints", checkpoint="step-10")
    meta, back = load_predictions(tmp_path / "p")
    assert meta == {"format": "keypoints", "checkpoint": "step-10"}
    assert sorted(back) == ["a", "b"]
    np.testing.assert_array_equal(back["a"].motion, preds["a"].motion)
    np.testing.assert_array_equal(back["a"].tokens, preds["a"].tokens)
    assert back["b"].tokens is None
    with pytest.raises(FileNotFoundError, match="predictions.json"):
        load_predictions(tmp_path)
    with pytest.raises(ValueError, match="bad sample key"):
        save_predictions(tmp_path / "q", {"a.b": preds["a"]}, "keypoints")
    (tmp_path / "p" / "c.tokens.npy").write_bytes((tmp_path / "p" / "a.tokens.npy").read_bytes())
    with pytest.raises(ValueError, match="tokens without motion"):
        load_predictions(tmp_path / "p")
    (tmp_path / "p" / "c.tokens.npy").unlink()
    for bad in (_tokens(0).astype(np.float32), _tokens(0) - 100):  # not codebook indices
        np.save(tmp_path / "p" / "a.tokens.npy", bad)
        with pytest.raises(ValueError, match="codebook indices"):
            load_predictions(tmp_path / "p")


@pytest.fixture(scope="module")
def token_shards(tmp_path_factory):
    """A real shard set with tokens: 3 train and 3 test samples of keypoint motion."""
    root = tmp_path_factory.mktemp("shards")

    def samples(split, seeds):
        return [Sample(key=f"{split}-{i}", text=f"word {i}", lang="ase", fps=25.0, source="test",
                       motion=_motion(i).astype(np.float16), valid=np.ones((40, 3), bool),
                       tokens=_tokens(i).astype(np.int16)) for i in seeds]

    write_shards(root, {"train": samples("train", [7, 8, 9]), "test": samples("test", [0, 1, 2])},
                 motion_format="keypoints", fps=25.0, provenance="test", licence="test")
    return root


def test_cli_eval_on_real_shards(token_shards, tmp_path, capsys):
    preds = {f"test-{i}": Prediction(_motion(i).astype(np.float16).astype(np.float32),
                                     _tokens(i)) for i in range(3)}
    preds["test-2"] = Prediction(_motion(5), _tokens(5))  # one wrong sample
    save_predictions(tmp_path / "pred", preds, "keypoints")
    out_json = tmp_path / "metrics.json"
    assert madis_main(["eval", str(tmp_path / "pred"), "--references", str(token_shards),
                       "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "dtw_jpe_body" in printed and "shoulder widths" in printed
    res = json.loads(out_json.read_text())
    wrong = dtw_jpe_scores([_motion(5)], [_motion(2).astype(np.float16).astype(np.float32)], FMT)
    assert res["dtw_jpe_body"]["value"] == pytest.approx(wrong["body"] / 3, rel=1e-5)
    assert 0 < res["sibleu4_body"]["value"] < 100
    # a missing prediction is refused with exit code 2 and a message
    (tmp_path / "pred" / "test-1.motion.npy").unlink()
    (tmp_path / "pred" / "test-1.tokens.npy").unlink()
    assert madis_main(["eval", str(tmp_path / "pred"), "--references", str(token_shards)]) == 2
    assert "have no prediction" in capsys.readouterr().err
