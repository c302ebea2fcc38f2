"""Chunk planning: how a dense array is cut into chunk objects (no I/O).

Large tensors are split along their leading axes into chunks of about a
target size so that each chunk is one contiguous byte range of the
C-ordered array: a chunk is written straight from the array's memory, with
no copy, and read straight into the destination array.

Example:
    >>> chunk_layout((1000, 10), 4, 8000)
    ((200, 10), 0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cloudckpt.format.zarr_meta import chunk_key

__all__ = ["chunk_layout", "chunks_of", "Chunk", "PAGE"]

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


PAGE = 4096  # chunk objects of a multiple of this can be mapped back to back (Storage.map_objects)


def _page_rows(n: int, rows: int, row_bytes: int) -> int:
    """``rows`` rounded up so that a chunk is a whole number of 4 KiB pages,
    if that pads the array by at most 1% and grows a chunk by at most 25%;
    else ``rows``. Such chunks can be mapped as one array on load.

    Example:
        >>> _page_rows(50257, 16753, 1792), _page_rows(1000, 200, 40)
        (16768, 200)
    """
    align = PAGE // math.gcd(row_bytes, PAGE)
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


@dataclass(slots=True)
class Chunk:
    """One chunk object of a contiguously split array (see :func:`chunks_of`)."""

    key: str  # relative to the data group
    start: int  # byte offset in the C-ordered stored array
    valid: int  # bytes of real data
    size: int  # bytes of the stored (padded) object
    index: tuple[int, ...]  # slicing of the leading axes (logical array)
    rows: tuple[int, int]  # row range along the split axis


def chunks_of(shape: tuple[int, ...], itemsize: int, chunk: tuple[int, ...], k: int, node: str) -> list[Chunk]:
    """The chunk objects of an array of stored ``shape`` split along axis ``k`` (:func:`chunk_layout`).

    Example:
        >>> [(c.key, c.start, c.valid, c.size) for c in chunks_of((3, 2), 4, (2, 2), 0, "w")]
        [('w/c/0/0', 0, 16, 16), ('w/c/1/0', 16, 8, 16)]
    """
    n = len(shape)
    if n == 0:
        return [Chunk(f"{node}/c", 0, itemsize, itemsize, (), (0, 1))]
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
            out.append(Chunk(f"{node}/{chunk_key(idx)}", start, (r1 - r0) * row_bytes, rows * row_bytes, tuple(prefix), (r0, r1)))
    return out

