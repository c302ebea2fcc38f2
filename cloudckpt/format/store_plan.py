"""Planning a save of the tensor store: records, zarr documents and the objects to write (no I/O).

Every process of a job plans the same layout from the same leaves, so the
plan is the agreement on which object is which: the zarr documents first
(root group first), then the pack's objects, then every other array's chunk
objects in leaf order. Object ranges of the records are filled in by the
writer once the objects are numbered (:func:`place_objects`).

Example:
    >>> import numpy as np
    >>> from cloudckpt.storage import open_storage
    >>> from cloudckpt.format.tree import flatten
    >>> _, leaves = flatten({"a": np.zeros(2), "b": np.zeros(1000)})
    >>> plan = plan_store(open_storage("memory://doc-plan"), "d", leaves, StoreOptions(pack_threshold=100))
    >>> [type(r).__name__ for r in plan.records], plan.counts
    (['PackedRecord', 'ChunkedRecord'], [0, 1])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudckpt.format.chunking import PAGE, Chunk, chunk_layout, chunks_of
from cloudckpt.format.dtypes import dtype_name, storage_dtype, storage_shape
from cloudckpt.format.records import ArrayRecord, ChunkedRecord, PackedRecord, PackRecord, ShardedRecord
from cloudckpt.format.shard_plan import PutObject, plan_sharded
from cloudckpt.format.tensor_store import PACK_NODE, MiB, StoreOptions
from cloudckpt.format.tree import Leaf
from cloudckpt.format.zarr_meta import array_doc, group_doc
from cloudckpt.storage import Storage

if TYPE_CHECKING:
    from cloudckpt.format.manifest_types import ObjectEntry

__all__ = ["Job", "StorePlan", "plan_store", "place_objects"]

_PACK_PIECES = 8  # on object stores, the pack is split into up to this many objects ...
_MIN_PACK_PIECE = 4 * MiB  # ... of at least this size (see _pack_chunk_bytes)
_MAX_PACK_PIECE = 8 * MiB  # and of at most this size everywhere: a changed small tensor resends at most this much

#: What writing one object returns: its manifest entry, and the crc32c of
#: the packed tensors that start in it (by leaf index).
JobResult = tuple["ObjectEntry", dict[int, int]]


@dataclass(slots=True)
class Job:
    """One object to write: the call that writes it, its size, and the ranks
    that may write it (None: any).

    Example:
        >>> Job(lambda: ({"key": "k", "size": 0, "crc32c": 0}, {}), 0, None).size
        0
    """

    run: Callable[[], JobResult]
    size: int
    cands: tuple[int, ...] | None


@dataclass
class StorePlan:
    """The layout of a save (see the module doc).

    ``records``: one per leaf, object ranges still relative (0 for a chunked
    array, relative to the leaf's first object for a per-shard one);
    ``counts``: the number of objects of each record (0 for packed ones);
    ``docs``: the zarr documents by key, root first; ``chunks``: the chunk
    objects of the arrays in order, as ``(leaf index, chunk)`` or, for a
    sharded leaf, a ready :class:`Job`; ``packed``: ``(leaf index, offset,
    nbytes)`` of the packed tensors; ``pack_chunks``: ``(start, size)`` of the
    pack's objects.

    Example:
        >>> StorePlan().pack is None
        True
    """

    records: list[ArrayRecord] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    docs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    chunks: list[tuple[int, Chunk] | Job] = field(default_factory=list)
    packed: list[tuple[int, int, int]] = field(default_factory=list)
    pack: PackRecord | None = None
    pack_chunks: list[tuple[int, int]] = field(default_factory=list)
    nbytes: int = 0
    _consolidated: dict[str, dict[str, Any]] = field(default_factory=dict)
    _groups: set[str] = field(default_factory=set)


def _parents(node: str) -> set[str]:
    parts = node.split("/")
    return {"/".join(parts[:d]) for d in range(1, len(parts))}


def _add_doc(plan: StorePlan, node: str, doc: dict[str, Any]) -> None:
    plan._consolidated[node] = doc
    plan.docs.append((f"{node}/zarr.json", doc))


def _plan_chunked(plan: StorePlan, i: int, leaf: Leaf, node: str, target: int) -> None:
    arr = leaf.array
    dt = arr.dtype
    sdt = storage_dtype(dt)
    sshape = storage_shape(dt, arr.shape)
    chunk, k = chunk_layout(sshape, sdt.itemsize, target)
    attrs: dict[str, Any] = {"cloudckpt": {"path": [*leaf.path], "dtype": dtype_name(dt)}}
    _add_doc(plan, node, array_doc(sdt, sshape, chunk, attrs))
    plan._groups.update(_parents(node))
    chunks = chunks_of(sshape, sdt.itemsize, chunk, k, node)
    plan.records.append(ChunkedRecord(dtype_name(dt), tuple(arr.shape), int(arr.nbytes), node, chunk, k, (0, 0)))
    plan.counts.append(len(chunks))
    plan.chunks.extend((i, c) for c in chunks)


def plan_store(
    storage: Storage,
    prefix: str,
    leaves: Sequence[Leaf],
    opts: StoreOptions,
    node_paths: Sequence[str] | None = None,
    put: PutObject | None = None,
) -> StorePlan:
    """The layout of ``leaves`` stored under ``prefix`` (see the module example).

    ``node_paths[i]`` is the zarr node of leaf ``i`` when it is stored as its
    own array (default ``a<i>``). The jobs of sharded leaves place their
    objects with ``put`` (:meth:`cloudckpt.format.reuse.ObjectSink.put`; by
    default one that writes to ``storage``).
    """
    if node_paths is None:
        node_paths = [f"a{i}" for i in range(len(leaves))]
    plan = StorePlan()
    for i, leaf in enumerate(leaves):
        arr = leaf.array
        nbytes = int(arr.nbytes)
        plan.nbytes += nbytes
        if leaf.shards is not None:
            sp = plan_sharded(storage, prefix, leaf, node_paths[i], opts.chunk_bytes, put)
            for node, doc in sp.docs.items():
                _add_doc(plan, node, doc)
            plan._groups.update(sp.groups)
            plan.records.append(sp.record)
            plan.counts.append(len(sp.jobs))
            plan.chunks.extend(Job(run, size, cands) for run, size, cands in sp.jobs)
        elif nbytes < opts.pack_threshold and not leaf.per_rank:
            plan.records.append(PackedRecord(dtype_name(arr.dtype), tuple(arr.shape), nbytes, 0, None))
            plan.counts.append(0)
            plan.packed.append((i, 0, nbytes))
        else:
            _plan_chunked(plan, i, leaf, node_paths[i], opts.chunk_bytes)
    pack_len = _place_packed(plan)
    if plan.packed:
        _plan_pack(plan, storage, leaves, pack_len, opts.chunk_bytes)
    _plan_groups(plan)
    return plan


def _place_packed(plan: StorePlan) -> int:
    """Give the packed tensors their offsets in the pack, largest first (ties
    in leaf order), and return the pack's length.

    The order depends only on the tensors' sizes, never on their values, so
    every save of a state of the same structure places every tensor at the
    same offset; and it isolates change: what changes between two saves of a
    training state is, typically, whole groups of tensors of one shape (the
    adapters of a fine-tuning run and their optimizer moments, all small),
    while the frozen tensors of other shapes (large projection matrices,
    norms, biases) keep their pack objects unchanged, byte for byte.
    """
    order = sorted(plan.packed, key=lambda p: (-p[2], p[0]))
    placed: list[tuple[int, int, int]] = []
    pos = 0
    for i, _, nbytes in order:
        placed.append((i, pos, nbytes))
        rec = plan.records[i]
        assert isinstance(rec, PackedRecord)
        rec.offset = pos
        pos += nbytes
    plan.packed = placed
    return pos


def _pack_chunk_bytes(storage: Storage, pack_len: int, chunk_bytes: int) -> int:
    """The size of the pack's objects.

    At most ``_MAX_PACK_PIECE`` (or ``chunk_bytes`` if smaller): an
    incremental save resends a whole pack object when one tensor in it
    changes, so the bound on its size bounds what a small change costs. The
    layout depends only on the packed tensors' sizes in order, so two saves
    of a state of the same structure place every tensor at the same offset.
    """
    m = max(1, math.ceil(pack_len / chunk_bytes), math.ceil(pack_len / (_MAX_PACK_PIECE - PAGE)))
    if storage.capabilities.remote:
        # Object stores: a request's speed is bounded per connection, so a
        # pack of a few chunk_bytes objects would move on a few connections.
        # Split it into up to min(8, max_concurrency) objects of at least
        # _MIN_PACK_PIECE: a few more requests (at most 8) buy parallel transfers.
        m = max(m, min(_PACK_PIECES, storage.max_concurrency, math.ceil(pack_len / _MIN_PACK_PIECE)))
    csize = max(1, math.ceil(pack_len / m)) if pack_len else 1
    if m > 1 and csize >= 100 * PAGE:
        # whole pages (at most 1% more): tensors keep their alignment in
        # every object, and the objects can be mapped back to back
        csize = -(-csize // PAGE) * PAGE
    return csize


def _plan_pack(plan: StorePlan, storage: Storage, leaves: Sequence[Leaf], pack_len: int, chunk_bytes: int) -> None:
    csize = _pack_chunk_bytes(storage, pack_len, chunk_bytes)
    nchunks = math.ceil(pack_len / csize) if pack_len else 0
    plan.pack_chunks = [(j * csize, csize) for j in range(nchunks)]
    recs = plan.records
    table = [
        {"path": [*leaves[i].path], "offset": off, "nbytes": nb, "dtype": recs[i].dtype, "shape": list(recs[i].shape)}
        for i, off, nb in plan.packed
    ]
    attrs = {"cloudckpt": {"packed": table}}
    _add_doc(plan, PACK_NODE, array_doc(np.dtype("u1"), (nchunks * csize if pack_len else 0,), (csize,), attrs))
    plan.pack = PackRecord(PACK_NODE, pack_len, csize, (0, 0))


def _plan_groups(plan: StorePlan) -> None:
    """The zarr groups above the arrays, and the root group with the consolidated metadata, first."""
    for g in sorted(plan._groups):
        gdoc = group_doc({})
        gdoc["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
        plan._consolidated[g] = gdoc
        plan.docs.append((f"{g}/zarr.json", group_doc({})))
    note = {"cloudckpt": {"format": "cloudckpt", "note": "tensor data of a cloudckpt checkpoint; see its manifest.json"}}
    plan.docs.insert(0, ("zarr.json", group_doc(note, dict(sorted(plan._consolidated.items())))))


def place_objects(plan: StorePlan) -> tuple[list[ArrayRecord], PackRecord | None]:
    """The records and the pack with their object ranges in the manifest's
    object list: the documents first, then the pack's objects, then every
    array's chunk objects in order.

    Example:
        >>> plan = StorePlan(records=[ChunkedRecord("<f4", (2,), 8, "w", (2,), 0, (0, 0))], counts=[1], docs=[("zarr.json", {})])
        >>> place_objects(plan)[0][0].objects
        (1, 2)
    """
    pos = len(plan.docs)
    pack = plan.pack
    if pack is not None:
        pack = replace(pack, objects=(pos, pos + len(plan.pack_chunks)))
        pos += len(plan.pack_chunks)
    out: list[ArrayRecord] = []
    for rec, n in zip(plan.records, plan.counts, strict=True):
        if isinstance(rec, ChunkedRecord):
            rec = replace(rec, objects=(pos, pos + n))
        elif isinstance(rec, ShardedRecord):
            shards = tuple(replace(sh, objects=(pos + sh.objects[0], pos + sh.objects[1])) for sh in rec.shards)
            rec = replace(rec, shards=shards)
        out.append(rec)
        pos += n
    return out, pack
