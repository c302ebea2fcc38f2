"""Object-store and other fsspec backends (s3://, gs://, memory://, az://, ...).

Paths here are the backend's own paths without protocol (``bucket/key``).
The filesystem instance is created by cloudckpt itself with
``skip_instance_cache=True``: fsspec's own instance cache hands an existing
instance to any caller with the same arguments, and one that another caller
(zarr, user code) created for its own event loop (``asynchronous=True``)
cannot be used from fsspec's IO loop. cloudckpt keeps its own cache of
synchronous instances instead (see ``make_filesystem``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import fsspec
import fsspec.asyn
from fsspec.asyn import AsyncFileSystem

Buffer = bytes | bytearray | memoryview


# Temporary bytes per request of the generic ranged read (backends that cannot stream into a buffer).
_TEMP_BYTES = 8 << 20
# the backends whose write takes a memoryview body as it is
_VIEW_BODIES = ("s3", "s3a", "gs", "gcs", "memory")
# the most bytes asked of an HTTP body per read while streaming into views
_STREAM_PIECE = 1 << 20


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


def _byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


async def _drain(read: Any, views: list[memoryview]) -> int:
    """Read a response body with ``await read(n)`` straight into ``views``."""
    done = 0
    for v in views:
        pos = 0
        while pos < v.nbytes:
            chunk = await read(min(v.nbytes - pos, _STREAM_PIECE))
            if not chunk:
                return done
            n = len(chunk)
            v[pos : pos + n] = chunk
            pos += n
            done += n
    return done


def _as_bytes(buffers: Sequence[Buffer]) -> bytes:
    if len(buffers) == 1 and isinstance(buffers[0], bytes):
        return buffers[0]
    return b"".join(buffers)


def make_filesystem(protocol: str, storage_options: dict[str, Any]) -> Any:
    """Create a fresh fsspec filesystem for ``protocol``.

    Raises ValueError for an unknown protocol and ImportError (with the package
    to install) when its backend is missing.
    """
    options = dict(storage_options)
    if protocol in ("gs", "gcs") and options.get("endpoint_url"):
        # An emulator: gcsfs' default class probes a gRPC storage-layout API
        # that emulators lack and stalls ~60 s per bucket. The plain class
        # speaks only JSON/HTTP.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        from gcsfs.core import GCSFileSystem

        cls: Any = GCSFileSystem
    else:
        cls = fsspec.get_filesystem_class(protocol)
    if protocol in ("gs", "gcs"):
        cls = _single_try_gcs(cls)
    if protocol == "memory":
        return cls(**options)
    if protocol in ("s3", "s3a"):
        # cloudckpt retries transient failures itself (storage.RetryPolicy);
        # s3fs (5 tries) and botocore (5 tries) retrying underneath multiply
        # into ~40 s before an unreachable endpoint is reported.
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        # botocore keeps 10 connections by default: fewer than cloudckpt's
        # requests in flight (max_concurrency, 16 by default)
        config.setdefault("max_pool_connections", 64)
        options["config_kwargs"] = config
    # Our own instance cache (fsspec's is per thread, and shares instances by
    # surprise): one synchronous instance per process and option set. A sync
    # instance runs every request on fsspec's one long-lived IO loop, so it is
    # safe from any thread; creating one (a botocore client) costs ~0.5 s.
    try:
        key = (cls, os.getpid(), json.dumps(options, sort_keys=True), _credential_env())
    except (TypeError, ValueError):
        key = None
    if key is not None:
        with _FS_CACHE_LOCK:
            fs = _FS_CACHE.get(key)
            if fs is None:
                fs = _single_try(cls(skip_instance_cache=True, **options))
                _FS_CACHE[key] = fs
        return fs
    return _single_try(cls(skip_instance_cache=True, **options))


_CREDENTIAL_ENV = ("AWS_", "BOTO", "GOOGLE_", "GCLOUD", "CLOUDSDK", "GCS", "STORAGE_EMULATOR", "AZURE")


def _credential_env() -> str:
    """A digest of the environment a backend reads credentials and endpoints
    from: a cached filesystem is reused only while that environment is the
    same (the digest keeps no secret in memory)."""
    items = sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(_CREDENTIAL_ENV))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _single_try(fs: Any) -> Any:
    """Leave retrying to cloudckpt's RetryPolicy (one layer of retries, one backoff)."""
    if hasattr(fs, "retries") and type(fs).__module__.startswith("s3fs"):
        fs.retries = 1
    return fs


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


_FS_CACHE: dict[Any, Any] = {}
_FS_CACHE_LOCK = threading.Lock()


class FsspecBackend:
    """Verbs over an fsspec filesystem."""

    def __init__(self, protocol: str, storage_options: dict[str, Any]) -> None:
        self.protocol = protocol
        self.name = protocol
        self.fs = make_filesystem(protocol, storage_options)
        self._create_lock = threading.Lock()  # memory:// has no atomic create
        # fsspec's sync wrappers of an async filesystem take ``timeout=`` (seconds)
        # and cancel the request when it passes; sync filesystems have no such knob.
        self._timeouts = isinstance(self.fs, AsyncFileSystem)
        self._local = threading.local()

    @contextlib.contextmanager
    def call_timeout(self, seconds: float) -> Iterator[None]:
        """Requests made by this thread within the block time out after ``seconds``."""
        previous = getattr(self._local, "timeout", None)
        self._local.timeout = seconds
        try:
            yield
        finally:
            self._local.timeout = previous

    def _kw(self) -> dict[str, Any]:
        timeout = getattr(self._local, "timeout", None)
        return {"timeout": timeout} if timeout is not None and self._timeouts else {}

    def get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        if start is None and end is None:
            data = self.fs.cat_file(path, **self._kw())
        else:
            data = self.fs.cat_file(path, start=start, end=end, **self._kw())
        return bytes(data) if not isinstance(data, bytes) else data

    def get_into(self, path: str, out: memoryview, start: int = 0) -> int:
        return self.get_into_many(path, [out], start)

    def get_into_many(self, path: str, views: Sequence[memoryview], start: int = 0) -> int:
        """Fill ``views`` back to back from offset ``start`` of the object, with
        no temporary copy of the whole range: memory:// copies from the stored
        buffer, s3/gs stream one ranged GET's body into the views (the only
        temporary is the HTTP layer's read chunk), other filesystems read in
        ranges of at most ``_TEMP_BYTES``. Returns the bytes read (less than
        the views hold if the object is shorter)."""
        views = [v for v in views if v.nbytes]
        total = sum(v.nbytes for v in views)
        if total == 0:
            return 0
        if self.protocol == "memory":
            return self._memory_into(path, views, start)
        stream = self._streamer()
        if stream is not None:
            timeout = self._kw().get("timeout")
            n: int = fsspec.asyn.sync(self.fs.loop, stream, path, views, start, total, timeout=timeout)
            return n
        return self._ranged_into(path, views, start, total)

    def _memory_into(self, path: str, views: list[memoryview], start: int) -> int:
        try:
            f = self.fs.store[self.fs._strip_protocol(path)]
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

    def _ranged_into(self, path: str, views: list[memoryview], start: int, total: int) -> int:
        """Ranged reads of at most ``_TEMP_BYTES``, each copied into the views."""
        done = 0
        k = 0
        filled = 0  # bytes of views[k] already filled
        while done < total:
            want = min(_TEMP_BYTES, total - done)
            data = memoryview(self.get(path, start + done, start + done + want))
            used = 0
            while used < len(data):
                v = views[k]
                n = min(v.nbytes - filled, len(data) - used)
                v[filled : filled + n] = data[used : used + n]
                used += n
                filled += n
                if filled == v.nbytes:
                    k += 1
                    filled = 0
            done += len(data)
            if len(data) < want:
                break
        return done

    def _streamer(self) -> Any:
        """A coroutine function streaming one ranged GET into views, or None."""
        if self.protocol in ("s3", "s3a") and hasattr(self.fs, "_call_s3") and hasattr(self.fs, "split_path"):
            return self._s3_stream
        if self.protocol in ("gs", "gcs") and all(hasattr(self.fs, a) for a in ("_set_session", "_get_headers", "_get_params", "url")):
            return self._gcs_stream
        return None

    async def _s3_stream(self, path: str, views: list[memoryview], start: int, total: int) -> int:
        bucket, key, version = self.fs.split_path(path)
        extra = {"VersionId": version} if version else {}
        resp = await self.fs._call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{start + total - 1}", **extra
        )
        body = resp["Body"]
        try:
            return await _drain(body.read, views)
        finally:
            body.close()

    async def _gcs_stream(self, path: str, views: list[memoryview], start: int, total: int) -> int:
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
            return await _drain(r.content.read, views)

    @property
    def write_copies(self) -> bool:
        """Whether a write holds a copy of its data while in flight: all but
        S3 and GCS, whose bodies are read from the caller's buffers as they
        are sent."""
        return self.protocol not in ("s3", "s3a") and not self._gcs_streams()

    def _gcs_streams(self) -> bool:
        """Whether writes to GCS go through :meth:`_gcs_put` (the gcsfs
        internals it uses are there)."""
        return self.protocol in ("gs", "gcs") and all(
            hasattr(self.fs, a) for a in ("_call", "_location", "split_path", "invalidate_cache")
        )

    async def _gcs_put(self, path: str, views: list[memoryview]) -> None:
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
                    for at in range(0, v.nbytes, _STREAM_PIECE):
                        await writer.write(v[at : at + _STREAM_PIECE])

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

    def put(self, path: str, buffers: Sequence[Buffer]) -> int:
        data: Any
        if self._gcs_streams():
            views = [_byte_view(b) for b in buffers]
            timeout = self._kw().get("timeout")
            fsspec.asyn.sync(self.fs.loop, self._gcs_put, path, views, timeout=timeout)
            return sum(v.nbytes for v in views)
        if self.protocol in ("s3", "s3a") and not (len(buffers) == 1 and isinstance(buffers[0], bytes)):
            # no copy: botocore reads the body from the buffers while sending it
            data = _ViewReader([_byte_view(b) for b in buffers])
        elif len(buffers) == 1 and not isinstance(buffers[0], bytes) and self.protocol in _VIEW_BODIES:
            data = _byte_view(buffers[0])  # gcsfs and memory:// take a memoryview body
        else:
            data = _as_bytes(buffers)
        self.fs.pipe_file(path, data, **self._kw())
        return len(data)

    def put_atomic(self, path: str, data: Buffer) -> None:
        # one whole-object PUT is atomic on object stores
        self.fs.pipe_file(path, bytes(data), **self._kw())

    def put_create(self, path: str, data: Buffer) -> None:
        payload = bytes(data)
        if self.protocol == "memory":
            with self._create_lock:
                if self.fs.exists(path):
                    raise FileExistsError(path)
                self.fs.pipe_file(path, payload)
            return
        # s3fs: If-None-Match: *; gcsfs: ifGenerationMatch=0 on a single-request
        # upload (manifests are far below gcsfs' resumable-upload threshold).
        self.fs.pipe_file(path, payload, mode="create", **self._kw())

    def size(self, path: str) -> int:
        self.fs.invalidate_cache(path)
        info = self.fs.info(path, **self._kw())
        if info.get("type") == "directory":
            raise IsADirectoryError(path)
        return int(info["size"])

    def exists(self, path: str) -> bool:
        if self.protocol in ("s3", "s3a") and hasattr(self.fs, "_call_s3"):
            # one HEAD: s3fs' info() follows a 404 with a LIST to tell a
            # "directory" from nothing, and a directory is no object either
            bucket, key, version = self.fs.split_path(path)
            extra = {"VersionId": version} if version else {}
            try:
                fsspec.asyn.sync(
                    self.fs.loop, self.fs._call_s3, "head_object", Bucket=bucket, Key=key,
                    timeout=self._kw().get("timeout"), **extra,
                )
            except FileNotFoundError:
                return False
            return True
        try:
            self.size(path)
            return True
        except (FileNotFoundError, IsADirectoryError):
            return False

    def list_dir(self, path: str) -> tuple[dict[str, int], list[str]]:
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True, **self._kw())
        except FileNotFoundError:
            return {}, []
        files: dict[str, int] = {}
        dirs: list[str] = []
        base = path.rstrip("/")
        for e in entries:
            name = e["name"].rstrip("/")
            rel = name[len(base) + 1 :] if name.startswith(base + "/") else name.rsplit("/", 1)[-1]
            if not rel or "/" in rel:
                continue
            if e.get("type") == "directory":
                dirs.append(rel)
            else:
                files[rel] = int(e.get("size") or 0)
        return files, sorted(dirs)

    def find(self, path: str) -> dict[str, int]:
        self.fs.invalidate_cache(path)
        try:
            found = self.fs.find(path, detail=True, **self._kw())
        except FileNotFoundError:
            return {}
        base = path.rstrip("/") + "/"
        out: dict[str, int] = {}
        for name, info in found.items():
            if info.get("type") == "directory":
                continue
            if name.startswith(base):
                out[name[len(base) :]] = int(info.get("size") or 0)
        return out

    def delete(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if not paths:
            return
        try:
            self.fs.rm(paths, **self._kw())
        except FileNotFoundError:
            for p in paths:
                try:
                    self.fs.rm_file(p, **self._kw())
                except FileNotFoundError:
                    pass

    def delete_prefix(self, path: str) -> None:
        keys = self.find(path)
        base = path.rstrip("/") + "/"
        self.delete([base + k for k in keys])
        try:
            self.fs.rm(path, recursive=True, **self._kw())
        except (FileNotFoundError, OSError):
            pass

    def clean_temps(self, path: str, min_age: float) -> list[str]:
        """Object stores write whole objects: no temp files to leave behind."""
        return []

    def barrier(self) -> None:
        """Object stores make every completed PUT durable; nothing to do."""

    # -- incomplete multipart uploads (S3 only) ----------------------------
    def list_uploads(self, path: str) -> list[tuple[str, str, float | None]]:
        """``[(bucket/key, upload id, initiated)]`` of multipart uploads below
        ``path``; ``[]`` where the backend has no listable incomplete uploads
        (gcsfs' resumable uploads cannot be listed, and expire after a week)."""
        if self.protocol not in ("s3", "s3a"):
            return []
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
        if self.protocol not in ("s3", "s3a"):
            return
        bucket, key, _ = self.fs.split_path(path)
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except FileNotFoundError:
            pass  # NoSuchUpload: completed or aborted meanwhile
