"""Object-store and other fsspec backends (s3://, gs://, memory://, az://, ...).

Paths here are the backend's own paths without protocol (``bucket/key``).
The filesystem instance is created by cloudckpt itself with
``skip_instance_cache=True`` so that no instance bound to another event loop
is ever shared by surprise (see STACK.md, sharp edge 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem

Buffer = bytes | bytearray | memoryview


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
        if out.nbytes == 0:
            return 0
        data = self.get(path, start, start + out.nbytes)
        n = min(len(data), out.nbytes)
        out[:n] = data[:n]
        return len(data)

    def put(self, path: str, buffers: Sequence[Buffer]) -> int:
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

    def clean_temps(self, path: str) -> list[str]:
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
