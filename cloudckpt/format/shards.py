"""Sharded arrays: a global array of which each process holds some boxes.

A *box* is a hyper-rectangle of a global array: ``(offset, shape)``. A
:class:`ShardedArray` leaf is what a framework's distributed tensor (a torch
``DTensor``, a multi-device ``jax.Array``) becomes for the tensor store: the
global shape and dtype, the boxes this process holds (with their data), and,
once the processes have told each other, every box of the array and which
ranks hold it.

This module is layout arithmetic only, no I/O:

* :func:`grid_for` finds one regular zarr chunk grid whose cells each lie
  inside one box, so that every rank writes only the chunks of its own
  shard and no two ranks write the same object; None when the boxes are
  not a regular grid (nested shardings), and the array is then stored as one
  zarr array per box.
* :func:`cells` enumerates the chunk objects of a stored array record with
  their boxes in the global array: what a reader needs to fetch a region.

Example:
    >>> import numpy as np
    >>> a = ShardedArray((4, 6), np.dtype("f4"), [((2, 0), np.ones((2, 6), "f4"))])
    >>> a.nbytes, a.local_nbytes
    (96, 48)
    >>> grid_for((10, 6), [((0, 0), (5, 6)), ((5, 0), (5, 6))], 4, 1 << 20)
    (5, 6)
    >>> grid_for((10,), [((0,), (3,)), ((3,), (2,)), ((5,), (3,)), ((8,), (2,))], 4, 1 << 20) is None
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloudckpt.format.chunking import chunk_layout
from cloudckpt.format.records import ChunkedRecord, ShardedRecord, record_from_json
from cloudckpt.format.zarr_meta import chunk_key

__all__ = ["Box", "ShardedArray", "PerRank", "grid_for", "box_chunking", "cells", "Cell", "intersect", "partition_problem"]

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offset, shape) in the global array


@dataclass
class ShardedArray:
    """A global array of ``shape`` and ``dtype`` of which this process holds ``pieces``.

    ``pieces`` are ``(offset, data)`` pairs: ``data`` (a numpy array) is the
    box of the global array that starts at ``offset``. ``boxes`` maps every
    box of the whole array to the ranks that hold it; it is filled in by the
    collective save (each rank knows only its own pieces) or, in a single
    process, from the pieces.

    Loading a checkpoint into a sharded target returns a ShardedArray too:
    the pieces this process asked for.

    Example:
        >>> import numpy as np
        >>> full = np.arange(12.0).reshape(3, 4)
        >>> s = ShardedArray((3, 4), full.dtype, [((0, 0), full[:, :2]), ((0, 2), full[:, 2:])])
        >>> np.array_equal(s.assemble(), full)
        True
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    pieces: list[tuple[tuple[int, ...], np.ndarray]]
    boxes: dict[Box, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)
        self.dtype = np.dtype(self.dtype)
        pieces = []
        for offset, data in self.pieces:
            offset = tuple(int(o) for o in offset)
            if len(offset) != len(self.shape) or data.ndim != len(self.shape):
                raise ValueError(f"a piece of rank {data.ndim} at {offset} does not fit an array of shape {self.shape}")
            if any(o < 0 or o + n > d for o, n, d in zip(offset, data.shape, self.shape, strict=True)):
                raise ValueError(f"a piece of shape {data.shape} at {offset} lies outside the array of shape {self.shape}")
            if data.dtype != self.dtype:
                raise ValueError(f"a piece of dtype {data.dtype} in an array of dtype {self.dtype}")
            pieces.append((offset, data))
        self.pieces = pieces

    @classmethod
    def of_boxes(cls, full: np.ndarray, boxes: Sequence[Box]) -> ShardedArray:
        """The boxes of a whole array, as pieces (copies; raises ValueError for a box outside it).

        Example:
            >>> ShardedArray.of_boxes(np.arange(4), [((1,), (2,))]).pieces[0][1]
            array([1, 2])
        """
        pieces = []
        for offset, shape in boxes:
            index = tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))
            if len(offset) != full.ndim or any(o < 0 or o + n > d for o, n, d in zip(offset, shape, full.shape, strict=True)):
                raise ValueError(f"no region {tuple(shape)} at {tuple(offset)} in an array of shape {full.shape}")
            pieces.append((tuple(offset), np.array(full[index if index else ...], copy=True)))
        return cls(full.shape, full.dtype, pieces)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole global array."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def local_nbytes(self) -> int:
        """Bytes of the pieces this process holds."""
        return sum(int(d.nbytes) for _, d in self.pieces)

    @property
    def ndim(self) -> int:
        """Number of dimensions of the global array."""
        return len(self.shape)

    def local_boxes(self) -> list[Box]:
        """The boxes of this process's pieces."""
        return [(o, tuple(d.shape)) for o, d in self.pieces]

    def assemble(self) -> np.ndarray:
        """The whole global array from the pieces (they must cover it).

        Raises ValueError if they do not.
        """
        out = np.empty(self.shape, self.dtype)
        covered = np.zeros(self.shape, bool) if self.pieces else None
        for offset, data in self.pieces:
            index = tuple(slice(o, o + n) for o, n in zip(offset, data.shape, strict=True))
            out[index] = data
            if covered is not None:
                covered[index] = True
        if math.prod(self.shape) and (covered is None or not covered.all()):
            raise ValueError(f"the pieces of this process do not cover the array of shape {self.shape}")
        return out


class PerRank:
    """Marks a value as per rank: each rank saves its own and gets its own back.

    For RNG states, data-loader positions and anything else that differs
    between the ranks of a distributed job. Restoring with the same number of
    ranks gives every rank the value it saved. With another world size, rank
    ``r`` gets the value saved by rank ``r`` if there was one; a rank beyond
    the saved world size keeps its current value (in-place restore) or gets
    ``PerRank(None)`` (``cloudckpt.load``), and a warning says so. In a
    single-process job, ``PerRank(x)`` is saved and restored as rank 0's.

    Example:
        >>> import numpy as np, cloudckpt
        >>> url = cloudckpt.save("memory://doc-perrank/c", {"rng": cloudckpt.PerRank(np.arange(2))})
        >>> cloudckpt.load(url)["rng"]
        PerRank(array([0, 1]))
    """

    __slots__ = ("is_missing", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.is_missing = False

    @classmethod
    def missing(cls) -> PerRank:
        """What a rank beyond the saved world size loads: ``PerRank(None)``
        with ``is_missing`` True (an in-place restore keeps the live value).

        Example:
            >>> PerRank.missing(), PerRank.missing().is_missing
            (PerRank(None), True)
        """
        out = cls(None)
        out.is_missing = True
        return out

    def __repr__(self) -> str:
        return f"PerRank({self.value!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PerRank):
            return NotImplemented
        a, b = self.value, other.value
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return bool(np.array_equal(a, b))
        return bool(a == b)

    __hash__ = None  # type: ignore[assignment]


def _divisor_at_most(n: int, r: int) -> int:
    """The largest divisor of ``n`` that is <= ``r`` (>= 1)."""
    r = max(1, min(n, r))
    for d in range(r, 0, -1):
        if n % d == 0:
            return d
    return 1


def box_chunking(box_shape: Sequence[int], itemsize: int, target: int) -> tuple[int, ...]:
    """A chunk shape that tiles ``box_shape`` exactly along every axis (it
    divides every box size), about ``target`` bytes, and is one contiguous
    run of a C-ordered box: ``(1, ..., 1, r, whole, ...)``.

    Where the row count of the split axis has no divisor near the target (a
    prime), the chunk takes the whole axis (larger than the target) rather
    than being tiny.

    Example:
        >>> box_chunking((8, 1000), 4, 8000)
        (2, 1000)
        >>> box_chunking((101, 1000), 4, 40000)   # 101 is prime: no 10-row chunks
        (101, 1000)
    """
    shape = tuple(int(d) for d in box_shape)
    if not shape:
        return ()
    if math.prod(shape) == 0:
        return tuple(max(1, d) for d in shape)
    chunk, k = chunk_layout(shape, itemsize, target)
    rows = chunk[k]
    d = _divisor_at_most(shape[k], rows)
    if d * 4 < rows:
        d = shape[k]
    return (*chunk[:k], d, *chunk[k + 1 :])


def grid_for(
    shape: Sequence[int], boxes: Sequence[Box], itemsize: int, target: int
) -> tuple[int, ...] | None:
    """One regular chunk grid for an array partitioned into ``boxes``, or None.

    The boxes (empty ones ignored) must partition the array into a regular
    grid: along every axis the same size ``c`` (the last one may be
    shorter). The chunk shape returned tiles every box exactly, so each
    chunk object lies inside one box and is written by a rank holding it.
    None when the boxes are not such a grid (nested or uneven shardings):
    the caller stores one array per box.

    Example:
        >>> grid_for((9, 4), [((0, 0), (5, 4)), ((5, 0), (4, 4))], 4, 1 << 20)
        (5, 4)
        >>> grid_for((9, 4), [((0, 0), (4, 4)), ((4, 0), (5, 4))], 4, 1 << 20) is None
        True
    """
    shape = tuple(int(d) for d in shape)
    live = sorted({(tuple(o), tuple(s)) for o, s in boxes if math.prod(s) > 0})
    if not shape:
        return () if live else None
    if math.prod(shape) == 0:
        return tuple(max(1, d) for d in shape)
    sizes: list[int] = []
    for d, n in enumerate(shape):
        starts = sorted({o[d] for o, _ in live})
        step = starts[1] - starts[0] if len(starts) > 1 else n
        if starts[0] != 0 or any(st != i * step for i, st in enumerate(starts)):
            return None
        sizes.append(step)
    for o, s in live:
        for d, n in enumerate(shape):
            if s[d] != min(sizes[d], n - o[d]):
                return None
    if len(live) != math.prod(math.ceil(n / c) for n, c in zip(shape, sizes, strict=True)):
        return None  # overlapping or missing boxes
    return box_chunking(sizes, itemsize, target)


@dataclass(frozen=True)
class Cell:
    """One stored chunk object of an array: its key, its index in the
    record's object list, the box it covers in the global array, and the
    chunk shape it is stored with (edge chunks are padded)."""

    key: str
    obj: int
    offset: tuple[int, ...]
    shape: tuple[int, ...]
    chunk: tuple[int, ...]


def _grid_cells(
    path: str, shape: tuple[int, ...], chunk: tuple[int, ...], first: int, origin: tuple[int, ...], want: Box | None
) -> Iterator[Cell]:
    n = len(shape)
    if n == 0:
        yield Cell(f"{path}/c", first, origin, (), ())
        return
    if math.prod(shape) == 0:
        return
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunk, strict=True))
    if want is None:
        ranges = [range(g) for g in grid]
    else:
        wo, ws = want
        local = [w - o for w, o in zip(wo, origin, strict=True)]
        ranges = []
        for d in range(n):
            lo = max(0, local[d])
            hi = min(shape[d], local[d] + ws[d])
            if hi <= lo:
                return
            ranges.append(range(lo // chunk[d], (hi - 1) // chunk[d] + 1))
    strides = [1] * n
    for d in range(n - 2, -1, -1):
        strides[d] = strides[d + 1] * grid[d + 1]
    for idx in np.ndindex(*(len(r) for r in ranges)):
        cell = tuple(r[i] for r, i in zip(ranges, idx, strict=True))
        start = tuple(i * c for i, c in zip(cell, chunk, strict=True))
        valid = tuple(min(c, s - st) for c, s, st in zip(chunk, shape, start, strict=True))
        flat = sum(i * st for i, st in zip(cell, strides, strict=True))
        offset = tuple(o + st for o, st in zip(origin, start, strict=True))
        yield Cell(f"{path}/{chunk_key(cell)}", first + flat, offset, valid, chunk)


def cells(record: ChunkedRecord | ShardedRecord | Mapping[str, Any], shape: Sequence[int], want: Box | None = None) -> list[Cell]:
    """The chunk objects of a stored (chunked or per-box) array record that
    intersect ``want`` (all of them when None), with their boxes.

    ``shape`` is the stored shape. Object indices are into the manifest's
    object list. A record as JSON is read as its typed record.

    Example:
        >>> rec = ChunkedRecord("<f4", (4, 5), 80, "w", (2, 3), None, (5, 9))
        >>> [(c.key, c.obj, c.offset, c.shape) for c in cells(rec, (4, 5), ((1, 3), (1, 2)))]
        [('w/c/0/1', 6, (0, 3), (2, 2))]
    """
    rec = record if isinstance(record, (ChunkedRecord, ShardedRecord)) else record_from_json(record)
    shape = tuple(int(d) for d in shape)
    if isinstance(rec, ChunkedRecord):
        return list(_grid_cells(rec.path, shape, rec.chunk_shape, rec.objects[0], (0,) * len(shape), want))
    if not isinstance(rec, ShardedRecord):
        raise ValueError("a packed array has no chunk objects of its own")
    out: list[Cell] = []
    for sh in rec.shards:
        origin = sh.offset + (0,) * (len(shape) - len(sh.offset))
        sshape = sh.shape + shape[len(sh.shape) :]
        out.extend(_grid_cells(sh.path, sshape, sh.chunk_shape, sh.objects[0], origin, want))
    return out


def intersect(a: Box, b: Box) -> Box | None:
    """The intersection of two boxes, or None if it is empty.

    Example:
        >>> intersect(((0, 0), (4, 4)), ((2, 3), (5, 5)))
        ((2, 3), (2, 1))
    """
    (ao, as_), (bo, bs) = a, b
    lo = tuple(max(x, y) for x, y in zip(ao, bo, strict=True))
    hi = tuple(min(x + n, y + m) for x, n, y, m in zip(ao, as_, bo, bs, strict=True))
    if any(h <= l_ for l_, h in zip(lo, hi, strict=True)) and lo:
        return None
    return lo, tuple(h - l_ for l_, h in zip(lo, hi, strict=True))


_MAX_CELLS = 1 << 22  # elementary cells of the occupancy grid checked with numpy


def partition_problem(shape: Sequence[int], boxes: Sequence[Box]) -> str:
    """Why ``boxes`` (distinct, non-empty) do not cover an array of ``shape``
    exactly once, or "" if they do.

    The boxes' edges cut every axis into intervals; an occupancy grid of
    those cells (one numpy slice assignment per box) finds overlaps and gaps
    in time proportional to the number of cells, not to the square of the
    number of boxes. Grids larger than a few million cells (thousands of
    boxes on several axes at once) fall back to comparing pairs.

    Example:
        >>> partition_problem((4, 4), [((0, 0), (4, 2)), ((0, 2), (4, 2))])
        ''
        >>> partition_problem((4,), [((0,), (3,)), ((2,), (2,))])
        'the pieces at (0,) (shape (3,)) and at (2,) (shape (2,)) overlap'
        >>> partition_problem((4,), [((0,), (3,))])
        'the pieces cover 3 of its 4 elements'
    """
    shape = tuple(int(d) for d in shape)
    if shape and math.prod(shape) == 0:
        return ""  # nothing to cover
    if not boxes:
        return "no process holds any of it"
    order = sorted((tuple(o), tuple(b)) for o, b in boxes)
    covered = sum(math.prod(b) for _, b in order)
    if not shape:
        return "" if len(order) == 1 else f"{len(order)} pieces of a 0-d array"
    cuts = [sorted({0, n} | {o[d] for o, _ in order} | {o[d] + b[d] for o, b in order}) for d, n in enumerate(shape)]
    if any(c[0] < 0 or c[-1] > n for c, n in zip(cuts, shape, strict=True)):
        return "a piece lies outside the array"
    cells_n = math.prod(len(c) - 1 for c in cuts)
    if cells_n <= _MAX_CELLS:
        from bisect import bisect_left

        occupied = np.zeros(tuple(len(c) - 1 for c in cuts), np.int8)
        for k, (o, b) in enumerate(order):
            index = tuple(
                slice(bisect_left(c, o[d]), bisect_left(c, o[d] + b[d])) for d, c in enumerate(cuts)
            )
            if occupied[index].any():
                j = next(j for j, (oo, bb) in enumerate(order[:k])
                         if all(x < y + m and y < x + n for x, n, y, m in zip(o, b, oo, bb, strict=True)))  # fmt: skip
                return f"the pieces at {order[j][0]} (shape {order[j][1]}) and at {o} (shape {b}) overlap"
            occupied[index] = 1
    else:
        for i, (oa, ba) in enumerate(order):
            for ob, bb in order[i + 1 :]:
                if ob[0] >= oa[0] + ba[0]:
                    break
                if all(x < y + m and y < x + n for x, n, y, m in zip(oa, ba, ob, bb, strict=True)):
                    return f"the pieces at {oa} (shape {ba}) and at {ob} (shape {bb}) overlap"
    if covered != math.prod(shape):
        return f"the pieces cover {covered} of its {math.prod(shape)} elements"
    return ""
