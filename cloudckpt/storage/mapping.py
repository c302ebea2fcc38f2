"""Memory-mapping files copy-on-write, one at a time or back to back in one region (local disk, POSIX).

A loaded tensor can be the page cache itself: no copy, no zero-filled page.
:class:`~cloudckpt.storage.backends.local.LocalBackend` maps with these
functions; :meth:`Storage.map_object <cloudckpt.storage.Storage.map_object>`
and :meth:`~cloudckpt.storage.Storage.map_objects` check the sizes with
:func:`check_size`.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "f"); _ = open(path, "wb").write(b"abc")
    >>> view, size = map_private(path, 3); bytes(view), size
    (b'abc', 3)
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Callable
from typing import Any

from cloudckpt.errors import OversizedObjectError, TruncatedObjectError

__all__ = ["MAPS_OBJECTS", "PLACES_MAPPINGS", "libc", "map_private", "reserve_mapping", "map_private_at", "check_size"]


def libc(name: str, argtypes: list[Any], restype: Any) -> Any:
    """The C library's function ``name`` (Linux), or None. Python's ``os``
    and ``mmap`` have no binding for ``sync_file_range``, ``renameat2`` nor
    for a mapping at a chosen address, hence ctypes.

    Example:
        >>> libc("no_such_function_here", [], None) is None
        True
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


# mmap(addr, length, prot, flags, fd, offset), to place a file's mapping at addr
_MAP_FIXED = 0x10  # Linux
_mmap_fixed: Callable[[int, int, int, int, int, int], int | None] | None = libc(
    "mmap", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long], ctypes.c_void_p
)
if not hasattr(mmap, "MAP_PRIVATE"):
    _mmap_fixed = None

#: whether files can be mapped copy-on-write here (POSIX; not Windows)
MAPS_OBJECTS = hasattr(mmap, "MAP_PRIVATE")
#: whether a file can be mapped at an offset of a reserved region (Linux)
PLACES_MAPPINGS = _mmap_fixed is not None


def _address(region: mmap.mmap) -> int:
    anchor = ctypes.c_char.from_buffer(region)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # releases its export of the region's buffer


def map_private(path: str, size: int) -> tuple[memoryview, int]:
    """A copy-on-write mapping of the first ``size`` bytes of the file
    (nothing if the file is longer), and the file's size: the caller
    reports a file shorter or longer than ``size``.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "f"); _ = open(path, "wb").write(b"abcdef")
        >>> view, size = map_private(path, 4); view.nbytes, size
        (0, 6)
    """
    with open(path, "rb", buffering=0) as f:
        have = os.fstat(f.fileno()).st_size
        n = min(size, have)
        if n == 0 or have > size:
            return memoryview(bytearray(0)), have
        m = mmap.mmap(f.fileno(), n, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if hasattr(m, "madvise"):
        m.madvise(mmap.MADV_WILLNEED)  # read ahead what is not in the page cache yet
    return memoryview(m), have


def reserve_mapping(size: int) -> mmap.mmap:
    """An anonymous private mapping of ``size`` (> 0) bytes whose pages
    :func:`map_private_at` replaces with files (where :data:`PLACES_MAPPINGS`).

    Example:
        >>> len(reserve_mapping(mmap.PAGESIZE)) == mmap.PAGESIZE
        True
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def map_private_at(region: mmap.mmap, offset: int, path: str, size: int) -> int:
    """Map the first ``size`` bytes of the file copy-on-write over ``region``
    from ``offset`` (a multiple of the page size), replacing its pages;
    closing the region unmaps them. Returns the file's size; nothing is
    mapped unless it is ``size``.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "f"); _ = open(path, "wb").write(b"xyz")
        >>> region = reserve_mapping(2 * mmap.PAGESIZE)
        >>> not PLACES_MAPPINGS or (map_private_at(region, mmap.PAGESIZE, path, 3) == 3 and region[mmap.PAGESIZE:][:3] == b"xyz")
        True
    """
    assert _mmap_fixed is not None and offset % mmap.PAGESIZE == 0 and offset + size <= len(region)
    with open(path, "rb", buffering=0) as f:
        have = os.fstat(f.fileno()).st_size
        if have != size:
            return have
        if size == 0:
            return 0
        want = _address(region) + offset
        got = _mmap_fixed(want, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED, f.fileno(), 0)
        if got != want:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {path} at an offset of a reserved region: {os.strerror(err)}")
    if hasattr(region, "madvise"):
        region.madvise(mmap.MADV_WILLNEED, offset, size)  # read ahead what is not in the page cache yet
    return size


def check_size(url: str, have: int, size: int) -> None:
    """Raise :class:`~cloudckpt.errors.OversizedObjectError` (or
    :class:`~cloudckpt.errors.TruncatedObjectError`) if an object of ``have``
    bytes is longer (shorter) than its recorded ``size``.

    Example:
        >>> check_size("memory://b/k", 4, 5)
        Traceback (most recent call last):
        ...
        cloudckpt.errors.TruncatedObjectError: read memory://b/k: object is truncated: wanted 5 bytes, it holds 4
    """
    if have > size:
        raise OversizedObjectError(
            f"read {url}: the object is longer than its recorded size of {size} bytes ({have})", url=url, operation="read"
        )
    if have < size:
        raise TruncatedObjectError(
            f"read {url}: object is truncated: wanted {size} bytes, it holds {have}", url=url, operation="read"
        )
