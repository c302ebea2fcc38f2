"""The read path of the tensor store: zarr chunk objects -> arrays.

Each array is allocated once and every object is read straight into it (a
scatter read for the pack; no temporary copy of an object); on local disk,
objects are mapped copy-on-write instead where that is cheaper. Every byte
read is verified exactly once, by the crc32c of its object or, for a packed
tensor read by a range, by the tensor's own.

Example:
    >>> import numpy as np
    >>> from cloudckpt.storage import open_storage
    >>> from cloudckpt.format.tree import flatten
    >>> from cloudckpt.format.store_write import write_arrays
    >>> s = open_storage("memory://doc-store-read")
    >>> _, leaves = flatten({"w": np.arange(3.0)})
    >>> w = write_arrays(s, "d", leaves)
    >>> read_arrays(s, "d", w.records, w.pack, w.objects, [0])[0]
    array([0., 1., 2.])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudckpt.errors import CorruptCheckpointError
from cloudckpt.format.checksum import crc32c_many, crc32c_of
from cloudckpt.format.chunking import Chunk, chunks_of
from cloudckpt.format.dtypes import parse_dtype, storage_dtype, storage_shape, to_little
from cloudckpt.format.object_io import (
    check_crc,
    check_size_declared,
    corrupt,
    damage,
    damage_of_any,
    dest_bytes,
    read_into,
    read_many,
)
from cloudckpt.format.records import ArrayRecord, ChunkedRecord, PackedRecord, PackRecord
from cloudckpt.format.tensor_store import PACK_NODE, StoreOptions, check_options
from cloudckpt.format.tree import format_path
from cloudckpt.storage import Storage

if TYPE_CHECKING:
    from cloudckpt.format.manifest_types import ObjectEntry

__all__ = ["read_arrays"]


def _allocate(storage: Storage, rec: ArrayRecord, where: str) -> np.ndarray:
    """Uninitialised memory for the array of ``rec`` (little-endian)."""
    dt = parse_dtype(rec.dtype)
    shape = rec.shape
    try:
        return np.empty(shape, dtype=to_little(dt))
    except (MemoryError, ValueError) as exc:
        raise CorruptCheckpointError(
            f"array {where} of {storage.url}: cannot allocate shape {shape} dtype {dt}: {exc}"
        ) from None


def _viewable(rec: ArrayRecord, offset: int) -> bool:
    """Whether the packed tensor of ``rec`` at ``offset`` of a page-aligned
    mapping can be a numpy view of it (aligned, plain bytes)."""
    dt = to_little(parse_dtype(rec.dtype))
    return dt.itemsize > 0 and not dt.hasobject and offset % dt.alignment == 0


def read_arrays(
    storage: Storage,
    prefix: str,
    records: Sequence[ArrayRecord],
    pack: PackRecord | None,
    objects: Sequence[ObjectEntry],
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
    check_options(options)  # validated; reads need no buffer budget (see below)
    dests: dict[int, np.ndarray] = {}
    tasks: list[Callable[[], None]] = []
    packed_wanted: list[tuple[int, int, int]] = []  # (index, offset, nbytes)

    def where(i: int) -> str:
        return format_path(paths[i]) if paths is not None else f"#{i}"

    for i in wanted:
        rec = records[i]
        if isinstance(rec, PackedRecord):  # allocated by _pack_tasks, unless a view of a mapped object
            packed_wanted.append((i, rec.offset, rec.nbytes))
        elif isinstance(rec, ChunkedRecord):
            tasks.extend(_chunked_tasks(storage, rec, objects, dests, i, where(i), mmap=mmap))
        else:
            raise ValueError(f"array {where(i)} of {storage.url} is stored per shard: read it with read_regions")

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
        dt = parse_dtype(records[i].dtype)
        out[i] = dest if dest.dtype == dt else dest.astype(dt)
    return out


def _chunked_tasks(
    storage: Storage, rec: ChunkedRecord, objects: Sequence[ObjectEntry], dests: dict[int, np.ndarray], i: int, where: str, *, mmap: bool
) -> list[Callable[[], None]]:
    """The read tasks of the chunked array ``i``: one per chunk object, or
    one that maps them all when they lie back to back on a storage that maps."""
    dt = parse_dtype(rec.dtype)
    sdt = storage_dtype(dt)
    sshape = storage_shape(dt, rec.shape)
    if rec.axis is None:
        raise ValueError(f"array {where} of {storage.url} is stored on a sharded grid: read it with read_regions")
    chunks = chunks_of(sshape, sdt.itemsize, rec.chunk_shape, rec.axis, rec.path)
    lo, hi = rec.objects
    objs = objects[lo:hi]
    if len(objs) != len(chunks):
        raise CorruptCheckpointError(f"manifest of {storage.url}: array {where} lists {len(objs)} objects for {len(chunks)} chunks")
    if mmap and _back_to_back_chunks(chunks) and storage.maps_together([c.size for c in chunks]):
        return [_chunked_map_task(storage, objs, chunks, rec, dests, i)]
    dest = dests[i] = _allocate(storage, rec, where)
    flat = dest_bytes(dest)
    return [_chunk_task(storage, obj, flat[c.start : c.start + c.valid], c.size) for c, obj in zip(chunks, objs, strict=True)]


def _chunk_task(storage: Storage, obj: ObjectEntry, out: memoryview, size: int) -> Callable[[], None]:
    key = obj["key"]

    def run() -> None:
        check_size_declared(storage, obj, size)
        if out.nbytes == size:
            read_into(storage, key, out, 0, size)
            check_crc(storage, obj, crc32c_of(out))
            return
        # the padded edge chunk: the padding goes to a small scratch buffer, and
        # the object's crc32c covers both
        pad = memoryview(bytearray(size - out.nbytes))
        read_many(storage, key, [(out, 0), (pad, out.nbytes)], size)
        check_crc(storage, obj, crc32c_many([out, pad]))

    return run


def _back_to_back_chunks(chunks: Sequence[Chunk]) -> bool:
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
    storage: Storage, objs: Sequence[ObjectEntry], chunks: Sequence[Chunk], rec: ArrayRecord, dests: dict[int, np.ndarray], i: int
) -> Callable[[], None]:
    """Map the chunk objects of array ``i`` back to back (copy-on-write,
    :meth:`Storage.map_objects`), verify every object's crc32c over the
    mapping and make the array a view of it: no fresh memory to fill."""

    def run() -> None:
        dests[i] = _view(_map_verified(storage, objs, [c.size for c in chunks]), rec, 0)

    return run


def _map_verified(storage: Storage, objs: Sequence[ObjectEntry], sizes: Sequence[int]) -> memoryview:
    """The objects mapped back to back (:meth:`Storage.map_objects`, which
    the caller checked with :meth:`Storage.maps_together`), each one's
    declared size and crc32c verified over the mapping; damage names the object."""
    for obj, size in zip(objs, sizes, strict=True):
        check_size_declared(storage, obj, size)
    with damage_of_any(storage, [o["key"] for o in objs]):
        mem = storage.map_objects([(o["key"], size) for o, size in zip(objs, sizes, strict=True)])
    assert mem is not None
    at = 0
    for obj, size in zip(objs, sizes, strict=True):
        check_crc(storage, obj, crc32c_of(mem[at : at + size]))
        at += size
    return mem


def _view(mem: memoryview, rec: ArrayRecord, offset: int) -> np.ndarray:
    """The array of ``rec`` as a view of ``mem`` from ``offset`` (see :func:`_viewable`)."""
    dt = to_little(parse_dtype(rec.dtype))
    return np.frombuffer(mem, dtype=dt, count=rec.nbytes // dt.itemsize, offset=offset).reshape(rec.shape)


def _pack_key(pack: PackRecord | None, objects: Sequence[ObjectEntry], off: int, nb: int) -> str:
    """Key of the pack object holding the first byte of a packed tensor."""
    if pack and nb:
        lo = pack.objects[0]
        return str(objects[lo + off // pack.chunk_bytes]["key"])
    return PACK_NODE


def _check_packed(
    storage: Storage,
    pack: PackRecord | None,
    objects: Sequence[ObjectEntry],
    records: Sequence[ArrayRecord],
    dests: dict[int, np.ndarray],
    where: Callable[[int], str],
    i: int,
    off: int,
) -> None:
    """Check a packed tensor's own crc32c (once all its bytes have arrived)."""
    rec = records[i]
    assert isinstance(rec, PackedRecord)
    want = rec.crc32c
    got = crc32c_of(dest_bytes(dests[i]))
    if got != want:
        key = _pack_key(pack, objects, off, records[i].nbytes)
        raise corrupt(storage, key, f"crc32c mismatch for packed tensor {where(i)} (expected {want}, got {got})")


def _pack_tasks(
    storage: Storage,
    pack: PackRecord,
    objects: Sequence[ObjectEntry],
    wanted: list[tuple[int, int, int]],
    dests: dict[int, np.ndarray],
    records: Sequence[ArrayRecord],
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
    csize = pack.chunk_bytes
    lo, hi = pack.objects
    objs = objects[lo:hi]
    per_chunk, npieces, offsets = _pieces_per_object(wanted, csize)
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
    return tasks, [(i, offsets[i], records[i].nbytes) for i in sorted(spanning)]


def _pieces_per_object(
    wanted: list[tuple[int, int, int]], csize: int
) -> tuple[dict[int, list[tuple[int, int, int, int]]], dict[int, int], dict[int, int]]:
    """The pieces of the packed tensors ``wanted`` per pack object ``j``:
    ``(dest index, offset in tensor, offset in object, length)``; the number
    of pieces of each tensor; each tensor's offset in the pack."""
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
    return per_chunk, npieces, offsets


_MERGE_GAP = 512 * 1024  # bytes of unwanted pack data read rather than starting another request


def _pack_full_task(storage: Storage, obj: ObjectEntry, csize: int, pieces: list[tuple[int, int, int, int]], dests: dict[int, np.ndarray]) -> Callable[[], None]:
    def run() -> None:
        check_size_declared(storage, obj, csize)
        key = obj["key"]
        # the whole object, in order: destination views, and scratch for the gaps
        views: list[memoryview] = []
        gaps: list[tuple[int, int]] = []  # (position in views, length)
        pos = 0
        for i, toff, coff, n in sorted(pieces, key=lambda p: p[2]):
            if coff > pos:
                gaps.append((len(views), coff - pos))
                views.append(memoryview(b""))
            views.append(dest_bytes(dests[i])[toff : toff + n])
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
        read_many(storage, key, _back_to_back(views), csize)
        check_crc(storage, obj, crc32c_many(views))

    return run


def _pack_map_task(
    storage: Storage,
    obj: ObjectEntry,
    csize: int,
    pieces: list[tuple[int, int, int, int]],
    dests: dict[int, np.ndarray],
    records: Sequence[ArrayRecord],
    views: set[int],
) -> Callable[[], None]:
    """Map a whole pack object, verify its crc32c over the mapping, then make
    the tensors in ``views`` views of it and copy the other pieces out."""

    def run() -> None:
        check_size_declared(storage, obj, csize)
        key = obj["key"]
        with damage(storage, key):
            mem = storage.map_object(key, csize)
        check_crc(storage, obj, crc32c_of(mem))
        for i, toff, coff, n in pieces:
            if i in views:
                dests[i] = _view(mem, records[i], coff)
            else:
                dest_bytes(dests[i])[toff : toff + n] = mem[coff : coff + n]

    return run


def _whole_pack_map_task(
    storage: Storage,
    objs: Sequence[ObjectEntry],
    csize: int,
    wanted: list[tuple[int, int, int]],
    dests: dict[int, np.ndarray],
    records: Sequence[ArrayRecord],
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
                dest_bytes(dests[i])[:] = mem[off : off + nb]

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
    obj: ObjectEntry,
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
            views.append((dest_bytes(dests[i])[toff : toff + n], coff))
        read_many(storage, key, views)
        for i, _toff, _coff, _n in run:
            if i not in spanning:
                _check_packed(storage, pack, objects, records, dests, where, i, offsets[i])

    return run_task


