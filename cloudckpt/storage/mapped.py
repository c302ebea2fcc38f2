"""Reading objects as memory mappings, for the :class:`~cloudckpt.storage.Storage` facade.

Where a backend declares ``capabilities.maps_objects`` (local disk), a load
can map a data object instead of reading it: no copy, and the page cache is
used as it is. :class:`MappedReads` holds those verbs; ``Storage`` inherits
them, and :mod:`cloudckpt.storage.mapping` does the system calls.

Example:
    >>> import tempfile
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage(tempfile.mkdtemp()); s.write("k", b"abc")
    >>> bytes(s.map_object("k", 3)) if s.capabilities.maps_objects else b"abc"
    b'abc'
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

from cloudckpt.errors import OversizedObjectError, StorageError, TruncatedObjectError
from cloudckpt.storage.facade_parts import FacadeParts
from cloudckpt.storage.mapping import check_size
from cloudckpt.storage.urls import validate_key

__all__ = ["MappedReads"]


class MappedReads(FacadeParts):
    """The memory-mapping verbs of :class:`~cloudckpt.storage.Storage` (which supplies the
    members of :class:`~cloudckpt.storage.facade_parts.FacadeParts`).

    Example:
        >>> from cloudckpt.storage import Storage
        >>> issubclass(Storage, MappedReads)
        True
    """

    def maps_together(self, sizes: Sequence[int]) -> bool:
        """Whether :meth:`map_objects` can map objects of these sizes back to
        back: a storage that places mappings (Linux local disk here), and
        every size but the last a multiple of the page size.

        Example:
            >>> import mmap, sys, tempfile
            >>> from cloudckpt.storage import open_storage
            >>> s = open_storage(tempfile.mkdtemp())
            >>> s.maps_together([mmap.PAGESIZE, 10]) == sys.platform.startswith("linux"), s.maps_together([10, 10])
            (True, False)
        """
        places = self._s.backend.capabilities.places_mappings
        return bool(sizes) and places and not any(n % mmap.PAGESIZE for n in sizes[:-1])

    def map_object(self, key: str, size: int) -> memoryview:
        """The object ``key`` of ``size`` bytes as a private, copy-on-write
        memory mapping: no copy and no zero-filled page, the page cache is
        mapped. Writes to the view stay in this process; the object is
        never changed. Unlinking the file later is safe; truncating it in
        place while the view lives is not (SIGBUS), which cloudckpt never does
        to a data object. Only where ``capabilities.maps_objects``.

        Raises :class:`TruncatedObjectError` if the object is shorter than
        ``size``, :class:`OversizedObjectError` if it is longer.

        Example:
            >>> import tempfile
            >>> from cloudckpt.storage import open_storage
            >>> s = open_storage(tempfile.mkdtemp()); s.write("k", b"abcdef")
            >>> v = s.map_object("k", 6); bytes(v), v.readonly
            (b'abcdef', False)
        """
        validate_key(key)
        backend = self._s.backend
        if not backend.capabilities.maps_objects:
            raise NotImplementedError(f"{backend.name} storage cannot map objects: read them")
        path = self._path(key)
        view, have = self._request("read", key, lambda: backend.map_private(path, size))
        self._s.stats.add_bytes_read(min(view.nbytes, size))
        if have > size:
            view.release()
        check_size(self.url_for(key), have if have > size else view.nbytes, size)
        return view

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
            >>> from cloudckpt.storage import open_storage
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
                path = self._path(key)
                have: int = self._request(
                    "read", key, lambda at=offset, path=path, size=size: backend.map_private_at(region, at, path, size)  # type: ignore[misc]
                )
                check_size(self.url_for(key), have, size)
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
