"""Looking after a directory of checkpoints: list, remove, collect garbage.

The operations behind ``cloudckpt ls``, ``rm`` and ``gc``, usable from Python.
They work on any directory — one a :class:`~cloudckpt.CheckpointManager`
writes, or one of checkpoints saved with :func:`cloudckpt.save` — through the
format layer (catalog scan, manifests, ownership records, state file).

States of a ``<name>-<N>`` entry of a directory:

``committed``
    its manifest parses: a checkpoint.
``fenced``
    committed by a manager that had already lost the directory to another
    one; no reader lists or restores it, ``gc`` removes it.
``abandoned``
    committed, but left behind by a rollback (a manager restored an older
    checkpoint and saved after it): never latest again, retired first.
``partial``
    no manifest, and its data may belong to a save still running (data of
    the current owner's epoch, or of an unmanaged writer).
``orphaned``
    no manifest, and its data was written under an epoch older than the
    current owner's: a crashed save, certainly dead.
``corrupt``
    its manifest does not parse. ``newer``: written by a newer cloudckpt.

A sub-directory under another name that holds a ``manifest.json`` (``c4/``,
``best/``: saved with :func:`cloudckpt.save`) is listed too, as an
*unmanaged* checkpoint: readable with :func:`cloudckpt.load`, never listed,
restored or deleted by a manager, never the latest.

Example:
    >>> import numpy as np, cloudckpt
    >>> from cloudckpt.storage import open_storage
    >>> _ = cloudckpt.save("memory://doc-admin/ckpt-1", {"w": np.ones(2)})
    >>> listing = list_directory(open_storage("memory://doc-admin"))
    >>> [(e.name, e.state, e.latest) for e in listing.entries]
    [('ckpt-1', 'committed', True)]
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cloudckpt.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError, FormatVersionError
from cloudckpt.layout import catalog
from cloudckpt.layout import directory as directory_model
from cloudckpt.layout.commit import delete_checkpoint, delete_checkpoint_at
from cloudckpt.layout.names import MANIFEST_KEY, OWNER_PREFIX, PRESERVED_KEY, STATE_KEY, data_prefix_epoch, parse_name
from cloudckpt.layout.statefile import CheckpointState, read_state_file, write_state_file
from cloudckpt.storage import TEMP_MIN_AGE, IncompleteUpload, Storage

__all__ = [
    "ListedEntry",
    "Listing",
    "list_directory",
    "Garbage",
    "find_garbage",
    "collect_garbage",
    "remove_checkpoint",
    "RefusedError",
]

log = logging.getLogger("cloudckpt")



class RefusedError(CheckpointError):
    """An operation was refused to protect data (e.g. removing the latest
    checkpoint of a managed directory without confirmation).

    Example:
        >>> issubclass(RefusedError, CheckpointError)
        True
    """


@dataclass
class ListedEntry:
    """One entry of a directory, as ``cloudckpt ls`` shows it: a ``<name>-<N>``
    sub-directory, or (``unmanaged``) a sub-directory under another name that
    holds a ``manifest.json``.

    ``size`` is the stored bytes of every object the manifest lists (the
    manifest itself not counted; for an entry without a usable manifest,
    what a recursive listing finds). ``number`` is the ``N`` of the name (of
    an unmanaged checkpoint: the number its manifest records, often None).
    ``orphaned_bytes`` counts data prefixes of failed attempts inside it.

    Example:
        >>> e = ListedEntry("c4", None, "memory://run/c4", "committed", unmanaged=True)
        >>> e.unmanaged, e.latest
        (True, False)
    """

    name: str
    number: int | None
    url: str
    state: str
    unmanaged: bool = False
    latest: bool = False
    preserved: bool = False
    created: float | None = None
    created_utc: str | None = None
    size: int = 0
    nbytes: int | None = None
    objects: int | None = None
    epoch: int | None = None
    data: str | None = None
    orphaned: list[str] = field(default_factory=list)
    orphaned_bytes: int = 0
    error: str | None = None


@dataclass
class Listing:
    """The entries of a directory, its latest checkpoint and its state file.

    ``entries`` holds the ``<name>-<N>`` entries sorted by name and number,
    then the unmanaged checkpoints sorted by name.

    Example:
        >>> Listing("memory://x", [], None, 0, None, False).latest is None
        True
    """

    url: str
    entries: list[ListedEntry]
    latest: str | None
    owner_epoch: int
    state_file: CheckpointState | None
    has_state_file: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``cloudckpt ls --json`` prints).

        Example:
            >>> Listing("memory://x", [], None, 0, None, False).to_dict()["entries"]
            []
        """
        return {
            "directory": self.url,
            "latest": self.latest,
            "owner_epoch": self.owner_epoch,
            "state_file": None if self.state_file is None else asdict(self.state_file),
            "state_file_present": self.has_state_file,
            "entries": [asdict(e) for e in self.entries],
        }


def _entry_state(e: catalog.Entry, view: directory_model.View) -> str:
    if e.status == "committed":
        if e in view.fenced:
            return "fenced"
        return "abandoned" if view.is_abandoned(e) else "committed"
    if e.status == "partial":
        owner_epoch = view.owner_epoch
        if not e.data_prefixes or (
            owner_epoch > 0 and all(data_prefix_epoch(p) < owner_epoch for p in e.data_prefixes)
        ):
            return "orphaned"
        return "partial"
    return e.status


def list_directory(storage: Storage) -> Listing:
    """Every entry of the directory ``storage`` with its state and size: the
    ``<name>-<N>`` entries, then the other sub-directories that hold a
    ``manifest.json`` (unmanaged checkpoints, e.g. saved with :func:`cloudckpt.save`
    as ``run/c4``).

    Costs one listing of the directory, one listing and one manifest read
    per entry, one listing per other sub-directory (plus one manifest read
    where it holds one; data objects are never read), and one recursive
    listing per entry without a usable manifest and per orphaned data
    prefix. Sub-directories that cannot be listed (permission denied) are
    skipped. Raises :class:`~cloudckpt.CheckpointNotFoundError` if there is
    no checkpoint, no ``<name>-<N>`` entry and no state file.

    Example:
        >>> import numpy as np, cloudckpt
        >>> from cloudckpt.storage import open_storage
        >>> _ = cloudckpt.save("memory://doc-list/c4", {"w": np.ones(2)})
        >>> [(e.name, e.state, e.unmanaged) for e in list_directory(open_storage("memory://doc-list")).entries]
        [('c4', 'committed', True)]
    """
    files, dirs = storage.list_dir()
    view = directory_model.read_view(storage)
    entries, owner_epoch = view.entries, view.owner_epoch
    others = sorted(
        (d for d in dirs if parse_name(d) is None and d != OWNER_PREFIX), key=_natural
    )
    unmanaged = [row for row in storage.map(lambda d: _unmanaged_entry(storage, d), others) if row is not None]
    if not entries and not unmanaged and STATE_KEY not in files:
        raise CheckpointNotFoundError(
            f"no checkpoints at {storage.url}: it holds no <name>-<N> entry, no sub-directory with a "
            f"{MANIFEST_KEY} and no state file"
        )
    out: list[ListedEntry] = []
    for e in entries:
        row = ListedEntry(
            e.name, e.number, storage.url_for(e.name), _entry_state(e, view), preserved=e.preserved
        )
        row.error = e.error
        if e.header is not None:
            _fill_from_header(row, e.header, e.stored or _stored(storage.child(e.name)))
            row.orphaned = e.orphans
            for p in e.orphans:
                row.orphaned_bytes += sum(storage.list_all(f"{e.name}/{p}").values())
        else:
            row.size = sum(storage.list_all(e.name).values())
        out.append(row)
    latest = None
    if view.latest is not None:
        latest = next(r for r in out if r.name == view.latest.name)
        latest.latest = True
    out.extend(unmanaged)
    state = read_state_file(storage) if STATE_KEY in files else None
    return Listing(storage.url, out, latest.url if latest else None, owner_epoch, state, STATE_KEY in files)


def _stored(sub: Storage) -> tuple[int, int]:
    """(objects, bytes) of a checkpoint whose manifest predates the ``stored`` header field."""
    from cloudckpt.layout.checkpoint_io import read_manifest

    m = read_manifest(sub)
    return len(m["objects"]) + 1, sum(int(o["size"]) for o in m["objects"])


def _natural(name: str) -> list[Any]:
    """Sort key putting ``c9`` before ``c10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"([0-9]+)", name)]


def _fill_from_header(row: ListedEntry, m: dict[str, Any], stored: tuple[int, int]) -> None:
    row.created = float(m["created"])
    row.created_utc = m.get("created_utc")
    row.objects, row.size = stored
    row.nbytes = int(m["nbytes"])
    row.epoch = m["writer"].get("epoch")
    row.data = m["data"]


def _unmanaged_entry(storage: Storage, name: str) -> ListedEntry | None:
    """The sub-directory ``name`` as an unmanaged checkpoint, or None if it holds no manifest."""
    from cloudckpt.errors import ObjectNotFoundError, StoragePermissionError

    try:
        sub = storage.child(name)
    except ValueError:  # a name that is not a valid key (an object store lists anything)
        return None
    try:
        files, _ = sub.list_dir()
    except StoragePermissionError as exc:
        log.debug("ls: skipping %s: %s", sub.url, exc)
        return None
    if MANIFEST_KEY not in files:
        return None
    row = ListedEntry(name, None, sub.url, "committed", unmanaged=True, preserved=PRESERVED_KEY in files)
    try:
        head = catalog.read_header(sub, files[MANIFEST_KEY])
        stored = catalog.Entry(name, "", 0, "committed", header=head).stored or _stored(sub)
    except (CheckpointNotFoundError, ObjectNotFoundError):
        return None  # deleted between the listing and the read
    except (FormatVersionError, CorruptCheckpointError) as exc:
        row.state = "newer" if isinstance(exc, FormatVersionError) else "corrupt"
        row.error = str(exc)
        row.size = sum(sub.list_all().values())
        return row
    _fill_from_header(row, head, stored)
    row.number = head.get("checkpoint_number")
    return row


@dataclass
class Garbage:
    """One thing ``gc`` can remove.

    ``kind``: ``orphaned-data`` (a failed attempt's data prefix inside a
    checkpoint directory), ``partial-save`` (a directory without manifest),
    ``fenced-checkpoint``, ``incomplete-upload`` (S3 multipart) or
    ``temp-file`` (local disk). ``collect`` says whether ``gc --yes``
    removes it; the rest (possibly still being written) need ``--all``.
    """

    kind: str
    url: str
    key: str
    bytes: int | None
    reason: str
    collect: bool = True
    upload: IncompleteUpload | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict.

        Example:
            >>> Garbage("temp-file", "/d/x.tmp-0", "x.tmp-0", 1, "r").to_dict()["kind"]
            'temp-file'
        """
        d = asdict(self)
        d.pop("upload")
        if self.upload is not None:
            d["upload_id"] = self.upload.upload_id
            d["initiated"] = self.upload.initiated
        return d


def find_garbage(
    storage: Storage,
    *,
    include_active: bool = False,
    min_upload_age: float = 3600.0,
    now: float | None = None,
) -> list[Garbage]:
    """What a garbage collection of the directory ``storage`` would remove.

    Data a running save may still be writing is listed with ``collect=False``
    unless ``include_active``: data of the current owner's epoch (or of an
    unmanaged writer) in a directory without manifest, incomplete uploads
    younger than ``min_upload_age`` seconds, and temp files younger than
    ``TEMP_MIN_AGE`` (60 s; a live write renames its temp file within
    milliseconds). Nothing is deleted.
    """
    now = time.time() if now is None else now
    view = directory_model.read_view(storage)
    out: list[Garbage] = []
    for e in view.entries:
        out.extend(_entry_garbage(storage, e, view, include_active))
    for u in storage.list_incomplete_uploads():
        age = None if u.initiated is None else now - u.initiated
        old = age is not None and age >= min_upload_age
        when = "unknown age" if age is None else f"started {age / 3600:.1f} h ago"
        out.append(
            Garbage(
                "incomplete-upload",
                storage.url_for(u.key),
                u.key,
                None,
                f"multipart upload never completed ({when}); its parts are billed",
                collect=include_active or old,
                upload=u,
            )
        )
    if storage.is_local:
        out.extend(_temp_files(storage, [e.name for e in view.entries], include_active))
    return out


def _entry_garbage(storage: Storage, e: catalog.Entry, view: directory_model.View, include_active: bool) -> list[Garbage]:
    """What ``gc`` can remove of the entry ``e``: a fenced checkpoint, orphaned data, a partial save."""
    state = _entry_state(e, view)
    owner_epoch = view.owner_epoch
    if state in ("corrupt", "newer"):
        return []  # not ours to judge: `cloudckpt rm` removes a damaged checkpoint
    if state == "fenced":
        reason = f"committed under epoch {e.epoch} by a manager that had lost the directory"
        return [Garbage("fenced-checkpoint", storage.url_for(e.name), e.name, e.stored[1] if e.stored else None, reason)]
    if state in ("committed", "abandoned"):
        out = []
        for p in e.orphans:
            key = f"{e.name}/{p}"
            reason = "data of a failed save attempt; the checkpoint committed another one"
            out.append(Garbage("orphaned-data", storage.url_for(key), key, sum(storage.list_all(key).values()), reason))
        return out
    size = sum(storage.list_all(e.name).values())
    if state == "orphaned":
        reason = (
            f"no manifest; written under epoch(s) older than the owner's ({owner_epoch}): a crashed save"
            if e.data_prefixes
            else "no manifest and no data"
        )
        return [Garbage("partial-save", storage.url_for(e.name), e.name, size, reason)]
    who = f"the current owner (epoch {owner_epoch})" if owner_epoch else "an unmanaged writer"
    reason = f"no manifest; may be a save of {who} still running"
    return [Garbage("partial-save", storage.url_for(e.name), e.name, size, reason, collect=include_active)]


def _temp_files(storage: Storage, names: list[str], include_active: bool) -> list[Garbage]:
    out = []
    for prefix in ["", *names, OWNER_PREFIX]:
        for key, size, age in storage.temporaries(prefix):
            old = age >= TEMP_MIN_AGE
            reason = (
                "temporary file of an interrupted atomic write"
                if old
                else f"temporary file {age:.0f} s old: may be a write in flight (kept under {TEMP_MIN_AGE:.0f} s)"
            )
            out.append(Garbage("temp-file", storage.url_for(key), key, size, reason, collect=old or include_active))
    return out


def collect_garbage(storage: Storage, items: list[Garbage]) -> list[Garbage]:
    """Remove the items with ``collect=True``; returns those removed.

    Fenced checkpoints lose their manifest first, then their data.
    """
    removed = []
    uploads = [g for g in items if g.collect and g.upload is not None]
    for g in items:
        if not g.collect or g.upload is not None:
            continue
        if g.kind == "fenced-checkpoint":
            delete_checkpoint(storage, g.key)  # manifest first, then data
        elif g.kind == "temp-file":
            storage.delete([g.key])
        else:
            storage.delete_prefix(g.key)
        log.info("gc: removed %s", g.url)
        removed.append(g)
    if uploads:
        storage.abort_uploads([g.upload for g in uploads if g.upload is not None])
        for g in uploads:
            log.info("gc: aborted upload %s", g.url)
        removed.extend(uploads)
    return removed


def _is_managed(parent: Storage) -> bool:
    files, dirs = parent.list_dir()
    return STATE_KEY in files or OWNER_PREFIX in dirs


def _latest_name(parent: Storage) -> str | None:
    latest = directory_model.read_view(parent).latest
    return None if latest is None else latest.name


def remove_checkpoint(storage: Storage, parent: Storage | None, *, yes: bool = False) -> dict[str, Any]:
    """Uncommit then delete the checkpoint at ``storage``: its manifest first
    (it is invisible from that instant), then every other object under it.

    ``parent`` is the directory holding it (None at a bucket root). The
    latest checkpoint of a managed directory (one with a state file or
    ownership records) is removed only with ``yes=True``: a job that
    restarts would silently go back to an older checkpoint. The directory's
    state file is updated. A damaged checkpoint (manifest does not parse)
    can be removed; a directory without manifest cannot (``gc`` collects
    those). Returns what was done.
    """
    try:
        exists = storage.exists(MANIFEST_KEY)
    except CheckpointError:
        raise
    if not exists:
        files, dirs = storage.list_dir()
        hint = ""
        if any(parse_name(d) for d in dirs) or STATE_KEY in files:
            hint = f"; {storage.url} is a directory of checkpoints: rm removes one checkpoint"
        elif files or dirs:
            hint = "; it holds data without a manifest (a crashed or running save): `cloudckpt gc` collects those"
        raise CheckpointNotFoundError(
            f"no checkpoint at {storage.url}: {storage.url_for(MANIFEST_KEY)} does not exist{hint}"
        )
    name = storage.url.rstrip("/").rsplit("/", 1)[-1]
    status = "committed"
    from cloudckpt.layout.checkpoint_io import read_manifest

    try:
        manifest: dict[str, Any] | None = read_manifest(storage)
    except (CorruptCheckpointError, FormatVersionError) as exc:
        manifest, status = None, "corrupt"
        log.info("removing damaged checkpoint %s: %s", storage.url, exc)
    managed = parent is not None and _is_managed(parent)
    if managed and status == "committed" and not yes:
        assert parent is not None
        if _latest_name(parent) == name:
            raise RefusedError(
                f"{storage.url} is the latest checkpoint of {parent.url}: a job restarting from it would silently "
                "go back to an older checkpoint. Pass --yes (yes=True in Python) to remove it anyway"
            )
    delete_checkpoint_at(storage, parent)  # manifest first, then data
    objects = len(manifest["objects"]) if manifest else None
    state_updated = False
    if managed:
        assert parent is not None
        state_updated = _drop_from_state(parent, name)
    log.info("removed %s", storage.url)
    return {"url": storage.url, "status": status, "objects": objects, "state_file_updated": state_updated}


def _drop_from_state(parent: Storage, name: str) -> bool:
    state = read_state_file(parent)
    if state is None:
        return False
    base = [p.rstrip("/").rsplit("/", 1)[-1] for p in state.all_model_checkpoint_paths]
    latest_base = (state.model_checkpoint_path or "").rstrip("/").rsplit("/", 1)[-1]
    if name not in base and latest_base != name:
        return False
    keep = [i for i, b in enumerate(base) if b != name]
    paths = [state.all_model_checkpoint_paths[i] for i in keep]
    stamps = [state.all_model_checkpoint_timestamps[i] for i in keep] if state.all_model_checkpoint_timestamps else []
    latest = state.model_checkpoint_path
    if latest_base == name:
        latest = _latest_name(parent)
    if latest is None:
        parent.delete([STATE_KEY])
        return True
    write_state_file(parent, CheckpointState(latest, paths, stamps, state.last_preserved_timestamp))
    return True
