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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudckpt.errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    ObjectNotFoundError,
)
from cloudckpt.format.manifest import header_of, max_manifest_bytes, parse_manifest
from cloudckpt.layout import catalog, ownership
from cloudckpt.layout import directory as directory_model
from cloudckpt.layout.commit import preserve, read_preserved
from cloudckpt.layout.names import MANIFEST_KEY, STATE_KEY, parse_name
from cloudckpt.layout.statefile import CheckpointState, format_state, parse_state, read_state_file
from cloudckpt.storage import Storage, open_storage
from cloudckpt.tools.copy_transfer import CopyJob, CopyReport, Progress, newest_beside, run_jobs, same_manifest
from cloudckpt.tools.verify import BUFFER_BYTES, ByteBudget

__all__ = ["copy", "CopyReport"]

log = logging.getLogger("cloudckpt")



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
) -> CopyJob | None:
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
        if not same_manifest(existing, raw):
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
    return CopyJob(src, dst, raw, manifest, present, marker)


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
    run_jobs(jobs, report, progress, ByteBudget(buffer_bytes), verify_existing, max(1, min(buffer_bytes, 64 << 20)))
    if plan is not None and (plan.src_state is not None or plan.src_has_state):
        _write_state_file(s, d, plan, report)
    report.seconds = time.perf_counter() - t0
    report.src_requests = s.stats.requests - s0
    report.dst_requests = d.stats.requests - d0
    _log_report(report)
    return report


def _log_report(report: CopyReport) -> None:
    log.info(
        "copied %s to %s: %d checkpoints committed, %d already there, %d objects (%d bytes) sent, "
        "%d (%d bytes) copied inside the destination, %d found at the destination, %.3f s",
        report.src,
        report.dst,
        len(report.copied),
        len(report.skipped),
        report.objects_copied,
        report.bytes_copied,
        report.objects_deduplicated,
        report.bytes_deduplicated,
        report.objects_present,
        report.seconds,
    )


def _plan_one(s: Storage, d: Storage, report: CopyReport) -> list[CopyJob]:
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
    job.base = newest_beside(d)
    return [job]


@dataclass
class _DirectoryPlan:
    """What a copy of a directory does: the jobs, and what rebuilding the state file needs."""

    jobs: list[CopyJob]
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
