"""``ServeConfig``: the text-to-sign service (section ``serve``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from madis.config import ConfigError, check_bounds, check_resources

#: Ray Serve's proxy placements (``ray.serve.config.ProxyLocation``)
PROXY_LOCATIONS = ("HeadOnly", "EveryNode", "Disabled")


@dataclass
class ServeConfig:
    """How the Ray Serve application is bound, scaled, batched and protected.

    Model:
        run: run directory whose ``best.json`` (written by the eval fleet) names the checkpoint
            to serve; ``""`` = the fine-tuning run, ``{train.storage_path}/{train_finetune.run_name}``.
            While the run has no ``best.json`` yet, its newest complete checkpoint is served.
        checkpoint: a fixed checkpoint directory or export to serve instead (no polling).
        poll_s: seconds between two reads of ``best.json``; a change loads the new model beside
            the old one and swaps it in between two batches (no request is dropped).
        languages: sign-language codes accepted in requests; ``[]`` = the languages of the
            checkpoint's training data (the train split of each token shard set named in the
            export's metadata).

    HTTP (cluster-wide: fixed when Serve first starts on a cluster):
        host, port: where Serve's proxy listens; loopback unless told otherwise.
        proxy_location: Serve's ``proxy_location``: ``HeadOnly`` (one proxy, on the head node,
            which routes to replicas on any node: reach it through a tunnel to the head),
            ``EveryNode`` or ``Disabled``.
        app_name, route_prefix: the Serve application's name and URL prefix.

    Scaling (Ray Serve ``autoscaling_config``):
        min_replicas, max_replicas: replica range.
        target_ongoing_requests: queue length per replica the autoscaler aims at.
        upscale_delay_s, downscale_delay_s: how long a load must last before scaling.
        max_ongoing_requests: requests one replica accepts at once (at least
            ``max_batch_size``, or batches could never fill).
        replica_cpus, replica_gpus: Ray resources of one replica; a GPU replica runs on CUDA.
        replica_resources: custom Ray resources of one replica, which pin replicas to the nodes
            offering them: ``{madis_eval: 1}`` in the paper profile (``cluster.yaml``'s
            eval/serve nodes); ``{}`` anywhere.
        torch_threads: intra-op threads of one replica (1 keeps replicas from fighting over
            cores on a small machine).

    Batching (``@serve.batch``):
        max_batch_size: requests decoded together in one ``generate`` call.
        batch_wait_s: longest wait for a batch to fill once its first request arrived, while
            the replica decodes another batch.
        batch_wait_idle_s: the same while the replica decodes nothing: a lone request then
            starts almost at once (at concurrency 1 the 20 ms of ``batch_wait_s`` were a sixth
            of the answer's time and a third of the first streamed motion's), while requests
            sent together still share a batch (0 split them: about 13% less throughput at
            concurrency 32 in ``benchmarks/bench_serve.py``). Equal to ``batch_wait_s``: one
            wait for every batch (``@serve.batch`` as Ray Serve has it).
        concurrent_batches: batches one replica decodes at once. Above 1 they take turns one
            UTC stage at a time, the least advanced first (:mod:`madis.serve.stage_gate`), so
            a request that arrives during another batch's decode gets its first motion
            (``POST /generate/stream``) after at most one of that batch's stages. 1: each
            batch runs to the end before the next starts. ``max_ongoing_requests`` must be at
            least ``max_batch_size * concurrent_batches``.

    Request limits (each violation is a 4xx with a JSON error):
        max_body_bytes: request body size.
        max_text_chars: characters of ``text`` (after stripping surrounding whitespace).
        max_num_steps: largest ``num_steps`` K a request may ask for (the smallest is the
            sampler's number of UTC stages; K is also capped at ``model.num_positions``).

    Rendering:
        gif_size: pixels of the square skeleton panel of ``?format=gif``.
    """

    run: str = ""
    checkpoint: str = ""
    poll_s: float = 10.0
    languages: list[str] = field(default_factory=list)

    host: str = "127.0.0.1"
    port: int = 8000
    proxy_location: str = "HeadOnly"
    app_name: str = "madis"
    route_prefix: str = "/"

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    max_ongoing_requests: int = 32
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    replica_resources: dict[str, float] = field(default_factory=dict)
    torch_threads: int = 1

    max_batch_size: int = 8
    batch_wait_s: float = 0.02
    batch_wait_idle_s: float = 0.005
    concurrent_batches: int = 2

    max_body_bytes: int = 16384
    max_text_chars: int = 500
    max_num_steps: int = 100

    gif_size: int = 256

    def __post_init__(self) -> None:
        check_bounds(self, "serve",
                     at_least_one=("max_replicas", "max_ongoing_requests", "max_batch_size",
                                   "max_body_bytes", "max_text_chars", "max_num_steps",
                                   "torch_threads", "gif_size", "concurrent_batches"),
                     non_negative=("batch_wait_s", "batch_wait_idle_s", "upscale_delay_s",
                                   "downscale_delay_s",
                                   "replica_cpus", "replica_gpus"),
                     positive=("poll_s", "target_ongoing_requests"))
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"serve.min_replicas must be in [0, max_replicas = "
                              f"{self.max_replicas}], got {self.min_replicas}")
        if self.max_ongoing_requests < self.max_batch_size * self.concurrent_batches:
            raise ConfigError(f"serve.max_ongoing_requests ({self.max_ongoing_requests}) must be "
                              f">= serve.max_batch_size x serve.concurrent_batches "
                              f"({self.max_batch_size} x {self.concurrent_batches}): a replica "
                              f"could never fill its batches")
        self.replica_resources = check_resources(self.replica_resources,
                                                 "serve.replica_resources")
        if self.proxy_location not in PROXY_LOCATIONS:
            raise ConfigError(f"serve.proxy_location must be one of {PROXY_LOCATIONS}, got "
                              f"{self.proxy_location!r}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port must be in 1..65535, got {self.port}")
        if not self.route_prefix.startswith("/"):
            raise ConfigError(f"serve.route_prefix must start with '/', got {self.route_prefix!r}")
        if not self.app_name:
            raise ConfigError("serve.app_name must not be empty")
        self.languages = [str(lang) for lang in self.languages]
