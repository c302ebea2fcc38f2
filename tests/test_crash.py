"""SIGKILL at every request of a save, and at random moments of a training loop.

A real child process (tests/scripts/crash_child.py) saves the deterministic
state of each step with a CheckpointManager (max_to_keep=2, one chunked and
several packed arrays). Warm-up saves 1 and 2 run clean; before save 3
(whose retention deletes ckpt-1) the child arms ``CLOUDCKPT_FAULTS=kill_after=k``
and dies by SIGKILL just before its k-th request. A fresh process
(tests/scripts/crash_verify.py) then checks invariant 2 of docs/reliability.md: only
committed checkpoints are listed, the latest is the last save that committed,
everything listed restores bit-exactly, and no orphaned object survives its
``gc()`` or its next save.

Counts: every k on local disk; on S3 (moto) and GCS (fake-gcs-server) every
k outside runs of concurrent data writes plus the first and last write of
each run (``kill_points``), or every k with ``CLOUDCKPT_CRASH_ALL=1``. The randomized run is
``CLOUDCKPT_RANDOM_KILLS`` kills (default 15 on local, a third of that on S3).
Set ``CLOUDCKPT_RELIABILITY_LOG=path`` to append a JSON line per scenario
(what docs/reliability.md reports).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_helpers import PARALLEL, SCRIPTS, Child, record, run_all

from cloudckpt.storage import TEMP_MIN_AGE

EVERY_K = os.environ.get("CLOUDCKPT_CRASH_ALL") == "1"
RANDOM_KILLS = int(os.environ.get("CLOUDCKPT_RANDOM_KILLS", "15"))
SEED = int(os.environ.get("CLOUDCKPT_CRASH_SEED", "20240601"))
LOCAL_TEMP = re.compile(r"(^|/)(checkpoint|manifest\.json|preserved\.json|epoch-[0-9]+\.json)\.tmp-[0-9a-f]+$")
ARM_AT = 3  # the save whose requests are counted and killed: its retention deletes ckpt-1


def child_cmd(directory: str, options: dict | None, *extra: str) -> list[str]:
    """Arguments of crash_child.py (after the script name)."""
    return [directory, "--options", json.dumps(options or {}), *extra]


def verify_dirs(directories: list[str], options: dict | None, workdir: Path, *, next_save: bool = True) -> list[dict]:
    """crash_verify.py over ``directories`` in fresh processes (up to PARALLEL)."""
    groups = [directories[i::PARALLEL] for i in range(min(PARALLEL, len(directories)))]
    jobs = [([json.dumps({"directories": g, "options": options or {}, "next_save": next_save})], {}) for g in groups]
    reports: dict[str, dict] = {}
    for rc, out, err in run_all("crash_verify", jobs, workdir):
        assert rc == 0, err
        for line in out.splitlines():
            r = json.loads(line)
            assert "error" not in r, r.get("traceback", r)
            reports[r["directory"]] = r
    return [reports[d] for d in directories]


def parse_log(path: Path) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
    """(requests that went through, the one the child was killed at) from a fault log."""
    done, killed = [], None
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split(" ")
            if parts[0] == "KILL":
                killed = (parts[2], parts[3])
            elif parts[0].isdigit():
                done.append((parts[1], parts[2]))
    return done, killed


def committed_steps(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("committed ")]


# ------------------------------------------------------------------ crash at every request


def exec_child(directory: str, options: dict | None, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python tests/scripts/crash_child.py ...`` in a new interpreter (the path a user's job takes)."""
    argv = [sys.executable, str(SCRIPTS / "crash_child.py"), *child_cmd(directory, options, *extra)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})


def count_save_requests(backend, tmp_path) -> list[tuple[str, str]]:
    """The requests of save ARM_AT of a clean run (logged by CLOUDCKPT_FAULTS, no fault),
    in a new interpreter: the environment-variable path of the fault injector end to end."""
    log = tmp_path / f"count-{backend.name}.log"
    extra = ("--saves", str(ARM_AT), "--arm-at", str(ARM_AT))
    p = exec_child(backend.url("count"), backend.storage_options, *extra, env={"CLOUDCKPT_FAULTS": f"log={log}"})
    assert p.returncode == 0, p.stderr
    assert committed_steps(p.stdout) == [1, 2, 3]
    done, killed = parse_log(log)
    assert killed is None
    return done


def kill_points(ops: list[str], *, every: bool) -> list[int]:
    """The k to kill at: every one, or (object stores, by default) every request that is
    not inside a run of concurrent data writes, plus the first and last of each run.

    Example: list, write x7, write_create, list, write, list, delete, delete, write
    -> 1, 2, 8, 9, 10, 11, 12, 13, 14, 15.
    """
    n = len(ops)
    if every:
        return list(range(1, n + 1))
    return [
        k
        for k in range(1, n + 1)
        if ops[k - 1] != "write" or k == 1 or k == n or ops[k - 2] != "write" or ops[k] != "write"
    ]


@pytest.mark.parametrize("backend", ["local", "s3", "gcs", "azure"], indirect=True)
def test_sigkill_at_every_request_of_a_save_loses_nothing(backend, tmp_path):
    t0 = time.monotonic()
    requests = count_save_requests(backend, tmp_path)
    t_count = time.monotonic() - t0
    n = len(requests)
    ops = [op for op, _ in requests]
    # a save of this state: ownership check, data, create-only manifest, state file, retention deletes
    assert ops[0] == "list" and "write_create" in ops and "delete" in ops, requests
    commit_at = ops.index("write_create") + 1  # 1-based index of the manifest's create-only write
    assert requests[commit_at - 1][1].endswith(f"ckpt-{ARM_AT}/manifest.json")
    ks = kill_points(ops, every=EVERY_K or backend.name == "local")

    jobs = []
    for k in ks:
        log = tmp_path / f"k{k}.log"
        argv = child_cmd(backend.url(f"k{k}"), backend.storage_options, "--saves", str(ARM_AT), "--arm-at", str(ARM_AT))
        jobs.append((argv, {"CLOUDCKPT_FAULTS": f"kill_after={k},log={log}"}))
    t0 = time.monotonic()
    results = run_all("crash_child", jobs, tmp_path)
    t_kill = time.monotonic() - t0

    expected = {}
    for k, (rc, out, err) in zip(ks, results, strict=True):
        assert rc == -signal.SIGKILL, (k, rc, out, err)
        assert committed_steps(out) == [1, 2], (k, out)  # the child never saw save 3 return
        done, killed = parse_log(tmp_path / f"k{k}.log")
        assert killed is not None and len(done) == k - 1, (k, done, killed)
        manifest_landed = any(op == "write_create" and url.endswith(f"ckpt-{ARM_AT}/manifest.json") for op, url in done)
        assert manifest_landed == (k > commit_at)
        expected[k] = (ARM_AT if manifest_landed else ARM_AT - 1, killed)

    t0 = time.monotonic()
    reports = verify_dirs([backend.url(f"k{k}") for k in ks], backend.storage_options, tmp_path)
    t_verify = time.monotonic() - t0
    dirty = 0
    for k, r in zip(ks, reports, strict=True):
        latest, killed = expected[k]
        ctx = (k, killed, r)
        want_latest = f"ckpt-{latest}"
        assert r["latest"] == want_latest and r["latest_function"] == want_latest, ctx
        assert set(r["listed"]) <= set(r["committed"]), ctx  # only committed checkpoints are listed
        assert r["listed"] == r["committed"] and r["listed"][-1] == want_latest, ctx
        assert r["listed_not_exact"] == [], ctx
        assert r["restored"] == want_latest and r["restored_exact"], ctx
        assert r["state_file_latest"] == want_latest, ctx  # rebuilt from the manifests if it was stale
        assert r["orphans_after_gc"] == [], ctx
        assert r["next_saved"] == f"ckpt-{latest + 1}" and r["next_exact"], ctx
        assert r["orphans_after_save"] == [], ctx
        assert r["listed_after_save"] == [want_latest, f"ckpt-{latest + 1}"], ctx
        assert r["incomplete_uploads"] == [], ctx
        dirty += bool(r["orphans_before"] or r["partial"])
    # the sweep did reach states with debris to collect (else it proved little)
    assert dirty >= 1
    record(
        "kill-at-every-request",
        backend=backend.name,
        requests_per_save=n,
        ops=ops,
        kills=len(ks),
        ks=ks,
        commit_request=commit_at,
        committed_in_flight=sum(1 for k in ks if expected[k][0] == ARM_AT),
        left_debris=dirty,
        seconds={"count": round(t_count, 1), "kills": round(t_kill, 1), "verify": round(t_verify, 1)},
        outcome="all invariants held",
    )


# ------------------------------------------------------------------ random kills


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
def test_training_killed_at_random_moments_keeps_every_committed_step(backend, tmp_path):
    kills = RANDOM_KILLS if backend.name == "local" else max(1, RANDOM_KILLS // 3)
    rng = random.Random(SEED)
    directory = backend.url("run")
    last_committed = 0
    starts = []
    history = []
    for i in range(kills):
        extra = ["--saves", "100000"] + (["--async-save"] if i % 2 else [])
        c = Child("crash_child", child_cmd(directory, backend.storage_options, *extra), {}, tmp_path)
        deadline = time.monotonic() + 60
        while not c.lines() and c.proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        first = (c.lines() or [""])[0]
        assert first.startswith("start "), (first, c.stderr())
        start = int(first.split()[1])
        # the restart resumes from the last save that returned, or from the one in flight at the kill
        assert start in (last_committed, last_committed + 1), (i, start, last_committed, history)
        starts.append(start)
        delay = rng.uniform(0.0, 1.2 if backend.name == "local" else 1.5)
        time.sleep(delay)
        os.kill(c.proc.pid, signal.SIGKILL)  # a real signal at a moment the child does not choose
        assert c.wait(30) == -signal.SIGKILL, c.stderr()
        steps = committed_steps("\n".join(c.lines()))
        assert steps == list(range(start + 1, start + 1 + len(steps))), steps
        last_committed = steps[-1] if steps else start
        history.append((start, round(delay, 3), len(steps)))

    # a last, clean run (a new interpreter) continues from where the kills left it
    p = exec_child(directory, backend.storage_options, "--saves", "2")
    assert p.returncode == 0, p.stderr
    start = int(p.stdout.splitlines()[0].split()[1])
    assert start in (last_committed, last_committed + 1)
    starts.append(start)
    assert starts == sorted(starts)  # the step count never went back
    assert starts[-1] > starts[0]  # and training made progress through the kills

    [r] = verify_dirs([directory], backend.storage_options, tmp_path)
    assert r["latest"] == f"ckpt-{start + 2}", r
    assert r["listed_not_exact"] == [] and r["restored_exact"], r
    # a kill inside a local write-temp-then-rename leaves its temp file, collected only once it
    # is TEMP_MIN_AGE old (test_crash_leftover_temp_files_are_collected); anything else is an orphan
    leftovers = [k for k in r["orphans_after_save"] if LOCAL_TEMP.search(k)]
    assert [k for k in r["orphans_after_gc"] if not LOCAL_TEMP.search(k)] == [], r
    assert [k for k in r["orphans_after_save"] if not LOCAL_TEMP.search(k)] == [], r
    record(
        "random-kills",
        backend=backend.name,
        kills=kills,
        seed=SEED,
        starts=starts,
        history=history,
        final_step=start + 2,
        leftover_temp_files=leftovers,
        outcome="monotone, every listed checkpoint bit-exact, no orphans"
        + (f" (but {len(leftovers)} leftover temp file(s))" if leftovers else ""),
    )


# ------------------------------------------------------------------ in-process, every request, sync and async


def _inspect_in_process(directory: str) -> dict:
    from crash_verify import inspect

    return inspect(directory, None, True)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_injected_crash_at_every_request_in_process(mode):
    """The same sweep on memory://, in-process: ``stop_after=k`` makes request k and every
    later one raise InjectedCrash (a BaseException: nothing retries or swallows it), as
    if the process had died there; with async_save the crash happens in the
    background upload and surfaces at sync()."""
    import uuid

    import crashlib
    import fsspec

    import cloudckpt
    from cloudckpt.testing import FaultInjector, InjectedCrash

    def run(directory: str, faults=None) -> list[int]:
        """Saves 1..3; ``faults`` installed (for every storage) just before save 3."""
        ckpt, live = crashlib.new_checkpoint()
        m = cloudckpt.CheckpointManager(ckpt, directory, 2, options=crashlib.STORE_OPTIONS, async_save=mode == "async")
        m.restore_or_initialize()
        done = []
        remove = None
        try:
            for step in (1, 2, 3):
                if step == ARM_AT and faults is not None:
                    remove = faults.install()
                crashlib.fill(live, step)
                ckpt.step = step
                try:
                    m.save()
                    m.sync()
                except InjectedCrash:
                    return done
                done.append(step)
        finally:
            if remove is not None:
                remove()
        return done

    trace = FaultInjector()  # no fault: counts the requests of save 3
    assert run(f"memory://crash-count-{uuid.uuid4().hex}", trace) == [1, 2, 3]
    n = trace.requests
    assert n >= 10
    outcomes = {"committed": 0, "not committed": 0}
    for k in range(1, n + 1):
        directory = f"memory://crash-{mode}-{k}-{uuid.uuid4().hex[:8]}"
        faults = FaultInjector(stop_after=k)
        done = run(directory, faults)
        assert done == [1, 2] and faults.events, (k, done)
        r = _inspect_in_process(directory)
        latest = r["latest"]
        assert latest in ("ckpt-2", "ckpt-3"), (k, r)
        outcomes["committed" if latest == "ckpt-3" else "not committed"] += 1
        assert r["latest_function"] == latest and r["listed"] == r["committed"], (k, r)
        assert r["listed_not_exact"] == [] and r["restored"] == latest and r["restored_exact"], (k, r)
        assert r["orphans_after_gc"] == [] and r["orphans_after_save"] == [] and r["next_exact"], (k, r)
        fsspec.filesystem("memory").rm(directory[len("memory://") :], recursive=True)
    assert outcomes["committed"] > 0 and outcomes["not committed"] > 0
    record("injected-crash-in-process", backend="memory", mode=mode, requests_per_save=n, kills=n, **outcomes, outcome="all invariants held")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_crash_leftover_temp_files_are_collected(backend):
    """What a SIGKILL between the temp write and the rename leaves, made directly."""
    import crashlib

    import cloudckpt

    d = backend.url("run")
    ckpt, live = crashlib.new_checkpoint()
    m = cloudckpt.CheckpointManager(ckpt, d, 2, options=crashlib.STORE_OPTIONS)
    for step in (1, 2):
        crashlib.fill(live, step)
        ckpt.step = step
        m.save()
    killed = [Path(d, "checkpoint.tmp-0123456789ab"), Path(d, "ckpt-3", "manifest.json.tmp-0123456789ab")]
    killed[0].write_text('model_checkpoint_path: "ckpt-')
    Path(d, "ckpt-3").mkdir()
    killed[1].write_bytes(b'{"format": "cloud')
    long_ago = time.time() - 2 * TEMP_MIN_AGE  # the kill happened a while before this restart
    for p in killed:
        os.utime(p, (long_ago, long_ago))
    # a temp file written just now may be the state-file write of a displaced
    # manager still running: its rename must not fail (it did, CI of 218e103)
    in_flight = Path(d, "checkpoint.tmp-fedcba987654")
    in_flight.write_text('model_checkpoint_path: "ckpt-')
    ckpt2, live2 = crashlib.new_checkpoint()
    m2 = cloudckpt.CheckpointManager(ckpt2, d, 2, options=crashlib.STORE_OPTIONS)
    m2.restore_or_initialize()
    m2.gc()
    crashlib.fill(live2, 3)
    ckpt2.step = 3
    m2.save()
    assert in_flight.exists()
    assert not any(p.exists() for p in killed)
    in_flight.unlink()
    assert crashlib.orphans(d, None) == []
