"""Defaults for the optional verbs of a :class:`~cloudckpt.storage.protocol.Backend`.

Example:
    >>> BackendBase.url_path("s3", "b//k")
    'b/k'
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import mmap
from collections.abc import Iterator
from typing import Any

from cloudckpt.storage.protocol import Capabilities
from cloudckpt.storage.urls import normalise_key_path

__all__ = ["BackendBase", "crc32c_of_base64"]


def crc32c_of_base64(text: str | None) -> int | None:
    """The CRC-32C a store reports as base64 of its 4 big-endian bytes (S3's
    ``ChecksumCRC32C``, GCS's ``crc32c``) as an unsigned int; None for no
    value or one that is not a whole-object CRC-32C (S3's composite
    checksum of a multipart upload ends in ``-<parts>``).

    Example:
        >>> crc32c_of_base64("mnG7TA=="), crc32c_of_base64("mnG7TA==-3"), crc32c_of_base64(None)
        (2591144780, None, None)
    """
    if not text or "-" in text:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big") if len(raw) == 4 else None


class BackendBase:
    """Defaults for the optional verbs of :class:`Backend`: a backend without
    uploads, temporaries, mappings or per-call timeouts inherits these.

    Example:
        >>> BackendBase().list_uploads("b/run"), BackendBase().accepted_options()
        ([], None)
    """

    name = "backend"
    capabilities = Capabilities()

    def barrier(self) -> None:
        return None

    def stat(self, path: str) -> tuple[int, float | None]:
        """The object's size, and no time of writing (see :meth:`Backend.stat`).

        Example:
            >>> from cloudckpt.storage.backends.memory import MemoryBackend
            >>> b = MemoryBackend("memory", {}); _ = b.put("/doc-base-stat/a", [b"ab"])
            >>> b.stat("/doc-base-stat/a")
            (2, None)
        """
        size: int = self.size(path)  # type: ignore[attr-defined]  # (every backend has size)
        return size, None

    def copy(self, src: str, dst: str) -> int | None:
        """Copy ``src`` to ``dst`` within the store: here, a store without
        ``capabilities.server_copy``, ``NotImplementedError`` (the caller
        writes the bytes instead).

        Example:
            >>> BackendBase().copy("b/k", "b/k2")
            Traceback (most recent call last):
            ...
            NotImplementedError: backend storage cannot copy objects within the store: read and write them
        """
        raise NotImplementedError(f"{self.name} storage cannot copy objects within the store: read and write them")

    def same_store(self, other: object) -> bool:
        """Whether ``other`` serves the same store as this backend (here: it is this backend).

        Example:
            >>> b = BackendBase(); b.same_store(b), b.same_store(BackendBase())
            (True, False)
        """
        return other is self

    def list_uploads(self, path: str) -> list[tuple[str, str, float | None]]:
        return []

    def abort_upload(self, path: str, upload_id: str) -> None:
        return None

    def list_temps(self, path: str) -> list[tuple[str, int, float]]:
        return []

    def clean_temps(self, path: str, min_age: float) -> list[str]:
        return []

    @classmethod
    def url_path(cls, protocol: str, rest: str) -> str:
        return normalise_key_path(protocol, rest)

    @classmethod
    def url_options(cls, protocol: str, url: str) -> dict[str, Any]:
        return {}

    def path_of(self, url: str) -> str:
        return url.split("://", 1)[-1]

    def map_private(self, path: str, size: int) -> tuple[memoryview, int]:
        raise NotImplementedError(f"{self.name} storage cannot map objects: read them")

    def reserve_mapping(self, size: int) -> mmap.mmap:
        raise NotImplementedError(f"{self.name} storage cannot map objects: read them")

    def map_private_at(self, region: mmap.mmap, offset: int, path: str, size: int) -> int:
        raise NotImplementedError(f"{self.name} storage cannot map objects: read them")

    @contextlib.contextmanager
    def call_timeout(self, seconds: float) -> Iterator[None]:
        yield

    def accepted_options(self) -> frozenset[str] | None:
        return None

    def filesystem_name(self) -> str:
        return type(self).__name__

    def missing_bucket(self, path: str) -> str | None:
        return None
