"""Reading checkpoint objects with damage reported as damage.

Shared by the tensor store's read path (:mod:`cloudckpt.format.store_read`)
and region reads (:mod:`cloudckpt.format.regions`): a missing, short or long
object, or one whose crc32c does not match, becomes a
:class:`~cloudckpt.errors.CorruptCheckpointError` naming the object's URL.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage("memory://doc-object-io")
    >>> out = memoryview(bytearray(3))
    >>> read_into(s, "gone", out, 0)
    Traceback (most recent call last):
    ...
    cloudckpt.errors.CorruptCheckpointError: checkpoint object memory://doc-object-io/gone is damaged: object is missing
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cloudckpt.errors import CorruptCheckpointError, ObjectNotFoundError, OversizedObjectError, TruncatedObjectError
from cloudckpt.format.dtypes import stored_view
from cloudckpt.storage import Storage

__all__ = [
    "corrupt",
    "damage",
    "damage_of_any",
    "read_into",
    "read_many",
    "check_crc",
    "check_size_declared",
    "flat_bytes",
    "dest_bytes",
]


def corrupt(storage: Storage, key: str, what: str) -> CorruptCheckpointError:
    """The error for object ``key`` of ``storage`` being damaged (``what``: how).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> corrupt(open_storage("memory://doc-c"), "k", "too short")
        CorruptCheckpointError('checkpoint object memory://doc-c/k is damaged: too short')
    """
    return CorruptCheckpointError(f"checkpoint object {storage.url_for(key)} is damaged: {what}")


@contextlib.contextmanager
def damage(storage: Storage, key: str) -> Iterator[None]:
    """Report a missing or short (or long) object read inside the block as damage (see the module example)."""
    try:
        yield
    except ObjectNotFoundError:
        raise corrupt(storage, key, "object is missing") from None
    except TruncatedObjectError:
        raise corrupt(storage, key, "object is truncated") from None
    except OversizedObjectError:
        raise corrupt(storage, key, "object is longer than its recorded size") from None


@contextlib.contextmanager
def damage_of_any(storage: Storage, keys: Sequence[str]) -> Iterator[None]:
    """:func:`damage` for a request over several objects: the error names the one it was about."""
    try:
        yield
    except (ObjectNotFoundError, TruncatedObjectError, OversizedObjectError) as exc:
        key = next((k for k in keys if storage.url_for(k) == getattr(exc, "url", None)), keys[0])
        with damage(storage, key):
            raise


def read_into(storage: Storage, key: str, out: memoryview, start: int, size: int | None = None) -> None:
    """``storage.read_into`` with a missing, short (or, given its ``size``, long) object reported as damage.

    See the module example.
    """
    with damage(storage, key):
        storage.read_into(key, out, start, size=size)


def read_many(storage: Storage, key: str, pieces: list[tuple[memoryview, int]], size: int | None = None) -> None:
    """``storage.read_into_many`` with a missing, short (or, given its ``size``, long) object reported as damage.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> s = open_storage("memory://doc-many"); s.write("k", b"abcd")
        >>> a, b = memoryview(bytearray(2)), memoryview(bytearray(2))
        >>> read_many(s, "k", [(a, 0), (b, 2)], 4); bytes(a), bytes(b)
        (b'ab', b'cd')
    """
    with damage(storage, key):
        storage.read_into_many(key, pieces, size=size)


def check_crc(storage: Storage, obj: Mapping[str, Any], got: int) -> None:
    """Raise naming the object if ``got``, the crc32c of its bytes as read, is not the recorded one.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> check_crc(open_storage("memory://doc-crc"), {"key": "k", "crc32c": 1}, 1)
    """
    if got != obj["crc32c"]:
        raise corrupt(storage, obj["key"], f"crc32c mismatch (expected {obj['crc32c']}, got {got})")


def check_size_declared(storage: Storage, obj: Mapping[str, Any], size: int) -> None:
    """Raise if the manifest declares another size for ``obj`` than the array layout needs.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> check_size_declared(open_storage("memory://doc-size"), {"key": "k", "size": 4}, 4)
    """
    if obj["size"] != size:
        raise CorruptCheckpointError(
            f"manifest of {storage.url}: object {obj['key']} declares {obj['size']} bytes, the array layout needs {size}"
        )


def flat_bytes(arr: np.ndarray) -> memoryview:
    """The stored bytes of ``arr`` as a flat memoryview (a view when possible).

    Example:
        >>> flat_bytes(np.arange(2, dtype="<u2")).tobytes()
        b'\\x00\\x00\\x01\\x00'
    """
    sv = stored_view(arr)
    return memoryview(sv.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def dest_bytes(dest: np.ndarray) -> memoryview:
    """The bytes of a destination array (C-contiguous, little-endian) as a writable flat memoryview.

    Example:
        >>> dest_bytes(np.zeros(2, "u2")).nbytes
        4
    """
    return memoryview(dest.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
