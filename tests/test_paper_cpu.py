"""The paper profile's chain at the paper's widths on CPU (``benchmarks/bench_paper_cpu.py``
with 2 of Qwen3-0.6B's 28 layers): ZeRO-3 pretraining over 2 workers in bf16, a checkpoint with
its export, a fleet evaluation and one Serve request. Slow: run with ``-m slow``."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO, require_loopback


@pytest.mark.slow
@pytest.mark.ray
def test_paper_widths_pretrain_checkpoint_fleet_and_serve_on_cpu(tmp_path):
    require_loopback()
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_paper_cpu

    out = bench_paper_cpu.main(["--layers", "2", "--steps", "2", "--work-dir", str(tmp_path),
                                "--shards", str(tmp_path / "shards")])
    assert out["checkpoints"] == [2]
    assert out["val_metrics"]["val_samples"] > 0
    assert out["fleet"]["evaluated"] == [2] and not out["fleet"]["failed"]
    assert out["serve_answer"]["positions"] > 0 and out["serve_answer"]["frames"] > 0
    assert out["peak_mem_mb_per_worker"] > 0 and len(out["checkpoint_s"]) == 1
