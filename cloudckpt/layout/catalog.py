"""What lies in a directory of checkpoints: committed ones, partial saves, damaged manifests.

A directory holds ``<name>-<N>/`` sub-directories. One is a committed
checkpoint iff its ``manifest.json`` exists and parses. Scanning costs one
delimiter listing of the directory plus, per checkpoint, one listing of its
sub-directory and one read of the *header* of its manifest (its first line,
see :func:`cloudckpt.format.manifest.encode_manifest`) — never a request per data
object, and never the whole of a large manifest. A manifest over the size
limit is not read at all; one damaged manifest affects only its own entry.

How the entries are classified and ordered (fenced, abandoned, latest) is
:mod:`cloudckpt.layout.directory`.

Example:
    >>> import numpy as np, cloudckpt
    >>> from cloudckpt.storage import open_storage
    >>> _ = cloudckpt.save("memory://doc-cat/ckpt-1", {"w": np.ones(1)})
    >>> [(e.name, e.status) for e in scan(open_storage("memory://doc-cat"))]
    [('ckpt-1', 'committed')]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from cloudckpt.errors import CorruptCheckpointError, FormatVersionError, ObjectNotFoundError
from cloudckpt.format.manifest import (
    HEADER_READ_BYTES,
    MANIFEST_KEY,
    check_manifest_size,
    header_of,
    max_manifest_bytes,
    parse_header,
    parse_manifest,
)
from cloudckpt.layout.names import PRESERVED_KEY, is_data_prefix, parse_name
from cloudckpt.storage import Storage

__all__ = ["Entry", "Position", "scan", "read_header"]

log = logging.getLogger("cloudckpt")


#: A checkpoint's place in commit order: ``(managed, epoch, sequence)``.
#: Checkpoints written by a manager are ``(1, epoch, seq)`` (``seq`` is the
#: number for manifests written before sequences existed); those written
#: without one are ``(0, 0, number)``: ordered by number among themselves,
#: before every managed one.
Position = tuple[int, int, int]


@dataclass
class Entry:
    """One ``<name>-<N>`` sub-directory.

    ``status``: ``committed`` (manifest parses), ``partial`` (no manifest:
    a save in progress or crashed), ``corrupt`` (manifest does not parse,
    or is over the size limit), ``newer`` (written by a newer cloudckpt;
    left alone). ``header`` is the manifest's header (every field but the
    tree, arrays and objects) of a committed entry.
    """

    name: str
    checkpoint_name: str
    number: int
    status: str
    header: dict[str, Any] | None = None
    preserved: bool = False
    data_prefixes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def created(self) -> float:
        """Commit time recorded in the manifest (0 if none)."""
        return float(self.header["created"]) if self.header else 0.0

    @property
    def writer(self) -> dict[str, Any]:
        """The manifest's ``writer`` record (empty if none)."""
        return dict(self.header["writer"]) if self.header else {}

    @property
    def epoch(self) -> int:
        """Ownership epoch of the writer (0 when written without a manager)."""
        e = self.writer.get("epoch")
        return int(e) if e is not None else 0

    @property
    def managed(self) -> bool:
        """Whether a manager wrote it (its manifest names an ownership epoch).

        Checkpoints written without a manager (``Checkpoint.write``,
        ``cloudckpt.save``) are restorable but never managed: never fenced,
        listed in a manager's active set, or deleted by retention."""
        return self.header is not None and self.header["writer"].get("epoch") is not None

    @property
    def position(self) -> Position:
        """Its place in commit order (see :data:`Position`)."""
        if not self.managed:
            return (0, 0, self.number)
        seq = self.writer.get("seq")
        return (1, self.epoch, int(seq) if seq is not None else self.number)

    @property
    def attempt(self) -> str | None:
        """The save attempt that committed it."""
        a = self.writer.get("attempt")
        return str(a) if a is not None else None

    @property
    def last_preserved(self) -> float | None:
        """The retention clock its manager recorded (``keep_checkpoint_every_n_hours``)."""
        lp = self.writer.get("last_preserved_timestamp")
        if isinstance(lp, (int, float)) and not isinstance(lp, bool) and math.isfinite(lp):
            return float(lp)
        return None

    @property
    def stored(self) -> tuple[int, int] | None:
        """``(objects, bytes)`` stored, manifest included in the count; None if unknown."""
        s = self.header.get("stored") if self.header else None
        return (int(s["objects"]), int(s["bytes"])) if isinstance(s, dict) else None

    @property
    def orphans(self) -> list[str]:
        """Data prefixes not referenced by the manifest (crashed or superseded attempts)."""
        used = self.header["data"] if self.header else None
        return [p for p in self.data_prefixes if p != used]


def read_header(storage: Storage, size: int | None = None) -> dict[str, Any]:
    """The validated header of the manifest of the checkpoint at ``storage``.

    Reads the first line of the manifest (at most 64 KiB); a manifest written
    before headers existed, or whose metadata is larger, is read whole
    (bounded by the size limit). ``size``, the manifest's size when a listing
    told it, lets an oversized manifest be refused without a read.

    Raises :class:`~cloudckpt.errors.ObjectNotFoundError` if there is no
    manifest, :class:`~cloudckpt.CorruptCheckpointError` if it is damaged.

    Example:
        >>> import numpy as np, cloudckpt
        >>> from cloudckpt.storage import open_storage
        >>> _ = cloudckpt.save("memory://doc-head/c", {"w": np.ones(1)}, metadata={"loss": 0.5})
        >>> read_header(open_storage("memory://doc-head/c"))["metadata"]
        {'loss': 0.5}
    """
    url = storage.url_for(MANIFEST_KEY)
    if size is not None:
        check_manifest_size(size, url)
    limit = max_manifest_bytes()
    first = storage.read(MANIFEST_KEY, max_bytes=min(HEADER_READ_BYTES, limit + 1))
    head = parse_header(first, url)
    if head is not None:
        return head
    data = first if len(first) < HEADER_READ_BYTES else storage.read(MANIFEST_KEY, max_bytes=limit + 1)
    return header_of(parse_manifest(data, url))


def _entry(storage: Storage, dirname: str, cname: str, number: int) -> Entry:
    sub = storage.child(dirname)
    files, dirs = sub.list_dir()
    entry = Entry(dirname, cname, number, "partial")
    entry.data_prefixes = sorted(d for d in dirs if is_data_prefix(d))
    entry.preserved = PRESERVED_KEY in files
    if MANIFEST_KEY in files:
        try:
            entry.header = read_header(sub, files[MANIFEST_KEY])
            entry.status = "committed"
        except ObjectNotFoundError:
            entry.status = "partial"  # deleted between list and read
        except FormatVersionError as exc:
            entry.status = "newer"
            entry.error = str(exc)
        except CorruptCheckpointError as exc:
            entry.status = "corrupt"
            entry.error = str(exc)
    return entry


def scan(storage: Storage, checkpoint_name: str | None = None) -> list[Entry]:
    """Every ``<name>-<N>`` sub-directory of ``storage``, sorted by (name, number).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> scan(open_storage("memory://doc-cat-empty"))
        []
    """
    _files, dirs = storage.list_dir()
    named = []
    for d in dirs:
        parsed = parse_name(d, checkpoint_name)
        if parsed is not None:
            named.append((d, *parsed))
    entries = storage.map(lambda x: _entry(storage, *x), named)
    return sorted(entries, key=lambda e: (e.checkpoint_name, e.number))
