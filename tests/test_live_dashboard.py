"""Live dashboards: the training loop's TensorBoard events reach S3 while the run goes, and
``tensorboard --logdir s3://...`` (TensorBoard's own S3 layer, no TensorFlow) follows them.

The run is held at a known step (its loss waits for a file) instead of timed, so the test
says the same on a fast and on a loaded machine."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from madis.train import TrainConfig, list_checkpoints
from madis.train.events import EventMirror, LiveEvents
from madis.train.testing import RegressionTask

STEPS = 10
#: the run waits at this batch: steps 1..PAUSE are trained and logged, no checkpoint yet
PAUSE = 5
#: how long the held run may take to show up: Ray starting its worker group on a loaded
#: machine, then TensorBoard's reload (1 s); the run waits at the pause meanwhile
SHOW_LIMIT_S = 1200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _points(port: int, tag: str = "train/loss") -> int:
    """Points of ``tag`` of the run ``.`` that TensorBoard serves (0 while it has none)."""
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=.&tag={tag}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return len(json.loads(r.read()))
    except (OSError, ValueError):
        return 0


def _wait_for(cond, what: str, limit_s: float = SHOW_LIMIT_S):
    deadline = time.monotonic() + limit_s
    while not (got := cond()):
        assert time.monotonic() < deadline, f"{what}: not within {limit_s} s"
        time.sleep(0.5)
    return got


def test_mirror_uploads_changed_event_files_whole(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "local"))
    mirror = EventMirror(tmp_path / "local", str(tmp_path / "remote"))
    writer.add_scalar("a", 1.0, 0)
    writer.flush()
    first = mirror.upload(mirror.snapshot())
    assert len(first) == 1 and mirror.snapshot() == []  # nothing changed since
    writer.add_scalar("a", 2.0, 1)
    writer.flush()
    again = mirror.snapshot()
    assert [rel for rel, _ in again] == [first[0].rsplit("/", 1)[-1]]
    mirror.upload(again)
    local = next((tmp_path / "local").iterdir()).read_bytes()
    assert (tmp_path / "remote" / again[0][0]).read_bytes() == local


def test_live_events_upload_at_most_every_interval_and_all_at_sync(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "local"))
    live = LiveEvents(writer, EventMirror(tmp_path / "local", str(tmp_path / "remote")),
                      every_s=3600)
    writer.add_scalar("a", 1.0, 0)
    assert live.tick()  # the first tick uploads
    live.sync()
    writer.add_scalar("a", 2.0, 1)
    assert not live.tick()  # within the interval: nothing
    writer.flush()
    remote = next((tmp_path / "remote").iterdir())
    assert remote.stat().st_size < next((tmp_path / "local").iterdir()).stat().st_size
    live.sync()  # a checkpoint or the end: everything, waited for
    assert remote.read_bytes() == next((tmp_path / "local").iterdir()).read_bytes()


@pytest.mark.ray
@pytest.mark.timeout(2 * SHOW_LIMIT_S)
def test_tensorboard_follows_a_run_on_s3_while_it_trains(ray_local, s3_bucket, tmp_path):
    from madis.train import fit

    run = f"{s3_bucket}/runs/live"
    gate = tmp_path / "go-on"
    port = _free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir",
                           f"{run}/tensorboard", "--host", "127.0.0.1", "--port", str(port),
                           "--reload_interval", "1"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    cfg = TrainConfig(run_name="live", storage_path=f"{s3_bucket}/runs", workers=1,
                      zero_stage=0, batch_size=4, steps=STEPS, log_every=1, checkpoint_every=0,
                      tensorboard_sync_s=0.0, log_dir=str(tmp_path / "tb"), progress=False,
                      max_failures=0)
    done: dict = {}
    task = RegressionTask(batches_per_epoch=STEPS, pause_at=(PAUSE, str(gate)))

    def train():
        try:
            done["result"] = fit(task, cfg)
        except BaseException as exn:  # surfaced by the assertions below
            done["error"] = exn

    training = threading.Thread(target=train)
    training.start()
    try:
        # held at step PAUSE + 1: TensorBoard already shows the curve; storage has no checkpoint
        _wait_for(lambda: _points(port) or not training.is_alive(),
                  "TensorBoard showing the held run's curve")
        assert training.is_alive(), done  # held at the pause, not ended or failed
        shown = _points(port)
        assert 1 <= shown <= PAUSE and list_checkpoints(run) == []
        gate.touch()
        training.join()
        assert "error" not in done, done.get("error")
        assert done["result"].checkpoint.step == STEPS
        _wait_for(lambda: _points(port) == STEPS, "TensorBoard showing the whole run")
    finally:
        gate.touch()  # a failed assertion must not leave the run waiting
        training.join()
        tb.terminate()
        tb.wait(30)
