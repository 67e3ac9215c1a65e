"""``madis up`` / ``madis down``: the whole embedded default chain, as README command (1) runs it.

The chain is slow (minutes): every job is cut to a few steps with ``--quick``; what is checked is
the chain (real ``ray start``, ``ray job submit`` of every job, Serve answering), not model
quality, on a machine as fresh as a new user's (an empty HOME: no ``~/.ray/auth_token``). The
cluster token's own rules are checked fast against a real ``ray start --head``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, require_loopback, stop_process
from madis.stack import ensure_ray_token, ray_auth_env, ray_running

MADIS = str(Path(sys.executable).with_name("madis"))
RAY = str(Path(sys.executable).with_name("ray"))


def test_ray_token_is_made_private_once_and_kept(tmp_path):
    path = ensure_ray_token(tmp_path / "state" / "ray_auth_token")
    token = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a running cluster holds the token: a second call keeps it, and makes it private again
    path.chmod(0o644)
    assert ensure_ray_token(path).read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_ray_token(tmp_path / "other").read_text() != token
    (tmp_path / "empty").write_text("")
    with pytest.raises(SystemExit, match="empty"):
        ensure_ray_token(tmp_path / "empty")



def test_madis_token_makes_the_checkout_token_and_prints_its_path_never_the_token(tmp_path):
    checkout = tmp_path / "checkout"  # a checkout as find_repo knows one
    (checkout / "ray_jobs").mkdir(parents=True)
    (checkout / "ray_jobs" / "pretrain.py").touch()
    (checkout / "configs").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN_PATH"}
    out = subprocess.run([MADIS, "token"], cwd=checkout, env={**env, "HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path = (checkout / ".madis" / "ray_auth_token").resolve()
    token = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and token not in out.stdout
    assert f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={path}" in out.stdout
    again = subprocess.run([MADIS, "token"], cwd=checkout / "configs", env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and path.read_text() == token  # kept, found from a subfolder

@pytest.mark.ray
def test_a_fresh_home_starts_ray_with_the_checkout_token_and_refuses_others(tmp_path):
    """``ray start --head`` from an empty HOME with token authentication on (fails without a
    token file: "no authentication token was found"), the checkout's token opens it, another
    token gets a message instead of a failed `ray start` on busy ports."""
    require_loopback()
    home = tmp_path / "home"
    home.mkdir()
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths
    base = {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}, "HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env = {**base, **ray_auth_env(ensure_ray_token(tmp_path / "ray_auth_token"))}
    proc = subprocess.Popen([RAY, "start", "--head", "--block", "--num-cpus=1",
                             "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
                             f"--temp-dir={temp}", "--disable-usage-stats"], env=env,
                            stdout=open(tmp_path / "ray.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ray_running(env):
            assert proc.poll() is None, (tmp_path / "ray.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the dashboard never answered"
            time.sleep(2)
        assert not (home / ".ray").exists()  # nothing relies on ~/.ray/auth_token
        other = {**base, **ray_auth_env(ensure_ray_token(tmp_path / "other_token"))}
        with pytest.raises(SystemExit, match="refuses this checkout's token"):
            ray_running(other)
    finally:
        stop_process(proc)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two `madis up` runs; 16 min measured on a shared, loaded machine
def test_madis_up_runs_the_chain_then_down_stops_it(tmp_path):
    require_loopback()
    home = tmp_path / "empty-home"  # a new user's machine: no ~/.ray, no caches
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}, "HOME": str(home),
           "MADIS_HOME": str(tmp_path / "state"),
           "MADIS_RAY_TEMP": tempfile.mkdtemp(prefix="mr-", dir="/tmp")}
    storage = tmp_path / "storage"
    try:
        out = subprocess.run([MADIS, "up", "--quick", "6", "--storage", str(storage)], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        assert "[9/9] Ray Serve on the best checkpoint" in out.stdout
        token = tmp_path / "state" / "ray_auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert token.read_text() not in out.stdout + out.stderr
        assert not (home / ".ray" / "auth_token").exists()
        # every command it prints works as printed (here no `ip netns exec`: already isolated)
        jobs = re.search(r"^\s+(env .* job list --address \S+)$", out.stdout, re.M).group(1)
        listed = subprocess.run(shlex.split(jobs), capture_output=True, text=True, timeout=120,
                                env={"PATH": os.environ["PATH"], "HOME": str(home)})
        assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout, listed.stderr[-2000:]
        best_cmd = re.search(r"best checkpoint (\S+ best .*)$", out.stdout, re.M).group(1)
        assert subprocess.run(shlex.split(best_cmd), cwd=tmp_path, capture_output=True,
                              timeout=120).returncode == 0
        for run in ("tokenizer", "siclip", "pretrain", "finetune"):
            assert (storage / run / "report.json").exists(), run
        best = json.loads((storage / "finetune" / "best.json").read_text())
        steps = [h["step"] for h in best["history"]]  # 3 may be skipped as superseded
        assert steps[-1] == 6 and set(steps) <= {3, 6} and best["best"]["step"] in steps
        with urllib.request.urlopen("http://127.0.0.1:8000/info", timeout=30) as r:
            assert json.loads(r.read())["checkpoint"]["step"] == best["best"]["step"]
        # a second `up` reuses every finished run: no job trains again
        again = subprocess.run([MADIS, "up", "--quick", "6", "--storage", str(storage)], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=1800)
        assert again.returncode == 0, again.stdout[-4000:]
        assert "it/s" not in again.stdout
    finally:
        down = subprocess.run([MADIS, "down"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    assert "Ray cluster stopped" in down.stdout
    import psutil

    left = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    assert not [c for c in left if env["MADIS_RAY_TEMP"] in c or "ray.util.client.server" in c]
    with pytest.raises(OSError):
        urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=5)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the whole chain; a shared machine may take half an hour
def test_madis_up_with_an_ablation_profile_ranks_and_serves_its_own_run(tmp_path):
    """``--config configs/ablations/t5-simple-avg.yaml`` fine-tunes into
    ``t5-simple-avg-finetune``; the fleet ranks that run and Serve serves its best checkpoint."""
    require_loopback()
    env = {**os.environ, "MADIS_HOME": str(tmp_path / "home"),
           "MADIS_RAY_TEMP": tempfile.mkdtemp(prefix="mr-", dir="/tmp")}
    storage = tmp_path / "storage"
    try:
        out = subprocess.run([MADIS, "up", "--quick", "4", "--config",
                              "configs/ablations/t5-simple-avg.yaml", "--storage", str(storage)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        run = storage / "t5-simple-avg-finetune"
        assert (run / "report.json").exists() and not (storage / "finetune").exists()
        best = json.loads((run / "best.json").read_text())["best"]
        with urllib.request.urlopen("http://127.0.0.1:8000/info", timeout=30) as r:
            served = json.loads(r.read())["checkpoint"]
        assert served["export_url"] == best["export_url"] and served["step"] == best["step"]
        assert served["export_url"].startswith(f"{run}/checkpoint_")
    finally:
        down = subprocess.run([MADIS, "down"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    assert down.returncode == 0, down.stderr
