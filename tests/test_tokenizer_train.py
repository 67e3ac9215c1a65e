"""The tokenizer job's parts on real shards of the sample corpus: training through the shared
loop (2 Ray workers, ZeRO-2), the export reloaded without DeepSpeed or Ray, token shards, and
the val report (MPJPE, codebook use)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from madis.data.sample import build_sample_corpus
from madis.data.shards import iter_batches, iter_samples, read_manifest, write_shards
from madis.motion.keypoints import POINT_SLICES
from madis.tokenizer import DecoupledTokenizer, TokenizerConfig
from madis.tokenizer.evaluate import codebook_usage, evaluate_tokenizer
from madis.tokenizer.task import TokenizerTask
from madis.tokenizer.token_shards import as_sample, write_token_shards
from madis.train import TrainConfig

TINY = TokenizerConfig(width=16, code_dim=8, codebook_sizes=(8, 16, 16), depth=1)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """24 train / 6 val / 6 test real clips of the sample corpus, 6 samples per shard."""
    full = tmp_path_factory.mktemp("sample")
    manifest = build_sample_corpus(full)
    keep = {"train": 24, "val": 6, "test": 6}
    splits = {}
    for split, n in keep.items():
        samples = iter_samples(str(full), split, shuffle=False)
        splits[split] = [as_sample(s) for _, s in zip(range(n), samples)]
    root = tmp_path_factory.mktemp("tiny")
    write_shards(root, splits, motion_format=manifest["format"], fps=manifest["fps"],
                 provenance=manifest["provenance"], licence=manifest["licence"], max_samples=6)
    return str(root)


def test_codebook_usage_known_answers():
    assert codebook_usage(np.array([5, 5, 0, 0])) == {"perplexity": pytest.approx(2.0),
                                                      "used": 0.5}
    assert codebook_usage(np.array([0, 7, 0])) == {"perplexity": pytest.approx(1.0),
                                                   "used": pytest.approx(1 / 3)}
    assert codebook_usage(np.zeros(4, int)) == {"perplexity": 0.0, "used": 0.0}


def test_evaluate_mpjpe_matches_a_direct_computation(tiny_shards):
    torch.manual_seed(0)
    task = TokenizerTask.from_shards(TINY, tiny_shards)
    tok = task.build_model().eval()
    report = evaluate_tokenizer(tok, tiny_shards, "val")
    assert report["samples"] == 6 and report["units"] == "shoulder widths"
    # keypoint joints are the points themselves: the right-hand MPJPE by hand
    dists, base = [], []
    mean_pts = tok.mean.reshape(-1, 3)[POINT_SLICES["rhand"]]
    for batch in iter_batches(tiny_shards, "val", 16, shuffle=False):
        recon = tok.decode(tok.encode(batch["motion"], batch["mask"]))
        for b in range(len(recon)):
            n = int(batch["mask"][b].sum())
            pts = batch["motion"][b, :n].reshape(n, -1, 3)[:, POINT_SLICES["rhand"]]
            rec = recon[b, :n].reshape(n, -1, 3)[:, POINT_SLICES["rhand"]]
            ok = batch["valid"][b, :n, 2]
            dists.append((pts - rec).norm(dim=-1)[ok].flatten())
            base.append((pts - mean_pts).norm(dim=-1)[ok].flatten())
    dists = torch.cat(dists)
    assert report["mean_pose_mpjpe_rhand"] == pytest.approx(float(torch.cat(base).mean()),
                                                            rel=1e-4)
    assert len(dists) > 0
    assert report["mpjpe_rhand"] == pytest.approx(float(dists.mean()), rel=1e-4)
    parts = [report[f"mpjpe_{p}"] for p in ("body", "lhand", "rhand")]
    assert report["mpjpe_mean"] == pytest.approx(np.mean([v for v in parts if v is not None]))
    for p, k in zip(("body", "lhand", "rhand"), TINY.codebook_sizes):
        assert 1.0 <= report[f"perplexity_{p}"] <= k
        assert 0 < report[f"codes_used_{p}"] <= 1 and report[f"codebook_size_{p}"] == k


_RELOAD = """
import json, sys, torch
from madis.tokenizer import DecoupledTokenizer
from madis.data.shards import iter_batches
tok = DecoupledTokenizer.from_pretrained(sys.argv[1])
batch = next(iter_batches(sys.argv[2], "val", 6, shuffle=False))
tokens = tok.encode(batch["motion"], batch["mask"])
assert "deepspeed" not in sys.modules and "ray" not in sys.modules, "export needs no DS/Ray"
print(json.dumps(tokens.tolist()))
"""


@pytest.mark.ray
def test_two_workers_train_export_reloads_without_deepspeed_and_token_shards(
        ray_local, tiny_shards, tmp_path):
    from madis.train import fit

    task = TokenizerTask.from_shards(TINY, tiny_shards)
    cfg = TrainConfig(run_name="tok", storage_path=str(tmp_path / "runs"), workers=2,
                      zero_stage=2, batch_size=4, steps=4, lr=1e-3, log_every=2,
                      log_dir=str(tmp_path / "tb"), progress=False, max_failures=0)
    result = fit(task, cfg)
    export = result.checkpoint.export_url
    assert result.checkpoint.step == 4 and "val_recon_loss" in result.checkpoint.metrics

    out = subprocess.run([sys.executable, "-c", _RELOAD, export, tiny_shards],
                         capture_output=True, text=True, check=True)
    reloaded = torch.tensor(json.loads(out.stdout))
    assert reloaded.shape[0] == 6 and reloaded.shape[2] == 3

    # the export holds exactly the engine's weights and EMA codebooks
    state = torch.load(f"{result.checkpoint.url}/deepspeed/step4/mp_rank_00_model_states.pt",
                       map_location="cpu", weights_only=False)["module"]
    engine_tok = task.build_model()
    engine_tok.load_state_dict(state)
    engine_tok.eval()
    batch = next(iter_batches(tiny_shards, "val", 6, shuffle=False))
    assert torch.equal(engine_tok.encode(batch["motion"], batch["mask"]), reloaded)
    assert not torch.equal(engine_tok.codebooks[0], task.build_model().codebooks[0])

    # token shards: same samples and stats as the motion shards, tokens = encode
    tok = DecoupledTokenizer.from_pretrained(export)
    tokens_url = str(tmp_path / "tokens")
    manifest = write_token_shards(tok, tiny_shards, tokens_url, batch_size=5)
    source = read_manifest(tiny_shards)
    assert manifest["tokens"] is True and manifest["stats"] == source["stats"]
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == {
        "train": 24, "val": 6, "test": 6}
    batch = next(iter_batches(tokens_url, "val", 6, shuffle=False, with_tokens=True))
    assert torch.equal(batch["tokens"], reloaded)
    assert torch.equal(batch["token_mask"], batch["tokens"][..., 0] >= 0)


def test_a_missing_smplx_model_fails_the_job_before_training(tmp_path, monkeypatch,
                                                             smplx_model_dir):
    """The job's val MPJPE needs SMPL-X joints after training: without the licensed model on
    this node it stops before training, naming the path where the model was looked for."""
    from conftest import job_module
    from madis.data.testing import write_random_shards
    from madis.motion import get_format

    write_random_shards(tmp_path / "motion", "smplx133")
    missing = tmp_path / "no-smplx"
    monkeypatch.setenv("MADIS_SMPLX_DIR", str(missing))
    with pytest.raises(SystemExit) as stop:
        job_module("train_tokenizer").main(["--shards", str(tmp_path / "motion"), "--storage",
                                            str(tmp_path / "runs"), "--steps", "2"])
    assert f"expected {missing / 'SMPLX_NEUTRAL.npz'}" in str(stop.value)
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    monkeypatch.setenv("MADIS_SMPLX_DIR", str(smplx_model_dir))
    get_format("smplx133").check_joints()  # with the model there, the job would go on
    get_format("keypoints").check_joints()  # keypoints need no file
