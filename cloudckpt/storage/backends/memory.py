"""memory:// — fsspec's in-process filesystem, for tests and examples.

Its objects are ``BytesIO`` buffers of one process-wide dictionary: a read
copies straight from the stored buffer into the caller's views, and a
create-only write is made atomic by a lock (fsspec's memory filesystem has
no create mode of its own).

Example:
    >>> b = MemoryBackend("memory", {})
    >>> b.put("/doc-memory/k", [b"x"], WriteMode.CREATE_ONLY)
    1
    >>> b.put("/doc-memory/k", [b"y"], WriteMode.CREATE_ONLY)
    Traceback (most recent call last):
    ...
    FileExistsError: /doc-memory/k
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from cloudckpt.storage.backends.fsspec import FsspecBackend
from cloudckpt.storage.protocol import Buffer, Capabilities, WriteMode, byte_view, joined
from cloudckpt.storage.urls import normalise_key_path

__all__ = ["MemoryBackend"]


class MemoryBackend(FsspecBackend):
    """fsspec's ``memory://`` filesystem.

    Example:
        >>> MemoryBackend("memory", {}).capabilities.remote
        False
    """

    def __init__(self, protocol: str, storage_options: dict[str, Any]) -> None:
        self._create_lock = threading.Lock()  # memory:// has no atomic create
        super().__init__(protocol, storage_options)

    def make_filesystem(self, protocol: str, options: dict[str, Any]) -> Any:
        return self.filesystem_class(protocol, options)(**options)  # one process-wide store anyway

    def declare(self) -> Capabilities:
        return Capabilities(create_only=True, scattered_reads=True, write_copies=True, remote=False, server_copy=True)

    @classmethod
    def url_path(cls, protocol: str, rest: str) -> str:
        """Keys may start with ``/`` and hold ``?``: the store's keys are plain strings."""
        return normalise_key_path(protocol, rest, absolute=True, query=False)

    def path_of(self, url: str) -> str:
        path = super().path_of(url)
        return path if path.startswith("/") else "/" + path  # the store's keys are absolute

    def accepted_options(self) -> frozenset[str] | None:
        return self.signature_options()  # fsspec's memory filesystem ignores unknown options silently

    def stream_into(self, path: str, views: list[memoryview], start: int, total: int) -> int | None:
        try:  # ``path`` is already the store's key (path_of); ``store`` is the filesystem's public dict
            f = self.fs.store[path]
        except KeyError:
            raise FileNotFoundError(path) from None
        with f.getbuffer() as src:
            pos = start
            done = 0
            for v in views:
                piece = src[pos : pos + v.nbytes]
                v[: piece.nbytes] = piece
                done += piece.nbytes
                pos += piece.nbytes
                if piece.nbytes < v.nbytes:
                    break
            return done

    def put(
        self, path: str, buffers: Sequence[Buffer], mode: WriteMode = WriteMode.OVERWRITE, *, atomic: bool = False
    ) -> int:
        if mode is not WriteMode.CREATE_ONLY:
            return super().put(path, buffers, mode, atomic=atomic)
        payload = bytes(buffers[0] if len(buffers) == 1 else b"".join(buffers))
        with self._create_lock:
            if self.fs.exists(path):
                raise FileExistsError(path)
            self.fs.pipe_file(path, payload)
        return len(payload)

    def copy(self, src: str, dst: str) -> int | None:
        """The new object holds the stored bytes of ``src`` (fsspec's ``cp_file``:
        the ``bytes`` are shared, not copied, until one of them is written).
        Returns the crc32c of the copy, as S3 and GCS report one: computing it
        here costs a pass over memory, and lets a caller check the copy.

        Example:
            >>> b = MemoryBackend("memory", {}); b.put("/doc-memory-copy/a", [b"ab"])
            2
            >>> b.copy("/doc-memory-copy/a", "/doc-memory-copy/b"), b.get("/doc-memory-copy/b")
            (3802278198, b'ab')
        """
        if src not in self.fs.store:  # ``store`` is the filesystem's public dict; a "directory" is no object
            raise FileNotFoundError(src)
        self.fs.cp_file(src, dst)
        import crc32c  # (only memory:// computes a checksum in this layer; S3 and GCS report theirs)

        return int(crc32c.crc32c(self.fs.cat_file(dst)))

    def same_store(self, other: object) -> bool:
        """Every memory:// backend: one process-wide store.

        Example:
            >>> MemoryBackend("memory", {}).same_store(MemoryBackend("memory", {"skip_instance_cache": True}))
            True
        """
        return isinstance(other, MemoryBackend)

    def body(self, buffers: Sequence[Buffer]) -> Any:
        """One buffer as a memoryview (the store copies it once), several joined."""
        if len(buffers) == 1 and not isinstance(buffers[0], bytes):
            return byte_view(buffers[0])
        return joined(buffers)
