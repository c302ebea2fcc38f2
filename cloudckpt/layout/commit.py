"""The life of a checkpoint on storage: commit, uncommit-and-delete, preserve, collect what no commit holds.

Every module that makes a checkpoint visible or invisible comes here, so the
protocol of :doc:`the design <../DESIGN>` is written once:

- **commit**: ``manifest.json`` written create-only, after the data; from that
  instant the checkpoint exists (:func:`commit`). A save whose commit
  certainly did not land removes its attempt's data (:func:`discard_attempt`).
- **uncommit, then delete**: the manifest first (the checkpoint is invisible
  at once), then every other object under it (:func:`delete_checkpoint`).
- **preserve**: a create-only marker, ``preserved.json`` (:func:`preserve`).
- **collect**: data prefixes that no manifest names and no live writer can
  still be writing (:func:`collect_orphans`, :func:`collect_failed_attempt`),
  and the temp files of killed local writes (:func:`collect_temporaries`).

Example:
    >>> from cloudckpt.storage import open_storage
    >>> d = open_storage("memory://doc-commit")
    >>> c = d.child("ckpt-1"); c.write("data-x/a", b"1")
    >>> commit(c, b'{"a": 1}'), commit(c, b'{"b": 2}'), preserve(c, {"preserved_at": 1.0})
    (True, False, True)
    >>> delete_checkpoint(d, "ckpt-1"); d.list_all()
    {}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from cloudckpt.errors import CheckpointError, CorruptCheckpointError, ObjectNotFoundError
from cloudckpt.layout.catalog import Entry, read_header
from cloudckpt.layout.names import MANIFEST_KEY, OWNER_PREFIX, PRESERVED_KEY, data_prefix_epoch
from cloudckpt.storage import Storage

__all__ = [
    "commit",
    "discard_attempt",
    "discard_if_uncommitted",
    "delete_checkpoint",
    "delete_checkpoint_at",
    "preserve",
    "read_preserved",
    "collect_orphans",
    "collect_failed_attempt",
    "collect_temporaries",
]

log = logging.getLogger("cloudckpt")


def commit(checkpoint: Storage, payload: bytes, *, discard: str | None = None) -> bool:
    """Write ``payload`` as the manifest of ``checkpoint``, create-only: the commit.

    Returns True if this payload is now the committed manifest, False if
    another manifest was there already (nothing is changed then). When the
    write fails with an unknown outcome (the request may have landed) the
    manifest is read back: if it is this payload, the commit stands; else
    the write's own error is raised. ``discard`` names the attempt's data
    prefix, removed whenever the commit certainly did not land.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> c = open_storage("memory://doc-commit-one/ckpt-1")
        >>> commit(c, b'{"a": 1}'), commit(c, b'{"a": 1}'), commit(c, b'{"b": 2}')   # the same bytes: ours
        (True, True, False)
    """
    try:
        created = checkpoint.write_if_absent(MANIFEST_KEY, payload)
    except BaseException:
        # The outcome is unknown: keep the data unless we can tell that our manifest
        # is not there. The error raised is the commit's (bare raise), not the check's.
        known = True
        try:
            ours = checkpoint.read(MANIFEST_KEY) == payload
        except ObjectNotFoundError:
            ours = False
        except Exception:
            ours, known = False, False
        if not known:
            raise
        if not ours:
            if discard is not None:
                discard_attempt(checkpoint, discard)
            raise
        created = True
    if not created and discard is not None:
        discard_attempt(checkpoint, discard)
    return bool(created)


def discard_attempt(checkpoint: Storage, prefix: str) -> None:
    """Remove, best effort, the data of a save attempt that did not commit.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> c = open_storage("memory://doc-discard"); c.write("data-x/a", b"1")
        >>> discard_attempt(c, "data-x"); c.list_all()
        {}
    """
    try:
        checkpoint.delete_prefix(prefix)
    except Exception as exc:
        log.debug("could not remove %s after a failed save: %s", checkpoint.url_for(prefix), exc)


def discard_if_uncommitted(checkpoint: Storage, prefix: str) -> None:
    """Remove the data ``prefix`` of an abandoned write, only if no manifest commits ``checkpoint``.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> c = open_storage("memory://doc-discard-unc"); c.write("data-x/a", b"1")
        >>> discard_if_uncommitted(c, "data-x"); c.list_all()
        {}
    """
    try:
        if not checkpoint.exists(MANIFEST_KEY):
            checkpoint.delete_prefix(prefix)
    except CheckpointError as exc:
        log.debug("could not remove %s: %s", checkpoint.url_for(prefix), exc)


def delete_checkpoint(directory: Storage, name: str) -> None:
    """Uncommit the checkpoint ``name`` of ``directory`` (its manifest first:
    invisible from that instant), then delete everything else under it.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> d = open_storage("memory://doc-delete"); d.write("ckpt-1/manifest.json", b"{}")
        >>> delete_checkpoint(d, "ckpt-1"); d.list_all()
        {}
    """
    directory.child(name).delete([MANIFEST_KEY])
    directory.delete_prefix(name)


def delete_checkpoint_at(checkpoint: Storage, parent: Storage | None) -> None:
    """:func:`delete_checkpoint` for a checkpoint given by its own handle;
    ``parent`` is its directory (None at a bucket root).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> c = open_storage("memory://doc-delete-at/c"); c.write(MANIFEST_KEY, b"{}")
        >>> delete_checkpoint_at(c, c.parent()); c.list_all()
        {}
    """
    if parent is not None:
        delete_checkpoint(parent, checkpoint.url.rstrip("/").rsplit("/", 1)[-1])
        return
    checkpoint.delete([MANIFEST_KEY])
    checkpoint.delete(list(checkpoint.list_all()))


def preserve(checkpoint: Storage, record: Mapping[str, Any] | bytes) -> bool:
    """Mark ``checkpoint`` preserved for good (create-only; a marker already there stays).
    ``record`` is the marker's JSON, or its bytes (a copy of another marker).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> c = open_storage("memory://doc-preserve")
        >>> preserve(c, {"preserved_at": 1.0}), read_preserved(c)
        (True, b'{"preserved_at": 1.0}')
    """
    body = record if isinstance(record, bytes) else json.dumps(dict(record)).encode()
    return bool(checkpoint.write_if_absent(PRESERVED_KEY, body))


def read_preserved(checkpoint: Storage) -> bytes:
    """The bytes of the preserved marker of ``checkpoint`` (ObjectNotFoundError if none).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> c = open_storage("memory://doc-read-preserved"); _ = preserve(c, b"{}")
        >>> read_preserved(c)
        b'{}'
    """
    return checkpoint.read(PRESERVED_KEY)


def collect_orphans(directory: Storage, entry: Entry, below_epoch: int) -> list[str]:
    """Remove the data prefixes of ``entry`` that its manifest does not name and
    that were written under an epoch below ``below_epoch`` (no live writer can
    still be writing them). Returns the URLs removed.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> d = open_storage("memory://doc-orphans"); d.write("ckpt-1/data-e1-x/a", b"1")
        >>> e = Entry("ckpt-1", "ckpt", 1, "partial", data_prefixes=["data-e1-x"])
        >>> collect_orphans(d, e, 2)
        ['memory://doc-orphans/ckpt-1/data-e1-x']
    """
    old = [p for p in entry.orphans if data_prefix_epoch(p) < below_epoch]
    sub = directory.child(entry.name)
    removed = []
    for prefix in old:
        sub.delete_prefix(prefix)
        removed.append(sub.url_for(prefix))
        log.info("retention: removed orphaned data %s (a save that never committed)", removed[-1])
    if entry.status == "partial" and old and len(old) == len(entry.data_prefixes) and directory.is_local:
        # local disk keeps empty directories; object stores have none
        files, dirs = sub.list_dir()
        if not files and not dirs:
            directory.delete_prefix(entry.name)
    return removed


def collect_failed_attempt(directory: Storage, name: str, prefix: str) -> str | None:
    """Remove the data ``prefix`` of a save of checkpoint ``name`` that failed,
    unless its commit did land after all (the manifest names it) or the
    manifest is damaged (not ours to judge). Returns the URL removed, if any.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> d = open_storage("memory://doc-failed"); d.write("ckpt-1/data-x/a", b"1")
        >>> collect_failed_attempt(d, "ckpt-1", "data-x")
        'memory://doc-failed/ckpt-1/data-x'
    """
    sub = directory.child(name)
    try:
        if read_header(sub).get("data") == prefix:
            return None  # the "failed" commit did land: its data is in use
    except ObjectNotFoundError:
        pass
    except CorruptCheckpointError:
        return None
    sub.delete_prefix(prefix)
    log.info("retention: removed data of a failed save %s", sub.url_for(prefix))
    return sub.url_for(prefix)


def collect_temporaries(directory: Storage, names: Iterable[str]) -> list[str]:
    """On local disk, remove the old temp files of killed writes (state file,
    manifests, claims) in ``directory`` and its checkpoints ``names``; the URLs removed.

    Example:
        >>> import tempfile
        >>> from cloudckpt.storage import open_storage
        >>> collect_temporaries(open_storage(tempfile.mkdtemp()), ["ckpt-1"])
        []
    """
    if not directory.is_local:
        return []
    removed = []
    for prefix in ["", OWNER_PREFIX, *names]:
        for url in directory.collect_temporaries(prefix):
            removed.append(url)
            log.info("retention: removed the temp file of a killed write %s", url)
    return removed
