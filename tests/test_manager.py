"""CheckpointManager: the scenarios of TensorFlow's checkpoint_management_test.py
(CheckpointManagerTest), ported to cloudckpt and run on every backend, plus
the deliberate differences (CheckpointExistsError, unmanaged checkpoints)."""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import pytest
from manager_helpers import NOT_S3, FakeClock, committed, files, manager, name, on, state_file, write_bytes

import cloudckpt


def test_deletion(backend):
    ckpt = cloudckpt.Checkpoint(w=np.arange(4.0))
    m = manager(backend, ckpt, 3)
    paths = [m.save() for _ in range(4)]
    assert [name(p) for p in paths] == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]
    assert [committed(backend, p) for p in paths] == [False, True, True, True]
    assert files(backend, paths[0]) == {}  # data too, not only the manifest
    assert m.checkpoints == paths[1:]
    assert m.latest_checkpoint == paths[3]


def test_keep_all_and_continue_from_previous_manager(backend):
    ckpt = cloudckpt.Checkpoint(w=np.ones(3))
    m = manager(backend, ckpt, None)
    p1, p2, p3 = m.save(), m.save(), m.save()
    assert all(committed(backend, p) for p in (p1, p2, p3))
    assert m.latest_checkpoint == p3
    assert m.checkpoints == [p1, p2, p3]
    del m
    m = manager(backend, ckpt, None)
    p4 = m.save()
    assert m.checkpoints == [p1, p2, p3, p4]
    del m
    m = manager(backend, ckpt, 3)
    # a new manager picks up all four; nothing is deleted before the next save
    assert m.checkpoints == [p1, p2, p3, p4]
    assert all(committed(backend, p) for p in (p1, p2, p3, p4))
    p5 = m.save()
    assert m.checkpoints == [p3, p4, p5]
    assert [committed(backend, p) for p in (p1, p2, p3, p4, p5)] == [False, False, True, True, True]


def test_save_restore_state_with_keep_every_n_hours(backend):
    clock = FakeClock(3.0)
    ckpt = cloudckpt.Checkpoint(w=np.zeros(2))
    d = backend.url("run")
    first = manager(backend, ckpt, 2, clock=clock)
    t1 = clock.t = 10000.0
    p1 = first.save()
    t2 = clock.t = t1 + 3610.0
    p2 = first.save()
    st = state_file(backend, d)
    assert st.all_model_checkpoint_timestamps == [t1, t2]
    assert first.checkpoints == [p1, p2]
    assert first.latest_checkpoint == p2
    del first

    second = manager(backend, ckpt, 2, keep_checkpoint_every_n_hours=1.5, clock=clock)
    assert second.checkpoints == [p1, p2]
    assert second.latest_checkpoint == p2
    t3 = clock.t = t2 + 3600.0 * 0.2
    p3 = second.save()
    assert committed(backend, p1) and committed(backend, p2)
    assert second.checkpoints == [p2, p3]  # p1 is preserved for good: it leaves the managed list
    assert state_file(backend, d).last_preserved_timestamp == t1
    t4 = clock.t = t3 + 3600.0 * 0.5
    p4 = second.save()
    assert committed(backend, p1)
    assert not committed(backend, p2)
    assert second.checkpoints == [p3, p4]
    clock.t = t4 + 3600.0 * 0.5
    p5 = second.save()
    assert second.checkpoints == [p4, p5]
    assert state_file(backend, d).last_preserved_timestamp == t1
    del second

    third = manager(backend, ckpt, 2, keep_checkpoint_every_n_hours=1.5, clock=clock)
    assert third.latest_checkpoint == p5
    clock.advance(10.0)
    p6 = third.save()
    assert name(p6) == "ckpt-6"
    assert state_file(backend, d).last_preserved_timestamp == t4
    assert [committed(backend, p) for p in (p1, p2, p3, p4, p5, p6)] == [True, False, False, True, True, True]
    assert third.checkpoints == [p5, p6]


@on(*NOT_S3)
def test_clock_going_backwards_keeps_everything(backend, caplog):
    clock = FakeClock(10000.0)
    ckpt = cloudckpt.Checkpoint(w=np.zeros(2))
    d = backend.url("run")
    first = manager(backend, ckpt, 1, keep_checkpoint_every_n_hours=1.0, clock=clock)
    p1 = first.save()
    clock.advance(3600.0)
    p2 = first.save()
    clock.advance(3600.0)
    p3 = first.save()
    assert [committed(backend, p) for p in (p1, p2, p3)] == [False, True, True]
    assert first.checkpoints == [p3]
    assert state_file(backend, d).last_preserved_timestamp == 13600.0
    del first

    clock.t = 5000.0  # the clock goes back in time
    with caplog.at_level(logging.WARNING, logger="cloudckpt"):
        second = manager(backend, ckpt, 1, clock=clock)
    assert any("behind the last preserved checkpoint timestamp" in r.getMessage() for r in caplog.records)
    # unsure what was preserved: err on the side of keeping
    assert committed(backend, p2)
    assert second.latest_checkpoint == p3
    assert second.checkpoints == []
    clock.advance(10.0)
    p4 = second.save()
    assert committed(backend, p2) and committed(backend, p3)
    assert second.latest_checkpoint == p4
    assert second.checkpoints == [p4]
    clock.advance(10.0)
    p5 = second.save()
    assert committed(backend, p2) and committed(backend, p3) and not committed(backend, p4)
    assert second.checkpoints == [p5]
    st = state_file(backend, d)
    assert st.last_preserved_timestamp == 5000.0
    assert st.all_model_checkpoint_timestamps == [5020.0]


@on(*NOT_S3)
def test_continue_from_unmanaged_checkpoints(backend):
    d = backend.url("run")
    w = np.zeros(2)
    writer = cloudckpt.Checkpoint(w=w)
    paths = []
    for i in (1, 2):  # written without a manager (TF: Checkpoint.save outside a manager)
        writer.save_counter = i
        w[:] = i
        paths.append(writer.write(f"{d}/ckpt-{i}", storage_options=backend.storage_options))
    first, second = paths

    w2 = np.full(2, -1.0)
    ckpt = cloudckpt.Checkpoint(w=w2)
    m = manager(backend, ckpt, 2)
    assert m.latest_checkpoint == second
    assert m.checkpoints == []  # not managed: never deleted
    ckpt.read(m.latest_checkpoint, storage_options=backend.storage_options)
    assert ckpt.save_counter == 2 and w2.tolist() == [2.0, 2.0]
    third = m.save()
    assert m.checkpoints == [third]
    fourth = m.save()
    assert m.checkpoints == [third, fourth]
    fifth = m.save()
    assert m.checkpoints == [fourth, fifth]
    assert [committed(backend, p) for p in (first, second, third, fourth, fifth)] == [True, True, False, True, True]


def test_custom_numbering(backend):
    d = backend.url("run")
    step = np.array(0, dtype=np.int64)
    ckpt = cloudckpt.Checkpoint(step=step)
    m = manager(backend, ckpt, 2)
    for i in range(5):
        number = step if i % 2 else np.int64(step)  # a 0-d array (updated in place) or np.int64
        path = m.save(checkpoint_number=number)
        assert path.endswith(f"-{2 * i}")
        step += 2  # in place
    assert ckpt.save_counter == 5  # incremented although the number was given
    last = m.save(checkpoint_number=32)
    assert name(last) == "ckpt-32"
    assert m.latest_checkpoint == last
    assert cloudckpt.latest_checkpoint(d, storage_options=backend.storage_options) == last
    # only the two most recent are kept, relative paths in the state file
    assert state_file(backend, d).all_model_checkpoint_paths == ["ckpt-8", "ckpt-32"]
    assert cloudckpt.load(last, storage_options=backend.storage_options)["save_counter"] == 6


@on(*NOT_S3)
def test_custom_checkpoint_name(backend):
    ckpt = cloudckpt.Checkpoint(w=np.ones(1))
    m = manager(backend, ckpt, 2, checkpoint_name="ckpt_name")
    assert name(m.save(checkpoint_number=5)) == "ckpt_name-5"
    other = manager(backend, ckpt, 2)
    # latest is the directory's, whatever its name (as TF); retention is per name
    assert other.latest_checkpoint == m.latest_checkpoint and name(other.latest_checkpoint) == "ckpt_name-5"
    assert name(other.save(checkpoint_number=5)) == "ckpt-5"
    assert [name(u) for u in other.checkpoints] == ["ckpt-5"]
    assert name(other.latest_checkpoint) == "ckpt-5"


@on(*NOT_S3)
def test_restore_or_initialize_calls_init_fn(backend):
    init_url = backend.url("init")
    cloudckpt.Checkpoint(v=np.array(2.0)).write(init_url, storage_options=backend.storage_options)
    v = np.array(1.0)
    ckpt = cloudckpt.Checkpoint(v=v)
    calls = []

    def init():
        calls.append(1)
        ckpt.read(init_url, storage_options=backend.storage_options)

    m = manager(backend, ckpt, None, sub="ckpt", init_fn=init)
    assert m.restore_or_initialize() is None
    assert calls == [1] and float(v) == 2.0
    v[...] = 5.0
    saved = m.save()
    v[...] = 0.0
    assert m.restore_or_initialize() == saved
    assert calls == [1] and float(v) == 5.0


def test_pathlike_directory(local_backend):
    directory = pathlib.Path(local_backend.root)
    v = np.array(0.0)
    ckpt = cloudckpt.Checkpoint(v=v)
    m = cloudckpt.CheckpointManager(ckpt, directory, max_to_keep=2, checkpoint_name="ckpt_name")
    assert m.save() == str(directory / "ckpt_name-1")
    assert m.restore_or_initialize() == str(directory / "ckpt_name-1")
    assert cloudckpt.latest_checkpoint(directory) == str(directory / "ckpt_name-1")


@on(*NOT_S3)
def test_checkpoint_interval(backend):
    step = np.array(0)
    ckpt = cloudckpt.Checkpoint(v=np.ones(1))
    m = manager(backend, ckpt, None, step_counter=step, checkpoint_interval=2)
    assert m.checkpoint_interval == 2
    p = m.save(check_interval=True)  # step 0: the first save
    assert committed(backend, p)
    step += 1
    assert m.save(check_interval=True) is None  # step 1
    step += 1
    p = m.save(check_interval=True)  # step 2
    assert committed(backend, p)
    assert m.save(check_interval=True) is None  # same step again
    assert m.save(check_interval=False) is None  # same step: skipped even without the check
    step += 1
    assert m.save(check_interval=True) is None  # step 3
    p = m.save(check_interval=False)  # always saves
    assert committed(backend, p)
    assert len(m.checkpoints) == 3
    assert ckpt.save_counter == 3  # skipped saves do not count


@on(*NOT_S3)
def test_checkpoint_interval_with_callable_and_last_checkpoint_step(backend):
    step = [1]
    m = manager(
        backend,
        cloudckpt.Checkpoint(v=np.ones(1)),
        None,
        step_counter=lambda: step[0],
        checkpoint_interval=2,
        last_checkpoint_step=1,
    )
    assert m.save() is None  # step 1
    step[0] = 2
    assert m.save() is None  # the interval starts at 1
    step[0] = 3
    assert committed(backend, m.save())


@on(*NOT_S3)
def test_checkpoint_interval_after_restore(backend):
    d = backend.url("run")
    step = np.array(0)
    ckpt = cloudckpt.Checkpoint(v=np.ones(1), step=step)
    ckpt.save_counter = 1
    ckpt.write(f"{d}/ckpt-1", storage_options=backend.storage_options)
    m = manager(backend, ckpt, None, step_counter=step, checkpoint_interval=2)
    assert m.restore_or_initialize() is not None
    assert m.save() is None  # restored at step 0: that step is saved already


def test_constructor_validation(tmp_path):
    ckpt = cloudckpt.Checkpoint(v=np.ones(1))
    with pytest.raises(ValueError, match="step_counter"):
        cloudckpt.CheckpointManager(ckpt, str(tmp_path), 2, checkpoint_interval=2)
    with pytest.raises(ValueError, match="max_to_keep"):
        cloudckpt.CheckpointManager(ckpt, str(tmp_path), 0)
    # as in TF, "checkpoint" is a name like any other: checkpoint-1/ does not collide with the state file
    named = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(v=np.ones(1)), str(tmp_path / "named"), 2, checkpoint_name="checkpoint")
    assert named.save().endswith("checkpoint-1")
    with pytest.raises(TypeError, match="max_to_keep"):
        cloudckpt.CheckpointManager(ckpt, str(tmp_path), "3")
    with pytest.raises(TypeError, match="Checkpoint"):
        cloudckpt.CheckpointManager({"v": np.ones(1)}, str(tmp_path), 2)
    with pytest.raises(ValueError, match="checkpoint_number"):
        cloudckpt.CheckpointManager(ckpt, str(tmp_path), 2).save(checkpoint_number=-1)
    assert ckpt.save_counter == 0  # a refused save takes no number


def test_restarted_manager_that_did_not_restore_gets_checkpoint_exists_error(backend):
    d = backend.url("run")
    w = np.arange(3.0)
    m1 = manager(backend, cloudckpt.Checkpoint(w=w), 3)
    m1.save()
    w += 1
    m1.save()
    before = {k: v for k, v in files(backend, d).items() if k.startswith("ckpt-")}

    # a "restarted job": fresh objects, a fresh manager, no restore_or_initialize()
    w2 = np.zeros(3)
    m2 = manager(backend, cloudckpt.Checkpoint(w=w2), 3)
    with pytest.raises(cloudckpt.CheckpointExistsError) as ei:
        m2.save()
    msg = str(ei.value)
    assert f"{d}/ckpt-1" in msg
    assert "restore_or_initialize" in msg and "checkpoint_number" in msg
    assert isinstance(ei.value, cloudckpt.CheckpointError)
    after = {k: v for k, v in files(backend, d).items() if k.startswith("ckpt-")}
    assert after == before  # nothing destroyed, nothing added
    assert cloudckpt.load(f"{d}/ckpt-2", storage_options=backend.storage_options)["w"].tolist() == [1.0, 2.0, 3.0]
    assert m2.latest_checkpoint == f"{d}/ckpt-2"

    # the documented way out
    assert m2.restore_or_initialize() == f"{d}/ckpt-2"
    assert w2.tolist() == [1.0, 2.0, 3.0]
    assert name(m2.save()) == "ckpt-3"


def test_latest_checkpoint_function(backend):
    d = backend.url("run")
    assert cloudckpt.latest_checkpoint(d, storage_options=backend.storage_options) is None
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2)
    m.save(checkpoint_number=3)
    p = m.save(checkpoint_number=11)
    assert cloudckpt.latest_checkpoint(d, storage_options=backend.storage_options) == p
    assert m.latest_checkpoint == p


def test_info_logging_is_saves_restores_and_retention_only(backend, caplog):
    import re

    d = backend.url("run")
    w = np.arange(1000.0)
    with caplog.at_level(logging.INFO, logger="cloudckpt"):
        m = manager(backend, cloudckpt.Checkpoint(w=w), 1)
        m.save()
        m.save()  # retention deletes ckpt-1
        m2 = manager(backend, cloudckpt.Checkpoint(w=w), 1)
        m2.restore_or_initialize()
        m2.gc()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == "cloudckpt"]
    saved = [s for s in info if s.startswith("saved ")]
    restored = [s for s in info if s.startswith("restored ")]
    retention = [s for s in info if s.startswith("retention: ")]
    assert sorted(saved + restored + retention) == sorted(info)  # nothing else at INFO
    assert len(saved) == 2 and len(restored) == 1
    line = re.compile(r"^(saved|restored) (\S+): (\d+) bytes in \d+ arrays, [0-9.]+ s, (\d+) requests(, \d+ bytes copied from \S+)?$")
    for s in saved + restored:
        match = line.match(s)
        assert match, s
        assert int(match.group(3)) >= 8000 and int(match.group(4)) > 0
    assert line.match(restored[0]).group(2) == f"{d}/ckpt-2"
    assert retention == [f"retention: deleting {d}/ckpt-1"]


@on(*NOT_S3)
def test_a_new_process_may_save_a_number_whose_attempt_never_committed(backend):
    d = backend.url("run")
    m = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 3)
    m.save()
    # the process died while saving ckpt-2: data, no manifest
    write_bytes(backend, f"{d}/ckpt-2/data-e1-0000dead/zarr.json", b"{}")
    w = np.zeros(1)
    m2 = manager(backend, cloudckpt.Checkpoint(w=w), 3)
    assert m2.latest_checkpoint == f"{d}/ckpt-1"
    m2.restore_or_initialize()
    w[:] = 2
    assert m2.save() == f"{d}/ckpt-2"
    assert cloudckpt.load(f"{d}/ckpt-2", storage_options=backend.storage_options)["w"].tolist() == [2.0]
    assert not any("0000dead" in k for k in files(backend, f"{d}/ckpt-2"))


@on(*NOT_S3)
def test_restore_of_a_damaged_latest_raises_or_falls_back(backend):
    d = backend.url("run")
    w = np.zeros(1000)
    m = manager(backend, cloudckpt.Checkpoint(w=w), 3)
    m.save()
    w[:] = 1
    m.save()
    data = [k for k in files(backend, f"{d}/ckpt-2") if k.startswith("data-") and "/c/" in k]
    assert data
    for k in data:  # same size, other bytes: only the crc32c can tell
        size = files(backend, f"{d}/ckpt-2")[k]
        write_bytes(backend, f"{d}/ckpt-2/{k}", b"\x07" * size)
    w2 = np.full(1000, -1.0)
    m2 = manager(backend, cloudckpt.Checkpoint(w=w2), 3)
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="ckpt-2"):
        m2.restore_or_initialize()
    assert (w2 == -1).all()  # nothing restored
    assert m2.restore_or_initialize(fallback=True) == f"{d}/ckpt-1"
    assert (w2 == 0).all()
