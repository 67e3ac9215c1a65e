"""``FleetConfig``: how the eval fleet validates a run's checkpoints (section ``fleet``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from madis.config import ConfigError, check_bounds, check_resources

SAMPLERS = ("utc", "vanilla")
MODES = ("max", "min")


@dataclass
class FleetConfig:
    """Settings of the eval fleet (``ray_jobs/eval_fleet.py``, :mod:`madis.fleet`).

    Which run: ``job`` names the training job whose run is watched; its run directory is
    ``{train.storage_path}/{train_<job>.run_name}`` (the job's ``--storage`` / ``--run-url``
    options override it).

    Attributes:
        job: training job whose run is watched (``finetune``, ``pretrain``).
        actors: Ray actors decoding validation batches in parallel.
        cpus_per_actor: CPUs Ray reserves per actor (its torch threads: at least 1); 0 reserves
            none, so the fleet fits beside a training job that holds every CPU of a small
            machine (cpu-tiny: 2 cores, 2 training workers) and shares the cores with it.
        gpus_per_actor: GPUs per actor (0 on CPU nodes; a fraction shares one GPU).
        resources_per_actor: custom Ray resources each actor requests, which pins actors to the
            nodes offering them: ``{madis_eval: 1}`` in the paper profile (``cluster.yaml``'s
            eval/serve nodes); ``{}`` anywhere.
        start_timeout_s: how long the actors may wait for a node to run on, at the start and
            after a node was lost (an autoscaler boots GPU nodes in minutes); 0 waits for ever,
            logging what it waits for.
        poll_interval_s: seconds between two listings of the run's storage when idle.
        metric: key of the checkpoint's metrics that ranks checkpoints in ``best.json``: a
            metric of :func:`madis.metrics.evaluate` (``siclip_s2t_R@1``, ``dtw_jpe_body``...)
            decoded with ``samplers[0]``, or ``<sampler>/<metric>`` for another sampler.
        mode: ``max`` (R@k, BLEU) or ``min`` (DTW-JPE): which way is better.
        samplers: decoding samplers, ``utc`` and/or ``vanilla``; each gets its own metrics.
        num_steps: decoding steps K per sample; 0 takes the checkpoint's ``model.num_steps``.
        batch_size: validation texts per actor task (one ``generate`` call).
        split: shard split evaluated.
        val_samples: the first this many samples of the split, in stored order (0: all).
        shards: token shard roots holding the split; empty: those the checkpoint was trained on
            (its ``metadata.json``).
        siclip: SiCLIP export for R@k: a directory or ``s3://`` URL; ``auto``: the export of the
            newest complete checkpoint of the ``train_siclip`` run in the same storage, if any;
            empty: no R@k (the fleet says so in its log).
        render_samples: validation samples rendered (generated | ground truth) per checkpoint,
            evenly spaced over the validation set, the same ones at every checkpoint.
        render_frames: frames per rendered sample, evenly spaced, stacked into one image.
        render_size: pixels of one square panel.
        log_dir: local staging directory of the fleet's TensorBoard events for a run on S3
            (uploaded to ``{run}/tensorboard/fleet/`` after each checkpoint); a run on a local
            disk gets them written there in place.
        seed: seeds each batch's decoding generator (``seed + batch index``), so a result does
            not depend on which actor decoded it.
        until_step: stop once a checkpoint at or past this step is recorded (0: no limit).
        idle_timeout_s: stop after this long without a new checkpoint (0: never).
        stop_when_run_ends: stop once the training run has written its final ``report.json``
            (or ``STOPPED.json``) after its newest checkpoint, and that checkpoint is recorded.
        max_actor_failures: actor deaths tolerated while evaluating one checkpoint before it is
            recorded as failed.
        batch_timeout_s: an actor silent for this long on one batch is killed and replaced.
        storage_attempts: attempts of each storage read/write before the error is raised.
        storage_backoff_s: first wait between two attempts; it doubles up to 30 s.
    """

    job: str = "finetune"
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    resources_per_actor: dict[str, float] = field(default_factory=dict)
    start_timeout_s: float = 0.0
    poll_interval_s: float = 5.0
    metric: str = "siclip_s2t_R@1"
    mode: str = "max"
    samplers: list[str] = field(default_factory=lambda: ["utc"])
    num_steps: int = 0
    batch_size: int = 16
    split: str = "val"
    val_samples: int = 0
    shards: list[str] = field(default_factory=list)
    siclip: str = "auto"
    render_samples: int = 2
    render_frames: int = 4
    render_size: int = 192
    log_dir: str = "fleet_runs"
    seed: int = 0
    until_step: int = 0
    idle_timeout_s: float = 0.0
    stop_when_run_ends: bool = True
    max_actor_failures: int = 3
    batch_timeout_s: float = 900.0
    storage_attempts: int = 6
    storage_backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.siclip is None or str(self.siclip).lower() == "none":
            self.siclip = ""  # YAML `fleet.siclip=` gives None
        if self.mode not in MODES:
            raise ConfigError(f"fleet.mode must be one of {MODES}, got {self.mode!r}")
        bad = [s for s in self.samplers if s not in SAMPLERS]
        if not self.samplers or bad or len(set(self.samplers)) != len(self.samplers):
            raise ConfigError(f"fleet.samplers must be distinct names among {SAMPLERS}, "
                              f"got {self.samplers}")
        check_bounds(self, "fleet",
                     at_least_one=("actors", "batch_size", "storage_attempts",
                                   "max_actor_failures"),
                     non_negative=("num_steps", "val_samples", "render_samples", "until_step",
                                   "seed", "idle_timeout_s", "cpus_per_actor", "gpus_per_actor",
                                   "start_timeout_s",
                                   "storage_backoff_s"),
                     positive=("poll_interval_s", "batch_timeout_s", "render_frames",
                               "render_size"))
        self.resources_per_actor = check_resources(self.resources_per_actor,
                                                   "fleet.resources_per_actor")
        if not self.metric:
            raise ConfigError("fleet.metric must name a metric, e.g. siclip_s2t_R@1")
        prefix = self.metric.split("/", 1)[0] if "/" in self.metric else None
        if prefix is not None and prefix not in self.samplers:
            raise ConfigError(f"fleet.metric {self.metric!r} names sampler {prefix!r}, which is "
                              f"not in fleet.samplers {self.samplers}")

    @property
    def needs_siclip(self) -> bool:
        """True when the ranking metric is a SiCLIP retrieval metric."""
        return self.metric.rsplit("/", 1)[-1].startswith("siclip_")
