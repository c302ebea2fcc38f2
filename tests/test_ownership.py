"""Two managers on one directory: ownership epochs, fencing, and who collects garbage."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from manager_helpers import NOT_S3, Gate, committed, files, manager, name, on, write_bytes

import cloudckpt
from cloudckpt.layout.checkpoint_io import write_checkpoint
from cloudckpt.storage import open_storage


def _owner_files(b, d):
    return sorted(k for k in files(b, d) if k.startswith("ownership/"))


@on(*NOT_S3)
def test_claim_happens_at_restore_or_first_save(backend):
    d = backend.url("run")
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2)
    assert m.epoch is None and _owner_files(backend, d) == []  # constructing reads only
    m.save()
    assert m.epoch == 1
    assert _owner_files(backend, d) == ["ownership/epoch-0000000001.accepted.json", "ownership/epoch-0000000001.json"]
    m2 = manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2)
    m2.restore_or_initialize()
    assert m2.epoch == 2


def test_older_manager_gets_ownership_lost_error(backend):
    d = backend.url("run")
    w = np.zeros(2)
    a = manager(backend, cloudckpt.Checkpoint(w=w), 3)
    a.save()
    a.save()
    b_w = np.zeros(2)
    b = manager(backend, cloudckpt.Checkpoint(w=b_w), 3)
    assert b.restore_or_initialize() == f"{d}/ckpt-2"
    with pytest.raises(cloudckpt.OwnershipLostError) as ei:
        a.save()
    assert "epoch 2" in str(ei.value) and d in str(ei.value)
    assert a.checkpoint.save_counter == 2  # the refused save took no number
    assert files(backend, f"{d}/ckpt-3") == {}  # it committed nothing, wrote nothing
    with pytest.raises(cloudckpt.OwnershipLostError):
        a.gc()
    with pytest.raises(cloudckpt.OwnershipLostError):
        a.restore_or_initialize()
    assert name(b.save()) == "ckpt-3"
    assert b.checkpoints == [f"{d}/ckpt-{i}" for i in (1, 2, 3)]


@on(*NOT_S3)
def test_lost_owner_in_flight_commit_is_fenced_and_deletes_nothing(backend):
    """The newer manager claims while the older one's save is between its data
    upload and its manifest: the older commit lands, gets an error, deletes
    nothing (retention re-checks), and its checkpoint is fenced."""
    d = backend.url("run")
    w = np.zeros(2)
    a = manager(backend, cloudckpt.Checkpoint(w=w), 1)
    a.save()  # ckpt-1 = [0, 0]
    w[:] = 1
    b_w = np.full(2, -1.0)
    b = manager(backend, cloudckpt.Checkpoint(w=b_w), 1)

    def claim_now(op, url):
        if op == "write_create" and url.endswith("ckpt-2/manifest.json") and b.epoch is None:
            b.restore_or_initialize()

    a._storage.add_hook(claim_now)
    with pytest.raises(cloudckpt.OwnershipLostError, match="fenced"):
        a.save()
    assert b.epoch == 2 and b_w.tolist() == [0.0, 0.0]
    assert committed(backend, f"{d}/ckpt-1")  # a's retention (max_to_keep=1) deleted nothing
    assert committed(backend, f"{d}/ckpt-2")  # the fenced commit is there ...
    # ... but never listed, never the latest, never restored
    assert b.checkpoints == [f"{d}/ckpt-1"] and b.latest_checkpoint == f"{d}/ckpt-1"
    assert cloudckpt.latest_checkpoint(d, storage_options=backend.storage_options) == f"{d}/ckpt-1"
    c_w = np.full(2, -1.0)
    c = manager(backend, cloudckpt.Checkpoint(w=c_w), 1)
    assert c.latest_checkpoint == f"{d}/ckpt-1"
    # the owner removes it
    b2 = manager(backend, cloudckpt.Checkpoint(w=np.zeros(2)), 1)
    b2.restore_or_initialize()  # epoch 3: its claim removes the fenced checkpoint
    assert not committed(backend, f"{d}/ckpt-2") and files(backend, f"{d}/ckpt-2") == {}


def test_fenced_checkpoint_never_restored_and_owner_saves_its_number(backend):
    d = backend.url("run")
    w = np.zeros(2)
    a = manager(backend, cloudckpt.Checkpoint(w=w), 3)
    a.save()  # ckpt-1 = [0, 0]
    w[:] = 5
    gate = Gate(lambda op, url: op == "write" and "/ckpt-2/data-" in url)
    a._storage.add_hook(gate)
    errors = []

    def save_a():
        try:
            a.save()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=save_a)
    t.start()
    assert gate.reached.wait(30)  # a passed its ownership check and is uploading
    b_w = np.full(2, -1.0)
    b = manager(backend, cloudckpt.Checkpoint(w=b_w), 3)
    assert b.restore_or_initialize() == f"{d}/ckpt-1"  # claim: seen up to 1
    gate.release.set()
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], cloudckpt.OwnershipLostError)
    # a's ckpt-2 (epoch 1, above what b's claim saw) committed after b's claim: fenced
    assert committed(backend, f"{d}/ckpt-2")
    assert b.latest_checkpoint == f"{d}/ckpt-1" and b.checkpoints == [f"{d}/ckpt-1"]
    r_w = np.full(2, -1.0)
    assert manager(backend, cloudckpt.Checkpoint(w=r_w), 3).latest_checkpoint == f"{d}/ckpt-1"
    # the owner saves that very number itself (the fenced one is removed first)
    b_w[:] = 7
    assert b.save() == f"{d}/ckpt-2"
    assert cloudckpt.load(f"{d}/ckpt-2", storage_options=backend.storage_options)["w"].tolist() == [7.0, 7.0]
    assert cloudckpt.info(f"{d}/ckpt-2", storage_options=backend.storage_options).epoch == 2
    assert b.checkpoints == [f"{d}/ckpt-1", f"{d}/ckpt-2"]


@on(*NOT_S3)
def test_gc_removes_fenced_checkpoint(backend):
    d = backend.url("run")
    so = backend.storage_options
    a = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 3)
    a.save()
    owner = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 3)
    owner.restore_or_initialize()
    # an older-epoch commit landing after the claim, numbered above what the claim saw
    write_checkpoint(open_storage(f"{d}/ckpt-7", so), {"w": np.ones(1), "save_counter": 7}, checkpoint_number=7, epoch=1)
    assert owner.checkpoints == [f"{d}/ckpt-1"]
    assert cloudckpt.latest_checkpoint(d, storage_options=so) == f"{d}/ckpt-1"
    assert owner.gc() == [f"{d}/ckpt-7"]
    assert not committed(backend, f"{d}/ckpt-7")
    # a checkpoint written without a manager is never fenced (and never deleted); it has no
    # place in the commit order of the managers' checkpoints, so it is ordered before them
    cloudckpt.save(f"{d}/ckpt-8", {"w": np.ones(1), "save_counter": 8}, storage_options=so)
    assert owner.gc() == []
    assert committed(backend, f"{d}/ckpt-8")
    assert cloudckpt.latest_checkpoint(d, storage_options=so) == f"{d}/ckpt-1"


def test_orphaned_data_collected_by_the_owner(backend):
    """Data of a crashed save (data-* without a manifest) is collected when a
    manager claims the directory, or by the owner's gc(); data a newer epoch
    may still be writing is left alone."""
    d = backend.url("run")
    a = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 3)
    a.save()
    # a crash of epoch 1 mid-save: data, no manifest; also leftovers beside a committed one
    write_bytes(backend, f"{d}/ckpt-2/data-e1-deadbeef/zarr.json", b"{}")
    write_bytes(backend, f"{d}/ckpt-1/data-e1-0123abcd/zarr.json", b"{}")
    write_bytes(backend, f"{d}/ckpt-3/data-e9-feedface/zarr.json", b"{}")  # a newer epoch: hands off
    assert a.gc() == []  # epoch 1 data may belong to a live attempt of epoch 1: not collected by epoch 1

    b = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 3)
    assert files(backend, f"{d}/ckpt-2") != {}  # a manager that has not claimed collects nothing
    b.restore_or_initialize()  # claim (epoch 2) collects
    assert files(backend, f"{d}/ckpt-2") == {}
    assert not any("0123abcd" in k for k in files(backend, f"{d}/ckpt-1"))
    assert committed(backend, f"{d}/ckpt-1")
    assert cloudckpt.load(f"{d}/ckpt-1", storage_options=backend.storage_options)["w"].tolist() == [0.0]
    assert files(backend, f"{d}/ckpt-3") == {"data-e9-feedface/zarr.json": 2}

    write_bytes(backend, f"{d}/ckpt-4/data-e1-cafe/zarr.json", b"{}")  # found later: gc()
    assert b.gc() == [f"{d}/ckpt-4/data-e1-cafe"]
    assert files(backend, f"{d}/ckpt-4") == {}
    assert b.latest_checkpoint == f"{d}/ckpt-1"


@on("memory", "local")
def test_an_unreadable_claim_counts_for_ownership_but_fences_nothing(backend):
    d = backend.url("run")
    a = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 3)
    a.save()
    a.save()
    write_bytes(backend, f"{d}/ownership/epoch-0000000002.json", b"\x00 not json")
    with pytest.raises(cloudckpt.OwnershipLostError):
        a.save()  # epoch 2 exists: a lost the directory
    b = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 3)
    assert b.restore_or_initialize() == f"{d}/ckpt-2"  # nothing fenced, nothing deleted
    assert b.epoch == 3 and b.checkpoints == [f"{d}/ckpt-1", f"{d}/ckpt-2"]


@on(*NOT_S3)
def test_retention_rechecks_ownership_before_deleting(backend):
    """The claim lands after the older manager's commit and ownership check but
    before its retention: the commit stands (the new owner saw it), and the
    older manager deletes nothing."""
    d = backend.url("run")
    a = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 1)
    a.save()
    b = manager(backend, cloudckpt.Checkpoint(w=np.zeros(1)), 1)

    def claim_now(op, url):
        if op == "write" and url == f"{d}/checkpoint" and b.epoch is None and a.checkpoint.save_counter == 2:
            b.restore_or_initialize()

    a._storage.add_hook(claim_now)
    with pytest.raises(cloudckpt.OwnershipLostError):
        a.save()  # ckpt-2 committed; its retention would delete ckpt-1
    assert b.epoch == 2
    assert committed(backend, f"{d}/ckpt-1") and committed(backend, f"{d}/ckpt-2")
    assert b.latest_checkpoint == f"{d}/ckpt-2"  # not fenced: b's claim saw it
    assert b.checkpoints == [f"{d}/ckpt-1", f"{d}/ckpt-2"]
    b.save()  # the owner's retention
    assert [committed(backend, f"{d}/ckpt-{i}") for i in (1, 2, 3)] == [False, False, True]
