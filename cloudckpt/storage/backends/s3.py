"""s3:// — Amazon S3 and S3-compatible stores through s3fs.

What differs from any fsspec filesystem: retries are left to cloudckpt (one
layer of retries, one backoff); an upload's body is read from the caller's
buffers as it is sent (:class:`_ViewReader`), and a read streams one ranged
GET's body into the caller's buffers; ``exists`` is one HEAD; incomplete
multipart uploads of a killed writer can be listed and aborted; an object
is copied within the store (CopyObject). All through s3fs' public API
(``call_s3``, ``split_path``, ``pipe_file``).

Example:
    >>> S3Backend.bucketed, "s3" in __name__
    (True, True)
"""

from __future__ import annotations

import contextlib
import errno
import io
import time
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import fsspec.asyn

from cloudckpt.storage.backends.base import crc32c_of_base64
from cloudckpt.storage.backends.fsspec import FsspecBackend, drain
from cloudckpt.storage.protocol import Buffer, Capabilities, byte_view, joined

__all__ = ["S3Backend"]


class _ViewReader(io.RawIOBase):
    """A seekable, read-only file over buffers that lie back to back: an
    upload body that botocore accepts (it takes bytes, bytearray or a file,
    not a memoryview) and that aiohttp sends in small reads. So the bytes of
    a chunk, or of the many tensors of a pack chunk, are never joined into
    one ``bytes`` nor copied whole into the socket transport's buffer.
    ``len`` and slicing are what s3fs' ``pipe_file`` asks of its data
    (slicing: the parts of a multipart upload)."""

    def __init__(self, views: Sequence[memoryview]) -> None:
        super().__init__()
        self._views = [v for v in views if v.nbytes]
        self._starts: list[int] = []
        at = 0
        for v in self._views:
            self._starts.append(at)
            at += v.nbytes
        self._size = at
        self._pos = 0
        self._k = 0  # index of the view holding _pos (a hint)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: slice) -> _ViewReader:
        start, stop, step = index.indices(self._size)
        if step != 1:
            raise ValueError("a stepped slice of an upload body")
        out: list[memoryview] = []
        for v, at in zip(self._views, self._starts, strict=True):
            lo, hi = max(start, at), min(stop, at + v.nbytes)
            if lo < hi:
                out.append(v[lo - at : hi - at])
        return _ViewReader(out)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        done = 0
        k = bisect_right(self._starts, self._pos) - 1 if self._pos < self._size else len(self._views)
        while done < out.nbytes and k < len(self._views):
            v, at = self._views[k], self._starts[k]
            lo = self._pos - at
            n = min(v.nbytes - lo, out.nbytes - done)
            out[done : done + n] = v[lo : lo + n]
            done += n
            self._pos += n
            k += 1
        return done

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


async def _drain_and_close(body: Any, views: list[memoryview]) -> int:
    """Read a GET's body (aiobotocore's ``StreamingBody``) into ``views``, then release it."""
    try:
        return await drain(body.read, views)
    finally:
        body.close()


async def _close(body: Any) -> None:
    body.close()


class S3Backend(FsspecBackend):
    """S3 through s3fs (``s3://``, ``s3a://``).

    Example:
        >>> S3Backend.declare.__doc__ is not None
        True
    """

    bucketed = True

    def prepare_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """s3fs (5 tries) and botocore (5 tries) retrying under cloudckpt's own
        retries multiply into ~40 s before an unreachable endpoint is
        reported: botocore tries once. It keeps 10 connections by default:
        fewer than cloudckpt's requests in flight (16 by default)."""
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        config.setdefault("max_pool_connections", 64)
        options["config_kwargs"] = config
        return options

    def configure(self, fs: Any) -> Any:
        """Leave retrying to cloudckpt's RetryPolicy (one layer of retries, one backoff)."""
        if hasattr(fs, "retries") and type(fs).__module__.startswith("s3fs"):
            fs.retries = 1
        return fs

    def declare(self) -> Capabilities:
        """Create-only (``If-None-Match: *``), bodies sent from the buffers,
        reads streamed into them, listable multipart uploads, copies within
        the store (CopyObject)."""
        return Capabilities(
            create_only=True,
            scattered_reads=self._streams(),
            write_copies=False,
            lists_uploads=True,
            call_timeout=self._timeouts,
            server_copy=self._streams(),
        )

    def _streams(self) -> bool:
        return callable(getattr(self.fs, "call_s3", None)) and callable(getattr(self.fs, "split_path", None))

    def stream_into(self, path: str, views: list[memoryview], start: int, total: int) -> int | None:
        """One ranged GET (s3fs' public ``call_s3``) whose body, read on
        fsspec's IO loop, goes straight into ``views``; both steps within
        the call's timeout."""
        if not self._streams():
            return None
        timeout = self._timeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        bucket, key, version = self.fs.split_path(path)
        extra = {"VersionId": version} if version else {}
        resp = self.fs.call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{start + total - 1}", **extra, **self._kw()
        )
        body = resp["Body"]
        left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
        try:
            n: int = fsspec.asyn.sync(self.fs.loop, _drain_and_close, body, views, timeout=left)
        except BaseException:
            with contextlib.suppress(Exception):  # if the drain never started; the first error is the one to report
                fsspec.asyn.sync(self.fs.loop, _close, body, timeout=5)
            raise
        return n

    def body(self, buffers: Sequence[Buffer]) -> Any:
        """No copy: botocore reads the body from the buffers while sending it."""
        if len(buffers) == 1 and isinstance(buffers[0], bytes):
            return joined(buffers)
        return _ViewReader([byte_view(b) for b in buffers])

    def exists(self, path: str) -> bool:
        """One HEAD: s3fs' info() follows a 404 with a LIST to tell a
        "directory" from nothing, and a directory is no object either."""
        if not self._streams():
            return super().exists(path)
        bucket, key, version = self.fs.split_path(path)
        extra = {"VersionId": version} if version else {}
        try:
            self.fs.call_s3("head_object", Bucket=bucket, Key=key, **extra, **self._kw())
        except FileNotFoundError:
            return False
        return True

    def copy(self, src: str, dst: str) -> int | None:
        """One CopyObject asking S3 for the new object's CRC-32C
        (``ChecksumAlgorithm="CRC32C"``), returned from ``CopyObjectResult``
        (moto's server returns it too). None if the store returns none (an
        S3-compatible store that ignores checksums). A copy onto itself is a
        HEAD (S3 refuses it), returning the CRC-32C stored with the object if
        any (uploads send a CRC-32 by default: then None). A source over 5 GiB,
        which one CopyObject cannot copy, raises ``NotImplementedError``: the
        caller writes the bytes instead.

        Example:
            >>> "CopyObject" in S3Backend.copy.__doc__
            True
        """
        if not self._streams():
            return super().copy(src, dst)
        src_bucket, src_key, version = self.fs.split_path(src)
        bucket, key, _ = self.fs.split_path(dst)
        source = {"Bucket": src_bucket, "Key": src_key, **({"VersionId": version} if version else {})}
        if (src_bucket, src_key) == (bucket, key) and not version:
            # S3 refuses to copy an object onto itself unchanged; it is there already
            head = self.fs.call_s3("head_object", **source, ChecksumMode="ENABLED", **self._kw())
            return crc32c_of_base64(head.get("ChecksumCRC32C"))
        try:
            resp = self.fs.call_s3(
                "copy_object", Bucket=bucket, Key=key, CopySource=source, ChecksumAlgorithm="CRC32C", **self._kw()
            )
        except OSError as exc:
            # s3fs turns InvalidRequest into OSError(EINVAL); S3 says "The specified copy source is
            # larger than the maximum allowable size for a copy source: 5368709120"
            if exc.errno == errno.EINVAL and "maximum allowable size" in str(exc):
                raise NotImplementedError(
                    f"{self.name}: {src} is over the 5 GiB one CopyObject can copy: read and write its bytes"
                ) from exc
            raise
        self.fs.invalidate_cache(dst)
        result = resp.get("CopyObjectResult") or {}
        if result.get("ChecksumType") == "COMPOSITE":
            return None  # not a CRC-32C of the whole object
        return crc32c_of_base64(result.get("ChecksumCRC32C"))

    def list_uploads(self, path: str) -> list[tuple[str, str, float | None]]:
        """``[(bucket/key, upload id, initiated)]`` of multipart uploads below
        ``path``; ``[]`` where the backend has no listable incomplete uploads
        (gcsfs' resumable uploads cannot be listed, and expire after a week)."""
        bucket, key, _ = self.fs.split_path(path)
        prefix = key.rstrip("/") + "/" if key else ""
        out: list[tuple[str, str, float | None]] = []
        markers: dict[str, str] = {}
        while True:
            resp = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
            for u in resp.get("Uploads", []) or []:
                initiated = u.get("Initiated")
                ts = initiated.timestamp() if hasattr(initiated, "timestamp") else None
                out.append((f"{bucket}/{u['Key']}", str(u["UploadId"]), ts))
            if not resp.get("IsTruncated"):
                return out
            markers = {"KeyMarker": resp.get("NextKeyMarker", ""), "UploadIdMarker": resp.get("NextUploadIdMarker", "")}

    def abort_upload(self, path: str, upload_id: str) -> None:
        """Abort one multipart upload; one already gone is not an error."""
        bucket, key, _ = self.fs.split_path(path)
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except FileNotFoundError:
            pass  # NoSuchUpload: completed or aborted meanwhile
