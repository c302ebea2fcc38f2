"""Copies within the store (Storage.copy_from, Backend.copy) on every backend:
the bytes arrive, the source stays, a destination is overwritten, a missing
source is named, the store's CRC-32C is the bytes', the counters count a copy
and no byte written, hooks see the request; on local disk the copy is a hard link."""

from __future__ import annotations

import errno
import os
import uuid

import pytest

import cloudckpt
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.storage import RetryPolicy, open_storage

NO_WAIT = RetryPolicy(attempts=4, base_delay=0, max_delay=0)
#: the backends that copy within the store, and whether the store (or its emulator) reports a CRC-32C
COPIES = {"local": False, "memory": False, "s3": True, "gcs": True, "azure": False}
# Azure: its backend can copy (tested below) but declares no server_copy: it reports no CRC-32C to check a copy by
SERVER_COPY = {"local", "memory", "s3", "gcs"}

DATA = bytes(range(256)) * 37 + b"tail"


@pytest.fixture
def pair(backend):
    """Two storages opened apart on one store: the checkpoint before and the new one."""
    old = open_storage(backend.url("run/ckpt-1"), backend.storage_options, retry=NO_WAIT)
    new = open_storage(backend.url("run/ckpt-2"), backend.storage_options, retry=NO_WAIT)
    return old, new


def _needs_copy(backend):
    if backend.name not in SERVER_COPY:
        pytest.skip(f"{backend.name} has no server-side copy")


def test_capability_is_declared(backend, pair):
    old, new = pair
    assert new.capabilities.server_copy is (backend.name in SERVER_COPY)
    # two storages opened apart on the same endpoint and options are the same store
    assert new.can_copy_from(old) is (backend.name in SERVER_COPY)
    assert new.can_copy_from(new.child("x")) is (backend.name in SERVER_COPY)


def test_copy_round_trip_leaves_the_source(backend, pair):
    _needs_copy(backend)
    old, new = pair
    old.write("data/c/0", DATA)
    crc = new.copy_from(old, "data/c/0", "data/c/0")
    assert new.read("data/c/0") == DATA
    assert old.read("data/c/0") == DATA
    assert new.list_all() == {"data/c/0": len(DATA)}
    if COPIES[backend.name]:
        assert crc is not None  # moto and fake-gcs-server both report it
    if crc is not None:
        assert crc == crc32c_of(DATA)


def test_copy_within_one_storage_and_of_an_empty_object(backend, pair):
    _needs_copy(backend)
    old, _ = pair
    old.write("empty", b"")
    crc = old.copy_from(old, "empty", "sub/empty-copy")
    assert old.read("sub/empty-copy") == b""
    assert crc is None or crc == crc32c_of(b"") == 0


def test_copy_overwrites_the_destination(backend, pair):
    _needs_copy(backend)
    old, new = pair
    old.write("k", b"new bytes")
    new.write("k", b"an older, longer object that is replaced")
    crc = new.copy_from(old, "k", "k")
    assert new.read("k") == b"new bytes" and new.size("k") == 9
    assert crc is None or crc == crc32c_of(b"new bytes")
    # again over the copy itself (on local disk: a link over a link of the same file)
    new.copy_from(old, "k", "k")
    assert new.read("k") == b"new bytes"
    assert new.list_all() == {"k": 9}  # no temp file left behind
    if backend.name == "local":
        assert new.temporaries() == []


def test_missing_source_is_named(backend, pair):
    _needs_copy(backend)
    old, new = pair
    with pytest.raises(cloudckpt.ObjectNotFoundError) as info:
        new.copy_from(old, "no/such", "dst")
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.url == old.url_for("no/such")
    assert old.url_for("no/such") in str(info.value)
    assert info.value.operation == "copy"
    assert not new.exists("dst")


def test_stats_count_copies_not_written_bytes(backend, pair):
    _needs_copy(backend)
    old, new = pair
    old.write("s", DATA)
    before = new.stats.snapshot()
    new.copy_from(old, "s", "s", size=len(DATA))
    after = new.stats.snapshot()
    assert after["copy"] - before.get("copy", 0) == 1
    assert after["bytes_copied"] - before["bytes_copied"] == len(DATA)
    assert after["bytes_written"] == before["bytes_written"]
    assert after["bytes_read"] == before["bytes_read"]


def test_a_hook_sees_the_copy_and_a_transient_fault_is_retried(backend, pair):
    _needs_copy(backend)
    old, new = pair
    old.write("h", b"hooked")
    seen = []
    faults = {"n": 0}

    def hook(op, url):
        seen.append((op, url))
        if op == "copy" and faults["n"] < 2:
            faults["n"] += 1
            raise TimeoutError("copy timed out")

    new.add_hook(hook)
    retries = new.stats.retries
    new.copy_from(old, "h", "h")
    assert seen == [("copy", new.url_for("h"))] * 3
    assert new.stats.retries - retries == 2
    assert new.read("h") == b"hooked"


def test_a_permanent_fault_is_typed(backend, pair):
    _needs_copy(backend)
    old, new = pair
    old.write("p", b"x")

    def deny(op, url):
        if op == "copy":
            raise PermissionError(errno.EACCES, "denied")

    new.add_hook(deny)
    with pytest.raises(cloudckpt.StoragePermissionError):
        new.copy_from(old, "p", "p")
    assert not new.exists("p")


def test_invalid_keys_are_refused_before_any_request(backend, pair):
    old, new = pair
    seen = []
    new.add_hook(lambda op, url: seen.append(op))
    for src, dst in (("../x", "k"), ("k", "/abs"), ("", "k")):
        with pytest.raises(ValueError):
            new.copy_from(old, src, dst)
    assert seen == []


def test_copy_across_stores_is_refused(backend, pair, tmp_path):
    _, new = pair
    other = open_storage(f"memory://copy-other-{uuid.uuid4().hex[:8]}") if backend.name != "memory" else open_storage(str(tmp_path / "d"))
    assert not new.can_copy_from(other) and not other.can_copy_from(new)
    with pytest.raises(NotImplementedError, match="read the object and write its bytes"):
        new.copy_from(other, "k", "k")


def test_memory_and_local_are_different_stores(tmp_path):
    mem = open_storage(f"memory://copy-{uuid.uuid4().hex[:8]}")
    disk = open_storage(str(tmp_path / "disk"))
    disk2 = open_storage(str(tmp_path / "disk2"))
    mem2 = open_storage(f"memory://copy-{uuid.uuid4().hex[:8]}")
    assert disk.can_copy_from(disk2) and mem.can_copy_from(mem2)
    assert not mem.can_copy_from(disk) and not disk.can_copy_from(mem)


def test_object_stores_of_other_endpoints_are_different_stores(object_backend):
    if object_backend.name not in SERVER_COPY:
        pytest.skip(f"{object_backend.name} has no server-side copy")
    opts = dict(object_backend.storage_options)
    here = object_backend.server.endpoint_url
    # the same bucket at another endpoint (nothing listens there: no request is made)
    elsewhere = {k: v.replace(here, "http://127.0.0.1:9") if isinstance(v, str) else v for k, v in opts.items()}
    assert elsewhere != opts
    a = open_storage(object_backend.url("a"), opts)
    assert a.can_copy_from(open_storage(object_backend.url("c"), dict(opts)))
    assert not a.can_copy_from(open_storage(object_backend.url("b"), elsewhere))


# ---------------------------------------------------------------- local disk


@pytest.fixture
def disk_pair(local_backend):
    old = open_storage(local_backend.url("run/ckpt-1"), retry=NO_WAIT)
    new = open_storage(local_backend.url("run/ckpt-2"), retry=NO_WAIT)
    return old, new


def test_local_copy_is_a_hard_link(disk_pair):
    old, new = disk_pair
    old.write("c/0", DATA)
    assert new.copy_from(old, "c/0", "c/0") is None  # local disk keeps no checksum
    src, dst = os.stat(old.url_for("c/0")), os.stat(new.url_for("c/0"))
    assert src.st_ino == dst.st_ino and dst.st_nlink == 2
    old.delete(["c/0"])
    assert new.read("c/0") == DATA and os.stat(new.url_for("c/0")).st_nlink == 1


def test_local_write_over_a_copy_leaves_the_other_object(disk_pair):
    """A hard link shares its bytes: a later in-place write to either name must
    not change the other (the write makes a file of its own)."""
    old, new = disk_pair
    old.write("k", DATA)
    new.copy_from(old, "k", "k")
    new.write("k", b"rewritten")
    assert old.read("k") == DATA and new.read("k") == b"rewritten"
    new.copy_from(old, "k", "k2")
    old.write("k", [b"source ", b"rewritten"])
    assert new.read("k2") == DATA and old.read("k") == b"source rewritten"


def test_local_copy_without_hard_links_copies_the_bytes(disk_pair, monkeypatch):
    """Across filesystems (EXDEV) or where links cannot be made, the bytes are
    copied into a temp file renamed over the destination."""
    old, new = disk_pair
    old.write("k", DATA)
    new.write("k", b"old destination")

    def no_link(src, dst, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link", dst)

    monkeypatch.setattr(os, "link", no_link)
    for key in ("k", "fresh/k"):
        assert new.copy_from(old, "k", key) is None
        assert new.read(key) == DATA
        assert os.stat(new.url_for(key)).st_ino != os.stat(old.url_for("k")).st_ino
    assert sorted(new.list_all()) == ["fresh/k", "k"]  # no temp file left behind


def test_local_copy_without_copy_file_range(disk_pair, monkeypatch):
    old, new = disk_pair
    old.write("k", DATA)

    def no_link(src, dst, **kw):
        raise OSError(errno.EPERM, "no hard links here", dst)

    def no_copy_range(*args):
        raise OSError(errno.ENOSYS, "no copy_file_range")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "copy_file_range", no_copy_range, raising=False)
    new.copy_from(old, "k", "k")
    assert new.read("k") == DATA


def test_local_barrier_syncs_the_directories_of_copies(disk_pair, monkeypatch):
    old, new = disk_pair
    old.write("k", DATA)
    old.barrier()
    new.copy_from(old, "k", "a/b/k")
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    new.barrier()
    # the copy's directory, and the directories whose entries were created for it
    assert {new.url_for("a/b"), new.url_for("a"), new.url} <= set(synced)


def test_local_copy_of_a_directory_is_refused(disk_pair):
    old, new = disk_pair
    old.write("d/k", b"x")
    with pytest.raises(cloudckpt.StorageError):
        new.copy_from(old, "d", "d")


def test_copy_of_an_object_onto_itself_keeps_it(backend, pair):
    _needs_copy(backend)
    old, _ = pair
    old.write("same", DATA)
    crc = old.copy_from(old, "same", "same")
    assert old.read("same") == DATA and old.list_all() == {"same": len(DATA)}
    if backend.name == "gcs":  # a rewrite onto itself; S3 stores no CRC-32C of an upload by default
        assert crc is not None
    assert crc is None or crc == crc32c_of(DATA)


def test_azure_backend_copies_without_declaring_it(object_backend):
    """Copy Blob works on Azurite (overwrite, missing source), but Azure reports
    no CRC-32C of the copy, so the backend does not declare server_copy."""
    if object_backend.name != "azure":
        pytest.skip("the Azure backend's own copy verb")
    storage = open_storage(object_backend.url("run"), object_backend.storage_options, retry=NO_WAIT)
    b = storage._s.backend
    assert not storage.capabilities.server_copy
    storage.write("a", DATA)
    storage.write("b", b"older")
    assert b.copy(b.path_of(storage.url_for("a")), b.path_of(storage.url_for("b"))) is None
    assert storage.read("b") == DATA and storage.read("a") == DATA
    with pytest.raises(FileNotFoundError):
        b.copy(b.path_of(storage.url_for("nope")), b.path_of(storage.url_for("c")))
    assert not storage.exists("c")


def test_a_local_byte_copy_that_copy_file_range_leaves_short_is_completed(tmp_path, monkeypatch):
    import errno as errno_

    from cloudckpt.storage.backends.local import LocalBackend

    b = LocalBackend(fsync=False)
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    b.put(src, [b"x" * 100_000])

    def no_link(*_a, **_k):
        raise OSError(errno_.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "copy_file_range", lambda *_a, **_k: 0, raising=False)  # a filesystem that answers 0 at once
    b.copy(src, dst)
    assert b.get(dst) == b"x" * 100_000
