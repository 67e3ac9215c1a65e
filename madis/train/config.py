"""``TrainConfig``: how the shared loop trains (section ``train``, per job ``train_<job>``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from madis.config import ConfigError, check_bounds, check_resources, job_section


@dataclass
class TrainConfig:
    """Settings of the one training loop (Ray Train workers running a DeepSpeed engine).

    Every job reads section ``train`` and then its own section ``train_<job>`` (e.g.
    ``train_tokenizer``, ``train_pretrain``, ``train_finetune``, ``train_siclip``) whose fields
    override it: see :func:`train_config`.

    Attributes:
        run_name: the run's directory under ``storage_path``; a re-submitted job with the same
            name resumes from its latest checkpoint.
        storage_path: local directory or ``s3://bucket/prefix`` (endpoint from
            ``AWS_ENDPOINT_URL``) that holds ``{run_name}/checkpoint_<step>/``.
        workers: Ray Train workers (data-parallel ranks).
        cpus_per_worker: CPUs Ray reserves per worker.
        resources_per_worker: custom Ray resources each worker requests besides its CPUs and GPU,
            which pins workers to the nodes offering them: ``{madis_train: 1}`` in the paper
            profile (``cluster.yaml``'s training nodes offer one per GPU); ``{}`` anywhere.
        use_gpu: one GPU per worker, NCCL; otherwise CPU and gloo.
        zero_stage: DeepSpeed ZeRO stage, 0..3.
        bf16: bf16 mixed precision (DeepSpeed ``bf16.enabled``); meant for GPUs.
        tf32: on a GPU, fp32 matrix products and convolutions use TF32 tensor cores
            (``torch.set_float32_matmul_precision("high")``: about 8x the fp32 rate on
            A100/H100, 10-bit mantissa inputs, fp32 accumulation); false keeps full fp32.
        lr: peak learning rate of AdamW.
        weight_decay, betas: AdamW's.
        warmup_steps: linear warm-up before the cosine decay (to 0 at the last step).
        steps: optimizer steps of the whole run; 0 means ``epochs`` x the task's steps per epoch.
        epochs: used when ``steps`` is 0.
        batch_size: samples per worker per step (DeepSpeed ``train_micro_batch_size_per_gpu``).
        grad_clip: global gradient-norm clip (0 disables).
        checkpoint_every: a checkpoint every this many steps (0: only the final one).
        keep_checkpoints: newest complete checkpoints kept in storage (0 keeps all); the one the
            eval fleet ranked best (best.json) is kept besides them.
        log_every: TensorBoard scalars and progress-bar update every this many steps.
        prefetch_batches: batches read ahead (storage, parsing, collation) on a background
            thread of each worker, into the next epoch too (:mod:`madis.train.prefetch`);
            0 reads them on the training thread.
        max_failures: worker-group restarts from the latest checkpoint before the run fails.
        max_bad_steps: consecutive non-finite losses (each batch skipped) that stop the run.
        collective_timeout_s: a collective (all-reduce, a ZeRO-3 all-gather) waiting this long
            for another rank fails the worker instead of hanging (``TorchConfig.timeout_s``).
        seed: seeds model init, per-step randomness and the batch order.
        log_dir: local TensorBoard root; events go to ``{log_dir}/{run_name}`` and are copied
            to ``{storage_path}/{run_name}/tensorboard`` while the run goes
            (``tensorboard_sync_s``) and at every checkpoint.
        tensorboard_sync_s: least seconds between two uploads of the events to storage (on a
            background thread at a log step; 0: at every log step).
        progress: show a tqdm progress bar on rank 0.
    """

    run_name: str = "run"
    storage_path: str = "storage"
    workers: int = 2
    cpus_per_worker: int = 1
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    use_gpu: bool = False
    zero_stage: int = 2
    bf16: bool = False
    tf32: bool = True
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    steps: int = 0
    epochs: int = 1
    batch_size: int = 8
    grad_clip: float = 1.0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    log_every: int = 10
    prefetch_batches: int = 4
    max_failures: int = 2
    max_bad_steps: int = 5
    collective_timeout_s: int = 1800
    seed: int = 0
    log_dir: str = "runs"
    tensorboard_sync_s: float = 10.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        check_bounds(self, "train",
                     at_least_one=("workers", "cpus_per_worker", "batch_size", "log_every",
                                   "max_bad_steps", "collective_timeout_s"),
                     non_negative=("steps", "epochs", "warmup_steps", "checkpoint_every",
                                   "keep_checkpoints", "max_failures", "prefetch_batches"),
                     positive=("lr",))
        self.resources_per_worker = check_resources(self.resources_per_worker,
                                                    "train.resources_per_worker")
        if not self.tensorboard_sync_s >= 0:
            raise ConfigError(f"train.tensorboard_sync_s must be >= 0, got "
                              f"{self.tensorboard_sync_s}")
        if self.steps == 0 and self.epochs == 0:
            raise ConfigError("train.steps and train.epochs are both 0: nothing to train")
        if not self.run_name or "/" in self.run_name:
            raise ConfigError(f"train.run_name must be a non-empty name without '/', "
                              f"got {self.run_name!r}")


def train_config(tree: Mapping[str, Any], job: str | None = None) -> TrainConfig:
    """Section ``train`` of a loaded config tree, overridden field by field by ``train_<job>``.

    Raises:
        ConfigError: an unknown field or a bad value in either section.
    """
    return job_section(tree, "train", job, TrainConfig)
