"""The tensor store: array leaves <-> a zarr v3 group of chunk objects.

Layout of a checkpoint's data group (a prefix unique to the save attempt)::

    zarr.json                root group; consolidated metadata of every node
    <node path>/zarr.json    one array per large tensor (>= pack_threshold bytes)
    <node path>/c/i/j/...    its chunks: regular grid, uncompressed, little-endian
    _pack/zarr.json          one flat uint8 array holding every small tensor
    _pack/c/<j>              back to back; offsets, dtypes, shapes in its attributes

Large tensors are split along their leading axes into chunks of about
``chunk_bytes`` so that each chunk is one contiguous byte range of the
C-ordered array: a chunk is written straight from the array's memory, with no
copy, and read straight into the destination array. Small tensors are packed
so that a state of many tiny tensors costs a few requests, not one each.

Every object gets a crc32c, every packed tensor too; the manifest records
them and reads verify them.

Example:
    >>> import numpy as np
    >>> from cloudckpt.storage import open_storage
    >>> from cloudckpt.format.tree import flatten
    >>> s = open_storage("memory://doc-arrays")
    >>> _, leaves = flatten({"w": np.arange(6.0).reshape(2, 3)})
    >>> written = write_arrays(s, "data-1", leaves)
    >>> out = read_arrays(s, "data-1", written.records, written.pack, written.objects, [0])
    >>> out[0]
    array([[0., 1., 2.],
           [3., 4., 5.]])
"""

from __future__ import annotations

import contextlib
import math
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from cloudckpt.errors import (
    CorruptCheckpointError,
    ObjectNotFoundError,
    OversizedObjectError,
    TruncatedObjectError,
)
from cloudckpt.format.checksum import crc32c_many, crc32c_of
from cloudckpt.format.dtypes import dtype_name, parse_dtype, storage_dtype, storage_shape, stored_view, to_little
from cloudckpt.format.tree import Leaf, format_path
from cloudckpt.format.zarr_meta import array_doc, chunk_key, encode_doc, group_doc
from cloudckpt.storage import Storage

__all__ = [
    "StoreOptions",
    "WrittenArrays",
    "write_arrays",
    "fill_packed_crcs",
    "assign_owners",
    "read_arrays",
    "chunk_layout",
    "PACK_NODE",
]

PACK_NODE = "_pack"
MiB = 1 << 20
_PACK_PIECES = 8  # on object stores, the pack is split into up to this many objects ...
_MIN_PACK_PIECE = 4 * MiB  # ... of at least this size (see write_arrays)


@dataclass(frozen=True)
class StoreOptions:
    """Tuning of the tensor store.

    ``pack_threshold``: tensors smaller than this many bytes are packed.
    ``chunk_bytes``: target size of a chunk object (large tensors and the pack).
    ``buffer_bytes``: the most bytes of write buffers in flight at once on
    backends whose writes copy their data (memory://, other fsspec
    filesystems). Local disk, S3 and GCS write straight from the arrays, and every backend reads straight into
    the destination arrays: there, ``max_concurrency`` of the storage alone
    bounds the transfers in flight.

    Example:
        >>> StoreOptions().pack_threshold == 16 * 2**20
        True
    """

    pack_threshold: int = 16 * MiB
    chunk_bytes: int = 32 * MiB
    buffer_bytes: int = 128 * MiB

    def __post_init__(self) -> None:
        for name in ("pack_threshold", "chunk_bytes", "buffer_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"StoreOptions.{name} must be a whole number of bytes, got {type(v).__name__} {v!r}")
            object.__setattr__(self, name, int(v))
        if self.buffer_bytes < 1:
            raise ValueError(f"buffer_bytes must be >= 1, got {self.buffer_bytes}")
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {self.chunk_bytes}")
        if self.pack_threshold < 0:
            raise ValueError(f"pack_threshold must be >= 0, got {self.pack_threshold}")


def _options(options: StoreOptions | None) -> StoreOptions:
    if options is None:
        return StoreOptions()
    if not isinstance(options, StoreOptions):
        raise TypeError(f"options must be a cloudckpt.StoreOptions or None, got {type(options).__name__}")
    return options


def chunk_layout(shape: Sequence[int], itemsize: int, target: int) -> tuple[tuple[int, ...], int]:
    """Chunk shape for an array, and the axis ``k`` it is split along.

    Axes before ``k`` get chunk size 1, axes after ``k`` are whole, so every
    chunk is one contiguous run of the C-ordered array. Chunks along ``k``
    are balanced so that the padded edge chunk wastes little.

    Example:
        >>> chunk_layout((1000, 10), 4, 8000)
        ((200, 10), 0)
        >>> chunk_layout((2, 1000), 4, 1000)
        ((1, 250), 1)
        >>> chunk_layout((), 8, 100)
        ((), 0)
    """
    shape = tuple(int(d) for d in shape)
    n = len(shape)
    if n == 0:
        return (), 0
    if math.prod(shape) == 0:
        return tuple(max(1, d) for d in shape), 0
    suffix = [itemsize] * (n + 1)
    for i in range(n - 1, -1, -1):
        suffix[i] = suffix[i + 1] * shape[i]
    for k in range(n):
        if suffix[k + 1] <= target or k == n - 1:
            rows = _balanced_rows(shape[k], max(1, math.ceil(suffix[k] / target)))
            if k == 0 and rows < shape[0]:
                rows = _page_rows(shape[0], rows, suffix[1])
            chunk = tuple([1] * k + [rows] + list(shape[k + 1 :]))
            return chunk, k
    raise AssertionError("unreachable")


_PAGE = 4096  # chunk objects of a multiple of this can be mapped back to back (Storage.map_objects)


def _page_rows(n: int, rows: int, row_bytes: int) -> int:
    """``rows`` rounded up so that a chunk is a whole number of 4 KiB pages,
    if that pads the array by at most 1% and grows a chunk by at most 25%;
    else ``rows``. Such chunks can be mapped as one array on load.

    Example:
        >>> _page_rows(50257, 16753, 1792), _page_rows(1000, 200, 40)
        (16768, 200)
    """
    align = _PAGE // math.gcd(row_bytes, _PAGE)
    aligned = -(-rows // align) * align
    if aligned >= n or aligned * 4 > rows * 5:
        return rows
    pad = -(-n // aligned) * aligned - n
    return aligned if pad * 100 <= n else rows


def _balanced_rows(n: int, pieces: int) -> int:
    """Rows per chunk for ``n`` rows in about ``pieces`` chunks, padding the
    edge chunk by at most 1% of the array (allowing up to 4x more, smaller
    chunks), else by as little as possible.

    Example:
        >>> _balanced_rows(5, 2), _balanced_rows(1000, 3)
        (1, 334)
    """
    best_rows, best_pad = n, n
    for p in range(pieces, min(n, 4 * pieces) + 1):
        rows = math.ceil(n / p)
        pad = math.ceil(n / rows) * rows - n
        if pad * 100 <= n:
            return rows
        if pad < best_pad:
            best_rows, best_pad = rows, pad
    return best_rows if pieces > 1 else n


@dataclass
class _Chunk:
    key: str  # relative to the data group
    start: int  # byte offset in the C-ordered stored array
    valid: int  # bytes of real data
    size: int  # bytes of the stored (padded) object
    index: tuple[int, ...]  # slicing of the leading axes (logical array)
    rows: tuple[int, int]  # row range along the split axis


def _chunks_of(shape: tuple[int, ...], itemsize: int, chunk: tuple[int, ...], k: int, node: str) -> list[_Chunk]:
    n = len(shape)
    if n == 0:
        return [_Chunk(f"{node}/c", 0, itemsize, itemsize, (), (0, 1))]
    if math.prod(shape) == 0:
        return []
    row_bytes = itemsize * math.prod(shape[k + 1 :])
    rows = chunk[k]
    m = math.ceil(shape[k] / rows)
    out = []
    for prefix in np.ndindex(*shape[:k]) if k else [()]:
        flat_prefix = int(np.ravel_multi_index(prefix, shape[:k])) if k else 0
        for j in range(m):
            r0, r1 = j * rows, min(shape[k], (j + 1) * rows)
            start = (flat_prefix * shape[k] + r0) * row_bytes
            idx = (*prefix, j) + (0,) * (n - k - 1)
            out.append(_Chunk(f"{node}/{chunk_key(idx)}", start, (r1 - r0) * row_bytes, rows * row_bytes, tuple(prefix), (r0, r1)))
    return out


@dataclass
class WrittenArrays:
    """What :func:`write_arrays` wrote: per-array records and the object list for the manifest."""

    records: list[dict[str, Any]]
    pack: dict[str, Any] | None
    objects: list[dict[str, Any] | None]  # None: an object another rank writes
    nbytes: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    tensor_crcs: dict[int, int] = field(default_factory=dict)  # packed tensors whose chunk this process wrote


def _flat_bytes(arr: np.ndarray) -> memoryview:
    """The stored bytes of ``arr`` as a flat memoryview (a view when possible)."""
    sv = stored_view(arr)
    return memoryview(sv.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


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
    """
    opts = _options(options)
    if node_paths is None:
        node_paths = [f"a{i}" for i in range(len(leaves))]
    records: list[dict[str, Any]] = []
    consolidated: dict[str, dict[str, Any]] = {}
    docs: list[tuple[str, dict[str, Any]]] = []
    chunk_jobs: list[tuple[int, _Chunk] | _Job] = []
    packed: list[tuple[int, int, int]] = []  # (leaf index, offset, nbytes)
    pack_len = 0
    groups: set[str] = set()
    total = 0

    for i, leaf in enumerate(leaves):
        arr = leaf.array
        dt = arr.dtype
        nbytes = int(arr.nbytes)
        total += nbytes
        rec: dict[str, Any] = {"dtype": dtype_name(dt), "shape": list(arr.shape), "nbytes": nbytes}
        if leaf.shards is not None:
            from cloudckpt.format.regions import plan_sharded  # (shard_io builds on this module)

            plan = plan_sharded(storage, prefix, leaf, node_paths[i], opts.chunk_bytes)
            rec.update(plan.record)
            consolidated.update(plan.docs)
            docs.extend((f"{node}/zarr.json", doc) for node, doc in plan.docs.items())
            groups.update(plan.groups)
            rec["_n"] = len(plan.jobs)
            chunk_jobs.extend(_Job(run, size, cands) for run, size, cands in plan.jobs)
            records.append(rec)
            continue
        if nbytes < opts.pack_threshold and not leaf.per_rank:
            rec["packed"] = {"offset": pack_len, "crc32c": None}
            packed.append((i, pack_len, nbytes))
            pack_len += nbytes
        else:
            sdt = storage_dtype(dt)
            sshape = storage_shape(dt, arr.shape)
            chunk, k = chunk_layout(sshape, sdt.itemsize, opts.chunk_bytes)
            node = node_paths[i]
            attrs: dict[str, Any] = {"cloudckpt": {"path": [*leaf.path], "dtype": dtype_name(dt)}}
            doc = array_doc(sdt, sshape, chunk, attrs)
            consolidated[node] = doc
            docs.append((f"{node}/zarr.json", doc))
            parts = node.split("/")
            for d in range(1, len(parts)):
                groups.add("/".join(parts[:d]))
            chunks = _chunks_of(sshape, sdt.itemsize, chunk, k, node)
            rec["chunked"] = {"path": node, "chunk_shape": list(chunk), "axis": k, "objects": [0, 0]}
            rec["_chunks"] = chunks
            for c in chunks:
                chunk_jobs.append((i, c))
        records.append(rec)

    pack_meta: dict[str, Any] | None = None
    pack_chunks: list[tuple[int, int]] = []  # (start, size)
    if packed:
        m = max(1, math.ceil(pack_len / opts.chunk_bytes))
        if storage.capabilities.remote:
            # Object stores: a request's speed is bounded per connection, so a
            # pack of a few chunk_bytes objects would move on a few connections.
            # Split it into up to min(8, max_concurrency) objects of at least
            # _MIN_PACK_PIECE: a few more requests (at most 8) buy parallel transfers.
            m = max(m, min(_PACK_PIECES, storage.max_concurrency, math.ceil(pack_len / _MIN_PACK_PIECE)))
        csize = max(1, math.ceil(pack_len / m)) if pack_len else 1
        if m > 1 and csize >= 100 * _PAGE:
            # whole pages (at most 1% more): tensors keep their alignment in
            # every object, and the objects can be mapped back to back
            csize = -(-csize // _PAGE) * _PAGE
        nchunks = math.ceil(pack_len / csize) if pack_len else 0
        pack_chunks = [(j * csize, csize) for j in range(nchunks)]
        table = [
            {"path": [*leaves[i].path], "offset": off, "nbytes": nb, "dtype": records[i]["dtype"], "shape": records[i]["shape"]}
            for i, off, nb in packed
        ]
        attrs = {"cloudckpt": {"packed": table}}
        doc = array_doc(np.dtype("u1"), (nchunks * csize if pack_len else 0,), (csize,), attrs)
        consolidated[PACK_NODE] = doc
        docs.append((f"{PACK_NODE}/zarr.json", doc))
        pack_meta = {"path": PACK_NODE, "nbytes": pack_len, "chunk_bytes": csize, "objects": [0, 0]}

    for g in sorted(groups):
        gdoc = group_doc({})
        gdoc["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
        consolidated[g] = gdoc
        docs.append((f"{g}/zarr.json", group_doc({})))
    root = group_doc({"cloudckpt": {"format": "cloudckpt", "note": "tensor data of a cloudckpt checkpoint; see its manifest.json"}}, dict(sorted(consolidated.items())))
    docs.insert(0, ("zarr.json", root))

    # -- the jobs -------------------------------------------------------
    objects: list[dict[str, Any] | None] = []
    jobs: list[_Job] = []

    def doc_job(key: str, doc: dict[str, Any]) -> Callable[[], tuple[dict[str, Any], dict[int, int]]]:
        def run() -> tuple[dict[str, Any], dict[int, int]]:
            data = encode_doc(doc)
            storage.write(f"{prefix}/{key}", data)
            return {"key": f"{prefix}/{key}", "size": len(data), "crc32c": crc32c_of(data)}, {}

        return run

    for key, doc in docs:
        jobs.append(_Job(doc_job(key, doc), 1024, None))

    # On backends whose write holds a copy of its data in flight (memory://:
    # one bytes per object), those copies are bounded by ``buffer_bytes``;
    # local disk, S3 and GCS send straight from the arrays, so only the
    # storage's concurrency bounds them.
    budget = _Budget(opts.buffer_bytes) if storage.capabilities.write_copies else None

    def array_chunk_job(i: int, c: _Chunk) -> Callable[[], tuple[dict[str, Any], dict[int, int]]]:
        def run() -> tuple[dict[str, Any], dict[int, int]]:
            arr = leaves[i].array
            if arr.ndim == 0:
                piece = arr
            else:
                k = len(c.index)
                index: tuple[Any, ...] = (*c.index, slice(*c.rows)) if k < arr.ndim else c.index
                piece = arr[index]
            view = _flat_bytes(piece)
            assert view.nbytes == c.valid, (view.nbytes, c.valid)
            buffers: list[Any] = [view]
            if c.size > c.valid:
                buffers.append(bytes(c.size - c.valid))
            crc = crc32c_many(buffers)
            with _held(budget, c.size):
                storage.write(f"{prefix}/{c.key}", buffers)
            return {"key": f"{prefix}/{c.key}", "size": c.size, "crc32c": crc}, {}

        return run

    starts = [off for _, off, _ in packed]

    def pack_chunk_job(j: int, start: int, size: int) -> Callable[[], tuple[dict[str, Any], dict[int, int]]]:
        def run() -> tuple[dict[str, Any], dict[int, int]]:
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
                    view = _flat_bytes(leaves[i].array)
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
            if not storage.capabilities.gathers_writes:
                buffers = _coalesce(buffers)
            crc = crc32c_many(buffers)
            key = f"{prefix}/{PACK_NODE}/c/{j}"
            with _held(budget, size):
                storage.write(key, buffers)
            return {"key": key, "size": size, "crc32c": crc}, tensor_crcs

        return run

    for j, (start, size) in enumerate(pack_chunks):
        jobs.append(_Job(pack_chunk_job(j, start, size), size, None))
    for entry in chunk_jobs:
        if isinstance(entry, _Job):
            jobs.append(entry)
        else:
            i, c = entry
            jobs.append(_Job(array_chunk_job(i, c), c.size, holders[i] if holders else None))
    mine = [True] * len(jobs) if world == 1 else [o == rank for o in assign_owners(jobs, world)]

    limit = storage.max_concurrency
    mine_jobs = [job for job, m in zip(jobs, mine, strict=True) if m]
    results = iter(storage.map(lambda job: job.run(), mine_jobs, limit=limit))

    # zero-byte packed tensors at the very end of the pack have no chunk
    tensor_crc: dict[int, int] = {i: 0 for i, _, nb in packed if nb == 0}
    for m in mine:
        if not m:
            objects.append(None)
            continue
        obj, crcs = next(results)
        objects.append(obj)
        tensor_crc.update(crcs)
    # object index ranges: docs first, then pack chunks, then array chunks in order
    pos = len(docs)
    if pack_meta is not None:
        pack_meta["objects"] = [pos, pos + len(pack_chunks)]
        pos += len(pack_chunks)
    for rec in records:
        if "packed" in rec:
            continue
        n = len(rec.pop("_chunks")) if "_chunks" in rec else rec.pop("_n")
        if "chunked" in rec:
            rec["chunked"]["objects"] = [pos, pos + n]
        else:
            for sh in rec["shards"]:
                lo, hi = sh["objects"]
                sh["objects"] = [pos + lo, pos + hi]
        pos += n
    if world == 1:
        fill_packed_crcs(records, tensor_crc)
    return WrittenArrays(records, pack_meta, objects, total, storage.stats.snapshot(), tensor_crc)


def fill_packed_crcs(records: Sequence[dict[str, Any]], crcs: dict[int, int]) -> None:
    """Record the crc32c of every packed tensor (gathered from the writers).

    Example:
        >>> recs = [{"packed": {"offset": 0, "crc32c": None}}, {"chunked": {}}]
        >>> fill_packed_crcs(recs, {0: 7}); recs[0]["packed"]["crc32c"]
        7
    """
    for i, rec in enumerate(records):
        if "packed" in rec:
            if i not in crcs:
                raise AssertionError(f"no writer reported the checksum of packed tensor #{i}")
            rec["packed"]["crc32c"] = crcs[i]


@dataclass
class _Job:
    """One object to write: the call that writes it, its size, and the ranks
    that may write it (None: any)."""

    run: Callable[[], tuple[dict[str, Any], dict[int, int]]]
    size: int
    cands: tuple[int, ...] | None


_REQUEST_COST = 1 << 20  # a request weighs like this many bytes when spreading jobs over ranks


def assign_owners(jobs: Sequence[_Job], world: int) -> list[int]:
    """Which rank writes each job: one of its candidates, balancing bytes plus
    a cost per request (so that the many small metadata objects do not all go
    to the ranks that write no large ones), largest jobs first.
    Deterministic, so every rank computes the same.

    Example:
        >>> run = lambda: ({}, {})
        >>> assign_owners([_Job(run, 10, None), _Job(run, 10, None), _Job(run, 5, (1,))], 2)
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


class _Budget:
    """Bytes in flight, bounded: ``acquire(n)`` waits until ``n`` more fit
    (one request larger than the whole budget runs alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


@contextlib.contextmanager
def _held(budget: _Budget | None, n: int) -> Iterator[None]:
    if budget is None:
        yield
        return
    budget.acquire(n)
    try:
        yield
    finally:
        budget.release(n)


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


# -- reading ----------------------------------------------------------------


def _allocate(storage: Storage, rec: dict[str, Any], where: str) -> np.ndarray:
    """Uninitialised memory for the array of ``rec`` (little-endian)."""
    dt = parse_dtype(rec["dtype"])
    shape = tuple(rec["shape"])
    try:
        return np.empty(shape, dtype=to_little(dt))
    except (MemoryError, ValueError) as exc:
        raise CorruptCheckpointError(
            f"array {where} of {storage.url}: cannot allocate shape {shape} dtype {dt}: {exc}"
        ) from None


def _viewable(rec: dict[str, Any], offset: int) -> bool:
    """Whether the packed tensor of ``rec`` at ``offset`` of a page-aligned
    mapping can be a numpy view of it (aligned, plain bytes)."""
    dt = to_little(parse_dtype(rec["dtype"]))
    return dt.itemsize > 0 and not dt.hasobject and offset % dt.alignment == 0


def _dest_bytes(dest: np.ndarray) -> memoryview:
    return memoryview(dest.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _corrupt(storage: Storage, key: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checkpoint object {storage.url_for(key)} is damaged: {what}")


def read_arrays(
    storage: Storage,
    prefix: str,
    records: Sequence[dict[str, Any]],
    pack: dict[str, Any] | None,
    objects: Sequence[dict[str, Any]],
    wanted: Sequence[int],
    options: StoreOptions | None = None,
    *,
    paths: Sequence[Sequence[Any]] | None = None,
    mmap: bool = True,
) -> dict[int, np.ndarray]:
    """Read the arrays ``wanted`` (indices into ``records``), verifying crc32c.

    ``records``/``pack``/``objects`` come from a validated manifest. Each
    array is allocated once and every object is read straight into it (a
    scatter read for the pack; no temporary copy of an object). Every byte
    read is verified exactly once, by the crc32c of its object or, for a
    packed tensor read by a range, by the tensor's own (see
    :func:`_pack_tasks`). Raises
    :class:`CorruptCheckpointError` naming the object when one is missing,
    short, or fails its checksum.

    With ``mmap`` on a storage that maps objects (local disk), a packed
    tensor of a pack object read whole is a copy-on-write view of the
    mapped object (:meth:`Storage.map_object`) rather than a copy: the
    fresh memory a copy needs costs more (zero-filled page faults) than the
    read itself. The object's crc32c is still verified over all of it.
    """
    _options(options)  # validated; reads need no buffer budget (see below)
    dests: dict[int, np.ndarray] = {}
    tasks: list[Callable[[], None]] = []
    packed_wanted: list[tuple[int, int, int]] = []  # (index, offset, nbytes)

    def where(i: int) -> str:
        return format_path(paths[i]) if paths is not None else f"#{i}"

    for i in wanted:
        rec = records[i]
        if "packed" in rec:  # allocated by _pack_tasks, unless a view of a mapped object
            packed_wanted.append((i, int(rec["packed"]["offset"]), int(rec["nbytes"])))
            continue
        dt = parse_dtype(rec["dtype"])
        shape = tuple(rec["shape"])
        ch = rec["chunked"]
        sdt = storage_dtype(dt)
        sshape = storage_shape(dt, shape)
        chunk = tuple(ch["chunk_shape"])
        chunks = _chunks_of(sshape, sdt.itemsize, chunk, int(ch["axis"]), ch["path"])
        lo, hi = ch["objects"]
        objs = objects[lo:hi]
        if len(objs) != len(chunks):
            raise CorruptCheckpointError(f"manifest of {storage.url}: array {where(i)} lists {len(objs)} objects for {len(chunks)} chunks")
        if mmap and _back_to_back_chunks(chunks) and storage.maps_together([c.size for c in chunks]):
            tasks.append(_chunked_map_task(storage, objs, chunks, rec, dests, i))
            continue
        dest = dests[i] = _allocate(storage, rec, where(i))
        flat = _dest_bytes(dest)
        for c, obj in zip(chunks, objs, strict=True):
            tasks.append(_chunk_task(storage, obj, flat[c.start : c.start + c.valid], c.size))

    spanning: list[tuple[int, int, int]] = []
    if packed_wanted and pack is None:
        raise CorruptCheckpointError(f"manifest of {storage.url}: packed arrays but no pack")
    if packed_wanted and pack is not None:
        pack_tasks, spanning = _pack_tasks(
            storage, pack, objects, packed_wanted, dests, records, where, mmap=mmap and storage.capabilities.maps_objects
        )
        tasks.extend(pack_tasks)

    # Every transfer lands in its destination array (no buffer per chunk), so the
    # storage's concurrency, not a buffer budget, bounds the transfers in flight.
    storage.map(lambda t: t(), tasks, limit=storage.max_concurrency)

    for i, off, _nb in spanning:
        _check_packed(storage, pack, objects, records, dests, where, i, off)

    out: dict[int, np.ndarray] = {}
    for i in wanted:
        dest = dests[i]
        dt = parse_dtype(records[i]["dtype"])
        out[i] = dest if dest.dtype == dt else dest.astype(dt)
    return out


@contextlib.contextmanager
def _damage(storage: Storage, key: str) -> Iterator[None]:
    """Report a missing or short object read inside the block as damage."""
    try:
        yield
    except ObjectNotFoundError:
        raise _corrupt(storage, key, "object is missing") from None
    except TruncatedObjectError:
        raise _corrupt(storage, key, "object is truncated") from None
    except OversizedObjectError:
        raise _corrupt(storage, key, "object is longer than its recorded size") from None


def _read_into(storage: Storage, key: str, out: memoryview, start: int, size: int | None = None) -> None:
    """``storage.read_into`` with a missing, short (or, given its ``size``, long) object reported as damage."""
    with _damage(storage, key):
        storage.read_into(key, out, start, size=size)


def _chunk_task(storage: Storage, obj: dict[str, Any], out: memoryview, size: int) -> Callable[[], None]:
    key = obj["key"]

    def run() -> None:
        _check_size_declared(storage, obj, size)
        if out.nbytes == size:
            _read_into(storage, key, out, 0, size)
            _check_crc(storage, obj, crc32c_of(out))
            return
        # the padded edge chunk: the padding goes to a small scratch buffer, and
        # the object's crc32c covers both
        pad = memoryview(bytearray(size - out.nbytes))
        _read_many(storage, key, [(out, 0), (pad, out.nbytes)], size)
        _check_crc(storage, obj, crc32c_many([out, pad]))

    return run


def _back_to_back_chunks(chunks: Sequence[_Chunk]) -> bool:
    """Whether the chunk objects, laid back to back, are the array's bytes
    (row chunks with padding only in the last, as large arrays are
    written), so that they can be mapped as one array."""
    at = 0
    for n, c in enumerate(chunks):
        if c.start != at or (c.valid != c.size and n != len(chunks) - 1):
            return False
        at += c.valid
    return bool(chunks)


def _chunked_map_task(
    storage: Storage, objs: Sequence[dict[str, Any]], chunks: Sequence[_Chunk], rec: dict[str, Any], dests: dict[int, np.ndarray], i: int
) -> Callable[[], None]:
    """Map the chunk objects of array ``i`` back to back (copy-on-write,
    :meth:`Storage.map_objects`), verify every object's crc32c over the
    mapping and make the array a view of it: no fresh memory to fill."""

    def run() -> None:
        dests[i] = _view(_map_verified(storage, objs, [c.size for c in chunks]), rec, 0)

    return run


def _map_verified(storage: Storage, objs: Sequence[dict[str, Any]], sizes: Sequence[int]) -> memoryview:
    """The objects mapped back to back (:meth:`Storage.map_objects`, which
    the caller checked with :meth:`Storage.maps_together`), each one's
    declared size and crc32c verified over the mapping; damage names the object."""
    for obj, size in zip(objs, sizes, strict=True):
        _check_size_declared(storage, obj, size)
    with _damage_of_any(storage, [o["key"] for o in objs]):
        mem = storage.map_objects([(o["key"], size) for o, size in zip(objs, sizes, strict=True)])
    assert mem is not None
    at = 0
    for obj, size in zip(objs, sizes, strict=True):
        _check_crc(storage, obj, crc32c_of(mem[at : at + size]))
        at += size
    return mem


def _view(mem: memoryview, rec: dict[str, Any], offset: int) -> np.ndarray:
    """The array of ``rec`` as a view of ``mem`` from ``offset`` (see :func:`_viewable`)."""
    dt = to_little(parse_dtype(rec["dtype"]))
    return np.frombuffer(mem, dtype=dt, count=int(rec["nbytes"]) // dt.itemsize, offset=offset).reshape(tuple(rec["shape"]))


def _check_crc(storage: Storage, obj: dict[str, Any], got: int) -> None:
    """Raise naming the object if ``got``, the crc32c of its bytes as read, is not the recorded one."""
    if got != obj["crc32c"]:
        raise _corrupt(storage, obj["key"], f"crc32c mismatch (expected {obj['crc32c']}, got {got})")


@contextlib.contextmanager
def _damage_of_any(storage: Storage, keys: Sequence[str]) -> Iterator[None]:
    """:func:`_damage` for a request over several objects: the error names the one it was about."""
    try:
        yield
    except (ObjectNotFoundError, TruncatedObjectError, OversizedObjectError) as exc:
        key = next((k for k in keys if storage.url_for(k) == getattr(exc, "url", None)), keys[0])
        with _damage(storage, key):
            raise


def _check_size_declared(storage: Storage, obj: dict[str, Any], size: int) -> None:
    if obj["size"] != size:
        raise CorruptCheckpointError(
            f"manifest of {storage.url}: object {obj['key']} declares {obj['size']} bytes, the array layout needs {size}"
        )


def _read_many(storage: Storage, key: str, pieces: list[tuple[memoryview, int]], size: int | None = None) -> None:
    """``storage.read_into_many`` with a missing, short (or, given its ``size``, long) object reported as damage."""
    with _damage(storage, key):
        storage.read_into_many(key, pieces, size=size)


def _pack_key(pack: dict[str, Any] | None, objects: Sequence[dict[str, Any]], off: int, nb: int) -> str:
    """Key of the pack object holding the first byte of a packed tensor."""
    if pack and nb:
        lo = pack["objects"][0]
        return str(objects[lo + off // pack["chunk_bytes"]]["key"])
    return PACK_NODE


def _check_packed(
    storage: Storage,
    pack: dict[str, Any] | None,
    objects: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    dests: dict[int, np.ndarray],
    where: Callable[[int], str],
    i: int,
    off: int,
) -> None:
    """Check a packed tensor's own crc32c (once all its bytes have arrived)."""
    want = records[i]["packed"]["crc32c"]
    got = crc32c_of(_dest_bytes(dests[i]))
    if got != want:
        key = _pack_key(pack, objects, off, int(records[i]["nbytes"]))
        raise _corrupt(storage, key, f"crc32c mismatch for packed tensor {where(i)} (expected {want}, got {got})")


def _pack_tasks(
    storage: Storage,
    pack: dict[str, Any],
    objects: Sequence[dict[str, Any]],
    wanted: list[tuple[int, int, int]],
    dests: dict[int, np.ndarray],
    records: Sequence[dict[str, Any]],
    where: Callable[[int], str],
    *,
    mmap: bool = False,
) -> tuple[list[Callable[[], None]], list[tuple[int, int, int]]]:
    """The read tasks of the packed tensors ``wanted``, and the tensors whose
    own crc32c is left to the caller (after every task ran). Allocates
    ``dests`` of the tensors, except (with ``mmap``) those a task makes
    views of a mapped pack object.

    What checks which bytes: a pack object needed for at least half of it is
    read whole, scattered straight into the destination arrays (the bytes of
    unwanted tensors and the padding into a scratch buffer), and its object
    crc32c is verified over all of it, so every byte of the object, padding
    included, is checked once and the tensors in it need no check of their
    own. A pack object needed for less is read by ranges, one per tensor
    piece, and each such tensor's own crc32c is checked: in the task that
    read it when it lies in one object, by the caller when it spans objects.
    """
    csize = int(pack["chunk_bytes"])
    lo, hi = pack["objects"]
    objs = objects[lo:hi]
    # pieces per chunk: (dest index, offset in tensor, offset in chunk, length)
    per_chunk: dict[int, list[tuple[int, int, int, int]]] = {}
    npieces: dict[int, int] = {}
    offsets: dict[int, int] = {}
    for i, off, nb in wanted:
        offsets[i] = off
        pos = off
        end = off + nb
        while pos < end:
            j = pos // csize
            cend = min(end, (j + 1) * csize)
            per_chunk.setdefault(j, []).append((i, pos - off, pos - j * csize, cend - pos))
            npieces[i] = npieces.get(i, 0) + 1
            pos = cend
    tasks: list[Callable[[], None]] = []
    spanning: set[int] = set()
    whole = {j for j, pieces in per_chunk.items() if sum(p[3] for p in pieces) * 2 >= csize}
    views: set[int] = set()  # tensors that will be views of a mapped object
    map_all = mmap and len(whole) == len(objs) > 1 and storage.maps_together([csize] * len(objs))
    if map_all:  # every object is read whole: mapped back to back, tensors spanning two are views too
        views = {i for i, off, nb in wanted if nb and _viewable(records[i], off)}
    elif mmap:
        views = {
            i for j in whole for i, _t, coff, _n in per_chunk[j] if npieces[i] == 1 and _viewable(records[i], coff)
        }
    for i, _off, _nb in wanted:
        if i not in views:
            dests[i] = _allocate(storage, records[i], where(i))
    if map_all:
        return [_whole_pack_map_task(storage, objs, csize, wanted, dests, records, views)], []
    for j, pieces in sorted(per_chunk.items()):
        if j >= len(objs):
            raise CorruptCheckpointError(f"manifest of {storage.url}: packed data beyond the pack's {len(objs)} objects")
        obj = objs[j]
        if j in whole:
            if mmap:
                tasks.append(_pack_map_task(storage, obj, csize, pieces, dests, records, views))
            else:
                tasks.append(_pack_full_task(storage, obj, csize, pieces, dests))
            continue
        # a few tensors of this object: ranges, with nearby ones merged into one
        # request (the bytes between them go to scratch), as a request costs far
        # more than reading a few hundred KiB more on an object store
        run: list[tuple[int, int, int, int]] = []
        for piece in sorted(pieces, key=lambda p: p[2]):
            if npieces[piece[0]] > 1:
                spanning.add(piece[0])
            if run and piece[2] - (run[-1][2] + run[-1][3]) > _MERGE_GAP:
                tasks.append(_pack_range_task(storage, obj, run, dests, (pack, objects, records, where, offsets, spanning)))
                run = []
            run.append(piece)
        if run:
            tasks.append(_pack_range_task(storage, obj, run, dests, (pack, objects, records, where, offsets, spanning)))
    return tasks, [(i, offsets[i], int(records[i]["nbytes"])) for i in sorted(spanning)]


_MERGE_GAP = 512 * 1024  # bytes of unwanted pack data read rather than starting another request


def _pack_full_task(storage: Storage, obj: dict[str, Any], csize: int, pieces: list[tuple[int, int, int, int]], dests: dict[int, np.ndarray]) -> Callable[[], None]:
    def run() -> None:
        _check_size_declared(storage, obj, csize)
        key = obj["key"]
        # the whole object, in order: destination views, and scratch for the gaps
        views: list[memoryview] = []
        gaps: list[tuple[int, int]] = []  # (position in views, length)
        pos = 0
        for i, toff, coff, n in sorted(pieces, key=lambda p: p[2]):
            if coff > pos:
                gaps.append((len(views), coff - pos))
                views.append(memoryview(b""))
            views.append(_dest_bytes(dests[i])[toff : toff + n])
            pos = coff + n
        if pos < csize:
            gaps.append((len(views), csize - pos))
            views.append(memoryview(b""))
        if gaps:
            scratch = memoryview(bytearray(sum(n for _, n in gaps)))
            at = 0
            for k, n in gaps:
                views[k] = scratch[at : at + n]
                at += n
        _read_many(storage, key, _back_to_back(views), csize)
        _check_crc(storage, obj, crc32c_many(views))

    return run


def _pack_map_task(
    storage: Storage,
    obj: dict[str, Any],
    csize: int,
    pieces: list[tuple[int, int, int, int]],
    dests: dict[int, np.ndarray],
    records: Sequence[dict[str, Any]],
    views: set[int],
) -> Callable[[], None]:
    """Map a whole pack object, verify its crc32c over the mapping, then make
    the tensors in ``views`` views of it and copy the other pieces out."""

    def run() -> None:
        _check_size_declared(storage, obj, csize)
        key = obj["key"]
        with _damage(storage, key):
            mem = storage.map_object(key, csize)
        _check_crc(storage, obj, crc32c_of(mem))
        for i, toff, coff, n in pieces:
            if i in views:
                dests[i] = _view(mem, records[i], coff)
            else:
                _dest_bytes(dests[i])[toff : toff + n] = mem[coff : coff + n]

    return run


def _whole_pack_map_task(
    storage: Storage,
    objs: Sequence[dict[str, Any]],
    csize: int,
    wanted: list[tuple[int, int, int]],
    dests: dict[int, np.ndarray],
    records: Sequence[dict[str, Any]],
    views: set[int],
) -> Callable[[], None]:
    """Map every pack object back to back (:meth:`Storage.map_objects`),
    verify each object's crc32c over the mapping, then make the tensors in
    ``views`` views of it and copy the others out."""

    def run() -> None:
        mem = _map_verified(storage, objs, [csize] * len(objs))
        for i, off, nb in wanted:
            if i in views:
                dests[i] = _view(mem, records[i], off)
            else:
                _dest_bytes(dests[i])[:] = mem[off : off + nb]

    return run


def _back_to_back(views: list[memoryview]) -> list[tuple[memoryview, int]]:
    """``(view, offset)`` of views that lie back to back from offset 0."""
    out = []
    at = 0
    for v in views:
        out.append((v, at))
        at += v.nbytes
    return out


def _pack_range_task(
    storage: Storage,
    obj: dict[str, Any],
    run: list[tuple[int, int, int, int]],
    dests: dict[int, np.ndarray],
    check: tuple[Any, ...],
) -> Callable[[], None]:
    """Read the pieces ``run`` (sorted by offset in the object) with one
    ranged request, scattered into their destinations, the gaps between them
    into scratch; then check the crc32c of each tensor that lies in this
    object alone (the caller checks the ones spanning objects)."""
    key = obj["key"]
    pack, objects, records, where, offsets, spanning = check

    def run_task() -> None:
        views: list[tuple[memoryview, int]] = []
        gaps = sum(b[2] - (a[2] + a[3]) for a, b in pairwise(run))
        scratch = memoryview(bytearray(gaps)) if gaps else None
        at = 0
        for k, (i, toff, coff, n) in enumerate(run):
            if k and scratch is not None:
                gap = coff - (run[k - 1][2] + run[k - 1][3])
                if gap:
                    views.append((scratch[at : at + gap], coff - gap))
                    at += gap
            views.append((_dest_bytes(dests[i])[toff : toff + n], coff))
        _read_many(storage, key, views)
        for i, _toff, _coff, _n in run:
            if i not in spanning:
                _check_packed(storage, pack, objects, records, dests, where, i, offsets[i])

    return run_task


