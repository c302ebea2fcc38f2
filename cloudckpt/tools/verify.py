"""Re-read a checkpoint (or a directory of them) and check every object against its manifest.

:func:`verify` reads every object a checkpoint's manifest lists — tensor
chunks, the pack of small tensors, the zarr ``zarr.json`` documents — and
checks its size and crc32c. Nothing is loaded into arrays and nothing is
written. For a directory it verifies every committed checkpoint and checks
that the ``checkpoint`` state file agrees with the manifests.

A damaged object is reported by URL with what is wrong with it (missing,
truncated, too long, crc32c mismatch); a damaged manifest is reported by
the manifest's URL. A state file that disagrees with the manifests is a
*warning*, not damage: it is a cache that a manager rebuilds, and a crash
between a commit and the state-file update leaves it stale legitimately.

Memory stays bounded: objects are read at most ``buffer_bytes`` at a time
over all concurrent requests, and an object larger than ``piece_bytes`` is
read in ranged pieces with an incremental crc32c.

Example:
    >>> import numpy as np, cloudckpt
    >>> url = cloudckpt.save("memory://doc-verify/ckpt-1", {"w": np.arange(4.0)})
    >>> report = cloudckpt.verify(url)
    >>> report.ok, report.objects_checked > 0, report.damaged
    (True, True, [])
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cloudckpt.errors import CheckpointNotFoundError, CorruptCheckpointError, ObjectNotFoundError
from cloudckpt.format.budget import ByteBudget
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.format.manifest import MANIFEST_KEY, max_manifest_bytes, parse_manifest
from cloudckpt.layout import directory as directory_model
from cloudckpt.layout.names import STATE_KEY
from cloudckpt.layout.statefile import parse_state
from cloudckpt.storage import Storage, open_storage

__all__ = ["verify", "VerifyReport", "CheckpointReport", "Damage"]

log = logging.getLogger("cloudckpt")

MiB = 1 << 20
#: objects above this size are read in ranged pieces of this size
PIECE_BYTES = 64 * MiB
#: the most object bytes held in memory at once, over all concurrent reads
BUFFER_BYTES = 128 * MiB


@dataclass
class Damage:
    """One damaged object: its full URL and what is wrong with it.

    Example:
        >>> Damage("s3://b/run/ckpt-1/manifest.json", "missing").url
        's3://b/run/ckpt-1/manifest.json'
    """

    url: str
    problem: str


@dataclass
class CheckpointReport:
    """The verification of one checkpoint.

    ``status`` is ``ok``, ``damaged`` (an object or the manifest is bad) or
    ``skipped`` (written by a newer cloudckpt: not judged).

    Example:
        >>> CheckpointReport("memory://x/ckpt-1").ok
        True
    """

    url: str
    status: str = "ok"
    objects: int = 0
    bytes: int = 0
    damaged: list[Damage] = field(default_factory=list)
    note: str | None = None

    @property
    def ok(self) -> bool:
        """Whether nothing is damaged (a skipped checkpoint is not damage)."""
        return not self.damaged


@dataclass
class VerifyReport:
    """What :func:`verify` found.

    ``ok`` is False iff some object or manifest is damaged. ``warnings``
    are findings that lose nothing (a stale state file, a partial save);
    ``damaged`` lists every damaged object of every checkpoint by URL.

    Example:
        >>> VerifyReport("memory://x", "checkpoint").ok
        True
    """

    url: str
    kind: str  # "checkpoint" | "directory"
    checkpoints: list[CheckpointReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    requests: int = 0

    @property
    def damaged(self) -> list[Damage]:
        """Every damaged object, over all checkpoints."""
        return [d for c in self.checkpoints for d in c.damaged]

    @property
    def ok(self) -> bool:
        """True iff nothing is damaged."""
        return all(c.ok for c in self.checkpoints)

    @property
    def objects_checked(self) -> int:
        """How many objects were read and checked (manifests included)."""
        return sum(c.objects for c in self.checkpoints)

    @property
    def bytes_checked(self) -> int:
        """How many bytes were read and checked."""
        return sum(c.bytes for c in self.checkpoints)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``cloudckpt verify --json`` prints).

        Example:
            >>> VerifyReport("memory://x", "checkpoint").to_dict()["ok"]
            True
        """
        return {
            "url": self.url,
            "kind": self.kind,
            "ok": self.ok,
            "objects_checked": self.objects_checked,
            "bytes_checked": self.bytes_checked,
            "damaged": [asdict(d) for d in self.damaged],
            "checkpoints": [{**asdict(c), "ok": c.ok} for c in self.checkpoints],
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
        }


def read_checked(
    storage: Storage,
    obj: Mapping[str, Any],
    *,
    piece_bytes: int = PIECE_BYTES,
    keep: bool = True,
) -> tuple[bytes | None, str | None]:
    """Read the object ``obj`` (a manifest ``objects`` entry) and check it.

    Returns ``(data, None)`` if size and crc32c match (``data`` is None when
    ``keep`` is False or the object is read in pieces), else
    ``(None, problem)``. Objects above ``piece_bytes`` are read in ranged
    pieces (never whole in memory) and then ``keep`` is ignored. Storage
    errors other than a missing object propagate.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> s = open_storage("memory://doc-read-checked"); s.write("k", b"abc")
        >>> read_checked(s, {"key": "k", "size": 3, "crc32c": crc32c_of(b"abc")})
        (b'abc', None)
        >>> read_checked(s, {"key": "k", "size": 3, "crc32c": 0})[1]
        'crc32c mismatch (expected 0, got 910901175)'
    """
    key, size, want = obj["key"], int(obj["size"]), int(obj["crc32c"])
    try:
        if size <= piece_bytes:
            data = storage.read(key)
            if len(data) != size:
                return None, _size_problem(len(data), size)
            got = crc32c_of(data)
            if got != want:
                return None, f"crc32c mismatch (expected {want}, got {got})"
            return (data if keep else None), None
        actual = storage.size(key)
        if actual != size:
            return None, _size_problem(actual, size)
        crc = 0
        pos = 0
        while pos < size:
            end = min(size, pos + piece_bytes)
            part = storage.read(key, pos, end)
            if len(part) != end - pos:
                return None, _size_problem(pos + len(part), size)
            crc = crc32c_of(part, crc)
            pos = end
        if crc != want:
            return None, f"crc32c mismatch (expected {want}, got {crc})"
        return None, None
    except ObjectNotFoundError:
        return None, "missing"


def _size_problem(got: int, want: int) -> str:
    return f"truncated: {got} bytes, expected {want}" if got < want else f"too long: {got} bytes, expected {want}"


def verify_checkpoint(
    storage: Storage,
    *,
    buffer_bytes: int = BUFFER_BYTES,
    piece_bytes: int = PIECE_BYTES,
    on_object: Callable[[int], None] | None = None,
) -> CheckpointReport:
    """Verify the checkpoint in the directory ``storage`` (see :func:`verify`).

    Raises :class:`CheckpointNotFoundError` if it has no manifest and
    :class:`~cloudckpt.FormatVersionError` if it was written by a newer
    cloudckpt. ``on_object(nbytes)`` is called after each object.
    """
    report = CheckpointReport(storage.url)
    murl = storage.url_for(MANIFEST_KEY)
    try:
        raw = storage.read(MANIFEST_KEY, max_bytes=max_manifest_bytes() + 1)
    except ObjectNotFoundError:
        raise CheckpointNotFoundError(f"no checkpoint at {storage.url}: {murl} does not exist") from None
    report.objects, report.bytes = 1, len(raw)
    try:
        manifest = parse_manifest(raw, murl)
    except CorruptCheckpointError as exc:
        report.status = "damaged"
        report.damaged.append(Damage(murl, str(exc)))
        return report
    budget = ByteBudget(buffer_bytes)
    lock = threading.Lock()

    def check(obj: dict[str, Any]) -> None:
        n = budget.acquire(min(int(obj["size"]), piece_bytes))
        try:
            _, problem = read_checked(storage, obj, piece_bytes=piece_bytes, keep=False)
        finally:
            budget.release(n)
        with lock:
            report.objects += 1
            report.bytes += int(obj["size"])
            if problem is not None:
                report.damaged.append(Damage(storage.url_for(obj["key"]), problem))
        if on_object is not None:
            on_object(int(obj["size"]))

    storage.map(check, manifest["objects"])
    report.damaged.sort(key=lambda d: d.url)
    if report.damaged:
        report.status = "damaged"
    return report


def _check_state_file(storage: Storage, view: directory_model.View, files: Mapping[str, int]) -> list[str]:
    """Warnings about the state file of a directory as :func:`cloudckpt.layout.directory.read_view` sees it."""
    url = storage.url_for(STATE_KEY)
    valid = view.valid
    if STATE_KEY not in files:
        return [f"state file {url} is missing (a manager rebuilds it from the manifests)"] if valid else []
    try:
        state = parse_state(storage.read(STATE_KEY).decode("utf-8"))
    except ObjectNotFoundError:
        return []
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"state file {url} does not parse ({exc}); a manager rebuilds it from the manifests"]
    out = []
    names = {e.name for e in valid}
    if view.latest is not None:
        latest = view.latest.name
        if _base(state.model_checkpoint_path) != latest:
            out.append(
                f"state file {url} names {state.model_checkpoint_path!r} as the latest checkpoint, "
                f"the manifests say {latest!r} (stale: a manager rebuilds it)"
            )
    elif state.model_checkpoint_path:
        out.append(f"state file {url} names {state.model_checkpoint_path!r} but there is no committed checkpoint")
    for p in state.all_model_checkpoint_paths:
        if _base(p) not in names:
            out.append(f"state file {url} lists {p!r}, which is not a committed checkpoint")
    return out


def _base(path: str | None) -> str:
    return (path or "").rstrip("/").rsplit("/", 1)[-1]


def verify(
    path: str,
    *,
    storage_options: dict[str, Any] | None = None,
    buffer_bytes: int = BUFFER_BYTES,
    on_object: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Re-read every object of a checkpoint, or of every checkpoint in a directory.

    ``path`` is a checkpoint (it holds ``manifest.json``) or a directory of
    ``<name>-<N>`` checkpoints. Each object the manifest lists (chunks, the
    pack, the ``zarr.json`` documents) is read and its size and crc32c
    checked; the manifest itself is parsed and validated. For a directory,
    every committed checkpoint is verified — fenced ones too (they are
    reported as a warning) — and the ``checkpoint`` state file is checked
    against the manifests (disagreement is a warning). Partial saves are
    warnings, not damage. At most ``buffer_bytes`` of object data are held
    at once. ``on_object(nbytes)`` is called after each object is checked.

    Raises :class:`~cloudckpt.CheckpointNotFoundError` when there is no
    checkpoint and no directory of checkpoints at ``path``; storage failures
    (permissions, network) raise :class:`~cloudckpt.StorageError`.

    Example:
        >>> import numpy as np, cloudckpt
        >>> from cloudckpt.storage import open_storage
        >>> url = cloudckpt.save("memory://doc-verify2/ckpt-1", {"w": np.arange(4.0)})
        >>> m = cloudckpt.info(url)
        >>> chunk = url + "/" + m.data_url.rsplit("/", 1)[1] + "/_pack/c/0"
        >>> s = open_storage(url); key = chunk[len(url) + 1:]
        >>> s.write(key, b"\\xff" + s.read(key)[1:])
        >>> r = cloudckpt.verify("memory://doc-verify2")
        >>> r.ok, [d.url == chunk for d in r.damaged]
        (False, [True])
    """
    t0 = time.perf_counter()
    storage = open_storage(path, storage_options)
    requests0 = storage.stats.requests
    if storage.exists(MANIFEST_KEY):
        report = VerifyReport(storage.url, "checkpoint")
        report.checkpoints.append(verify_checkpoint(storage, buffer_bytes=buffer_bytes, on_object=on_object))
    else:
        report = _verify_directory(storage, buffer_bytes, on_object)
    report.seconds = time.perf_counter() - t0
    report.requests = storage.stats.requests - requests0
    level = logging.INFO if report.ok else logging.ERROR
    log.log(
        level,
        "verified %s: %d objects, %d bytes, %d damaged, %.3f s",
        storage.url,
        report.objects_checked,
        report.bytes_checked,
        len(report.damaged),
        report.seconds,
    )
    return report


def _verify_directory(storage: Storage, buffer_bytes: int, on_object: Callable[[int], None] | None) -> VerifyReport:
    report = VerifyReport(storage.url, "directory")
    files, _ = storage.list_dir()
    view = directory_model.read_view(storage)
    entries = view.entries
    if not entries and STATE_KEY not in files:
        raise CheckpointNotFoundError(
            f"no checkpoint at {storage.url}: neither {storage.url_for(MANIFEST_KEY)} nor any "
            "<name>-<N> checkpoint directory exists"
        )
    fenced = {e.name for e in view.fenced}
    for e in entries:
        sub = storage.child(e.name)
        if e.status == "committed":
            if e.name in fenced:
                report.warnings.append(
                    f"{sub.url} was committed by a manager that had lost the directory (fenced): "
                    "every reader ignores it and `cloudckpt gc` removes it"
                )
            try:
                report.checkpoints.append(verify_checkpoint(sub, buffer_bytes=buffer_bytes, on_object=on_object))
            except CheckpointNotFoundError:
                report.warnings.append(f"{sub.url} was deleted while it was being verified")
        elif e.status == "corrupt":
            murl = sub.url_for(MANIFEST_KEY)
            report.checkpoints.append(
                CheckpointReport(sub.url, "damaged", 1, 0, [Damage(murl, e.error or "manifest does not parse")])
            )
        elif e.status == "newer":
            report.checkpoints.append(CheckpointReport(sub.url, "skipped", note=e.error))
            report.warnings.append(f"{sub.url} was written by a newer cloudckpt; not verified")
        else:
            report.warnings.append(
                f"{sub.url} has no manifest: a save in progress or a crashed one (not a checkpoint; "
                "`cloudckpt gc` collects crashed saves)"
            )
    report.warnings.extend(_check_state_file(storage, view, files))
    return report
