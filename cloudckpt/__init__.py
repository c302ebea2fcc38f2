"""cloudckpt: fast, crash-safe training checkpoints on any fsspec URL.

Tensors are stored in a zarr v3 group; a create-only ``manifest.json``
written last is the commit, so a checkpoint is either whole or invisible on
local disk, ``memory://``, S3 and GCS (what the test suite checks), and on
any other fsspec backend whose create-only write is atomic (untested).

Example:
    >>> import numpy as np, cloudckpt
    >>> url = cloudckpt.save("memory://doc-pkg/ckpt-1", {"w": np.ones(2)})
    >>> cloudckpt.load(url)["w"]
    array([1., 1.])
"""

from cloudckpt import frameworks  # torch/jax support: registers itself lazily, imports no framework
from cloudckpt.__about__ import __version__
from cloudckpt.api import CheckpointInfo, info, load, save
from cloudckpt.checkpoint import Checkpoint
from cloudckpt.distributed.group import SINGLE as SINGLE_PROCESS
from cloudckpt.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FormatVersionError,
    ObjectNotFoundError,
    OversizedObjectError,
    OwnershipLostError,
    StorageError,
    StoragePermissionError,
    TruncatedObjectError,
    WeakCommitWarning,
)
from cloudckpt.format.shards import PerRank, ShardedArray
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.manager.checkpoint_manager import CheckpointManager, latest_checkpoint
from cloudckpt.manager.preemption import PreemptionCheckpointHandler
from cloudckpt.tools.copy import CopyReport, copy
from cloudckpt.tools.verify import VerifyReport, verify

__all__ = [
    "__version__",
    "save",
    "load",
    "info",
    "CheckpointInfo",
    "copy",
    "CopyReport",
    "verify",
    "VerifyReport",
    "Checkpoint",
    "CheckpointManager",
    "latest_checkpoint",
    "PreemptionCheckpointHandler",
    "PerRank",
    "ShardedArray",
    "SINGLE_PROCESS",
    "StoreOptions",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "FormatVersionError",
    "ObjectNotFoundError",
    "OwnershipLostError",
    "StorageError",
    "StoragePermissionError",
    "TruncatedObjectError",
    "OversizedObjectError",
    "WeakCommitWarning",
    "frameworks",
]
