"""TensorBoard events that reach storage while a run goes. No Ray here.

A ``SummaryWriter`` writes into a local directory (appending to its event files); storage has
no append, so :class:`EventMirror` copies every event file whose size changed to the same
relative path under a storage URL, each object replaced whole (one ``PUT`` on S3, a rename on a
disk: :func:`madis.fleet.registry.write_bytes_atomic`). The new object extends the old one, so a
TensorBoard reading the URL (``tensorboard --logdir s3://...``) goes on from the offset it had
reached. :class:`LiveEvents` does that every ``every_s`` seconds from the training loop, the
upload on a background thread, so the dashboards follow a run within seconds instead of at its
checkpoints. The eval fleet's dashboard (``madis.fleet.dashboard``) mirrors its events the same
way after every evaluation.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

#: a run's TensorBoard directory: ``{storage_path}/{run_name}/tensorboard``
TENSORBOARD_DIR = "tensorboard"


class EventMirror:
    """Copies a local event directory to ``remote_url``, changed files only.

    Args:
        local_dir: the writer's directory (walked recursively).
        remote_url: local directory, ``file://`` or ``s3://...`` (endpoint from
            ``AWS_ENDPOINT_URL``).
    """

    def __init__(self, local_dir: str | Path, remote_url: str) -> None:
        self.local_dir = Path(local_dir)
        self.remote_url = str(remote_url).rstrip("/")
        self._published: dict[str, int] = {}

    def snapshot(self) -> list[tuple[str, bytes]]:
        """``(relative path, bytes)`` of every file whose size changed since it was last
        uploaded. Call it right after the writer's ``flush()``, on the thread that writes, so
        every file holds whole records."""
        changed = []
        for path in sorted(self.local_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(self.local_dir).as_posix()
            if self._published.get(rel) != path.stat().st_size:
                changed.append((rel, path.read_bytes()))
        return changed

    def upload(self, files: list[tuple[str, bytes]],
               retry: Callable[[Callable[[], None], str], None] | None = None) -> list[str]:
        """Write ``files`` (from :meth:`snapshot`) under ``remote_url``; returns their URLs.

        Args:
            retry: ``retry(fn, what)`` runs ``fn`` with retries (the fleet's backoff); without
                it one attempt each.
        Raises:
            OSError: the storage failed (the files stay due for the next upload).
        """
        from madis.fleet.registry import write_bytes_atomic

        done = []
        for rel, data in files:
            url = f"{self.remote_url}/{rel}"
            if retry is None:
                write_bytes_atomic(url, data)
            else:
                retry(lambda: write_bytes_atomic(url, data), f"upload {url}")
            self._published[rel] = len(data)
            done.append(url)
        return done


class LiveEvents:
    """A writer's events mirrored to storage at most every ``every_s`` seconds, uploads on a
    background thread (one at a time) so that training never waits for storage.

    Args:
        writer: the ``SummaryWriter`` writing into ``mirror.local_dir``.
        mirror: where its files go.
        every_s: least time between two uploads; 0 uploads at every :meth:`tick`.
    """

    def __init__(self, writer, mirror: EventMirror, every_s: float) -> None:
        self.writer, self.mirror, self.every_s = writer, mirror, every_s
        self._last = float("-inf")
        self._thread: threading.Thread | None = None
        self.uploads = 0

    def tick(self) -> bool:
        """Start an upload of what changed when ``every_s`` passed since the last one and none
        is running; returns whether one started."""
        if self._thread is not None and self._thread.is_alive():
            return False
        if time.monotonic() - self._last < self.every_s:
            return False
        self._last = time.monotonic()
        self.writer.flush()
        files = self.mirror.snapshot()
        if not files:
            return False
        self._thread = threading.Thread(target=self._upload, args=(files,), daemon=True,
                                        name="madis-events")
        self._thread.start()
        return True

    def _upload(self, files) -> None:
        try:
            self.mirror.upload(files)
            self.uploads += 1
        except OSError as exn:  # the next tick tries again: dashboards may lag, training not
            log.warning("TensorBoard events not uploaded this time: %s", exn)

    def sync(self) -> None:
        """Upload everything written so far and wait for it (at checkpoints and at the end).

        Raises:
            OSError: the storage failed.
        """
        if self._thread is not None:
            self._thread.join()
        self.writer.flush()
        self.mirror.upload(self.mirror.snapshot())
        self._last = time.monotonic()
