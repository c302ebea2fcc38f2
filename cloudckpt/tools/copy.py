"""Copy a checkpoint, or a whole managed directory of them, between any two backends.

:func:`copy` moves checkpoints across clouds (S3 to GCS, GCS to local disk,
...) with the same guarantees as a save:

* **Streamed, bounded memory.** Objects are copied one request each, read
  whole from the source and written whole to the destination (by default
  an object is a chunk of at most ~32 MiB). At most ``buffer_bytes``
  (default 128 MiB) of object data are in flight at once over all
  concurrent requests; a single larger object still goes through, alone.
  The checkpoint is never held in memory as a whole.
* **Concurrent.** Up to ``max_concurrency`` requests in flight
  (:meth:`Storage.map <cloudckpt.storage.Storage.map>`).
* **Checked on the way.** Every object's size and crc32c are checked
  against the source manifest before it is written; a mismatch aborts with
  :class:`~cloudckpt.CorruptCheckpointError` naming the source object, and
  nothing is committed at the destination.
* **Same commit protocol.** Data goes under the same data prefix
  (``data-<attempt>/``) first, then a barrier (fsync on local disk), then
  ``manifest.json`` create-only, byte for byte the source's. A crash at
  any point leaves the destination checkpoint invisible, never half there.
* **Only what the destination lacks.** A checkpoint of a current release
  records the content hash (XXH3-128) of every object beside its crc32c.
  Before a checkpoint is copied, the objects of one checkpoint already
  committed at the destination are indexed by (size, content hash)
  (:class:`~cloudckpt.format.reuse.BaseObjects`): the checkpoint this call
  committed just before (a directory is copied oldest first), else the
  newest checkpoint committed in the destination directory before the call
  (a single checkpoint copied into a directory, or a directory copy resumed
  or extended; a damaged manifest there, or one without content hashes,
  gives no index). A source object whose size, content hash and crc32c match one of
  them is **not sent**: it is copied *inside the destination store* (S3
  ``CopyObject``, GCS ``rewrite``, a hard link on local disk:
  :func:`~cloudckpt.format.reuse.copy_verified`) and the copy is checked:
  the crc32c the store reports for it (S3, GCS), else its size, and where
  objects found at the destination are re-read (``verify_existing``: local
  disk and ``memory://`` by default) its crc32c too. A copy that fails its
  check is removed (a warning names the damaged object) and the object is
  sent from the source as usual, so damage at the destination is never
  propagated. Objects without a content hash (checkpoints of older
  releases), and every object where the destination store cannot copy
  within itself, are sent. What is sent is read from the source, checked
  and written as above; each copied checkpoint is whole (deleting the one
  its objects were copied from never affects it). Syncing a directory of
  fine-tuning checkpoints thus sends a frozen base model once.
  ``CopyReport.objects_deduplicated``/``bytes_deduplicated`` count what was
  copied inside the destination, ``objects_copied``/``bytes_copied`` what
  was sent.
* **Resumable.** A checkpoint already committed at the destination with
  the same manifest is skipped (a committed checkpoint with a *different*
  manifest is never overwritten: :class:`~cloudckpt.CheckpointExistsError`).
  Objects of an interrupted copy that are already at the destination are
  found with one listing of the data prefix and not copied again: on
  object stores an object with the right size is trusted (a PUT is atomic,
  and a key under an attempt-unique data prefix only ever holds one
  content); on local disk and ``memory://``, where re-reading is cheap and
  a write interrupted mid-file can leave a file of the right size, it is
  re-read and its crc32c checked (``verify_existing`` overrides this).
  Objects an interrupted copy placed by a copy inside the destination are
  found the same way.

For a managed directory, every committed checkpoint of the source is
copied (oldest first, with its ``preserved.json`` marker), then the
``checkpoint`` state file is rebuilt for the destination from the
manifests. Not copied: partial or crashed saves, orphaned data, damaged
checkpoints and checkpoints fenced by the source's ownership records
(listed in ``CopyReport.warnings``), and the ownership records themselves:
the first manager that opens the destination claims it afresh. A copy
into a directory that a manager already owns is refused for a checkpoint
that this manager would consider fenced (and so delete).

Example:
    >>> import numpy as np, cloudckpt
    >>> url = cloudckpt.save("memory://doc-copy-src/ckpt-1", {"w": np.arange(3.0)})
    >>> report = cloudckpt.copy(url, "memory://doc-copy-dst/ckpt-1")
    >>> report.copied, cloudckpt.load("memory://doc-copy-dst/ckpt-1")["w"]
    (['memory://doc-copy-dst/ckpt-1'], array([0., 1., 2.]))
    >>> cloudckpt.copy(url, "memory://doc-copy-dst/ckpt-1").skipped   # already there
    ['memory://doc-copy-dst/ckpt-1']

    A later checkpoint holding the same array is copied inside the destination, not sent:

    >>> url2 = cloudckpt.save("memory://doc-copy-src/ckpt-2", {"w": np.arange(3.0), "step": 2})
    >>> report = cloudckpt.copy(url2, "memory://doc-copy-dst/")
    >>> report.copied, report.objects_deduplicated > 0
    (['memory://doc-copy-dst/ckpt-2'], True)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cloudckpt.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ObjectNotFoundError,
)
from cloudckpt.format.manifest import header_of, max_manifest_bytes, parse_manifest
from cloudckpt.format.reuse import BaseObjects, content_hashes, copy_verified
from cloudckpt.layout import catalog, ownership
from cloudckpt.layout import directory as directory_model
from cloudckpt.layout.commit import commit, discard_if_uncommitted, preserve, read_preserved
from cloudckpt.layout.incremental import open_base
from cloudckpt.layout.names import MANIFEST_KEY, STATE_KEY, parse_name
from cloudckpt.layout.statefile import CheckpointState, format_state, parse_state, read_state_file
from cloudckpt.storage import Storage, open_storage
from cloudckpt.tools.verify import BUFFER_BYTES, ByteBudget, read_checked

__all__ = ["copy", "CopyReport"]

log = logging.getLogger("cloudckpt")

Progress = Callable[[int, int], None]


@dataclass
class CopyReport:
    """What :func:`copy` did.

    ``copied``: destination URLs of the checkpoints this call committed;
    ``skipped``: those already committed at the destination (same manifest);
    ``vanished``: source checkpoints deleted while they were being copied
    (by the source's retention, say), so not committed at the destination;
    ``warnings``: source entries deliberately not copied, and why.
    ``objects_copied``/``bytes_copied`` count the objects (manifests included)
    sent: read from the source and written to the destination;
    ``objects_present``/``bytes_present`` objects found already at the
    destination (an earlier, interrupted copy) and not copied again;
    ``objects_deduplicated``/``bytes_deduplicated`` objects copied inside the
    destination from a checkpoint already there that holds the same bytes,
    instead of being sent.

    Example:
        >>> CopyReport("memory://a", "memory://b", "checkpoint").bytes_copied
        0
    """

    src: str
    dst: str
    kind: str  # "checkpoint" | "directory"
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    objects_copied: int = 0
    bytes_copied: int = 0
    objects_present: int = 0
    bytes_present: int = 0
    objects_deduplicated: int = 0
    bytes_deduplicated: int = 0
    state_file: str | None = None
    seconds: float = 0.0
    src_requests: int = 0
    dst_requests: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``cloudckpt cp --json`` prints).

        Example:
            >>> sorted(CopyReport("memory://a", "memory://b", "checkpoint").to_dict())[:3]
            ['bytes_copied', 'bytes_deduplicated', 'bytes_present']
        """
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


class _Vanished(Exception):
    """The source checkpoint was deleted during the copy."""


@dataclass
class _Job:
    """One checkpoint to copy."""

    src: Storage
    dst: Storage
    raw: bytes
    manifest: dict[str, Any]
    present: dict[str, int]
    marker: bytes | None = None  # preserved.json of the source, to copy after the commit
    # a checkpoint committed at the destination before this call whose objects this copy
    # (and the ones after it) may copy inside the destination; None: the previous job's
    base: Storage | None = None


def _into_directory(src: Storage, dst: Storage, given: str) -> Storage:
    """Where one checkpoint goes: ``dst`` itself, or ``dst/<name of src>`` when
    ``dst`` ends with ``/`` or is a directory of checkpoints (as ``cp file dir/``)."""
    name = src.url.rstrip("/").rsplit("/", 1)[-1]
    if not given.endswith("/"):
        files, dirs = dst.list_dir()
        if MANIFEST_KEY in files or not (STATE_KEY in files or any(parse_name(x) for x in dirs)):
            return dst
    try:
        return dst.child(name)
    except ValueError:
        return dst


def _same(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    try:
        return parse_manifest(a, "a") == parse_manifest(b, "b")
    except CheckpointError:
        return False


def _dst_claims(storage: Storage | None) -> list[ownership.Claim]:
    if storage is None:
        return []
    return ownership.list_claims(storage)


def _refuse_if_fenced(
    dst: Storage, manifest: dict[str, Any], number: int | None, claims: list[ownership.Claim]
) -> None:
    epoch = manifest["writer"].get("epoch")
    if number is None or not claims or epoch is None:  # written without a manager: never fenced
        return
    entry = catalog.Entry(dst.url, "", number, "committed", header=header_of(manifest))
    if directory_model.is_fenced(entry, claims):
        raise CheckpointExistsError(
            f"refusing to copy into {dst.url}: the destination directory is owned by a manager "
            f"(ownership epoch {claims[-1].epoch}) that would treat this checkpoint (number {number}, written "
            f"under epoch {epoch}) as written by a writer that lost the directory, and delete it. "
            "Copy into a directory that no manager owns"
        )


def _plan_checkpoint(
    src: Storage,
    dst: Storage,
    *,
    dst_entry: catalog.Entry | None,
    dst_known: bool,
    number: int | None,
    claims: list[ownership.Claim],
    preserved: bool,
    report: CopyReport,
) -> _Job | None:
    """Read the source manifest and decide what is left to copy; None if nothing."""
    murl = src.url_for(MANIFEST_KEY)
    try:
        raw = src.read(MANIFEST_KEY, max_bytes=max_manifest_bytes() + 1)
    except ObjectNotFoundError:
        raise CheckpointNotFoundError(f"no checkpoint at {src.url}: {murl} does not exist") from None
    manifest = parse_manifest(raw, murl)
    existing: bytes | None
    if dst_known:
        existing = None
        if dst_entry is not None and dst_entry.status in ("committed", "corrupt", "newer"):
            existing = dst.read(MANIFEST_KEY)
    else:
        try:
            existing = dst.read(MANIFEST_KEY)
        except ObjectNotFoundError:
            existing = None
    marker = read_preserved(src) if preserved else None
    if existing is not None:
        if not _same(existing, raw):
            raise CheckpointExistsError(
                f"a different checkpoint is already committed at {dst.url}; committed checkpoints are never "
                "overwritten: copy to another path, or remove it first (cloudckpt rm)"
            )
        if marker is not None and not (dst_entry is not None and dst_entry.preserved):
            preserve(dst, marker)
        report.skipped.append(dst.url)
        log.info("copy: %s is already committed at %s; skipped", src.url, dst.url)
        return None
    _refuse_if_fenced(dst, manifest, number, claims)
    data = manifest["data"]
    if dst_known and not (dst_entry is not None and data in dst_entry.data_prefixes):
        present: dict[str, int] = {}
    else:
        present = {f"{data}/{k}": v for k, v in dst.list_all(data).items()}
    return _Job(src, dst, raw, manifest, present, marker)


class _Counter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:  # one progress call at a time, in order
            self.done += n
            if self.progress is not None:
                self.progress(self.done, self.total)


def _newest_beside(d: Storage) -> Storage | None:
    """The newest checkpoint committed in the directory holding the checkpoint
    ``d`` (same name first, then by number), if ``d`` is a ``<name>-<N>``
    checkpoint of such a directory and its store can copy within itself."""
    name = d.url.rstrip("/").rsplit("/", 1)[-1]
    mine = parse_name(name)
    parent = d.parent()
    if mine is None or parent is None or not d.can_copy_from(d):
        return None
    _, dirs = parent.list_dir()
    found = []
    for x in dirs:
        parsed = parse_name(x)
        if parsed is not None and x != name:
            found.append(((parsed[0] == mine[0], parsed[1]), x))
    for _, x in sorted(found, reverse=True)[:_BASE_CANDIDATES]:
        sub = parent.child(x)
        if sub.exists(MANIFEST_KEY):  # (no manifest: a save in progress or a crashed one; try the one before)
            return sub
    return None


_BASE_CANDIDATES = 4  # uncommitted checkpoint directories tried past, newest first, for a base


def _run_job(
    job: _Job,
    base: BaseObjects | None,
    report: CopyReport,
    counter: _Counter,
    budget: ByteBudget,
    verify_existing: bool,
    piece_bytes: int,
) -> None:
    src, dst, manifest = job.src, job.dst, job.manifest
    lock = threading.Lock()

    def check_at_dst(obj: dict[str, Any]) -> str | None:
        """Re-read an object at the destination: its problem, or None if its size and crc32c are right."""
        n = budget.acquire(min(int(obj["size"]), piece_bytes))
        try:
            return read_checked(dst, obj, piece_bytes=piece_bytes, keep=False)[1]
        finally:
            budget.release(n)

    def from_base(obj: dict[str, Any], digest: str | None) -> bool:
        """Place ``obj`` (content hash ``digest``) by a checked copy inside the destination, if the base holds its bytes."""
        if base is None or digest is None:
            return False
        key, size, crc = obj["key"], int(obj["size"]), int(obj["crc32c"])
        try:
            if not copy_verified(dst, base, key, size, crc, digest):
                return False
        except NotImplementedError:  # not copyable within the store (S3: an object over 5 GiB)
            return False
        if verify_existing:
            problem = check_at_dst(obj)
            if problem is not None:
                source = base.storage.url_for(base.by_content[(size, digest)][0])
                log.warning(
                    "copy: %s at the destination is damaged (its copy %s: %s); sending the object from %s instead",
                    source,
                    dst.url_for(key),
                    problem,
                    src.url_for(key),
                )
                dst.delete([key])  # (a hard link shares the damaged file: never write into it)
                return False
        return True

    def one(item: tuple[dict[str, Any], str | None]) -> None:
        obj, digest = item
        key, size = obj["key"], int(obj["size"])
        if job.present.get(key) == size:
            problem = check_at_dst(obj) if verify_existing else None
            if problem is None:
                with lock:
                    report.objects_present += 1
                    report.bytes_present += size
                counter.add(size)
                return
            log.info("copy: %s at the destination is damaged (%s); copying it again", dst.url_for(key), problem)
            dst.delete([key])  # (it may be a hard link of another checkpoint's object: never write into it)
        if from_base(obj, digest):
            with lock:
                report.objects_deduplicated += 1
                report.bytes_deduplicated += size
            counter.add(size)
            return
        n = budget.acquire(size)
        try:
            data, problem = read_checked(src, obj, piece_bytes=max(piece_bytes, size))
            if problem == "missing" and not src.exists(MANIFEST_KEY):
                raise _Vanished(src.url)
            if problem is not None:
                raise CorruptCheckpointError(
                    f"source object {src.url_for(key)} is damaged: {problem}; the copy of {src.url} was aborted "
                    f"and nothing was committed at {dst.url}"
                )
            assert data is not None
            dst.write(key, data)
            del data
        finally:
            budget.release(n)
        with lock:
            report.objects_copied += 1
            report.bytes_copied += size
        counter.add(size)

    try:
        dst.map(one, list(zip(manifest["objects"], content_hashes(manifest), strict=True)))
        dst.barrier()
    except (_Vanished, CorruptCheckpointError):
        discard_if_uncommitted(dst, manifest["data"])
        raise
    if not commit(dst, job.raw):  # create-only, after the data
        existing = dst.read(MANIFEST_KEY)
        if not _same(existing, job.raw):
            raise CheckpointExistsError(
                f"another writer committed a different checkpoint at {dst.url} during the copy; it was not changed"
            )
    report.objects_copied += 1
    report.bytes_copied += len(job.raw)
    counter.add(len(job.raw))
    if job.marker is not None:
        preserve(dst, job.marker)
    report.copied.append(dst.url)
    log.info("copy: committed %s at %s (%d objects)", src.url, dst.url, len(manifest["objects"]))


def _state_for(
    src_state: CheckpointState | None, entries: list[catalog.Entry], claims: list[ownership.Claim]
) -> CheckpointState | None:
    """The state file of the destination, from the committed checkpoints there
    (``entries``), classified as every reader does (:mod:`cloudckpt.layout.directory`)."""
    view = directory_model.classify(entries, claims)
    if not view.valid or view.latest is None:
        return None
    names = [e.checkpoint_name for e in view.valid]
    cname = None
    if src_state is not None and src_state.model_checkpoint_path:
        parsed = parse_name(src_state.model_checkpoint_path.rstrip("/").rsplit("/", 1)[-1])
        cname = parsed[0] if parsed and parsed[0] in names else None
    if cname is None:
        cname = view.latest.checkpoint_name
    mine = [e for e in view.valid if e.checkpoint_name == cname]
    candidates = directory_model.preserved_times(src_state, mine)
    # as a manager keeps it: the managed checkpoints that are not preserved for good
    # (checkpoints written without a manager are restorable but never in the active set),
    # abandoned ones first
    active = [e for e in mine if not e.preserved and e.managed]
    active.sort(key=lambda e: (not view.is_abandoned(e), directory_model.sort_key(e)))
    return CheckpointState(
        view.latest.name,
        [e.name for e in active],
        [e.created for e in active],
        max(candidates) if candidates else None,
    )


def copy(
    src: str,
    dst: str,
    *,
    src_storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
    max_concurrency: int | None = None,
    buffer_bytes: int = BUFFER_BYTES,
    verify_existing: bool | None = None,
    _on_open: Callable[[Storage, Storage], None] | None = None,
) -> CopyReport:
    """Copy one checkpoint, or every committed checkpoint of a directory, from ``src`` to ``dst``.

    ``src`` is a checkpoint (it holds ``manifest.json``) or a directory of ``<name>-<N>`` checkpoints;
    ``dst`` is where the checkpoint, or the directory, goes — a checkpoint goes *into* ``dst`` (as
    ``dst/<its name>``) when ``dst`` ends with ``/`` or already is a directory of checkpoints, as
    ``cp file dir/`` does. Both are any fsspec URL or local path, each with its own storage options. See the module docstring for the guarantees:
    bounded memory (``buffer_bytes``), concurrency (``max_concurrency``),
    crc32c checked on the way, data first and the manifest create-only
    last, resumable after an interruption; and only what the destination
    lacks is sent: an object that a checkpoint already committed there holds
    (same size, content hash and crc32c) is copied inside the destination
    store instead, and checked.

    ``progress(bytes_done, bytes_total)`` is called as objects complete
    (from worker threads, one call at a time); bytes found already at the
    destination, or copied inside it, count as done. ``verify_existing``:
    re-read objects found at the destination, and objects copied inside it,
    and check their crc32c (True), trust their size and the store's check
    of a copy (False), or decide by backend (None: re-read on local disk and
    memory).

    Returns a :class:`CopyReport`. Raises
    :class:`~cloudckpt.CheckpointNotFoundError` when ``src`` holds no
    committed checkpoint, :class:`~cloudckpt.CorruptCheckpointError` naming
    the damaged source object, :class:`~cloudckpt.CheckpointExistsError`
    when ``dst`` holds a different committed checkpoint (nothing is
    overwritten), and :class:`~cloudckpt.StorageError` for storage failures.

    Example:
        >>> import numpy as np, cloudckpt
        >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(2)), "memory://doc-cp-run", 3)
        >>> _ = m.save(); _ = m.save()
        >>> r = cloudckpt.copy("memory://doc-cp-run", "memory://doc-cp-copy")
        >>> [u.rsplit("/", 1)[1] for u in r.copied], cloudckpt.latest_checkpoint("memory://doc-cp-copy")
        (['ckpt-1', 'ckpt-2'], 'memory://doc-cp-copy/ckpt-2')
    """
    t0 = time.perf_counter()
    s = open_storage(src, src_storage_options, max_concurrency=max_concurrency)
    d = open_storage(dst, dst_storage_options, max_concurrency=max_concurrency)
    if _on_open is not None:
        _on_open(s, d)
    s0, d0 = s.stats.requests, d.stats.requests
    if verify_existing is None:
        verify_existing = not d.capabilities.remote
    plan: _DirectoryPlan | None = None
    if s.exists(MANIFEST_KEY):
        d = _into_directory(s, d, str(dst))
        report = CopyReport(s.url, d.url, "checkpoint")
        jobs = _plan_one(s, d, report)
    else:
        report = CopyReport(s.url, d.url, "directory")
        plan = _plan_directory(s, d, report)
        jobs = plan.jobs
    _run_jobs(jobs, report, progress, ByteBudget(buffer_bytes), verify_existing, max(1, min(buffer_bytes, 64 << 20)))
    if plan is not None and (plan.src_state is not None or plan.src_has_state):
        _write_state_file(s, d, plan, report)
    report.seconds = time.perf_counter() - t0
    report.src_requests = s.stats.requests - s0
    report.dst_requests = d.stats.requests - d0
    log.info(
        "copied %s to %s: %d checkpoints committed, %d already there, %d objects (%d bytes) sent, "
        "%d (%d bytes) copied inside the destination, %d found at the destination, %.3f s",
        s.url,
        d.url,
        len(report.copied),
        len(report.skipped),
        report.objects_copied,
        report.bytes_copied,
        report.objects_deduplicated,
        report.bytes_deduplicated,
        report.objects_present,
        report.seconds,
    )
    return report


def _plan_one(s: Storage, d: Storage, report: CopyReport) -> list[_Job]:
    """The copy of the one checkpoint ``s`` to ``d`` (nothing if it is there already)."""
    number = parse_name(d.url.rstrip("/").rsplit("/", 1)[-1])
    claims = _dst_claims(d.parent()) if number else []
    job = _plan_checkpoint(
        s,
        d,
        dst_entry=None,
        dst_known=False,
        number=number[1] if number else None,
        claims=claims,
        preserved=False,
        report=report,
    )
    if job is None:
        return []
    job.base = _newest_beside(d)
    return [job]


@dataclass
class _DirectoryPlan:
    """What a copy of a directory does: the jobs, and what rebuilding the state file needs."""

    jobs: list[_Job]
    src_entries: list[catalog.Entry]
    src_state: CheckpointState | None
    src_has_state: bool
    dst_view: directory_model.View


def _plan_directory(s: Storage, d: Storage, report: CopyReport) -> _DirectoryPlan:
    """The copies of every committed, unfenced checkpoint of the directory ``s``
    into ``d``; what is not copied, and why, goes to ``report.warnings``."""
    src_files, _ = s.list_dir()
    src_view = directory_model.read_view(s)
    if not any(e.status == "committed" for e in src_view.entries):
        raise CheckpointNotFoundError(
            f"nothing to copy at {s.url}: no {MANIFEST_KEY} there and no committed <name>-<N> checkpoint below it"
        )
    src_fenced = {e.name for e in src_view.fenced}
    src_entries = []
    for e in src_view.entries:
        url = s.url_for(e.name)
        if e.name in src_fenced:
            report.warnings.append(f"not copied: {url} is fenced (committed by a manager that had lost the directory)")
        elif e.status == "committed":
            src_entries.append(e)
        elif e.status == "partial":
            report.warnings.append(f"not copied: {url} has no manifest (a save in progress or a crashed one)")
        else:
            report.warnings.append(f"not copied: {url} is {e.status}: {e.error}")
    src_state = read_state_file(s) if STATE_KEY in src_files else None
    dst_view = directory_model.read_view(d)
    by_name = {e.name: e for e in dst_view.entries}
    jobs = []
    for e in src_entries:
        try:
            job = _plan_checkpoint(
                s.child(e.name),
                d.child(e.name),
                dst_entry=by_name.get(e.name),
                dst_known=True,
                number=e.number,
                claims=dst_view.claims,
                preserved=e.preserved,
                report=report,
            )
        except CheckpointNotFoundError:
            report.vanished.append(s.url_for(e.name))
            continue
        if job is not None:
            jobs.append(job)
    if jobs and dst_view.valid and d.can_copy_from(d):
        jobs[0].base = d.child(dst_view.valid[-1].name)  # the newest checkpoint already at the destination
    return _DirectoryPlan(jobs, src_entries, src_state, STATE_KEY in src_files, dst_view)


def _run_jobs(
    jobs: list[_Job],
    report: CopyReport,
    progress: Progress | None,
    budget: ByteBudget,
    verify_existing: bool,
    piece: int,
) -> None:
    """Copy and commit each planned checkpoint in turn; one deleted at the source meanwhile is skipped.

    Each copy may copy objects inside the destination from the checkpoint
    committed just before it (or from its job's ``base``, one committed there before this call)."""
    total = sum(sum(int(o["size"]) for o in j.manifest["objects"]) + len(j.raw) for j in jobs)
    counter = _Counter(total, progress)
    if progress is not None:
        progress(0, total)
    base: BaseObjects | None = None
    for job in jobs:
        if job.base is not None:
            base = open_base(job.dst, job.base)
        try:
            _run_job(job, base, report, counter, budget, verify_existing, piece)
        except _Vanished:
            if report.kind == "checkpoint":
                raise CheckpointNotFoundError(
                    f"{job.src.url} was deleted while it was being copied; nothing was committed at {job.dst.url}"
                ) from None
            log.warning("copy: %s was deleted during the copy; not copied", job.src.url)
            report.vanished.append(job.src.url)
            continue
        if job.dst.can_copy_from(job.dst):
            base = open_base(job.dst, job.dst)  # what the next checkpoint may copy: this one, just committed


def _write_state_file(s: Storage, d: Storage, plan: _DirectoryPlan, report: CopyReport) -> None:
    """Rebuild the destination's state file from the checkpoints now committed there (if it changed)."""
    vanished = set(report.vanished)
    done_names = {e.name for e in plan.src_entries if s.url_for(e.name) not in vanished}
    rows: dict[str, catalog.Entry] = {e.name: e for e in plan.dst_view.valid}
    for e in plan.src_entries:
        if e.name in done_names:
            rows[e.name] = e
    state = _state_for(plan.src_state, list(rows.values()), plan.dst_view.claims)
    if state is None:
        return
    text = format_state(state).encode()
    try:
        current = d.read(STATE_KEY)
    except ObjectNotFoundError:
        current = None
    if current is None or _parse_or_none(current) != state:
        d.write(STATE_KEY, text, atomic=True)
    report.state_file = d.url_for(STATE_KEY)


def _parse_or_none(data: bytes) -> CheckpointState | None:
    try:
        return parse_state(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
