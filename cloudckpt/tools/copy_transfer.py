"""Moving the objects of the checkpoints of a copy, and the report of what moved (for :mod:`cloudckpt.tools.copy`).

Each checkpoint of a copy is a :class:`CopyJob`; :func:`run_jobs` runs them
in order, oldest first, each by an :class:`ObjectMover`: an object already
at the destination (an interrupted copy) is kept, one that a checkpoint
committed at the destination holds (same size, content hash and crc32c) is
copied inside the destination store and checked
(:func:`cloudckpt.format.reuse.copy_verified`), and any other is read from
the source, checked against its crc32c and written. The manifest comes
last, create-only. :class:`CopyReport` counts each kind.

Example:
    >>> import numpy as np, cloudckpt
    >>> _ = cloudckpt.save("memory://doc-transfer/a/ckpt-1", {"w": np.ones(3)})
    >>> r = cloudckpt.copy("memory://doc-transfer/a/ckpt-1", "memory://doc-transfer/b/ckpt-1")
    >>> isinstance(r, CopyReport), r.objects_copied > 0
    (True, True)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cloudckpt.errors import CheckpointError, CheckpointExistsError, CheckpointNotFoundError, CorruptCheckpointError
from cloudckpt.format.manifest import parse_manifest
from cloudckpt.format.reuse import BaseObjects, content_hashes, copy_verified
from cloudckpt.layout.commit import commit, discard_if_uncommitted, preserve
from cloudckpt.layout.incremental import open_base
from cloudckpt.layout.names import MANIFEST_KEY, parse_name
from cloudckpt.storage import Storage
from cloudckpt.tools.verify import ByteBudget, read_checked

__all__ = ["CopyReport", "CopyJob", "SourceVanished", "ProgressCounter", "ObjectMover", "newest_beside", "run_jobs", "same_manifest", "Progress"]

log = logging.getLogger("cloudckpt")

#: ``progress(bytes_done, bytes_total)``, called as objects complete.
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


class SourceVanished(Exception):
    """The source checkpoint was deleted during the copy.

    Example:
        >>> str(SourceVanished("memory://a/ckpt-1"))
        'memory://a/ckpt-1'
    """


@dataclass
class CopyJob:
    """One checkpoint to copy: source and destination, the source's manifest
    (raw and parsed), the objects already at the destination, and the marker
    and base checkpoint, if any.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> s = open_storage("memory://doc-copy-job")
        >>> CopyJob(s.child("a"), s.child("b"), b"{}", {"objects": []}, {}).marker is None
        True
    """

    src: Storage
    dst: Storage
    raw: bytes
    manifest: dict[str, Any]
    present: dict[str, int]
    marker: bytes | None = None  # preserved.json of the source, to copy after the commit
    # a checkpoint committed at the destination before this call whose objects this copy
    # (and the ones after it) may copy inside the destination; None: the previous job's
    base: Storage | None = None


class ProgressCounter:
    """Bytes done of a copy, reported to ``progress(done, total)`` one call at a time.

    Example:
        >>> seen = []; c = ProgressCounter(10, lambda d, t: seen.append((d, t))); c.add(4); seen
        [(4, 10)]
    """

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        """``n`` more bytes done."""
        with self.lock:  # one progress call at a time, in order
            self.done += n
            if self.progress is not None:
                self.progress(self.done, self.total)


def newest_beside(d: Storage) -> Storage | None:
    """The newest checkpoint committed in the directory holding the checkpoint
    ``d`` (same name first, then by number), if ``d`` is a ``<name>-<N>``
    checkpoint of such a directory and its store can copy within itself.

    Example:
        >>> import numpy as np, cloudckpt
        >>> from cloudckpt.storage import open_storage
        >>> _ = cloudckpt.save("memory://doc-newest/ckpt-1", {"w": np.ones(2)})
        >>> newest_beside(open_storage("memory://doc-newest/ckpt-2")).url
        'memory://doc-newest/ckpt-1'
    """
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
    for _, x in sorted(found, reverse=True)[:BASE_CANDIDATES]:
        sub = parent.child(x)
        if sub.exists(MANIFEST_KEY):  # (no manifest: a save in progress or a crashed one; try the one before)
            return sub
    return None


BASE_CANDIDATES = 4  # uncommitted checkpoint directories tried past, newest first, for a base


def same_manifest(a: bytes, b: bytes) -> bool:
    """Whether two manifests are the same checkpoint (the same bytes, or the same parsed content).

    Example:
        >>> same_manifest(b"{}", b"{}"), same_manifest(b"{}", b"x")
        (True, False)
    """
    if a == b:
        return True
    try:
        return parse_manifest(a, "a") == parse_manifest(b, "b")
    except CheckpointError:
        return False


@dataclass
class ObjectMover:
    """Copies the objects of one checkpoint (a :class:`CopyJob`) and commits it:
    each object is found at the destination already, copied inside the
    destination from ``base`` (checked), or sent (read from the source,
    crc32c checked, written); then the manifest, create-only.

    Example:
        >>> import numpy as np, cloudckpt
        >>> from cloudckpt.storage import open_storage
        >>> _ = cloudckpt.save("memory://doc-mover/a/ckpt-1", {"w": np.ones(3)})
        >>> s = open_storage("memory://doc-mover")
        >>> raw = s.read("a/ckpt-1/manifest.json")
        >>> from cloudckpt.format.manifest import parse_manifest
        >>> job = CopyJob(s.child("a/ckpt-1"), s.child("b/ckpt-1"), raw, parse_manifest(raw, "x"), {})
        >>> r = CopyReport(job.src.url, job.dst.url, "checkpoint")
        >>> ObjectMover(job, None, r, ProgressCounter(0, None), ByteBudget(1 << 20), False, 1 << 20).run(); r.copied
        ['memory://doc-mover/b/ckpt-1']
    """

    job: CopyJob
    base: BaseObjects | None
    report: CopyReport
    counter: ProgressCounter
    budget: ByteBudget
    verify_existing: bool
    piece_bytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        """Move every object, then commit (see the class example)."""
        job, report = self.job, self.report
        src, dst, manifest = job.src, job.dst, job.manifest
        try:
            dst.map(self._one, list(zip(manifest["objects"], content_hashes(manifest), strict=True)))
            dst.barrier()
        except (SourceVanished, CorruptCheckpointError):
            discard_if_uncommitted(dst, manifest["data"])
            raise
        if not commit(dst, job.raw):  # create-only, after the data
            existing = dst.read(MANIFEST_KEY)
            if not same_manifest(existing, job.raw):
                raise CheckpointExistsError(
                    f"another writer committed a different checkpoint at {dst.url} during the copy; it was not changed"
                )
        report.objects_copied += 1
        report.bytes_copied += len(job.raw)
        self.counter.add(len(job.raw))
        if job.marker is not None:
            preserve(dst, job.marker)
        report.copied.append(dst.url)
        log.info("copy: committed %s at %s (%d objects)", src.url, dst.url, len(manifest["objects"]))

    def _count(self, what: str, size: int) -> None:
        with self.lock:
            setattr(self.report, f"objects_{what}", getattr(self.report, f"objects_{what}") + 1)
            setattr(self.report, f"bytes_{what}", getattr(self.report, f"bytes_{what}") + size)
        self.counter.add(size)

    def _check_at_dst(self, obj: dict[str, Any]) -> str | None:
        """Re-read an object at the destination: its problem, or None if its size and crc32c are right."""
        n = self.budget.acquire(min(int(obj["size"]), self.piece_bytes))
        try:
            return read_checked(self.job.dst, obj, piece_bytes=self.piece_bytes, keep=False)[1]
        finally:
            self.budget.release(n)

    def _from_base(self, obj: dict[str, Any], digest: str | None) -> bool:
        """Place ``obj`` (content hash ``digest``) by a checked copy inside the destination, if the base holds its bytes."""
        base, dst = self.base, self.job.dst
        if base is None or digest is None:
            return False
        key, size, crc = obj["key"], int(obj["size"]), int(obj["crc32c"])
        source = base.by_content.get((size, digest))
        if not copy_verified(dst, base, key, size, crc, digest):
            return False
        if self.verify_existing:
            problem = self._check_at_dst(obj)
            if problem is not None:
                log.warning(
                    "copy: %s at the destination is damaged (its copy %s: %s); sending the object from %s instead",
                    base.storage.url_for(source[0]) if source else "the base's object",
                    dst.url_for(key),
                    problem,
                    self.job.src.url_for(key),
                )
                dst.delete([key])  # (a hard link shares the damaged file: never write into it)
                return False
        return True

    def _one(self, item: tuple[dict[str, Any], str | None]) -> None:
        obj, digest = item
        src, dst = self.job.src, self.job.dst
        key, size = obj["key"], int(obj["size"])
        if self.job.present.get(key) == size:
            problem = self._check_at_dst(obj) if self.verify_existing else None
            if problem is None:
                self._count("present", size)
                return
            log.info("copy: %s at the destination is damaged (%s); copying it again", dst.url_for(key), problem)
            dst.delete([key])  # (it may be a hard link of another checkpoint's object: never write into it)
        if self._from_base(obj, digest):
            self._count("deduplicated", size)
            return
        n = self.budget.acquire(size)
        try:
            data, problem = read_checked(src, obj, piece_bytes=max(self.piece_bytes, size))
            if problem == "missing" and not src.exists(MANIFEST_KEY):
                raise SourceVanished(src.url)
            if problem is not None:
                raise CorruptCheckpointError(
                    f"source object {src.url_for(key)} is damaged: {problem}; the copy of {src.url} was aborted "
                    f"and nothing was committed at {dst.url}"
                )
            assert data is not None
            dst.write(key, data)
            del data
        finally:
            self.budget.release(n)
        self._count("copied", size)


def run_jobs(
    jobs: list[CopyJob],
    report: CopyReport,
    progress: Progress | None,
    budget: ByteBudget,
    verify_existing: bool,
    piece: int,
) -> None:
    """Copy and commit each planned checkpoint in turn; one deleted at the source meanwhile is skipped.

    Each copy may copy objects inside the destination from the checkpoint
    committed just before it (or from its job's ``base``, one committed there before this call).

    Example:
        >>> r = CopyReport("memory://a", "memory://b", "directory")
        >>> run_jobs([], r, None, ByteBudget(1 << 20), False, 1 << 20); r.copied
        []
    """
    total = sum(sum(int(o["size"]) for o in j.manifest["objects"]) + len(j.raw) for j in jobs)
    counter = ProgressCounter(total, progress)
    if progress is not None:
        progress(0, total)
    base: BaseObjects | None = None
    for job in jobs:
        if job.base is not None:
            base = open_base(job.dst, job.base)
        try:
            ObjectMover(job, base, report, counter, budget, verify_existing, piece).run()
        except SourceVanished:
            if report.kind == "checkpoint":
                raise CheckpointNotFoundError(
                    f"{job.src.url} was deleted while it was being copied; nothing was committed at {job.dst.url}"
                ) from None
            log.warning("copy: %s was deleted during the copy; not copied", job.src.url)
            report.vanished.append(job.src.url)
            continue
        if job.dst.can_copy_from(job.dst):
            base = open_base(job.dst, job.dst, job.manifest)  # what the next checkpoint may copy: this one, just committed
