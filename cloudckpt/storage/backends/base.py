"""Defaults for the optional verbs of a :class:`~cloudckpt.storage.protocol.Backend`.

Example:
    >>> BackendBase.url_path("s3", "b//k")
    'b/k'
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator
from typing import Any

from cloudckpt.storage.protocol import Capabilities
from cloudckpt.storage.urls import normalise_key_path

__all__ = ["BackendBase"]


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
