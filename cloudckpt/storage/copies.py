"""Copies within the store, for the :class:`~cloudckpt.storage.Storage` facade.

Where a backend declares ``capabilities.server_copy`` (S3, GCS, Azure, local
disk, memory://), an object of one storage can be copied into another on the
same store without its bytes passing through this process: an incremental
checkpoint copies the unchanged objects of the checkpoint before it.
:class:`ServerCopies` holds those verbs; ``Storage`` inherits them, and each
backend's ``copy`` makes the request.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> old, new = open_storage("memory://doc-copies/1"), open_storage("memory://doc-copies/2")
    >>> old.write("k", b"abc"); new.copy_from(old, "k", "k"); new.read("k")
    b'abc'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from cloudckpt.errors import ObjectNotFoundError
from cloudckpt.storage.urls import validate_key

if TYPE_CHECKING:
    from cloudckpt.storage.session import Session

__all__ = ["ServerCopies"]

T = TypeVar("T")


class ServerCopies:
    """The copy verbs of :class:`~cloudckpt.storage.Storage` (which supplies ``_s``,
    ``_path``, ``_request`` and ``url_for``).

    Example:
        >>> from cloudckpt.storage import Storage
        >>> issubclass(Storage, ServerCopies)
        True
    """

    _s: Session

    def _path(self, key: str) -> str:
        raise NotImplementedError

    def _request(self, op: str, key: str, fn: Callable[[], T], nbytes: int = 0) -> T:
        raise NotImplementedError

    def url_for(self, key: str) -> str:
        raise NotImplementedError

    def can_copy_from(self, source: ServerCopies) -> bool:
        """Whether :meth:`copy_from` can copy objects of ``source`` into this
        storage within the store, their bytes never passing through this
        process: the backend has ``capabilities.server_copy`` and both are on
        the same store (derived from one :func:`~cloudckpt.storage.open_storage`,
        or opened apart on the same endpoint with the same options).

        Example:
            >>> import tempfile
            >>> from cloudckpt.storage import open_storage
            >>> a, b = open_storage("memory://doc-can-copy/a"), open_storage("memory://doc-can-copy/b")
            >>> b.can_copy_from(a), b.can_copy_from(open_storage(tempfile.mkdtemp()))
            (True, False)
        """
        if not self._s.backend.capabilities.server_copy:
            return False
        return source._s is self._s or self._s.backend.same_store(source._s.backend)

    def copy_from(self, source: ServerCopies, src_key: str, dst_key: str, *, size: int | None = None) -> int | None:
        """Copy the object ``src_key`` of ``source`` to ``dst_key`` of this storage
        (overwriting it) within the store: S3 CopyObject, a GCS rewrite, a hard
        link on local disk; its bytes never pass through this process. One
        request ``"copy"`` on the URL of ``dst_key``: hooks, retries, the time
        limit and the counters apply as to a write.

        Returns the CRC-32C (unsigned) the store reports for the new object
        (S3, GCS), or None where it reports none (local disk, memory://).
        ``size``: the object's size where the caller knows it (its manifest
        records it), counted in ``stats.bytes_copied`` (never in
        ``bytes_written``: no byte is sent). Raises
        :class:`ObjectNotFoundError` naming the source URL if it is missing,
        and ``NotImplementedError`` where the store cannot copy it (see
        :meth:`can_copy_from`; on S3 also an object over 5 GiB): then read
        and write its bytes.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> old, new = open_storage("memory://doc-copy/ckpt-1"), open_storage("memory://doc-copy/ckpt-2")
            >>> old.write("c/0", b"chunk"); new.copy_from(old, "c/0", "c/0", size=5)
            >>> new.read("c/0"), new.stats.snapshot()["bytes_copied"]
            (b'chunk', 5)
            >>> new.copy_from(old, "c/9", "c/9")
            Traceback (most recent call last):
            ...
            cloudckpt.errors.ObjectNotFoundError: copy memory://doc-copy/ckpt-1/c/9 to memory://doc-copy/ckpt-2/c/9: the source object does not exist on memory (or no bucket or directory to copy into)
        """
        validate_key(src_key)
        validate_key(dst_key)
        src_url, dst_url = source.url_for(src_key), self.url_for(dst_key)
        if size is not None and size < 0:
            raise ValueError(f"copy {src_url} to {dst_url}: negative size {size}")
        if not self.can_copy_from(source):
            raise NotImplementedError(
                f"copy {src_url} to {dst_url}: {self._s.backend.filesystem_name()} cannot copy between these "
                "storages within the store (not the same store, or no server-side copy): read the object and "
                "write its bytes"
            )
        backend = self._s.backend
        src, dst = source._path(src_key), self._path(dst_key)
        try:
            crc: int | None = self._request("copy", dst_key, lambda: backend.copy(src, dst), size or 0)
        except ObjectNotFoundError as exc:
            raise ObjectNotFoundError(
                f"copy {src_url} to {dst_url}: the source object does not exist on {backend.name} "
                "(or no bucket or directory to copy into)",
                url=src_url,
                operation="copy",
            ) from exc
        return crc
