"""MaDiS pretraining / fine-tuning: the Task on real token shards, the ablation configs,
``madis generate``, and the jobs on a real local Ray cluster (metadata, resume, NaN stop)."""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from madis.config import ConfigError, load_tree
from madis.data.shards import Sample, write_shards
from madis.mdlm import MaDiSModel
from madis.mdlm.exports import load_generator
from madis.mdlm.task import (
    MDLMTask, init_model, model_config, read_token_manifests, token_accuracy, truncate_sample,
)
from madis.tokenizer import DecoupledTokenizer, TokenizerConfig
from madis.tokenizer.token_shards import write_token_shards
from madis.train import list_checkpoints, read_metadata, train_config
from conftest import REPO, job_module
from madis.mdlm.testing import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TOK_CFG = TokenizerConfig(width=16, code_dim=8, codebook_sizes=(8, 16, 16), depth=1)
TINY_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1",
              "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16",
              "model.num_positions=16", "model.num_steps=4", "model.max_text_tokens=16"]
WORDS = ["AB", "BA", "CAB", "ABC", "BCA", "CA"]


def _sample(split: str, i: int, lang: str) -> Sample:
    rng = np.random.default_rng(i)
    frames = 40 + 4 * (i % 3)  # 10 to 12 sign positions
    if i % 7 == 6:
        frames = 80  # 20 positions > N = 16: truncated by the task
    motion = (np.cumsum(rng.normal(0, 0.05, (frames, 165)), 0)).astype(np.float16)
    return Sample(key=f"{lang}-{split}-{i}", text=WORDS[i % len(WORDS)], lang=lang, fps=25.0,
                  source="test", motion=motion, valid=np.ones((frames, 3), bool))


@pytest.fixture(scope="module")
def token_sets(tmp_path_factory):
    """Two token shard sets (datasets 'ase' and 'gsg') written by one saved tiny tokenizer."""
    root = tmp_path_factory.mktemp("mdlm-jobs")
    torch.manual_seed(0)
    motion_root = root / "motion-ase"
    write_shards(motion_root, {"train": [_sample("train", i, "ase") for i in range(14)],
                               "val": [_sample("val", i, "ase") for i in range(20, 24)],
                               "test": [_sample("test", i, "ase") for i in range(30, 33)]},
                 motion_format="keypoints", fps=25.0, provenance="test", licence="test",
                 max_samples=5)
    gsg_root = root / "motion-gsg"
    write_shards(gsg_root, {"train": [_sample("train", i, "gsg") for i in range(40, 46)],
                            "val": [_sample("val", i, "gsg") for i in range(50, 52)]},
                 motion_format="keypoints", fps=25.0, provenance="test", licence="test")
    from madis.data.shards import read_manifest

    m = read_manifest(str(motion_root))
    tok = DecoupledTokenizer(TOK_CFG, "keypoints", m["stats"]["mean"], m["stats"]["std"]).eval()
    for cb in tok.codebooks:
        cb.copy_(torch.randn_like(cb))
    tok_dir = root / "tokenizer-export"
    tok.save_pretrained(str(tok_dir))
    extra = {"tokenizer_export": {"url": str(tok_dir), "step": 0}}
    a, b = root / "tokens-ase", root / "tokens-gsg"
    write_token_shards(tok, str(motion_root), str(a), extra=extra)
    write_token_shards(tok, str(gsg_root), str(b), extra=extra)
    return {"ase": str(a), "gsg": str(b), "motion": str(motion_root), "tokenizer": str(tok_dir)}


def _cfg(*extra, stage="pretrain"):
    return model_config(load_tree("cpu-tiny", [*TINY_MODEL, *extra]), stage)


# --------------------------------------------------------------------------- no Ray

def test_pretraining_mixes_every_dataset_once_per_epoch_with_disjoint_ranks(token_sets):
    task = MDLMTask.from_shards("pretrain", _cfg(), [token_sets["ase"], token_sets["gsg"]])
    assert task.tokenizer == token_sets["tokenizer"] and task.train_samples == 20
    assert task.steps_per_epoch(world_size=2, batch_size=4) == 3
    seen = {}
    for rank in (0, 1):
        seen[rank] = [k for b in task.batches(rank=rank, world_size=2, epoch=0, seed=3, batch_size=4)
                      for k in b["key"]]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(
        [f"ase-train-{i}" for i in range(14)] + [f"gsg-train-{i}" for i in range(40, 46)])
    again = [k for b in task.batches(rank=0, world_size=2, epoch=0, seed=3, batch_size=4)
             for k in b["key"]]
    assert again == seen[0]  # deterministic, so a resumed worker skips the right batches
    batch = next(iter(task.batches(rank=0, world_size=1, epoch=0, seed=0, batch_size=20)))
    assert batch["tokens"].shape[1] == 16 and batch["motion"].shape[1] == 64  # cut to N = 16


def test_task_losses_fall_export_loads_and_generates(token_sets, tmp_path):
    task = MDLMTask.from_shards("pretrain", _cfg(), [token_sets["ase"]])
    torch.manual_seed(0)
    module = task.build_model()
    batch = next(iter(task.batches(rank=0, world_size=1, epoch=0, seed=0, batch_size=8)))
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        torch.manual_seed(7)  # the same masks every step: the loss on a fixed batch must fall
        loss, metrics = task.loss(module, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert {"loss_token", "loss_latent", "loss_physical", "acc_body"} <= set(metrics)
    assert all(float(metrics[k]) > 0 for k in ("loss_token", "loss_latent", "loss_physical"))
    assert losses[-1] < 0.5 * losses[0], losses
    module.eval()
    with torch.no_grad():
        val = task.evaluate(module, rank=0, world_size=1)
    assert {"loss_token", "token_acc", "length_error"} <= set(val) and 0 <= val["token_acc"] <= 1
    task.export(module, str(tmp_path / "export"))
    model = load_generator(str(tmp_path / "export"))  # uses the tokenizer copy in export/
    for a, b in zip(model.state_dict().values(), module.model.state_dict().values()):
        assert torch.equal(a, b)
    out = model.generate(["AB", "CAB"], ["ase", "gsg"])
    assert out.tokens.shape == (2, 16, 3)

    # fine-tuning starts from that export; an architecture change is refused
    fine = init_model(_cfg(stage="finetune"), model.tokenizer, str(tmp_path / "export"))
    for a, b in zip(fine.state_dict().values(), module.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="hidden_size"):
        init_model(_cfg("model.hidden_size=64", stage="finetune"), model.tokenizer,
                   str(tmp_path / "export"))


def test_ar_baseline_task_trains_exports_and_loads_as_a_generator(token_sets, tmp_path):
    """model.architecture: ar through the same task: loss falls, val decoding, export, and
    load_generator gives the baseline back; MaDiS cannot start from its weights."""
    from madis.mdlm import ARBaseline

    task = MDLMTask.from_shards("finetune", _cfg("model.architecture=ar", stage="finetune"),
                                [token_sets["ase"]])
    torch.manual_seed(0)
    module = task.build_model()
    assert isinstance(module.model, ARBaseline)
    batch = next(iter(task.batches(rank=0, world_size=1, epoch=0, seed=0, batch_size=8)))
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = task.loss(module, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        val = module.eval() and task.evaluate(module, rank=0, world_size=1)
    assert {"loss_token", "token_acc", "length_error"} <= set(val)
    task.export(module, str(tmp_path / "export"))
    model = load_generator(str(tmp_path / "export"))
    assert isinstance(model, ARBaseline) and model.cfg.architecture == "ar"
    out = model.generate(["AB", "CAB"], ["ase", "ase"])
    assert out.tokens.shape == (2, 16, 3) and out.steps_used is not None
    assert len(model.decode_motion(out)) == 2
    with pytest.raises(ConfigError, match="architecture"):
        init_model(_cfg(stage="finetune"), model.tokenizer, str(tmp_path / "export"))


def test_generator_loads_from_s3_and_leaves_no_copy_behind(token_sets, s3_bucket, tmp_path,
                                                            monkeypatch):
    import tempfile

    import fsspec

    task = MDLMTask.from_shards("pretrain", _cfg(), [token_sets["ase"]])
    module = task.build_model()
    task.export(module, str(tmp_path / "export"))
    fs, _ = fsspec.core.url_to_fs(s3_bucket)
    fs.put(str(tmp_path / "export"), f"{s3_bucket[5:]}/run/export", recursive=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    for _ in range(2):  # Serve reloads: each load's temporary copy is gone afterwards
        model = load_generator(f"{s3_bucket}/run/export")
        assert list((tmp_path / "tmp").iterdir()) == []
    for a, b in zip(model.state_dict().values(), module.model.state_dict().values()):
        assert torch.equal(a, b)
    assert model.generate(["AB"], ["ase"]).tokens.shape == (1, 16, 3)


def test_token_manifests_must_hold_tokens_of_one_tokenizer(token_sets, tmp_path):
    with pytest.raises(ValueError, match="holds no tokens"):
        read_token_manifests([token_sets["motion"]])
    other = tmp_path / "other"
    import shutil

    shutil.copytree(token_sets["gsg"], other)
    m = json.loads((other / "manifest.json").read_text())
    m["tokenizer_export"]["url"] = "/elsewhere/export"
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="different tokenizers"):
        read_token_manifests([token_sets["ase"], str(other)])


def test_truncation_and_token_accuracy_known_answers():
    s = {"tokens": np.zeros((15, 3)), "motion": np.zeros((60, 2)), "valid": np.zeros((60, 3))}
    cut = truncate_sample(s, 12)
    assert (len(cut["tokens"]), len(cut["motion"]), len(cut["valid"])) == (12, 48, 48)
    assert truncate_sample(s, 20) is s
    ref = torch.tensor([[[1, 2, 3], [4, 5, 6], [-1, -1, -1]]])
    mask = torch.tensor([[True, True, False]])
    gen = torch.tensor([[[1, 2, 0], [-1, -1, -1]]])  # ended after one position
    assert token_accuracy(gen, ref, mask) == (2, 6)


def test_ablation_configs_load_and_build_their_models():
    files = sorted(glob.glob(str(REPO / "configs" / "ablations" / "*.yaml")))
    assert len(files) == 12
    tok = tiny_tokenizer(fmt="keypoints")
    expected_pretrain = {
        "t3-sign-only": (False, False, False), "t3-sign-text": (True, False, False),
        "t3-sign-text-latent": (True, True, False), "t3-tri-level": (True, True, True)}
    runs = set()
    for f in files:
        name = Path(f).stem
        tree = load_tree(f, ["model.hidden_size=32", "model.intermediate_size=64",
                             "model.num_layers=1", "model.head_dim=8"])
        pre, fine = model_config(tree, "pretrain"), model_config(tree, "finetune")
        if name in expected_pretrain:
            assert (pre.mask_text, pre.latent_loss, pre.physical_loss) == expected_pretrain[name]
            assert fine.latent_loss and fine.physical_loss  # Table 3 changes pretraining only
        if name.startswith("t4-"):
            want = {"none": [], "075": [0.75], "050": [0.5], "both": [0.75, 0.5]}[name[7:]]
            assert fine.utc_checkpoints == want
        if name.startswith("t5-"):
            assert pre.embedding == fine.embedding == name[3:].replace("-", "_")
        runs.add(train_config(tree, "finetune").run_name)
        model = MaDiSModel(fine, tok)
        assert model.sign_embedding.variant == fine.embedding
    assert len(runs) == 12  # no two rows resume each other's fine-tuning run


def test_nearest_neighbour_baseline_known_answer():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from compare_quality import nearest_neighbour

    from madis.metrics.predictions import Reference

    def ref(text, lang):
        return Reference(text=text, motion=np.zeros((4, 165)), lang=lang)

    train = {"a": ref("ABD", "ase"), "b": ref("ABC", "ase"), "c": ref("ABE", "gsg"),
             "d": ref("ABCDE", "ase")}
    test = {"t1": ref("ABE", "ase"), "t2": ref("ABX", "bzs"), "t3": ref("ABCDF", "ase")}
    # t1: distance 1 to a and b (same length): smaller key; t2: no bzs clip, so all languages
    # (c is also at distance 1 but 'a' sorts first); t3: distance 1 to d only (2 to a, b)
    assert nearest_neighbour(train, test) == {"t1": "a", "t2": "a", "t3": "d"}


def test_generate_cli_prints_tokens_and_writes_motion(token_sets, tmp_path, capsys):
    from madis.cli import main

    task = MDLMTask.from_shards("finetune", _cfg(stage="finetune"), [token_sets["ase"]])
    torch.manual_seed(0)
    task.export(task.build_model(), str(tmp_path / "ckpt" / "export"))
    rc = main(["generate", "A", "HAUS", "--lang", "ase", "--lang", "gsg", "--checkpoint",
               str(tmp_path / "ckpt"), "-o", str(tmp_path / "gen"), "--gif"])
    out = capsys.readouterr().out
    assert rc == 0 and "[ase] 'A'" in out and "[gsg] 'HAUS'" in out and "body" in out
    for stem in ("00_ase_A", "01_gsg_HAUS"):
        tokens = np.load(tmp_path / "gen" / f"{stem}.tokens.npy")
        motion = np.load(tmp_path / "gen" / f"{stem}.motion.npy")
        # an empty generation is written as one position of the still mean pose
        assert motion.shape == (4 * max(len(tokens), 1), 165)
        assert (tmp_path / "gen" / f"{stem}.gif").stat().st_size > 0
    assert main(["generate", "A", "--lang", "ase", "--lang", "gsg", "--checkpoint",
                 str(tmp_path / "ckpt")]) == 2
    assert main(["generate", "A", "--lang", "ase", "--storage", str(tmp_path / "none")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    # a whole split -> a predictions directory that `madis eval` scores
    assert main(["generate", "--split", "test", "--shards", token_sets["ase"], "--checkpoint",
                 str(tmp_path / "ckpt"), "-o", str(tmp_path / "preds")]) == 0
    assert "3 predictions" in capsys.readouterr().out
    from madis.metrics.predictions import load_predictions

    meta, preds = load_predictions(tmp_path / "preds")
    assert sorted(preds) == ["ase-test-30", "ase-test-31", "ase-test-32"]
    assert meta["split"] == "test" and meta["checkpoint"].endswith("export")
    assert main(["eval", str(tmp_path / "preds"), "--references", token_sets["ase"],
                 "--split", "test"]) == 0
    assert "dtw_jpe_body" in capsys.readouterr().out
    # motion-only references: SiBLEU tokenizes them with the predictions' own tokenizer
    assert main(["eval", str(tmp_path / "preds"), "--references", token_sets["motion"],
                 "--split", "test"]) == 0
    got = capsys.readouterr()
    assert "predictions' own tokenizer" in got.err and "sibleu4_body" in got.out
    assert main(["generate", "A", "--split", "test", "--shards", token_sets["ase"]]) == 2
    assert main(["generate", "A"]) == 2
    # a second --split run replaces the directory's predictions instead of mixing them in
    np.save(tmp_path / "preds" / "stale.motion.npy", np.zeros((4, 165), np.float32))
    assert main(["generate", "--split", "test", "--shards", token_sets["ase"], "--checkpoint",
                 str(tmp_path / "ckpt"), "-o", str(tmp_path / "preds")]) == 0
    assert sorted(load_predictions(tmp_path / "preds")[1]) == sorted(preds)
    # refused before any decoding: a directory of other files, a file, bad values, empty text
    ck = ["--checkpoint", str(tmp_path / "ckpt")]
    capsys.readouterr()
    assert main(["generate", "--split", "test", "--shards", token_sets["ase"], *ck,
                 "-o", str(tmp_path / "gen")]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert main(["generate", "A", "--lang", "ase", *ck, "-o", str(tmp_path / "gen" / "00_ase_A.tokens.npy")]) == 2
    assert main(["generate", "A", "--lang", "ase", *ck, "--num-steps", "0"]) == 2
    assert "num_steps must be >= 1" in capsys.readouterr().err
    assert main(["generate", "A", "--lang", "ase", *ck, "--temperature", "-1"]) == 2
    assert main(["generate", "  ", "--lang", "ase", *ck]) == 2
    assert main(["generate", "--split", "nope", "--shards", token_sets["ase"], *ck,
                 "-o", str(tmp_path / "p2")]) == 2
    assert "nope" in capsys.readouterr().err


# --------------------------------------------------------------------------- real Ray


def _common(tmp_path, steps):
    return ["--storage", str(tmp_path / "runs"), "--workers", "2", "--zero-stage", "2",
            "--steps", str(steps), *TINY_MODEL, f"train.log_dir={tmp_path}/tb",
            "train.progress=false", "train.max_failures=0", "train_pretrain.batch_size=4",
            "train_finetune.batch_size=4", "train_pretrain.checkpoint_every=2",
            "train_finetune.checkpoint_every=2", "train_pretrain.warmup_steps=0",
            "train_finetune.warmup_steps=0"]


def _pretrain(tmp_path, token_sets):
    pre = job_module("pretrain").main(["--shards", token_sets["ase"], "--shards", token_sets["gsg"],
                                 *_common(tmp_path, 4)])
    run = tmp_path / "runs" / "pretrain"
    assert [c.step for c in list_checkpoints(str(run))] == [2, 4] and pre["step"] == 4
    meta = read_metadata(pre["export"])
    assert meta["step"] == 4 and meta["epoch"] == 1  # 20 samples / 2 ranks / 4 = 3 per epoch
    assert meta["task"]["tokenizer_checkpoint"] == token_sets["tokenizer"]
    assert meta["task"]["shards"] == [token_sets["ase"], token_sets["gsg"]]
    assert meta["task"]["model"]["hidden_size"] == 32 and meta["train"]["zero_stage"] == 2
    for k in ("loss_token", "loss_latent", "loss_physical", "val_loss_token", "val_token_acc"):
        assert np.isfinite(meta["metrics"][k]), k
    return pre


@pytest.mark.ray
def test_pretrain_job_on_two_datasets_writes_complete_checkpoints_with_metadata(
        ray_local, token_sets, tmp_path):
    _pretrain(tmp_path, token_sets)


@pytest.mark.slow  # three jobs: minutes on 2 shared cores
@pytest.mark.ray
def test_finetune_job_starts_from_newest_pretraining_and_resumes_when_resubmitted(
        ray_local, token_sets, tmp_path):
    pre = _pretrain(tmp_path, token_sets)

    # fine-tuning finds the newest complete pretraining checkpoint by itself
    fine = job_module("finetune").main(["--shards", token_sets["ase"], *_common(tmp_path, 2)])
    fmeta = read_metadata(fine["export"])
    assert fmeta["task"]["init_from"] == pre["export"] and fmeta["task"]["stage"] == "finetune"
    assert fmeta["task"]["tokenizer_checkpoint"] == token_sets["tokenizer"]

    # a re-submitted job with a longer budget resumes from its newest checkpoint (step 2)
    first = list_checkpoints(str(tmp_path / "runs" / "finetune"))
    written = read_metadata(first[-1].export_url)["time"]
    again = job_module("finetune").main(["--shards", token_sets["ase"], *_common(tmp_path, 4)])
    done = list_checkpoints(str(tmp_path / "runs" / "finetune"))
    assert [c.step for c in done] == [2, 4]
    assert read_metadata(done[0].export_url)["time"] == written  # step 2 was not redone
    state = json.loads(Path(again["checkpoint"], "train_state.json").read_text())
    # 7 train samples per rank: batches of 4 and 3, two epochs, both ranks
    assert (state["step"], state["epoch"], state["samples"]) == (4, 1, 28)
    assert read_metadata(again["export"])["task"]["init_from"] == pre["export"]


@pytest.mark.slow  # a job on 2 workers: a minute on 2 shared cores
@pytest.mark.ray
def test_finetune_job_trains_the_ar_baseline_from_scratch(ray_local, token_sets, tmp_path):
    """``ray_jobs/finetune.py --init none model.architecture=ar``: the one loop trains the
    autoregressive baseline (ZeRO-2, two workers); the export loads as one."""
    from madis.mdlm import ARBaseline

    rep = job_module("finetune").main(["--shards", token_sets["ase"], "--init", "none",
                                       "--run-name", "ar", *_common(tmp_path, 2),
                                       "model.architecture=ar"])
    meta = read_metadata(rep["export"])
    assert rep["step"] == 2 and meta["task"]["init_from"] is None
    assert meta["task"]["model"]["architecture"] == "ar"
    assert np.isfinite(meta["metrics"]["loss_token"]) and "val_token_acc" in meta["metrics"]
    model = load_generator(rep["export"])
    assert isinstance(model, ARBaseline)
    assert model.generate(["AB"], ["ase"]).tokens.shape == (1, 16, 3)


class PoisonedTask(MDLMTask):
    """Batches from the ``poison_from``-th of each epoch on give a NaN loss."""

    poison_from = 2

    def batches(self, **kw):
        for i, b in enumerate(super().batches(**kw)):
            yield {**b, "poison": torch.tensor(i >= self.poison_from)}

    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        return (loss * float("nan") if bool(batch["poison"]) else loss), metrics


@pytest.mark.ray
def test_nan_batches_are_skipped_then_stop_with_last_good_checkpoint(ray_local, token_sets,
                                                                      tmp_path):
    import ray.cloudpickle

    from madis.train import NonFiniteLossError, TrainConfig, fit

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = PoisonedTask.from_shards("pretrain", _cfg(), [token_sets["ase"]])
    cfg = TrainConfig(run_name="nan", storage_path=str(tmp_path / "runs"), workers=2,
                      batch_size=2, steps=20, checkpoint_every=1, max_bad_steps=2,
                      log_dir=str(tmp_path / "tb"), progress=False, max_failures=0)
    with pytest.raises(NonFiniteLossError, match="2 consecutive non-finite losses at step 2"
                       ) as err:
        fit(task, cfg)
    assert err.value.last_checkpoint.step == 2
    assert [c.step for c in list_checkpoints(str(tmp_path / "runs" / "nan"))] == [1, 2]


def test_job_options_override_the_job_section_and_refuse_storage_lost_with_the_job(
        tmp_path, monkeypatch):
    import argparse

    from madis.train.jobargs import add_job_arguments, job_train_config

    p = argparse.ArgumentParser()
    add_job_arguments(p)
    tree = load_tree("cpu-tiny")
    args = p.parse_args(["--workers", "3", "--zero-stage", "3", "--gpus-per-worker", "1",
                         "--steps", "7", "--storage", "s3://b/runs", "train.lr=1"])
    cfg = job_train_config(tree, "pretrain", args)
    assert (cfg.workers, cfg.zero_stage, cfg.use_gpu, cfg.steps, cfg.storage_path, cfg.run_name) \
        == (3, 3, True, 7, "s3://b/runs", "pretrain")
    assert args.overrides == ["train.lr=1"]
    job_dir = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    with pytest.raises(ConfigError, match="relative"):
        job_train_config(tree, "pretrain", p.parse_args([]))
    assert job_train_config(tree, "pretrain", p.parse_args(["--storage", str(tmp_path)]))
