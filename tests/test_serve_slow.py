"""Slow service checks (``-m slow``): ``ray_jobs/serve.py`` submitted with ``ray job submit`` to a
``ray start`` cluster keeps serving after the job ends, and replicas scale up under load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, require_loopback, stop_process
from madis.serve.config import ServeConfig
from madis.serve.load import run_load
from madis.serve.testing import write_best, write_run
from madis.stack import ensure_ray_token, ray_auth_env
from test_serve import free_port, get_json, post

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except urllib.error.HTTPError:  # it answers (401 without the token: authentication is on)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def ray_head(tmp_path):
    """``ray start --head --block`` on loopback ports, in a private temp dir; stopped by
    signalling the one process this fixture started (never ``ray stop``: it stops every
    cluster on the machine)."""
    require_loopback()
    temp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths are limited
    env = {**os.environ, **ray_auth_env(ensure_ray_token(tmp_path / "ray_auth_token")),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dash = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         f"--port={free_port()}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "ray.log", "w"), stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{dash}/api/version", 120)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_process(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_job_submitted_app_keeps_serving_after_the_job_ends(ray_head, tmp_path):
    address, env = ray_head
    exports = write_run(tmp_path, steps=(10,))
    port = free_port()
    for _ in range(12):  # the dashboard answers before the head's job agent has registered
        submit = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address,
             "--working-dir", str(REPO), "--", "python", "ray_jobs/serve.py",
             "--checkpoint", str(tmp_path / "finetune" / "checkpoint_00000010"), "--port",
             str(port), "serve.replica_cpus=0.5", "serve.max_replicas=1"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        if "No available agent" not in submit.stdout + submit.stderr:
            break
        time.sleep(5)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout.lower()
    url = f"http://127.0.0.1:{port}/"
    # the job (its driver) has exited; the detached application still answers
    jobs = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "list", "--address",
                           address], env=env, capture_output=True, text=True, timeout=120)
    assert "SUCCEEDED" in jobs.stdout and "RUNNING" not in jobs.stdout
    health = get_json(url + "healthz")
    assert health == {"status": "ok", "checkpoint_step": 10, "export_url": exports[10]}
    status, _, raw = post(url, json.dumps({"text": "HELLO", "lang": "ase"}).encode())
    assert status == 200 and json.loads(raw)["frames"] == 48
    assert get_json(url + "info")["checkpoint"]["source"] == "given"


def test_replicas_scale_up_under_queue_and_keep_answering(ray_local, tmp_path):
    from ray import serve

    from madis.serve.app import DEPLOYMENT, deploy

    write_run(tmp_path, steps=(10,))
    write_best(tmp_path / "finetune", 10, 1.0)
    cfg = ServeConfig(port=free_port(), app_name="scale", min_replicas=1, max_replicas=2,
                      replica_cpus=0.5, target_ongoing_requests=2, upscale_delay_s=0.0,
                      max_batch_size=4, max_ongoing_requests=8)
    url = deploy(cfg, str(tmp_path / "finetune"))

    def running() -> int:
        dep = serve.status().applications[cfg.app_name].deployments[DEPLOYMENT]
        return dep.replica_states.get("RUNNING", 0)

    assert running() == 1
    stop, reports = threading.Event(), []

    def load():
        while not stop.is_set():
            reports.append(run_load(url + "generate", [{"text": "HELLO", "lang": "ase"}],
                                    total=64, concurrency=32))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        deadline = time.monotonic() + 120  # the handle reports queue lengths every 10 s
        while running() < 2:
            assert time.monotonic() < deadline, "no second replica under 32 queued requests"
            time.sleep(1)
    finally:
        stop.set()
        worker.join(300)
        serve.delete(cfg.app_name)
    assert reports and all(r.failed == 0 for r in reports), [r.summary() for r in reports]
