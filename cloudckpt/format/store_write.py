"""The write path of the tensor store: array leaves -> zarr chunk objects.

:func:`write_arrays` plans the layout (:mod:`cloudckpt.format.store_plan`),
writes this process's share of the objects concurrently, straight from the
arrays' memory where the backend allows, and returns the records for the
manifest.

Example:
    >>> import numpy as np
    >>> from cloudckpt.storage import open_storage
    >>> from cloudckpt.format.tree import flatten
    >>> _, leaves = flatten({"w": np.arange(4.0)})
    >>> w = write_arrays(open_storage("memory://doc-store-write"), "d", leaves)
    >>> w.records[0].crc32c is not None, len(w.objects)
    (True, 3)
"""

from __future__ import annotations

import contextlib
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudckpt.format.budget import ByteBudget
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.format.chunking import Chunk
from cloudckpt.format.object_io import flat_bytes
from cloudckpt.format.records import ArrayRecord, PackedRecord, PackRecord
from cloudckpt.format.reuse import BaseObjects, ObjectSink
from cloudckpt.format.store_plan import Job, JobResult, StorePlan, place_objects, plan_store
from cloudckpt.format.tensor_store import PACK_NODE, StoreOptions, check_options
from cloudckpt.format.tree import Leaf
from cloudckpt.format.zarr_meta import encode_doc
from cloudckpt.storage import Storage

if TYPE_CHECKING:
    from cloudckpt.format.manifest_types import ObjectEntry

__all__ = ["WrittenArrays", "write_arrays", "fill_packed_crcs", "assign_owners"]


@dataclass
class WrittenArrays:
    """What :func:`write_arrays` wrote: per-array records and the object list for the manifest.

    Example:
        >>> WrittenArrays([], None, []).nbytes
        0
    """

    records: list[ArrayRecord]
    pack: PackRecord | None
    objects: list[ObjectEntry | None]  # None: an object another rank writes
    nbytes: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    tensor_crcs: dict[int, int] = field(default_factory=dict)  # packed tensors whose chunk this process wrote
    copied_bytes: int = 0  # bytes placed by a copy from the base (incremental saves), not sent


def write_arrays(
    storage: Storage,
    prefix: str,
    leaves: Sequence[Leaf],
    options: StoreOptions | None = None,
    *,
    node_paths: Sequence[str] | None = None,
    holders: Sequence[tuple[int, ...] | None] | None = None,
    rank: int = 0,
    world: int = 1,
    base: BaseObjects | None = None,
) -> WrittenArrays:
    """Write ``leaves`` as a zarr v3 group under ``prefix`` of ``storage``.

    ``node_paths[i]`` is the zarr node path of leaf ``i`` (used when it is
    stored as its own array). Returns the records for the manifest. Writes
    are concurrent (bounded by the storage's limit and, on object stores, by
    ``buffer_bytes``); the caller commits afterwards.

    In a job of ``world`` processes, every process plans the same layout and
    writes only its share of the objects (``rank``): each object goes to one
    of the ranks that hold its bytes (``holders[i]``, None for every rank;
    a sharded leaf's boxes name theirs), balanced by bytes. ``objects``
    then has None for the objects of other ranks, and ``tensor_crcs`` holds
    the crc32c of the packed tensors this process wrote; the caller gathers
    them and fills in the records with :func:`fill_packed_crcs`.

    ``base``: the objects of a previous checkpoint on this store; an object
    holding the same bytes as one of them is copied inside the store instead
    of sent (:mod:`cloudckpt.format.reuse`).
    See the module example.
    """
    opts = check_options(options)
    sink = ObjectSink(storage, base)
    plan = plan_store(storage, prefix, leaves, opts, node_paths, put=sink.put)
    # On backends whose write holds a copy of its data in flight (memory://:
    # one bytes per object), those copies are bounded by ``buffer_bytes``;
    # local disk, S3 and GCS send straight from the arrays, so only the
    # storage's concurrency bounds them.
    budget = ByteBudget(opts.buffer_bytes) if storage.capabilities.write_copies else None
    jobs = _jobs(sink, prefix, leaves, plan, budget, holders)
    mine = [True] * len(jobs) if world == 1 else [o == rank for o in assign_owners(jobs, world)]
    mine_jobs = [job for job, m in zip(jobs, mine, strict=True) if m]
    results = iter(storage.map(lambda job: job.run(), mine_jobs, limit=storage.max_concurrency))

    objects: list[ObjectEntry | None] = []
    # zero-byte packed tensors at the very end of the pack have no chunk
    tensor_crc: dict[int, int] = {i: 0 for i, _, nb in plan.packed if nb == 0}
    for m in mine:
        if not m:
            objects.append(None)
            continue
        obj, crcs = next(results)
        objects.append(obj)
        tensor_crc.update(crcs)
    records, pack = place_objects(plan)
    if world == 1:
        fill_packed_crcs(records, tensor_crc)
    return WrittenArrays(
        records, pack, objects, plan.nbytes, storage.stats.snapshot(), tensor_crc, sink.copied_bytes
    )


def _jobs(
    sink: ObjectSink,
    prefix: str,
    leaves: Sequence[Leaf],
    plan: StorePlan,
    budget: ByteBudget | None,
    holders: Sequence[tuple[int, ...] | None] | None,
) -> list[Job]:
    """One job per object, in the order of the manifest's object list (see :func:`place_objects`)."""
    jobs = [Job(_doc_job(sink, f"{prefix}/{key}", doc), 1024, None) for key, doc in plan.docs]
    starts = [off for _, off, _ in plan.packed]
    for j, (start, size) in enumerate(plan.pack_chunks):
        key = f"{prefix}/{PACK_NODE}/c/{j}"
        jobs.append(Job(_pack_chunk_job(sink, key, start, size, plan.packed, starts, leaves, budget), size, None))
    for entry in plan.chunks:
        if isinstance(entry, Job):
            jobs.append(entry)
        else:
            i, c = entry
            jobs.append(Job(_array_chunk_job(sink, prefix, leaves[i], c, budget), c.size, holders[i] if holders else None))
    return jobs


def _doc_job(sink: ObjectSink, key: str, doc: dict[str, Any]) -> Callable[[], JobResult]:
    def run() -> JobResult:
        return sink.put(key, [encode_doc(doc)], reuse=False), {}

    return run


def _array_chunk_job(sink: ObjectSink, prefix: str, leaf: Leaf, c: Chunk, budget: ByteBudget | None) -> Callable[[], JobResult]:
    def run() -> JobResult:
        arr = leaf.array
        if arr.ndim == 0:
            piece = arr
        else:
            k = len(c.index)
            index: tuple[Any, ...] = (*c.index, slice(*c.rows)) if k < arr.ndim else c.index
            piece = arr[index]
        view = flat_bytes(piece)
        assert view.nbytes == c.valid, (view.nbytes, c.valid)
        buffers: list[Any] = [view]
        if c.size > c.valid:
            buffers.append(bytes(c.size - c.valid))
        with _held(budget, c.size):
            return sink.put(f"{prefix}/{c.key}", buffers), {}

    return run


def _pack_chunk_job(
    sink: ObjectSink,
    key: str,
    start: int,
    size: int,
    packed: Sequence[tuple[int, int, int]],
    starts: Sequence[int],
    leaves: Sequence[Leaf],
    budget: ByteBudget | None,
) -> Callable[[], JobResult]:
    def run() -> JobResult:
        end = start + size
        buffers: list[Any] = []
        tensor_crcs: dict[int, int] = {}
        pos = max(0, bisect_right(starts, start) - 1)
        filled = 0
        while pos < len(packed):
            i, off, nb = packed[pos]
            if off >= end:
                break
            if off + nb > start and nb > 0:
                view = flat_bytes(leaves[i].array)
                if off >= start:
                    tensor_crcs[i] = crc32c_of(view)
                lo = max(start, off) - off
                hi = min(end, off + nb) - off
                buffers.append(view[lo:hi])
                filled += hi - lo
            elif nb == 0 and off >= start:
                tensor_crcs[i] = 0
            pos += 1
        if filled < size:
            buffers.append(bytes(size - filled))
        if not sink.storage.capabilities.gathers_writes:
            buffers = _coalesce(buffers)
        with _held(budget, size):
            return sink.put(key, buffers), tensor_crcs

    return run


def fill_packed_crcs(records: list[ArrayRecord], crcs: dict[int, int]) -> None:
    """Record the crc32c of every packed tensor (gathered from the writers), in place.

    Example:
        >>> from cloudckpt.format.records import ChunkedRecord
        >>> recs = [PackedRecord("<u1", (1,), 1, 0, None), ChunkedRecord("<u1", (1,), 1, "w", (1,), 0, (0, 1))]
        >>> fill_packed_crcs(recs, {0: 7}); recs[0].crc32c
        7
    """
    for i, rec in enumerate(records):
        if isinstance(rec, PackedRecord):
            if i not in crcs:
                raise AssertionError(f"no writer reported the checksum of packed tensor #{i}")
            rec.crc32c = crcs[i]


_REQUEST_COST = 1 << 20  # a request weighs like this many bytes when spreading jobs over ranks


def assign_owners(jobs: Sequence[Job], world: int) -> list[int]:
    """Which rank writes each job: one of its candidates, balancing bytes plus
    a cost per request (so that the many small metadata objects do not all go
    to the ranks that write no large ones), largest jobs first.
    Deterministic, so every rank computes the same.

    Example:
        >>> run = lambda: ({}, {})
        >>> assign_owners([Job(run, 10, None), Job(run, 10, None), Job(run, 5, (1,))], 2)
        [0, 1, 1]
    """
    load = [0] * world
    owner = [0] * len(jobs)
    for j in sorted(range(len(jobs)), key=lambda j: (-jobs[j].size, j)):
        cands: Sequence[int] = jobs[j].cands or range(world)
        o = min(cands, key=lambda r: (load[r], r))
        owner[j] = o
        load[o] += jobs[j].size + _REQUEST_COST
    return owner


@contextlib.contextmanager
def _held(budget: ByteBudget | None, n: int) -> Iterator[None]:
    if budget is None:
        yield
        return
    with budget.held(n):
        yield


def _coalesce(buffers: list[Any], small: int = 256 * 1024) -> list[Any]:
    """Join runs of small buffers (one copy of small tensors, bounded by a
    chunk) so that a pack of thousands of tiny tensors is a few large writes,
    while large tensors are still written straight from their memory."""
    out: list[Any] = []
    run: list[Any] = []
    for b in buffers:
        if memoryview(b).nbytes < small:
            run.append(b)
            continue
        if run:
            out.append(b"".join(run) if len(run) > 1 else run[0])
            run = []
        out.append(b)
    if run:
        out.append(b"".join(run) if len(run) > 1 else run[0])
    return out
