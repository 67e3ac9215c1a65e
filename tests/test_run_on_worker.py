"""Work after training runs on a Ray worker placed like a training worker, not on the driver
(the tokenizer job encodes its corpus there: ``madis.train.run_on_worker``)."""

from __future__ import annotations

import os

import pytest

from madis.train import TrainConfig
from madis.train.testing import where


@pytest.mark.ray
def test_runs_in_a_worker_process_with_the_training_resources_and_s3_env(ray_local,
                                                                         monkeypatch):
    from madis.train import run_on_worker

    # set after the cluster started: only the forwarded environment can carry it there
    monkeypatch.setenv("AWS_DEFAULT_REGION", "madis-test-region")
    got = run_on_worker(TrainConfig(cpus_per_worker=1), where)
    assert got["pid"] != os.getpid() and got["device"] == "cpu" and got["threads"] == 1
    assert got["region"] == "madis-test-region"
