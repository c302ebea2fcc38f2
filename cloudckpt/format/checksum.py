"""Checksums of stored objects, incremental over buffers.

Two per object: the crc32c (Castagnoli, as GCS and S3 use), which catches
damage, and a content hash (XXH3-128, from the ``xxhash`` package), wide
enough to stand for the bytes, by which an incremental save or ``cloudckpt
cp`` recognises an object a checkpoint already holds
(:func:`checksums_many` computes both in one pass over the buffers).

The ``crc32c`` package computes them (in C, releasing the GIL on large
buffers). Importing that package runs its ``__init__``, which reads its own
version with ``importlib.metadata`` and imports its command line (argparse):
about 15 ms, a third of ``import cloudckpt``, paid by the first load of every
restarted job. :func:`_crc32c_function` therefore loads the package's C
extension module alone when it finds it, and falls back to the public
``import crc32c`` (logging why) when it does not.

Example:
    >>> crc32c_of(b"hello")
    2591144780
    >>> crc32c_of(b"lo", crc32c_of(b"hel"))
    2591144780
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

from cloudckpt.storage.protocol import byte_view

__all__ = ["crc32c_of", "crc32c_many", "checksums_many", "content_hash_many", "CONTENT_HASH_ALGORITHM"]

#: The name of the content hash in a manifest's ``content_hashes``.
CONTENT_HASH_ALGORITHM = "xxh3-128"

Buffer = bytes | bytearray | memoryview

log = logging.getLogger("cloudckpt")


def _crc32c_function(fast: bool = True) -> Callable[[Any, int], int]:
    """``crc32c(data, value)`` of the ``crc32c`` package: from its C extension
    module loaded on its own (``fast``), else from the public package."""
    if fast:
        try:
            spec = importlib.util.find_spec("crc32c")  # finds the package without running it
            where = list(spec.submodule_search_locations or []) if spec is not None else []
            for directory in where:
                for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                    path = os.path.join(directory, "_crc32c" + suffix)
                    if os.path.exists(path):
                        loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
                        ext = importlib.util.spec_from_file_location("crc32c._crc32c", path, loader=loader)
                        assert ext is not None
                        module = importlib.util.module_from_spec(ext)
                        loader.exec_module(module)
                        fn: Callable[[Any, int], int] = module.crc32c
                        if fn(b"123456789", 0) == 0xE3069283:
                            return fn
            reason = "its C extension module was not found"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        log.debug("crc32c: importing the package (%s)", reason)
    import crc32c

    public: Callable[[Any, int], int] = crc32c.crc32c
    return public


_crc32c = _crc32c_function()


def crc32c_of(data: Buffer, value: int = 0) -> int:
    """The crc32c of ``data``, continuing from ``value``. Releases the GIL on large buffers.

    Example:
        >>> crc32c_of(b"123456789") == 0xE3069283
        True
    """
    return int(_crc32c(data, value))


def crc32c_many(buffers: Iterable[Buffer], value: int = 0) -> int:
    """The crc32c of the concatenation of ``buffers``.

    Example:
        >>> crc32c_many([b"hel", b"lo"]) == crc32c_of(b"hello")
        True
    """
    for b in buffers:
        value = int(_crc32c(b, value))
    return value


def content_hash_many(buffers: Iterable[Buffer]) -> str:
    """The XXH3-128 of the concatenation of ``buffers``, as 32 lowercase hex digits.

    Example:
        >>> content_hash_many([b"hel", b"lo"]) == content_hash_many([b"hello"])
        True
        >>> len(content_hash_many([]))
        32
    """
    h = xxhash.xxh3_128()
    for b in buffers:
        h.update(b)
    return str(h.hexdigest())


def checksums_many(buffers: Iterable[Buffer]) -> tuple[int, str]:
    """The crc32c and the content hash of the concatenation of ``buffers``,
    in one pass (each buffer is read while it is in the CPU's cache).

    Example:
        >>> crc, digest = checksums_many([b"hel", b"lo"])
        >>> crc == crc32c_of(b"hello"), digest == content_hash_many([b"hello"])
        (True, True)
    """
    h = xxhash.xxh3_128()
    value = 0
    for b in buffers:
        view = byte_view(b)
        # pieces of 4 MiB: the crc of a piece runs while it is still in the cache the hash read it into
        for lo in range(0, view.nbytes, _PIECE):
            piece = view[lo : lo + _PIECE]
            value = int(_crc32c(piece, value))
            h.update(piece)
    return value, str(h.hexdigest())


_PIECE = 4 << 20
