"""The fast paths of issue #6: scatter reads straight into destination arrays
(``Storage.read_into_many``), streamed object-store reads, uploads from the
caller's buffers, the write buffer budget, and corruption of a packed tensor
still named by its object on both read paths of the pack."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest

import cloudckpt
from cloudckpt.errors import CorruptCheckpointError, ObjectNotFoundError, StorageError
from cloudckpt.format.budget import ByteBudget
from cloudckpt.format.chunking import chunk_layout
from cloudckpt.format.store_read import read_arrays
from cloudckpt.format.store_write import write_arrays
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.format.tree import flatten
from cloudckpt.storage import RetryPolicy, open_storage
from cloudckpt.storage.backends import fsspec as _fsspec
from cloudckpt.storage.backends import local as _local
from cloudckpt.storage.backends import s3 as _s3

NO_WAIT = RetryPolicy(attempts=2, base_delay=0, max_delay=0)


@pytest.fixture(params=["local", "memory", "s3"], ids=str)
def store(request):
    """A Storage on local disk, memory:// and S3 (moto); ``store.options`` are its storage_options."""
    from conftest import _backend_fixture

    fixture = _backend_fixture(request)
    b = next(fixture)
    s = open_storage(b.url("perf"), b.storage_options, retry=NO_WAIT)
    s.options = b.storage_options  # type: ignore[attr-defined]
    yield s
    next(fixture, None)  # memory:// is process-global: the backend fixture cleans it


# ---------------------------------------------------------------- read_into_many


def test_read_into_many_scatters_pieces_in_any_order(store):
    data = bytes(range(256)) * 64  # 16 KiB
    store.write("obj", data)
    a = bytearray(10)
    b = np.zeros(4, np.float32)  # a non-byte view is read as its bytes
    c = bytearray(0)
    d = bytearray(100)
    store.read_into_many("obj", [(memoryview(d), 5000), (memoryview(a), 0), (memoryview(b), 10), (memoryview(c), 3)])
    assert bytes(a) == data[:10]
    assert b.tobytes() == data[10:26]
    assert bytes(d) == data[5000:5100]


def test_read_into_many_back_to_back_pieces_are_one_request(store):
    data = np.random.default_rng(0).integers(0, 255, 3 << 20, dtype=np.uint8).tobytes()  # > one stream piece
    store.write("big", data)
    outs = [bytearray(n) for n in (1, 1 << 20, 7, (2 << 20) - 8)]
    before = store.stats.snapshot().get("read", 0)
    at = 0
    pieces = []
    for o in outs:
        pieces.append((memoryview(o), at))
        at += len(o)
    store.read_into_many("big", pieces)
    assert store.stats.snapshot().get("read", 0) - before == 1
    assert b"".join(outs) == data


def test_read_into_many_reports_truncation_and_missing(store):
    store.write("short", b"0123456789")
    with pytest.raises(StorageError, match="truncated"):
        store.read_into_many("short", [(memoryview(bytearray(4)), 8)])
    with pytest.raises(ObjectNotFoundError):
        store.read_into_many("nope", [(memoryview(bytearray(4)), 0)])


def test_read_into_fills_a_large_buffer_in_place(store):
    data = np.arange(1 << 20, dtype=np.float32)  # 4 MiB
    store.write("f32", memoryview(data).cast("B"))
    out = np.empty_like(data)
    store.read_into("f32", memoryview(out).cast("B"))
    assert np.array_equal(out, data)


def test_write_of_several_buffers_is_one_object(store):
    parts = [b"abc", memoryview(np.arange(5, dtype=np.int16)).cast("B"), bytearray(b"xyz")]
    store.write("joined", parts)
    assert store.read("joined") == b"abc" + np.arange(5, dtype=np.int16).tobytes() + b"xyz"


def test_preadv_beyond_iov_max(tmp_path):
    data = bytes(range(251)) * 40
    path = tmp_path / "f"
    path.write_bytes(data)
    outs = [bytearray(1 + i % 3) for i in range(3000)]  # more views than IOV_MAX
    total = sum(map(len, outs))
    n = _local.LocalBackend().get_into(str(path), [memoryview(o) for o in outs], 3)
    assert n == total and b"".join(outs) == data[3 : 3 + total]
    # the file ends inside the views: what was there, and its count
    big = [bytearray(len(data) - 10), bytearray(100)]
    assert _local.LocalBackend().get_into(str(path), [memoryview(o) for o in big], 0) == len(data)
    assert bytes(big[1][:10]) == data[-10:]


def test_local_write_starts_writeback_piece_by_piece(tmp_path, monkeypatch):
    # A durable local write hands each 8 MiB to the disk as soon as it is in
    # the page cache (sync_file_range), so copying and writing overlap
    # before the fsync; every byte's writeback is started once, in order.
    import sys

    if sys.platform.startswith("linux"):
        assert _local._sync_file_range is not None  # the libc binding loads here
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(_local, "_sync_file_range", lambda fd, off, n, flags: started.append((off, n)) or 0)
    piece = _local._WRITEBACK_PIECE
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 255, n, dtype=np.uint8) for n in (piece // 3, 2 * piece + 5, piece // 2)]
    path = tmp_path / "obj"
    n = _local.LocalBackend().put(str(path), parts)
    assert n == sum(p.nbytes for p in parts)
    assert path.read_bytes() == b"".join(p.tobytes() for p in parts)
    # contiguous from 0, each at least a piece; the tail short of a piece is left to the fsync
    assert [off for off, _ in started] == [sum(k for _, k in started[:i]) for i in range(len(started))]
    assert all(k >= piece for _, k in started) and n - sum(k for _, k in started) < piece
    assert len(started) == 2
    # without fsync (a scratch store) nothing is forced early
    started.clear()
    _local.LocalBackend(fsync=False).put(str(tmp_path / "scratch"), parts)
    assert started == []


def test_local_write_of_thousands_of_buffers(tmp_path):
    # vectored writes in batches of at most IOV_MAX buffers, empty ones included
    parts = [bytes([i % 251]) * (i % 7) for i in range(3 * _local._IOV_MAX + 5)]
    for fsync in (True, False):
        path = tmp_path / f"many-{fsync}"
        assert _local.LocalBackend(fsync=fsync).put(str(path), parts) == sum(map(len, parts))
        assert path.read_bytes() == b"".join(parts)


def test_local_pack_of_tiny_tensors_is_written_without_a_join(tmp_path):
    """A pack chunk of small tensors goes to disk from the tensors themselves
    (writev): joining them first cost a copy of every chunk in flight, which
    broke the save's memory target with 10,000 tensors."""
    import tracemalloc

    rng = np.random.default_rng(3)
    state = {f"t{i}": rng.standard_normal(4096, dtype=np.float32) for i in range(2048)}  # 32 MiB of 16 KiB tensors
    s = open_storage(str(tmp_path / "ck"))
    assert s.capabilities.gathers_writes and not open_storage("memory://perf-gather").capabilities.gathers_writes
    cloudckpt.save(str(tmp_path / "warm"), {"x": np.zeros(3)})  # imports and the thread pool exist before measuring
    tracemalloc.start()
    try:
        cloudckpt.save(str(tmp_path / "ck"), state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (8 << 20), f"{peak} bytes allocated to save 32 MiB of small tensors"
    back = cloudckpt.load(str(tmp_path / "ck"))
    assert all(np.array_equal(back[k], v) for k, v in state.items())


def test_generic_ranged_read_bounds_its_temporaries(monkeypatch):
    """Filesystems that cannot stream read in ranges of at most _TEMP_BYTES."""
    s = open_storage("memory://perf-ranged")
    try:
        data = bytes(range(256)) * 100
        s.write("x", data)
        backend = s._s.backend
        sizes: list[int] = []
        real_get = backend.get

        def get(path, start=None, end=None):
            sizes.append(end - start)
            return real_get(path, start, end)

        monkeypatch.setattr(_fsspec, "_TEMP_BYTES", 1000)
        monkeypatch.setattr(backend, "get", get)
        outs = [bytearray(333), bytearray(5000), bytearray(10)]
        n = backend._ranged_into(backend.fs._strip_protocol(s._path("x")), [memoryview(o) for o in outs], 7, 5343)
        assert n == 5343 and b"".join(outs) == data[7 : 7 + 5343]
        assert max(sizes) <= 1000 and len(sizes) == 6
    finally:
        s.delete(["x"])


def test_upload_body_over_buffers():
    """The S3 upload body: a file over back-to-back buffers, sliceable for multipart."""
    parts = [memoryview(b"hello "), memoryview(bytearray(b"wide ")), memoryview(b"world")]
    body = _s3._ViewReader(parts)
    assert len(body) == 16 and isinstance(body, io.IOBase)
    assert body.read() == b"hello wide world"
    body.seek(3)
    assert body.read(5) == b"lo wi"
    assert body.tell() == 8
    assert body[4:12].read() == b"o wide w"
    assert len(body[10:]) == 6
    body.seek(0, io.SEEK_END)
    assert body.read(3) == b""


def test_s3_write_sends_from_the_buffers_without_a_join(object_backend, monkeypatch):
    if object_backend.name != "s3":
        pytest.skip("S3 only")
    s = open_storage(object_backend.url("perf"), object_backend.storage_options, retry=NO_WAIT)
    assert not s.capabilities.write_copies
    joined: list[int] = []
    real = _fsspec.joined

    def spy(buffers):
        joined.append(len(buffers))
        return real(buffers)

    # protocol.joined is the one join of buffers into a body, as the S3 and generic backends import it
    monkeypatch.setattr(_fsspec, "joined", spy)
    monkeypatch.setattr(_s3, "joined", spy)
    arr = np.arange(300_000, dtype=np.float64)
    s.write("data", [memoryview(arr[:1000]).cast("B"), memoryview(arr[1000:]).cast("B")])
    assert joined == []
    out = np.empty_like(arr)
    s.read_into("data", memoryview(out).cast("B"))
    assert np.array_equal(out, arr)


def test_local_and_s3_do_not_copy_writes_others_do(tmp_path):
    assert not open_storage(str(tmp_path)).capabilities.write_copies
    assert open_storage("memory://perf-copies").capabilities.write_copies


# ---------------------------------------------------------------- the budget of copied writes


def test_budget_bounds_bytes_in_flight():
    budget = ByteBudget(100)
    peak = [0]
    lock = threading.Lock()

    def job(n):
        with budget.held(n):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.01)

    threads = [threading.Thread(target=job, args=(n,)) for n in (60, 30, 30, 150, 10, 50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.used == 0
    assert peak[0] <= 150  # the one job above the budget ran alone


def test_copied_writes_stay_within_buffer_bytes(monkeypatch):
    s = open_storage("memory://perf-budget")
    in_flight = [0, 0]  # now, peak
    lock = threading.Lock()
    real_write = type(s).write

    def write(self, key, data, *, atomic=False):
        if key.endswith("zarr.json"):  # the small metadata documents are not held to the budget
            return real_write(self, key, data, atomic=atomic)
        n = sum(memoryview(b).nbytes for b in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data))
        with lock:
            in_flight[0] += n
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            time.sleep(0.005)
            return real_write(self, key, data, atomic=atomic)
        finally:
            with lock:
                in_flight[0] -= n

    monkeypatch.setattr(type(s), "write", write)
    leaves = flatten({f"t{i}": np.full((64, 256), i, np.float32) for i in range(16)})[1]  # 64 KiB each
    opts = StoreOptions(pack_threshold=0, chunk_bytes=32 << 10, buffer_bytes=128 << 10)
    written = write_arrays(s, "d", leaves, opts)
    assert 0 < in_flight[1] <= 128 << 10
    out = read_arrays(s, "d", written.records, written.pack, written.objects, list(range(16)))
    assert all(np.array_equal(out[i], leaves[i].array) for i in range(16))


# ---------------------------------------------------------------- packed tensors: reads and damage


def _packed_state(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return {f"p{i:02d}": rng.standard_normal(50 + 37 * i).astype(np.float32) for i in range(n)}


def _write_packed(s, state, chunk_bytes):
    leaves = flatten(state)[1]
    opts = StoreOptions(chunk_bytes=chunk_bytes)
    written = write_arrays(s, "d", leaves, opts)
    assert written.pack is not None
    return leaves, written, opts


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 7000], ids=["one-pack-object", "tensors-span-objects"])
def test_packed_tensors_read_whole_or_by_range(store, chunk_bytes):
    leaves, w, opts = _write_packed(store, _packed_state(), chunk_bytes)
    n = len(leaves)
    every = read_arrays(store, "d", w.records, w.pack, w.objects, list(range(n)), opts)
    assert all(np.array_equal(every[i], leaves[i].array) for i in range(n))
    few = [3, 17, n - 1]  # a small part of each object: ranged reads, each tensor's own crc
    some = read_arrays(store, "d", w.records, w.pack, w.objects, few, opts)
    assert sorted(some) == few and all(np.array_equal(some[i], leaves[i].array) for i in few)


def _flip(s, key, at):
    b = bytearray(s.read(key))
    b[at] ^= 0x40
    s.write(key, bytes(b))


def _tensor_location(w, i):
    off = w.records[i].offset
    csize = w.pack.chunk_bytes
    lo = w.pack.objects[0]
    return w.objects[lo + off // csize]["key"], off % csize


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 7000], ids=["one-pack-object", "tensors-span-objects"])
def test_damaged_packed_tensor_names_its_object(store, chunk_bytes):
    leaves, w, opts = _write_packed(store, _packed_state(), chunk_bytes)
    victim = 20
    key, at = _tensor_location(w, victim)
    _flip(store, key, at + 5)
    url = store.url_for(key)
    n = len(leaves)
    # the whole pack object read and checked as one (the object's crc32c)
    with pytest.raises(CorruptCheckpointError, match="crc32c mismatch") as info:
        read_arrays(store, "d", w.records, w.pack, w.objects, list(range(n)), opts)
    assert url in str(info.value)
    # the damaged tensor alone: a ranged read, checked by the tensor's own crc32c
    with pytest.raises(CorruptCheckpointError, match="packed tensor") as info:
        read_arrays(store, "d", w.records, w.pack, w.objects, [victim], opts, paths=[leaf.path for leaf in leaves])
    assert url in str(info.value) and "p20" in str(info.value)
    # tensors elsewhere still read
    ok = read_arrays(store, "d", w.records, w.pack, w.objects, [0], opts)
    assert np.array_equal(ok[0], leaves[0].array)


def test_damaged_spanning_tensor_read_by_ranges_names_its_first_object(store):
    _leaves, w, opts = _write_packed(store, _packed_state(), 7000)
    csize = w.pack.chunk_bytes
    span = next(
        i for i, r in enumerate(w.records)
        if r.offset // csize != (r.offset + r.nbytes - 1) // csize
    )
    first_key, _ = _tensor_location(w, span)
    end = w.records[span].offset + w.records[span].nbytes - 1
    lo = w.pack.objects[0]
    last_key = w.objects[lo + end // csize]["key"]
    assert last_key != first_key
    _flip(store, last_key, end % csize)  # damage the tail, in the second object
    with pytest.raises(CorruptCheckpointError, match="packed tensor") as info:
        read_arrays(store, "d", w.records, w.pack, w.objects, [span], opts)
    assert store.url_for(first_key) in str(info.value)


def test_damaged_pack_padding_is_caught_on_a_whole_read(store):
    _leaves, w, opts = _write_packed(store, _packed_state(n=3), 1 << 20)
    key = w.objects[w.pack.objects[0]]["key"]
    size = w.objects[w.pack.objects[0]]["size"]
    # flip the last byte: padding if there is any, else the last tensor's
    _flip(store, key, size - 1)
    with pytest.raises(CorruptCheckpointError, match="crc32c mismatch") as info:
        read_arrays(store, "d", w.records, w.pack, w.objects, [0, 1, 2], opts)
    assert store.url_for(key) in str(info.value)


def test_truncated_pack_object_is_damage_not_a_storage_error(store):
    leaves, w, opts = _write_packed(store, _packed_state(), 1 << 20)
    key = w.objects[w.pack.objects[0]]["key"]
    store.write(key, store.read(key)[:100])
    with pytest.raises(CorruptCheckpointError, match="truncated") as info:
        read_arrays(store, "d", w.records, w.pack, w.objects, list(range(len(leaves))), opts)
    assert store.url_for(key) in str(info.value)


def test_padded_edge_chunk_is_read_in_place_and_checked(store):
    arr = np.arange(1001 * 3, dtype=np.float64).reshape(1001, 3)  # 3 chunks of 334 rows: a padded edge
    leaves = flatten({"w": arr})[1]
    opts = StoreOptions(pack_threshold=0, chunk_bytes=334 * 3 * 8)
    w = write_arrays(store, "d", leaves, opts)
    lo, hi = w.records[0].objects
    assert hi - lo == 3
    out = read_arrays(store, "d", w.records, w.pack, w.objects, [0], opts)
    assert np.array_equal(out[0], arr)
    last = w.objects[hi - 1]
    _flip(store, last["key"], last["size"] - 1)  # in the padding
    with pytest.raises(CorruptCheckpointError, match="crc32c mismatch") as info:
        read_arrays(store, "d", w.records, w.pack, w.objects, [0], opts)
    assert store.url_for(last["key"]) in str(info.value)


def test_public_load_names_the_damaged_pack_object(store):
    url = store.url_for("ckpt")
    so = store.options
    state = _packed_state()
    cloudckpt.save(url, state, storage_options=so)
    import json

    m = json.loads(store.read("ckpt/manifest.json"))
    key = m["objects"][m["pack"]["objects"][0]]["key"]
    _flip(store, f"ckpt/{key}", 64)
    with pytest.raises(CorruptCheckpointError) as info:
        cloudckpt.load(url, storage_options=so)
    assert store.url_for(f"ckpt/{key}") in str(info.value)


def test_s3_exists_is_one_head(object_backend):
    if object_backend.name != "s3":
        pytest.skip("S3 only")
    s = open_storage(object_backend.url("perf"), object_backend.storage_options, retry=NO_WAIT)
    s.write("dir/obj", b"x")
    backend = s._s.backend
    calls: list[str] = []
    real, real_sync = backend.fs._call_s3, backend.fs.call_s3

    async def spy(method, *args, **kwargs):
        calls.append(method)
        return await real(method, *args, **kwargs)

    def sync_spy(method, *args, **kwargs):
        calls.append(method)
        return real_sync(method, *args, **kwargs)

    backend.fs._call_s3, backend.fs.call_s3 = spy, sync_spy  # s3fs' own calls and cloudckpt's
    try:
        assert s.exists("dir/obj")
        assert not s.exists("dir/nope")
        assert not s.exists("dir")  # a "directory" is not an object
    finally:
        del backend.fs._call_s3, backend.fs.call_s3
    assert calls == ["head_object"] * 3


def test_s3_multipart_upload_from_buffers(object_backend):
    """Above s3fs' 50 MiB part size the body is sliced into parts: still from the buffers."""
    if object_backend.name != "s3":
        pytest.skip("S3 only")
    s = open_storage(object_backend.url("perf"), object_backend.storage_options, retry=NO_WAIT)
    arr = np.random.default_rng(1).integers(0, 2**31, (51 << 20) // 4, dtype=np.int32)
    s.write("mp", [memoryview(arr[:100]).cast("B"), memoryview(arr[100:]).cast("B")])
    out = np.empty_like(arr)
    s.read_into_many("mp", [(memoryview(out[:7]).cast("B"), 0), (memoryview(out[7:]).cast("B"), 28)])
    assert np.array_equal(out, arr)


def test_object_store_uploads_send_from_the_buffers(object_backend):
    """(Was, on GCS: gcsfs joined the data and its multipart envelope into one
    new bytes, on top of the join of a pack chunk's buffers: two copies of
    every object in flight, the save's memory target missed.) Azure declares
    ``write_copies``: the SDK's single-request upload takes one ``bytes`` (the
    join), which the socket transport buffers in part: bounded by that, never more."""
    import tracemalloc

    s = open_storage(object_backend.url("perf"), object_backend.storage_options, retry=NO_WAIT)
    assert s.capabilities.write_copies == (object_backend.name == "azure")
    arr = np.random.default_rng(2).integers(0, 2**31, (8 << 20) // 4, dtype=np.int32)
    pieces = [memoryview(arr[:1000]).cast("B"), memoryview(arr[1000:]).cast("B"), memoryview(b"tail")]
    s.write("warm", b"x")  # the client's session and its buffers exist before measuring
    tracemalloc.start()
    try:
        s.write("body", pieces)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = arr.nbytes * 3 if s.capabilities.write_copies else arr.nbytes // 2
    assert peak < limit, f"{peak} bytes allocated to upload {arr.nbytes}"  # a copy: > nbytes
    assert s.read("body") == arr.tobytes() + b"tail"


# ---------------------------------------------------------------- mapped pack objects (local disk)


def _mapped(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of a memory mapping (its base chain ends at an mmap)."""
    import mmap

    b = a
    while isinstance(b, np.ndarray):
        b = b.base
    return isinstance(b, memoryview) and isinstance(b.obj, mmap.mmap)


def _odd_state() -> dict:
    """Packed tensors at offsets that do and do not suit a view, and one spanning two pack objects.

    The pack holds them largest first: span (0), f4 (24000), f8 (28000), be (28800), scalar (28840), odd (28848),
    empty; in two objects of 14428 bytes (not whole pages: a full load maps each on its own). f4 lies at 9572 in
    the second (a multiple of 4: a view), f8 at 13572 (not a multiple of 8: copied), odd anywhere (a view)."""
    rng = np.random.default_rng(5)
    return {
        "f4": rng.random(1000, dtype=np.float32),
        "odd": np.arange(7, dtype=np.uint8),
        "f8": rng.random(100),
        "be": np.arange(10, dtype=">i4"),  # stored little-endian: converted, so never a view
        "span": rng.random(3000),  # 24 KB over the two pack objects
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.float64(2.5),
        "big": rng.random(10_000),  # chunked, not packed: read into fresh memory
    }


def test_local_load_maps_pack_objects_copy_on_write(tmp_path):
    state = _odd_state()
    opts = StoreOptions(pack_threshold=64 << 10, chunk_bytes=16 << 10)
    url = cloudckpt.save(str(tmp_path / "c"), state, options=opts)
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    got = cloudckpt.load(url)
    for k, v in state.items():
        assert np.array_equal(got[k], v) and got[k].dtype == np.asarray(v).dtype, k
    assert _mapped(got["f4"]) and _mapped(got["odd"]) and got["f4"].flags.writeable
    assert not any(_mapped(got[k]) for k in ("f8", "be", "span", "empty", "big"))
    got["f4"][:] = -1  # copy-on-write: the file is not changed ...
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()} == before
    again = cloudckpt.load(url)
    assert np.array_equal(again["f4"], state["f4"])  # ... nor what the next load sees
    plain = cloudckpt.load(url, mmap=False)
    assert not any(_mapped(np.asarray(v)) for v in plain.values())
    assert all(np.array_equal(plain[k], v) for k, v in state.items())


def test_a_tensor_spanning_two_pack_objects_is_a_view_too(tmp_path):
    # pack objects of at least 100 pages are whole pages, so a full load maps them back to back
    rng = np.random.default_rng(8)
    state = {"a": rng.random(100_000, dtype=np.float32), "b": rng.random(100_000, dtype=np.float32), "c": np.arange(50_000, dtype=np.float32)}
    url = cloudckpt.save(str(tmp_path / "c"), state, options=StoreOptions(pack_threshold=1 << 20, chunk_bytes=512 << 10))
    pack = json.loads((tmp_path / "c" / "manifest.json").read_text())["pack"]
    assert pack["objects"][1] - pack["objects"][0] == 2 and pack["chunk_bytes"] % 4096 == 0
    got = cloudckpt.load(url)
    assert all(_mapped(got[k]) and np.array_equal(got[k], v) for k, v in state.items())  # "b" spans both objects
    assert np.array_equal(cloudckpt.load(url, keys=["b"])["b"], state["b"])  # a part: read by ranges


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damage_in_a_pack_mapped_whole_names_its_object(tmp_path, damage):
    state = {f"t{i}": np.full(40_000, i, np.float32) for i in range(8)}  # 1.28 MB over three pack objects
    url = cloudckpt.save(str(tmp_path / "c"), state, options=StoreOptions(pack_threshold=1 << 20, chunk_bytes=512 << 10))
    victim = next((tmp_path / "c").glob("data-*/_pack/c/1"))
    raw = bytearray(victim.read_bytes())
    if damage == "flip":
        raw[7] ^= 0xFF
        victim.write_bytes(bytes(raw))
    else:
        victim.write_bytes(bytes(raw[:4096]))
    with pytest.raises(CorruptCheckpointError, match="_pack/c/1.*" + ("crc32c mismatch" if damage == "flip" else "truncated")):
        cloudckpt.load(url)


def test_mapped_arrays_outlive_the_deleted_checkpoint(tmp_path):
    state = {"w": np.arange(1000, dtype=np.float32), "b": np.ones(7)}
    d = tmp_path / "run"
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(model=state), str(d), 1)
    first = m.save()
    got = cloudckpt.load(first)
    assert _mapped(got["model"]["w"])
    m.save()  # retention deletes the first checkpoint (its files are unlinked)
    assert not (d / "ckpt-1").exists()
    assert np.array_equal(got["model"]["w"], state["w"]) and np.array_equal(got["model"]["b"], state["b"])


def test_a_damaged_mapped_pack_object_is_named(tmp_path):
    state = {f"t{i}": np.full(100, i, np.float32) for i in range(5)}
    url = cloudckpt.save(str(tmp_path / "c"), state)
    [pack_obj] = [p for p in (tmp_path / "c").rglob("_pack/c/*")]
    raw = bytearray(pack_obj.read_bytes())
    raw[1000] ^= 0xFF
    pack_obj.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=r"_pack.*crc32c mismatch"):
        cloudckpt.load(url)
    pack_obj.write_bytes(bytes(raw[:500]))
    with pytest.raises(CorruptCheckpointError, match=r"_pack.*truncated"):
        cloudckpt.load(url)


# ---------------------------------------------------------------- mapped chunked arrays (local disk)


def _chunked_state() -> dict:
    rng = np.random.default_rng(6)
    return {
        "rows": rng.random((64, 1024)),  # 8 KiB rows, 4 per 32 KiB chunk: 16 page-sized chunks
        "padded": rng.random((1001, 512), dtype=np.float32),  # 63 chunks, the last one padded
        "text": np.array([["abc", "de"], ["f", ""]] * 3072, dtype="<U3"),  # stored as bytes with an extra axis
        "be": np.arange(20_000, dtype=">i4").reshape(40, 500),  # viewed, then converted: a copy
        "mid": rng.random((3, 5000)),  # split along axis 1, padding between chunks: read
        "odd": rng.random(6000),  # 16000-byte chunks, not whole pages: read
    }


def test_local_load_maps_chunked_arrays_back_to_back(tmp_path):
    state = _chunked_state()
    opts = StoreOptions(pack_threshold=1, chunk_bytes=32 << 10)
    url = cloudckpt.save(str(tmp_path / "c"), state, options=opts)
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    got = cloudckpt.load(url)
    for k, v in state.items():
        assert np.array_equal(got[k], v) and got[k].dtype == v.dtype, k
    assert _mapped(got["rows"]) and _mapped(got["padded"]) and _mapped(got["text"])
    assert not any(_mapped(got[k]) for k in ("be", "mid", "odd"))
    got["rows"][:] = -1  # copy-on-write: the files are not changed
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()} == before
    assert np.array_equal(cloudckpt.load(url)["rows"], state["rows"])
    plain = cloudckpt.load(url, mmap=False)
    assert not any(_mapped(v) for v in plain.values())
    assert all(np.array_equal(plain[k], v) for k, v in state.items())


def test_page_sized_chunks_are_chosen_when_they_cost_little_padding():
    # 50257 rows of 1792 bytes (GPT-2's embedding): balanced rows 16753 make
    # 30,021,376-byte chunks, which cannot be mapped back to back
    chunk, k = chunk_layout((50257, 448), 4, 32 << 20)
    assert k == 0 and chunk[0] * 448 * 4 % 4096 == 0 and -(-50257 // chunk[0]) == 3
    # where whole pages would pad by more than 1%, the balanced rows stay
    assert chunk_layout((1000, 10), 4, 8000) == ((200, 10), 0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_mapped_chunk_is_named(tmp_path, damage):
    state = {"rows": np.random.default_rng(7).random((64, 1024))}
    url = cloudckpt.save(str(tmp_path / "c"), state, options=StoreOptions(pack_threshold=1, chunk_bytes=32 << 10))
    victim = next((tmp_path / "c").glob("data-*/rows/c/5/0"))  # the sixth of 16 chunks
    assert cloudckpt.load(url)["rows"] is not None
    if damage == "flip":
        raw = bytearray(victim.read_bytes())
        raw[100] ^= 0xFF
        victim.write_bytes(bytes(raw))
        expect = "crc32c mismatch"
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:4096])
        expect = "truncated"
    else:
        victim.unlink()
        expect = "missing"
    rel = victim.relative_to(tmp_path / "c").as_posix()
    with pytest.raises(CorruptCheckpointError, match=f"{rel}.*{expect}"):
        cloudckpt.load(url)
