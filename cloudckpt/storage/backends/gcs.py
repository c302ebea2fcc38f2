"""gs:// — Google Cloud Storage through gcsfs.

What differs from any fsspec filesystem: retries are left to cloudckpt
(gcsfs' own are turned off); an emulator (``endpoint_url``) gets gcsfs'
plain JSON/HTTP class; an upload is sent from the caller's buffers in
pieces, and a read streams one ranged GET's body into the caller's buffers.

Example:
    >>> GCSBackend.bucketed
    True
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import fsspec.asyn

from cloudckpt.storage.backends.fsspec import STREAM_PIECE, FsspecBackend, drain
from cloudckpt.storage.protocol import Buffer, Capabilities, WriteMode, byte_view

__all__ = ["GCSBackend"]

_GCS_CLASSES: dict[Any, Any] = {}


def _single_try_gcs(cls: Any) -> Any:
    """gcsfs retries every request 6 times with up to ~30 s of backoff, under
    cloudckpt's own retries (170 s for an unreachable endpoint): a subclass
    whose requests are tried once, so that only RetryPolicy retries."""
    sub = _GCS_CLASSES.get(cls)
    if sub is not None:
        return sub
    try:
        from gcsfs.retry import retry_request
    except ImportError:  # pragma: no cover - layout of another gcsfs version
        return cls
    inner = getattr(cls._request, "__wrapped__", None)
    if inner is None:  # pragma: no cover
        return cls

    async def _request(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await inner(self, *args, **kwargs)

    sub = type(cls.__name__, (cls,), {"_request": retry_request(retries=1)(_request)})
    # gcsfs logs every failed attempt with a traceback; without a handler of
    # its own that reaches stderr through logging's last resort. Applications
    # that configure logging still receive these records (propagation).
    logging.getLogger("gcsfs").addHandler(logging.NullHandler())
    _GCS_CLASSES[cls] = sub
    return sub


class GCSBackend(FsspecBackend):
    """GCS through gcsfs (``gs://``, ``gcs://``).

    Example:
        >>> GCSBackend.accepted_options.__doc__ is not None
        True
    """

    bucketed = True

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
        return _single_try_gcs(cls)

    def declare(self) -> Capabilities:
        """Create-only (``ifGenerationMatch=0``), bodies sent from the buffers
        and reads streamed into them (where gcsfs has the internals used)."""
        return Capabilities(
            create_only=True,
            scattered_reads=self._reads_stream(),
            write_copies=not self._writes_stream(),
            call_timeout=self._timeouts,
        )

    def accepted_options(self) -> frozenset[str] | None:
        """gcsfs ignores an option it does not know: the names its class takes."""
        return self.signature_options()

    def _reads_stream(self) -> bool:
        return all(hasattr(self.fs, a) for a in ("_set_session", "_get_headers", "_get_params", "url"))

    def _writes_stream(self) -> bool:
        """Whether writes go through :meth:`_put` (the gcsfs internals it uses are there)."""
        return all(hasattr(self.fs, a) for a in ("_call", "_location", "split_path", "invalidate_cache"))

    def stream_into(self, path: str, views: list[memoryview], start: int, total: int) -> int | None:
        if not self._reads_stream():
            return None
        n: int = fsspec.asyn.sync(self.fs.loop, self._stream, path, views, start, total, timeout=self._timeout())
        return n

    async def _stream(self, path: str, views: list[memoryview], start: int, total: int) -> int:
        from gcsfs.retry import validate_response

        fs = self.fs
        await fs._set_session()
        headers = fs._get_headers({"Range": f"bytes={start}-{start + total - 1}"})
        async with fs.session.get(
            url=fs.url(path), params=fs._get_params({}), headers=headers, timeout=fs.requests_timeout
        ) as r:
            if r.status >= 400:
                validate_response(r.status, await r.read(), path)
            if r.status != 206 and start:
                raise OSError(f"{path}: the server ignored the Range of a ranged read (HTTP {r.status})")
            return await drain(r.content.read, views)

    def put(
        self, path: str, buffers: Sequence[Buffer], mode: WriteMode = WriteMode.OVERWRITE, *, atomic: bool = False
    ) -> int:
        if mode is WriteMode.CREATE_ONLY or atomic or not self._writes_stream():
            return super().put(path, buffers, mode, atomic=atomic)
        views = [byte_view(b) for b in buffers]
        fsspec.asyn.sync(self.fs.loop, self._put, path, views, timeout=self._timeout())
        return sum(v.nbytes for v in views)

    def body(self, buffers: Sequence[Buffer]) -> Any:
        """gcsfs takes a memoryview body: one buffer is sent as it is."""
        if len(buffers) == 1 and not isinstance(buffers[0], bytes):
            return byte_view(buffers[0])
        return super().body(buffers)

    async def _put(self, path: str, views: list[memoryview]) -> None:
        """One multipart upload, as gcsfs' ``simple_upload``, whose body is sent
        from ``views`` in pieces: gcsfs joins the data and its multipart
        envelope into one new ``bytes`` (two copies in flight with a pack
        chunk's join), which broke the memory target of a save on GCS."""
        from urllib.parse import quote

        import aiohttp.payload

        class Body(aiohttp.payload.Payload):
            def __init__(self, parts: list[memoryview]) -> None:
                super().__init__(parts, content_type='multipart/related; boundary="==0=="')
                self._size = sum(v.nbytes for v in parts)

            def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
                raise TypeError("an upload body of raw bytes")

            async def write(self, writer: Any) -> None:
                for v in self._value:
                    for at in range(0, v.nbytes, STREAM_PIECE):
                        await writer.write(v[at : at + STREAM_PIECE])

            async def write_with_length(self, writer: Any, content_length: int | None) -> None:
                await self.write(writer)  # the length is ours: always the whole body

        bucket, key, _generation = self.fs.split_path(path)
        head = (
            '--==0==\nContent-Type: application/json; charset=UTF-8\n\n'
            + json.dumps({"name": key})
            + "\n--==0==\nContent-Type: application/octet-stream\n\n"
        ).encode()
        body = Body([memoryview(head), *(v for v in views if v.nbytes), memoryview(b"\n--==0==--")])
        await self.fs._call(
            "POST",
            f"{self.fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
            uploadType="multipart",
            headers={"Content-Type": 'multipart/related; boundary="==0=="'},
            data=body,
            json_out=True,
        )
        self.fs.invalidate_cache(path)
