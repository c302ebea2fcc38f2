"""Writing sharded arrays and reading regions of stored arrays.

Writing: a :class:`~cloudckpt.format.shards.ShardedArray` leaf becomes one global
zarr array whose regular chunk grid tiles every shard exactly
(:func:`~cloudckpt.format.shards.grid_for`), so each chunk object is written by a
rank that holds its shard, straight from that shard's memory when the
chunk is a contiguous run of it. Where no such grid exists (nested or
uneven shardings), each shard is its own zarr array ``<node>/_s<k>``, listed
in the manifest record with its offset.

Reading: :func:`read_regions` fills boxes of stored arrays (any layout:
dense chunked, grid, per-shard, packed), reading only the byte ranges of the
chunk objects that intersect each box. A chunk read whole is checked
against its crc32c; a part of a chunk cannot be (verify the whole checkpoint
with ``cloudckpt verify``).

Example:
    >>> import numpy as np
    >>> from cloudckpt.storage import open_storage
    >>> from cloudckpt.format.tree import flatten
    >>> from cloudckpt.format.store_write import write_arrays
    >>> from cloudckpt.format.tensor_store import StoreOptions
    >>> from cloudckpt.format.shards import ShardedArray
    >>> full = np.arange(40.0).reshape(8, 5)
    >>> sa = ShardedArray((8, 5), full.dtype, [((0, 0), full[:4]), ((4, 0), full[4:])])
    >>> s = open_storage("memory://doc-shard-io")
    >>> _, leaves = flatten({"w": sa})
    >>> w = write_arrays(s, "d", leaves, StoreOptions(pack_threshold=0))
    >>> w.records[0].chunk_shape
    (4, 5)
    >>> got = read_regions(s, w.records, w.objects, {0: [((2, 1), (4, 3))]})
    >>> np.array_equal(got[0].pieces[0][1], full[2:6, 1:4])
    True
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudckpt.errors import CorruptCheckpointError
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.format.chunking import chunk_layout
from cloudckpt.format.dtypes import dtype_name, parse_dtype, storage_dtype, storage_shape, stored_view, to_little
from cloudckpt.format.object_io import corrupt, flat_bytes, read_into
from cloudckpt.format.records import (
    ArrayRecord,
    ChunkedRecord,
    PackedRecord,
    PackRecord,
    Shard,
    ShardedRecord,
    pack_from_json,
    records_from_json,
)
from cloudckpt.format.shards import Box, Cell, ShardedArray, cells, grid_for, intersect, partition_problem
from cloudckpt.format.store_read import read_arrays
from cloudckpt.format.tree import Leaf, format_path
from cloudckpt.format.zarr_meta import array_doc
from cloudckpt.storage import Storage

if TYPE_CHECKING:
    from cloudckpt.format.manifest_types import ObjectEntry

__all__ = ["ShardedPlan", "plan_sharded", "read_regions"]


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
    storage: Storage, prefix: str, cell: Cell, box_offset: tuple[int, ...], pieces: Mapping[tuple[int, ...], np.ndarray], sdt: np.dtype
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
        crc = crc32c_of(view)
        storage.write(key, [view])
        return {"key": key, "size": view.nbytes, "crc32c": crc}, {}

    return run


def plan_sharded(storage: Storage, prefix: str, leaf: Leaf, node: str, target: int) -> ShardedPlan:
    """The layout and write jobs of a sharded leaf stored at zarr node ``node``.

    Every rank plans the same (from the same ``leaf.shards.boxes``); each
    job names the ranks holding its bytes.
    """
    sa = leaf.shards
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
            plan.jobs.append((_cell_job(storage, prefix, cell, box_offset, pieces, sdt), nbytes, holders))
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
            jobs.append((_cell_job(storage, prefix, cell, offset, pieces, sdt), nbytes, holders))
        pos += len(shard_cells)
    return ShardedPlan(ShardedRecord(*head, tuple(shards)), docs, _parents(node) | {node}, jobs)


def _region_task(
    storage: Storage, obj: ObjectEntry, cell: Cell, want: Box, dest: np.ndarray
) -> Callable[[], None]:
    key = obj["key"]
    itemsize = dest.dtype.itemsize
    csize = math.prod(cell.chunk) * itemsize

    def run() -> None:
        if obj["size"] != csize:
            raise CorruptCheckpointError(
                f"manifest of {storage.url}: object {key} declares {obj['size']} bytes, the array layout needs {csize}"
            )
        inter = intersect((cell.offset, cell.shape), want)
        assert inter is not None
        io, ish = inter
        in_dest = tuple(slice(i - w, i - w + n) for i, w, n in zip(io, want[0], ish, strict=True))
        rel = tuple(i - c for i, c in zip(io, cell.offset, strict=True))
        strides = [1] * len(cell.chunk)
        for d in range(len(cell.chunk) - 2, -1, -1):
            strides[d] = strides[d + 1] * cell.chunk[d + 1]
        first = sum(r * s for r, s in zip(rel, strides, strict=True))
        last = first + sum((n - 1) * s for n, s in zip(ish, strides, strict=True))
        lo, hi = first * itemsize, (last + 1) * itemsize
        if tuple(ish) == tuple(cell.shape):
            # every element of the chunk is wanted: read the object whole (with
            # an edge chunk's padding) so that its crc32c is checked
            lo, hi = 0, csize
        n_inter = math.prod(ish) * itemsize
        dview = dest[in_dest] if in_dest else dest[...]  # (dest[()] of a 0-d array is a copy)
        if hi - lo == n_inter and dview.flags.c_contiguous:
            out = memoryview(dview.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            read_into(storage, key, out, lo)
            got_view: Any = out
        else:
            buf = np.empty(hi - lo, np.uint8)
            got_view = memoryview(buf)  # type: ignore[arg-type]
            read_into(storage, key, got_view, lo)
            elems = buf.view(dest.dtype)[first - lo // itemsize :]
            src = np.lib.stride_tricks.as_strided(elems, shape=ish, strides=[s * itemsize for s in strides])
            dview[...] = src
        if lo == 0 and hi == csize:
            got = crc32c_of(got_view)
            if got != obj["crc32c"]:
                raise corrupt(storage, key, f"crc32c mismatch (expected {obj['crc32c']}, got {got})")

    return run


def read_regions(
    storage: Storage,
    records: Sequence[ArrayRecord | Mapping[str, Any]],
    objects: Sequence[ObjectEntry],
    wants: Mapping[int, Sequence[Box]],
    *,
    prefix: str = "",
    pack: PackRecord | Mapping[str, Any] | None = None,
    where: Callable[[int], str] | None = None,
) -> dict[int, ShardedArray]:
    """Read boxes of stored arrays: ``wants[i]`` lists the boxes of array
    ``i`` (indices into ``records``). Returns, per array, a ShardedArray whose
    pieces are those boxes. Reads only the intersecting byte ranges; packed
    tensors (small) are read whole and sliced.

    Raises ValueError for a box outside its array and
    :class:`~cloudckpt.CorruptCheckpointError` naming a damaged object.
    """
    describe = where or (lambda i: f"#{i}")
    recs = records_from_json(records)
    out: dict[int, ShardedArray] = {}
    tasks: list[Callable[[], None]] = []
    packed = [i for i in wants if isinstance(recs[i], PackedRecord)]
    whole = read_arrays(storage, prefix, recs, pack_from_json(pack), objects, packed) if packed else {}
    for i, boxes in wants.items():
        rec = recs[i]
        dt = parse_dtype(rec.dtype)
        shape = rec.shape
        pieces: list[tuple[tuple[int, ...], np.ndarray]] = []
        for offset, bshape in boxes:
            offset, bshape = tuple(offset), tuple(bshape)
            if len(offset) != len(shape) or any(
                o < 0 or n < 0 or o + n > d for o, n, d in zip(offset, bshape, shape, strict=True)
            ):
                raise ValueError(f"array {describe(i)} of {storage.url} has shape {shape}: no region {bshape} at {offset} in it")
            if i in whole:
                index: tuple[Any, ...] = (*(slice(o, o + n) for o, n in zip(offset, bshape, strict=True)), ...)  # a 0-d view, not a scalar
                pieces.append((offset, whole[i][index]))
                continue
            if storage_shape(dt, shape) != shape:
                raise ValueError(f"array {describe(i)} of {storage.url} has dtype {dt}: regions of it cannot be read")
            try:
                dest = np.empty(bshape, to_little(dt))
            except (MemoryError, ValueError) as exc:
                raise CorruptCheckpointError(
                    f"array {describe(i)} of {storage.url}: cannot allocate shape {bshape} dtype {dt}: {exc}"
                ) from None
            pieces.append((offset, dest))
            if math.prod(bshape) == 0 and shape:
                continue
            assert not isinstance(rec, PackedRecord)
            for cell in cells(rec, shape, (offset, bshape)):
                tasks.append(_region_task(storage, objects[cell.obj], cell, (offset, bshape), dest))
        out[i] = ShardedArray(shape, to_little(dt), pieces)
    storage.map(lambda t: t(), tasks, limit=storage.max_concurrency)
    for i, sa in out.items():
        dt = parse_dtype(recs[i].dtype)
        if sa.dtype != dt:
            out[i] = ShardedArray(sa.shape, dt, [(o, d.astype(dt)) for o, d in sa.pieces])
    return out
