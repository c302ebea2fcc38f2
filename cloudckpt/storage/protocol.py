"""The contract between :class:`~cloudckpt.storage.Storage` and a backend.

A backend moves bytes to and from one kind of store. It offers a few verbs
over the store's own paths (``bucket/key`` on an object store, an absolute
path on local disk), declares what it can do as data (:class:`Capabilities`)
and signals failures with the built-in exceptions fsspec uses
(``FileNotFoundError``, ``FileExistsError`` for a create-only conflict,
``PermissionError``, ``OSError``, ``TimeoutError``...). The
:class:`~cloudckpt.storage.Storage` facade above turns those into the typed
errors of :mod:`cloudckpt.errors`, which name the URL, never a credential.

A new backend is one module in :mod:`cloudckpt.storage.backends` that
implements :class:`Backend` (usually by specialising
:class:`~cloudckpt.storage.backends.fsspec.FsspecBackend`, or
:class:`~cloudckpt.storage.backends.base.BackendBase`) plus one line in
:data:`cloudckpt.storage.opener.BACKENDS`.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> caps = open_storage("memory://doc-protocol").capabilities
    >>> caps.create_only, caps.write_copies, caps.maps_objects, caps.server_copy
    (True, True, False, True)
"""

from __future__ import annotations

import contextlib
import enum
import mmap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Buffer", "byte_view", "joined", "scatter_runs", "WriteMode", "Capabilities", "Backend", "IncompleteUpload", "TEMP_MIN_AGE"]

Buffer = bytes | bytearray | memoryview

#: Seconds after which a local temp file (``<name>.tmp-<hex>``) is taken to be
#: the leftover of a killed write rather than a write in flight; a
#: write-temp-then-rename of a small file takes milliseconds.
TEMP_MIN_AGE = 60.0


def byte_view(buf: Any) -> memoryview:
    """``buf`` (any buffer) as a flat memoryview of bytes.

    Example:
        >>> import array; byte_view(array.array("i", [1, 2])).nbytes
        8
    """
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def scatter_runs(pieces: Sequence[tuple[Any, int]], where: str, *, whole: bool = False) -> list[tuple[int, list[memoryview]]]:
    """The ``(offset, views)`` runs of buffers ``(out, offset)`` that lie back to
    back in an object, in order of offset: each run is one :meth:`Backend.get_into`.
    Empty buffers are left out unless ``whole``; ``where`` names the read in errors.

    Example:
        >>> a, b, c = bytearray(2), bytearray(3), bytearray(1)
        >>> [(at, [v.nbytes for v in vs]) for at, vs in scatter_runs([(b, 2), (a, 0), (c, 9)], "read k")]
        [(0, [2, 3]), (9, [1])]
    """
    runs: list[tuple[int, list[memoryview]]] = []
    end = -1
    for out, offset in sorted(((byte_view(o), int(off)) for o, off in pieces), key=lambda p: p[1]):
        if offset < 0:
            raise ValueError(f"{where}: negative offset {offset}")
        if out.nbytes == 0 and not whole:
            continue
        if runs and offset == end:
            runs[-1][1].append(out)
        else:
            runs.append((offset, [out]))
        end = offset + out.nbytes
    return runs


def joined(buffers: Sequence[Buffer]) -> bytes:
    """``buffers`` as one ``bytes`` (the one ``bytes`` itself, not copied), for a backend that sends one body.

    Example:
        >>> joined([b"ab", memoryview(b"c")]), joined([b"x"])
        (b'abc', b'x')
    """
    if len(buffers) == 1 and isinstance(buffers[0], bytes):
        return buffers[0]
    return b"".join(buffers)


class WriteMode(enum.Enum):
    """How a write treats an object that exists: ``OVERWRITE`` replaces it,
    ``CREATE_ONLY`` fails with ``FileExistsError`` (the backend) or
    :class:`~cloudckpt.errors.ObjectExistsError` (the facade) and leaves it.

    Example:
        >>> WriteMode("create_only") is WriteMode.CREATE_ONLY
        True
    """

    OVERWRITE = "overwrite"
    CREATE_ONLY = "create_only"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared by the backend as data; callers read
    ``storage.capabilities`` instead of probing the backend.

    Fields:
        create_only: a ``CREATE_ONLY`` write is atomic: of two writers exactly one creates the object.
        ranged_reads: a read of ``[start, end)`` moves only those bytes.
        scattered_reads: :meth:`Backend.get_into` fills many buffers with no temporary copy of the range.
        write_copies: a write holds a copy of its data while in flight (callers bound such bytes).
        gathers_writes: a write of many small buffers is as cheap as one of their join (``writev``).
        maps_objects: objects can be memory-mapped copy-on-write (:meth:`map_private`).
        places_mappings: objects can be mapped back to back into one reserved region.
        lists_uploads: incomplete multipart uploads can be listed and aborted.
        call_timeout: a request can be given a timeout of its own (:meth:`Backend.call_timeout`).
        temporaries: writes go through temp files a killed process may leave (local disk).
        remote: requests cross a network: each is bounded by its connection's speed, so large
            transfers are split over several connections, and a read back is costly.
        concurrent_requests: requests may run from several threads at once (a synchronous
            client such as one FTP or SFTP connection may not: its requests are made one at a time).
        server_copy: an object can be copied within the store without its bytes passing through
            this process (S3 CopyObject, GCS rewrite, a hard link on local disk): :meth:`Backend.copy`.

    Example:
        >>> Capabilities(create_only=True).ranged_reads, Capabilities().server_copy
        (True, False)
    """

    create_only: bool = False
    ranged_reads: bool = True
    scattered_reads: bool = False
    write_copies: bool = True
    gathers_writes: bool = False
    maps_objects: bool = False
    places_mappings: bool = False
    lists_uploads: bool = False
    call_timeout: bool = False
    temporaries: bool = False
    remote: bool = True
    concurrent_requests: bool = True
    server_copy: bool = False


@dataclass(frozen=True)
class IncompleteUpload:
    """An upload that was started and never completed nor aborted.

    On S3 a multipart upload of a killed writer stays until it is aborted:
    its parts are billed, and a plain listing never shows it. ``key`` is
    relative to the :class:`~cloudckpt.storage.Storage` that listed it;
    ``initiated`` is in seconds since the epoch (None if the backend does not say).

    Example:
        >>> IncompleteUpload("ckpt-1/data-x/c/0", "id-1", 0.0).key
        'ckpt-1/data-x/c/0'
    """

    key: str
    upload_id: str
    initiated: float | None = None


@runtime_checkable
class Backend(Protocol):
    """The verbs of a backend, over the store's own paths.

    ``name`` is the short name used in messages (``"s3"``, ``"local"``);
    ``capabilities`` says which optional behaviour it has. Verbs a backend
    lacks by its capabilities (mappings, uploads, temporaries, copies) are still
    callable: they do nothing, return nothing or raise ``NotImplementedError``.

    Example:
        >>> from cloudckpt.storage.backends.local import LocalBackend
        >>> isinstance(LocalBackend(), Backend)
        True
    """

    name: str
    capabilities: Capabilities

    # -- reads
    def get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object, or its bytes ``[start, end)`` (fewer if it is shorter)."""
        ...

    def get_into(self, path: str, views: Sequence[memoryview], start: int = 0) -> int:
        """Fill ``views`` back to back from offset ``start``; the bytes read
        (fewer than the views hold if the object is shorter)."""
        ...

    def size(self, path: str) -> int:
        """The object's size (one HEAD); ``IsADirectoryError`` for a "directory"."""
        ...

    def exists(self, path: str) -> bool:
        """Whether an object (not a "directory") is at ``path``."""
        ...

    def stat(self, path: str) -> tuple[int, float | None]:
        """The object's size and, where the store says so in the same request,
        when it was last written (seconds since the epoch; None elsewhere)."""
        ...

    # -- writes
    def put(self, path: str, buffers: Sequence[Buffer], mode: WriteMode = WriteMode.OVERWRITE, *,
            atomic: bool = False) -> int:
        """Write ``buffers`` back to back as one object; the bytes written.
        ``CREATE_ONLY`` raises ``FileExistsError`` if the object exists;
        ``atomic``: a reader sees the old or the new object whole."""
        ...

    def copy(self, src: str, dst: str) -> int | None:
        """Copy the object at ``src`` to ``dst`` (overwriting ``dst``) within the
        store, its bytes never passing through this process
        (``capabilities.server_copy``); the CRC-32C (unsigned) the store reports
        for the new object, or None where it reports none. ``FileNotFoundError``
        if ``src`` is missing; ``NotImplementedError`` where the store cannot
        copy it (no ``server_copy``, or an object over the store's copy limit):
        the caller writes the bytes instead."""
        ...

    def same_store(self, other: Backend) -> bool:
        """Whether ``other`` serves the same store, so that :meth:`copy` of this
        backend can take a path of ``other`` as its source."""
        ...

    def barrier(self) -> None:
        """Make every write so far durable (local disk: fsync the directories;
        the directories of copied objects too)."""
        ...

    # -- listings and deletes
    def list_dir(self, path: str) -> tuple[dict[str, int], list[str]]:
        """One level (a delimiter listing): ``({name: size}, [sub-directory names])``."""
        ...

    def find(self, path: str) -> dict[str, int]:
        """Every object below ``path``: ``{relative key: size}``."""
        ...

    def delete(self, paths: Iterable[str]) -> None:
        """Delete objects; missing ones are ignored."""
        ...

    def delete_prefix(self, path: str) -> None:
        """Delete everything below ``path``."""
        ...

    # -- what a killed writer leaves (capabilities.lists_uploads, .temporaries)
    def list_uploads(self, path: str) -> list[tuple[str, str, float | None]]:
        """``[(path, upload id, initiated)]`` of incomplete uploads below ``path``."""
        ...

    def abort_upload(self, path: str, upload_id: str) -> None:
        """Abort one incomplete upload; one already gone is not an error."""
        ...

    def list_temps(self, path: str) -> list[tuple[str, int, float]]:
        """Temp files of write-then-rename in the directory: ``(name, size, age in seconds)``."""
        ...

    def clean_temps(self, path: str, min_age: float) -> list[str]:
        """Remove the temp files at least ``min_age`` seconds old; their paths."""
        ...

    # -- memory mappings (capabilities.maps_objects, .places_mappings)
    def map_private(self, path: str, size: int) -> tuple[memoryview, int]:
        """A copy-on-write mapping of the first ``size`` bytes, and the object's size."""
        ...

    def reserve_mapping(self, size: int) -> mmap.mmap:
        """An anonymous private region of ``size`` bytes for :meth:`map_private_at`."""
        ...

    def map_private_at(self, region: mmap.mmap, offset: int, path: str, size: int) -> int:
        """Map the object over ``region`` from ``offset``; the object's size
        (nothing is mapped unless it is ``size``)."""
        ...

    # -- paths, requests and messages
    @classmethod
    def url_path(cls, protocol: str, rest: str) -> str:
        """``rest`` of a URL it would serve (after ``protocol://``), normalised
        by this store's rules (buckets, absolute paths, query strings)."""
        ...

    @classmethod
    def url_options(cls, protocol: str, url: str) -> dict[str, Any]:
        """Options a URL itself carries (``ftp://user@host:21/...``: host, port,
        user); ``storage_options`` given by the caller take precedence."""
        ...

    def path_of(self, url: str) -> str:
        """The backend's path of a URL it serves (``s3://b/k`` -> ``b/k``)."""
        ...

    def call_timeout(self, seconds: float) -> contextlib.AbstractContextManager[None]:
        """Requests of this thread within the block time out after ``seconds``
        (where ``capabilities.call_timeout``; elsewhere a no-op)."""
        ...

    def accepted_options(self) -> frozenset[str] | None:
        """The storage option names the backend takes where it would silently
        ignore others; None where it rejects unknown ones itself."""
        ...

    def filesystem_name(self) -> str:
        """The name of the filesystem class behind the backend, for messages."""
        ...

    def missing_bucket(self, path: str) -> str | None:
        """The bucket of ``path`` if it does not exist (one request); else None."""
        ...
