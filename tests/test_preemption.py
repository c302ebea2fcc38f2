"""PreemptionCheckpointHandler: a real subprocess gets a real SIGTERM mid-training,
saves, exits with the documented status, and the next run resumes exactly."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from manager_helpers import NOT_S3, manager, name, on

import cloudckpt

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import preempt_train  # noqa: E402

STEPS = 30
SIGNAL_AFTER = 8


def _run(backend, *extra, out=None):
    args = [sys.executable, str(SCRIPTS / "preempt_train.py"), backend.url("run"), "--steps", str(STEPS)]
    args += ["--options", json.dumps(backend.storage_options or {}), *extra]
    if out:
        args += ["--out", str(out)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


@pytest.mark.parametrize(
    ("backend", "mode"), [("local", "sync"), ("local", "async"), ("s3", "async")], indirect=["backend"]
)
def test_sigterm_saves_exits_143_and_the_next_run_resumes_exactly(backend, mode, tmp_path):
    extra = ["--async-save"] if mode == "async" else []
    proc = _run(backend, *extra)
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if line.startswith("step ") and int(line.split()[1]) >= SIGNAL_AFTER:
            break
    proc.send_signal(signal.SIGTERM)  # a real signal, mid-training
    out, err = proc.communicate(timeout=60)
    lines = seen + out.splitlines()
    assert proc.returncode == 143, (lines, err)  # 128 + SIGTERM, documented
    exiting = [ln for ln in lines if ln.startswith("exiting at step")]
    assert len(exiting) == 1  # the finally block ran
    preempted_at = int(exiting[0].split()[-1])
    assert SIGNAL_AFTER <= preempted_at < STEPS
    assert "received SIGTERM" in err and "grace period" in err and "exiting with status 143" in err

    latest = cloudckpt.latest_checkpoint(backend.url("run"), storage_options=backend.storage_options)
    state = cloudckpt.load(latest, storage_options=backend.storage_options)
    assert int(state["step"]) == preempted_at  # the state at the signal, not the last periodic save

    result = tmp_path / "w.npy"
    proc2 = _run(backend, *extra, out=result)
    out2, err2 = proc2.communicate(timeout=60)
    assert proc2.returncode == 0, err2
    assert out2.splitlines()[0] == f"start step={preempted_at} restored={latest}"
    np.testing.assert_array_equal(np.load(result), preempt_train.train(STEPS))  # bit-exact


@on(*NOT_S3)
def test_handler_in_process_numbering_exit_code_and_chaining(backend):
    w, step = np.zeros(2), np.array(0)
    m = manager(backend, cloudckpt.Checkpoint(w=w, step=step), 3)
    chained = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: chained.append(s))
    try:
        with cloudckpt.PreemptionCheckpointHandler(m, signals=(signal.SIGUSR1,), exit_code=3) as h:
            assert not h.received and h.exit_code == 3
            h.check(step=1)  # no signal: nothing
            step[...] = 7
            w[:] = 7
            assert name(m.save(checkpoint_number=7)) == "ckpt-7"
            os.kill(os.getpid(), signal.SIGUSR1)
            assert h.received and h.signal == signal.SIGUSR1 and chained == [signal.SIGUSR1]
            with pytest.raises(SystemExit) as ei:
                h(step=7)  # saved at this very step already: no second save, no CheckpointExistsError
            assert ei.value.code == 3
            assert [name(u) for u in m.checkpoints] == ["ckpt-7"]

            step[...] = 8
            w[:] = 8
            with pytest.raises(SystemExit):
                h.check(step=step)  # a 0-d array names it: ckpt-8
            assert name(m.latest_checkpoint) == "ckpt-8"
            assert cloudckpt.load(m.latest_checkpoint, storage_options=backend.storage_options)["w"].tolist() == [8, 8]
        assert signal.getsignal(signal.SIGUSR1) is not h._on_signal  # restored on close
        os.kill(os.getpid(), signal.SIGUSR1)
        assert chained == [signal.SIGUSR1, signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_default_exit_status_is_128_plus_signal(tmp_path):
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), str(tmp_path), 2, async_save=True)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background job
    with cloudckpt.PreemptionCheckpointHandler(m, signals=(signal.SIGINT, signal.SIGTERM)) as h:
        assert h.exit_code == 128 + signal.SIGINT  # before a signal: the first one handled
        m.save()  # in flight when the signal arrives
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the default handler is not chained
        with pytest.raises(SystemExit) as ei:
            h()
        assert ei.value.code == 130
    assert [name(u) for u in m.checkpoints] == ["ckpt-1", "ckpt-2"]  # waited for the first, then saved
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_save_fn_replaces_the_default_save(tmp_path):
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), str(tmp_path), 2, async_save=True)
    calls = []

    def save_fn():
        calls.append(1)
        return m.save(check_interval=False, metrics={"preempted": True})

    with cloudckpt.PreemptionCheckpointHandler(m, signals=(signal.SIGUSR2,), save_fn=save_fn) as h:
        os.kill(os.getpid(), signal.SIGUSR2)
        with pytest.raises(SystemExit) as ei:
            h.check()
    assert ei.value.code == 128 + signal.SIGUSR2 and calls == [1]
    assert m.latest_checkpoint is not None  # committed before the exit, though the manager is async
    assert cloudckpt.info(m.latest_checkpoint).metadata["metrics"] == {"preempted": True}


class BlackHoleProxy:
    """A TCP proxy to a real server that can start swallowing all traffic: requests
    then hang, as on a network partition. No mock: real sockets, real client."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.black_hole = False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.black_hole:
                    dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def s3_black_hole(s3_server, s3_bucket):
    port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    proxy = BlackHoleProxy(port)
    yield proxy, dict(
        key="testing", secret="testing", endpoint_url=f"http://127.0.0.1:{proxy.port}", anon=False
    ), s3_bucket
    proxy.close()


def test_save_after_the_signal_fails_within_the_grace_period(s3_black_hole, caplog):
    proxy, options, bucket = s3_black_hole
    d = f"s3://{bucket}/hole-{os.getpid()}-{time.time_ns()}"
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(4)), d, 2, storage_options=options)
    m.save()
    proxy.black_hole = True  # from now on, no request gets an answer
    with cloudckpt.PreemptionCheckpointHandler(m, grace_period=3.0, margin=1.5) as h:
        os.kill(os.getpid(), signal.SIGTERM)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="cloudckpt"), pytest.raises(cloudckpt.StorageError) as ei:
            h.check()
        took = time.monotonic() - t0
    assert took < 3.0, took  # failed within the grace period, not hung past it
    assert d in str(ei.value)
    assert any("received SIGTERM" in r.getMessage() for r in caplog.records)


def test_request_timeout_bounds_each_request(s3_black_hole):
    proxy, options, bucket = s3_black_hole
    d = f"s3://{bucket}/timeout-{os.getpid()}-{time.time_ns()}"
    m = cloudckpt.CheckpointManager(
        cloudckpt.Checkpoint(w=np.ones(4)), d, 2, storage_options=options, request_timeout=0.3
    )
    m.save()
    proxy.black_hole = True
    t0 = time.monotonic()
    with pytest.raises(cloudckpt.StorageError, match="failed after retries"):
        m.save()
    assert time.monotonic() - t0 < 8  # 5 attempts of 0.3 s plus backoff, not minutes


@on(*NOT_S3)  # s3: test_request_timeout_bounds_each_request
def test_request_timeout_and_time_limit_work_on_every_backend(backend):
    w = np.arange(5.0)
    m = manager(backend, cloudckpt.Checkpoint(w=w), 2, request_timeout=30)
    with m._time_limit(60):
        url = m.save()
        w[:] = 0
        assert m.restore_or_initialize() == url and w.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    with m._time_limit(0), pytest.raises(cloudckpt.StorageError, match="time limit"):
        m.save()
    assert m.latest_checkpoint == url  # nothing was started
