"""The ``data`` config section (``configs/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Where the shards are and how they are read.

    Attributes:
        shards: shard root the jobs read: a local directory, ``file://...`` or
            ``s3://bucket/prefix`` (endpoint from ``AWS_ENDPOINT_URL``).
        upload_url: where the embedded default (``madis data roundtrip``) uploads the sample
            shards on its local S3 server.
        shuffle_buffer: samples held by the reader's shuffle buffer (per rank), passed to
            :func:`madis.data.shards.iter_batches`.
    """

    shards: str = "shards"
    upload_url: str = "s3://madis-sample/keypoints"
    shuffle_buffer: int = 256
