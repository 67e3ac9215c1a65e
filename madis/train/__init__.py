"""The one training loop every job shares (Ray Train workers driving a DeepSpeed engine).

Ray-free pieces (``TrainConfig``, ``Task``, the checkpoint readers) import eagerly, so model
packages can implement a :class:`Task` without importing Ray; ``fit`` and the worker function
load Ray on first use.
"""

from madis.train.checkpoints import (
    CheckpointInfo, latest_checkpoint, list_checkpoints, read_metadata, write_report,
)
from madis.train.config import TrainConfig, train_config
from madis.train.task import Task
from madis.utils.lazy import lazy_exports

__getattr__, _, _LAZY = lazy_exports(__name__, {"loop": (
    "fit", "FitResult", "NonFiniteLossError", "TrainState", "train_worker", "deepspeed_config",
    "total_steps", "run_on_worker")})

__all__ = sorted({"CheckpointInfo", "Task", "TrainConfig", "latest_checkpoint",
                  "list_checkpoints", "read_metadata", "train_config", "write_report",
                  *_LAZY})
