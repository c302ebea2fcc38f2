"""gs:// — Google Cloud Storage through gcsfs.

What differs from any fsspec filesystem: retries are left to cloudckpt
(gcsfs' own are turned off); an emulator (``endpoint_url``) gets gcsfs'
plain JSON/HTTP class; an upload is sent from the caller's buffers in
pieces, and a read streams one ranged GET's body into the caller's buffers;
an object is copied within the store (a rewrite, gcsfs' public ``cp_file``).
The last three use gcsfs internals: each is one function of
:mod:`~cloudckpt.storage.backends.fast_paths`, which falls back to gcsfs'
public API (and says why) where the installed gcsfs lacks them.

Example:
    >>> GCSBackend.bucketed
    True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import fsspec.asyn

from cloudckpt.storage.backends import fast_paths
from cloudckpt.storage.backends.base import crc32c_of_base64
from cloudckpt.storage.backends.fsspec import FsspecBackend
from cloudckpt.storage.protocol import Buffer, Capabilities, WriteMode, byte_view

__all__ = ["GCSBackend"]


class GCSBackend(FsspecBackend):
    """GCS through gcsfs (``gs://``, ``gcs://``).

    Example:
        >>> GCSBackend.accepted_options.__doc__ is not None
        True
    """

    bucketed = True
    _read_fast: Callable[..., Awaitable[int]] | None
    _upload_fast: Callable[..., Awaitable[None]] | None

    def filesystem_class(self, protocol: str, options: dict[str, Any]) -> Any:
        """gcsfs' filesystem tried once per request; for an emulator the plain
        class: gcsfs' default class probes a gRPC storage-layout API that
        emulators lack and stalls ~60 s per bucket. The plain class speaks
        only JSON/HTTP."""
        if options.get("endpoint_url"):
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            from gcsfs.core import GCSFileSystem

            cls: Any = GCSFileSystem
        else:
            cls = super().filesystem_class(protocol, options)
        # gcsfs logs every failed attempt with a traceback; without a handler of
        # its own that reaches stderr through logging's last resort. Applications
        # that configure logging still receive these records (propagation).
        gcsfs_log = logging.getLogger("gcsfs")
        if not any(isinstance(h, logging.NullHandler) for h in gcsfs_log.handlers):
            gcsfs_log.addHandler(logging.NullHandler())
        return fast_paths.gcs_single_try_class(cls) or cls

    def declare(self) -> Capabilities:
        """Create-only (``ifGenerationMatch=0``), bodies sent from the buffers
        and reads streamed into them where the installed gcsfs has the
        internals used (:mod:`~cloudckpt.storage.backends.fast_paths`)."""
        self._read_fast = fast_paths.gcs_stream_reader(self.fs)
        self._upload_fast = fast_paths.gcs_buffers_uploader(self.fs)
        return Capabilities(
            create_only=True,
            scattered_reads=self._read_fast is not None,
            write_copies=self._upload_fast is None,
            call_timeout=self._timeouts,
            server_copy=True,
        )

    def accepted_options(self) -> frozenset[str] | None:
        """gcsfs ignores an option it does not know: the names its class takes."""
        return self.signature_options()

    def stream_into(self, path: str, views: list[memoryview], start: int, total: int) -> int | None:
        if self._read_fast is None:
            return None
        n: int = fsspec.asyn.sync(self.fs.loop, self._read_fast, path, views, start, total, timeout=self._timeout())
        return n

    def put(
        self, path: str, buffers: Sequence[Buffer], mode: WriteMode = WriteMode.OVERWRITE, *, atomic: bool = False
    ) -> int:
        if mode is WriteMode.CREATE_ONLY or atomic or self._upload_fast is None:
            return super().put(path, buffers, mode, atomic=atomic)
        views = [byte_view(b) for b in buffers]
        fsspec.asyn.sync(self.fs.loop, self._upload_fast, path, views, timeout=self._timeout())
        return sum(v.nbytes for v in views)

    def copy(self, src: str, dst: str) -> int | None:
        """A rewrite within the store (gcsfs' ``cp_file``, which repeats the
        rewrite request until GCS says it is done), then the new object's
        CRC-32C from its metadata (one more request: ``cp_file`` does not
        return the rewrite's response). fake-gcs-server reports it too.

        Example:
            >>> "rewrite" in GCSBackend.copy.__doc__
            True
        """
        self.fs.cp_file(src, dst, **self._kw())
        self.fs.invalidate_cache(dst)
        info = self.fs.info(dst, **self._kw())
        return crc32c_of_base64(info.get("crc32c"))

    def body(self, buffers: Sequence[Buffer]) -> Any:
        """gcsfs takes a memoryview body: one buffer is sent as it is."""
        if len(buffers) == 1 and not isinstance(buffers[0], bytes):
            return byte_view(buffers[0])
        return super().body(buffers)
