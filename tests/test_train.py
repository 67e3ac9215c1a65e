"""The shared training loop on a real local Ray cluster (127.0.0.1): ZeRO-2 with 2 CPU workers,
checkpoints on local disk and on the local S3 server, resume after a crash, NaN stop."""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch
import torch

from madis.config import ConfigError, load_tree
from madis.train import (
    TrainConfig, latest_checkpoint, list_checkpoints, read_metadata, train_config,
)
from madis.train.checkpoints import TRAIN_STATE, write_complete
from madis.train.testing import RegressionTask

# --------------------------------------------------------------------------- no Ray needed


def test_train_config_merges_job_section_and_rejects_bad_values():
    tree = {"train": {"lr": 1e-3, "workers": 2}, "train_tokenizer": {"lr": 5e-4, "steps": 7}}
    cfg = train_config(tree, "tokenizer")
    assert (cfg.lr, cfg.workers, cfg.steps) == (5e-4, 2, 7)
    assert train_config(tree).lr == 1e-3
    with pytest.raises(ConfigError, match="zero_stage"):
        TrainConfig(zero_stage=4)
    with pytest.raises(ConfigError, match="unknown field"):
        train_config({"train_tokenizer": {"stpes": 3}}, "tokenizer")
    for profile in ("cpu-tiny", "paper"):
        assert train_config(load_tree(profile), "tokenizer").run_name == "tokenizer"


def test_readers_ignore_checkpoints_without_marker(tmp_path):
    run = tmp_path / "run"
    for step, complete in ((5, True), (10, True), (15, False)):
        d = run / f"checkpoint_{step:08d}"
        d.mkdir(parents=True)
        if complete:
            write_complete(str(d), step, epoch=1, metrics={"l": 1})
    (run / "tensorboard").mkdir()
    assert [c.step for c in list_checkpoints(str(run))] == [5, 10]
    assert latest_checkpoint(str(run)).export_url == str(run / "checkpoint_00000010" / "export")
    assert list_checkpoints(str(tmp_path / "absent")) == []


def _fake_run(fs, root, steps, incomplete=()):
    """Checkpoint directories with an export file; COMPLETE except for ``incomplete``."""
    for step in steps:
        d = f"{root}/checkpoint_{step:08d}"
        fs.makedirs(f"{d}/export", exist_ok=True)
        fs.pipe_file(f"{d}/export/model.safetensors", b"weights")
        if step not in incomplete:
            write_complete(fs.unstrip_protocol(d), step)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_retention_keeps_the_newest_and_the_best_checkpoint(where, tmp_path, request):
    import fsspec

    from madis.fleet.registry import history_entry, record
    from madis.train.checkpoints import PRUNED, prune_checkpoints

    run = str(tmp_path / "run") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/run"
    fs, root = fsspec.core.url_to_fs(run)
    _fake_run(fs, root, [1, 2, 3, 4, 5, 6], incomplete=(6,))
    record(run, history_entry(1, f"{run}/checkpoint_00000001", metrics={"r1": 9.0}), "r1", "max")
    record(run, history_entry(4, f"{run}/checkpoint_00000004", metrics={"r1": 3.0}), "r1", "max")
    assert [c.step for c in prune_checkpoints(run, 2)] == [2, 3]
    assert [c.step for c in list_checkpoints(run)] == [1, 4, 5]  # best (1) + newest two
    fs.invalidate_cache()
    for step in (2, 3):  # only the marker is left, so Ray's run snapshot still resolves
        left = fs.ls(f"{root}/checkpoint_{step:08d}", detail=False)
        assert [p.rsplit("/", 1)[-1] for p in left] == [PRUNED]
    assert fs.exists(f"{root}/checkpoint_00000006/export/model.safetensors")  # incomplete: left
    assert fs.exists(f"{root}/checkpoint_00000001/export/model.safetensors")
    assert prune_checkpoints(run, 2) == [] and prune_checkpoints(run, 0) == []


def test_retention_waits_when_best_json_is_unreadable_and_prunes_without_one(tmp_path):
    from madis.train.checkpoints import prune_checkpoints

    import fsspec

    run = tmp_path / "run"
    fs = fsspec.filesystem("file")
    _fake_run(fs, str(run), [1, 2, 3])
    (run / "best.json").write_text("{broken")
    assert prune_checkpoints(str(run), 1) == []
    assert [c.step for c in list_checkpoints(str(run))] == [1, 2, 3]
    (run / "best.json").unlink()  # no fleet ran: plain newest-k
    assert [c.step for c in prune_checkpoints(str(run), 1)] == [1, 2]
    assert [c.step for c in list_checkpoints(str(run))] == [3]


def test_resuming_with_another_worker_count_is_refused_before_starting(tmp_path):
    from madis.train import fit

    ckpt = tmp_path / "storage" / "r" / "checkpoint_00000004"
    ckpt.mkdir(parents=True)
    (ckpt / TRAIN_STATE).write_text(json.dumps({"step": 4, "world_size": 2}))
    write_complete(str(ckpt), 4, epoch=1)
    with pytest.raises(ConfigError, match="trained by 2 workers; resume it with train.workers=2"):
        fit(RegressionTask(), TrainConfig(run_name="r", storage_path=str(tmp_path / "storage"),
                                          workers=1, steps=8))


# --------------------------------------------------------------------------- real Ray

def _cfg(tmp_path, name, **kw):
    base = dict(run_name=name, storage_path=str(tmp_path / "storage"), workers=2, zero_stage=2,
                batch_size=8, lr=1e-2, log_every=1, log_dir=str(tmp_path / "tb"),
                progress=False, max_failures=0)
    base.update(kw)
    return TrainConfig(**base)


def _scalars(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.ray
def test_zero2_two_workers_loss_falls_on_fixed_batch_s3_storage(ray_local, s3_bucket, tmp_path):
    from madis.train import fit

    task = RegressionTask(fixed_batch=True, batches_per_epoch=3)
    cfg = _cfg(tmp_path, "fixed", storage_path=f"{s3_bucket}/runs", steps=8, checkpoint_every=4,
               lr=3e-2)
    result = fit(task, cfg)
    assert result.run_url == f"{s3_bucket}/runs/fixed"
    assert [c.step for c in list_checkpoints(result.run_url)] == [4, 8]
    losses = [v for _, v in _scalars(tmp_path / "tb" / "fixed", "train/loss")]
    assert len(losses) == 8 and losses[-1] < 0.6 * losses[0], losses
    for tag in ("train/lr", "train/grad_norm", "train/samples_per_s", "val/mse"):
        assert _scalars(tmp_path / "tb" / "fixed", tag), tag
    lrs = [v for _, v in _scalars(tmp_path / "tb" / "fixed", "train/lr")]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and max(lrs) <= cfg.lr  # cosine to 0
    meta = read_metadata(result.checkpoint.export_url)
    assert meta["step"] == 8 and meta["epoch"] == 2 and meta["train"]["zero_stage"] == 2
    import fsspec

    with fsspec.open(f"{result.checkpoint.export_url}/model.safetensors", "rb") as f:
        weights = safetensors.torch.load(f.read())
    model = task.build_model()
    model.load_state_dict(weights)  # plain torch: no DeepSpeed, no Ray
    with torch.no_grad():  # the exported weights are those the workers validated
        assert task.evaluate(model, rank=0, world_size=1)["mse"] == pytest.approx(
            meta["metrics"]["val_mse"], rel=1e-5)

    # re-submitted with more steps: a new trainer resumes the run from step 8 in storage
    longer = fit(task, TrainConfig(**{**cfg.__dict__, "steps": 12}))
    assert [c.step for c in list_checkpoints(result.run_url)] == [4, 8, 12]
    assert len(_scalars(tmp_path / "tb" / "fixed", "train/loss")) == 12
    assert longer.checkpoint.epoch == 3  # 12 batches of 3 per epoch: epochs 0..3 consumed


@pytest.mark.ray
def test_worker_failure_resumes_to_planned_step_and_data_position(ray_local, tmp_path):
    from madis.train import fit

    # 4 batches per epoch, 10 steps: rank 1 crashes when asked for batch 7 (epoch 1), after
    # the checkpoint at step 6; Ray restarts the workers from it and the run must end as one
    # that never crashed: 10 steps, step s trained on batch s-1 of the planned order.
    cfg = _cfg(tmp_path, "crash", steps=10, checkpoint_every=3, max_failures=1)
    marker = tmp_path / "crashed"
    task = RegressionTask(fail_at=(1, 7), fail_marker=str(marker))
    result = fit(task, cfg)
    assert marker.exists(), "the injected failure did happen"
    assert result.checkpoint.step == 10
    assert [c.step for c in list_checkpoints(result.run_url)] == [6, 9, 10]  # keep 3
    with open(os.path.join(result.checkpoint.url, TRAIN_STATE)) as f:
        state = json.load(f)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (10, 2, 2)
    assert state["samples"] == 10 * 2 * cfg.batch_size
    positions = dict(_scalars(tmp_path / "tb" / "crash", "train/position"))
    assert positions == {s: float(s - 1) for s in range(1, 11)}

    # a re-submitted job that already reached its steps returns the same checkpoint at once
    again = fit(task, cfg)
    assert again.checkpoint.url == result.checkpoint.url


@pytest.mark.ray
def test_a_newer_complete_checkpoint_on_storage_than_in_rays_snapshot_is_resumed(ray_local,
                                                                                 tmp_path):
    """A node lost after a checkpoint's COMPLETE marker but before Ray's controller recorded
    the report: storage holds step 4, Ray's snapshot of the run only step 2. The re-submitted
    job resumes at step 4 (steps 3-4 are not trained again) and ends as an unbroken run."""
    import shutil

    from madis.train import fit

    task = RegressionTask()
    whole = fit(task, _cfg(tmp_path, "whole", workers=1, zero_stage=0, steps=6,
                           checkpoint_every=2))
    cfg = _cfg(tmp_path, "lost", workers=1, zero_stage=0, steps=2, checkpoint_every=2)
    fit(task, cfg)  # Ray's snapshot of run "lost": step 2
    # training is deterministic: run "whole"'s step-4 checkpoint is what "lost" saved at step 4
    shutil.copytree(tmp_path / "storage" / "whole" / "checkpoint_00000004",
                    tmp_path / "storage" / "lost" / "checkpoint_00000004")
    resumed = fit(task, TrainConfig(**{**cfg.__dict__, "steps": 6}))
    assert resumed.checkpoint.step == 6
    positions = [s for s, _ in _scalars(tmp_path / "tb" / "lost", "train/position")]
    assert positions == [1, 2, 5, 6]
    a = safetensors.torch.load_file(os.path.join(resumed.checkpoint.export_url, "model.safetensors"))
    b = safetensors.torch.load_file(os.path.join(whole.checkpoint.export_url, "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.ray
def test_keep_checkpoints_spares_the_best_and_the_run_still_resumes(ray_local, tmp_path):
    from madis.fleet.registry import history_entry, record
    from madis.train import fit

    cfg = _cfg(tmp_path, "keep", workers=1, zero_stage=0, steps=8, checkpoint_every=2,
               keep_checkpoints=2)
    run = str(tmp_path / "storage" / "keep")
    # the fleet ranked step 2 best (it will be written at step 2 and outlive the retention)
    record(run, history_entry(2, f"{run}/checkpoint_00000002", metrics={"m": 1.0}), "m", "max")
    task = RegressionTask()
    fit(task, cfg)
    assert [c.step for c in list_checkpoints(run)] == [2, 6, 8]
    assert os.listdir(os.path.join(run, "checkpoint_00000004")) == ["PRUNED.json"]
    # Ray's run snapshot lists the pruned checkpoint: a re-submitted job still resumes
    longer = fit(task, TrainConfig(**{**cfg.__dict__, "steps": 10}))
    assert longer.checkpoint.step == 10
    assert [c.step for c in list_checkpoints(run)] == [2, 8, 10]
    best = list_checkpoints(run)[0]
    with torch.no_grad():  # the kept best checkpoint is whole: its export reproduces its metric
        assert task.evaluate(task.load_export(best.export_url), rank=0, world_size=1)["mse"] == \
            pytest.approx(best.metrics["val_mse"], rel=1e-5)


@pytest.mark.ray
def test_consecutive_nan_losses_stop_with_last_good_checkpoint(ray_local, tmp_path):
    from madis.train import NonFiniteLossError, fit

    # ZeRO-3 here: parameters are partitioned, so the export must gather them first
    cfg = _cfg(tmp_path, "nan", steps=20, checkpoint_every=4, max_bad_steps=3, zero_stage=3)
    task = RegressionTask(nan_from=6)
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses at step 6") as err:
        fit(task, cfg)
    last = err.value.last_checkpoint
    assert last.step == 4
    assert [c.step for c in list_checkpoints(str(tmp_path / "storage" / "nan"))] == [4]
    model = task.load_export(last.export_url)
    with torch.no_grad():
        assert task.evaluate(model, rank=0, world_size=1)["mse"] == pytest.approx(
            last.metrics["val_mse"], rel=1e-5)
