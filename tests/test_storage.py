"""The Storage verbs on every backend: reads, writes, create-only writes,
listings, deletes, bounded concurrency, retries and error translation."""

from __future__ import annotations

import errno
import threading
import time
import traceback
import uuid

import pytest

import cloudckpt
from cloudckpt.errors import ObjectExistsError
from cloudckpt.storage import (
    Backend,
    Capabilities,
    RetryPolicy,
    WriteMode,
    add_global_hook,
    join_url,
    open_storage,
    validate_key,
)
from cloudckpt.storage.retry import is_transient

SECRET = "SECRET-abc123"
NO_WAIT = RetryPolicy(attempts=4, base_delay=0, max_delay=0)


@pytest.fixture
def storage(backend):
    return open_storage(backend.url("store"), backend.storage_options, retry=NO_WAIT)


# ---------------------------------------------------------------- read / write


def test_write_read_and_ranges(storage):
    data = bytes(range(256)) * 40
    storage.write("a/b/blob.bin", data)
    assert storage.read("a/b/blob.bin") == data
    assert storage.read("a/b/blob.bin", 10, 20) == data[10:20]
    assert storage.read("a/b/blob.bin", 0, 1) == data[:1]
    assert storage.read("a/b/blob.bin", len(data) - 5, len(data)) == data[-5:]
    assert storage.size("a/b/blob.bin") == len(data)
    assert storage.exists("a/b/blob.bin")
    assert not storage.exists("a/b/other.bin")
    assert not storage.exists("a/b")  # a "directory" is not an object


def test_write_overwrites_and_takes_a_list_of_buffers(storage):
    storage.write("k", b"first version, long")
    storage.write("k", [b"abc", bytearray(b"def"), memoryview(b"xghi")[1:]])
    assert storage.read("k") == b"abcdefghi"
    storage.write("empty", b"")
    assert storage.read("empty") == b"" and storage.size("empty") == 0


def test_write_atomic(storage):
    storage.write("state", b"old", atomic=True)
    storage.write("state", b"new content", atomic=True)
    assert storage.read("state") == b"new content"
    assert storage.list_all() == {"state": 11}  # no temp file left behind


def test_read_into(storage):
    storage.write("k", b"0123456789")
    buf = bytearray(4)
    storage.read_into("k", memoryview(buf), 3)
    assert bytes(buf) == b"3456"
    buf = bytearray(10)
    storage.read_into("k", memoryview(buf))
    assert bytes(buf) == b"0123456789"
    with pytest.raises(cloudckpt.StorageError, match="truncated"):
        storage.read_into("k", memoryview(bytearray(5)), 8)


def test_missing_object_errors_name_the_url(storage):
    for call in (lambda: storage.read("no/such"), lambda: storage.size("no/such"),
                 lambda: storage.read("no/such", 0, 3), lambda: storage.read_into("no/such", memoryview(bytearray(2)))):
        with pytest.raises(cloudckpt.ObjectNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
        assert info.value.url == storage.url_for("no/such")
        assert storage.url_for("no/such") in str(info.value)


def test_invalid_keys_are_refused_before_any_request(storage):
    seen = []
    storage.add_hook(lambda op, url: seen.append(op))
    for bad in ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "s3://x/y", "a\x00b"]:
        with pytest.raises(ValueError):
            storage.read(bad)
        with pytest.raises(ValueError):
            storage.write(bad, b"x")
    assert seen == []


# ---------------------------------------------------------------- create-only


def test_write_if_absent_is_create_only(storage):
    assert storage.write_if_absent("m.json", b"mine") is True
    assert storage.write_if_absent("m.json", b"theirs") is False
    assert storage.read("m.json") == b"mine"
    # the same content again counts as ours (a retried request whose first attempt landed)
    assert storage.write_if_absent("m.json", b"mine") is True
    assert storage.read("m.json") == b"mine"


def test_write_if_absent_race_has_exactly_one_winner(storage):
    n = 8
    barrier = threading.Barrier(n)
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def contender(i: int) -> None:
        try:
            barrier.wait()
            results[i] = storage.write_if_absent("race/manifest.json", f"writer {i}".encode())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    winners = [i for i, won in results.items() if won]
    assert len(results) == n and len(winners) == 1, results
    assert storage.read("race/manifest.json") == f"writer {winners[0]}".encode()
    assert storage.list_all("race") == {"manifest.json": len(f"writer {winners[0]}")}


# ---------------------------------------------------------------- listing and deleting


def test_list_dir_and_list_all(storage):
    for key in ["a/1", "a/2", "a/sub/x", "a/sub/deeper/y", "b/z", "top"]:
        storage.write(key, key.encode())
    files, dirs = storage.list_dir()
    assert files == {"top": 3} and dirs == ["a", "b"]
    files, dirs = storage.list_dir("a")
    assert files == {"1": 3, "2": 3} and dirs == ["sub"]
    assert storage.list_all("a") == {"1": 3, "2": 3, "sub/x": 7, "sub/deeper/y": 14}
    assert storage.list_all() == {"a/1": 3, "a/2": 3, "a/sub/x": 7, "a/sub/deeper/y": 14, "b/z": 3, "top": 3}
    assert storage.list_dir("nothing/here") == ({}, [])
    assert storage.list_all("nothing") == {}


def test_listings_see_new_objects_at_once(backend, storage):
    """No stale listing cache: another writer's new object shows in the next listing."""
    storage.write("d/ckpt-1/manifest.json", b"{}")
    assert storage.list_dir("d")[1] == ["ckpt-1"]
    assert set(storage.list_all("d")) == {"ckpt-1/manifest.json"}
    other = open_storage(storage.url, backend.storage_options)  # another client, as another process would be
    other.write("d/ckpt-2/manifest.json", b"{}")
    assert storage.list_dir("d")[1] == ["ckpt-1", "ckpt-2"]
    assert set(storage.list_all("d")) == {"ckpt-1/manifest.json", "ckpt-2/manifest.json"}
    storage.delete(["d/ckpt-1/manifest.json"])
    assert set(storage.list_all("d")) == {"ckpt-2/manifest.json"}
    assert not storage.exists("d/ckpt-1/manifest.json")


def test_delete_and_delete_prefix(storage):
    for key in ["x/1", "x/2", "x/y/3", "xy/4", "keep"]:
        storage.write(key, b"1")
    storage.delete(["x/1", "missing/is/fine"])
    assert not storage.exists("x/1") and storage.exists("x/2")
    storage.delete([])
    storage.delete_prefix("x")
    assert storage.list_all() == {"xy/4": 1, "keep": 1}  # "xy" is not below "x"
    storage.delete_prefix("not/there")
    assert storage.list_all() == {"xy/4": 1, "keep": 1}


def test_child_shares_backend_and_counters(storage):
    child = storage.child("ckpt-1")
    assert child.url == join_url(storage.url, "ckpt-1")
    child.write("m", b"x")
    assert storage.read("ckpt-1/m") == b"x"
    assert child.stats is storage.stats
    assert storage.stats.by_op["write"] >= 1 and storage.stats.bytes_written >= 1


def test_stats_count_requests_and_bytes(storage):
    before = storage.stats.snapshot()
    storage.write("s", b"12345")
    storage.read("s")
    storage.read("s", 1, 3)
    after = storage.stats.snapshot()
    assert after["write"] - before.get("write", 0) == 1
    assert after["read"] - before.get("read", 0) == 1
    assert after["read_range"] - before.get("read_range", 0) == 1
    assert after["bytes_written"] - before["bytes_written"] == 5
    assert after["bytes_read"] - before["bytes_read"] == 7


# ---------------------------------------------------------------- bounded concurrency


@pytest.mark.parametrize("limit", [1, 3, None])
def test_map_bounds_requests_in_flight(backend, limit):
    storage = open_storage(backend.url("m"), backend.storage_options, max_concurrency=5)
    lock = threading.Lock()
    in_flight = 0
    peak = 0
    consumed = 0

    def items():
        nonlocal consumed
        for i in range(40):
            consumed += 1
            with lock:
                # items are taken lazily: never more than the limit ahead of the finished ones
                assert consumed - done[0] <= (limit or 5) + 1
            yield i

    done = [0]

    def work(i: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.005)
        with lock:
            in_flight -= 1
            done[0] += 1
        return i * i

    out = storage.map(work, items(), limit=limit)
    assert out == [i * i for i in range(40)]
    assert peak <= (limit or 5)
    if limit != 1:
        assert peak >= 2  # it is concurrent at all


def test_map_starts_the_next_call_as_soon_as_one_finishes(memory_storage):
    # A slow call must not hold back the rest: map once waited for its whole
    # window of calls before starting more, so one big object in a save left
    # the other slots idle. Here call 0 waits until call 3 has run.
    third_ran = threading.Event()

    def work(i: int) -> int:
        if i == 0 and not third_ran.wait(10):
            raise AssertionError("call 3 never started while call 0 was in flight (limit 2)")
        if i == 3:
            third_ran.set()
        return i

    assert memory_storage.map(work, range(6), limit=2) == list(range(6))


def test_map_limit_cannot_exceed_max_concurrency(memory_storage):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def work(_):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.005)
        with lock:
            state["now"] -= 1

    memory_storage.map(work, range(30), limit=100)
    assert state["peak"] <= memory_storage.max_concurrency == 3


def test_map_raises_the_first_error_and_stops_starting_work(memory_storage):
    started = []

    def work(i):
        started.append(i)
        if i == 2:
            raise RuntimeError("boom at 2")
        time.sleep(0.01)
        return i

    with pytest.raises(RuntimeError, match="boom at 2"):
        memory_storage.map(work, range(100))
    assert len(started) < 20


def test_nested_map_does_not_deadlock(memory_storage):
    out = memory_storage.map(lambda i: sum(memory_storage.map(lambda j: i * j, range(5))), range(10))
    assert out == [i * 10 for i in range(10)]


@pytest.fixture
def memory_storage(request):
    s = open_storage(f"memory://storage-test-{request.node.name}", max_concurrency=3, retry=NO_WAIT)
    return s


# ---------------------------------------------------------------- retries


def _failing_hook(op_name: str, times: int, exc_factory):
    calls = {"n": 0}

    def hook(op, url):
        if op == op_name:
            calls["n"] += 1
            if calls["n"] <= times:
                raise exc_factory()

    return hook, calls


def test_transient_errors_are_retried(storage):
    storage.write("k", b"v")
    hook, calls = _failing_hook("read", 2, lambda: TimeoutError("read timed out"))
    storage.add_hook(hook)
    retries0 = storage.stats.retries
    assert storage.read("k") == b"v"
    assert calls["n"] == 3
    assert storage.stats.retries - retries0 == 2


def test_transient_errors_give_up_after_the_policy_attempts(storage):
    storage.write("k", b"v")
    hook, calls = _failing_hook("read", 100, lambda: ConnectionResetError(errno.ECONNRESET, "connection reset"))
    storage.add_hook(hook)
    with pytest.raises(cloudckpt.StorageError) as info:
        storage.read("k")
    assert calls["n"] == NO_WAIT.attempts
    assert info.value.transient and "after retries" in str(info.value)
    assert storage.url_for("k") in str(info.value) and info.value.operation == "read"


def test_permanent_errors_are_not_retried(storage):
    storage.write("k", b"v")
    hook, calls = _failing_hook("read", 100, lambda: PermissionError(errno.EACCES, "access denied"))
    remove = storage.add_hook(hook)
    with pytest.raises(cloudckpt.StoragePermissionError) as info:
        storage.read("k")
    assert calls["n"] == 1
    assert isinstance(info.value, PermissionError) and "credentials" in str(info.value)
    remove()
    assert storage.read("k") == b"v"  # the hook is gone


def test_retries_of_writes_and_create_only_writes(storage):
    hook, calls = _failing_hook("write_create", 1, lambda: TimeoutError("timed out"))
    storage.add_hook(hook)
    assert storage.write_if_absent("c", b"payload") is True
    assert calls["n"] == 2
    assert storage.read("c") == b"payload"


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (OSError(errno.EIO, "io"), True),
        (OSError(errno.ENOSPC, "no space"), False),
        (PermissionError(), False),
        (FileNotFoundError(), False),
        (FileExistsError(), False),
        (ValueError("bad"), False),
        (RuntimeError("503 Service Unavailable"), True),
        (RuntimeError("SlowDown: please reduce your request rate"), True),
        (RuntimeError("something else"), False),
    ],
)
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_retry_policy_validation():
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)
    assert 0 <= RetryPolicy(base_delay=1, max_delay=2).delay(5) <= 2


def test_validate_key():
    assert validate_key("data-1/w/c/0") == "data-1/w/c/0"
    for bad in ["", "/a", "a/", "a/../b", "./a", "a\\b", "s3://b/k"]:
        with pytest.raises(ValueError):
            validate_key(bad)


# ---------------------------------------------------------------- credentials never in errors


def test_no_credentials_in_errors(backend):
    if backend.name == "gcs":
        pytest.skip("the gcs emulator takes no secret (token='anon')")
    if backend.name == "memory":
        pytest.skip("memory:// takes no credentials")
    # s3: real credentials (moto accepts any); a local path ignores options but must still redact them
    options = dict(backend.storage_options or {}, key="AKIDSTORAGETEST", secret=SECRET)
    storage = open_storage(backend.url("creds"), options, retry=RetryPolicy(attempts=2, base_delay=0))
    assert SECRET not in repr(storage) and SECRET not in storage.url
    storage.write("k", b"v")  # the credentials work

    def leak(op, url):
        raise OSError(f"backend said: bad signature for secret {SECRET} (key AKIDSTORAGETEST)")

    storage.add_hook(leak)
    with pytest.raises(cloudckpt.StorageError) as info:
        storage.read("k")
    text = "".join(traceback.format_exception(info.value))
    assert SECRET not in text and "AKIDSTORAGETEST" not in text
    assert "***" in str(info.value) and storage.url_for("k") in str(info.value)

    def leak_permission(op, url):
        raise PermissionError(f"AccessDenied for {SECRET}")

    storage._s.hooks.clear()
    storage.add_hook(leak_permission)
    with pytest.raises(cloudckpt.StoragePermissionError) as info:
        storage.read("k")
    assert SECRET not in "".join(traceback.format_exception(info.value))


# ---------------------------------------------------------------- the backend contract


def test_create_only_write_mode_is_typed(storage):
    storage.write("m", b"first", mode=WriteMode.CREATE_ONLY)
    with pytest.raises(ObjectExistsError) as info:
        storage.write("m", [b"sec", b"ond"], mode=WriteMode.CREATE_ONLY)
    assert isinstance(info.value, FileExistsError) and info.value.url == storage.url_for("m")
    assert info.value.operation == "write_create" and storage.read("m") == b"first"


def test_capabilities_are_declared_as_data(backend, storage):
    caps = storage.capabilities
    assert isinstance(caps, Capabilities) and isinstance(storage._s.backend, Backend)
    with pytest.raises(AttributeError):
        caps.create_only = False  # frozen
    assert caps.create_only and caps.ranged_reads
    # the azure SDK's public API reads a response whole and uploads one bytes per request
    assert caps.scattered_reads == (backend.name != "azure")
    assert caps.remote == backend.is_object_store
    assert caps.write_copies == (backend.name in ("memory", "azure"))
    assert caps.lists_uploads == (backend.name == "s3")
    assert caps.temporaries == caps.gathers_writes == (backend.name == "local")
    assert caps.call_timeout == backend.is_object_store


def test_backend_name_and_accepted_options(backend, storage):
    """What the command line checks a user's storage options against: the
    backends that would ignore an unknown option say which they take."""
    name = {"local": "local disk", "memory": "MemoryFileSystem", "s3": "S3FileSystem", "gcs": "GCSFileSystem",
            "azure": "AzureBlobFileSystem"}
    assert storage.backend_name == name[backend.name]
    accepted = storage.accepted_options()
    if backend.name == "s3":
        assert accepted is None  # s3fs hands unknown options to aiobotocore, which rejects them
        return
    assert isinstance(accepted, frozenset) and "skip_instance_cache" in accepted
    assert set(backend.storage_options or {}) <= accepted
    assert ("auto_mkdir" in accepted) == (backend.name == "local")
    if backend.name == "gcs":
        assert {"project", "token", "endpoint_url"} <= accepted and "endpont_url" not in accepted
    if backend.name == "azure":
        assert {"connection_string", "account_name", "account_key", "sas_token", "credential"} <= accepted
        assert "conection_string" not in accepted


def test_missing_bucket_is_one_request_on_the_real_servers(backend, storage):
    assert storage.missing_bucket() is None  # the bucket exists (or there are none)
    if not backend.is_object_store:
        return
    scheme = backend.url().split("://", 1)[0]
    gone = open_storage(f"{scheme}://cloudckpt-no-such-bucket-{uuid.uuid4().hex[:8]}/run", backend.storage_options)
    seen = []
    remove = add_global_hook(lambda op, url: seen.append(op))
    try:
        assert gone.missing_bucket() == gone.url.split("://", 1)[1].split("/", 1)[0]
    finally:
        remove()
    assert seen == [] and gone.stats.requests == 0  # a probe for a message: not a counted request


def test_crc32c_loads_the_extension_alone_and_falls_back_to_the_package():
    """The fast path (the crc32c package's C extension without its __init__, which
    imports importlib.metadata and argparse) and the public fallback agree."""
    import subprocess
    import sys

    from cloudckpt.format import checksum

    fast, public = checksum._crc32c_function(True), checksum._crc32c_function(False)
    data = bytes(range(256)) * 1000
    assert fast(data, 0) == public(data, 0) == checksum.crc32c_of(data)
    assert fast(b"123456789", 0) == 0xE3069283
    code = "import sys, cloudckpt; cloudckpt.format.checksum.crc32c_of(b'x'); print('crc32c' in sys.modules, 'importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"], out
