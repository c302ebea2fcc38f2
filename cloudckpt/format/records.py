"""Typed array records of a manifest: what each array is and where its bytes are.

A manifest's ``arrays`` list holds one record per array leaf, of one of
three kinds (a tagged union, told apart with ``isinstance`` or ``match``):

* :class:`PackedRecord`: a small tensor inside the pack (``_pack``), at an
  offset, with its own crc32c;
* :class:`ChunkedRecord`: one zarr array of its own, on a regular chunk grid
  (``axis``: the axis of a contiguous split, or None for a sharded grid);
* :class:`ShardedRecord`: one zarr array per shard (:class:`Shard`).

:class:`PackRecord` describes the pack itself. The JSON of every record is
built by :meth:`to_json` in the order the writer has always used, so a
manifest's bytes do not depend on these types; :func:`record_from_json`
builds a record from the JSON of a validated manifest
(:func:`cloudckpt.format.manifest.parse_manifest` checks it first).
``objects`` is a ``[start, stop)`` range of the manifest's object list.
The JSON's types (and so the schema) are in :mod:`cloudckpt.format.manifest_types`.

Example:
    >>> r = record_from_json({"dtype": "<f4", "shape": [2], "nbytes": 8, "packed": {"offset": 0, "crc32c": 5}})
    >>> r
    PackedRecord(dtype='<f4', shape=(2,), nbytes=8, offset=0, crc32c=5)
    >>> r.to_json()
    {'dtype': '<f4', 'shape': [2], 'nbytes': 8, 'packed': {'offset': 0, 'crc32c': 5}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudckpt.format.manifest_types import ArrayJson, ChunkedJson, PackJson, ShardJson

__all__ = [
    "PackedRecord",
    "ChunkedRecord",
    "Shard",
    "ShardedRecord",
    "ArrayRecord",
    "PackRecord",
    "record_from_json",
    "records_from_json",
    "pack_from_json",
    "is_region_record",
]


Span = tuple[int, int]


# Not frozen: a frozen dataclass is built 4x slower (object.__setattr__ per field), and a load
# of a 10,000-tensor manifest builds 10,000 records. Nothing mutates a record once it is placed.
@dataclass(slots=True)
class PackedRecord:
    """A small tensor stored in the pack at ``offset``; ``crc32c`` of its bytes
    (None until the writers have reported it).

    Example:
        >>> PackedRecord("<u1", (3,), 3, 16, 0).offset
        16
    """

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int
    crc32c: int | None

    def to_json(self) -> ArrayJson:
        """The record as the manifest stores it.

        Example:
            >>> PackedRecord("<u1", (), 1, 0, 9).to_json()["packed"]
            {'offset': 0, 'crc32c': 9}
        """
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
            "packed": {"offset": self.offset, "crc32c": self.crc32c},  # type: ignore[typeddict-item]
        }


@dataclass(slots=True)
class ChunkedRecord:
    """An array stored as its own zarr array at ``path`` with ``chunk_shape``.

    ``axis``: the contiguous split's axis, or None for a sharded grid.

    Example:
        >>> ChunkedRecord("<f4", (4,), 16, "w", (2,), 0, (3, 5)).to_json()["chunked"]
        {'path': 'w', 'chunk_shape': [2], 'axis': 0, 'objects': [3, 5]}
    """

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    path: str
    chunk_shape: tuple[int, ...]
    axis: int | None
    objects: Span

    def to_json(self) -> ArrayJson:
        """The record as the manifest stores it (see the class example)."""
        chunked: ChunkedJson = {
            "path": self.path,
            "chunk_shape": list(self.chunk_shape),
            "axis": self.axis,
            "objects": list(self.objects),  # type: ignore[typeddict-item]  # (a JSON list: a tuple to the types)
        }
        return {"dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes, "chunked": chunked}


@dataclass(slots=True)
class Shard:
    """One shard of a :class:`ShardedRecord`: a zarr array at ``path`` holding
    the box ``(offset, shape)`` of the global array.

    Example:
        >>> Shard("w/_s0", (0,), (3,), (3,), 0, (1, 2)).to_json()["objects"]
        [1, 2]
    """

    path: str
    offset: tuple[int, ...]
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    axis: int | None
    objects: Span

    def to_json(self) -> ShardJson:
        """The shard as the manifest stores it (see the class example)."""
        return {
            "path": self.path,
            "offset": list(self.offset),
            "shape": list(self.shape),
            "chunk_shape": list(self.chunk_shape),
            "axis": self.axis,  # type: ignore[typeddict-item]  # (writers never make a shard without an axis)
            "objects": list(self.objects),  # type: ignore[typeddict-item]
        }


@dataclass(slots=True)
class ShardedRecord:
    """An array stored as one zarr array per shard (format version 3).

    Example:
        >>> s = Shard("w/_s0", (0,), (4,), (4,), 0, (0, 1))
        >>> list(ShardedRecord("<f4", (4,), 16, (s,)).to_json())
        ['dtype', 'shape', 'nbytes', 'shards']
    """

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    shards: tuple[Shard, ...]

    def to_json(self) -> ArrayJson:
        """The record as the manifest stores it (see the class example)."""
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
            "shards": [s.to_json() for s in self.shards],
        }


ArrayRecord = PackedRecord | ChunkedRecord | ShardedRecord


@dataclass(slots=True)
class PackRecord:
    """The pack: ``nbytes`` of small tensors back to back at ``path``, in objects of ``chunk_bytes``.

    Example:
        >>> PackRecord("_pack", 10, 8, (4, 6)).to_json()
        {'path': '_pack', 'nbytes': 10, 'chunk_bytes': 8, 'objects': [4, 6]}
    """

    path: str
    nbytes: int
    chunk_bytes: int
    objects: Span

    def to_json(self) -> PackJson:
        """The pack as the manifest stores it (see the class example)."""
        objects = list(self.objects)
        return {"path": self.path, "nbytes": self.nbytes, "chunk_bytes": self.chunk_bytes, "objects": objects}  # type: ignore[typeddict-item]


def _span(v: Sequence[int]) -> Span:
    return int(v[0]), int(v[1])


def _shard(s: Mapping[str, Any]) -> Shard:
    axis = s["axis"]
    return Shard(
        s["path"], tuple(s["offset"]), tuple(s["shape"]), tuple(s["chunk_shape"]),
        None if axis is None else int(axis), _span(s["objects"]),
    )  # fmt: skip


def record_from_json(a: Mapping[str, Any]) -> ArrayRecord:
    """The typed record of one entry of a validated manifest's ``arrays``.

    Example:
        >>> record_from_json({"dtype": "<f4", "shape": [4], "nbytes": 16,
        ...                   "chunked": {"path": "w", "chunk_shape": [4], "axis": None, "objects": [1, 2]}}).axis is None
        True
    """
    dtype, shape, nbytes = a["dtype"], tuple(a["shape"]), a["nbytes"]  # (ints: the manifest was validated)
    p = a.get("packed")
    if p is not None:
        return PackedRecord(dtype, shape, nbytes, p["offset"], p["crc32c"])
    if "chunked" in a:
        c = a["chunked"]
        axis = c["axis"]
        return ChunkedRecord(
            dtype, shape, nbytes, c["path"], tuple(c["chunk_shape"]), None if axis is None else int(axis), _span(c["objects"])
        )
    return ShardedRecord(dtype, shape, nbytes, tuple(_shard(s) for s in a["shards"]))


def records_from_json(arrays: Sequence[Mapping[str, Any] | ArrayRecord]) -> list[ArrayRecord]:
    """:func:`record_from_json` of every entry (typed records pass through).

    Example:
        >>> records_from_json([{"dtype": "|b1", "shape": [], "nbytes": 1, "packed": {"offset": 0, "crc32c": 0}}])[0].nbytes
        1
    """
    out: list[ArrayRecord] = []
    add, packed = out.append, PackedRecord
    for a in arrays:  # (inlined for packed records: a manifest may hold many thousands)
        if isinstance(a, dict):
            p = a.get("packed")
            add(packed(a["dtype"], tuple(a["shape"]), a["nbytes"], p["offset"], p["crc32c"]) if p is not None else record_from_json(a))
        else:
            add(a)  # type: ignore[arg-type]
    return out


def pack_from_json(pack: Mapping[str, Any] | PackRecord | None) -> PackRecord | None:
    """The typed pack record of a validated manifest's ``pack`` (None stays None).

    Example:
        >>> pack_from_json({"path": "_pack", "nbytes": 3, "chunk_bytes": 3, "objects": [0, 1]}).objects
        (0, 1)
    """
    if pack is None or isinstance(pack, PackRecord):
        return pack
    return PackRecord(pack["path"], int(pack["nbytes"]), int(pack["chunk_bytes"]), _span(pack["objects"]))


def is_region_record(record: ArrayRecord) -> bool:
    """Whether a record needs a region read even for a whole-array read (a
    sharded grid or per-shard layout).

    Example:
        >>> is_region_record(PackedRecord("<u1", (1,), 1, 0, 0))
        False
    """
    return isinstance(record, ShardedRecord) or (isinstance(record, ChunkedRecord) and record.axis is None)

