"""What a killed writer leaves, for the :class:`~cloudckpt.storage.Storage` facade.

A process killed mid-save leaves incomplete multipart uploads on S3 (billed
until aborted, invisible to a plain listing) and temp files of
write-then-rename on local disk. :class:`Leftovers` holds the verbs that
find and remove them; ``Storage`` inherits them, and each backend does the
work where its capabilities say it has such leftovers.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage("memory://doc-leftovers")
    >>> s.list_incomplete_uploads(), s.temporaries()
    ([], [])
"""

from __future__ import annotations

from collections.abc import Iterable

from cloudckpt.storage.facade_parts import FacadeParts
from cloudckpt.storage.protocol import TEMP_MIN_AGE, IncompleteUpload
from cloudckpt.storage.urls import validate_key

__all__ = ["Leftovers"]


class Leftovers(FacadeParts):
    """The verbs of :class:`~cloudckpt.storage.Storage` for what killed writes leave
    (the facade supplies the members of :class:`~cloudckpt.storage.facade_parts.FacadeParts`).

    Example:
        >>> from cloudckpt.storage import Storage
        >>> issubclass(Storage, Leftovers)
        True
    """

    def list_incomplete_uploads(self, prefix: str = "") -> list[IncompleteUpload]:
        """Uploads under ``prefix`` that were started and never completed (S3
        multipart uploads of a killed writer). ``[]`` on backends without the
        concept (local disk, memory, GCS through gcsfs, ...).

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-uploads").list_incomplete_uploads()
            []
        """
        path = self._dir_path(prefix)
        backend = self._s.backend
        if not backend.capabilities.lists_uploads:
            return []
        found = self._request("list_uploads", prefix, lambda: backend.list_uploads(path))
        base = self._root.rstrip("/") + "/"
        out = [IncompleteUpload(full[len(base) :], uid, at) for full, uid, at in found if full.startswith(base)]
        return sorted(out, key=lambda u: (u.key, u.upload_id))

    def abort_uploads(self, uploads: Iterable[IncompleteUpload]) -> int:
        """Abort incomplete uploads (as listed by :meth:`list_incomplete_uploads`);
        ones already gone are ignored. Returns how many were asked to abort.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-abort").abort_uploads([])
            0
        """
        uploads = list(uploads)
        for u in uploads:
            validate_key(u.key)
        backend = self._s.backend
        if not backend.capabilities.lists_uploads or not uploads:
            return 0

        def one(u: IncompleteUpload) -> None:
            path = self._path(u.key)
            self._request("abort_upload", u.key, lambda: backend.abort_upload(path, u.upload_id))

        self.map(one, uploads)
        return len(uploads)

    def temporaries(self, prefix: str = "") -> list[tuple[str, int, float]]:
        """The temp files of killed or running writes in the directory ``prefix``
        (local disk; object stores have none): ``(key, size, age in seconds)``.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-temps-list").temporaries()
            []
        """
        path = self._dir_path(prefix)
        backend = self._s.backend
        if not backend.capabilities.temporaries:
            return []
        found = self._request("list", prefix, lambda: backend.list_temps(path))
        return [(f"{prefix}/{n}" if prefix else n, size, age) for n, size, age in found]

    def collect_temporaries(self, prefix: str = "", min_age: float = TEMP_MIN_AGE) -> list[str]:
        """Remove what a killed write left in the directory ``prefix`` (local disk:
        the temp file of a write-then-rename; object stores: nothing). Returns
        the URLs removed. Only temp files last modified ``min_age`` seconds ago
        or earlier go: a younger one may be the write of a live process (a
        manager that has not yet learnt it lost the directory), which must
        not fail because its temp file vanished before its rename.

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> open_storage("memory://doc-temps").collect_temporaries()
            []
        """
        path = self._dir_path(prefix)
        backend = self._s.backend
        if not backend.capabilities.temporaries:
            return []
        removed: list[str] = self._request("delete", prefix, lambda: backend.clean_temps(path, min_age))
        base = self._path("")
        return [self.url_for(p[len(base) + 1 :]) if p.startswith(base + "/") else p for p in removed]
