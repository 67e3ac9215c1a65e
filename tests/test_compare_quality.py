"""benchmarks/compare_quality.py's pieces without training: rows, run identity, seeds, tables.

The whole benchmark (the real jobs on a local Ray cluster) runs as a smoke test in
``test_compare_quality_end_to_end`` (slow)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import compare_quality as cq  # noqa: E402


def _digest(row, job, seed=0, init=None, extra=()):
    from madis.config import load_tree

    runner = cq.Runner("/runs", "s3://q/tokens", ["s3://q/tokens"], list(extra))
    return cq.run_digest(load_tree(row.config, runner._args(row, seed)), job,
                         ["s3://q/tokens"], init)


def test_rows_share_runs_exactly_when_their_configs_agree():
    main, abl = cq.main_rows("cpu-tiny"), cq.ablation_rows()
    madis = main["madis"]
    pre = _digest(madis, "pretrain")
    # Table 4 rows change only fine-tuning and decoding: they share MaDiS's pretraining
    for name in ("t4-utc-none", "t4-utc-050", "t4-utc-075", "t4-utc-both"):
        assert _digest(abl[name], "pretrain") == pre, name
    assert _digest(abl["t4-utc-none"], "finetune", init="x") != _digest(madis, "finetune", init="x")
    # rows restating the profile's recipe are MaDiS itself (nothing trained twice)
    assert _digest(abl["t5-sparse-top1"], "pretrain") == pre
    assert _digest(abl["t5-sparse-top1"], "finetune", init="x") == _digest(madis, "finetune",
                                                                          init="x")
    # rows that change pretraining (t3-tri-level: the paper's masked texts, which cpu-tiny
    # leaves unmasked), another seed, another step budget: their own runs
    for name in ("t3-sign-only", "t3-tri-level", "t5-simple-avg", "t5-dense"):
        assert _digest(abl[name], "pretrain") != pre
    assert _digest(madis, "pretrain", seed=1) != pre
    assert _digest(madis, "pretrain", extra=["train_pretrain.steps=7"]) != pre
    assert _digest(madis, "pretrain", extra=["train.log_every=3"]) == pre  # logging only
    fine = {n: _digest(main[n], "finetune") for n in ("ar", "mdlm", "madis")}
    assert len(set(fine.values())) == 3


def test_rows_are_chosen_by_name_and_the_ablations_flag():
    def args(**kw):
        return type("A", (), {"config": "cpu-tiny", "rows": None, "ablations": False, **kw})()

    trained, free = cq.choose_rows(args())
    assert list(trained) == ["ar", "mdlm", "madis"] and free == ["nn", "nn_tokens", "floor"]
    trained, free = cq.choose_rows(args(rows="madis,floor", ablations=True))
    assert list(trained)[0] == "madis" and len(trained) == 13 and free == ["floor"]
    assert trained["t3-sign-only"].pretrain and trained["t3-sign-only"].config.endswith(".yaml")
    assert cq.main_rows("cpu-tiny")["ar"].overrides == ["model.architecture=ar"]
    with pytest.raises(SystemExit, match="unknown rows"):
        cq.choose_rows(args(rows="madis,gpt"))
    assert cq.parse_seeds("3") == [0, 1, 2] and cq.parse_seeds("4,9") == [4, 9]


def test_mean_and_sd_over_seeds_and_the_tables():
    s = cq.summarize({0: {"a": 1.0, "b": float("nan")}, 1: {"a": 2.0, "b": 4.0}, 2: {"a": 6.0}})
    assert s["a"]["mean"] == 3.0 and s["a"]["sd"] == pytest.approx(np.std([1, 2, 6], ddof=1))
    assert s["b"] == {"mean": 4.0, "sd": 0.0, "n": 1}  # NaN left out; one value: no sd
    rows = {
        "madis": {"label": "MaDiS", "summary": {"test": s | {
            "dtw_jpe_hands": {"mean": 30.0, "sd": 1.25, "n": 3}}}},
        "floor": {"label": "floor", "scores": {"test": {"dtw_jpe_hands": 26.125,
                                                        "cross_distance": float("nan")}}},
        "references": {"label": "refs", "scores": {"test": cq.reference_figures(
            {"ref_run_share": 0.3, "ref_distinct": 0.2, "ref_cross_distance": 0.6})}},
    }
    table = cq.markdown_table(rows, "test").splitlines()
    cols = [c.strip() for c in table[2].split("|")]
    assert cols[1] == "MaDiS" and cols[3] == "30.00 ± 1.25"
    floor = [c.strip() for c in table[3].split("|")]
    assert floor[3] == "26.12" and floor[1 + 1 + [k for k, _, _ in cq.COLUMNS].index(
        "cross_distance")] == "–"
    refs = [c.strip() for c in table[4].split("|")]
    assert refs[2] == "" and refs[2 + [k for k, _, _ in cq.COLUMNS].index("run_share")] == "0.300"
    assert cq.markdown_table(rows, "novel").count("\n") == 1  # no row has this split
    both = cq.markdown_tables({**rows, "t4-x": rows["madis"]}, ["madis", "floor", "t4-x"], "h")
    assert "Table 1, sample test split" in both and "Table 4, NOVEL_WORDS" in both


def test_token_accuracy_counts_an_empty_generation_as_misses():
    from madis.metrics.predictions import Prediction, Reference

    refs = {"a": Reference(text="A", motion=np.zeros((8, 2)), tokens=np.array([[1, 2, 3], [4, 5, 6]]))}
    assert cq.token_accuracy_of({"a": Prediction(np.zeros((4, 2)), np.zeros((0, 3), int))}, refs) == 0
    got = cq.token_accuracy_of({"a": Prediction(np.zeros((4, 2)), np.array([[1, 2, 0]]))}, refs)
    assert got == pytest.approx(100 * 2 / 6)


def test_decode_fields_are_parsed_and_anything_else_is_refused():
    assert cq.parse_decode(["temperature=0", "model.threshold=0.5", "sampler=vanilla"]) == {
        "temperature": 0, "threshold": 0.5, "sampler": "vanilla"}
    assert cq.parse_decode([]) == {}
    # what shapes the weights is not decoding: changing it needs a run of its own
    for bad in ("utc_checkpoints=[]", "embedding=dense", "temperature", "hidden_size=8"):
        with pytest.raises(SystemExit, match="decoding field"):
            cq.parse_decode([bad])


@pytest.mark.slow  # the real jobs (tokenizer, pretraining, three fine-tunings): minutes
def test_compare_quality_end_to_end(tmp_path):
    out = cq.main(["--seeds", "1", "--storage", str(tmp_path / "runs"), "--json",
                   str(tmp_path / "q.json"), "--markdown", str(tmp_path / "q.md"),
                   "train_tokenizer.steps=4", "train_pretrain.steps=2", "train_finetune.steps=2",
                   "train.batch_size=4"])
    saved = json.loads((tmp_path / "q.json").read_text())
    assert set(saved["rows"]) == {"references", "nn", "nn_tokens", "floor", "ar", "mdlm", "madis"}
    assert saved["rows"]["ar"]["seeds"]["0"]["model"]["class"] == "ARBaseline"
    assert saved["samples"] == {"test": 76, "novel": 20}
    floor = out["rows"]["floor"]["scores"]["test"]
    assert floor["sibleu4_hands"] == pytest.approx(100) and floor["token_acc"] == 100
    assert "Table 1, sample test split" in (tmp_path / "q.md").read_text()
    # the same runs decoded greedily: nothing trained again, every model decoded at T=0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    again = cq.main(["--seeds", "1", "--storage", str(tmp_path / "runs"), "--rows", "mdlm,madis",
                     "--decode", "temperature=0", "train_tokenizer.steps=4",
                     "train_pretrain.steps=2", "train_finetune.steps=2", "train.batch_size=4"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs
    for row in ("mdlm", "madis"):
        seed = again["rows"][row]["seeds"][0]
        assert seed["model"]["temperature"] == 0
        assert seed["export"] == out["rows"][row]["seeds"][0]["export"]
