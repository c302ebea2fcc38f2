"""async_save=True: save() returns after copying the state; upload and commit run
in the background; sync() and the next save() raise a background failure; at
most one save in flight; interpreter exit waits for the pending save."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from manager_helpers import NOT_S3, Gate, committed, files, manager, name, on

import cloudckpt


def _gate_manifest(m):
    gate = Gate(lambda op, url: op == "write_create" and url.endswith("/manifest.json"))
    remove = m._storage.add_hook(gate)
    return gate, remove


def test_save_returns_before_commit_and_latest_moves_on_commit(backend):
    d = backend.url("run")
    w = np.arange(4.0)
    m = manager(backend, cloudckpt.Checkpoint(w=w), 2, async_save=True)
    first = m.save()
    m.sync()
    assert m.latest_checkpoint == first

    gate, remove = _gate_manifest(m)
    w += 10
    url = m.save()
    assert url == f"{d}/ckpt-2"  # the URL it will have
    assert gate.reached.wait(30)
    w[:] = -1  # the state was copied: changing it now does not change the checkpoint
    assert not committed(backend, url)
    assert m.latest_checkpoint == first and m.checkpoints == [first]
    gate.release.set()
    m.sync()
    remove()
    assert committed(backend, url)
    assert m.latest_checkpoint == url and m.checkpoints == [first, url]
    assert cloudckpt.load(url, storage_options=backend.storage_options)["w"].tolist() == [10.0, 11.0, 12.0, 13.0]


@on(*NOT_S3)
def test_background_failure_is_raised_by_sync_and_by_the_next_save(backend):
    d = backend.url("run")
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(3)), 2, async_save=True)

    def fail(op, url):
        if op == "write" and "/data-" in url:
            raise PermissionError("injected upload failure")

    remove = m._storage.add_hook(fail)
    url = m.save()
    with pytest.raises(cloudckpt.StoragePermissionError, match="injected"):
        m.sync()
    m.sync()  # raised once
    assert m.latest_checkpoint is None and not committed(backend, url)

    m.save()  # fails in the background too ...
    with pytest.raises(cloudckpt.StoragePermissionError):
        m.save()  # ... and the next save() raises it, without saving
    remove()
    assert m.checkpoint.save_counter == 2
    ok = m.save()
    m.sync()
    assert name(ok) == "ckpt-3" and m.latest_checkpoint == ok
    assert files(backend, f"{d}/ckpt-1") == {} and files(backend, f"{d}/ckpt-2") == {}


@on(*NOT_S3)
def test_at_most_one_save_in_flight(backend):
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(2)), None, async_save=True)
    gate, remove = _gate_manifest(m)
    m.save()
    assert gate.reached.wait(30)
    second_returned = threading.Event()
    result = []

    def second():
        result.append(m.save())
        second_returned.set()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.3)
    assert not second_returned.is_set()  # waits for the first one
    remove()
    gate.release.set()
    t.join(30)
    m.sync()
    assert [name(u) for u in m.checkpoints] == ["ckpt-1", "ckpt-2"] and name(result[0]) == "ckpt-2"


@on(*NOT_S3)
def test_restore_waits_for_the_pending_save(backend):
    w = np.zeros(2)
    m = manager(backend, cloudckpt.Checkpoint(w=w), 2, async_save=True)
    w[:] = 3
    url = m.save()
    w[:] = 0
    assert m.restore_or_initialize() == url and w.tolist() == [3.0, 3.0]


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, cloudckpt
    url, options = sys.argv[1], json.loads(sys.argv[2])
    w = np.arange(500_000, dtype=np.float64)  # 4 MB: the upload outlasts the script
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=w), url, 2, async_save=True,
                                    storage_options=options or None)
    print(m.save(), m.latest_checkpoint, flush=True)
    # no sync(): the interpreter exits at once and must wait for the commit
    """
)


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
def test_interpreter_exit_waits_for_the_pending_save(backend, tmp_path):
    import json

    script = tmp_path / "exit_early.py"
    script.write_text(SCRIPT)
    d = backend.url("run")
    proc = subprocess.run(
        [sys.executable, str(script), d, json.dumps(backend.storage_options or {})],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    url, latest = proc.stdout.split()
    assert latest == "None"  # save() returned before the commit
    assert committed(backend, url)
    assert "failed" not in proc.stderr
    w = cloudckpt.load(url, storage_options=backend.storage_options)["w"]
    assert w.shape == (500_000,) and w[-1] == 499_999.0


@on(*NOT_S3)
def test_existing_number_is_refused_at_save_time(backend):
    d = backend.url("run")
    manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2).save()
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2, async_save=True)
    with pytest.raises(cloudckpt.CheckpointExistsError, match="restore_or_initialize"):
        m.save()  # raised by save() itself, not later by sync()
    m.sync()
    assert committed(backend, f"{d}/ckpt-1") and m.latest_checkpoint == f"{d}/ckpt-1"


def test_save_itself_makes_no_request_even_the_first_claiming_one(backend):
    """(Was: the first async save() claimed the directory in the caller: 7 requests on S3.)"""
    d = backend.url("run")
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(4)), 2, async_save=True)
    in_caller: list[tuple[str, str]] = []

    def watch(op, url):
        if threading.current_thread() is threading.main_thread():
            in_caller.append((op, url))

    remove = m._storage.add_hook(watch)
    try:
        for _ in range(3):  # the claiming save, then saves that re-check ownership
            m.save()
            assert in_caller == [], in_caller  # save() itself: no request
            m.sync()
    finally:
        remove()
    assert m.epoch == 1 and [name(u) for u in m.checkpoints] == ["ckpt-2", "ckpt-3"]
    assert committed(backend, f"{d}/ckpt-3")


@on(*NOT_S3)
def test_ownership_lost_in_the_background_is_raised_by_sync(backend):
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(2)), 3, async_save=True)
    first = m.save()
    m.sync()
    other = manager(backend, cloudckpt.Checkpoint(w=np.zeros(2)), 3)
    other.restore_or_initialize()  # claims the directory
    url = m.save()  # returns: the check runs in the background
    with pytest.raises(cloudckpt.OwnershipLostError):
        m.sync()
    assert not committed(backend, url)
    assert other.latest_checkpoint == first and other.checkpoints == [first]
