"""The eval fleet: the best-checkpoint registry (ties, regressions, failures, atomic writes on disk
and on the real local S3 server), storage retries through a real outage, and the fleet on a real
local Ray cluster watching a run on S3 while checkpoints land (a corrupt one, a half-written one,
a fleet actor killed mid-evaluation), with its TensorBoard events read back."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import fsspec
import pytest
import torch

from madis.config import ConfigError, load_tree, section
from madis.data.shards import read_manifest
from madis.data.testing import write_random_shards
from madis.fleet import FleetConfig, read_best
from madis.fleet.registry import (
    best_url, history_entry, record, update_best, write_bytes_atomic, write_json_atomic,
)
from madis.fleet.retry import is_transient, with_backoff
from madis.fleet.testing import write_checkpoint
from madis.mdlm.task import MDLMTask, model_config
from madis.tokenizer import DecoupledTokenizer, TokenizerConfig
from madis.tokenizer.token_shards import write_token_shards
from madis.train.checkpoints import write_complete
from conftest import job_module

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1",
              "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16",
              "model.num_positions=16", "model.num_steps=6", "model.max_text_tokens=16"]
WORDS = ["HELLO", "THANK YOU", "GOOD MORNING", "YES", "NO", "PLEASE"]


# --------------------------------------------------------------------------- registry, no Ray

def _ok(step, **metrics):
    return history_entry(step, f"s3://r/run/checkpoint_{step:08d}", metrics=metrics)


def test_best_keeps_the_earlier_of_ties_ignores_regressions_and_failures():
    doc = None
    for entry in (_ok(100, r1=10.0, dtw=3.0), _ok(200, r1=25.0, dtw=2.0),
                  _ok(300, r1=25.0, dtw=1.0),  # tie on r1: 200 stays
                  history_entry(400, "s3://r/run/checkpoint_00000400", error="corrupt"),
                  _ok(500, r1=20.0, dtw=0.5),  # regression on r1
                  _ok(600, r1=float("nan"), dtw=0.7)):  # no finite value: never best
        doc = update_best(doc, entry, "r1", "max")
    assert doc["best"]["step"] == 200 and doc["best"]["value"] == 25.0
    assert doc["best"]["export_url"] == "s3://r/run/checkpoint_00000200/export"
    assert [h["step"] for h in doc["history"]] == [100, 200, 300, 400, 500, 600]
    assert [h["status"] for h in doc["history"]] == ["ok"] * 3 + ["failed"] + ["ok"] * 2
    assert [h["value"] for h in doc["history"]] == [10.0, 25.0, 25.0, None, 20.0, None]
    assert doc["history"][3]["error"] == "corrupt" and doc["history"][3]["metrics"] == {}
    assert doc["history"][5]["metrics"]["r1"] is None  # NaN cannot go into strict JSON
    json.loads(json.dumps(doc, allow_nan=False))
    # another metric and mode re-rank the same history
    rer = update_best(doc, None, "dtw", "min")
    assert (rer["metric"], rer["mode"], rer["best"]["step"]) == ("dtw", "min", 500)
    # a re-recorded step replaces its entry instead of adding one
    again = update_best(doc, _ok(100, r1=99.0), "r1", "max")
    assert len(again["history"]) == 6 and again["best"]["step"] == 100
    with pytest.raises(ValueError, match="mode"):
        update_best(None, None, "r1", "best")


def test_registry_reader_and_ray_free_parts_import_no_ray():
    import subprocess
    import sys

    code = ("import sys, madis.fleet, madis.fleet.registry, madis.fleet.evaluation, "
            "madis.fleet.dashboard, madis.fleet.testing\n"
            "print(sorted(n for n in sys.modules if n == 'ray' or n.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fleet_config_sections_and_bad_values():
    paper = section(load_tree("paper"), "fleet", FleetConfig)
    assert paper.metric == "siclip_s2t_R@1" and paper.mode == "max" and paper.needs_siclip
    tiny = section(load_tree("cpu-tiny"), "fleet", FleetConfig)
    assert tiny.metric == "signing_hands" and tiny.mode == "max" and not tiny.needs_siclip
    with pytest.raises(ConfigError, match="mode"):
        FleetConfig(mode="highest")
    with pytest.raises(ConfigError, match="samplers"):
        FleetConfig(samplers=["utc", "greedy"])
    with pytest.raises(ConfigError, match="names sampler 'vanilla'"):
        FleetConfig(metric="vanilla/dtw_jpe_body")
    assert not FleetConfig(metric="vanilla/dtw_jpe_body", samplers=["utc", "vanilla"]).needs_siclip


def test_validation_batches_are_balanced_over_the_actors():
    from madis.fleet.evaluation import ValidationSet

    val = ValidationSet([f"k{i}" for i in range(76)], {}, "keypoints", 25.0, [])
    assert [len(b) for b in val.batches(16)] == [15, 15, 15, 15, 16]
    assert [len(b) for b in val.batches(16, 4)] == [9, 10, 9, 10, 9, 10, 9, 10]
    assert sum(val.batches(16, 4), []) == val.keys  # in order, each key once
    assert val.spread(3) == ["k0", "k25", "k50"] and len(val.spread(100)) == 76
    assert len(val.batches(1, 3)) == 76
    assert len(ValidationSet(["a"], {}, "", 1, []).batches(4, 8)) == 1


@pytest.mark.parametrize("where", ["local", "s3"])
def test_registry_round_trip_and_readers_never_see_a_partial_file(where, tmp_path, request):
    run = (str(tmp_path / "run") if where == "local"
           else f"{request.getfixturevalue('s3_bucket')}/run")
    assert read_best(run) is None
    doc = record(run, _ok(10, r1=5.0), "r1", "max")
    assert read_best(run) == doc and doc["best"]["step"] == 10
    if where == "local":  # readable like every other output, not mkstemp's 0600
        assert (tmp_path / "run" / "best.json").stat().st_mode & 0o777 == 0o644
    # a reader polling while the writer replaces a large document sees whole documents only
    big = {"metric": "r1", "mode": "max", "best": None, "history": [],
           "pad": ["x" * 1000] * 2000}  # ~2 MB: a non-atomic writer would be caught mid-write
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            d = read_best(run)
            seen.append(len(d.get("pad", [])) if d else -1)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(8 if where == "s3" else 40):
        write_json_atomic(best_url(run), {**big, "pad": big["pad"][: 1000 + i]})
    stop.set()
    t.join()
    assert seen and all(n == 0 or n >= 1000 for n in seen)  # read_best raised on nothing partial
    write_bytes_atomic(best_url(run), b'{"metric": "r1"')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_best(run)


def test_madis_best_prints_the_registry(tmp_path, capsys):
    from madis.cli import main

    run = str(tmp_path / "run")
    assert main(["best", run]) == 2 and "no run directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["best", run]) == 1 and "best.json yet" in capsys.readouterr().err
    record(run, _ok(100, r1=10.0), "r1", "max")
    record(run, history_entry(200, f"{run}/checkpoint_00000200", error="corrupt export"),
           "r1", "max")
    assert main(["best", run, "--history"]) == 0
    out = capsys.readouterr().out
    assert "best: step 100  r1 = 10 (max)" in out and "s3://r/run/checkpoint_00000100/export" in out
    assert "failed" in out and "corrupt export" in out
    assert main(["best", run, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["step"] == 100


def test_storage_outage_is_retried_with_backoff_until_the_endpoint_answers():
    import boto3
    from botocore.config import Config

    from madis.data.s3server import LocalS3Server, free_port
    from conftest import require_loopback

    require_loopback()
    server = LocalS3Server(port=free_port())
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id="k", aws_secret_access_key="s",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    try:
        client.list_buckets()
    except Exception as exn:  # noqa: BLE001 - the real error of an unreachable endpoint
        assert is_transient(exn)
    assert not is_transient(FileNotFoundError("no such key"))
    calls = []

    def list_buckets():
        # the storage comes back for the third call: two failures whatever the machine's load
        # (a timer raced the first call's slow start on a loaded CI machine)
        if len(calls) == 2:
            server.start()
        calls.append([time.monotonic(), None])
        try:
            return client.list_buckets()["Buckets"]
        finally:
            calls[-1][1] = time.monotonic()

    try:
        assert with_backoff(list_buckets, "list buckets", attempts=8, backoff_s=0.2) == []
    finally:
        server.stop()
    waits = [nxt[0] - prev[1] for prev, nxt in zip(calls, calls[1:])]
    # the waits between calls double from 0.2 s (load can only lengthen a sleep, never shorten it)
    assert len(calls) == 3
    assert all(w >= 0.95 * 0.2 * 2 ** i for i, w in enumerate(waits)), waits
    with pytest.raises(FileNotFoundError):  # an answer is not retried
        with_backoff(lambda: calls.append(0) or open("/nonexistent/x"), "open", attempts=5)


# --------------------------------------------------------------------------- shared tiny parts

def _run_parts(root: Path, fmt: str = "keypoints", exports: int = 3, siclip: bool = True) -> dict:
    """Token shards (6 val samples of ``fmt``), a tokenizer, ``exports`` finetune exports of one
    architecture with different weights, a corrupt export and (``siclip``) a SiCLIP evaluator."""
    from madis.metrics.siclip import SiCLIP, SiCLIPConfig

    write_random_shards(root / "motion", fmt, texts=WORDS)
    stats = read_manifest(str(root / "motion"))["stats"]
    torch.manual_seed(0)
    tok = DecoupledTokenizer(TokenizerConfig(width=16, code_dim=8, codebook_sizes=(8, 16, 16),
                                             depth=1), fmt, stats["mean"], stats["std"])
    for cb in tok.codebooks:
        cb.copy_(torch.randn_like(cb))
    tok.eval().save_pretrained(str(root / "tokenizer"))
    write_token_shards(tok, str(root / "motion"), str(root / "tokens"),
                       extra={"tokenizer_export": {"url": str(root / "tokenizer"), "step": 0}})
    task = MDLMTask.from_shards("finetune", model_config(load_tree("cpu-tiny", TINY_MODEL),
                                                         "finetune"), [str(root / "tokens")])
    paths = []
    for seed in range(exports):
        torch.manual_seed(seed)
        task.export(task.build_model(), str(root / f"export{seed}"))
        paths.append(root / f"export{seed}")
    shutil.copytree(paths[0], root / "corrupt")
    (root / "corrupt" / "model.safetensors").write_bytes(b"this is not a safetensors file")
    parts = {"root": root, "exports": paths, "corrupt": root / "corrupt", "task": task.describe()}
    if siclip:
        torch.manual_seed(0)
        model = SiCLIP(SiCLIPConfig(width=16, embed_dim=16, num_heads=2, motion_layers=1,
                                    text_layers=1, max_positions=32, max_text_bytes=32),
                       fmt, stats["mean"], stats["std"])
        model.save_pretrained(str(root / "siclip"))
        parts["siclip"] = str(root / "siclip")
    return parts


@pytest.fixture(scope="module")
def tiny_run_parts(tmp_path_factory):
    """:func:`_run_parts` in the keypoints format."""
    return _run_parts(tmp_path_factory.mktemp("fleet"))


def _wait(predicate, what, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _history_steps(run):
    doc = read_best(run)
    return [h["step"] for h in doc["history"]] if doc else []


def _scalars(event_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    return ({t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]},
            {t: [e.step for e in acc.Images(t)] for t in tags["images"]},
            {t: [e.value for e in acc.Scalars(t)] for t in tags["scalars"]})


def test_fleet_without_siclip_refuses_a_siclip_metric():
    from madis.fleet.fleet import EvalFleet, FleetError

    with pytest.raises(FleetError, match="no SiCLIP model is configured"):
        EvalFleet(FleetConfig(), "/tmp/run", siclip_url=None)


# --------------------------------------------------------------------------- real Ray

@pytest.mark.ray
def test_fleet_on_s3_evaluates_each_checkpoint_once_survives_corrupt_and_killed_actor(
        ray_local, s3_bucket, tiny_run_parts, tmp_path):
    import ray

    from madis.fleet.evaluation import CheckpointDecoder, checkpoint_metrics, load_validation_set
    from madis.fleet.fleet import EvalFleet

    parts = tiny_run_parts
    run = f"{s3_bucket}/runs/finetune"
    cfg = FleetConfig(actors=2, cpus_per_actor=1, poll_interval_s=0.2, metric="dtw_jpe_body",
                      mode="min", batch_size=1, render_samples=1, render_frames=2,
                      render_size=64, log_dir=str(tmp_path / "tb"), until_step=8,
                      stop_when_run_ends=False, storage_backoff_s=0.1)
    fleet = EvalFleet(cfg, run, siclip_url=parts["siclip"])
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fleet.run()), daemon=True)
    thread.start()

    def land(step, export):
        write_checkpoint(run, step, export, task=parts["task"], metrics={"loss": 1.0 / step})
        _wait(lambda: step in _history_steps(run), f"checkpoint {step} in best.json")

    land(2, parts["exports"][0])
    land(3, parts["corrupt"])
    land(4, parts["exports"][1])
    # checkpoints still being uploaded (no COMPLETE yet) are invisible to the fleet
    late = {step: write_checkpoint(run, step, parts["exports"][step % 2], task=parts["task"],
                                   complete=False) for step in (5, 7, 8)}
    write_checkpoint(run, 6, parts["exports"][2], task=parts["task"])
    status = _wait(lambda: (lambda s: s if s["step"] == 6 and s["in_flight"] else None)(
        fleet.status()), "checkpoint 6 in flight")
    victim = next(iter(status["in_flight"]))
    ray.kill(fleet.actors[victim])  # no_restart: the fleet must replace it itself
    for step in (7, 8):  # both land while the fleet is busy with 6: 7 is superseded by 8
        write_complete(late[step], step)
    assert fleet.status()["step"] == 6
    thread.join(timeout=180)
    assert not thread.is_alive()
    summary = out[0]
    assert (summary.evaluated, summary.failed, summary.superseded) == ([2, 4, 6, 8], [3], [7])
    assert summary.actors_replaced == 1 and summary.batches_redone >= 1
    assert summary.stop_reason.startswith("reached step 8")

    doc = read_best(run)
    hist = {h["step"]: h for h in doc["history"]}
    assert sorted(hist) == [2, 3, 4, 6, 8]  # each once; the half-written 5 never, 7 superseded
    assert hist[3]["status"] == "failed" and "cannot load checkpoint export" in hist[3]["error"]
    assert hist[3]["value"] is None and hist[3]["metrics"] == {}
    ok = {s: h["value"] for s, h in hist.items() if h["status"] == "ok"}
    best_step = min(sorted(ok), key=lambda s: ok[s])
    assert doc["metric"] == "dtw_jpe_body" and doc["mode"] == "min"
    assert doc["best"]["step"] == best_step and doc["best"]["value"] == ok[best_step]
    assert doc["best"]["export_url"] == f"{run}/checkpoint_{best_step:08d}/export"
    for h in hist.values():
        if h["status"] == "ok":
            assert h["metrics"]["num_samples"] == 6
            assert {"dtw_jpe_hands", "sibleu4_body", "siclip_s2t_R@1", "siclip_t2s_R@5"} <= set(
                h["metrics"])

    # the same decoding in this process gives the fleet's numbers for the checkpoint whose
    # batch was redone after the kill (batch i always decodes with seed + i)
    val = load_validation_set([str(parts["root"] / "tokens")], "val")
    decoder = CheckpointDecoder()
    decoded = {}
    for i, keys in enumerate(val.batches(cfg.batch_size, cfg.actors)):
        refs = [val.references[k] for k in keys]
        for d in decoder.decode(str(parts["exports"][2]), keys, [r.text for r in refs],
                                [r.lang for r in refs], seed=i):
            decoded[d.key] = d
    from madis.metrics.siclip import SiCLIP

    mine, _ = checkpoint_metrics(decoded, val, SiCLIP.from_pretrained(parts["siclip"]))
    for k in ("dtw_jpe_body", "dtw_jpe_hands", "sibleu4_body", "siclip_s2t_R@1", "gen_positions"):
        assert hist[6]["metrics"][k] == pytest.approx(mine[k], rel=1e-5, abs=1e-6), k

    # TensorBoard: validation curves under the checkpoints' steps, the failure, the renders
    local = tmp_path / "events"
    fs, path = fsspec.core.url_to_fs(f"{run}/tensorboard/fleet")
    fs.get(path, str(local), recursive=True)
    steps, images, values = _scalars(local)
    for tag in ("eval/utc/dtw_jpe_body", "eval/utc/dtw_jpe_hands", "eval/utc/sibleu4_body",
                "eval/utc/siclip_s2t_R@1", "eval/utc/siclip_t2s_R@10", "fleet/lag_s",
                "fleet/eval_s", "fleet/decode_s", "eval/utc/run_share", "eval/utc/distinct",
                "eval/utc/length_ratio", "eval/utc/cross_distance", "eval/utc/signing_hands"):
        assert steps[tag] == [2, 4, 6, 8], tag
    assert steps["fleet/failed"] == [3]
    assert values["eval/utc/dtw_jpe_body"] == pytest.approx([ok[2], ok[4], ok[6], ok[8]])
    assert images["samples/utc/0"] == [2, 4, 6, 8]
    gates = images.get("gates/utc/0", [])  # an empty generation has no gates to plot
    first = val.spread(1)[0]
    assert set(gates) <= {2, 4, 6, 8} and (6 in gates) == (not decoded[first].empty)



@pytest.mark.ray
def test_eval_fleet_job_stops_when_the_run_ends_and_shares_the_step_axis(
        ray_local, tiny_run_parts, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from madis.train.checkpoints import write_report

    run = tmp_path / "storage" / "finetune"
    train_tb = SummaryWriter(str(run / "tensorboard"))  # what the training loop uploads
    for step in (1, 2):
        train_tb.add_scalar("train/loss", 1.0 / step, step)
    train_tb.close()
    write_checkpoint(str(run), 2, tiny_run_parts["exports"][1], task=tiny_run_parts["task"])
    write_report(str(run), {"step": 2})  # the training job has ended after checkpoint 2
    report = job_module("eval_fleet").main([
        "--storage", str(tmp_path / "storage"), "--actors", "1", "fleet.metric=dtw_jpe_body",
        "fleet.mode=min", "fleet.siclip=", "fleet.cpus_per_actor=1", "fleet.poll_interval_s=0.2",
        "fleet.render_samples=0", f"fleet.log_dir={tmp_path / 'tb'}", "fleet.batch_size=4"])
    assert report["evaluated"] == [2] and report["stop_reason"] == "the training run ended"
    assert report["best"]["step"] == 2 and report["run"] == str(run)
    metrics = read_best(str(run))["best"]["metrics"]
    assert "dtw_jpe_body" in metrics and not any(k.startswith("siclip") for k in metrics)

    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(run / "tensorboard"))  # what `tensorboard --logdir` loads
    mux.Reload()
    runs = mux.Runs()
    assert set(runs) == {".", "fleet"}
    assert [e.step for e in mux.Scalars(".", "train/loss")] == [1, 2]
    assert [e.step for e in mux.Scalars("fleet", "eval/utc/dtw_jpe_body")] == [2]


@pytest.mark.ray
def test_a_missing_smplx_model_is_a_failed_evaluation_not_a_crash(ray_local, tmp_path,
                                                                   monkeypatch):
    """SMPL-X checkpoints on a node without the licensed model: DTW-JPE cannot run, so each
    checkpoint is recorded as failed with the expected path, and the fleet goes on."""
    from madis.train.checkpoints import write_report

    parts = _run_parts(tmp_path / "parts", "smplx133", exports=1, siclip=False)
    missing = tmp_path / "no-smplx"
    monkeypatch.setenv("MADIS_SMPLX_DIR", str(missing))
    run = tmp_path / "storage" / "finetune"
    for step in (1, 2):
        write_checkpoint(str(run), step, parts["exports"][0], task=parts["task"])
    write_report(str(run), {"step": 2})
    report = job_module("eval_fleet").main([
        "--storage", str(tmp_path / "storage"), "--actors", "1", "fleet.metric=dtw_jpe_body",
        "fleet.mode=min", "fleet.siclip=", "fleet.cpus_per_actor=1", "fleet.poll_interval_s=0.2",
        "fleet.render_samples=0", f"fleet.log_dir={tmp_path / 'tb'}", "fleet.batch_size=6"])
    assert report["failed"] == [2] and report["evaluated"] == [] and report["superseded"] == [1]
    assert report["stop_reason"] == "the training run ended" and report["best"] is None
    (entry,) = read_best(str(run))["history"]
    assert entry["status"] == "failed" and str(missing / "SMPLX_NEUTRAL.npz") in entry["error"]
