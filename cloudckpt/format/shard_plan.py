"""Planning sharded arrays: the layout and write jobs of a ShardedArray leaf.

A :class:`~cloudckpt.format.shards.ShardedArray` leaf becomes one global
zarr array whose regular chunk grid tiles every shard exactly
(:func:`~cloudckpt.format.shards.grid_for`), so each chunk object is written by a
rank that holds its shard, straight from that shard's memory when the
chunk is a contiguous run of it. Where no such grid exists (nested or
uneven shardings), each shard is its own zarr array ``<node>/_s<k>``, listed
in the manifest record with its offset. Reading is :mod:`cloudckpt.format.regions`.

Example:
    >>> import numpy as np
    >>> from cloudckpt.storage import open_storage
    >>> from cloudckpt.format.tree import flatten
    >>> from cloudckpt.format.shards import ShardedArray
    >>> full = np.arange(40.0).reshape(8, 5)
    >>> sa = ShardedArray((8, 5), full.dtype, [((0, 0), full[:3]), ((3, 0), full[3:])])
    >>> _, leaves = flatten({"w": sa})
    >>> plan = plan_sharded(open_storage("memory://doc-shard-plan"), "d", leaves[0], "w", 1 << 20)
    >>> [s.path for s in plan.record.shards], len(plan.jobs)
    (['w/_s0', 'w/_s1'], 2)
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudckpt.format.chunking import chunk_layout
from cloudckpt.format.dtypes import dtype_name, storage_dtype, stored_view
from cloudckpt.format.object_io import flat_bytes
from cloudckpt.format.records import ChunkedRecord, Shard, ShardedRecord
from cloudckpt.format.reuse import ObjectSink
from cloudckpt.format.shards import Cell, cells, grid_for, partition_problem
from cloudckpt.format.tree import Leaf, format_path
from cloudckpt.format.zarr_meta import array_doc
from cloudckpt.storage import Storage

if TYPE_CHECKING:
    from cloudckpt.format.manifest_types import ObjectEntry

__all__ = ["ShardedPlan", "plan_sharded", "PutObject"]

#: Places one object of a save (key, buffers back to back) and returns its manifest entry.
PutObject = Callable[[str, Sequence[Any]], "ObjectEntry"]


@dataclass
class ShardedPlan:
    """How one sharded leaf is stored: its manifest record (object ranges
    relative to the leaf's first object), its zarr documents by node path,
    the groups above them, and one write job per chunk object:
    ``(call, bytes, ranks that may write it)``."""

    record: ChunkedRecord | ShardedRecord
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    jobs: list[tuple[Callable[[], tuple[ObjectEntry, dict[int, int]]], int, tuple[int, ...]]] = field(default_factory=list)


def _parents(node: str) -> set[str]:
    parts = node.split("/")
    return {"/".join(parts[:d]) for d in range(1, len(parts))}


def _cell_job(
    storage: Storage, put: PutObject, prefix: str, cell: Cell, box_offset: tuple[int, ...], pieces: Mapping[tuple[int, ...], np.ndarray], sdt: np.dtype
) -> Callable[[], tuple[ObjectEntry, dict[int, int]]]:
    key = f"{prefix}/{cell.key}"

    def run() -> tuple[ObjectEntry, dict[int, int]]:
        data = pieces.get(box_offset)
        if data is None:
            raise AssertionError(f"{storage.url_for(key)}: this process was given a chunk of a shard it does not hold")
        index = tuple(slice(c - b, c - b + n) for c, b, n in zip(cell.offset, box_offset, cell.shape, strict=True))
        part = data[index]
        if cell.shape == cell.chunk:
            view = flat_bytes(part)  # a view when the chunk is a contiguous run of the shard
        else:  # an edge chunk: zarr stores it padded to the full chunk shape
            full = np.zeros(cell.chunk, sdt)
            full[tuple(slice(0, n) for n in cell.shape)] = stored_view(part)
            view = memoryview(full.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        return put(key, [view]), {}

    return run


def plan_sharded(storage: Storage, prefix: str, leaf: Leaf, node: str, target: int, put: PutObject | None = None) -> ShardedPlan:
    """The layout and write jobs of a sharded leaf stored at zarr node ``node``.

    The jobs place their objects with ``put`` (by default a plain write to ``storage``).

    Every rank plans the same (from the same ``leaf.shards.boxes``); each
    job names the ranks holding its bytes.
    """
    sa = leaf.shards
    if put is None:
        put = ObjectSink(storage, None).put
    assert sa is not None
    shape = sa.shape
    sdt = storage_dtype(sa.dtype)
    boxes = sa.boxes or {b: (0,) for b in sa.local_boxes()}
    live = {b: tuple(r) for b, r in boxes.items() if math.prod(b[1]) > 0}
    if not shape:
        live = {b: tuple(r) for b, r in boxes.items()}
    problem = partition_problem(shape, list(live))
    if problem:
        raise ValueError(
            f"sharded array {format_path(leaf.path)} of shape {shape}: {problem}; the pieces of all "
            "processes together must cover the array exactly (a box held by several processes counts once)"
        )
    pieces = {o: d for o, d in sa.pieces}
    attrs: dict[str, Any] = {"cloudckpt": {"path": [*leaf.path], "dtype": dtype_name(sa.dtype)}}
    chunk = grid_for(shape, list(live), sdt.itemsize, target)
    arr = leaf.array
    head = (dtype_name(arr.dtype), tuple(arr.shape), int(arr.nbytes))
    if chunk is not None:
        rec = ChunkedRecord(*head, node, tuple(chunk), None, (0, 0))
        plan = ShardedPlan(record=rec, groups=_parents(node))
        plan.docs[node] = array_doc(sdt, shape, chunk, attrs)
        by_offset = {o: (s, r) for (o, s), r in live.items()}
        starts = [sorted({o[d] for o in by_offset}) for d in range(len(shape))]
        nbytes = math.prod(chunk) * sdt.itemsize
        for cell in cells(rec, shape):
            box_offset = tuple(st[bisect_right(st, c) - 1] for st, c in zip(starts, cell.offset, strict=True))
            holders = by_offset[box_offset][1]
            plan.jobs.append((_cell_job(storage, put, prefix, cell, box_offset, pieces, sdt), nbytes, holders))
        return plan
    shards: list[Shard] = []
    jobs: list[tuple[Callable[[], tuple[ObjectEntry, dict[int, int]]], int, tuple[int, ...]]] = []
    docs: dict[str, dict[str, Any]] = {}
    pos = 0
    for k, ((offset, bshape), holders) in enumerate(sorted(live.items())):
        path = f"{node}/_s{k}"
        bchunk, axis = chunk_layout(bshape, sdt.itemsize, target)
        sattrs = {"cloudckpt": {**attrs["cloudckpt"], "offset": list(offset), "global_shape": list(shape)}}
        docs[path] = array_doc(sdt, bshape, bchunk, sattrs)
        shard = Shard(path, tuple(offset), tuple(bshape), tuple(bchunk), axis, (pos, pos))
        shard_cells = cells(ShardedRecord(*head, (shard,)), shape)
        shards.append(Shard(path, tuple(offset), tuple(bshape), tuple(bchunk), axis, (pos, pos + len(shard_cells))))
        nbytes = math.prod(bchunk) * sdt.itemsize
        for cell in shard_cells:
            jobs.append((_cell_job(storage, put, prefix, cell, offset, pieces, sdt), nbytes, holders))
        pos += len(shard_cells)
    return ShardedPlan(ShardedRecord(*head, tuple(shards)), docs, _parents(node) | {node}, jobs)
