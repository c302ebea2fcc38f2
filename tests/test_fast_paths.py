"""The fast paths over gcsfs internals (cloudckpt/storage/backends/fast_paths.py)
and their public fallbacks, run on the real servers (fake-gcs-server, moto).

Every private attribute of a third-party object used by cloudckpt's storage
layer sits in fast_paths.py; each need there falls back to a public path,
with its reason logged once per process, where the installed gcsfs lacks
what it uses, or where ``CLOUDCKPT_PUBLIC_PATHS`` (or ``public=True``) asks
for the public path. These tests force each fallback and check that it
works (bit-exact round trips, reads into buffers, exists, retries) and says why.
"""

from __future__ import annotations

import ast
import http.server
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import cloudckpt
from cloudckpt.errors import ObjectNotFoundError, StorageError
from cloudckpt.storage import RetryPolicy, open_storage
from cloudckpt.storage.backends import fast_paths

ROOT = Path(__file__).resolve().parent.parent
NO_WAIT = RetryPolicy(attempts=2, base_delay=0, max_delay=0)


@pytest.fixture
def fresh_log(monkeypatch, caplog):
    """A process that has logged no fallback yet, and the records of logger "cloudckpt"."""
    monkeypatch.setattr(fast_paths, "_LOGGED", set())
    monkeypatch.delenv(fast_paths.ENV_VAR, raising=False)
    caplog.set_level(logging.INFO, logger="cloudckpt")
    return caplog


def _reasons(caplog, need: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cloudckpt" and f"fast path {need} not used" in r.getMessage()]


# ---------------------------------------------------------------- only fast_paths.py touches internals


def _private_uses(path: Path) -> list[str]:
    """``x._name`` where x is not self/cls/a cloudckpt object of the module, and
    ``getattr``/``hasattr`` of a "_name", in one module."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = ast.unparse(node.value)
            if base in ("self", "cls") or base.startswith(("self._", "type(self)")):
                continue  # cloudckpt's own objects
            if base.endswith("fs") or base.endswith(".fs") or base in ("inner", "wrapper"):
                out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
        ):
            out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("cloudckpt"):
            if any(p.startswith("_") and p != "__future__" for p in node.module.split(".")) or any(
                a.name.startswith("_") for a in node.names
            ):
                out.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
    return out


def test_no_private_attribute_of_a_backend_library_outside_fast_paths():
    storage = ROOT / "cloudckpt" / "storage"
    found = [u for p in sorted(storage.rglob("*.py")) if p.name != "fast_paths.py" for u in _private_uses(p)]
    assert found == []
    # the scan does see them where they are
    assert any("fs._call" in u for u in _private_uses(storage / "backends" / "fast_paths.py"))


# ---------------------------------------------------------------- detection


def test_detection_of_a_gcsfs_without_the_retrying_wrapper(fresh_log):
    class NoWrapper:
        async def _request(self, method, path, *args, headers=None, data=None, **kwargs):
            return None

    class OtherSignature:
        async def _inner(self, url):
            return url

        async def _request(self, url):
            return await OtherSignature._inner(self, url)

        _request.__wrapped__ = _inner  # type: ignore[attr-defined]

    assert fast_paths.gcs_single_try_class(NoWrapper) is None
    [record] = _reasons(fresh_log, "gcs-single-try")
    assert record.levelno == logging.WARNING and "NoWrapper._request is not a retrying wrapper" in record.getMessage()
    assert "6 tries" in record.getMessage()  # what the fallback costs
    fresh_log.clear()
    fast_paths._LOGGED.clear()
    assert fast_paths.gcs_single_try_class(OtherSignature) is None
    assert "takes other arguments" in _reasons(fresh_log, "gcs-single-try")[0].getMessage()


def test_detection_of_internals_absent_or_of_another_signature(gcs_server, fresh_log):
    import servers
    from gcsfs.core import GCSFileSystem

    class OldHeaders(GCSFileSystem):  # _get_headers as another gcsfs version might have it
        def _get_headers(self):  # type: ignore[override]
            return {}

    class NoCall(GCSFileSystem):
        _call = None  # type: ignore[assignment]

    opts = servers.gcs_storage_options(gcs_server.endpoint_url)
    real = GCSFileSystem(skip_instance_cache=True, **opts)
    assert fast_paths.gcs_stream_reader(real) is not None and fast_paths.gcs_buffers_uploader(real) is not None
    assert fresh_log.records == []
    assert fast_paths.gcs_stream_reader(OldHeaders(skip_instance_cache=True, **opts)) is None
    assert fast_paths.gcs_buffers_uploader(NoCall(skip_instance_cache=True, **opts)) is None
    [read] = _reasons(fresh_log, "gcs-stream-read")
    [upload] = _reasons(fresh_log, "gcs-buffers-upload")
    assert "OldHeaders._get_headers has another type or signature" in read.getMessage()
    assert "NoCall._call has another type or signature" in upload.getMessage()
    assert read.levelno == upload.levelno == logging.WARNING
    # once per process and need
    assert fast_paths.gcs_stream_reader(OldHeaders(skip_instance_cache=True, **opts)) is None
    assert len(_reasons(fresh_log, "gcs-stream-read")) == 1


def test_public_parameter_and_environment_force_the_fallback(fresh_log, monkeypatch):
    class Anything:
        pass

    assert fast_paths.gcs_stream_reader(Anything(), public=True) is None
    [record] = _reasons(fresh_log, "gcs-stream-read")
    assert record.levelno == logging.INFO and "public=True" in record.getMessage()
    monkeypatch.setenv(fast_paths.ENV_VAR, "gcs-buffers-upload, gcs-single-try")
    assert fast_paths.forced_public("gcs-single-try") and not fast_paths.forced_public("gcs-stream-read")
    assert fast_paths.gcs_buffers_uploader(Anything()) is None
    assert f"{fast_paths.ENV_VAR}=gcs-buffers-upload" in _reasons(fresh_log, "gcs-buffers-upload")[0].getMessage()


# ---------------------------------------------------------------- the fallbacks on fake-gcs-server


def _gcs(gcs_server, gcs_bucket, name, retry=NO_WAIT, endpoint=None):
    import servers

    opts = servers.gcs_storage_options(endpoint or gcs_server.endpoint_url)
    return open_storage(f"gs://{gcs_bucket}/fast-paths/{name}", opts, retry=retry)


def test_gcs_public_read_path(gcs_server, gcs_bucket, fresh_log, monkeypatch):
    monkeypatch.setenv(fast_paths.ENV_VAR, "gcs-stream-read")
    s = _gcs(gcs_server, gcs_bucket, "read")
    assert not s.capabilities.scattered_reads and not s.capabilities.write_copies  # uploads still fast
    [record] = _reasons(fresh_log, "gcs-stream-read")
    assert "8 MiB" in record.getMessage()
    data = np.random.default_rng(0).integers(0, 256, (20 << 20) + 12345, dtype=np.uint8).tobytes()  # > two ranges
    s.write("big", data)
    out = np.empty(len(data), np.uint8)
    s.read_into("big", memoryview(out))
    assert out.tobytes() == data
    a, b, c = bytearray(10), bytearray(9 << 20), bytearray(3)
    s.read_into_many("big", [(memoryview(b), 5), (memoryview(a), 0), (memoryview(c), len(data) - 3)])
    assert bytes(a) == data[:10] and bytes(b) == data[5 : 5 + (9 << 20)] and bytes(c) == data[-3:]
    assert s.exists("big") and not s.exists("nope")
    with pytest.raises(ObjectNotFoundError):
        s.read_into("nope", memoryview(bytearray(4)))


def test_gcs_public_upload_path(gcs_server, gcs_bucket, fresh_log, monkeypatch):
    monkeypatch.setenv(fast_paths.ENV_VAR, "gcs-buffers-upload")
    s = _gcs(gcs_server, gcs_bucket, "upload")
    assert s.capabilities.write_copies and s.capabilities.scattered_reads
    assert "join their buffers" in _reasons(fresh_log, "gcs-buffers-upload")[0].getMessage()
    arr = np.random.default_rng(1).integers(0, 2**31, (3 << 20) // 4, dtype=np.int32)
    s.write("parts", [memoryview(arr[:7]).cast("B"), memoryview(arr[7:]).cast("B"), b"tail"])
    assert s.read("parts") == arr.tobytes() + b"tail"
    s.write("one", memoryview(arr).cast("B"))
    assert s.read("one") == arr.tobytes()
    assert s.write_if_absent("once", b"x") and not s.write_if_absent("once", b"y")
    assert s.read("once") == b"x"


def test_gcs_everything_public_save_and_load(gcs_server, gcs_bucket, fresh_log, monkeypatch):
    monkeypatch.setenv(fast_paths.ENV_VAR, "all")
    import servers

    rng = np.random.default_rng(2)
    state = {"w": rng.standard_normal((300, 700)).astype(np.float32), "b": np.arange(5)}
    state.update({f"s{i}": rng.random(33) for i in range(40)})  # a pack of small tensors
    url = f"gs://{gcs_bucket}/fast-paths/all/ckpt"
    so = servers.gcs_storage_options(gcs_server.endpoint_url)
    cloudckpt.save(url, state, storage_options=so)
    back = cloudckpt.load(url, storage_options=so)
    assert sorted(back) == sorted(state)
    assert all(back[k].tobytes() == v.tobytes() and back[k].dtype == v.dtype for k, v in state.items())
    assert {n for n in fast_paths.NEEDS if _reasons(fresh_log, n)} == set(fast_paths.NEEDS)
    assert all(len(_reasons(fresh_log, n)) == 1 for n in fast_paths.NEEDS)  # once per process, not per storage


# ---------------------------------------------------------------- retries: cloudckpt's alone, or gcsfs' under them


class FlakyProxy:
    """A real HTTP server in front of an emulator that answers 503 to the
    next ``fail`` requests whose path holds ``marker``, holds those back
    ``delay`` seconds (or stalls ``stall`` seconds half way through their
    answer's body), and relays the rest."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.fail = 0
        self.delay = 0.0  # seconds before relaying a matching request
        self.stall = 0.0  # seconds in the middle of a matching answer's body
        self.marker = "\0"
        self.seen: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _relay(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    hit = proxy.marker in self.path
                    if hit:
                        proxy.seen.append(self.command)
                    failing = hit and proxy.fail > 0
                    if failing:
                        proxy.fail -= 1
                if hit and proxy.delay:
                    time.sleep(proxy.delay)
                if failing:
                    return self._answer(503, {"Content-Type": "application/json"},
                                        json.dumps({"error": {"code": 503, "message": "injected"}}).encode())
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                req = urllib.request.Request(proxy.target + self.path, data=body or None, method=self.command, headers=headers)
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                try:
                    with opener.open(req, timeout=30) as r:
                        return self._answer(r.status, dict(r.headers.items()), r.read(), hit)
                except urllib.error.HTTPError as e:
                    return self._answer(e.code, dict(e.headers.items()), e.read())

            def _answer(self, status, headers, payload, hit=False):
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if hit and proxy.stall:
                    half = len(payload) // 2
                    self.wfile.write(payload[:half])
                    self.wfile.flush()
                    time.sleep(proxy.stall)
                    payload = payload[half:]
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _relay

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client gone (timed out) or the emulator stopped
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_gcs(gcs_server):
    proxy = FlakyProxy(gcs_server.endpoint_url)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("public", [False, True], ids=["single-try", "gcsfs-retries"])
def test_gcs_retries(gcs_server, gcs_bucket, flaky_gcs, fresh_log, monkeypatch, public):
    """Fast path: a 503 reaches cloudckpt, whose RetryPolicy retries it (no
    sleep here). Fallback: gcsfs retries it itself, after >= 1 s of its own
    backoff, and cloudckpt sees one successful attempt."""
    if public:
        monkeypatch.setenv(fast_paths.ENV_VAR, "gcs-single-try")
    s = _gcs(gcs_server, gcs_bucket, f"retry-{public}", endpoint=flaky_gcs.endpoint_url)
    s.write("obj", b"payload")
    flaky_gcs.marker, flaky_gcs.fail = "obj", 1
    flaky_gcs.seen.clear()
    before = s.stats.snapshot()
    t0 = time.monotonic()
    assert s.read("obj") == b"payload"
    took = time.monotonic() - t0
    retries = s.stats.snapshot()["retries"] - before["retries"]
    assert flaky_gcs.fail == 0 and len(flaky_gcs.seen) >= 2  # the 503, then the request again
    if public:
        assert retries == 0 and took >= 1.0, (retries, took)
        assert "6 tries" in _reasons(fresh_log, "gcs-single-try")[0].getMessage()
    else:
        assert retries == 1 and took < 1.0, (retries, took)
        assert _reasons(fresh_log, "gcs-single-try") == []


# ---------------------------------------------------------------- S3: the public API only


def test_s3_streams_and_heads_through_the_public_call_s3(s3_server, s3_bucket):
    import servers

    s = open_storage(f"s3://{s3_bucket}/fast-paths/s3", servers.s3_storage_options(s3_server.endpoint_url), retry=NO_WAIT)
    fs = s._s.backend.fs
    calls: list[str] = []
    real = fs.call_s3

    def spy(method, *args, **kwargs):
        calls.append(method)
        return real(method, *args, **kwargs)

    data = np.random.default_rng(3).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    s.write("x", data)
    fs.call_s3 = spy
    try:
        out = [bytearray(5), bytearray(2 << 20)]
        s.read_into_many("x", [(memoryview(out[0]), 0), (memoryview(out[1]), 5)])
        assert s.exists("x") and not s.exists("y")
    finally:
        del fs.call_s3
    assert bytes(out[0]) == data[:5] and bytes(out[1]) == data[5 : 5 + (2 << 20)]
    assert calls == ["get_object", "head_object", "head_object"]
    assert s.capabilities.scattered_reads and not s.capabilities.write_copies


@pytest.mark.parametrize("where", ["headers", "body"])
def test_s3_streamed_read_keeps_to_the_request_timeout(s3_server, s3_bucket, where):
    """A ranged GET and the read of its body share one deadline; a timed-out
    read leaves the client able to read again."""
    import servers

    proxy = FlakyProxy(s3_server.endpoint_url)
    try:
        url = f"s3://{s3_bucket}/fast-paths/slow-{where}"
        data = bytes(range(256)) * 4096
        open_storage(url, servers.s3_storage_options(s3_server.endpoint_url)).write("obj", data)
        opts = servers.s3_storage_options(proxy.endpoint_url)
        s = open_storage(url, opts, retry=RetryPolicy(attempts=1), request_timeout=1)
        proxy.marker = "obj"
        if where == "headers":
            proxy.delay = 3.0
        else:
            proxy.stall = 3.0
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="Timeout") as info:
            s.read_into("obj", memoryview(bytearray(len(data))))
        assert time.monotonic() - t0 < 2.9, info.value
        proxy.delay = proxy.stall = 0.0
        out = bytearray(len(data) - 10)
        s.read_into("obj", memoryview(out), 10)
        assert bytes(out) == data[10:]
    finally:
        proxy.close()


def test_gcs_fast_paths_allocate_little_the_public_ones_copy(gcs_server, gcs_bucket, fresh_log, monkeypatch):
    """What the fast paths are kept for, measured: a 24 MiB upload from three
    buffers and a 24 MiB read into one, with tracemalloc, each way."""
    import tracemalloc

    n = 24 << 20
    arr = np.random.default_rng(4).integers(0, 256, n, dtype=np.uint8)
    pieces = [memoryview(arr[: n // 3]), memoryview(arr[n // 3 : 2 * n // 3]), memoryview(arr[2 * n // 3 :])]
    peaks = {}
    for way in ("fast", "public"):
        if way == "public":
            monkeypatch.setenv(fast_paths.ENV_VAR, "gcs-stream-read,gcs-buffers-upload")
        s = _gcs(gcs_server, gcs_bucket, f"memory-{way}")
        s.write("warm", b"x")
        s.read("warm")  # the client's session exists before measuring
        out = np.empty(n, np.uint8)
        tracemalloc.start()
        try:
            s.write("obj", pieces)
            write_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            s.read_into("obj", memoryview(out))
            read_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert out.tobytes() == arr.tobytes()
        peaks[way] = (write_peak, read_peak)
    (fast_w, fast_r), (pub_w, pub_r) = peaks["fast"], peaks["public"]
    assert fast_w < n // 4 and fast_r < 4 << 20, peaks
    assert pub_w > n and pub_r > 8 << 20, peaks  # the join (and gcsfs' body); a temporary 8 MiB range
