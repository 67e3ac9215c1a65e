"""Shared fixtures: a real S3-compatible server and a real local Ray cluster, both on loopback.

Run the suite through ``scripts/test.sh`` (README command 2): it enters a network namespace that
holds only ``lo``, because Ray listens on every interface of the machine. Fixtures that start
servers refuse to run outside such a namespace unless ``MADIS_NO_NETNS=1`` says the risk is known.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def job_module(name: str):
    """``ray_jobs/{name}.py`` loaded as a module (its ``main(argv)`` runs the job in this process,
    on the ``ray_local`` cluster when one is up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "ray_jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stop_process(proc, timeout_s: float = 60) -> None:
    """SIGTERM one process this test started (e.g. `ray start --block`, which then stops its
    own node), SIGKILL after ``timeout_s``; never `ray stop`, which ends every cluster."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _loopback_only() -> bool:
    # if_nameindex() asks the kernel about this process's network namespace; /sys/class/net
    # still lists the host's interfaces after `unshare -n` because sysfs is not remounted.
    import socket

    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


def require_loopback() -> None:
    if not _loopback_only() and os.environ.get("MADIS_NO_NETNS") != "1":
        pytest.fail(
            "this test starts servers; run it through scripts/test.sh (a loopback-only network "
            "namespace) or set MADIS_NO_NETNS=1"
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real moto S3 server on 127.0.0.1; its endpoint and credentials are put in os.environ."""
    require_loopback()
    from madis.data.s3server import LocalS3Server

    log = tmp_path_factory.mktemp("s3") / "moto.log"
    server = LocalS3Server(log_path=log).start()
    old = {k: os.environ.get(k) for k in server.env}
    server.apply_env()
    yield server
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the local server; returns its URL ``s3://name``."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (4 logical CPUs on this 2-core machine, no dashboard)."""
    require_loopback()
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # address="local": never attach to a `ray start` cluster that happens to run on this machine
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, above all on a shared 2-core machine; a module opts
    in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def smplx_model_dir(tmp_path_factory):
    """A directory holding a made-up SMPL-X-shaped ``SMPLX_NEUTRAL.npz`` (see madis.motion.testing)."""
    from madis.motion.testing import write_fake_smplx_model

    d = tmp_path_factory.mktemp("smplx")
    write_fake_smplx_model(d)
    return d
