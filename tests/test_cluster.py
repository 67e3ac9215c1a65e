"""A multi-node Ray cluster on one machine, laid out like ``cluster.yaml`` (marker ``cluster``:
``scripts/test.sh -m cluster``; minutes, kept out of the default suite).

A head (no CPUs, as in cluster.yaml), a training node offering ``madis_train`` and an eval/serve
node offering ``madis_eval``, each a ``ray start`` of its own in its own mount and PID
namespaces (private /tmp, /dev/shm and HOME with the cluster token; see
:class:`madis.train.testing.LocalCluster`), all on 127.0.0.1 with token authentication on. They
share nothing but the network: every run, shard and checkpoint goes through the local S3 server.
The jobs run with ``configs/cluster-tiny.yaml`` (cpu-tiny with the paper profile's placement
fields) and tiny sizes, submitted with ``ray job submit`` as a user does.

- the chain (tokenizer -> pretraining -> fine-tuning with the fleet beside it -> Serve), then
  Ray's state API: training workers ran only on the training node, fleet actors and Serve
  replicas only on the eval node;
- the eval node lost mid-run: training and its checkpoints are untouched, the fleet waits for a
  node, then evaluates on a new eval node without recording a failure;
- the training node lost mid-run: the re-submitted job resumes from the last complete checkpoint
  on S3 on a new training node and ends at the planned step.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from pathlib import Path

import pytest

from madis.data.s3server import free_port
from madis.stack import ensure_ray_token
from conftest import REPO, require_loopback

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3000)]

PROFILE = "configs/cluster-tiny.yaml"
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1",
        "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16",
        "model.num_positions=16", "model.num_steps=4", "model.max_text_tokens=16",
        "tokenizer.width=16", "tokenizer.code_dim=8", "tokenizer.codebook_sizes=[8,16,16]",
        "tokenizer.depth=1", "train.progress=false", "train.batch_size=4",
        "train.warmup_steps=0"]
FLEET = ["fleet.actors=1", "fleet.render_samples=0", "fleet.poll_interval_s=1"]
WORDS = ["HELLO", "THANK YOU", "GOOD MORNING", "YES", "NO", "PLEASE"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    """Head + ``train`` (madis_train) + ``eval`` (madis_eval); every node is stopped at the end,
    also when a test fails."""
    require_loopback()
    from madis.train.testing import LocalCluster

    root = tmp_path_factory.mktemp("cluster")
    token = ensure_ray_token(root / "ray_auth_token")
    # what an instance profile gives each cloud node: S3 credentials (here for the local server);
    # DeepSpeed's CPU op comes from a build cache, as from a node image that has it
    env = {**s3_server.env, "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions")}
    with LocalCluster(token, root / "logs", env) as c:
        _build_deepspeed_op(c.env)
        c.start("head", head=True, num_cpus=0)
        c.start("train", num_cpus=2, resources={"madis_train": 2})
        c.start("eval", num_cpus=2, resources={"madis_eval": 2})
        yield c


@pytest.fixture(scope="module")
def bucket(s3_server):
    import boto3

    name = f"cluster-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def motion_shards(bucket, tmp_path_factory):
    """Random-walk keypoint clips (8 train, 4 val) on S3: what the tokenizer job reads."""
    from madis.data import storage
    from madis.data.testing import write_random_shards

    local = tmp_path_factory.mktemp("motion")
    write_random_shards(local, "keypoints", counts={"train": 8, "val": 4}, texts=WORDS)
    storage.upload_dir(local, f"{bucket}/motion")
    return f"{bucket}/motion"


@pytest.fixture(scope="module")
def token_shards(bucket, tmp_path_factory):
    """Token shards of the same clips from a tiny random tokenizer, both on S3 (the nodes see
    no local file of this process)."""
    import torch

    from madis.data import storage
    from madis.data.shards import read_manifest
    from madis.data.testing import write_random_shards
    from madis.tokenizer import DecoupledTokenizer, TokenizerConfig
    from madis.tokenizer.token_shards import write_token_shards

    local = tmp_path_factory.mktemp("tokens")
    write_random_shards(local / "motion", "keypoints", counts={"train": 8, "val": 4}, texts=WORDS)
    stats = read_manifest(str(local / "motion"))["stats"]
    torch.manual_seed(0)
    tok = DecoupledTokenizer(TokenizerConfig(width=16, code_dim=8, codebook_sizes=(8, 16, 16),
                                             depth=1), "keypoints", stats["mean"], stats["std"])
    for cb in tok.codebooks:
        cb.copy_(torch.randn_like(cb))
    tok.eval().save_pretrained(str(local / "tokenizer"))
    storage.upload_dir(local / "tokenizer", f"{bucket}/tokenizer")
    write_token_shards(tok, str(local / "motion"), str(local / "tokens"),
                       extra={"tokenizer_export": {"url": f"{bucket}/tokenizer", "step": 0}})
    storage.upload_dir(local / "tokens", f"{bucket}/tokens")
    return f"{bucket}/tokens"


def _python(script: str, *args: str) -> list[str]:
    return ["python", script, "--config", PROFILE, *args, *TINY]


def _ok(out, what: str) -> str:
    assert out.returncode == 0, f"{what} failed ({out.returncode}):\n{out.stdout[-4000:]}\n" \
                                f"{out.stderr[-2000:]}"
    return out.stdout


def _actors(cluster, class_prefix: str) -> list:
    """Every actor (alive or dead) whose class name starts with ``class_prefix``."""
    return [a for a in cluster.list_state("actors") if a.class_name.startswith(class_prefix)]


def _fleet_summary(logs: str) -> dict:
    """The summary JSON ``ray_jobs/eval_fleet.py`` prints last."""
    return json.JSONDecoder().raw_decode(logs[logs.rindex("\n{") + 1:])[0]


def test_chain_by_ray_job_submit_runs_each_part_on_its_node_group(cluster, bucket, motion_shards):
    runs = f"{bucket}/runs-chain"
    common = [f"train.storage_path={runs}"]
    _ok(cluster.submit("chain-tokenizer", _python(
        "ray_jobs/train_tokenizer.py", "--shards", motion_shards, "--tokens", f"{bucket}/tok-chain",
        "train_tokenizer.steps=2", "train_tokenizer.checkpoint_every=2", *common)), "tokenizer")
    _ok(cluster.submit("chain-pretrain", _python(
        "ray_jobs/pretrain.py", "--shards", f"{bucket}/tok-chain", "train_pretrain.steps=2",
        "train_pretrain.checkpoint_every=2", *common)), "pretraining")
    _ok(cluster.submit("chain-fleet", _python(
        "ray_jobs/eval_fleet.py", "--job", "finetune", *FLEET, *common), wait=False), "fleet")
    _ok(cluster.submit("chain-finetune", _python(
        "ray_jobs/finetune.py", "--shards", f"{bucket}/tok-chain", "train_finetune.steps=4",
        "train_finetune.checkpoint_every=2", *common)), "fine-tuning")
    assert cluster.wait_job("chain-fleet", 1200) == "SUCCEEDED", cluster.job_logs("chain-fleet")
    fleet = _fleet_summary(cluster.job_logs("chain-fleet"))
    assert fleet["evaluated"] and fleet["evaluated"][-1] == 4 and not fleet["failed"], fleet
    port = free_port()
    _ok(cluster.submit("chain-serve", _python(
        "ray_jobs/serve.py", "--run", f"{runs}/finetune", "--port", str(port), *common)), "serve")
    # the head's HTTP proxy (serve.proxy_location HeadOnly) routes to the replica on the eval node
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", method="POST",
                                 data=json.dumps({"text": "HELLO", "lang": "ase"}).encode())
    with urllib.request.urlopen(req, timeout=300) as resp:
        answer = json.loads(resp.read())
    assert resp.status == 200 and answer["frames"] > 0

    train_node, eval_node = cluster.nodes["train"].node_id, cluster.nodes["eval"].node_id
    workers = _actors(cluster, "RayTrainWorker")
    assert len(workers) >= 6  # 2 workers x (tokenizer, pretraining, fine-tuning)
    assert {a.node_id for a in workers} == {train_node}
    decoders = _actors(cluster, "CheckpointDecoder")
    assert decoders and {a.node_id for a in decoders} == {eval_node}
    replicas = _actors(cluster, "ServeReplica")
    assert replicas and {a.node_id for a in replicas} == {eval_node}
    # the control plane stayed on the head: Serve's proxy and controller, the job drivers
    head = cluster.nodes["head"].node_id
    assert {a.node_id for a in _actors(cluster, "ProxyActor")} == {head}


def test_losing_the_eval_node_loses_no_checkpoint_and_the_fleet_catches_up_on_a_new_one(
        cluster, bucket, token_shards):
    from madis.fleet import read_best
    from madis.train import list_checkpoints

    runs = f"{bucket}/runs-evalloss"
    common = [f"train.storage_path={runs}"]
    if "eval" not in cluster.nodes:
        cluster.start("eval", num_cpus=2, resources={"madis_eval": 2})
    _ok(cluster.submit("evalloss-fleet", _python(
        "ray_jobs/eval_fleet.py", "--job", "finetune", *FLEET, *common), wait=False), "fleet")
    _ok(cluster.submit("evalloss-finetune", _python(
        "ray_jobs/finetune.py", "--shards", token_shards, "--init", "none",
        "train_finetune.steps=6", "train_finetune.checkpoint_every=2", *common), wait=False),
        "fine-tuning")
    run = f"{runs}/finetune"
    # mid-run: the fleet's actor runs on the eval node and training has written a checkpoint
    _wait_for(lambda: list_checkpoints(run) and any(
        a.state == "ALIVE" for a in _actors(cluster, "CheckpointDecoder")), cluster, 1500,
        "a checkpoint and a running fleet actor")
    lost = cluster.nodes["eval"].node_id
    cluster.kill("eval")

    # training never needed the eval node: it ends with every checkpoint complete
    assert cluster.wait_job("evalloss-finetune", 1200) == "SUCCEEDED", \
        cluster.job_logs("evalloss-finetune")
    assert [c.step for c in list_checkpoints(run)] == [2, 4, 6]
    # the fleet waits for a node (paper profile: fleet.start_timeout_s 0) instead of failing
    assert cluster.job_status("evalloss-fleet") == "RUNNING"
    assert "failed" not in set(_statuses(read_best(run)).values())

    cluster.start("eval2", num_cpus=2, resources={"madis_eval": 2})
    assert cluster.wait_job("evalloss-fleet", 1200) == "SUCCEEDED", \
        cluster.job_logs("evalloss-fleet")
    fleet = _fleet_summary(cluster.job_logs("evalloss-fleet"))
    assert fleet["evaluated"][-1] == 6 and not fleet["failed"], fleet
    assert fleet["actors_replaced"] >= 1
    statuses = _statuses(read_best(run))
    assert statuses[6] == "ok" and "failed" not in statuses.values(), statuses
    new = cluster.nodes["eval2"].node_id
    decoders = [a for a in _actors(cluster, "CheckpointDecoder")
                if a.job_id == _job_id(cluster, "evalloss-fleet")]
    # a replacement asked for while no eval node existed may never have been placed (no node)
    placed = {a.node_id for a in decoders if a.node_id}
    assert new in placed and placed <= {lost, new}, placed
    assert {a.state for a in decoders} == {"DEAD"}  # none outlives the finished fleet job


def test_losing_the_training_node_then_resubmitting_resumes_from_the_last_checkpoint_on_s3(
        cluster, bucket, token_shards):
    from madis.config import load_tree
    from madis.train import list_checkpoints, read_metadata, train_config

    runs = f"{bucket}/runs-trainloss"
    job = _python("ray_jobs/pretrain.py", "--shards", token_shards, "train_pretrain.steps=8",
                  "train_pretrain.checkpoint_every=2", f"train.storage_path={runs}")
    run = f"{runs}/pretrain"
    if "train" not in cluster.nodes:
        cluster.start("train", num_cpus=2, resources={"madis_train": 2})
    _ok(cluster.submit("trainloss-1", job, wait=False), "pretraining")
    _wait_for(lambda: list_checkpoints(run), cluster, 1500, "a first complete checkpoint")
    cluster.kill("train")
    before = [c.step for c in list_checkpoints(run)]  # nothing lands once the node is gone
    assert before and before[-1] < 8, f"the run ended before its node was lost: {before}"
    # without a training node the job cannot go on: stop it if Ray Train still waits
    if cluster.job_status("trainloss-1") not in ("FAILED", "STOPPED", "SUCCEEDED"):
        cluster.stop_job("trainloss-1")
    cluster.wait_job("trainloss-1", 300)
    last = [c.step for c in list_checkpoints(run)][-1]  # what S3 holds at the re-submission

    cluster.start("train2", num_cpus=2, resources={"madis_train": 2})
    out = _ok(cluster.submit("trainloss-2", job), "re-submitted pretraining")
    resumed = re.findall(r"resumed from the checkpoint at step (\d+) of (\d+)", out)
    # the same worker line can reach the job log twice (Ray's log forwarding), so as a set
    assert resumed and set(resumed) == {(str(last), "8")}, (before, last, [
        line[:300] for line in out.splitlines()
        if any(w in line.lower() for w in ("resumed", "error", "fail", "restart"))][:30])
    after = list_checkpoints(run)
    keep = train_config(load_tree(PROFILE), "pretrain").keep_checkpoints
    assert [c.step for c in after] == [2, 4, 6, 8][-keep:]  # the retention pruned the oldest
    assert read_metadata(after[-1].export_url)["step"] == 8
    new = cluster.nodes["train2"].node_id
    workers = {a.node_id for a in _actors(cluster, "RayTrainWorker")
               if a.job_id == _job_id(cluster, "trainloss-2")}
    assert workers == {new}


# --------------------------------------------------------------------------- helpers

def _build_deepspeed_op(env: dict) -> None:
    """Build (or find built) DeepSpeed's CPU communication op with the nodes' own environment:
    built once here, no node compiles it, and no node killed mid-compile leaves the lock file
    every later job would wait on. The same PATH matters: the venv's ninja and the system's
    write .ninja_log in formats that make each other rebuild."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "from deepspeed.ops.op_builder.cpu import "
                    "ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False)"],
                   env=env, check=True, capture_output=True, timeout=1800)


def _statuses(doc: dict | None) -> dict[int, str]:
    from madis.fleet.registry import evaluated_steps

    return evaluated_steps(doc)


def _job_id(cluster, submission_id: str) -> str:
    return cluster.jobs().get_job_info(submission_id).job_id


def _wait_for(condition, cluster, timeout_s: float, what: str) -> None:
    """Poll ``condition`` every second (storage or state API errors count as not yet)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - e.g. the run directory does not exist yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s:g} s; node logs in {cluster.logs}")
        time.sleep(1)
