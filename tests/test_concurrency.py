"""Two writers on one directory, and readers racing a writer (invariant 4 of docs/reliability.md).

Each writer saves a distinct constant pattern (every array all 1.0, or all
2.0): a checkpoint that mixed their data would hold both values. Of two
managers, exactly one keeps the directory and the other gets
OwnershipLostError; nothing either of them committed mixes the two.

Readers that list (``cloudckpt.latest_checkpoint``) and load in a loop while
a manager saves and retires checkpoints (max_to_keep=2) never see a partial
checkpoint. The rule for a load that races a retirement: a listed
checkpoint's load either returns exactly what was saved, or — only if the
checkpoint was deleted meanwhile — raises CheckpointNotFoundError ("was
deleted while it was being read"); never CorruptCheckpointError, never a
failure while the checkpoint still exists.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import Child, record

import cloudckpt
from cloudckpt.layout import directory
from cloudckpt.storage import open_storage

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import concurrent_writer
import crashlib


def _committed(backend, sub="run") -> list[str]:
    s = open_storage(backend.url(sub), backend.storage_options)
    _files, dirs = s.list_dir()
    return sorted((d for d in dirs if d.startswith("ckpt-") and s.exists(f"{d}/manifest.json")), key=lambda d: int(d[5:]))


def _assert_never_mixed(backend, sub="run") -> dict[str, float]:
    """Every committed checkpoint (listed or fenced) holds exactly one writer's pattern."""
    patterns = {}
    for name in _committed(backend, sub):
        state = cloudckpt.load(backend.url(sub, name), storage_options=backend.storage_options)
        values = concurrent_writer.pattern_of(state)
        assert len(values) == 1, (name, values)
        patterns[name] = values.pop()
    assert patterns
    return patterns


def _assert_listing_is_the_owners(backend, owner_value: float, patterns: dict[str, float], sub="run") -> None:
    """A fresh look: the latest is the owner's, and only valid checkpoints are listed."""
    latest = cloudckpt.latest_checkpoint(backend.url(sub), storage_options=backend.storage_options)
    assert patterns[latest.rsplit("/", 1)[1]] == owner_value
    s = open_storage(backend.url(sub), backend.storage_options)
    view = directory.read_view(s)
    ckpt = cloudckpt.Checkpoint(model=concurrent_writer.pattern_state(0), tag=0.0)
    m = cloudckpt.CheckpointManager(ckpt, backend.url(sub), 3, storage_options=backend.storage_options)
    valid = {e.name for e in view.valid}
    for url in m.checkpoints:
        assert url.rsplit("/", 1)[1] in valid, url
    assert m.latest_checkpoint == latest


# ------------------------------------------------------------------ two writers: threads


def _writer_thread(backend, value, out, go, done, sub="run"):
    """Saves ``value`` until OwnershipLostError, or until ``done()`` says to stop."""
    live = concurrent_writer.pattern_state(value)
    ckpt = cloudckpt.Checkpoint(model=live, tag=value)
    deadline = time.monotonic() + 90
    try:
        m = cloudckpt.CheckpointManager(ckpt, backend.url(sub), 3, storage_options=backend.storage_options, options=crashlib.STORE_OPTIONS)
        m.restore_or_initialize()
        out["epoch"] = m.epoch
        go.wait(30)
        while not done(out) and time.monotonic() < deadline:
            for a in live.values():
                a[...] = value
            ckpt.tag = value
            try:
                out.setdefault("saved", []).append(m.save())
            except cloudckpt.OwnershipLostError as exc:
                out["lost"] = str(exc)
                return
    except BaseException as exc:  # reported by the test
        out["error"] = repr(exc)


@pytest.mark.parametrize("backend", ["local", "memory", "s3"], indirect=True)
def test_two_managers_in_threads_never_mix_and_one_loses(backend):
    a, b = {}, {}
    go = threading.Event()
    # the first saves until it is told it lost the directory; the second until it has
    # saved 3 times and the first has stopped
    first = threading.Thread(target=_writer_thread, args=(backend, 1.0, a, go, lambda out: False))
    first.start()
    go.set()  # the first writer is saving ...
    deadline = time.monotonic() + 30
    while not a.get("saved") and time.monotonic() < deadline and first.is_alive():
        time.sleep(0.01)
    # ... when the second one claims the directory and saves too
    second = threading.Thread(
        target=_writer_thread, args=(backend, 2.0, b, go, lambda out: len(out.get("saved", [])) >= 3 and not first.is_alive())
    )
    second.start()
    first.join(120)
    second.join(120)
    assert "error" not in a and "error" not in b, (a, b)
    assert a["epoch"] < b["epoch"]
    assert "lost" in a and "another manager claimed it" in a["lost"]  # the displaced one gets an error
    assert "lost" not in b and len(b["saved"]) >= 3  # exactly one keeps ownership
    patterns = _assert_never_mixed(backend)
    _assert_listing_is_the_owners(backend, 2.0, patterns)
    record("two-writers-threads", backend=backend.name, saves={"first": len(a["saved"]), "second": len(b["saved"])}, committed=len(patterns), outcome="one lost ownership, nothing mixed")


# ------------------------------------------------------------------ two writers: processes


def _lines(c: Child) -> list[str]:
    return c.lines()


@pytest.mark.parametrize("start", ["staggered", "simultaneous"])
@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
def test_two_manager_processes_never_mix_and_one_loses(backend, start, tmp_path):
    import json

    opts = json.dumps(backend.storage_options or {})
    go = tmp_path / "go"
    seconds = "2" if backend.name == "local" else "4"
    if start == "staggered":  # the second process starts while the first is saving
        a = Child("concurrent_writer", [backend.url("run"), "1", "--options", opts, "--seconds", "30"], {}, tmp_path)
        deadline = time.monotonic() + 60
        while not any(ln.startswith("saved") for ln in _lines(a)) and a.proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        b = Child("concurrent_writer", [backend.url("run"), "2", "--options", opts, "--seconds", seconds], {}, tmp_path)
    else:  # both claim at once, then both save from the same instant
        a = Child("concurrent_writer", [backend.url("run"), "1", "--options", opts, "--seconds", seconds, "--go", str(go)], {}, tmp_path)
        b = Child("concurrent_writer", [backend.url("run"), "2", "--options", opts, "--seconds", seconds, "--go", str(go)], {}, tmp_path)
        deadline = time.monotonic() + 60
        while not (_lines(a) and _lines(b)) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
    assert b.wait(120) == 0, (_lines(b), b.stderr())
    assert a.wait(120) == 0, (_lines(a), a.stderr())
    la, lb = _lines(a), _lines(b)
    epochs = {1.0: int(la[0].split()[1]), 2.0: int(lb[0].split()[1])}
    loser, winner = (la, lb) if epochs[1.0] < epochs[2.0] else (lb, la)
    winner_value = 2.0 if loser is la else 1.0
    assert loser[-1] == "lost", loser  # the displaced one was told
    assert "lost" not in winner and winner[-1] == "done", winner  # exactly one keeps ownership
    assert not any(ln.startswith("error") for ln in la + lb)
    patterns = _assert_never_mixed(backend)
    _assert_listing_is_the_owners(backend, winner_value, patterns)
    record(
        "two-writers-processes",
        backend=backend.name,
        start=start,
        saves={"loser": sum(ln.startswith("saved") for ln in loser), "winner": sum(ln.startswith("saved") for ln in winner)},
        committed=len(patterns),
        outcome="one lost ownership, nothing mixed",
    )


# ------------------------------------------------------------------ readers racing a writer


@pytest.mark.parametrize("backend", ["local", "memory", "s3"], indirect=True)
def test_readers_never_see_a_partial_checkpoint_or_fail_on_one_that_exists(backend):
    so = backend.storage_options
    directory = backend.url("run")
    seconds = 2.5 if backend.name != "s3" else 5.0
    live = concurrent_writer.pattern_state(0)
    ckpt = cloudckpt.Checkpoint(model=live, tag=0.0)
    m = cloudckpt.CheckpointManager(ckpt, directory, 2, storage_options=so, options=crashlib.STORE_OPTIONS)
    stop = threading.Event()
    writer_error: list[BaseException] = []

    def write():
        n = 0
        try:
            while not stop.is_set():
                n += 1
                for a in live.values():
                    a[...] = n  # checkpoint ckpt-<n> holds the pattern n
                ckpt.tag = float(n)
                m.save()
        except BaseException as exc:
            writer_error.append(exc)

    stats = {"loads": 0, "retired_while_reading": 0, "nothing_yet": 0}
    problems: list[str] = []
    lock = threading.Lock()

    def read():
        try:
            read_loop()
        except BaseException as exc:  # listing must not fail either
            problems.append(f"reader died: {type(exc).__name__}: {exc}")

    def read_loop():
        last = 0
        while not stop.is_set():
            url = cloudckpt.latest_checkpoint(directory, storage_options=so)
            if url is None:
                with lock:
                    stats["nothing_yet"] += 1
                continue
            n = int(url.rsplit("-", 1)[1])
            if n < last:
                problems.append(f"latest went back from ckpt-{last} to ckpt-{n}")
            last = n
            try:
                state = cloudckpt.load(url, storage_options=so)
            except cloudckpt.CheckpointNotFoundError as exc:
                exists = open_storage(url, so).exists("manifest.json")
                with lock:
                    stats["retired_while_reading"] += 1
                if exists:
                    problems.append(f"load of {url} failed while it exists: {exc}")
                continue
            except Exception as exc:
                problems.append(f"load of {url}: {type(exc).__name__}: {exc}")
                continue
            values = concurrent_writer.pattern_of(state)
            if values != {float(n)}:
                problems.append(f"{url} holds {sorted(values)}, saved as {n}")
            with lock:
                stats["loads"] += 1

    writer = threading.Thread(target=write)
    readers = [threading.Thread(target=read) for _ in range(3)]
    writer.start()
    for r in readers:
        r.start()
    time.sleep(seconds)
    stop.set()
    writer.join(60)
    for r in readers:
        r.join(60)
    assert not writer_error, writer_error
    assert problems == [], problems[:5]
    assert stats["loads"] > 5, stats
    assert len(m.checkpoints) == 2
    record("readers-vs-writer", backend=backend.name, seconds=seconds, saves=m.checkpoint.save_counter, **stats, outcome="no partial, no failed load of an existing checkpoint")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_a_load_racing_a_retirement_says_deleted_not_damaged(backend):
    """Deterministic version of the race: the checkpoint is retired between the
    manifest read and the data reads of a load."""
    so = backend.storage_options
    live = concurrent_writer.pattern_state(1)
    ckpt = cloudckpt.Checkpoint(model=live, tag=1.0)
    m = cloudckpt.CheckpointManager(ckpt, backend.url("run"), 1, storage_options=so, options=crashlib.STORE_OPTIONS)
    m.save()
    url = m.latest_checkpoint
    s = open_storage(url, so)
    retired = []

    def retire_once(op, u):
        if "/data-" in u and not retired:
            retired.append(u)
            live["w"][...] = 2
            m.save()  # max_to_keep=1: ckpt-1 is deleted, manifest first

    s.add_hook(retire_once)
    from cloudckpt.layout import checkpoint_io

    manifest = checkpoint_io.read_manifest(s)
    with pytest.raises(cloudckpt.CheckpointNotFoundError, match="deleted while it was being read"):
        checkpoint_io.read_state(s, manifest)
    assert retired and not s.exists("manifest.json")
    assert np.all(cloudckpt.load(m.latest_checkpoint, storage_options=so)["model"]["w"] == 2)
