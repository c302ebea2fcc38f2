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
    >>> from cloudckpt.tree import flatten
    >>> s = open_storage("memory://doc-arrays")
    >>> _, leaves = flatten({"w": np.arange(6.0).reshape(2, 3)})
    >>> written = write_arrays(s, "data-1", leaves)
    >>> out = read_arrays(s, "data-1", written.records, written.pack, written.objects, [0])
    >>> out[0]
    array([[0., 1., 2.],
           [3., 4., 5.]])
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checksum import crc32c_many, crc32c_of
from .dtypes import dtype_name, parse_dtype, storage_dtype, storage_shape, stored_view, to_little
from .errors import CorruptCheckpointError, ObjectNotFoundError, StorageError
from .storage import Storage
from .tree import Leaf, format_path
from .zarr_meta import array_doc, chunk_key, encode_doc, group_doc

__all__ = [
    "StoreOptions",
    "WrittenArrays",
    "write_arrays",
    "read_arrays",
    "chunk_layout",
    "PACK_NODE",
]

PACK_NODE = "_pack"
MiB = 1 << 20


@dataclass(frozen=True)
class StoreOptions:
    """Tuning of the tensor store.

    ``pack_threshold``: tensors smaller than this many bytes are packed.
    ``chunk_bytes``: target size of a chunk object (large tensors and the pack).
    ``buffer_bytes``: on object stores, the most bytes of chunk buffers in
    flight at once (local disk writes straight from the arrays).

    Example:
        >>> StoreOptions().pack_threshold == 16 * 2**20
        True
    """

    pack_threshold: int = 16 * MiB
    chunk_bytes: int = 32 * MiB
    buffer_bytes: int = 128 * MiB

    def __post_init__(self) -> None:
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
            chunk = tuple([1] * k + [rows] + list(shape[k + 1 :]))
            return chunk, k
    raise AssertionError("unreachable")


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
    objects: list[dict[str, Any]]
    nbytes: int = 0
    stats: dict[str, int] = field(default_factory=dict)


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
) -> WrittenArrays:
    """Write ``leaves`` as a zarr v3 group under ``prefix`` of ``storage``.

    ``node_paths[i]`` is the zarr node path of leaf ``i`` (used when it is
    stored as its own array). Returns the records for the manifest. Writes
    are concurrent (bounded by the storage's limit and, on object stores, by
    ``buffer_bytes``); the caller commits afterwards.
    """
    opts = _options(options)
    if node_paths is None:
        node_paths = [f"a{i}" for i in range(len(leaves))]
    records: list[dict[str, Any]] = []
    consolidated: dict[str, dict[str, Any]] = {}
    docs: list[tuple[str, dict[str, Any]]] = []
    chunk_jobs: list[tuple[int, _Chunk]] = []
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
        if nbytes < opts.pack_threshold:
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
        csize = max(1, math.ceil(pack_len / m)) if pack_len else 1
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
    objects: list[dict[str, Any]] = []
    jobs: list[Callable[[], tuple[dict[str, Any], dict[int, int]]]] = []

    def doc_job(key: str, doc: dict[str, Any]) -> Callable[[], tuple[dict[str, Any], dict[int, int]]]:
        def run() -> tuple[dict[str, Any], dict[int, int]]:
            data = encode_doc(doc)
            storage.write(f"{prefix}/{key}", data)
            return {"key": f"{prefix}/{key}", "size": len(data), "crc32c": crc32c_of(data)}, {}

        return run

    for key, doc in docs:
        jobs.append(doc_job(key, doc))

    join = not storage.is_local

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
            storage.write(f"{prefix}/{c.key}", b"".join(buffers) if join and len(buffers) > 1 else buffers)
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
            buffers = [b"".join(buffers)] if join else _coalesce(buffers)
            crc = crc32c_many(buffers)
            key = f"{prefix}/{PACK_NODE}/c/{j}"
            storage.write(key, buffers)
            return {"key": key, "size": size, "crc32c": crc}, tensor_crcs

        return run

    for j, (start, size) in enumerate(pack_chunks):
        jobs.append(pack_chunk_job(j, start, size))
    for i, c in chunk_jobs:
        jobs.append(array_chunk_job(i, c))

    limit = storage.max_concurrency if not join else max(2, opts.buffer_bytes // max(1, opts.chunk_bytes))
    results = storage.map(lambda job: job(), jobs, limit=limit)

    # zero-byte packed tensors at the very end of the pack have no chunk
    tensor_crc: dict[int, int] = {i: 0 for i, _, nb in packed if nb == 0}
    for obj, crcs in results:
        objects.append(obj)
        tensor_crc.update(crcs)
    # object index ranges: docs first, then pack chunks, then array chunks in order
    pos = len(docs)
    if pack_meta is not None:
        pack_meta["objects"] = [pos, pos + len(pack_chunks)]
        pos += len(pack_chunks)
    for i, rec in enumerate(records):
        if "packed" in rec:
            rec["packed"]["crc32c"] = tensor_crc[i]
        else:
            n = len(rec.pop("_chunks"))
            rec["chunked"]["objects"] = [pos, pos + n]
            pos += n
    return WrittenArrays(records, pack_meta, objects, total, storage.stats.snapshot())


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
) -> dict[int, np.ndarray]:
    """Read the arrays ``wanted`` (indices into ``records``), verifying crc32c.

    ``records``/``pack``/``objects`` come from a validated manifest. Each
    array is allocated once and filled in place (no second copy). Raises
    :class:`CorruptCheckpointError` naming the object when one is missing,
    short, or fails its checksum.
    """
    opts = _options(options)
    dests: dict[int, np.ndarray] = {}
    tasks: list[Callable[[], None]] = []
    packed_wanted: list[tuple[int, int, int]] = []  # (index, offset, nbytes)

    def where(i: int) -> str:
        return format_path(paths[i]) if paths is not None else f"#{i}"

    for i in wanted:
        rec = records[i]
        dt = parse_dtype(rec["dtype"])
        shape = tuple(rec["shape"])
        try:
            dest = np.empty(shape, dtype=to_little(dt))
        except (MemoryError, ValueError) as exc:
            raise CorruptCheckpointError(
                f"array {where(i)} of {storage.url}: cannot allocate shape {shape} dtype {dt}: {exc}"
            ) from None
        dests[i] = dest
        if "packed" in rec:
            packed_wanted.append((i, int(rec["packed"]["offset"]), int(rec["nbytes"])))
            continue
        ch = rec["chunked"]
        sdt = storage_dtype(dt)
        sshape = storage_shape(dt, shape)
        chunk = tuple(ch["chunk_shape"])
        chunks = _chunks_of(sshape, sdt.itemsize, chunk, int(ch["axis"]), ch["path"])
        lo, hi = ch["objects"]
        objs = objects[lo:hi]
        if len(objs) != len(chunks):
            raise CorruptCheckpointError(f"manifest of {storage.url}: array {where(i)} lists {len(objs)} objects for {len(chunks)} chunks")
        flat = _dest_bytes(dest)
        for c, obj in zip(chunks, objs, strict=True):
            tasks.append(_chunk_task(storage, obj, flat[c.start : c.start + c.valid], c.size))

    if packed_wanted and pack is not None:
        tasks.extend(_pack_tasks(storage, pack, objects, packed_wanted, dests))

    limit = storage.max_concurrency if storage.is_local else max(2, opts.buffer_bytes // max(1, opts.chunk_bytes))
    storage.map(lambda t: t(), tasks, limit=limit)

    for i, off, nb in packed_wanted:
        want = records[i]["packed"]["crc32c"]
        got = crc32c_of(_dest_bytes(dests[i]))
        if got != want:
            lo = pack["objects"][0] if pack else 0
            key = objects[lo + off // pack["chunk_bytes"]]["key"] if pack and nb else f"{prefix}/{PACK_NODE}"
            raise _corrupt(storage, key, f"crc32c mismatch for packed tensor {where(i)} (expected {want}, got {got})")

    out: dict[int, np.ndarray] = {}
    for i, dest in dests.items():
        dt = parse_dtype(records[i]["dtype"])
        out[i] = dest if dest.dtype == dt else dest.astype(dt)
    return out


def _check_size(storage: Storage, key: str, got: int, want: int) -> None:
    if got != want:
        raise _corrupt(storage, key, f"size {got} bytes, expected {want}")


def _read_whole(storage: Storage, obj: dict[str, Any]) -> bytes:
    key = obj["key"]
    try:
        data = storage.read(key, 0, obj["size"]) if obj["size"] else storage.read(key)
    except ObjectNotFoundError:
        raise _corrupt(storage, key, "object is missing") from None
    _check_size(storage, key, len(data), obj["size"])
    got = crc32c_of(data)
    if got != obj["crc32c"]:
        raise _corrupt(storage, key, f"crc32c mismatch (expected {obj['crc32c']}, got {got})")
    return data


def _read_into(storage: Storage, key: str, out: memoryview, start: int) -> None:
    """``storage.read_into`` with a missing or short object reported as damage."""
    try:
        storage.read_into(key, out, start)
    except ObjectNotFoundError:
        raise _corrupt(storage, key, "object is missing") from None
    except StorageError as exc:
        if "truncated" in str(exc):
            raise _corrupt(storage, key, "object is truncated") from None
        raise


def _chunk_task(storage: Storage, obj: dict[str, Any], out: memoryview, size: int) -> Callable[[], None]:
    key = obj["key"]

    def run() -> None:
        _check_size_declared(storage, obj, size)
        if out.nbytes == size:
            _read_into(storage, key, out, 0)
            got = crc32c_of(out)
            if got != obj["crc32c"]:
                raise _corrupt(storage, key, f"crc32c mismatch (expected {obj['crc32c']}, got {got})")
            return
        data = _read_whole(storage, obj)
        out[:] = memoryview(data)[: out.nbytes]

    return run


def _check_size_declared(storage: Storage, obj: dict[str, Any], size: int) -> None:
    if obj["size"] != size:
        raise CorruptCheckpointError(
            f"manifest of {storage.url}: object {obj['key']} declares {obj['size']} bytes, the array layout needs {size}"
        )


def _pack_tasks(
    storage: Storage,
    pack: dict[str, Any],
    objects: Sequence[dict[str, Any]],
    wanted: list[tuple[int, int, int]],
    dests: dict[int, np.ndarray],
) -> list[Callable[[], None]]:
    csize = int(pack["chunk_bytes"])
    lo, hi = pack["objects"]
    objs = objects[lo:hi]
    # pieces per chunk: (dest index, offset in tensor, offset in chunk, length)
    per_chunk: dict[int, list[tuple[int, int, int, int]]] = {}
    for i, off, nb in wanted:
        pos = off
        end = off + nb
        while pos < end:
            j = pos // csize
            cend = min(end, (j + 1) * csize)
            per_chunk.setdefault(j, []).append((i, pos - off, pos - j * csize, cend - pos))
            pos = cend
    tasks: list[Callable[[], None]] = []
    for j, pieces in sorted(per_chunk.items()):
        if j >= len(objs):
            raise CorruptCheckpointError(f"manifest of {storage.url}: packed data beyond the pack's {len(objs)} objects")
        obj = objs[j]
        need = sum(p[3] for p in pieces)
        if need * 2 >= csize:
            tasks.append(_pack_full_task(storage, obj, csize, pieces, dests))
        else:
            for piece in pieces:
                tasks.append(_pack_range_task(storage, obj, piece, dests))
    return tasks


def _pack_full_task(storage: Storage, obj: dict[str, Any], csize: int, pieces: list[tuple[int, int, int, int]], dests: dict[int, np.ndarray]) -> Callable[[], None]:
    def run() -> None:
        _check_size_declared(storage, obj, csize)
        data = memoryview(_read_whole(storage, obj))
        for i, toff, coff, n in pieces:
            _dest_bytes(dests[i])[toff : toff + n] = data[coff : coff + n]

    return run


def _pack_range_task(storage: Storage, obj: dict[str, Any], piece: tuple[int, int, int, int], dests: dict[int, np.ndarray]) -> Callable[[], None]:
    i, toff, coff, n = piece
    key = obj["key"]

    def run() -> None:
        _read_into(storage, key, _dest_bytes(dests[i])[toff : toff + n], coff)

    return run
