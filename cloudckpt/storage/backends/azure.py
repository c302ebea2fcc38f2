"""az://, abfs://, abfss:// — Azure Blob Storage (and ADLS Gen2 accounts) through adlfs.

What differs from any fsspec filesystem:

* the first path component is a container (``bucketed``), and a missing
  container is named as such (:meth:`~AzureBackend.missing_bucket`);
* retries are left to cloudckpt: adlfs builds the SDK's client with the SDK's
  default policy (3 retries, 15 to 24 s apart), so the backend swaps it for a
  client to the same URL, with the same credential, built with
  ``retry_total=0`` (one layer of retries, one backoff);
* the SDK's exceptions become the built-in ones the storage layer expects
  (``FileNotFoundError``, ``FileExistsError``, ``PermissionError``,
  ``ConnectionError``, ``TimeoutError``, an ``OSError`` with the HTTP status);
* ``exists`` and ``size`` are one ``Get Blob Properties``; no listing cache;
* the commit's create-only write is ``upload_blob(overwrite=False)``, that is
  ``Put Blob`` with ``If-None-Match: *``: of two writers exactly one creates
  the blob, the other gets ``409 BlobAlreadyExists`` (``FileExistsError``).
* :meth:`~AzureBackend.copy` copies an object within the store (``Copy
  Blob``), but ``server_copy`` is not declared: Azure reports no CRC-32C of
  the copy, and an incremental save checks a remote copy by that CRC (a
  damaged source would be copied unseen).

What it cannot do: the SDK's single-request upload takes one ``bytes``, so a
write of several buffers is joined (``write_copies``); uncommitted blocks of a
killed upload cannot be listed (Azure discards them after 7 days).

Example:
    >>> AzureBackend.bucketed, AzureBackend.url_path("az", "container//run/")
    (True, 'container/run')
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import fsspec.asyn

from cloudckpt.storage.backends.fsspec import FsspecBackend
from cloudckpt.storage.protocol import Buffer, Capabilities, WriteMode

__all__ = ["AzureBackend", "AzureHTTPError"]


class AzureHTTPError(OSError):
    """An HTTP error of Azure Blob Storage that has no built-in exception of its
    own; ``status`` is the HTTP status (the retry policy reads it).

    Example:
        >>> AzureHTTPError(503, "ServerBusy").status
        503
    """

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _said(exc: Exception) -> str:
    """What the service said, in one line: its error code and the first line of its message."""
    code = getattr(exc, "error_code", None)
    reason = getattr(exc, "reason", None)
    first = (str(getattr(exc, "message", None) or exc).strip().splitlines() or [""])[0]
    parts = [p for p in (str(code) if code else "", first or (str(reason) if reason else "")) if p]
    return ": ".join(parts) or type(exc).__name__


def _builtin(exc: BaseException, path: str) -> OSError | None:
    """The built-in exception of :mod:`cloudckpt.storage.protocol` for an
    exception of the azure SDK (or adlfs' ``RuntimeError`` around one); None
    for any other exception."""
    from azure.core import exceptions as az

    if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, az.AzureError):
        exc = exc.__cause__  # adlfs' rm wraps what failed as "Failed to remove ..."
    if isinstance(exc, az.ResourceNotFoundError):
        return FileNotFoundError(errno.ENOENT, f"no such blob or container ({_said(exc)})", path)
    if isinstance(exc, az.ResourceExistsError):
        return FileExistsError(errno.EEXIST, f"the blob exists ({_said(exc)})", path)
    if isinstance(exc, az.HttpResponseError):
        status = getattr(exc, "status_code", None)
        if isinstance(exc, az.ClientAuthenticationError) or status in (401, 403):
            return PermissionError(errno.EACCES, f"access denied ({_said(exc)})", path)
        if status == 404:
            return FileNotFoundError(errno.ENOENT, f"not found ({_said(exc)})", path)
        return AzureHTTPError(status or 0, f"{path}: HTTP {status} {_said(exc)}")
    if isinstance(exc, (az.ServiceRequestTimeoutError, az.ServiceResponseTimeoutError)):
        return TimeoutError(errno.ETIMEDOUT, f"timed out ({_said(exc)})", path)
    if isinstance(exc, (az.ServiceRequestError, az.ServiceResponseError)):
        return ConnectionError(errno.ECONNRESET, f"cannot reach the endpoint ({_said(exc)})", path)
    return None


@contextlib.contextmanager
def _translated(path: str) -> Iterator[None]:
    """Within the block, the azure SDK's exceptions become built-in ones (:func:`_builtin`)."""
    try:
        yield
    except (OSError, TimeoutError):
        raise
    except Exception as exc:
        builtin = _builtin(exc, path)
        if builtin is None:
            raise
        raise builtin from exc


class AzureBackend(FsspecBackend):
    """Azure Blob Storage through adlfs (``az://``, ``abfs://``, ``abfss://``).

    Example:
        >>> AzureBackend.declare.__doc__ is not None
        True
    """

    bucketed = True

    def prepare_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """No listings cache: adlfs answers ``info`` of a name missing from a
        cached listing with "a directory", which a concurrent listing can make
        stale; every request here goes to the store."""
        options.setdefault("use_listings_cache", False)
        return options

    def configure(self, fs: Any) -> Any:
        """Requests tried once, through the SDK's public client: a client to the
        same URL (with its SAS, if any) and credential as adlfs' own, built with
        ``retry_total=0``. Left as adlfs made it for ``location_mode`` other
        than ``primary`` (the public client has no option for it)."""
        client = getattr(fs, "service_client", None)
        if client is None or getattr(fs, "location_mode", "primary") != "primary":
            return fs
        from azure.storage.blob.aio import BlobServiceClient

        single = BlobServiceClient(account_url=client.url, credential=client.credential, retry_total=0)
        fsspec.asyn.sync(fs.loop, client.close)
        fs.service_client = single
        return fs

    def declare(self) -> Capabilities:
        """Create-only (``Put Blob`` with ``If-None-Match: *``); per-call
        timeouts (adlfs is asynchronous); uploads hold one copy of their data.
        No ``server_copy``: :meth:`copy` works, but reports no CRC-32C to check the copy by."""
        return Capabilities(create_only=True, write_copies=True, call_timeout=self._timeouts)

    def accepted_options(self) -> frozenset[str] | None:
        """adlfs hands an option it does not know to ``DefaultAzureCredential``
        or ignores it: the names its class takes."""
        return self.signature_options()

    # -- the SDK's public clients, for one request each
    def _blob(self, path: str) -> Any:
        container, key, _ = self.fs.split_path(path)
        return self.fs.service_client.get_blob_client(container, key)

    def _properties(self, path: str) -> Any:
        async def head() -> Any:
            async with self._blob(path) as blob:
                return await blob.get_blob_properties()

        return fsspec.asyn.sync(self.fs.loop, head, timeout=self._timeout())

    # -- reads
    def get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        """The blob or its bytes ``[start, end)``; ``b""`` for a range at or
        past its end (Azure answers 416 there, S3 and GCS an empty body)."""
        from azure.core.exceptions import HttpResponseError

        with _translated(path):
            try:
                return super().get(path, start, end)
            except HttpResponseError as exc:
                if getattr(exc, "status_code", None) == 416 and (start is not None or end is not None):
                    return b""
                raise

    def size(self, path: str) -> int:
        """One ``Get Blob Properties``; a "directory" (a prefix of blobs) only
        when there is no blob of that name (then adlfs lists)."""
        from azure.core.exceptions import ResourceNotFoundError

        with _translated(path):
            try:
                return int(self._properties(path).size)
            except ResourceNotFoundError:
                return super().size(path)

    def exists(self, path: str) -> bool:
        """One ``Get Blob Properties``."""
        from azure.core.exceptions import ResourceNotFoundError

        with _translated(path):
            try:
                self._properties(path)
            except ResourceNotFoundError:
                return False
        return True

    # -- writes
    def put(
        self, path: str, buffers: Sequence[Buffer], mode: WriteMode = WriteMode.OVERWRITE, *, atomic: bool = False
    ) -> int:
        """One ``Put Blob`` up to the SDK's single-upload size (64 MiB), else staged
        blocks committed at once: atomic either way. ``CREATE_ONLY``: ``If-None-Match: *``."""
        with _translated(path):
            return super().put(path, buffers, mode, atomic=atomic)

    def copy(self, src: str, dst: str) -> int | None:
        """``Copy Blob`` (the SDK's public ``start_copy_from_url``) from ``src``
        to ``dst``, then ``Get Blob Properties`` until the copy is no longer
        pending (within one account Azure usually completes it at once, and
        Azurite always does). Returns None: Azure keeps an MD5 or a CRC-64 of
        a blob, no CRC-32C; which is why ``capabilities.server_copy`` is not
        declared and :meth:`Storage.copy_from` does not use this verb.

        Example:
            >>> "Copy Blob" in AzureBackend.copy.__doc__
            True
        """
        with _translated(src):
            fsspec.asyn.sync(self.fs.loop, self._copy, src, dst, timeout=self._timeout())
        return None

    async def _copy(self, src: str, dst: str) -> None:
        _, _, version = self.fs.split_path(src)
        async with self._blob(src) as source, self._blob(dst) as target:
            url = source.url if not version else f"{source.url}{'&' if '?' in source.url else '?'}versionid={version}"
            started = await target.start_copy_from_url(url)
            status = started.get("copy_status")
            pause = 0.05
            while status == "pending":
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                status = (await target.get_blob_properties()).copy.status
            if status != "success":
                raise AzureHTTPError(0, f"{dst}: Copy Blob from {src} ended {status!r}, not 'success'")

    # -- listings and deletes
    def list_dir(self, path: str) -> tuple[dict[str, int], list[str]]:
        with _translated(path):
            return super().list_dir(path)

    def find(self, path: str) -> dict[str, int]:
        with _translated(path):
            return super().find(path)

    def delete(self, paths: Iterable[str]) -> None:
        """Delete blobs (``Delete Blob`` each, concurrently); missing ones are ignored."""
        paths = list(paths)
        if paths:
            with _translated(paths[0]):
                fsspec.asyn.sync(self.fs.loop, self._delete, paths, timeout=self._timeout())

    async def _delete(self, paths: list[str]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        async def one(path: str) -> None:
            try:
                async with self._blob(path) as blob:
                    await blob.delete_blob()
            except ResourceNotFoundError:
                pass

        results = await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, BaseException):
                builtin = _builtin(result, path)
                if builtin is None:
                    raise result
                raise builtin from result

    def delete_prefix(self, path: str) -> None:
        """Delete every blob below ``path``, then the directories an account with a
        hierarchical namespace (ADLS Gen2) keeps for them."""
        base = path.rstrip("/") + "/"
        self.delete([base + k for k in self.find(path)])
        with contextlib.suppress(OSError, RuntimeError):
            self.fs.rm(path, recursive=True, **self._kw())

    def missing_bucket(self, path: str) -> str | None:
        """The container of ``path`` if it does not exist (one ``Get Container Properties``)."""
        with _translated(path):
            return super().missing_bucket(path)
