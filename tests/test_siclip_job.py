"""SiCLIP with the shared training loop: the Task on real shards, and the job end to end on Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from madis.data.shards import Sample, write_shards
from madis.metrics.siclip import SiCLIPConfig
from madis.metrics.siclip_task import SiCLIPTask
from conftest import job_module

TINY = SiCLIPConfig(width=16, embed_dim=16, num_heads=2, motion_layers=1, text_layers=1,
                    max_text_bytes=16, max_positions=16, dropout=0.0)


def _sample(split, i):
    rng = np.random.default_rng(i)
    motion = (np.cumsum(rng.normal(0, 0.05, (40, 165)), 0) + i).astype(np.float16)
    return Sample(key=f"{split}-{i}", text=f"word {i % 5}", lang="ase", fps=25.0, source="test",
                  motion=motion, valid=np.ones((40, 3), bool))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("siclip-shards")
    write_shards(root, {"train": [_sample("train", i) for i in range(8)],
                        "val": [_sample("val", i) for i in range(10, 14)],
                        "test": [_sample("test", i) for i in range(20, 25)]},
                 motion_format="keypoints", fps=25.0, provenance="test", licence="test",
                 max_samples=3)
    return root


def test_task_trains_evaluates_and_exports_without_ray(shards, tmp_path):
    task = SiCLIPTask.from_shards(TINY, str(shards))
    assert task.motion_format == "keypoints" and task.splits == {"train": 8, "val": 4, "test": 5}
    assert task.steps_per_epoch(world_size=1, batch_size=3) == 2
    model = task.build_model()
    batches = list(task.batches(rank=0, world_size=1, epoch=0, seed=0, batch_size=3))
    assert [task.batch_samples(b) for b in batches] == [3, 3]  # the incomplete batch is dropped
    loss, metrics = task.loss(model, batches[0])
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) == {"global_loss", "fine_loss", "logit_scale"}
    model.eval()
    with torch.no_grad():
        val = task.evaluate(model, rank=0, world_size=1)
    assert set(val) == {"s2t_R@1", "s2t_R@5", "samples"} and val["s2t_R@5"] == 100.0
    assert val["samples"] == 4  # one retrieval batch (of up to 45) holding the 4 val samples
    task.export(model, str(tmp_path / "export"))
    again = SiCLIPTask.load(str(tmp_path / "export"))
    assert torch.equal(again.mean, model.mean)


@pytest.mark.ray
def test_job_trains_and_reports_test_retrieval(ray_local, shards, tmp_path):
    report = job_module("train_siclip").main([
        "--shards", str(shards), "siclip.width=16", "siclip.embed_dim=16", "siclip.num_heads=2",
        "siclip.motion_layers=1", "siclip.text_layers=1", f"train.storage_path={tmp_path}/runs",
        f"train.log_dir={tmp_path}/tb", "train.workers=1", "train.progress=false",
        "train_siclip.steps=4", "train_siclip.batch_size=2", "train_siclip.checkpoint_every=2",
        "train_siclip.warmup_steps=0",
    ])
    assert report["step"] == 4 and report["samples"] == 5
    assert set(report["retrieval"]) >= {"siclip_s2t_R@1", "siclip_t2s_R@10", "siclip_s2t_R@1_b45"}
    assert report["retrieval"]["siclip_s2t_R@5"]["value"] == 100.0  # 5 candidates
    # test texts "word 0".."word 4" are distinct: chance R@1 = 1/5
    assert report["chance"]["siclip_s2t_R@1"] == {"value": pytest.approx(20.0), "unit": "%"}
    saved = json.loads((tmp_path / "runs" / "siclip" / "report.json").read_text())
    assert saved["export"] == report["export"]
