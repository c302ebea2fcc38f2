"""A deterministic state of every kind of array record, and the manifest the
writer makes of it (for tests/test_manifest_records.py: the encoding of the
typed records is byte-identical to the one of the dict records before them).
"""

from __future__ import annotations

import collections
import uuid

import numpy as np

from cloudckpt import __about__
from cloudckpt.format.shards import PerRank, ShardedArray

GOLDEN = "tests/data/manifests/multi-kind.json"


def golden_state() -> dict:
    full = np.arange(40.0, dtype="f4").reshape(8, 5)
    grid = ShardedArray((8, 5), full.dtype, [((0, 0), full[:4]), ((4, 0), full[4:])])
    uneven = ShardedArray((8, 5), full.dtype, [((0, 0), full[:3]), ((3, 0), full[3:])])
    point = collections.namedtuple("Point", ["x", "y"], module="_golden_state")
    big = np.arange(3000, dtype="<i8").reshape(30, 100)
    return {
        "model": {"w": big, "b": np.ones(7, ">f8"), "tied": big},
        "small": [np.arange(i, dtype="u2") for i in range(5)],
        "scalar": np.float32(1.5),
        "empty": np.zeros((0, 3), "f4"),
        "c": np.array([1 + 2j], "c8"),
        "grid": grid,
        "uneven": uneven,
        "rng": PerRank(np.arange(3)),
        "pt": point(1, 2.5),
        "meta": {"s": "x", 3: None, "f": float("nan"), "t": True},
    }


def golden_manifest_bytes() -> bytes:
    from cloudckpt.format.tensor_store import StoreOptions
    from cloudckpt.layout.checkpoint_io import write_checkpoint
    from cloudckpt.storage import open_storage

    storage = open_storage(f"memory://golden-manifest-{uuid.uuid4().hex}")
    saved = __about__.__version__
    __about__.__version__ = "0.0.0-golden"
    try:
        write_checkpoint(
            storage, golden_state(), checkpoint_number=7, epoch=3, metadata={"step": 7},
            options=StoreOptions(pack_threshold=100, chunk_bytes=4096), attempt="0123456789abcdef",
            created=1796608129.5, check_exists=False, writer_extra={"seq": 2},
        )
    finally:
        __about__.__version__ = saved
    return storage.read("manifest.json")
