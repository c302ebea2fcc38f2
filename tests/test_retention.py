"""Retention: max_to_keep, keep_checkpoint_every_n_hours (preserved on storage),
best-N by a metric, and that nothing is deleted before a save commits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from manager_helpers import NOT_S3, FakeClock, committed, files, manager, name, on, remove

import cloudckpt
from cloudckpt.manager.retention import Managed, sweep


def _numbers(ms):
    return [m.number for m in ms]


# -- the pure decision ------------------------------------------------------------
def test_sweep_keeps_newest_and_preserves_every_n_hours():
    active = [Managed(n, 1000.0 + 1800.0 * n) for n in range(1, 7)]
    d = sweep(active, max_to_keep=2, keep_hours=1.0, last_preserved=0.0)
    assert _numbers(d.keep) == [5, 6]
    # oldest first (TF): preserved when at least 1 h after the last preserved one
    # (t=0): 1 (t=2800) is not, 2 (t=4600) is, 3 (t=6400) is not, 4 (t=8200) is
    assert _numbers(d.preserve) == [2, 4]
    assert _numbers(d.delete) == [1, 3]
    assert d.last_preserved == active[3].timestamp


def test_sweep_keep_all_and_under_limit():
    active = [Managed(n, float(n)) for n in range(5)]
    assert _numbers(sweep(active, max_to_keep=None, keep_hours=None, last_preserved=0).keep) == [0, 1, 2, 3, 4]
    assert sweep(active, max_to_keep=5, keep_hours=None, last_preserved=0).delete == []


@pytest.mark.parametrize(
    ("mode", "metrics", "kept", "deleted"),
    [
        ("max", [0.5, 0.9, 0.1], [2, 3], [1]),  # the latest is kept though it is the worst
        ("max", [0.5, 0.9, 0.95], [2, 3], [1]),
        ("min", [0.5, 0.9, 0.1], [1, 3], [2]),
        ("max", [None, 0.2, math.nan, 0.1], [2, 4], [1, 3]),  # missing or NaN metrics rank last
    ],
)
def test_sweep_best_n_never_drops_the_latest(mode, metrics, kept, deleted):
    active = [Managed(i + 1, float(i), m) for i, m in enumerate(metrics)]
    d = sweep(active, max_to_keep=2, keep_hours=None, last_preserved=0.0, best_mode=mode)
    assert _numbers(d.keep) == kept
    assert _numbers(d.delete) == deleted


# -- through the manager ---------------------------------------------------------
def test_best_metric_keeps_the_best_and_the_latest(backend):
    d = backend.url("run")
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2, best_metric="acc", best_mode="max")
    history = []
    for acc in [0.5, 0.9, 0.1, 0.7, 0.2]:
        m.save(metrics={"acc": np.float32(acc), "loss": 1 - acc})
        history.append([name(u) for u in m.checkpoints])
    assert history == [
        ["ckpt-1"],
        ["ckpt-1", "ckpt-2"],
        ["ckpt-2", "ckpt-3"],
        ["ckpt-2", "ckpt-4"],
        ["ckpt-2", "ckpt-5"],
    ]
    assert [committed(backend, f"{d}/ckpt-{i}") for i in range(1, 6)] == [False, True, False, False, True]
    assert m.latest_checkpoint == f"{d}/ckpt-5"
    info = cloudckpt.info(f"{d}/ckpt-2", storage_options=backend.storage_options)
    assert info.metadata["metrics"] == {"acc": pytest.approx(0.9), "loss": pytest.approx(0.1)}

    # a new manager ranks by the metrics recorded in the manifests
    m2 = manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2, best_metric="loss", best_mode="min")
    m2.restore_or_initialize()
    m2.save(metrics={"loss": 0.05})  # the best loss so far: ckpt-5 (loss 0.8) goes, ckpt-2 (0.1) stays
    assert [name(u) for u in m2.checkpoints] == ["ckpt-2", "ckpt-6"]


def test_metrics_must_be_json_scalars(tmp_path):
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), str(tmp_path), 2)
    with pytest.raises(TypeError, match="metric"):
        m.save(metrics={"acc": [1, 2]})
    with pytest.raises(TypeError):
        m.save(metrics=[("acc", 1.0)])
    assert m.latest_checkpoint is None


@on(*NOT_S3)
def test_preservation_is_recorded_on_storage_and_survives_restarts(backend):
    """A checkpoint preserved by keep_checkpoint_every_n_hours is never deleted by a
    manager whose state is rebuilt from storage, and the preservation clock carries on,
    even when the state file is gone."""
    d = backend.url("run")
    clock = FakeClock(1000.0)
    ckpt = cloudckpt.Checkpoint(w=np.ones(1))
    m = manager(backend, ckpt, 1, keep_checkpoint_every_n_hours=1.0, clock=clock)
    clock.advance(3600)
    p1 = m.save()  # t=4600: an hour after the manager started
    clock.advance(600)
    m.save()  # t=5200: ckpt-1 leaves the active set and is preserved
    assert committed(backend, p1) and m.checkpoints == [f"{d}/ckpt-2"]
    assert "preserved.json" in files(backend, p1)

    for _ in range(2):
        remove(backend, f"{d}/checkpoint")  # the cache is gone; manifests and markers remain
        m = manager(backend, ckpt, 1, keep_checkpoint_every_n_hours=1.0, clock=clock)
        assert p1 not in m.checkpoints and m.latest_checkpoint is not None
        clock.advance(600)
        m.save()
        assert committed(backend, p1)
    # ckpt-2 (t=5200) and ckpt-3 (t=5800) were less than an hour after the last
    # preservation (t=4600, recovered from storage): deleted, not preserved
    assert [committed(backend, f"{d}/ckpt-{i}") for i in (1, 2, 3, 4)] == [True, False, False, True]
    assert [name(u) for u in m.checkpoints] == ["ckpt-4"]
    clock.advance(3600)
    m.save()  # ckpt-4 (t=6400) leaves: 1800 s after 4600, deleted
    clock.advance(3600)
    m.save()  # ckpt-5 (t=10000) leaves: >= 1 h after 4600, preserved
    assert [committed(backend, f"{d}/ckpt-{i}") for i in (4, 5, 6)] == [False, True, True]
    # a manager without keep_checkpoint_every_n_hours never deletes preserved ones either
    m = manager(backend, ckpt, 1, clock=clock)
    m.restore_or_initialize()
    m.save()
    m.save()
    assert committed(backend, p1) and committed(backend, f"{d}/ckpt-5")
    assert [name(u) for u in m.checkpoints] == ["ckpt-8"]


@on(*NOT_S3)
def test_failed_save_deletes_nothing_and_leaves_a_gap(backend):
    d = backend.url("run")
    w = np.ones(2)
    m = manager(backend, cloudckpt.Checkpoint(w=w), 1)
    p1 = m.save()

    def fail_commit(op, url):
        if op == "write_create" and url.endswith("/manifest.json"):
            raise PermissionError("injected: no permission to commit")

    remove_hook = m._storage.add_hook(fail_commit)
    w[:] = 2
    with pytest.raises(cloudckpt.StoragePermissionError):
        m.save()
    remove_hook()
    # retention ran only after a commit: the previous checkpoint is intact and latest
    assert committed(backend, p1) and m.latest_checkpoint == p1 and m.checkpoints == [p1]
    assert cloudckpt.load(p1, storage_options=backend.storage_options)["w"].tolist() == [1.0, 1.0]
    # the failed number is not given back (a gap); its data is gone
    assert name(m.save()) == "ckpt-3"
    assert files(backend, f"{d}/ckpt-2") == {}
    assert not committed(backend, p1)
