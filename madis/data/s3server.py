"""A local S3-compatible server on 127.0.0.1 for the embedded default, tests and benchmarks.

It is moto's server mode (``moto_server``), a real HTTP S3 endpoint: every client in MaDiS
(boto3, s3fs, pyarrow, the shard reader) talks to it exactly as it would to AWS or MinIO, through
the standard ``AWS_ENDPOINT_URL`` setting. Data lives in the server process's memory, so it is
for one session: the embedded default re-uploads the shards when it starts it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

#: Credentials the local server accepts (moto accepts any; these are the conventional test ones).
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "madis-local",
    "AWS_SECRET_ACCESS_KEY": "madis-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class LocalS3Server:
    """``moto_server`` bound to ``host:port`` (loopback by default), started as a child process.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``env`` holds the settings a
    client needs (endpoint and credentials); :meth:`apply_env` puts them into ``os.environ``.

    Raises:
        RuntimeError: ``moto_server`` is not installed or did not answer within ``timeout_s``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    timeout_s: float = 30.0
    log_path: Path | None = None
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, **LOCAL_CREDENTIALS}

    def apply_env(self) -> None:
        os.environ.update(self.env)

    def start(self) -> "LocalS3Server":
        # this interpreter's own moto first: another one on PATH may be a different version
        exe = str(Path(sys.executable).with_name("moto_server"))
        if not Path(exe).exists():
            exe = shutil.which("moto_server") or exe
        if not Path(exe).exists():
            raise RuntimeError(
                "moto_server not found: install the S3 server with `pip install 'moto[server]'`"
            )
        if not self.port:
            self.port = free_port(self.host)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [exe, "-H", self.host, "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with code {self._proc.returncode}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).read()
                return self
            except urllib.error.HTTPError:
                return self  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} in {self.timeout_s}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def __enter__(self) -> "LocalS3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
