"""The one training loop: a Ray Train worker function that drives a DeepSpeed engine for a Task.

``fit(task, train_cfg)`` starts a ``TorchTrainer`` with ``train_cfg.workers`` workers; each worker
runs :func:`train_worker`: builds the task's model, wraps it in a DeepSpeed engine (ZeRO stage
from the config; gloo on CPU, NCCL + optional bf16 on GPU; ``torch.optim.AdamW`` with a cosine
schedule and linear warm-up), restores the latest checkpoint if Ray hands one over, and trains
until ``total_steps`` optimizer steps.

Position and determinism. The loop counts optimizer steps, the epoch, and the batches consumed
in the current epoch. A task's batches are deterministic per (seed, epoch, rank), so a resumed
worker re-creates the epoch's iterator and skips what was consumed; per-step randomness is seeded
from (seed, step, rank). A resumed run therefore reaches the same step count on the same data
as an uninterrupted one.

Non-finite losses. A batch whose loss is NaN/inf on any rank is skipped on every rank (no
backward, no step) and counted; ``max_bad_steps`` in a row end the run without a new
checkpoint, and :func:`fit` raises :class:`NonFiniteLossError` naming the last good one.

Checkpoints. The loop decides when and in which order a checkpoint is written (every rank's
engine state, rank 0's export and loop files, Ray's upload, a barrier, then the marker); what the
files are called and hold is :mod:`madis.train.checkpoints`' (``write_layout``,
``write_complete``; docs/data-formats.md#checkpoints).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch

from madis.config import ConfigError, to_dict
from madis.runs import absolute, run_url
from madis.train.checkpoints import (
    COMPLETE, DEEPSPEED_DIR, EXPORT_DIR, STOPPED, CheckpointInfo, checkpoint_dir_name,
    latest_checkpoint, prune_checkpoints, read_train_state, step_in_name, write_complete,
    write_layout,
)
from madis.train.config import TrainConfig
from madis.train.events import TENSORBOARD_DIR, EventMirror, LiveEvents
from madis.train.prefetch import BatchLoader
from madis.train.task import Task, ValTotals, to_device

#: environment passed from the driver to the workers (S3 endpoint and credentials)
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN")


class NonFiniteLossError(RuntimeError):
    """Training stopped after ``max_bad_steps`` consecutive NaN/inf losses.

    Attributes:
        last_checkpoint: the newest complete checkpoint (kept), or ``None``.
    """

    def __init__(self, message: str, last_checkpoint: CheckpointInfo | None) -> None:
        super().__init__(message)
        self.last_checkpoint = last_checkpoint


@dataclass
class TrainState:
    """Where the loop is; saved in every checkpoint as ``train_state.json``."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0
    skipped_batches: int = 0
    world_size: int = 1


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        checkpoint: the final complete checkpoint.
        metrics: the last reported metrics (rank 0).
        run_url: ``{storage_path}/{run_name}``.
    """

    checkpoint: CheckpointInfo
    metrics: dict[str, Any] = field(default_factory=dict)
    run_url: str = ""


# -- helpers used inside the workers ------------------------------------------------------------

def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed config for one worker's engine."""
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": bool(cfg.bf16)},
        # a plain torch AdamW avoids compiling DeepSpeed's fused/CPU Adam
        # (docs/operations.md#stack-facts)
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_factor(step: int, warmup_steps: int, total: int) -> float:
    """Multiplier of the peak lr after ``step`` steps: linear warm-up from 0, then a half cosine
    down to 0 at ``total`` (the schedule LLaDA / the paper use with AdamW)."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(cfg: TrainConfig, task: Task, world_size: int) -> int:
    """Optimizer steps of the run: ``cfg.steps``, else epochs x the task's steps per epoch.

    Raises:
        ConfigError: ``steps`` is 0 and the task cannot tell its steps per epoch.
    """
    if cfg.steps > 0:
        return cfg.steps
    per_epoch = task.steps_per_epoch(world_size=world_size, batch_size=cfg.batch_size)
    if not per_epoch:
        raise ConfigError(f"train.steps is 0 and task {task.name!r} does not know its steps "
                          f"per epoch: set train.steps")
    return cfg.epochs * per_epoch


def set_matmul_precision(cfg: TrainConfig) -> None:
    """TF32 for fp32 matrix products and convolutions in a GPU job (``cfg.tf32``); CPU jobs and
    ``tf32=false`` leave torch's defaults (full fp32)."""
    if cfg.use_gpu and cfg.tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def _dist():
    return torch.distributed


def _all_min(flag: bool, device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    _dist().all_reduce(t, op=_dist().ReduceOp.MIN)
    return bool(t.item() > 0)


def _all_min_flags(finite: torch.Tensor, more: bool, device) -> tuple[bool, bool]:
    """``(every rank's loss is finite, every rank has a next batch)``: one all-reduce, one sync."""
    t = torch.stack([finite.to(device, torch.float32),
                     torch.tensor(1.0 if more else 0.0, device=device)])
    _dist().all_reduce(t, op=_dist().ReduceOp.MIN)
    a, b = t.tolist()
    return a > 0, b > 0


def _grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    if norm is None:  # ZeRO stage 0 with a torch optimizer caches none: grads are reduced here
        grads = [p.grad.detach().float() for p in engine.module.parameters() if p.grad is not None]
        if not grads:
            return float("nan")
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return float(norm)


def _local_peak_mem_mb(device) -> float:
    """This rank's peak memory, MiB: GPU allocations, or the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _export_module(engine, cfg: TrainConfig, task: Task, directory: str, rank: int) -> None:
    """Rank 0 exports full weights; under ZeRO-3 every rank first gathers its partitions."""
    import deepspeed

    module = engine.module
    was_training = module.training
    module.eval()
    if cfg.zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if rank == 0:
                task.export(module, directory)
    elif rank == 0:
        task.export(module, directory)
    module.train(was_training)


def _save(engine, cfg: TrainConfig, task: Task, state: TrainState, metrics: dict[str, float],
          rank: int, events: LiveEvents | None, run_url: str) -> None:
    """Write this rank's part of a checkpoint, report it to Ray, mark it COMPLETE, upload the
    TensorBoard events written so far, then apply ``keep_checkpoints``
    (:func:`~madis.train.checkpoints.prune_checkpoints`: the fleet's best checkpoint is kept)."""
    import ray.train

    local = tempfile.mkdtemp(prefix=f"madis-ckpt-r{rank}-")
    try:
        engine.save_checkpoint(os.path.join(local, DEEPSPEED_DIR), tag=f"step{state.step}")
        export = os.path.join(local, EXPORT_DIR)
        _export_module(engine, cfg, task, export, rank)
        if rank == 0:
            write_layout(local, train_state=to_dict(state), metadata={
                "step": state.step, "epoch": state.epoch, "run_name": cfg.run_name,
                "task": task.describe(), "train": to_dict(cfg), "metrics": metrics,
                "time": time.time()})
        ray.train.report({**metrics, "step": state.step, "epoch": state.epoch},
                         checkpoint=ray.train.Checkpoint.from_directory(local),
                         checkpoint_dir_name=checkpoint_dir_name(state.step))
        # every rank's synchronous upload has returned once all ranks pass this barrier
        _dist().barrier()
        if rank == 0:
            write_complete(f"{run_url}/{checkpoint_dir_name(state.step)}", state.step,
                           epoch=state.epoch, metrics=metrics)
            log = logging.getLogger(__name__)
            if events is not None:
                try:
                    events.sync()
                except OSError as exn:  # the next upload carries them; training goes on
                    log.warning("TensorBoard events not uploaded this time: %s", exn)
            try:
                prune_checkpoints(run_url, cfg.keep_checkpoints)
            except OSError as exn:  # retention can wait for the next checkpoint; training not
                log.warning("old checkpoints kept this time: %s", exn)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _resume_point(run_url: str):
    """The checkpoint a (re)started run resumes from: Ray's latest (its snapshot of reported
    checkpoints), unless storage holds a newer complete one, or ``None``.

    Storage is ahead of Ray when the run's node was lost after a checkpoint's COMPLETE marker
    but before Ray's controller recorded the report, or when the job was stopped in between
    (tests/test_cluster.py, the training node lost): Ray's snapshot alone would redo steps that
    were already saved. Every rank lists the same storage before any of them writes, so all
    pick the same checkpoint.
    """
    import ray.train

    ckpt = ray.train.get_checkpoint()
    newest = latest_checkpoint(run_url)
    if newest is None:
        return ckpt
    if ckpt is not None:
        step = step_in_name(ckpt.path)
        if step is None or step >= newest.step:
            return ckpt
    path, fs = storage_for_ray(newest.url)
    return ray.train.Checkpoint(path, filesystem=fs)


def _restore(engine, rank: int, world_size: int, run_url: str) -> TrainState | None:
    """Load the resume checkpoint (:func:`_resume_point`) into the engine; the loop position it
    holds, or ``None``."""
    ckpt = _resume_point(run_url)
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        state = TrainState(**read_train_state(d))
        if state.world_size != world_size:
            raise RuntimeError(
                f"checkpoint {ckpt.path} was written by {state.world_size} workers; resume "
                f"with train.workers={state.world_size} (the data position is per rank)")
        path, _ = engine.load_checkpoint(os.path.join(d, DEEPSPEED_DIR), tag=f"step{state.step}")
        if path is None:
            raise RuntimeError(f"DeepSpeed found no engine state in {ckpt.path}")
    url = f"{run_url}/{ckpt.path.rstrip('/').rsplit('/', 1)[-1]}"
    fs, root = fsspec.core.url_to_fs(url)
    if rank == 0 and not fs.exists(f"{root}/{COMPLETE}"):
        # Ray registered it, so every rank's files are there: a crash hit between report and
        # marker. Mark it now so storage readers see it too.
        write_complete(url, state.step, epoch=state.epoch)
    return state


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function (one per rank): see the module docstring.

    ``loop_config``: ``{"task": Task, "train": TrainConfig, "run_url": str,
    "env": {name: value}}``.
    """
    for k, v in loop_config.get("env", {}).items():
        os.environ.setdefault(k, v)
    cfg = loop_config["train"]
    _Worker(loop_config["task"], cfg, loop_config.get("run_url") or run_url(cfg)).run()


class _Worker:
    """State of one rank's loop; :meth:`run` is the whole job."""

    def __init__(self, task: Task, cfg: TrainConfig, run_url: str) -> None:
        import deepspeed
        import ray.train

        self.task, self.cfg, self.run_url = task, cfg, run_url
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        set_matmul_precision(cfg)
        if cfg.use_gpu:
            self.device = torch.device("cuda", ctx.get_local_rank())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(cfg.cpus_per_worker)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = task.build_model()
        self.planned = total_steps(cfg, task, self.world)
        optimizer = torch.optim.AdamW(task.trainable_parameters(model), lr=cfg.lr,
                                      betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, cfg.warmup_steps, self.planned))
        deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=self.scheduler,
            config=deepspeed_config(cfg))
        self.state = (_restore(self.engine, self.rank, self.world, run_url)
                      or TrainState(world_size=self.world))
        self.writer = self.pbar = self.events = None
        if self.rank == 0 and self.state.step:
            print(f"[madis] {cfg.run_name}: resumed from the checkpoint at step "
                  f"{self.state.step} of {self.planned}", flush=True)
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            from tqdm import tqdm

            writer_dir = os.path.join(cfg.log_dir, cfg.run_name)
            self.writer = SummaryWriter(writer_dir)
            self.events = LiveEvents(
                self.writer, EventMirror(writer_dir, f"{run_url}/{TENSORBOARD_DIR}"),
                cfg.tensorboard_sync_s)
            self.pbar = tqdm(total=self.planned, initial=self.state.step, file=sys.stderr,
                             desc=f"{task.name}:{cfg.run_name}", disable=not cfg.progress,
                             mininterval=2.0, dynamic_ncols=True)
        self.metrics: dict[str, float] = {}
        self._reset_window()

    def _reset_window(self) -> None:
        # per metric: a running sum on the device (no host sync per step) and its step count
        self.window: dict[str, torch.Tensor] = {}
        self.window_counts: dict[str, int] = {}
        self.window_steps = self.window_samples = 0
        self.window_t0 = time.perf_counter()

    def _loader(self) -> BatchLoader:
        cfg, state = self.cfg, self.state

        def epoch_batches(epoch: int):
            return self.task.batches(rank=self.rank, world_size=self.world, epoch=epoch,
                                     seed=cfg.seed, batch_size=cfg.batch_size)

        return BatchLoader(epoch_batches, start_epoch=state.epoch,
                           skip_batches=state.batch_in_epoch, depth=cfg.prefetch_batches,
                           pin_memory=self.device.type == "cuda")

    def run(self) -> None:
        import ray.train

        stop_reason = ""
        self.engine.train()
        self.loader = self._loader()
        try:
            while self.state.step < self.planned and not stop_reason:
                stop_reason = self._epoch()
                if not stop_reason and self.state.step < self.planned:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
        finally:
            self.loader.close()
        if self.pbar is not None:
            self.pbar.close()
            try:
                self.events.sync()
            except OSError as exn:
                logging.getLogger(__name__).warning("TensorBoard events not uploaded: %s", exn)
            self.writer.close()
        if stop_reason and self.rank == 0:
            # Ray's Result only carries metrics reported with a checkpoint: tell the driver
            # through the run directory instead.
            storage = ray.train.get_context().get_storage()
            path = f"{storage.experiment_fs_path}/{STOPPED}"
            with storage.storage_filesystem.open_output_stream(path) as f:
                f.write(json.dumps({"reason": stop_reason, "step": self.state.step}).encode())

    def _epoch(self) -> str:
        """Train until the epoch's batches or the planned steps run out; a stop reason or ''.

        One host sync per step: after the forward, the ranks agree in one all-reduce whether
        every loss is finite (else the batch is skipped on all) and whether every rank has a
        next batch (else the epoch ends for all after this step). The next batch is taken
        from the loader while the forward's kernels run.
        """
        cfg, state, epoch = self.cfg, self.state, self.state.epoch
        batch = self.loader.next(epoch)
        if not _all_min(batch is not None, self.device):
            if batch is not None:
                self.loader.end_epoch(epoch)
            return ""  # some rank's epoch is over: it ends for all
        bad_in_row = 0
        while state.step < self.planned:
            state.batch_in_epoch += 1
            torch.manual_seed(cfg.seed * 1_000_003 + state.step * 1_009 + self.rank)
            loss, step_metrics = self.task.loss(self.engine, to_device(batch, self.device))
            following = self.loader.next(epoch)
            finite, more = _all_min_flags(torch.isfinite(loss.detach()).all(),
                                          following is not None, self.device)
            if not finite:
                state.skipped_batches += 1
                bad_in_row += 1
                if bad_in_row >= cfg.max_bad_steps:
                    return (f"{bad_in_row} consecutive non-finite losses at step {state.step} "
                            f"(epoch {state.epoch}, batch {state.batch_in_epoch}); stopped "
                            f"without a new checkpoint")
            else:
                bad_in_row = 0
                self._train_step(loss, step_metrics, batch)
            if not more:
                if following is not None:
                    self.loader.end_epoch(epoch)
                return ""  # some rank's epoch is over: it ends for all
            batch = following
        return ""

    def _train_step(self, loss: torch.Tensor, step_metrics, batch) -> None:
        """Backward, optimizer step, metrics into the window, logging and checkpoints."""
        cfg, state = self.cfg, self.state
        self.engine.backward(loss)
        checkpoint_now = state.step + 1 == self.planned or (
            cfg.checkpoint_every and (state.step + 1) % cfg.checkpoint_every == 0)
        log_now = checkpoint_now or (state.step + 1) % cfg.log_every == 0
        # stage 0 caches no gradient norm: read it before step() clears the grads
        grad_norm = _grad_norm(self.engine) if log_now and cfg.zero_stage == 0 else None
        self.engine.step()
        state.step += 1
        self.window_steps += 1
        self.window_samples += self.task.batch_samples(batch)
        for k, v in {"loss": loss, **step_metrics}.items():
            v = (v.detach().float() if isinstance(v, torch.Tensor)
                 else torch.tensor(float(v))).to(self.device, non_blocking=True)
            self.window[k] = self.window[k] + v if k in self.window else v
            self.window_counts[k] = self.window_counts.get(k, 0) + 1
        if log_now:
            self._log(grad_norm)
        if self.pbar is not None:
            self.pbar.update(1)
        if checkpoint_now:
            t0 = time.perf_counter()
            val = validate(self.engine, self.task, self.rank, self.world, self.device,
                           cfg.zero_stage)
            t1 = time.perf_counter()
            if self.writer is not None:
                for k, v in val.items():  # val_loss -> val/loss (the metadata keeps val_loss)
                    name = k[len("val_"):] if k.startswith("val_") else k
                    self.writer.add_scalar(f"val/{name}", v, state.step)
                self.writer.add_scalar("train/validation_s", t1 - t0, state.step)
            _save(self.engine, cfg, self.task, state, {**self.metrics, **val}, self.rank,
                  self.events, self.run_url)
            if self.writer is not None:  # seen in the next upload (the last: at the run's end)
                self.writer.add_scalar("train/checkpoint_s", time.perf_counter() - t1,
                                       state.step)
            self.window_t0 = time.perf_counter()  # samples/s leaves checkpoint time out

    def _log(self, grad_norm: float | None) -> None:
        """Means over the window and over ranks (each metric's sum over its count): one host
        sync for this rank's sums, one collective for all ranks' windows."""
        elapsed = max(time.perf_counter() - self.window_t0, 1e-9)
        keys = sorted(self.window)
        sums = torch.stack([self.window[k] for k in keys]).tolist() if keys else []
        mine = {"sums": {k: (s, self.window_counts[k]) for k, s in zip(keys, sums)},
                "samples": self.window_samples, "peak_mem_mb": _local_peak_mem_mb(self.device)}
        every: list[dict | None] = [None] * self.world
        _dist().all_gather_object(every, mine)
        pooled: dict[str, list[float]] = {}
        for w in every:
            for k, (s, c) in w["sums"].items():
                acc = pooled.setdefault(k, [0.0, 0])
                acc[0] += s
                acc[1] += c
        means = {k: s / c for k, (s, c) in sorted(pooled.items()) if c}
        samples = sum(w["samples"] for w in every)
        self.state.samples += samples
        lr = self.scheduler.get_last_lr()[0]
        self.metrics = {**means, "lr": lr,
                        "grad_norm": grad_norm if grad_norm is not None else _grad_norm(self.engine),
                        "samples_per_s": samples / elapsed,
                        "peak_mem_mb": max(w["peak_mem_mb"] for w in every),
                        "skipped_batches": self.state.skipped_batches}
        if self.writer is not None:
            for k, v in self.metrics.items():
                self.writer.add_scalar(f"train/{k}", v, self.state.step)
            self.pbar.set_postfix(loss=f"{means.get('loss', float('nan')):.4g}", lr=f"{lr:.2e}",
                                  refresh=False)
            self.events.tick()  # live dashboards: at most every train.tensorboard_sync_s
        self._reset_window()


def validate(engine, task: Task, rank: int, world: int, device, zero_stage: int) -> dict[str, float]:
    """Validation over every rank's :meth:`Task.validation_batches`, each sample counted once.

    Under ZeRO-3 every forward of the training engine all-gathers partitioned weights, a
    collective, so ranks with different numbers of validation batches (or a decoding loop whose
    forwards depend on the batch) would wait on each other until the collective timeout. The
    weights are therefore gathered once for the whole validation and the engine's hooks taken
    off (DeepSpeed's ``unwrap_model_for_generation``, the same full copy per rank as the export
    makes): each rank then validates its own batches with no collective, and one
    ``all_gather_object`` adds up every rank's ``(sum, count)`` totals (:class:`ValTotals`).

    Returns:
        ``{val_<name>: sum / count}`` and ``val_samples`` (samples validated, all ranks);
        empty when no rank has validation data.
    """
    from contextlib import nullcontext

    from deepspeed.runtime.zero import unwrap_model_for_generation

    module = engine.module
    was_training = module.training
    totals = ValTotals()
    with unwrap_model_for_generation(engine) if zero_stage == 3 else nullcontext():
        module.eval()
        try:
            with torch.no_grad():
                for batch in task.validation_batches(rank=rank, world_size=world):
                    totals.add(task.validation_step(module, to_device(batch, device)),
                               task.batch_samples(batch))
        finally:
            module.train(was_training)
    gathered: list[ValTotals | None] = [None] * world
    _dist().all_gather_object(gathered, totals)
    return {k if k.startswith("val") else f"val_{k}": v
            for k, v in ValTotals.merged(gathered).result().items()}


# -- driver side -------------------------------------------------------------------------------

def storage_for_ray(storage_path: str):
    """``(storage_path, storage_filesystem)`` for ``RunConfig``.

    ``s3://bucket/prefix`` goes through s3fs wrapped as a pyarrow filesystem, built from this
    process's ``AWS_ENDPOINT_URL`` and credentials and pickled with them, so Ray's controller
    and every worker write to the same server whatever their own environment says. Not pyarrow's own
    S3FileSystem: against the local moto server (5.2.5) its multipart uploads fail to complete
    (getmoto/moto#10055), which breaks every file over one part.
    """
    if not storage_path.startswith("s3://"):
        if "://" in storage_path:
            return storage_path, None
        return absolute(storage_path, "train.storage_path"), None
    import pyarrow.fs
    import s3fs

    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    client_kwargs = {"region_name": env.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    fs = s3fs.S3FileSystem(key=env.get("AWS_ACCESS_KEY_ID"), secret=env.get("AWS_SECRET_ACCESS_KEY"),
                           token=env.get("AWS_SESSION_TOKEN"), client_kwargs=client_kwargs)
    return storage_path[len("s3://"):], pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _worker_task(cfg: TrainConfig, fn, args, kwargs):
    set_matmul_precision(cfg)
    device = torch.device("cuda" if cfg.use_gpu else "cpu")
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.cpus_per_worker)
    return fn(*args, device=device, **kwargs)


def run_on_worker(cfg: TrainConfig, fn, *args, **kwargs):
    """``fn(*args, device=..., **kwargs)`` as one Ray task placed like a training worker of
    ``cfg`` (``cpus_per_worker`` CPUs, ``resources_per_worker`` and, with ``use_gpu``, a GPU:
    ``device`` is then ``cuda``), with the S3 environment forwarded and TF32 set as in the
    loop. For the work a job does after training (e.g. the tokenizer job encoding the corpus),
    which would otherwise run on the driver's CPU, i.e. the cluster's head.

    ``fn`` must be importable by the workers (a module-level function of the ``madis``
    package). Returns what it returns; raises what it raises (``ray.exceptions.RayTaskError``
    wrapping it).
    """
    import ray

    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    remote = ray.remote(_worker_task).options(
        num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0, max_retries=0,
        resources=dict(cfg.resources_per_worker) or None,
        runtime_env={"env_vars": env} if env else None)
    return ray.get(remote.remote(cfg, fn, args, kwargs))


def fit(task: Task, cfg: TrainConfig) -> FitResult:
    """Train ``task`` with the shared loop on the current Ray cluster (started locally if none).

    Resumes from the latest checkpoint of ``{storage_path}/{run_name}`` when the run exists;
    returns at once, starting no worker, when that checkpoint already has the planned steps.

    Returns:
        :class:`FitResult` with the final complete checkpoint.

    Raises:
        ConfigError: the run exists with another number of workers.
        NonFiniteLossError: the run stopped on consecutive NaN/inf losses.
        ray.train.TrainingFailedError: a worker failed more than ``max_failures`` times.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = TrainConfig(**{**to_dict(cfg), "log_dir": str(Path(cfg.log_dir).resolve()),
                         "betas": tuple(cfg.betas)})
    url = run_url(cfg)
    planned = total_steps(cfg, task, cfg.workers)
    last = latest_checkpoint(url)
    fs, root = fsspec.core.url_to_fs(url)
    if last is not None:
        written_by = read_train_state(last.url)["world_size"]
        if written_by != cfg.workers:
            raise ConfigError(f"run {url} was trained by {written_by} workers; resume it with "
                              f"train.workers={written_by} (the data position is per rank) or "
                              f"start a new train.run_name")
        if last.step >= planned:
            return FitResult(checkpoint=last, metrics=dict(last.metrics), run_url=url)  # done
    if fs.exists(f"{root}/{STOPPED}"):
        fs.rm(f"{root}/{STOPPED}")  # a re-submitted job gets a fresh chance
    storage_path, storage_fs = storage_for_ray(cfg.storage_path)
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"task": task, "train": cfg, "run_url": url, "env": env},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **cfg.resources_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo",
                                 timeout_s=cfg.collective_timeout_s),
        run_config=RunConfig(
            name=cfg.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            # Ray keeps every checkpoint: the loop prunes (keep_checkpoints) around best.json
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    result = trainer.fit()
    last = latest_checkpoint(url)
    metrics = dict(result.metrics or {})
    fs.invalidate_cache()
    if fs.exists(f"{root}/{STOPPED}"):
        with fs.open(f"{root}/{STOPPED}", "r") as f:
            stop = json.load(f)
        where = last.url if last else "none"
        raise NonFiniteLossError(f"{task.name} run {cfg.run_name!r}: {stop['reason']}; "
                                 f"last good checkpoint: {where}", last)
    if last is None:
        raise RuntimeError(f"run {cfg.run_name!r} finished but {url} holds no complete checkpoint")
    return FitResult(checkpoint=last, metrics=metrics, run_url=url)
