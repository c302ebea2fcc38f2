"""What lies in a directory of checkpoints: committed ones, partial saves, orphaned data.

A directory holds ``<name>-<N>/`` sub-directories. One is a committed
checkpoint iff its ``manifest.json`` exists and parses. Scanning costs one
delimiter listing of the directory plus, per checkpoint, one listing of its
sub-directory and one read of its manifest — never a request per data object.

Example:
    >>> import numpy as np, cloudckpt
    >>> from cloudckpt.storage import open_storage
    >>> _ = cloudckpt.save("memory://doc-cat/ckpt-1", {"w": np.ones(1)})
    >>> [(e.name, e.status) for e in scan(open_storage("memory://doc-cat"))]
    [('ckpt-1', 'committed')]
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from .checkpoint_io import read_manifest
from .errors import CheckpointNotFoundError, CorruptCheckpointError, FormatVersionError
from .storage import Storage

__all__ = ["Entry", "scan", "PRESERVED_KEY", "parse_name", "data_prefix_epoch"]

log = logging.getLogger("cloudckpt")

PRESERVED_KEY = "preserved.json"
_NAME_RE = re.compile(r"^(?P<name>.+)-(?P<number>[0-9]+)$")
_DATA_EPOCH_RE = re.compile(r"^data-e(?P<epoch>[0-9]+)-")


@dataclass
class Entry:
    """One ``<name>-<N>`` sub-directory.

    ``status``: ``committed`` (manifest parses), ``partial`` (no manifest:
    a save in progress or crashed), ``corrupt`` (manifest does not parse),
    ``newer`` (written by a newer cloudckpt; left alone).
    """

    name: str
    checkpoint_name: str
    number: int
    status: str
    manifest: dict[str, Any] | None = None
    preserved: bool = False
    data_prefixes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def created(self) -> float:
        """Commit time recorded in the manifest (0 if none)."""
        return float(self.manifest["created"]) if self.manifest else 0.0

    @property
    def epoch(self) -> int:
        """Ownership epoch of the writer (0 when written without a manager)."""
        if not self.manifest:
            return 0
        e = self.manifest["writer"].get("epoch")
        return int(e) if e is not None else 0

    @property
    def managed(self) -> bool:
        """Whether a manager wrote it (its manifest names an ownership epoch).

        Checkpoints written without a manager (``Checkpoint.write``,
        ``cloudckpt.save``) are restorable but never managed: never fenced,
        listed in a manager's active set, or deleted by retention."""
        return self.manifest is not None and self.manifest["writer"].get("epoch") is not None

    @property
    def orphans(self) -> list[str]:
        """Data prefixes not referenced by the manifest (crashed or superseded attempts)."""
        used = self.manifest["data"] if self.manifest else None
        return [p for p in self.data_prefixes if p != used]


def parse_name(dirname: str, checkpoint_name: str | None = None) -> tuple[str, int] | None:
    """``"ckpt-7"`` -> ``("ckpt", 7)``; None if it is not a checkpoint name.

    Example:
        >>> parse_name("ckpt-7"), parse_name("model-ckpt-12", "model-ckpt"), parse_name("other")
        (('ckpt', 7), ('model-ckpt', 12), None)
    """
    m = _NAME_RE.match(dirname)
    if not m:
        return None
    if checkpoint_name is not None and m.group("name") != checkpoint_name:
        return None
    return m.group("name"), int(m.group("number"))


def data_prefix_epoch(prefix: str) -> int:
    """The ownership epoch encoded in a data prefix (``data-e3-...`` -> 3; else 0).

    Example:
        >>> data_prefix_epoch("data-e12-abcd"), data_prefix_epoch("data-abcd")
        (12, 0)
    """
    m = _DATA_EPOCH_RE.match(prefix)
    return int(m.group("epoch")) if m else 0


def _entry(storage: Storage, dirname: str, cname: str, number: int) -> Entry:
    sub = storage.child(dirname)
    files, dirs = sub.list_dir()
    entry = Entry(dirname, cname, number, "partial")
    entry.data_prefixes = sorted(d for d in dirs if d.startswith("data-"))
    entry.preserved = PRESERVED_KEY in files
    if "manifest.json" in files:
        try:
            entry.manifest = read_manifest(sub)
            entry.status = "committed"
        except CheckpointNotFoundError:
            entry.status = "partial"  # deleted between list and read
        except FormatVersionError as exc:
            entry.status = "newer"
            entry.error = str(exc)
        except CorruptCheckpointError as exc:
            entry.status = "corrupt"
            entry.error = str(exc)
            log.warning("ignoring %s: %s", sub.url, exc)
    return entry


def scan(storage: Storage, checkpoint_name: str | None = None) -> list[Entry]:
    """Every ``<name>-<N>`` sub-directory of ``storage``, sorted by (name, number)."""
    _files, dirs = storage.list_dir()
    named = []
    for d in dirs:
        parsed = parse_name(d, checkpoint_name)
        if parsed is not None:
            named.append((d, *parsed))
    entries = storage.map(lambda x: _entry(storage, *x), named)
    return sorted(entries, key=lambda e: (e.checkpoint_name, e.number))
