"""The embedded default end to end (slow, minutes): ``ray start --head`` on 127.0.0.1 and
``ray job submit --working-dir .`` of the tokenizer, pretraining and fine-tuning jobs on the real
sample shards streamed from the local S3 server, then ``madis generate``.

Budgets are cut (tens of steps) so the chain, not the quality, is what is checked here;
``benchmarks/compare_quality.py`` runs the full cpu-tiny budgets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from madis.stack import ensure_ray_token, ray_auth_env, stop_ray_cluster
from conftest import REPO, require_loopback

VENV_BIN = Path(sys.executable).parent


def _run(cmd, env, timeout=900) -> str:
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd[:6]} failed ({out.returncode}):\n{out.stdout[-3000:]}\n" \
                                f"{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_ray_job_submit_tokenizer_pretrain_finetune_then_generate(tmp_path):
    require_loopback()
    from madis.data import storage
    from madis.data.s3server import LocalS3Server
    from madis.data.sample import build_sample_corpus, is_up_to_date
    from madis.train import list_checkpoints, read_metadata

    if not is_up_to_date(REPO / "shards"):
        build_sample_corpus(REPO / "shards")
    temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # short: Ray's socket paths
    runs = tmp_path / "storage"
    with LocalS3Server() as server:
        token = ensure_ray_token(tmp_path / "ray_auth_token")  # a fresh machine has none
        env = {**os.environ, **server.env, **ray_auth_env(token),
               "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        old = {k: os.environ.get(k) for k in server.env}
        server.apply_env()
        try:
            storage.upload_dir(REPO / "shards", "s3://sample/shards")
            _run([str(VENV_BIN / "ray"), "start", "--head", "--num-cpus=2",
                  "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
                  f"--temp-dir={temp_dir}", "--disable-usage-stats"], env, 180)
            submit = [str(VENV_BIN / "ray"), "job", "submit", "--address", "http://127.0.0.1:8265",
                      "--working-dir", ".", "--runtime-env-json",
                      json.dumps({"env_vars": server.env}), "--", "python"]
            common = [f"train.storage_path={runs}", "train.progress=false",
                      *(f"train_{j}.checkpoint_every=10" for j in ("tokenizer", "pretrain",
                                                                   "finetune"))]
            _run([*submit, "ray_jobs/train_tokenizer.py", "--shards", "s3://sample/shards",
                  "--tokens", "s3://sample/tokens", "train_tokenizer.steps=20", *common], env)
            _run([*submit, "ray_jobs/pretrain.py", "--shards", "s3://sample/tokens", "--steps",
                  "20", *common], env)
            _run([*submit, "ray_jobs/finetune.py", "--shards", "s3://sample/tokens", "--steps",
                  "20", *common], env)
        finally:
            stop_ray_cluster(temp_dir)  # not `ray stop`: it ends every cluster of the machine
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    pre, fine = list_checkpoints(str(runs / "pretrain")), list_checkpoints(str(runs / "finetune"))
    assert [c.step for c in pre] == [10, 20] and [c.step for c in fine] == [10, 20]
    meta = read_metadata(fine[-1].export_url)
    assert meta["task"]["init_from"] == pre[-1].export_url
    assert meta["task"]["shards"] == ["s3://sample/tokens"]  # streamed, never copied
    assert meta["task"]["tokenizer_checkpoint"].startswith(str(runs / "tokenizer"))

    # generation needs neither Ray nor the S3 server: the export holds the tokenizer copy
    out = _run([str(VENV_BIN / "madis"), "generate", "A", "--lang", "ase", "--storage", str(runs),
                "-o", str(tmp_path / "gen")], {**os.environ}, 300)
    out += _run([str(VENV_BIN / "madis"), "generate", "HAUS", "--lang", "gsg", "--storage",
                 str(runs), "-o", str(tmp_path / "gen2")], {**os.environ}, 300)
    assert "[ase] 'A'" in out and "[gsg] 'HAUS'" in out and "body" in out
    assert (tmp_path / "gen" / "00_ase_A.motion.npy").exists()
    assert (tmp_path / "gen2" / "00_gsg_HAUS.motion.npy").exists()
