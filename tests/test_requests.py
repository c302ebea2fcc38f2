"""The request budget of issue 2: a "small-many" state saves to S3 in at most 16
write requests and loads in at most 16 read requests.

Counted three ways: cloudckpt's own ``Storage.stats``, every S3 API call s3fs
makes (a wrapper on the filesystem's ``_call_s3``, below cloudckpt), and the
requests moto's access log shows at the server.
"""

from __future__ import annotations

import re
import time
import uuid

import numpy as np
import pytest
import servers

from cloudckpt.layout import checkpoint_io
from cloudckpt.storage import open_storage

N_TENSORS = 500
# The state is 500 float32 tensors log-spaced 256 B .. 4 MB (~210 MB); scaled to
# 256 B .. 800 kB (~51 MB) to keep the test fast, with the same number of tensors.
SIZES = np.geomspace(256, 800 * 1024, N_TENSORS).astype(np.int64) // 4
BUDGET = 16


def small_many_state() -> dict:
    rng = np.random.default_rng(0)
    # not all-zero data: nothing may be skipped as "empty"
    return {f"layer{i:03d}": {"w": rng.standard_normal(n, dtype=np.float32)} for i, n in enumerate(SIZES)}


class CallCounter:
    """Counts the S3 API calls of one s3fs filesystem: those s3fs makes itself
    (through its coroutine ``_call_s3``) and those cloudckpt makes through its
    public sync ``call_s3``."""

    def __init__(self, fs) -> None:
        from fsspec.asyn import sync_wrapper

        self.calls: list[str] = []
        inner = fs._call_s3

        async def counted(method, *args, **kwargs):
            self.calls.append(method if isinstance(method, str) else getattr(method, "__name__", str(method)))
            return await inner(method, *args, **kwargs)

        fs._call_s3 = counted
        fs.call_s3 = sync_wrapper(counted, obj=fs)

    def take(self) -> list[str]:
        out, self.calls = self.calls, []
        return out


def server_requests(server, marker: str, expect_at_least: int) -> list[str]:
    """The access-log lines of moto that concern ``marker`` (waits for the log to catch up)."""
    # Werkzeug >= 3.1.9 wraps a 4xx line in ANSI colours even in a log file
    pattern = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP')
    lines: list[str] = []
    for _ in range(100):
        text = server.log_path.read_text(errors="replace")
        lines = [m.group(1) + " " + m.group(2) for m in pattern.finditer(text) if marker in m.group(2)]
        if len(lines) >= expect_at_least:
            time.sleep(0.2)  # anything still in flight
            text = server.log_path.read_text(errors="replace")
            return [m.group(1) + " " + m.group(2) for m in pattern.finditer(text) if marker in m.group(2)]
        time.sleep(0.05)
    return lines


def test_small_many_state_meets_the_request_budget_on_s3(s3_server, s3_bucket):
    state = small_many_state()
    total = sum(leaf["w"].nbytes for leaf in state.values())
    assert len(state) == N_TENSORS and 45e6 < total < 60e6
    marker = f"budget-{uuid.uuid4().hex[:12]}"
    url = f"s3://{s3_bucket}/{marker}/ckpt-1"
    so = servers.s3_storage_options(s3_server.endpoint_url)

    # ---- save
    storage = open_storage(url, so)
    counter = CallCounter(storage._s.backend.fs)
    checkpoint_io.write_checkpoint(storage, state)
    save_stats = storage.stats.snapshot()
    save_calls = counter.take()
    writes = save_stats.get("write", 0) + save_stats.get("write_create", 0)
    assert writes <= BUDGET, save_stats
    assert save_stats["requests"] <= BUDGET, save_stats  # reads/heads included
    assert len(save_calls) <= BUDGET, save_calls
    # s3fs issues no more calls than cloudckpt counted, bar the "exists?" HEAD's list fallback
    assert len(save_calls) <= save_stats["requests"] + 1, (save_calls, save_stats)
    assert sum(c in ("put_object", "upload_part", "complete_multipart_upload") for c in save_calls) >= writes
    assert save_stats["bytes_written"] >= total

    saved_at_server = server_requests(s3_server, marker, len(save_calls))
    assert len(saved_at_server) == len(save_calls), (saved_at_server, save_calls)
    assert sum(r.startswith(("PUT", "POST")) for r in saved_at_server) <= BUDGET

    # ---- load, with a fresh client as a restoring process would have
    reader = open_storage(url, so)
    counter = CallCounter(reader._s.backend.fs)
    out = checkpoint_io.read_state(reader, checkpoint_io.read_manifest(reader))
    load_stats = reader.stats.snapshot()
    load_calls = counter.take()
    assert load_stats["requests"] <= BUDGET, load_stats
    assert len(load_calls) <= BUDGET, load_calls
    assert len(load_calls) <= load_stats["requests"] + 1, (load_calls, load_stats)  # + HEAD of a whole-object GET
    assert load_stats["bytes_read"] >= total

    everything = server_requests(s3_server, marker, len(save_calls) + len(load_calls))
    loaded_at_server = everything[len(saved_at_server):]
    assert len(loaded_at_server) == len(load_calls), (loaded_at_server, load_calls)
    assert all(r.startswith(("GET", "HEAD")) for r in loaded_at_server), loaded_at_server

    for name, leaf in state.items():
        assert out[name]["w"].tobytes() == leaf["w"].tobytes(), name


@pytest.mark.parametrize("n", [1, 50, 500])
@pytest.mark.parametrize("backend", ["memory"], indirect=True)  # storage-independent; counted on s3 above
def test_requests_do_not_grow_with_the_number_of_small_tensors(backend, n):
    """Save and load cost the same few requests for 1 or 500 small tensors."""
    state = {f"t{i}": np.full(16, i, np.float32) for i in range(n)}
    storage = open_storage(backend.url("c"), backend.storage_options)
    checkpoint_io.write_checkpoint(storage, state)
    saved = storage.stats.requests
    checkpoint_io.read_state(storage, checkpoint_io.read_manifest(storage))
    loaded = storage.stats.requests - saved
    assert saved <= 6 and loaded <= 3, (saved, loaded)
