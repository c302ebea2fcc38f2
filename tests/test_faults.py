"""Injected faults (cloudckpt.testing.faults) against the manager on every backend.

Transient errors (timeouts, connection resets, 503s) on a fraction of the
requests: saves and restores go through by retrying, or fail with a clear
CheckpointError while the previous latest checkpoint stays intact and
restorable. Permanent errors (access denied, disk full, read-only disk, a
bucket that does not exist) fail fast, without retrying, naming the backend
and the object.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import cloudckpt
from cloudckpt.storage import add_global_hook, open_storage
from cloudckpt.testing import FaultInjector, Faults, InjectedCrash, install_from_env, parse_spec

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import crashlib
from reliability_helpers import record

BACKEND_NAME = {"local": "local", "memory": "memory", "s3": "s3", "gcs": "gs", "azure": "az"}


def new_manager(backend, sub="run", **kw):
    ckpt, live = crashlib.new_checkpoint()
    m = cloudckpt.CheckpointManager(
        ckpt, backend.url(sub), 2, storage_options=backend.storage_options, options=crashlib.STORE_OPTIONS, **kw
    )
    return m, ckpt, live


def save_step(m, ckpt, live, step):
    crashlib.fill(live, step)
    ckpt.step = step
    return m.save()


def assert_latest_loads(backend, expected_step, sub="run"):
    """Without claiming the directory: the latest is ``expected_step`` and loads bit-exactly."""
    url = cloudckpt.latest_checkpoint(backend.url(sub), storage_options=backend.storage_options)
    assert url == backend.url(sub, f"ckpt-{expected_step}")
    assert crashlib.bit_exact(cloudckpt.load(url, storage_options=backend.storage_options), expected_step)


def assert_restores(backend, expected_step, sub="run"):
    """A fresh manager names ``expected_step`` latest and restores it bit-exactly."""
    m, ckpt, live = new_manager(backend, sub)
    assert m.latest_checkpoint == backend.url(sub, f"ckpt-{expected_step}")
    assert m.restore_or_initialize() == backend.url(sub, f"ckpt-{expected_step}")
    assert int(ckpt.step) == expected_step and crashlib.bit_exact(live, expected_step)
    return m


# ------------------------------------------------------------------ the helper itself


def test_spec_parsing_and_validation():
    f = parse_spec("kill_after=3, log=/tmp/x.log; signal=TERM")
    assert (f.kill_after, f.log, f.signal) == (3, "/tmp/x.log", 15)
    assert parse_spec('{"fail_rate": 0.5, "errors": ["reset"]}').errors == ("reset",)
    for bad in ("kill_after=0", "fail_rate=1.5", "errors=flood", "permanent=gone", "latency=-1", "nonsense"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    assert install_from_env({}) is None


def test_decisions_are_reproducible_with_a_seed():
    def run(seed):
        inj = FaultInjector(fail_rate=0.5, seed=seed)
        out = []
        for i in range(40):
            try:
                inj("write", f"memory://x/{i}")
                out.append(None)
            except OSError as exc:
                out.append(type(exc).__name__)
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert {"TimeoutError", "ConnectionResetError", "ServiceUnavailableError"} <= set(run(7))


def test_stop_after_ends_every_later_request_and_filters_apply():
    s = open_storage("memory://faults-stop")
    inj = FaultInjector(Faults(stop_after=2, ops=("write",), match="/a"))
    inj.attach(s)
    s.write("a/1", b"x")
    s.write("b/1", b"x")  # not matched: never counted, never stopped
    s.read("a/1")  # not a write
    with pytest.raises(InjectedCrash):
        s.write("a/2", b"x")
    with pytest.raises(InjectedCrash):
        s.write("a/3", b"x")
    assert inj.requests == 3 and [e[3] for e in inj.events] == ["STOP", "STOP"]


# ------------------------------------------------------------------ transient faults


@pytest.mark.parametrize("kind", ["timeout", "reset", "503"])
def test_each_transient_error_kind_is_retried(kind):
    s = open_storage(f"memory://faults-kind-{kind}")
    inj = FaultInjector(fail_rate=1.0, errors=(kind,), max_failures_per_request=2)
    inj.attach(s)
    s.write("k", b"v")
    assert s.read("k") == b"v"
    assert inj.injected == 4 and inj.retried == 4 and s.stats.retries == 4


def test_saves_and_restores_succeed_through_transient_faults(backend):
    """30% of the requests fail (timeouts, resets, 503s; never more than 3 times in a
    row: the retry policy makes 5 attempts); latency jitter reorders the concurrent ones."""
    rate = 0.3 if backend.name in ("local", "memory") else 0.2
    faults = FaultInjector(fail_rate=rate, max_failures_per_request=3, jitter=0.01, seed=11)
    with faults:
        m, ckpt, live = new_manager(backend)
        assert m.restore_or_initialize() is None
        for step in range(1, 5):
            assert save_step(m, ckpt, live, step) == backend.url("run", f"ckpt-{step}")
        assert [u.rsplit("/", 1)[1] for u in m.checkpoints] == ["ckpt-3", "ckpt-4"]
        retries = m._storage.stats.retries
        m2 = assert_restores(backend, 4)
        for step in (3, 4):
            state = cloudckpt.load(backend.url("run", f"ckpt-{step}"), storage_options=backend.storage_options)
            assert crashlib.bit_exact(state, step)
        assert m2.gc() == []
    assert faults.injected > 0
    assert faults.retried == faults.injected  # every injected failure was retried, none gave up
    assert retries > 0
    assert crashlib.orphans(backend.url("run"), backend.storage_options) == []
    record("transient-faults-succeed", backend=backend.name, rate=rate, requests=faults.requests, injected=faults.injected, retried=faults.retried, outcome="4 saves + restore + loads succeeded, bit-exact")


@pytest.mark.parametrize("backend", ["local", "memory", "s3"], indirect=True)
def test_a_save_that_runs_out_of_retries_fails_clearly_and_keeps_the_latest(backend):
    m, ckpt, live = new_manager(backend)
    save_step(m, ckpt, live, 1)
    save_step(m, ckpt, live, 2)
    # the commit (create-only manifest write) of the next save always times out
    faults = FaultInjector(fail_rate=1.0, errors=("timeout",), ops=("write_create",))
    t0 = time.monotonic()
    with faults, pytest.raises(cloudckpt.StorageError) as info:
        save_step(m, ckpt, live, 3)
    err = info.value
    assert isinstance(err, cloudckpt.CheckpointError) and err.transient
    assert "failed after retries" in str(err) and backend.url("run", "ckpt-3", "manifest.json") in str(err)
    assert faults.injected == 5 and faults.retried == 4  # the RetryPolicy's 5 attempts, then a clear error
    assert time.monotonic() - t0 < 30
    assert m.latest_checkpoint == backend.url("run", "ckpt-2")
    assert_latest_loads(backend, 2)
    # the failed attempt's data was removed; the manager goes on saving once the faults stop
    assert crashlib.orphans(backend.url("run"), backend.storage_options) == []
    assert save_step(m, ckpt, live, 4) == backend.url("run", "ckpt-4")
    assert_restores(backend, 4)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_uncapped_transient_faults_either_succeed_or_fail_clearly(backend):
    """Half of the manager's requests fail, with no cap: each save either returns (and
    is the latest) or raises a transient StorageError; a save that raised may still
    have committed (the failure came after its manifest: owner re-check, state file,
    retention), and then it is whole, never partial."""
    so = backend.storage_options
    m, ckpt, live = new_manager(backend)
    outcomes = []
    latest = None  # number of the newest checkpoint that is there
    step_of: dict[int, int] = {}  # checkpoint number -> the step it holds
    faults = FaultInjector(fail_rate=0.5, seed=5)
    faults.attach(m._storage)  # the manager's requests only: the checks below see the truth
    for step in range(1, 7):
        before = ckpt.save_counter
        try:
            url = save_step(m, ckpt, live, step)
            outcomes.append("ok")
            latest = int(url.rsplit("-", 1)[1])
            step_of[latest] = step
        except cloudckpt.CheckpointError as exc:
            assert isinstance(exc, cloudckpt.StorageError) and exc.transient, exc
            assert backend.url("run") in str(exc)
            if ckpt.save_counter == before:  # failed at the owner check, before numbering: nothing written
                outcomes.append("failed before numbering")
                continue
            n = ckpt.save_counter
            committed = open_storage(backend.url("run", f"ckpt-{n}"), so).exists("manifest.json")
            outcomes.append("failed after commit" if committed else "failed")
            if committed:
                latest, step_of[n] = n, step
        found = cloudckpt.latest_checkpoint(backend.url("run"), storage_options=so)
        assert found == (None if latest is None else backend.url("run", f"ckpt-{latest}")), (outcomes, found)
        if outcomes[-1] == "ok":
            assert m.latest_checkpoint == found  # an acknowledged save is the latest
    assert faults.injected > 0 and faults.retried > 0
    for n, step in step_of.items():  # every checkpoint that is there is whole
        url = backend.url("run", f"ckpt-{n}")
        if open_storage(url, so).exists("manifest.json"):
            assert crashlib.bit_exact(cloudckpt.load(url, storage_options=so), step)
    if latest is not None:
        m2, _ckpt2, live2 = new_manager(backend)
        assert m2.restore_or_initialize() == backend.url("run", f"ckpt-{latest}")
        assert crashlib.bit_exact(live2, step_of[latest])
        m2.gc()
        assert crashlib.orphans(backend.url("run"), so) == []
    record("transient-faults-uncapped", backend=backend.name, outcomes=outcomes, injected=faults.injected)


class _FailOwnerChecksAfterCommit:
    """Every ownership listing after ckpt-<n>'s manifest was written gets a 503."""

    def __init__(self, n: int) -> None:
        self.n, self.committed = n, False

    def __call__(self, op: str, url: str) -> None:
        if op == "write_create" and url.endswith(f"/ckpt-{self.n}/manifest.json"):
            self.committed = True
        elif self.committed and op == "list" and url.endswith("/ownership"):
            from cloudckpt.testing import ServiceUnavailableError

            raise ServiceUnavailableError(url)


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_save_that_fails_after_its_commit_is_known_to_its_manager(backend):
    so = backend.storage_options
    m, ckpt, live = new_manager(backend)
    save_step(m, ckpt, live, 1)
    save_step(m, ckpt, live, 2)
    remove = m._storage.add_hook(_FailOwnerChecksAfterCommit(3))
    with pytest.raises(cloudckpt.StorageError):
        save_step(m, ckpt, live, 3)
    remove()
    assert open_storage(backend.url("run", "ckpt-3"), so).exists("manifest.json")  # it did commit
    for step in (4, 5, 6):
        save_step(m, ckpt, live, step)
    committed = [d for d in open_storage(backend.url("run"), so).list_dir()[1] if d.startswith("ckpt-")]
    assert sorted(committed) == ["ckpt-5", "ckpt-6"]  # max_to_keep=2
    assert m.latest_checkpoint == cloudckpt.latest_checkpoint(backend.url("run"), storage_options=so)


@pytest.mark.parametrize("backend", ["local", "memory", "s3"], indirect=True)
def test_a_restore_that_runs_out_of_retries_is_a_storage_error_not_corruption(backend):
    """Reads failing for a while must not look like damage: no fallback to an older
    checkpoint, no CorruptCheckpointError; once reads work, the latest restores."""
    m, ckpt, live = new_manager(backend)
    save_step(m, ckpt, live, 1)
    save_step(m, ckpt, live, 2)
    m2, ckpt2, live2 = new_manager(backend)
    with FaultInjector(fail_rate=1.0, errors=("503",), ops=("read", "read_range"), match="/data-"), pytest.raises(cloudckpt.StorageError) as info:
        m2.restore_or_initialize(fallback=True)
    assert not isinstance(info.value, cloudckpt.CorruptCheckpointError) and info.value.transient
    assert backend.url("run", "ckpt-2") in str(info.value)
    assert int(ckpt2.step) == 0 and all(not a.any() for part in live2.values() for a in part.values())  # nothing restored
    assert m2.restore_or_initialize() == backend.url("run", "ckpt-2") and crashlib.bit_exact(live2, 2)


# ------------------------------------------------------------------ permanent faults


PERMANENT = {
    "denied": (cloudckpt.StoragePermissionError, "permission denied"),
    "enospc": (cloudckpt.StorageError, "No space left on device"),
    "erofs": (cloudckpt.StorageError, "Read-only file system"),
}


@pytest.mark.parametrize("kind", list(PERMANENT))
def test_permanent_errors_fail_fast_naming_backend_and_object(backend, kind):
    if backend.is_object_store and kind == "erofs":
        pytest.skip("a read-only disk is a local-disk condition")
    m, ckpt, live = new_manager(backend)
    save_step(m, ckpt, live, 1)
    faults = FaultInjector(permanent=kind, ops=("write",))
    t0 = time.monotonic()
    with faults, pytest.raises(PERMANENT[kind][0]) as info:
        save_step(m, ckpt, live, 2)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert PERMANENT[kind][1] in msg, msg
    assert f"on {BACKEND_NAME[backend.name]}" in msg or f"by {BACKEND_NAME[backend.name]}" in msg, msg
    assert backend.url("run", "ckpt-2") in msg, msg  # the object
    assert faults.retried == 0 and m._storage.stats.retries == 0  # not a retry loop
    assert elapsed < 5, elapsed
    assert m.latest_checkpoint == backend.url("run", "ckpt-1")
    assert_latest_loads(backend, 1)
    assert crashlib.orphans(backend.url("run"), backend.storage_options) == []  # the failed save's data is gone


def test_permission_denied_on_read_fails_fast(backend):
    m, ckpt, live = new_manager(backend)
    save_step(m, ckpt, live, 1)
    t0 = time.monotonic()
    with FaultInjector(permanent="denied", ops=("read", "read_range")) as faults, pytest.raises(cloudckpt.StoragePermissionError) as info:
        cloudckpt.load(backend.url("run", "ckpt-1"), storage_options=backend.storage_options)
    assert time.monotonic() - t0 < 5 and faults.retried == 0
    assert backend.url("run", "ckpt-1", "manifest.json") in str(info.value)
    assert "storage_options" in str(info.value)  # says what to do


def test_a_missing_bucket_fails_fast_naming_it(object_backend):
    """A real bucket that does not exist on moto / fake-gcs-server / Azurite (a container)."""
    b = object_backend
    scheme = {"s3": "s3", "gcs": "gs", "azure": "az"}[b.name]
    url = f"{scheme}://cloudckpt-rel-nonexistent/run"
    ckpt, _live = crashlib.new_checkpoint()
    t0 = time.monotonic()
    attempts: list[tuple[str, str]] = []
    remove = add_global_hook(lambda op, u: attempts.append((op, u)))
    try:
        with pytest.raises(cloudckpt.CheckpointError) as info:
            m = cloudckpt.CheckpointManager(ckpt, url, 2, storage_options=b.storage_options)
            m.save()
    finally:
        remove()
    elapsed = time.monotonic() - t0
    writes = [a for a in attempts if a[0].startswith("write")]
    assert len(writes) == len(set(writes)) == 1, attempts  # one write, refused, not retried
    msg = str(info.value)
    assert "cloudckpt-rel-nonexistent" in msg and scheme in msg, msg
    assert "bucket" in msg.lower(), msg  # says what is missing
    assert elapsed < 10, elapsed
    with pytest.raises(cloudckpt.CheckpointNotFoundError, match="cloudckpt-rel-nonexistent"):
        cloudckpt.load(url + "/ckpt-1", storage_options=b.storage_options)


# ------------------------------------------------------------------ slow responses


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
def test_slow_responses_change_nothing_but_time(backend):
    with FaultInjector(latency=0.005, jitter=0.05, seed=3) as faults:
        m, ckpt, live = new_manager(backend)
        for step in (1, 2, 3):
            save_step(m, ckpt, live, step)
    assert faults.delayed == faults.requests > 0
    assert_restores(backend, 3)
