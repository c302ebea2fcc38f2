"""The :class:`Storage` facade: a directory on a backend, addressed by relative keys.

Each verb validates its key, makes one request through :meth:`Storage._request`
— which checks the time limit, calls the hooks (:mod:`cloudckpt.storage.hooks`),
counts the request (:mod:`cloudckpt.storage.stats`), gives the backend its
per-call timeout and retries transient failures (:mod:`cloudckpt.storage.retry`)
— and turns a backend's exception into a typed :mod:`cloudckpt.errors` error
that names the URL and never a credential (:mod:`cloudckpt.storage.redact`).

Example:
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage("memory://doc-facade")
    >>> s.write("a/b.bin", b"hello"); s.read("a/b.bin")
    b'hello'
    >>> s.write_if_absent("a/b.bin", b"other"), s.list_dir("a")
    (False, ({'b.bin': 5}, []))
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from cloudckpt.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    OversizedObjectError,
    StorageError,
    TruncatedObjectError,
    WeakCommitWarning,
)
from cloudckpt.storage.concurrency import bounded_map
from cloudckpt.storage.hooks import Hook
from cloudckpt.storage.leftovers import Leftovers
from cloudckpt.storage.mapped import MappedReads
from cloudckpt.storage.protocol import Buffer, Capabilities, WriteMode, scatter_runs
from cloudckpt.storage.session import Session
from cloudckpt.storage.stats import RequestStats
from cloudckpt.storage.urls import join_url, parent_of, validate_key

__all__ = ["Storage"]

log = logging.getLogger("cloudckpt")
T = TypeVar("T")
R = TypeVar("R")


class Storage(MappedReads, Leftovers):
    """A directory on a backend, addressed by relative keys.

    Create one with :func:`~cloudckpt.storage.open_storage`. ``url`` is the
    directory's URL as the user gave it (credentials never appear in it: they
    live in storage_options). See the module docstring for an example.
    """

    def __init__(self, shared: Session, root: str, url: str) -> None:
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
    def capabilities(self) -> Capabilities:
        """What the backend can do (see :class:`~cloudckpt.storage.protocol.Capabilities`).

        Example:
            >>> import tempfile
            >>> from cloudckpt.storage import open_storage
            >>> open_storage(tempfile.mkdtemp()).capabilities.gathers_writes
            True
        """
        return self._s.backend.capabilities

    @property
    def backend_name(self) -> str:
        """The name of the filesystem behind this storage, for messages.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-backend-name").backend_name
            'MemoryFileSystem'
        """
        return self._s.backend.filesystem_name()

    def accepted_options(self) -> frozenset[str] | None:
        """The storage option names the backend takes, where it would silently
        ignore an unknown one (local disk, memory://, gs://); None where the
        backend rejects unknown options itself (s3:// at its first request).

        Example:
            >>> import tempfile
            >>> from cloudckpt.storage import open_storage
            >>> "auto_mkdir" in open_storage(tempfile.mkdtemp()).accepted_options()
            True
        """
        return self._s.backend.accepted_options()

    def missing_bucket(self) -> str | None:
        """The bucket of this storage's URL if it does not exist (one request,
        not retried nor counted); None when it exists, where there are no
        buckets (local disk, memory://) or when the store does not say
        (permission denied, unreachable).

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-bucket/run").missing_bucket() is None
            True
        """
        try:
            return self._s.backend.missing_bucket(self._root)
        except Exception as exc:  # the store does not say: the caller's own message stands
            log.debug("bucket probe of %s: %s", self.url, type(exc).__name__)
            return None

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

    def time_limit(self, seconds: float | None) -> contextlib.AbstractContextManager[None]:
        """Bound every request made within the block (by any thread, through this
        storage or its children) to end ``seconds`` from now: each attempt's
        timeout is cut to the time left, and once it is up no request or retry
        starts (:class:`StorageError`). Network backends cancel a request at
        its timeout; local disk only stops starting new requests.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> s = open_storage("memory://doc-limit")
            >>> with s.time_limit(0):
            ...     s.write("k", b"x")
            Traceback (most recent call last):
            ...
            cloudckpt.errors.StorageError: write memory://doc-limit/k: not started, the time limit of this operation has passed
        """
        return self._s.time_limit(seconds)

    def child(self, prefix: str) -> Storage:
        """The storage of a sub-directory, sharing backend, pool and counters.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-child").child("ckpt-1").url
            'memory://doc-child/ckpt-1'
        """
        validate_key(prefix)
        return Storage(self._s, self._path(prefix), join_url(self.url, prefix))

    def parent(self) -> Storage | None:
        """The storage of the directory holding this one, sharing backend, pool
        and counters; None at the top (a bucket, or the filesystem root).

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-parent/run/ckpt-1").parent().url
            'memory://doc-parent/run'
            >>> open_storage("memory://doc-parent").parent() is None
            True
        """
        up = parent_of(self._root, self.url, local=self.is_local)
        return None if up is None else Storage(self._s, *up)

    def url_for(self, key: str) -> str:
        """The full URL of ``key``.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-url").url_for("a/b")
            'memory://doc-url/a/b'
        """
        return join_url(self.url, key)

    def add_hook(self, hook: Hook) -> Callable[[], None]:
        """Call ``hook(operation, url)`` before every request attempt of this
        storage and those derived from it (fault injection, tracing), after the
        global hooks (:func:`~cloudckpt.storage.add_global_hook`). Returns a
        function that removes the hook.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> s = open_storage("memory://doc-hook"); seen = []
            >>> remove = s.add_hook(lambda op, url: seen.append(op))
            >>> s.write("k", b"x"); remove(); seen
            ['write']
        """
        return self._s.hooks.add(hook)

    # -- one request ----------------------------------------------------
    def _path(self, key: str) -> str:
        if self._root == "/":
            return "/" + key
        return f"{self._root}/{key}" if key else self._root

    def _request(self, op: str, key: str, fn: Callable[[], T], nbytes: int = 0) -> T:
        return self._s.request(op, self.url_for(key) if key else self.url, fn, nbytes)

    def _dir_path(self, prefix: str) -> str:
        if prefix:
            validate_key(prefix)
        return self._path(prefix) if prefix else self._root

    # -- reads ----------------------------------------------------------
    def read(self, key: str, start: int | None = None, end: int | None = None, *, max_bytes: int | None = None) -> bytes:
        """Read a whole object, or the byte range ``[start, end)`` of it.

        ``max_bytes``: read a whole object, but at most this many bytes of it
        (a reader that refuses objects over a size limit asks for one byte
        more than the limit: memory stays bounded whatever the object holds).

        Example:
            >>> from cloudckpt.storage import open_storage
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
            >>> from cloudckpt.storage import open_storage
            >>> s = open_storage("memory://doc-into"); s.write("k", b"abcdef")
            >>> buf = bytearray(3); s.read_into("k", memoryview(buf), 2); bytes(buf)
            b'cde'
        """
        self.read_into_many(key, [(out, start)], size=size, whole=size is None)

    def read_into_many(
        self, key: str, pieces: Sequence[tuple[memoryview, int]], *, size: int | None = None, whole: bool = False
    ) -> None:
        """Scatter-read: fill each ``out`` of ``pieces`` (``(out, offset)``) with
        ``out.nbytes`` bytes of ``key`` from ``offset``, straight into ``out``.

        Pieces that lie back to back in the object are read by one request (on
        local disk one ``preadv`` into all of them); pieces with gaps between
        them cost one request per run. Raises :class:`TruncatedObjectError`
        if the object is shorter than a piece needs. ``size``: the object's
        recorded size; the run that ends there asks for one byte more, and
        an object longer than ``size`` raises :class:`OversizedObjectError`.
        ``whole``: a request even for an empty piece (:meth:`read_into` without ``size``).

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> s = open_storage("memory://doc-into-many"); s.write("k", b"abcdefgh")
            >>> a, b = bytearray(2), bytearray(3)
            >>> s.read_into_many("k", [(memoryview(a), 1), (memoryview(b), 3)]); bytes(a), bytes(b)
            (b'bc', b'def')
        """
        validate_key(key)
        path = self._path(key)
        backend = self._s.backend
        for start, views in scatter_runs(pieces, f"read_into_many {self.url_for(key)}", whole=whole):
            want = sum(v.nbytes for v in views)
            probe = size is not None and size > 0 and start + want == size
            asked = [*views, memoryview(bytearray(1))] if probe else views
            n: int = self._request("read", key, lambda start=start, asked=asked: backend.get_into(path, asked, start))  # type: ignore[misc]
            self._s.stats.add_bytes_read(min(n, want))
            url = self.url_for(key)
            if n > want:
                raise OversizedObjectError(
                    f"read {url}: the object is longer than its recorded size of {size} bytes", url=url, operation="read"
                )
            if n < want:
                raise TruncatedObjectError(
                    f"read {url}: object is truncated: wanted {want} bytes from offset {start}, got {n}",
                    url=url,
                    operation="read",
                )

    def size(self, key: str) -> int:
        """Size in bytes of an object; :class:`ObjectNotFoundError` if missing."""
        validate_key(key)
        path = self._path(key)
        n: int = self._request("head", key, lambda: self._s.backend.size(path))
        return n

    def stat(self, key: str) -> tuple[int, float | None]:
        """Size in bytes of an object and, where the store says so in the same
        request (local disk), the time it was last written, in seconds since
        the epoch (None elsewhere); :class:`ObjectNotFoundError` if missing.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> s = open_storage("memory://doc-stat"); s.write("k", b"abc"); s.stat("k")
            (3, None)
        """
        validate_key(key)
        path = self._path(key)
        out: tuple[int, float | None] = self._request("head", key, lambda: self._s.backend.stat(path))
        return out

    def exists(self, key: str) -> bool:
        """Whether the object ``key`` exists.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-exists").exists("nope")
            False
        """
        validate_key(key)
        path = self._path(key)
        ok: bool = self._request("head", key, lambda: self._s.backend.exists(path))
        return ok

    # -- writes ---------------------------------------------------------
    def write(
        self, key: str, data: Buffer | Sequence[Buffer], *, atomic: bool = False, mode: WriteMode = WriteMode.OVERWRITE
    ) -> None:
        """Write an object (overwriting). ``data`` may be a list of buffers.

        ``atomic=True`` makes a reader see the old or the new object whole
        (object stores always do; local disk writes a temp file and renames).
        ``mode=WriteMode.CREATE_ONLY`` raises :class:`ObjectExistsError` if the
        object exists (see also :meth:`write_if_absent`).

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> s = open_storage("memory://doc-write"); s.write("k", [b"ab", b"c"], mode=WriteMode.CREATE_ONLY)
            >>> s.write("k", b"x", mode=WriteMode.CREATE_ONLY)
            Traceback (most recent call last):
            ...
            cloudckpt.errors.ObjectExistsError: write_create memory://doc-write/k: the object exists
        """
        validate_key(key)
        path = self._path(key)
        buffers: Sequence[Buffer] = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        nbytes = sum(memoryview(b).nbytes for b in buffers)
        backend = self._s.backend
        op = "write_create" if mode is WriteMode.CREATE_ONLY else "write"
        if mode is WriteMode.CREATE_ONLY:
            self.check_commit(key)
        try:
            self._request(op, key, lambda: backend.put(path, buffers, mode, atomic=atomic), nbytes)
        except FileExistsError:
            url = self.url_for(key)
            raise ObjectExistsError(f"{op} {url}: the object exists", url=url, operation=op) from None

    def check_commit(self, key: str) -> None:
        """Where this store's create-only writes are not atomic
        (``capabilities.create_only`` is False), say so once per opened store
        with a :class:`~cloudckpt.errors.WeakCommitWarning`; where that
        warning is made an error, it is raised here, before anything is written.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-check-commit").check_commit("manifest.json")  # atomic: silent
        """
        if self._s.backend.capabilities.create_only or self._s.warned_weak_commit:
            return
        name = self._s.backend.filesystem_name()
        warnings.warn(
            f"{self.url_for(key)}: {name} offers no create-only write that fails when the object exists, "
            "so cloudckpt commits here by checking that the object is absent and then writing it. A committed "
            "checkpoint is never overwritten by a later save, but two processes saving to this directory at "
            "the same moment are not fenced from each other (the atomic commit guarantee is lost): keep one "
            "writer per directory, or use a store with create-only writes (local disk, s3://, gs://, az://). "
            'To refuse such stores: warnings.filterwarnings("error", category=cloudckpt.WeakCommitWarning).',
            WeakCommitWarning,
            stacklevel=2,
        )
        self._s.warned_weak_commit = True

    def write_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` only if it does not exist (create-only).

        Returns True if this call created it. If the object already exists,
        returns True only if it holds exactly ``data`` (a retried request whose
        first attempt succeeded), else False. Callers make ``data`` unique to
        the writer (an attempt id) so that equality means "ours".
        """
        try:
            self.write(key, [data], mode=WriteMode.CREATE_ONLY)
            return True
        except ObjectExistsError:
            pass
        try:
            existing = self.read(key)
        except ObjectNotFoundError:
            return False
        return existing == data

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

    # -- copies within the store ------------------------------------------
    def can_copy_from(self, source: Storage) -> bool:
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
        if not self.capabilities.server_copy:
            return False
        return source._s is self._s or self._s.backend.same_store(source._s.backend)

    def copy_from(self, source: Storage, src_key: str, dst_key: str, *, size: int | None = None) -> int | None:
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
            >>> old.write("c/0", b"chunk"); _ = new.copy_from(old, "c/0", "c/0", size=5)
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
                f"copy {src_url} to {dst_url}: {self.backend_name} cannot copy between these storages within the "
                "store (not the same store, or no server-side copy): read the object and write its bytes"
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

    # -- listings and deletes ---------------------------------------------
    def list_dir(self, prefix: str = "") -> tuple[dict[str, int], list[str]]:
        """One level of listing: ``({file name: size}, [sub-directory names])``.

        Costs one request per page of results on object stores (a delimiter
        listing), whatever lies below the sub-directories.
        """
        path = self._dir_path(prefix)
        result: tuple[dict[str, int], list[str]] = self._request("list", prefix, lambda: self._s.backend.list_dir(path))
        return result

    def list_all(self, prefix: str = "") -> dict[str, int]:
        """Every object below ``prefix``, recursively: ``{key relative to prefix: size}``."""
        path = self._dir_path(prefix)
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

    # -- concurrency ----------------------------------------------------
    def map(self, fn: Callable[[T], R], items: Iterable[T], *, limit: int | None = None) -> list[R]:
        """``[fn(x) for x in items]`` with at most ``limit`` (default
        ``max_concurrency``) calls in flight, results in order. The first
        exception stops new calls, waits for those in flight and is raised.
        Items are taken lazily, so memory for in-flight work stays bounded.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-map").map(lambda x: x * 2, range(5))
            [0, 2, 4, 6, 8]
        """
        conc = self._s.max_concurrency
        return bounded_map(fn, items, limit=min(limit or conc, conc), pool_size=conc)

