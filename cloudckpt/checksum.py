"""crc32c checksums (Castagnoli, as GCS and S3 use), incremental over buffers.

Example:
    >>> crc32c_of(b"hello")
    2591144780
    >>> crc32c_of(b"lo", crc32c_of(b"hel"))
    2591144780
"""

from __future__ import annotations

from collections.abc import Iterable

import crc32c as _crc32c

__all__ = ["crc32c_of", "crc32c_many"]

Buffer = bytes | bytearray | memoryview


def crc32c_of(data: Buffer, value: int = 0) -> int:
    """The crc32c of ``data``, continuing from ``value``. Releases the GIL on large buffers."""
    return int(_crc32c.crc32c(data, value))


def crc32c_many(buffers: Iterable[Buffer], value: int = 0) -> int:
    """The crc32c of the concatenation of ``buffers``."""
    for b in buffers:
        value = int(_crc32c.crc32c(b, value))
    return value
