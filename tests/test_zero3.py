"""Validation under ZeRO-3 with uneven validation data: a real 2-worker Ray Train + DeepSpeed
ZeRO-3 run of the MDLM task whose ranks hold 4 and 1 validation batches neither hangs (every
ZeRO-3 forward all-gathers partitioned weights; a collective left waiting fails the run at
``train.collective_timeout_s`` instead of hanging) nor drops or double-counts a sample; bf16
leaves RoPE and the frozen tokenizer in fp32 inside the real engine."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from madis.config import load_tree
from madis.data.shards import Sample, write_shards
from madis.mdlm import MaDiSModel
from madis.mdlm.task import MDLMTask, model_config
from madis.mdlm.testing import TOK_CFG, tiny_config, tiny_tokenizer
from madis.train import list_checkpoints, read_metadata
from madis.train.task import ValTotals
from madis.train.testing import RegressionTask

# one MLP matrix (32 x 4096) above DeepSpeed's stage3_param_persistence_threshold (1e5
# elements): it is partitioned, so every forward through it is a collective
ZERO3_MODEL = ["model.hidden_size=32", "model.intermediate_size=4096", "model.num_layers=1",
               "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16",
               "model.num_positions=16", "model.num_steps=4", "model.max_text_tokens=16"]
PERSISTENCE_THRESHOLD = 100_000
#: a validation out of step would wait here, then fail the run (the test's own limit is above)
COLLECTIVE_TIMEOUT_S = 300


@pytest.mark.parametrize("variant", ["dense", "sparse_top1", "simple_avg"])
def test_sign_embedding_runs_the_same_submodules_whatever_the_tokens(variant):
    """A training batch whose positions are all masked runs the same submodules as one with
    codes: under ZeRO-3 a skipped submodule on one rank would leave the others' all-gather
    waiting."""
    model = MaDiSModel(tiny_config(embedding=variant), tiny_tokenizer())
    called: list[str] = []
    modules = [*model.sign_embedding.named_modules(), ("embed_tokens", model.embed_tokens())]
    for name, mod in modules:
        mod.register_forward_pre_hook(lambda m, a, name=name: called.append(name))
    n = model.cfg.num_positions
    tokens = torch.zeros(2, n, 3, dtype=torch.long)
    runs = []
    for shown in (0, 1):  # every position masked; one position holding codes
        masked = torch.ones(2, n, dtype=torch.bool)
        masked[:, :shown] = False
        called.clear()
        model.sign_embedding(tokens, masked, model.embed_tokens())
        runs.append(list(called))
    assert runs[0] == runs[1] and len(runs[0]) > 1


def test_rank_totals_pool_to_the_whole_set_each_sample_once():
    """Ranks of 6, 5 and 5 samples: pooled (sum, count) equals validating the whole set in one
    process (a mean of the ranks' means would weigh the 6-sample rank's samples less)."""
    torch.manual_seed(0)
    task = RegressionTask()
    model = task.build_model()
    with torch.no_grad():
        whole = task.evaluate(model, rank=0, world_size=1)
        per_rank = []
        for r in range(3):
            t = ValTotals()
            for b in task.validation_batches(rank=r, world_size=3):
                t.add(task.validation_step(model, b), task.batch_samples(b))
            per_rank.append(t)
    pooled = ValTotals.merged(per_rank).result()
    means = [t.result()["mse"] for t in per_rank]
    assert pooled["samples"] == whole["samples"] == 16
    assert pooled["mse"] == pytest.approx(whole["mse"], rel=1e-6)
    assert abs(sum(means) / 3 - whole["mse"]) > 1e-4  # the rank-mean would be wrong here


def _sample(split, i, lang):
    rng = np.random.default_rng(i)
    frames = 40 + 4 * (i % 3)
    motion = np.cumsum(rng.normal(0, 0.05, (frames, 165)), 0).astype(np.float16)
    tokens = rng.integers(0, 8, (frames // 4, 3)).astype(np.int16)
    return Sample(key=f"{lang}-{split}-{i}", text=["AB", "BA", "CAB"][i % 3], lang=lang,
                  fps=25.0, source="test", motion=motion, valid=np.ones((frames, 3), bool),
                  tokens=tokens)


@pytest.fixture(scope="module")
def uneven_token_sets(tmp_path_factory):
    """Two token sets: 'ase' with val shards of 5 and 2 samples (rank 0: 3 batches of <= 2,
    rank 1: 1), 'gsg' with one val sample (rank 1: none). 8 val samples in all."""
    from madis.tokenizer import DecoupledTokenizer

    root = tmp_path_factory.mktemp("zero3")
    torch.manual_seed(0)
    tok = DecoupledTokenizer(TOK_CFG, "keypoints", np.zeros(165), np.ones(165)).eval()
    tok.save_pretrained(str(root / "tokenizer"))
    extra = {"tokenizer_export": {"url": str(root / "tokenizer"), "step": 0}}
    sets = {}
    for lang, val in (("ase", range(20, 27)), ("gsg", range(50, 51))):
        sets[lang] = str(root / lang)
        write_shards(sets[lang], {"train": [_sample("train", i, lang) for i in range(8)],
                                  "val": [_sample("val", i, lang) for i in val]},
                     motion_format="keypoints", fps=25.0, provenance="test", licence="test",
                     max_samples=5, extra=extra)
    return sets


class DtypeProbe(MDLMTask):
    """Also reports, from inside the engine, whether RoPE and the tokenizer stayed fp32."""

    def validation_step(self, model, batch):
        out = dict(super().validation_step(model, batch))
        mdl = model.model
        rope = mdl.backbone.model.rotary_emb.inv_freq.dtype == torch.float32
        tok = all(t.dtype == torch.float32 for t in [*mdl.tokenizer.parameters(),
                                                     *mdl.tokenizer.buffers()]
                  if t.is_floating_point())
        param = next(mdl.backbone.parameters()).dtype == torch.bfloat16
        return {**out, "rope_fp32": (float(rope), 1), "tokenizer_fp32": (float(tok), 1),
                "params_bf16": (float(param), 1)}


@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_zero3_mdlm_validation_with_uneven_val_shards_bf16(ray_local, uneven_token_sets,
                                                          tmp_path):
    """cpu-tiny's decoding (length-first: how many forwards a batch takes depends on it) on
    ranks holding 4 and 1 validation batches, at two checkpoints."""
    import ray.cloudpickle

    from madis.train import TrainConfig, fit

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = model_config(load_tree("cpu-tiny", ZERO3_MODEL), "pretrain")
    assert cfg.length_first  # generation's forwards depend on the batch
    task = DtypeProbe.from_shards("pretrain", cfg, [uneven_token_sets["ase"],
                                                    uneven_token_sets["gsg"]],
                                  val_batch_size=2)
    per_rank = [[task.batch_samples(b) for b in task.validation_batches(rank=r, world_size=2)]
                for r in (0, 1)]
    assert per_rank == [[2, 2, 1, 1], [2]]  # uneven: 4 validation batches against 1
    assert max(p.numel() for p in task.build_model().parameters()) > PERSISTENCE_THRESHOLD
    train = TrainConfig(run_name="z3", storage_path=str(tmp_path / "runs"), workers=2,
                        zero_stage=3, bf16=True, batch_size=2, steps=2, checkpoint_every=1,
                        log_dir=str(tmp_path / "tb"), progress=False, max_failures=0,
                        collective_timeout_s=COLLECTIVE_TIMEOUT_S)
    result = fit(task, train)
    assert [c.step for c in list_checkpoints(result.run_url)] == [1, 2]
    metrics = read_metadata(result.checkpoint.export_url)["metrics"]
    assert metrics["val_samples"] == 8  # 5 + 2 + 1: each val sample once
    assert metrics["val_rope_fp32"] == metrics["val_tokenizer_fp32"] == 1.0
    assert metrics["val_params_bf16"] == 1.0
    assert 0 <= metrics["val_token_acc"] <= 1 and np.isfinite(metrics["val_loss_token"])
