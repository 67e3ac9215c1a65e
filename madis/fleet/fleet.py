"""The eval fleet: Ray actors that validate every new checkpoint of a training run, beside it.

One coordinator (the job's driver, :meth:`EvalFleet.run`) polls the run's storage; ``actors``
Ray actors (:class:`~madis.fleet.evaluation.CheckpointDecoder`) decode the validation texts.

Which checkpoints (the policy). Only complete checkpoints count (``COMPLETE`` marker, see
:mod:`madis.train.checkpoints`); a directory still being written is invisible. At each poll the
fleet takes the complete checkpoints newer than the newest one it has recorded in ``best.json``
and evaluates the newest of them; older ones that appeared meanwhile are superseded: skipped and
logged, never evaluated later. So when the fleet keeps up (evaluating a checkpoint takes less
than the time between two checkpoints) every checkpoint is evaluated exactly once, and when it
falls behind it stays on the newest instead of queueing. A restarted fleet resumes from the
history in ``best.json`` and never evaluates a recorded checkpoint twice.

One checkpoint at a time, all actors on it: the validation set is cut into batches of
``batch_size`` texts per sampler, handed to whichever actor is free (each loads the checkpoint
once). The coordinator gathers the decoded motion, computes the metrics
(:func:`~madis.fleet.evaluation.checkpoint_metrics`), writes TensorBoard
(:class:`~madis.fleet.dashboard.Dashboard`) and then records the result in ``best.json``
(:mod:`madis.fleet.registry`).

Failures. A checkpoint whose export cannot be loaded (corrupt or missing files, removed by the
run's ``keep_checkpoints`` meanwhile) or whose decoding raises is recorded as ``failed`` with the
error and skipped. An actor that dies (``ray.kill``, a crashed process, a lost node) is replaced
by a new one and its batch is redone once the new actor runs, which may wait for a node (an
autoscaler booting one; ``start_timeout_s``, 0 = for ever, as for the first actors); after
``max_actor_failures`` deaths on one checkpoint it is recorded as failed. An actor silent for
``batch_timeout_s`` on a batch it runs is killed and replaced. Metrics that cannot be computed
on this node (e.g. DTW-JPE of SMPL-X data without the licensed model) fail the checkpoint, not
the fleet. Storage
reads and writes are retried with exponential backoff. The fleet only reads checkpoints; it
writes ``best.json`` and ``tensorboard/fleet/`` and nothing else, so it cannot disturb training.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import fsspec

from madis.fleet.config import FleetConfig
from madis.fleet.dashboard import Dashboard
from madis.fleet.evaluation import (
    CheckpointDecoder, CheckpointLoadError, RenderSpec, ValidationSet, checkpoint_metrics,
    load_validation_set,
)
from madis.fleet.registry import evaluated_steps, history_entry, read_best, record, update_best
from madis.fleet.retry import is_transient, with_backoff
from madis.train.checkpoints import (
    COMPLETE, STOPPED, CheckpointInfo, list_checkpoints, read_metadata,
)

log = logging.getLogger(__name__)

#: files a training job writes into its run directory when it ends
RUN_END_FILES = ("report.json", STOPPED)


class FleetError(RuntimeError):
    """The fleet cannot start: no Ray resources for its actors, a SiCLIP model that does not
    load, or a ranking metric that cannot be computed."""


@dataclass
class _Batch:
    sampler: str
    index: int
    keys: list[str]
    attempts: int = 0


@dataclass
class FleetSummary:
    """What :meth:`EvalFleet.run` did.

    Attributes:
        evaluated: steps evaluated successfully, in order.
        failed: steps recorded as failed.
        superseded: steps skipped because a newer checkpoint had landed.
        actors_replaced: dead or silent actors replaced.
        batches_redone: batches decoded again after their actor died.
        stop_reason: why the loop ended.
        best: ``best.json``'s ``best`` at the end.
    """

    evaluated: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)
    actors_replaced: int = 0
    batches_redone: int = 0
    stop_reason: str = ""
    best: dict | None = None


def _mtime(url: str) -> float | None:
    """Modification time (epoch seconds) of a file / object, or None when it does not exist."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    value = info.get("mtime") or info.get("LastModified") or info.get("created")
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if value is not None else None


class EvalFleet:
    """Validates every new checkpoint of the run at ``run_url`` (see the module doc).

    Args:
        cfg: the ``fleet`` section.
        run_url: ``{storage_path}/{run_name}`` of the training run.
        siclip_url: SiCLIP export for R@k, or None (R@k skipped, said in the log).
        env: environment variables for the actors (S3 endpoint and credentials); default:
            this process's ``AWS_*`` settings.

    Raises:
        FleetError: ``cfg.metric`` needs SiCLIP but ``siclip_url`` is None.
    """

    def __init__(self, cfg: FleetConfig, run_url: str, *, siclip_url: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        from madis.train.loop import FORWARDED_ENV

        if cfg.needs_siclip and not siclip_url:
            raise FleetError(f"fleet.metric={cfg.metric} ranks by SiCLIP retrieval but no SiCLIP "
                             f"model is configured: train one (ray_jobs/train_siclip.py), set "
                             f"fleet.siclip=URL, or rank by e.g. fleet.metric=dtw_jpe_body "
                             f"fleet.mode=min")
        self.cfg = cfg
        self.run_url = run_url.rstrip("/")
        self.siclip_url = siclip_url
        self.env = env if env is not None else {k: os.environ[k] for k in FORWARDED_ENV
                                                if os.environ.get(k)}
        self.summary = FleetSummary()
        self.actors: list = []
        self._stop = threading.Event()
        #: set once :meth:`start` has the actors up (for callers running :meth:`run` in a thread)
        self.started = threading.Event()
        self._lock = threading.Lock()
        self._current: int | None = None
        self._in_flight: dict[int, tuple[str, int]] = {}
        self._val: dict[tuple[str, ...], ValidationSet] = {}
        self._siclip = None
        self._dashboard: Dashboard | None = None
        #: ``ready()`` refs of actors not started yet (waiting for a node) -> their index
        self._starting: dict[Any, int] = {}
        self._starting_since: float | None = None
        self._starting_logged = -1
        self._start_deaths = 0  # actors that died while starting, in a row
        self._doc: dict | None = None

    # -- public ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to end (from another thread); a checkpoint being evaluated is
        abandoned unrecorded, so a restarted fleet evaluates it again."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """``{"step": step being evaluated or None, "in_flight": {actor index: (sampler,
        batch index)}, "actors": n}``; safe to call from another thread."""
        with self._lock:
            return {"step": self._current, "in_flight": dict(self._in_flight),
                    "actors": len(self.actors)}

    def run(self) -> FleetSummary:
        """Start the actors, then evaluate checkpoints until a stop condition (``until_step``,
        ``idle_timeout_s``, ``stop_when_run_ends``, :meth:`stop`); actors are released at the end.

        Raises:
            FleetError: see :meth:`start`.
        """
        self.start()
        try:
            self._loop()
        finally:
            self.close()
        self.summary.best = (self._doc or {}).get("best")
        log.info("eval fleet stopped (%s): evaluated %s, failed %s, superseded %s, best %s",
                 self.summary.stop_reason, self.summary.evaluated, self.summary.failed,
                 self.summary.superseded, self.summary.best and self.summary.best["step"])
        return self.summary

    def start(self) -> None:
        """Load the SiCLIP model, read ``best.json``, open the dashboard, start the actors.

        Raises:
            FleetError: the SiCLIP model does not load, or the actors find no node within
                ``start_timeout_s`` (when set; otherwise they wait for one, e.g. while an
                autoscaler boots it, and the log says what they wait for).
        """
        import ray

        cfg = self.cfg
        if self.siclip_url:
            from madis.metrics.siclip import SiCLIP

            try:
                self._siclip = self._retry(lambda: SiCLIP.from_pretrained(self.siclip_url),
                                           f"load SiCLIP {self.siclip_url}")
            except (OSError, ValueError) as exn:
                raise FleetError(f"the SiCLIP model at {self.siclip_url} does not load: "
                                 f"{exn}") from exn
            log.info("SiCLIP R@k with %s", self.siclip_url)
        else:
            log.warning("no SiCLIP model configured (fleet.siclip): SiCLIP R@k is skipped; "
                        "DTW-JPE and SiBLEU only")
        doc = self._retry(lambda: read_best(self.run_url), f"read best.json of {self.run_url}")
        if doc is not None and (doc["metric"], doc["mode"]) != (cfg.metric, cfg.mode):
            log.warning("best.json ranked by %s (%s); re-ranking its history by %s (%s)",
                        doc["metric"], doc["mode"], cfg.metric, cfg.mode)
            doc = update_best(doc, None, cfg.metric, cfg.mode)
        self._doc = doc
        # one local directory per run URL: two runs of the same name must not share events
        digest = hashlib.sha1(self.run_url.encode()).hexdigest()[:8]
        local = os.path.join(cfg.log_dir, f"{self.run_url.rsplit('/', 1)[-1]}-{digest}")
        self._dashboard = Dashboard(self.run_url, local, cfg.storage_attempts,
                                    cfg.storage_backoff_s)
        if not ray.is_initialized():
            ray.init()
        self.actors = [self._new_actor() for _ in range(cfg.actors)]
        self._starting = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        try:
            while self._starting and not self._stop.is_set():
                self._wait_starting(5.0)
        except FleetError:
            self.close()
            raise
        log.info("eval fleet on %s: %d actors, metric %s (%s), samplers %s", self.run_url,
                 cfg.actors, cfg.metric, cfg.mode, cfg.samplers)
        self.started.set()

    def _wait_starting(self, timeout_s: float) -> list[int]:
        """Wait up to ``timeout_s`` for actors that are starting (``self._starting``: their
        ``ready()`` refs); returns the indices that became ready. An actor that died while
        starting (its node was lost) is replaced and waited for again.

        Raises:
            FleetError: an actor has waited longer than ``start_timeout_s`` (when set), or
                actors died while starting more than ``max_actor_failures`` times in a row
                (e.g. a constructor that fails).
        """
        import ray

        cfg = self.cfg
        if self._starting_since is None:
            self._starting_since, self._starting_logged = time.monotonic(), -1
        ready, _ = ray.wait(list(self._starting), num_returns=len(self._starting),
                            timeout=timeout_s)
        up = []
        for ref in ready:
            i = self._starting.pop(ref)
            try:
                ray.get(ref)
                up.append(i)
                self._start_deaths = 0
            except ray.exceptions.RayActorError as exn:  # e.g. its node was lost meanwhile
                self._start_deaths += 1
                if self._start_deaths > cfg.max_actor_failures:
                    raise FleetError(f"fleet actors died while starting {self._start_deaths} "
                                     f"times in a row; the last: {exn}") from exn
                self._replace_actor(i, f"died while starting ({type(exn).__name__})")
        if not self._starting:
            self._starting_since = None
            return up
        waited = time.monotonic() - self._starting_since
        wants = (f"{cfg.cpus_per_actor:g} CPU, {cfg.gpus_per_actor:g} GPU"
                 + "".join(f", {v:g} {k}" for k, v in cfg.resources_per_actor.items()))
        if cfg.start_timeout_s and waited > cfg.start_timeout_s:
            raise FleetError(f"{len(self._starting)} fleet actors ({wants} each) found no node "
                             f"in {cfg.start_timeout_s:g} s (fleet.start_timeout_s): the "
                             f"cluster lacks the resources (see `ray status`)")
        if int(waited // 60) != self._starting_logged:  # once a minute
            self._starting_logged = int(waited // 60)
            log.info("waiting for %d fleet actors (%s each) to start: %.0f s so far (no node "
                     "with these resources free yet? an autoscaler may be booting one)",
                     len(self._starting), wants, waited)
        return up

    def close(self) -> None:
        """Release the actors and close the dashboard."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self._dashboard is not None:
            self._dashboard.close()

    # -- the polling loop -----------------------------------------------------------------------
    def _retry(self, fn, what: str):
        return with_backoff(fn, what, attempts=self.cfg.storage_attempts,
                            backoff_s=self.cfg.storage_backoff_s)

    def _loop(self) -> None:
        self._last_news = time.monotonic()
        while not self._stop.is_set():
            try:
                reason = self._poll()
            except Exception as exn:
                if not is_transient(exn):
                    raise
                # an outage longer than the retries: keep polling; nothing was recorded, so the
                # checkpoint in hand is evaluated again once the storage answers
                log.error("storage of %s unreachable through every retry (%s: %s); polling on",
                          self.run_url, type(exn).__name__, exn)
                reason = ""
            if reason:
                self.summary.stop_reason = reason
                return
            if reason == "":
                self._stop.wait(self.cfg.poll_interval_s)
        self.summary.stop_reason = self.summary.stop_reason or "stop requested"

    def _poll(self) -> str | None:
        """One look at the run: evaluate the newest new checkpoint (None: poll again at once),
        or nothing to do ('': wait a poll interval), or a stop reason."""
        cfg = self.cfg
        newest_done = max(evaluated_steps(self._doc), default=-1)
        if cfg.until_step and newest_done >= cfg.until_step:
            return f"reached step {newest_done} >= until_step"
        ckpts = self._retry(lambda: list_checkpoints(self.run_url),
                            f"list checkpoints of {self.run_url}")
        pending = [c for c in ckpts if c.step > newest_done]
        if pending:
            for old in pending[:-1]:
                if old.step not in self.summary.superseded:
                    log.info("checkpoint %d superseded by %d before evaluation: skipped",
                             old.step, pending[-1].step)
                    self.summary.superseded.append(old.step)
            entry = self._evaluate(pending[-1])
            if entry is None:
                return "stop requested"
            self._doc = self._retry(lambda: record(self.run_url, entry, cfg.metric, cfg.mode),
                                    f"update best.json of {self.run_url}")
            (self.summary.evaluated if entry["status"] == "ok"
             else self.summary.failed).append(entry["step"])
            self._last_news = time.monotonic()
            return None
        if cfg.idle_timeout_s and time.monotonic() - self._last_news > cfg.idle_timeout_s:
            return f"no new checkpoint for {cfg.idle_timeout_s:g} s"
        if cfg.stop_when_run_ends and ckpts and self._run_ended(ckpts[-1]):
            return "the training run ended"
        return ""

    def _run_ended(self, newest: CheckpointInfo) -> bool:
        landed = self._retry(lambda: _mtime(f"{newest.url}/{COMPLETE}"), "stat COMPLETE")
        for name in RUN_END_FILES:
            ended = self._retry(lambda: _mtime(f"{self.run_url}/{name}"), f"stat {name}")
            if ended is not None and landed is not None and ended >= landed:
                return True
        return False

    # -- one checkpoint -------------------------------------------------------------------------
    def _validation_set(self, ckpt: CheckpointInfo) -> ValidationSet:
        shards = list(self.cfg.shards)
        if not shards:
            meta = self._retry(lambda: read_metadata(ckpt.export_url),
                               f"read metadata of {ckpt.url}")
            shards = list(meta.get("task", {}).get("shards") or [])
        key = tuple(shards)
        if key not in self._val:
            self._val[key] = self._retry(
                lambda: load_validation_set(shards, self.cfg.split, self.cfg.val_samples),
                f"read {self.cfg.split} split of {shards}")
            log.info("validation set: %d samples of %s", len(self._val[key].keys), shards)
        return self._val[key]

    def _evaluate(self, ckpt: CheckpointInfo) -> dict | None:
        """Evaluate one checkpoint; its history entry, or None when stopped meanwhile."""
        t0 = time.time()
        log.info("evaluating checkpoint %d (%s)", ckpt.step, ckpt.url)
        with self._lock:
            self._current = ckpt.step
        try:
            try:
                val = self._validation_set(ckpt)
            except (OSError, ValueError, KeyError) as exn:
                return self._failed(ckpt, f"validation data: {type(exn).__name__}: {exn}")
            t_decode = time.time()
            decoded = self._decode_all(ckpt, val)
            if decoded is None:
                return None
            if isinstance(decoded, str):
                return self._failed(ckpt, decoded)
            return self._score(ckpt, val, decoded, t0, time.time() - t_decode)
        finally:
            with self._lock:
                self._current = None
                self._in_flight = {}

    def _failed(self, ckpt: CheckpointInfo, error: str) -> dict:
        if self._retry(lambda: _mtime(f"{ckpt.url}/{COMPLETE}"), "stat COMPLETE") is None:
            error = (f"removed from storage before its evaluation finished (the training run's "
                     f"keep_checkpoints): {error}")
        log.error("checkpoint %d failed: %s", ckpt.step, error)
        self._dashboard.add_failure(ckpt.step, error)
        self._retry(self._dashboard.publish, "publish TensorBoard events")
        return history_entry(ckpt.step, ckpt.url, error=error)

    def _new_actor(self):
        import ray

        cfg = self.cfg
        opts: dict[str, Any] = {"num_cpus": cfg.cpus_per_actor, "num_gpus": cfg.gpus_per_actor,
                                "resources": dict(cfg.resources_per_actor), "max_restarts": 0}
        if self.env:
            opts["runtime_env"] = {"env_vars": dict(self.env)}
        device = "cuda" if cfg.gpus_per_actor > 0 else "cpu"
        return ray.remote(CheckpointDecoder).options(**opts).remote(
            threads=max(1, int(cfg.cpus_per_actor)), device=device,
            attempts=cfg.storage_attempts, backoff_s=cfg.storage_backoff_s)

    def _replace_actor(self, i: int, why: str) -> None:
        import ray

        log.warning("fleet actor %d %s: replacing it", i, why)
        ray.kill(self.actors[i])
        self.actors[i] = self._new_actor()
        # it gets batches once it runs: a batch's timeout must not count a node's boot time
        self._starting[self.actors[i].ready.remote()] = i
        self.summary.actors_replaced += 1

    def _decode_all(self, ckpt: CheckpointInfo, val: ValidationSet
                    ) -> dict[str, dict] | str | None:
        """Every batch of every sampler decoded over the actors: ``{sampler: {key: Decoded}}``,
        an error message (the checkpoint failed), or None (stopped)."""
        import ray

        cfg = self.cfg
        queue = deque(_Batch(s, i, keys) for s in cfg.samplers
                      for i, keys in enumerate(val.batches(cfg.batch_size, len(self.actors))))
        shown = set(val.spread(cfg.render_samples))
        spec = RenderSpec(val.motion_format, val.fps, cfg.render_frames, cfg.render_size)
        results: dict[str, dict] = {s: {} for s in cfg.samplers}
        in_flight: dict[Any, tuple[int, _Batch, float]] = {}
        idle = [i for i in range(len(self.actors)) if i not in self._starting.values()]
        deaths, error = 0, None
        while (queue and error is None) or in_flight:
            while queue and idle and error is None:
                i, batch = idle.pop(0), queue.popleft()
                refs = [val.references[k] for k in batch.keys]
                ref = self.actors[i].decode.remote(
                    ckpt.export_url, batch.keys, [r.text for r in refs], [r.lang for r in refs],
                    sampler=batch.sampler, num_steps=cfg.num_steps, seed=cfg.seed + batch.index,
                    render={k: val.references[k] for k in batch.keys if k in shown}, spec=spec)
                in_flight[ref] = (i, batch, time.monotonic())
            with self._lock:
                self._in_flight = {i: (b.sampler, b.index) for i, b, _ in in_flight.values()}
            if self._stop.is_set():
                return None
            if self._starting:
                idle += self._wait_starting(0 if in_flight else 0.5)
                if not in_flight:
                    continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            for ref in ready:
                i, batch, _ = in_flight.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError as exn:
                    deaths += 1
                    self._replace_actor(i, f"died ({type(exn).__name__})")
                    if deaths > cfg.max_actor_failures:
                        error = error or (f"{deaths} fleet actors died while decoding it "
                                          f"(max_actor_failures={cfg.max_actor_failures})")
                    else:
                        batch.attempts += 1
                        self.summary.batches_redone += 1
                        queue.appendleft(batch)
                    continue  # the new actor joins `idle` once it runs
                except ray.exceptions.RayTaskError as exn:
                    cause = getattr(exn, "cause", None) or exn
                    if is_transient(cause) and batch.attempts < cfg.storage_attempts:
                        batch.attempts += 1  # storage still out after the actor's own retries
                        queue.append(batch)
                    elif isinstance(cause, CheckpointLoadError):
                        error = error or str(cause)
                    else:
                        error = error or f"decoding raised {type(cause).__name__}: {cause}"
                else:
                    results[batch.sampler].update({d.key: d for d in out})
                idle.append(i)
            now = time.monotonic()
            for ref, (i, batch, started) in list(in_flight.items()):
                if now - started > cfg.batch_timeout_s:
                    # the killed actor's ref fails with RayActorError: replaced and redone above
                    log.warning("fleet actor %d silent for %.0f s on a batch: killing it", i,
                                now - started)
                    ray.kill(self.actors[i])
                    in_flight[ref] = (i, batch, float("inf"))
        return error if error is not None else results

    def _score(self, ckpt: CheckpointInfo, val: ValidationSet, decoded: dict[str, dict],
               t0: float, decode_s: float) -> dict:
        cfg, dash = self.cfg, self._dashboard
        per_sampler: dict[str, dict[str, float]] = {}
        try:
            for sampler in cfg.samplers:
                per_sampler[sampler], _ = checkpoint_metrics(decoded[sampler], val, self._siclip)
        except (ValueError, FileNotFoundError) as exn:  # e.g. no SMPL-X model for DTW-JPE
            return self._failed(ckpt, f"metrics: {exn}")
        landed = self._retry(lambda: _mtime(f"{ckpt.url}/{COMPLETE}"), "stat COMPLETE")
        if landed is None:  # pruned meanwhile: best.json must never name a removed checkpoint
            return self._failed(ckpt, "its COMPLETE marker is gone")
        dash.add_metrics(ckpt.step, per_sampler)
        dash.add_scalars(ckpt.step, {"fleet/eval_s": time.time() - t0, "fleet/decode_s": decode_s,
                                     "fleet/lag_s": time.time() - (landed or t0)})
        self._retry(dash.publish, "publish TensorBoard events")  # the curves before the images
        self._render(ckpt.step, val, decoded)
        self._retry(dash.publish, "publish TensorBoard images")
        primary = cfg.samplers[0]
        flat = {(k if s == primary else f"{s}/{k}"): v
                for s, values in per_sampler.items() for k, v in values.items()}
        log.info("checkpoint %d: %s = %s (%.1f s)", ckpt.step, cfg.metric, flat.get(cfg.metric),
                 time.time() - t0)
        return history_entry(ckpt.step, ckpt.url, metrics=flat)

    def _render(self, step: int, val: ValidationSet, decoded: dict[str, dict]) -> None:
        cfg, dash = self.cfg, self._dashboard
        for sampler in cfg.samplers:
            for i, key in enumerate(val.spread(cfg.render_samples)):
                d = decoded[sampler][key]
                if d.image is not None:
                    dash.add_image(f"samples/{sampler}/{i}", d.image, step)
                elif d.render_error:
                    log.warning("sample %s not rendered: %s", key, d.render_error)
                if d.gate_image is not None:
                    dash.add_image(f"gates/{sampler}/{i}", d.gate_image, step)
