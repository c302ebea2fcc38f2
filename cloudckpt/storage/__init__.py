"""The storage layer: the only place where a byte leaves or enters the process.

A :class:`Storage` is a directory on some backend (a local path, ``s3://``,
``gs://``, ``memory://`` or any fsspec URL) addressed by relative,
``/``-separated keys. It offers the verbs the layers above need — read, read
a range, read into a buffer, scatter-read into many buffers, write, write atomically, write-if-absent
(create-only), size, exists, list one level, list recursively, delete, and list/abort incomplete multipart uploads — each
retried with backoff when the failure is transient, counted, and translated
into :mod:`cloudckpt.errors` exceptions that name the URL and key and never a
credential. :meth:`Storage.map` runs many requests concurrently with a
bounded, configurable limit.

Only this package imports fsspec; a backend package (s3fs, gcsfs, adlfs) is
imported only when a URL needs it.

Example:
    >>> import cloudckpt.storage as st
    >>> s = st.open_storage("memory://doc-storage-example")
    >>> s.write("a/b.bin", b"hello")
    >>> s.read("a/b.bin")
    b'hello'
    >>> s.write_if_absent("a/b.bin", b"other")
    False
    >>> s.list_dir("a")
    ({'b.bin': 5}, [])
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cloudckpt.errors import (
    ObjectNotFoundError,
    OversizedObjectError,
    StorageError,
    StoragePermissionError,
    TruncatedObjectError,
)
from cloudckpt.storage._local import LocalBackend
from cloudckpt.storage._retry import RetryPolicy, is_transient

__all__ = [
    "Storage",
    "open_storage",
    "RetryPolicy",
    "RequestStats",
    "IncompleteUpload",
    "validate_key",
    "join_url",
    "add_global_hook",
]

log = logging.getLogger("cloudckpt")
T = TypeVar("T")
R = TypeVar("R")
Buffer = bytes | bytearray | memoryview
Hook = Callable[[str, str], None]


_LOCAL_PROTOCOLS = (None, "", "file", "local")
#: Seconds after which a local temp file (``<name>.tmp-<hex>``) is taken to be
#: the leftover of a killed write rather than a write in flight; a
#: write-temp-then-rename of a small file takes milliseconds.
TEMP_MIN_AGE = 60.0

# what the SDKs raise when they find no credentials at all (botocore, google-auth)
_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError")

# Hooks consulted by every Storage of this process, before its own (fault injection
# in a child process that creates its storages itself: cloudckpt.testing.faults).
_GLOBAL_HOOKS: list[Hook] = []


def add_global_hook(hook: Hook) -> Callable[[], None]:
    """Call ``hook(operation, url)`` before every request attempt of every
    :class:`Storage` in this process (also those created later). Returns a
    function that removes it. Meant for fault injection and tracing
    (:mod:`cloudckpt.testing.faults`).

    Example:
        >>> seen = []
        >>> remove = add_global_hook(lambda op, url: seen.append(url))
        >>> open_storage("memory://doc-global-hook").write("k", b"x"); remove(); seen
        ['memory://doc-global-hook/k']
    """
    _GLOBAL_HOOKS.append(hook)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            _GLOBAL_HOOKS.remove(hook)

    return remove


def validate_key(key: str) -> str:
    """Check that ``key`` is a relative key that stays inside its directory.

    Rejects empty keys, absolute keys, backslashes, NUL bytes, and ``.``/``..``
    or empty components. Returns the key unchanged.

    Example:
        >>> validate_key("data-1/w/c/0")
        'data-1/w/c/0'
        >>> validate_key("../other")
        Traceback (most recent call last):
        ...
        ValueError: invalid storage key '../other': component '..' is not allowed
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid storage key {key!r}: must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key or "://" in key:
        raise ValueError(f"invalid storage key {key!r}: must be a relative '/'-separated key")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid storage key {key!r}: component {part!r} is not allowed")
    return key


def join_url(base: str, *parts: str) -> str:
    """Join URL or path components with ``/``.

    Example:
        >>> join_url("s3://bucket/run/", "ckpt-1")
        's3://bucket/run/ckpt-1'
    """
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


@dataclass
class RequestStats:
    """Counts of requests and bytes, by operation.

    Example:
        >>> s = RequestStats(); s.add("read", 10); s.requests
        1
    """

    by_op: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, op: str, nbytes: int = 0) -> None:
        with self._lock:
            self.by_op[op] = self.by_op.get(op, 0) + 1
            if op.startswith("read"):
                self.bytes_read += nbytes
            elif op.startswith("write"):
                self.bytes_written += nbytes

    def add_bytes_read(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_read += nbytes

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

    @property
    def requests(self) -> int:
        """Total number of requests made."""
        return sum(self.by_op.values())

    def snapshot(self) -> dict[str, int]:
        """A copy of the per-operation counts plus totals."""
        with self._lock:
            d = dict(self.by_op)
        d["requests"] = sum(d.values())
        d["bytes_read"] = self.bytes_read
        d["bytes_written"] = self.bytes_written
        d["retries"] = self.retries
        return d


@dataclass(frozen=True)
class IncompleteUpload:
    """An upload that was started and never completed nor aborted.

    On S3 a multipart upload of a killed writer stays until it is aborted:
    its parts are billed, and a plain listing never shows it. ``key`` is
    relative to the :class:`Storage` that listed it; ``initiated`` is in
    seconds since the epoch (None if the backend does not say).

    Example:
        >>> IncompleteUpload("ckpt-1/data-x/c/0", "id-1", 0.0).key
        'ckpt-1/data-x/c/0'
    """

    key: str
    upload_id: str
    initiated: float | None = None


class _Shared:
    """State shared between a Storage and the child storages derived from it."""

    def __init__(
        self,
        backend: Any,
        protocol: str,
        max_concurrency: int,
        retry: RetryPolicy,
        secrets: list[str],
        request_timeout: float | None = None,
    ) -> None:
        self.backend = backend
        self.protocol = protocol
        self.max_concurrency = max_concurrency
        self.retry = retry
        self.secrets = secrets
        self.request_timeout = request_timeout
        self.deadline: float | None = None  # time.monotonic() after which no request starts
        self.stats = RequestStats()
        self.hooks: list[Hook] = []

    def pool(self) -> ThreadPoolExecutor:
        return _shared_pool(self.max_concurrency)


_POOL: dict[str, Any] = {"pool": None, "size": 0, "pid": None}
_POOL_LOCK = threading.Lock()


def _shared_pool(size: int) -> ThreadPoolExecutor:
    """One I/O thread pool per process, shared by every Storage (threads are
    costly to start; each :meth:`Storage.map` bounds its own requests in flight).
    Grows when a storage asks for more concurrency; rebuilt after fork."""
    with _POOL_LOCK:
        pool = _POOL["pool"]
        if pool is None or _POOL["pid"] != os.getpid() or _POOL["size"] < size:
            new_size = max(size, _POOL["size"] if _POOL["pid"] == os.getpid() else 0)
            _POOL["pool"] = ThreadPoolExecutor(max_workers=new_size, thread_name_prefix="cloudckpt-io")
            _POOL["size"] = new_size
            _POOL["pid"] = os.getpid()
            if pool is not None and _POOL["pid"] == os.getpid():
                pool.shutdown(wait=False)
        return _POOL["pool"]  # type: ignore[no-any-return]


_in_pool = threading.local()


class Storage:
    """A directory on a backend, addressed by relative keys.

    Create one with :func:`open_storage`. ``url`` is the directory's URL as
    the user gave it (credentials never appear in it: they live in
    storage_options). See the module docstring for an example.
    """

    def __init__(self, shared: _Shared, root: str, url: str) -> None:
        self._s = shared
        self._root = root.rstrip("/") if root not in ("/",) else root
        self.url = url.rstrip("/") if url not in ("/",) else url

    # -- identity -------------------------------------------------------
    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    @property
    def protocol(self) -> str:
        """``"local"`` for local disk, else the fsspec protocol (``"s3"``, ``"gs"``, ...)."""
        return self._s.protocol

    @property
    def is_local(self) -> bool:
        """Whether this is a directory on local disk."""
        return self._s.protocol == "local"

    @property
    def write_copies(self) -> bool:
        """Whether a write holds a copy of its data while it is in flight (the
        caller bounds such bytes in flight). False on local disk (``write``
        from the buffers), S3 and GCS (the body is read from the buffers as
        it is sent); True elsewhere (memory://, ... take one ``bytes``).

        Example:
            >>> open_storage("memory://doc-copies").write_copies
            True
        """
        return bool(getattr(self._s.backend, "write_copies", True))

    @property
    def gathers_writes(self) -> bool:
        """Whether a write of many small buffers is as cheap as one of their
        join: True on local disk (vectored ``writev``), so a caller need not
        join small pieces first (a copy, and memory, for nothing).

        Example:
            >>> import tempfile
            >>> open_storage(tempfile.mkdtemp()).gathers_writes, open_storage("memory://doc-gather").gathers_writes
            (True, False)
        """
        return bool(getattr(self._s.backend, "gathers_writes", False))

    @property
    def stats(self) -> RequestStats:
        """Request counters shared by this storage and its children."""
        return self._s.stats

    @property
    def max_concurrency(self) -> int:
        """The most requests :meth:`map` keeps in flight."""
        return self._s.max_concurrency

    @property
    def request_timeout(self) -> float | None:
        """Seconds one request attempt may take (None: the backend's own timeouts)."""
        return self._s.request_timeout

    @contextlib.contextmanager
    def time_limit(self, seconds: float | None) -> Iterator[None]:
        """Bound every request made within the block (by any thread, through this
        storage or its children) to end ``seconds`` from now: each attempt's
        timeout is cut to the time left, and once it is up no request or retry
        starts (:class:`StorageError`). Network backends cancel a request at
        its timeout; local disk only stops starting new requests.

        Example:
            >>> s = open_storage("memory://doc-limit")
            >>> with s.time_limit(0):
            ...     s.write("k", b"x")
            Traceback (most recent call last):
            ...
            cloudckpt.errors.StorageError: write memory://doc-limit/k: not started, the time limit of this operation has passed
        """
        previous = self._s.deadline
        if seconds is not None:
            at = time.monotonic() + max(0.0, float(seconds))
            self._s.deadline = at if previous is None else min(previous, at)
        try:
            yield
        finally:
            self._s.deadline = previous

    def child(self, prefix: str) -> Storage:
        """The storage of a sub-directory, sharing backend, pool and counters.

        Example:
            >>> open_storage("memory://doc-child").child("ckpt-1").url
            'memory://doc-child/ckpt-1'
        """
        validate_key(prefix)
        return Storage(self._s, self._path(prefix), join_url(self.url, prefix))

    def parent(self) -> Storage | None:
        """The storage of the directory holding this one, sharing backend, pool
        and counters; None at the top (a bucket, or the filesystem root).

        Example:
            >>> open_storage("memory://doc-parent/run/ckpt-1").parent().url
            'memory://doc-parent/run'
            >>> open_storage("memory://doc-parent").parent() is None
            True
        """
        root = self._root.rstrip("/")
        if self.is_local:
            up = os.path.dirname(root) if root else ""
            if not root or up == root:
                return None
        else:
            if "/" not in root.lstrip("/"):
                return None
            up = root.rsplit("/", 1)[0]
        if "/" not in self.url.split("://", 1)[-1].rstrip("/"):
            return None
        url = self.url.rstrip("/").rsplit("/", 1)[0] or "/"
        if url.endswith(":/") or url.endswith("://"):
            return None  # "file:///x": the root of the filesystem
        return Storage(self._s, up or "/", url)

    def url_for(self, key: str) -> str:
        """The full URL of ``key``.

        Example:
            >>> open_storage("memory://doc-url").url_for("a/b")
            'memory://doc-url/a/b'
        """
        return join_url(self.url, key)

    def add_hook(self, hook: Hook) -> Callable[[], None]:
        """Call ``hook(operation, url)`` before every request attempt (fault injection,
        tracing). Returns a function that removes the hook.

        Example:
            >>> s = open_storage("memory://doc-hook"); seen = []
            >>> remove = s.add_hook(lambda op, url: seen.append(op))
            >>> s.write("k", b"x"); remove(); seen
            ['write']
        """
        self._s.hooks.append(hook)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._s.hooks.remove(hook)

        return remove

    # -- internals ------------------------------------------------------
    def _path(self, key: str) -> str:
        if self._root == "/":
            return "/" + key
        return f"{self._root}/{key}" if key else self._root

    def _redact(self, text: str) -> str:
        """A backend's message with this storage's credentials masked (see :func:`_redact_text`)."""
        return _redact_text(text, self._s.secrets)

    def _request(self, op: str, key: str, fn: Callable[[], T], nbytes: int = 0) -> T:
        url = self.url_for(key) if key else self.url
        backend = self._s.backend

        def attempt() -> T:
            timeout = self._s.request_timeout
            deadline = self._s.deadline
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageError(
                        f"{op} {url}: not started, the time limit of this operation has passed",
                        url=url,
                        operation=op,
                    )
                timeout = left if timeout is None else min(timeout, left)
            for hook in (*_GLOBAL_HOOKS, *self._s.hooks):
                hook(op, url)
            self._s.stats.add(op, nbytes)
            limit = getattr(backend, "call_timeout", None)
            if timeout is None or limit is None:
                return fn()
            with limit(timeout):
                return fn()

        def on_retry(n: int, exc: BaseException) -> None:
            self._s.stats.add_retry()
            log.debug("retrying %s %s after %s (attempt %d)", op, url, type(exc).__name__, n)

        try:
            return self._s.retry.run(attempt, on_retry=on_retry)
        except StorageError:
            raise
        except FileExistsError:
            raise
        except FileNotFoundError as exc:
            # a write never needs the object to exist: what is missing is where it goes
            missing = "no bucket or directory to write into" if op.startswith("write") else "no such object"
            raise ObjectNotFoundError(
                f"{op} {url}: {missing} on {backend.name}", url=url, operation=op
            ) from _scrubbed(exc, self)
        except PermissionError as exc:
            raise StoragePermissionError(
                f"{op} {url}: permission denied by {backend.name} ({self._redact(str(exc))}); "
                "check the credentials in storage_options or the environment",
                url=url,
                operation=op,
            ) from _scrubbed(exc, self)
        except Exception as exc:
            if type(exc).__name__ in _NO_CREDENTIALS:
                raise StoragePermissionError(
                    f"{op} {url}: no usable credentials for {backend.name} ({type(exc).__name__}: "
                    f"{self._redact(str(exc))}); pass them in storage_options or set them in the environment",
                    url=url,
                    operation=op,
                ) from _scrubbed(exc, self)
            transient = is_transient(exc)
            what = "failed after retries" if transient else "failed"
            raise StorageError(
                f"{op} {url} {what} on {backend.name}: {type(exc).__name__}: {self._redact(str(exc))}",
                url=url,
                operation=op,
                transient=transient,
            ) from _scrubbed(exc, self)

    # -- verbs ----------------------------------------------------------
    def read(self, key: str, start: int | None = None, end: int | None = None, *, max_bytes: int | None = None) -> bytes:
        """Read a whole object, or the byte range ``[start, end)`` of it.

        ``max_bytes``: read a whole object, but at most this many bytes of it
        (a reader that refuses objects over a size limit asks for one byte
        more than the limit: memory stays bounded whatever the object holds).

        Example:
            >>> s = open_storage("memory://doc-read"); s.write("k", b"abcdef")
            >>> s.read("k", 1, 3), s.read("k", max_bytes=4)
            (b'bc', b'abcd')
        """
        validate_key(key)
        path = self._path(key)
        if max_bytes is not None:
            if start is not None or end is not None:
                raise ValueError("read: max_bytes reads from the start of the object; give no range with it")
            start, end = 0, max_bytes
            op = "read"
        else:
            op = "read" if start is None and end is None else "read_range"
        data: bytes = self._request(op, key, lambda: self._s.backend.get(path, start, end))
        self._s.stats.add_bytes_read(len(data))
        return data

    def read_into(self, key: str, out: memoryview, start: int = 0, *, size: int | None = None) -> None:
        """Fill ``out`` with ``out.nbytes`` bytes of ``key`` from offset ``start``.

        Raises :class:`TruncatedObjectError` if the object is shorter than
        that. ``size``: the object's recorded size, when the read ends there;
        then an object that is longer raises :class:`OversizedObjectError`
        (one more byte is asked for in the same request).

        Example:
            >>> s = open_storage("memory://doc-into"); s.write("k", b"abcdef")
            >>> buf = bytearray(3); s.read_into("k", memoryview(buf), 2); bytes(buf)
            b'cde'
        """
        view = _byte_view(out)
        if size is not None:
            self.read_into_many(key, [(view, start)], size=size)
            return
        validate_key(key)
        path = self._path(key)
        n: int = self._request("read", key, lambda: self._s.backend.get_into(path, view, start))
        self._s.stats.add_bytes_read(min(n, view.nbytes))
        if n < view.nbytes:
            url = self.url_for(key)
            raise TruncatedObjectError(
                f"read {url}: object is truncated: wanted {view.nbytes} bytes from offset {start}, got {n}",
                url=url,
                operation="read",
            )

    def read_into_many(
        self, key: str, pieces: Sequence[tuple[memoryview, int]], *, size: int | None = None
    ) -> None:
        """Scatter-read: fill each ``out`` of ``pieces`` (``(out, offset)``) with
        ``out.nbytes`` bytes of ``key`` from ``offset``, straight into ``out``.

        Pieces that lie back to back in the object are read by one request (on
        local disk one ``preadv`` into all of them); pieces with gaps between
        them cost one request per run. Raises :class:`TruncatedObjectError`
        if the object is shorter than a piece needs. ``size``: the object's
        recorded size; the run that ends there asks for one byte more, and
        an object longer than ``size`` raises :class:`OversizedObjectError`.

        Example:
            >>> s = open_storage("memory://doc-into-many"); s.write("k", b"abcdefgh")
            >>> a, b = bytearray(2), bytearray(3)
            >>> s.read_into_many("k", [(memoryview(a), 1), (memoryview(b), 3)]); bytes(a), bytes(b)
            (b'bc', b'def')
        """
        validate_key(key)
        path = self._path(key)
        backend = self._s.backend
        runs: list[tuple[int, list[memoryview]]] = []
        end = -1
        for out, offset in sorted(((_byte_view(o), int(off)) for o, off in pieces), key=lambda p: p[1]):
            if offset < 0:
                raise ValueError(f"read_into_many {self.url_for(key)}: negative offset {offset}")
            if out.nbytes == 0:
                continue
            if runs and offset == end:
                runs[-1][1].append(out)
            else:
                runs.append((offset, [out]))
            end = offset + out.nbytes
        for start, views in runs:
            want = sum(v.nbytes for v in views)
            probe = size is not None and size > 0 and start + want == size
            asked = [*views, memoryview(bytearray(1))] if probe else views
            n: int = self._request(
                "read", key, lambda start=start, asked=asked: backend.get_into_many(path, asked, start)  # type: ignore[misc]
            )
            self._s.stats.add_bytes_read(min(n, want))
            if n > want:
                url = self.url_for(key)
                raise OversizedObjectError(
                    f"read {url}: the object is longer than its recorded size of {size} bytes", url=url, operation="read"
                )
            if n < want:
                url = self.url_for(key)
                raise TruncatedObjectError(
                    f"read {url}: object is truncated: wanted {want} bytes from offset {start}, got {n}",
                    url=url,
                    operation="read",
                )

    @property
    def maps_objects(self) -> bool:
        """Whether :meth:`map_object` can map objects (local disk on POSIX)."""
        return getattr(self._s.backend, "map_private", None) is not None

    def map_object(self, key: str, size: int) -> memoryview:
        """The object ``key`` of ``size`` bytes as a private, copy-on-write
        memory mapping: no copy and no zero-filled page, the page cache is
        mapped. Writes to the view stay in this process; the object is
        never changed. Unlinking the file later is safe; truncating it in
        place while the view lives is not (SIGBUS), which cloudckpt never does
        to a data object. Only where :attr:`maps_objects`.

        Raises :class:`TruncatedObjectError` if the object is shorter than
        ``size``, :class:`OversizedObjectError` if it is longer.

        Example:
            >>> import tempfile
            >>> s = open_storage(tempfile.mkdtemp()); s.write("k", b"abcdef")
            >>> v = s.map_object("k", 6); bytes(v), v.readonly
            (b'abcdef', False)
        """
        validate_key(key)
        mapper = getattr(self._s.backend, "map_private", None)
        if mapper is None:
            raise NotImplementedError(f"{self._s.backend.name} storage cannot map objects: read them")
        path = self._path(key)
        view, have = self._request("read", key, lambda: mapper(path, size))
        self._s.stats.add_bytes_read(min(view.nbytes, size))
        if have > size:
            view.release()
            url = self.url_for(key)
            raise OversizedObjectError(
                f"read {url}: the object is longer than its recorded size of {size} bytes ({have})",
                url=url,
                operation="read",
            )
        if view.nbytes < size:
            url = self.url_for(key)
            raise TruncatedObjectError(
                f"read {url}: object is truncated: wanted {size} bytes, it holds {view.nbytes}",
                url=url,
                operation="read",
            )
        return view

    def maps_together(self, sizes: Sequence[int]) -> bool:
        """Whether :meth:`map_objects` can map objects of these sizes back to
        back: a storage that maps objects, on a platform that can place a
        file at an address (Linux here), and every size but the last a
        multiple of the page size.

        Example:
            >>> import mmap, sys, tempfile
            >>> s = open_storage(tempfile.mkdtemp())
            >>> s.maps_together([mmap.PAGESIZE, 10]) == sys.platform.startswith("linux"), s.maps_together([10, 10])
            (True, False)
        """
        return bool(sizes) and bool(getattr(self._s.backend, "places_mappings", False)) and not any(
            n % mmap.PAGESIZE for n in sizes[:-1]
        )

    def map_objects(self, objects: Sequence[tuple[str, int]]) -> memoryview | None:
        """The objects ``(key, size)`` mapped back to back, copy-on-write,
        into one contiguous view of ``sum(sizes)`` bytes, as
        :meth:`map_object` maps one (the same caveats). None where
        :meth:`maps_together` says they cannot be; then the caller reads them.

        Raises :class:`TruncatedObjectError` (:class:`OversizedObjectError`)
        naming the first object shorter (longer) than its size,
        :class:`ObjectNotFoundError` for a missing one, :class:`StorageError`
        when the sizes cannot be mapped (out of address space).

        Example:
            >>> import mmap, tempfile
            >>> s = open_storage(tempfile.mkdtemp()); p = mmap.PAGESIZE
            >>> s.write("a", b"x" * p); s.write("b", b"yz!")
            >>> v = s.map_objects([("a", p), ("b", 3)])
            >>> v is None or bytes(v[p - 1 : p + 2]) == b"xyz"
            True
        """
        sizes = [n for _, n in objects]
        if not self.maps_together(sizes) or sum(sizes) == 0:
            return None
        for key, _ in objects:
            validate_key(key)
        backend = self._s.backend
        try:
            region = backend.reserve_mapping(sum(sizes))
        except OSError as exc:  # e.g. ENOMEM: sizes a manifest declares that no object has
            self._check_sizes(objects)
            url = self.url_for(objects[0][0])
            raise StorageError(
                f"read {url}: cannot map {sum(sizes)} bytes for {len(objects)} objects ({exc.strerror})",
                url=url,
                operation="read",
            ) from None
        try:
            offset = 0
            for key, size in objects:
                place = functools.partial(backend.map_private_at, region, offset, self._path(key), size)
                have: int = self._request("read", key, place)
                if have > size:
                    url = self.url_for(key)
                    raise OversizedObjectError(
                        f"read {url}: the object is longer than its recorded size of {size} bytes ({have})",
                        url=url,
                        operation="read",
                    )
                if have < size:
                    url = self.url_for(key)
                    raise TruncatedObjectError(
                        f"read {url}: object is truncated: wanted {size} bytes, it holds {have}", url=url, operation="read"
                    )
                self._s.stats.add_bytes_read(size)
                offset += size
        except BaseException:
            region.close()
            raise
        return memoryview(region)

    def _check_sizes(self, objects: Sequence[tuple[str, int]]) -> None:
        """Raise naming the first object whose size is not ``size``."""
        for key, size in objects:
            have = self.size(key)
            if have != size:
                url = self.url_for(key)
                cls = TruncatedObjectError if have < size else OversizedObjectError
                raise cls(f"read {url}: the object holds {have} bytes, its recorded size is {size}", url=url, operation="read")

    def write(self, key: str, data: Buffer | Sequence[Buffer], *, atomic: bool = False) -> None:
        """Write an object (overwriting). ``data`` may be a list of buffers.

        ``atomic=True`` makes a reader see the old or the new object whole
        (object stores always do; local disk writes a temp file and renames).
        """
        validate_key(key)
        path = self._path(key)
        buffers: Sequence[Buffer] = (
            [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        )
        nbytes = sum(memoryview(b).nbytes for b in buffers)
        backend = self._s.backend
        if atomic:
            payload = buffers[0] if len(buffers) == 1 else b"".join(buffers)
            self._request("write", key, lambda: backend.put_atomic(path, payload), nbytes)
        else:
            self._request("write", key, lambda: backend.put(path, buffers), nbytes)

    def write_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` only if it does not exist (create-only).

        Returns True if this call created it. If the object already exists,
        returns True only if it holds exactly ``data`` (a retried request whose
        first attempt succeeded), else False. Callers make ``data`` unique to
        the writer (an attempt id) so that equality means "ours".
        """
        validate_key(key)
        path = self._path(key)
        backend = self._s.backend
        try:
            self._request("write_create", key, lambda: backend.put_create(path, data), len(data))
            return True
        except FileExistsError:
            pass
        try:
            existing = self.read(key)
        except ObjectNotFoundError:
            return False
        return existing == data

    def size(self, key: str) -> int:
        """Size in bytes of an object; :class:`ObjectNotFoundError` if missing."""
        validate_key(key)
        path = self._path(key)
        n: int = self._request("head", key, lambda: self._s.backend.size(path))
        return n

    def exists(self, key: str) -> bool:
        """Whether the object ``key`` exists.

        Example:
            >>> open_storage("memory://doc-exists").exists("nope")
            False
        """
        validate_key(key)
        path = self._path(key)
        ok: bool = self._request("head", key, lambda: self._s.backend.exists(path))
        return ok

    def list_dir(self, prefix: str = "") -> tuple[dict[str, int], list[str]]:
        """One level of listing: ``({file name: size}, [sub-directory names])``.

        Costs one request per page of results on object stores (a delimiter
        listing), whatever lies below the sub-directories.
        """
        if prefix:
            validate_key(prefix)
        path = self._path(prefix) if prefix else self._root
        result: tuple[dict[str, int], list[str]] = self._request(
            "list", prefix, lambda: self._s.backend.list_dir(path)
        )
        return result

    def list_all(self, prefix: str = "") -> dict[str, int]:
        """Every object below ``prefix``, recursively: ``{key relative to prefix: size}``."""
        if prefix:
            validate_key(prefix)
        path = self._path(prefix) if prefix else self._root
        result: dict[str, int] = self._request("list", prefix, lambda: self._s.backend.find(path))
        return result

    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing ones are ignored."""
        keys = [validate_key(k) for k in keys]
        if not keys:
            return
        paths = [self._path(k) for k in keys]
        self._request("delete", keys[0], lambda: self._s.backend.delete(paths))

    def delete_prefix(self, prefix: str) -> None:
        """Delete everything below ``prefix`` (a directory key)."""
        validate_key(prefix)
        path = self._path(prefix)
        self._request("delete", prefix, lambda: self._s.backend.delete_prefix(path))

    def list_incomplete_uploads(self, prefix: str = "") -> list[IncompleteUpload]:
        """Uploads under ``prefix`` that were started and never completed (S3
        multipart uploads of a killed writer). ``[]`` on backends without the
        concept (local disk, memory, GCS through gcsfs, ...).

        Example:
            >>> open_storage("memory://doc-uploads").list_incomplete_uploads()
            []
        """
        if prefix:
            validate_key(prefix)
        backend = self._s.backend
        lister = getattr(backend, "list_uploads", None)
        if lister is None:
            return []
        path = self._path(prefix) if prefix else self._root
        found: list[tuple[str, str, float | None]] = self._request("list_uploads", prefix, lambda: lister(path))
        base = self._root.rstrip("/") + "/"
        out = []
        for full, upload_id, initiated in found:
            if full.startswith(base):
                out.append(IncompleteUpload(full[len(base) :], upload_id, initiated))
        return sorted(out, key=lambda u: (u.key, u.upload_id))

    def abort_uploads(self, uploads: Iterable[IncompleteUpload]) -> int:
        """Abort incomplete uploads (as listed by :meth:`list_incomplete_uploads`);
        ones already gone are ignored. Returns how many were asked to abort.

        Example:
            >>> open_storage("memory://doc-abort").abort_uploads([])
            0
        """
        uploads = list(uploads)
        for u in uploads:
            validate_key(u.key)
        aborter = getattr(self._s.backend, "abort_upload", None)
        if aborter is None or not uploads:
            return 0

        def one(u: IncompleteUpload) -> None:
            path = self._path(u.key)
            self._request("abort_upload", u.key, lambda: aborter(path, u.upload_id))

        self.map(one, uploads)
        return len(uploads)

    def temporaries(self, prefix: str = "") -> list[tuple[str, int, float]]:
        """The temp files of killed or running writes in the directory ``prefix``
        (local disk; object stores have none): ``(key, size, age in seconds)``.

        Example:
            >>> open_storage("memory://doc-temps-list").temporaries()
            []
        """
        if prefix:
            validate_key(prefix)
        lister = getattr(self._s.backend, "list_temps", None)
        if lister is None:
            return []
        path = self._path(prefix) if prefix else self._root
        found: list[tuple[str, int, float]] = self._request("list", prefix, lambda: lister(path))
        return [(f"{prefix}/{n}" if prefix else n, size, age) for n, size, age in found]

    def collect_temporaries(self, prefix: str = "", min_age: float = TEMP_MIN_AGE) -> list[str]:
        """Remove what a killed write left in the directory ``prefix`` (local disk:
        the temp file of a write-then-rename; object stores: nothing). Returns
        the URLs removed. Only temp files last modified ``min_age`` seconds ago
        or earlier go: a younger one may be the write of a live process (a
        manager that has not yet learnt it lost the directory), which must
        not fail because its temp file vanished before its rename.

        Example:
            >>> open_storage("memory://doc-temps").collect_temporaries()
            []
        """
        if prefix:
            validate_key(prefix)
        path = self._path(prefix) if prefix else self._root
        removed: list[str] = self._request("delete", prefix, lambda: self._s.backend.clean_temps(path, min_age))
        base = self._path("")
        return [self.url_for(p[len(base) + 1 :]) if p.startswith(base + "/") else p for p in removed]

    def barrier(self) -> None:
        """Make every write so far durable before the next one (a commit point).

        On local disk: fsync of the directories that gained entries. On
        object stores: nothing, a completed PUT is durable.
        """
        try:
            self._s.backend.barrier()
        except OSError as exc:
            raise StorageError(
                f"sync {self.url} failed on {self._s.backend.name}: {exc}", url=self.url, operation="sync"
            ) from exc

    # -- concurrency ----------------------------------------------------
    def map(self, fn: Callable[[T], R], items: Iterable[T], *, limit: int | None = None) -> list[R]:
        """``[fn(x) for x in items]`` with at most ``limit`` (default
        ``max_concurrency``) calls in flight, results in order. The first
        exception stops new calls, waits for those in flight and is raised.
        Items are taken lazily, so memory for in-flight work stays bounded.

        Example:
            >>> open_storage("memory://doc-map").map(lambda x: x * 2, range(5))
            [0, 2, 4, 6, 8]
        """
        limit = max(1, min(limit or self._s.max_concurrency, self._s.max_concurrency))
        if getattr(_in_pool, "active", False) or limit == 1:
            return [fn(x) for x in items]
        pool = self._s.pool()

        def run(x: T) -> R:
            _in_pool.active = True
            try:
                return fn(x)
            finally:
                _in_pool.active = False

        results: dict[int, R] = {}
        pending: dict[Future[R], int] = {}
        it: Iterator[T] = iter(items)
        index = 0
        error: BaseException | None = None
        exhausted = False
        while True:
            while not exhausted and error is None and len(pending) < limit:
                try:
                    x = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(run, x)] = index
                index += 1
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in done:
                i = pending.pop(f)
                exc = f.exception()
                if exc is not None:
                    if error is None:
                        error = exc
                else:
                    results[i] = f.result()
        if error is not None:
            raise error
        return [results[i] for i in range(index)]


def _byte_view(out: Any) -> memoryview:
    """``out`` as a flat, writable memoryview of bytes."""
    view = memoryview(out)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _scrubbed(exc: BaseException, storage: Storage) -> BaseException | None:
    """The cause to chain, unless its text or a cause of its own carries a
    credential as one (then none: a traceback prints the whole chain)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if storage._redact(text) != text:
            return None
        e = e.__cause__ or e.__context__
    return exc


# -- credential redaction --------------------------------------------------------
#
# A credential is masked where it appears *as* a credential: the value of a
# credential field (``secret=...``, ``"token": "..."``, ``password: ...``, an
# ``X-Amz-Signature=`` query parameter), the password of a URL's userinfo, and
# a known credential value (from storage_options or a credential environment
# variable) where it stands as a whole token. Never as an arbitrary substring:
# the secret ``test`` of an emulator leaves ``latest`` alone.

#: environment variables whose values are credentials (the backends read them themselves)
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)
#: a known credential standing alone (not in a credential field) is masked from this many characters
BARE_MIN = 8
#: ... and in a backend's own error text, which may quote its configuration, from this many
BACKEND_BARE_MIN = 4

# the last word of a field name that makes its value a credential
_CREDENTIAL_WORDS = frozenset(
    {
        "secret", "secrets", "token", "password", "passwd", "pwd", "passphrase", "credential", "credentials",
        "signature", "sig", "authorization", "apikey", "sastoken", "connectionstring",
    }
)  # fmt: skip
# words before ``key`` (or ``key_id``) that make it a credential: access_key, account_key, ...
_KEY_QUALIFIERS = frozenset(
    {
        "access", "account", "api", "client", "customer", "encryption", "master", "private", "sas", "secret",
        "shared", "signing", "storage", "subscription",
    }
)  # fmt: skip
# option values that name a mode, not a secret (gcsfs ``token="anon"``, ...)
_NOT_SECRETS = frozenset({"anon", "google_default", "cloud", "cache", "browser"})

_WORD_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_USERINFO_RE = re.compile(r"(?P<scheme>(?<![\w.+\-])[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/\s@?#'\"<>]+)@")
_FIELD_RE = re.compile(
    r"""(?<![\w.\-"'])(?P<q>["']?)(?P<name>[A-Za-z][\w.\-]*)(?P=q)(?P<sep>\s*(?:=|:(?!//))\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""
    r"""|(?:(?:Bearer|Basic|Token|AWS4-HMAC-SHA256|GOOG4-RSA-SHA256|AWS|SharedKey)\s+)?[^\s,;&'"<>(){}\[\]]+)"""
)


def _field_kind(name: str) -> str | None:
    """``"strong"`` if a field of this name holds a credential, ``"weak"`` for a
    bare ``key`` (s3fs' access key id, but also an object's key: masked only
    when its value is a known credential), else None.

    Example:
        >>> [_field_kind(n) for n in ("secret", "AWS_SECRET_ACCESS_KEY", "X-Amz-Signature", "AccessKeyId")]
        ['strong', 'strong', 'strong', 'strong']
        >>> [_field_kind(n) for n in ("key", "token_count", "latest", "sort_key")]
        ['weak', None, None, None]
    """
    words = [w.lower() for w in _WORD_RE.findall(name)]
    if not words:
        return None
    last = words[-1]
    if last in _CREDENTIAL_WORDS:
        return "strong"
    if last == "key":
        if len(words) == 1:
            return "weak"
        return "strong" if words[-2] in _KEY_QUALIFIERS else None
    if last == "id" and len(words) >= 3 and words[-2] == "key" and words[-3] in _KEY_QUALIFIERS:
        return "strong"
    if last == "string" and len(words) >= 2 and words[-2] == "connection":
        return "strong"
    return None


def _secrets_of(options: dict[str, Any] | None, environ: Any = None) -> list[str]:
    """The credential values of ``options`` (every value under a credential
    field, nested dicts included) and of the credential environment variables
    (:data:`SECRET_ENV`), longest first.

    Example:
        >>> _secrets_of({"key": "AKID", "secret": "s3cr3t", "client_kwargs": {"region_name": "eu"}}, {})
        ['s3cr3t', 'AKID']
        >>> _secrets_of({"token": "anon"}, {"AWS_SECRET_ACCESS_KEY": "test"})
        ['test']
    """
    found: set[str] = set()

    def walk(d: Any, sensitive: bool) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, sensitive or _field_kind(str(k)) is not None)
        elif isinstance(d, (list, tuple)):
            for v in d:
                walk(v, sensitive)
        elif sensitive and isinstance(d, (str, int)) and not isinstance(d, bool):
            text = str(d)
            if text and text not in _NOT_SECRETS:
                found.add(text)

    walk(options or {}, False)
    env = os.environ if environ is None else environ
    for name in SECRET_ENV:
        value = env.get(name)
        if value:
            found.add(value)
    return sorted(found, key=lambda x: (-len(x), x))


@functools.lru_cache(maxsize=64)
def _bare_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    alternation = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    # a whole token: no letter, digit, "_" or "-" on either side ("." only ends a token)
    return re.compile(rf"(?<![\w\-])(?<!\w\.)(?:{alternation})(?![\w\-])(?!\.\w)")


def _mask_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return f"{value[0]}***{value[0]}"
    return "***"


def _redact_text(text: str, secrets: Sequence[str] = (), *, bare_min: int = BACKEND_BARE_MIN) -> str:
    """``text`` with every credential masked where it appears as one.

    Masked: the value of a credential field (``secret=...``, ``'token': '...'``,
    ``"password": "..."``, ``X-Amz-Signature=...``, ``AWS_SECRET_ACCESS_KEY=...``;
    a bare ``key`` field only when its value is one of ``secrets``); the
    password of a URL's userinfo (``s3://user:***@bucket``); a value of
    ``secrets`` of at least ``bare_min`` characters where it stands as a
    whole token (the default suits a backend's error text; the command line
    masks its own output from :data:`BARE_MIN`). Nothing else: a secret
    never masks part of a word.

    Example:
        >>> _redact_text("latest: s3://bkt/run/ckpt-5, secret=test", ["test"])
        'latest: s3://bkt/run/ckpt-5, secret=***'
        >>> _redact_text("GET https://h/o?X-Amz-Signature=abc&x=1 for AKIAEXAMPLE1", ["AKIAEXAMPLE1"])
        'GET https://h/o?X-Amz-Signature=***&x=1 for ***'
        >>> _redact_text("{'key': 'AKID', 'secret': 'x'} ftp://bob:pw@host/p", ["AKID"])
        "{'key': '***', 'secret': '***'} ftp://bob:***@host/p"
    """
    if not text:
        return text

    def userinfo(m: re.Match[str]) -> str:
        info = m.group("info")
        user = info.split(":", 1)[0] + ":***" if ":" in info else "***"
        return f"{m.group('scheme')}{user}@"

    text = _USERINFO_RE.sub(userinfo, text)
    known = set(secrets)
    out: list[str] = []
    pos = at = 0
    while (m := _FIELD_RE.search(text, at)) is not None:
        kind = _field_kind(m.group("name"))
        value = m.group("value")
        if kind == "weak" and m.start() > 0 and text[m.start() - 1] in "?&":
            kind = "strong"  # ?key=... in a URL: an API key
        raw = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
        if kind == "strong" or (kind == "weak" and raw in known):
            out.append(text[pos : m.start("value")])
            out.append(_mask_value(value))
            pos = at = m.end()
        else:
            at = m.end("sep")  # not a credential: its value may hold fields of its own (url=...?sig=...)
    out.append(text[pos:])
    text = "".join(out)
    pattern = _bare_pattern(tuple(sorted(s for s in known if len(s) >= bare_min)))
    return text if pattern is None else pattern.sub("***", text)


# "s3:/bucket/run" (one slash) or "gs:bucket" is a typo of a URL, not a local folder named "s3:"
_SCHEME_TYPO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):(?!//)(?P<rest>.*)$")
_KNOWN_SCHEMES = {
    "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "file", "local", "http", "https", "hf",
    "hdfs", "ftp", "sftp", "ssh", "oss", "r2", "wasb", "wasbs",
}
# object stores whose first path component is a bucket (or container), which ".." cannot leave
_BUCKETED = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "wasb", "wasbs"}


def _split_url(url: str) -> tuple[str | None, str]:
    if "://" in url:
        protocol, rest = url.split("://", 1)
        return protocol.lower(), rest
    typo = _SCHEME_TYPO.match(url)
    if typo and typo.group("scheme").lower() in _KNOWN_SCHEMES:
        scheme, rest = typo.group("scheme"), typo.group("rest").lstrip("/")
        raise ValueError(f"{url!r} looks like a mistyped URL: did you mean '{scheme}://{rest}'?")
    return None, url


def _normalise_key_path(protocol: str, rest: str) -> str:
    """``rest`` of an object-store URL with ``.``, ``..`` and empty components
    resolved, as a local path is; ``..`` may not leave the bucket."""
    query = ""
    if protocol not in ("memory",) and "?" in rest:
        rest, query = rest.split("?", 1)
        query = "?" + query
    absolute = protocol == "memory" and rest.startswith("/")
    parts: list[str] = []
    for part in rest.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts or (protocol in _BUCKETED and len(parts) == 1):
                raise ValueError(
                    f"{protocol}://{rest}: '..' leaves the {'bucket' if protocol in _BUCKETED else 'store'}"
                )
            parts.pop()
            continue
        parts.append(part)
    return ("/" if absolute else "") + "/".join(parts) + query


def open_storage(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    max_concurrency: int | None = None,
    retry: RetryPolicy | None = None,
    fsync: bool = True,
    request_timeout: float | None = None,
) -> Storage:
    """Open the directory at ``url`` (any fsspec URL or a plain path).

    ``storage_options`` go to the backend's filesystem (e.g. ``key``,
    ``secret``, ``endpoint_url`` for S3; ``token``, ``project`` for GCS).
    ``max_concurrency`` bounds the requests in flight (default 16 on object
    stores, 8 on local disk; env ``CLOUDCKPT_MAX_CONCURRENCY``). ``fsync``
    (local disk only) makes every write durable before a commit.
    ``request_timeout`` bounds each request attempt in seconds on network
    backends (async fsspec filesystems: s3, gs, ...); a timed-out attempt is
    retried like any transient failure. Default: the backend's own timeouts.

    Example:
        >>> import tempfile
        >>> s = open_storage(tempfile.mkdtemp())
        >>> s.write("x", b"1"); s.read("x")
        b'1'
    """
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"checkpoint URL must be a str or path, got {type(url).__name__}")
    url = os.fspath(url)
    if not url:
        raise ValueError("checkpoint URL is empty")
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(f"storage_options must be a dict or None, got {type(storage_options).__name__}")
    options = dict(storage_options or {})
    if request_timeout is not None:
        if isinstance(request_timeout, bool) or not isinstance(request_timeout, (int, float)) or not request_timeout > 0:
            raise ValueError(f"request_timeout must be a positive number of seconds or None, got {request_timeout!r}")
        request_timeout = float(request_timeout)
    protocol, rest = _split_url(url)
    env_conc = os.environ.get("CLOUDCKPT_MAX_CONCURRENCY")
    retry = retry or RetryPolicy()
    secrets = _secrets_of(options)
    if protocol in _LOCAL_PROTOCOLS:
        root = os.path.abspath(os.path.expanduser(rest))
        conc = max_concurrency or (int(env_conc) if env_conc else 8)
        backend: Any = LocalBackend(fsync=fsync)
        shared = _Shared(backend, "local", conc, retry, secrets, request_timeout)
        # a path is shown as given (normalised, relative stays relative, as TF's names are);
        # a file:// URL too, its path normalised
        display = f"{url.split('://', 1)[0]}://{os.path.normpath(rest)}" if protocol else os.path.normpath(rest)
        if os.path.exists(root) and not os.path.isdir(root):
            raise NotADirectoryError(f"{display} exists and is not a directory")
        return Storage(shared, root, display)
    assert protocol is not None
    rest = _normalise_key_path(protocol, rest)
    url = f"{protocol}://{rest}"
    from cloudckpt.storage._fsspec import FsspecBackend

    try:
        backend = FsspecBackend(protocol, options)
    except ImportError as exc:
        raise ImportError(
            f"the URL {protocol}://... needs a filesystem package that is not installed "
            f"({exc}); install the fsspec backend for '{protocol}' (e.g. s3fs, gcsfs, adlfs)"
        ) from None
    except ValueError as exc:
        if "protocol" in str(exc).lower() or "known" in str(exc).lower():
            raise ValueError(
                f"unknown URL scheme '{protocol}://' in {protocol}://{rest}: "
                "use a local path or an fsspec URL such as s3://, gs://, memory://"
            ) from None
        raise ValueError(
            f"bad storage_options for {protocol}://: {_redact_text(str(exc), secrets)}"
        ) from None
    except TypeError as exc:
        raise TypeError(
            f"bad storage_options for {protocol}://: {_redact_text(str(exc), secrets)}"
        ) from None
    except Exception as exc:
        # never chain: the backend's own message or traceback may carry a credential
        raise StorageError(
            f"cannot open {protocol}://{rest}: {type(exc).__name__}: {_redact_text(str(exc), secrets)}; "
            "check the credentials and endpoint in storage_options or the environment",
            url=f"{protocol}://{rest}",
            operation="open",
        ) from None
    conc = max_concurrency or (int(env_conc) if env_conc else 16)
    shared = _Shared(backend, protocol, conc, retry, secrets, request_timeout)
    root = backend.fs._strip_protocol(url)
    if protocol == "memory" and not root.startswith("/"):
        root = "/" + root
    return Storage(shared, root, f"{protocol}://{rest}")

