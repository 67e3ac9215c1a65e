"""``madis up`` / ``madis down``: the whole embedded default chain, as README command (1) runs it.

Slow (minutes): every job is cut to a few steps with ``--quick``; what is checked is the chain
(real ``ray start``, ``ray job submit`` of every job, Serve answering), not model quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, require_loopback

MADIS = str(Path(sys.executable).with_name("madis"))


@pytest.mark.slow
def test_madis_up_runs_the_chain_then_down_stops_it(tmp_path):
    require_loopback()
    env = {**os.environ, "MADIS_HOME": str(tmp_path / "home"),
           "MADIS_RAY_TEMP": tempfile.mkdtemp(prefix="mr-", dir="/tmp")}
    storage = tmp_path / "storage"
    try:
        out = subprocess.run([MADIS, "up", "--quick", "6", "--storage", str(storage)], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        assert "[9/9] Ray Serve on the best checkpoint" in out.stdout
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
