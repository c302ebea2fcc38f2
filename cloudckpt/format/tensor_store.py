"""The tensor store: array leaves <-> a zarr v3 group of chunk objects.

Layout of a checkpoint's data group (a prefix unique to the save attempt)::

    zarr.json                root group; consolidated metadata of every node
    <node path>/zarr.json    one array per large tensor (>= pack_threshold bytes)
    <node path>/c/i/j/...    its chunks: regular grid, uncompressed, little-endian
    _pack/zarr.json          one flat uint8 array holding every small tensor
    _pack/c/<j>              back to back; offsets, dtypes, shapes in its attributes

Large tensors are split into chunks of about ``chunk_bytes``, each one
contiguous byte range of the array (:mod:`cloudckpt.format.chunking`); small
tensors are packed so that a state of many tiny tensors costs a few
requests, not one each. Every object gets a crc32c, every packed tensor too;
the manifest records them (:mod:`cloudckpt.format.records`) and reads
verify them.

The store is split by job: this module holds its options;
:mod:`~cloudckpt.format.store_plan` plans the layout (records, zarr
documents, the objects to write), :mod:`~cloudckpt.format.store_write`
writes, :mod:`~cloudckpt.format.store_read` reads, and
:mod:`~cloudckpt.format.regions` handles sharded arrays and region reads.

Example:
    >>> import numpy as np
    >>> from cloudckpt.storage import open_storage
    >>> from cloudckpt.format.tree import flatten
    >>> from cloudckpt.format.store_write import write_arrays
    >>> from cloudckpt.format.store_read import read_arrays
    >>> s = open_storage("memory://doc-arrays")
    >>> _, leaves = flatten({"w": np.arange(6.0).reshape(2, 3)})
    >>> written = write_arrays(s, "data-1", leaves)
    >>> out = read_arrays(s, "data-1", written.records, written.pack, written.objects, [0])
    >>> out[0]
    array([[0., 1., 2.],
           [3., 4., 5.]])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StoreOptions", "check_options", "PACK_NODE"]

PACK_NODE = "_pack"
MiB = 1 << 20


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


def check_options(options: StoreOptions | None) -> StoreOptions:
    """``options``, or the defaults for None; TypeError for anything else.

    Example:
        >>> check_options(None).chunk_bytes == 32 * 2**20
        True
    """
    if options is None:
        return StoreOptions()
    if not isinstance(options, StoreOptions):
        raise TypeError(f"options must be a cloudckpt.StoreOptions or None, got {type(options).__name__}")
    return options
