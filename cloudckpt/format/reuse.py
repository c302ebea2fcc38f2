"""Incremental saves: placing an object a previous checkpoint already holds without sending its bytes.

A save given a *base* (a committed checkpoint of the same store) computes
every object's crc32c and content hash (XXH3-128) as it always does, and
looks the pair (size, hash) up among the base's objects
(:class:`BaseObjects`). On a match the object is placed by a copy inside
the store (S3 ``CopyObject``, GCS ``rewrite``, a hard link on local disk:
:meth:`~cloudckpt.storage.Storage.copy_from`) instead of a write, so the new
checkpoint is whole: deleting the base later never affects it, and it reads
like any other checkpoint, with zarr-python alone too.

Nothing of the base is trusted blindly:

* the base's manifest is parsed and checked like any other; a base that
  cannot be read (missing, damaged, of an older format without hashes, on
  another store) makes the save write everything
  (:func:`cloudckpt.layout.incremental.open_base`);
* an object is copied only if the base recorded the same crc32c as the
  bytes in memory;
* where the store reports the crc32c of the copy (S3, GCS), it must equal
  the recorded one, else the copy is replaced by the bytes and a warning
  names the damaged source; where it does not (local disk, memory), the
  copy's size is checked, and the crc32c of every byte at load time;
* a source deleted while the save runs (retention, ``rm``) is written instead.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage("memory://doc-reuse")
    >>> first = ObjectSink(s.child("ckpt-1"), None).put("d1/c/0", [b"frozen bytes"])
    >>> base = BaseObjects(s.child("ckpt-1"), {(first["size"], first["xxh3"]): (first["key"], first["crc32c"])})
    >>> sink = ObjectSink(s.child("ckpt-2"), base)
    >>> _ = sink.put("d2/c/0", [b"frozen bytes"]); sink.copied_bytes, s.read("ckpt-2/d2/c/0")
    (12, b'frozen bytes')
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from cloudckpt.errors import ObjectNotFoundError, StorageError
from cloudckpt.format.checksum import CONTENT_HASH_ALGORITHM, checksums_many, content_hash_many, crc32c_many, crc32c_of
from cloudckpt.storage import Storage

__all__ = ["BaseObjects", "ObjectSink", "WrittenObject", "copy_verified", "content_hashes"]

log = logging.getLogger("cloudckpt")


class WrittenObject(TypedDict):
    """An object's manifest entry as a save places it, with its content hash
    (``xxh3``), which :func:`cloudckpt.format.manifest.build_manifest` moves to
    the manifest's ``content_hashes``.

    Example:
        >>> WrittenObject(key="d/c/0", size=3, crc32c=7, xxh3="ab" * 16)["size"]
        3
    """

    key: str
    size: int
    crc32c: int
    xxh3: str


@dataclass
class BaseObjects:
    """The objects of a committed checkpoint (the base) that a save may copy, by content.

    ``storage``: the base checkpoint's directory; ``by_content``: ``(size,
    xxh3) -> (key, crc32c)`` of its objects; ``committed_at``: when its
    manifest was written, where the store says (local disk): an object
    written after it was changed after the commit, and is not copied.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> b = BaseObjects.from_manifest(open_storage("memory://doc-base"), {
        ...     "objects": [{"key": "d/c/0", "size": 3, "crc32c": 7}],
        ...     "content_hashes": {"algorithm": "xxh3-128", "objects": ["ab" * 16]}})
        >>> b.by_content[(3, "ab" * 16)]
        ('d/c/0', 7)
    """

    storage: Storage
    by_content: dict[tuple[int, str], tuple[str, int]] = field(default_factory=dict)
    committed_at: float | None = None

    @classmethod
    def from_manifest(cls, storage: Storage, manifest: Mapping[str, Any], committed_at: float | None = None) -> BaseObjects:
        """The index of a parsed manifest's objects that have a content hash (see the class example)."""
        index: dict[tuple[int, str], tuple[str, int]] = {}
        for o, digest in zip(manifest.get("objects") or [], content_hashes(manifest), strict=True):
            if digest is not None:
                index.setdefault((int(o["size"]), digest), (str(o["key"]), int(o["crc32c"])))
        return cls(storage, index, committed_at)


@dataclass
class ObjectSink:
    """Puts the objects of one save: each is copied from the base when it
    holds the same bytes, else written; returns its manifest entry, and
    counts the bytes it copied. Without a base the crc32c and the content hash
    are computed in one pass; with one, the content hash first, and the
    crc32c only of an object that is written (a copied one takes the crc32c
    the base recorded for the same bytes, which the copy is checked against).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> sink = ObjectSink(open_storage("memory://doc-sink"), None)
        >>> entry = sink.put("d/c/0", [b"abc"])
        >>> entry["size"], sink.copied_bytes
        (3, 0)
    """

    storage: Storage
    base: BaseObjects | None
    copied_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def put(self, key: str, buffers: Sequence[Any], *, reuse: bool = True) -> WrittenObject:
        """Place the object ``key`` holding ``buffers`` back to back (see the
        class example); ``reuse=False`` always writes it (the small zarr
        documents: a copy costs a request as a write does)."""
        size = sum(memoryview(b).nbytes for b in buffers)
        base = self.base if reuse else None
        if base is None or not base.by_content:
            crc, digest = checksums_many(buffers)  # both in one pass
            self.storage.write(key, buffers)
            return {"key": key, "size": size, "crc32c": crc, "xxh3": digest}
        # the content hash first (twice as fast as the crc32c): an object the base holds takes
        # the crc32c the base's manifest recorded for the same bytes, and the store checks the copy by it
        digest = content_hash_many(buffers)
        hit = base.by_content.get((size, digest))
        if hit is not None and self._copied(key, size, hit[1], digest):
            return {"key": key, "size": size, "crc32c": hit[1], "xxh3": digest}
        crc = crc32c_many(buffers)
        self.storage.write(key, buffers)
        return {"key": key, "size": size, "crc32c": crc, "xxh3": digest}

    def _copied(self, key: str, size: int, crc: int, digest: str) -> bool:
        assert self.base is not None
        if not copy_verified(self.storage, self.base, key, size, crc, digest):
            return False
        with self._lock:
            self.copied_bytes += size
        return True


def content_hashes(manifest: Mapping[str, Any]) -> list[str | None]:
    """The content hash of each of a parsed manifest's objects, in order;
    None for all where the manifest records none this release can use (an
    earlier release's, another algorithm, a list that does not match).

    Example:
        >>> content_hashes({"objects": [{}, {}], "content_hashes": {"algorithm": "xxh3-128", "objects": ["ab" * 16, "cd" * 16]}})[1]
        'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd'
        >>> content_hashes({"objects": [{}], "content_hashes": {"algorithm": "blake3", "objects": ["ab" * 32]}})
        [None]
    """
    objects = manifest.get("objects") or []
    table = manifest.get("content_hashes") or {}
    hashes = table.get("objects")
    if table.get("algorithm") != CONTENT_HASH_ALGORITHM or not isinstance(hashes, list) or len(hashes) != len(objects):
        return [None] * len(objects)
    return [h if isinstance(h, str) and _HEX32.fullmatch(h) else None for h in hashes]


_HEX32 = re.compile("[0-9a-f]{32}")


def copy_verified(storage: Storage, base: BaseObjects, key: str, size: int, crc: int, digest: str) -> bool:
    """Place the object ``key`` of ``storage`` (``size`` bytes with this
    crc32c and content hash) by a copy of the base's object with the same
    content, if it has one; whether it did. The copy is checked: the
    crc32c the store reports (S3, GCS, memory://), else (local disk) the
    copy's size and that its source was not written after the base's commit
    (the crc32c of its bytes is checked when it is read). A remote store
    that reports no crc32c, or refuses a copy, ends the copies from this base
    for the save (logged once at WARNING); a failed check removes it and
    logs a warning naming the damaged source, and a source that is gone is
    logged: either way False, and the caller writes the bytes.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> s = open_storage("memory://doc-copy-verified")
        >>> s.write("a/x", b"abc")
        >>> from cloudckpt.format.checksum import checksums_many
        >>> crc, digest = checksums_many([b"abc"])
        >>> base = BaseObjects(s, {(3, digest): ("a/x", crc)})
        >>> copy_verified(s, base, "b/x", 3, crc, digest), s.read("b/x")
        (True, b'abc')
        >>> copy_verified(s, base, "b/y", 3, crc, "0" * 32)   # no object with this content
        False
    """
    hit = base.by_content.get((size, digest))
    if hit is None or hit[1] != crc:
        return False
    src_key = hit[0]
    src_url = base.storage.url_for(src_key)
    try:
        reported = storage.copy_from(base.storage, src_key, key, size=size)
        if reported is None and storage.capabilities.remote:
            # a remote store that reports no CRC-32C of the copy (an S3-compatible store without
            # checksums): nothing checks the copy short of reading it back; write instead
            _stop(base, f"{storage.backend_name} reports no crc32c of a copy to check it by")
            storage.delete([key])
            return False
        problem = _local_copy_problem(storage, base, key, src_key, size, crc) if reported is None else (
            None if reported == crc else f"the store reports crc32c {reported:08x} for the copy, the base recorded {crc:08x}"
        )
    except ObjectNotFoundError:
        log.debug("incremental copy: %s is gone (deleted meanwhile); writing %s instead", src_url, storage.url_for(key))
        storage.delete([key])
        return False
    except NotImplementedError as exc:  # (an object the store cannot copy in one request)
        log.debug("incremental copy: %s", exc)
        return False
    except StorageError as exc:  # (a store that refuses the copy: permissions, archived objects, ...)
        _stop(base, f"a copy failed: {exc}")
        return False
    if problem is not None:
        log.warning("incremental copy: %s is damaged (%s); writing %s from the original bytes instead", src_url, problem, storage.url_for(key))
        storage.delete([key])  # (a hard link shares the damaged file: never write into it)
    return problem is None


def _local_copy_problem(storage: Storage, base: BaseObjects, key: str, src_key: str, size: int, crc: int) -> str | None:
    """What is wrong with a copy on a store that reports no checksum (local disk), or None:
    the copy must hold ``size`` bytes, and its source must not have been written after the base committed.
    A source written within a timestamp clock tick of the base's manifest (:data:`_MTIME_TICK`) cannot be
    told apart by time: the copy is read back and its crc32c checked."""
    seen, _ = storage.stat(key)
    _, written = base.storage.stat(src_key)
    if seen != size:
        return f"the copy holds {seen} bytes, the base recorded {size}"
    if written is None or base.committed_at is None:
        return None
    if written > base.committed_at:
        return "it was written after the base was committed"
    if written > base.committed_at - _MTIME_TICK:
        got = crc32c_of(storage.read(key))
        if got != crc:
            return f"its crc32c is {got:08x}, the base recorded {crc:08x}"
    return None


#: Seconds within which two writes may get the same modification time: the kernel stamps files from a coarse
#: clock (one tick is 1-10 ms), so a change right after the base's commit can carry the commit's time.
_MTIME_TICK = 0.05


def _stop(base: BaseObjects, why: str) -> None:
    """No more copies from ``base`` in this save (logged once): every later object is written."""
    if base.by_content:
        log.warning("incremental copy from %s stopped, the objects are written instead: %s", base.storage.url, why)
        base.by_content.clear()
