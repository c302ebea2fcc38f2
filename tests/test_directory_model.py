"""One model of a checkpoint directory, shared by every reader and writer.

Nothing committed and acknowledged is ever removed except by retention of its
own name or an explicit ``rm``; fencing is exactly "committed after the new
owner recorded what it accepted"; latest is the most recent commit of the
directory whatever its name (as TF); order is commit order; rollback is a
workflow; directories of the first release stay readable and resumable.
Each property runs on local disk, memory://, S3 (moto) and GCS (fake-gcs-server).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from manager_helpers import manager, name

import cloudckpt
from cloudckpt.layout import directory
from cloudckpt.storage import open_storage
from cloudckpt.tools import admin

DATA = Path(__file__).parent / "data"


def _state(value: float = 0.0):
    w = np.full(4, value, np.float32)
    return w, cloudckpt.Checkpoint(model={"w": w}, step=0)


def _view(backend, sub="run"):
    return directory.read_view(open_storage(backend.url(sub), backend.storage_options))


def _names(entries):
    return [e.name for e in entries]


def _saves(m, live, steps, numbers=None):
    for k, step in enumerate(steps):
        live[:] = step
        m.checkpoint.step = step
        m.save(checkpoint_number=None if numbers is None else numbers[k])


# ------------------------------------------------------------------ other names share the directory


def test_a_manager_never_deletes_another_names_checkpoints(backend, caplog):
    d = backend.url("run")
    so = backend.storage_options
    w1, c1 = _state()
    job1 = manager(backend, c1, 3)
    job1.restore_or_initialize()
    _saves(job1, w1, [1, 2, 3])  # ckpt-1..3
    w2, c2 = _state()
    job2 = manager(backend, c2, 3, checkpoint_name="other")
    assert job2.restore_or_initialize() == f"{d}/ckpt-3"  # the directory's latest, whatever its name
    _saves(job2, w2, [4])  # other-4: save_counter was restored as saved (3)
    w3, c3 = _state()
    with caplog.at_level(logging.INFO, logger="cloudckpt"):
        again = manager(backend, c3, 4)  # job 1 starts again
        assert again.restore_or_initialize() == f"{d}/other-4" and w3.tolist() == [4.0] * 4
        _saves(again, w3, [5])
    assert "removing" not in caplog.text and "deleting" not in caplog.text
    view = _view(backend)
    assert _names(view.valid) == ["ckpt-1", "ckpt-2", "ckpt-3", "other-4", "ckpt-5"]  # commit order
    assert view.fenced == []
    _saves(again, w3, [6])  # retention: its own name only
    assert _names(_view(backend).valid) == ["ckpt-2", "ckpt-3", "other-4", "ckpt-5", "ckpt-6"]
    assert again.all_steps() == [2, 3, 5, 6]
    assert cloudckpt.latest_checkpoint(d, storage_options=so) == again.latest_checkpoint == f"{d}/ckpt-6"


def test_latest_of_another_name_that_does_not_match_says_so(backend):
    d = backend.url("run")
    cloudckpt.save(f"{d}/model-7", {"other": np.ones(3), "save_counter": 1}, storage_options=backend.storage_options)
    _w, c = _state()
    m = manager(backend, c, 3)
    assert m.latest_checkpoint == f"{d}/model-7"
    with pytest.raises(ValueError) as info:
        m.restore_or_initialize()
    msg = str(info.value)
    assert f"{d}/model-7" in msg and "another checkpoint_name" in msg and "one directory is meant for one run" in msg


# ------------------------------------------------------------------ the claim accounts for every commit


def _claim_requests(backend, sub):
    """The requests of a new manager's restore_or_initialize(), up to and a little past
    the write of its record of what it accepted."""
    w, c = _state()
    a = manager(backend, c, 10, sub=sub)
    _saves(a, w, [1, 2, 3])
    seen = []
    b = manager(backend, _state()[1], 10, sub=sub)
    remove = b._storage.add_hook(lambda op, url: seen.append((op, url)))
    b.restore_or_initialize()
    remove()
    record = next(i for i, (op, url) in enumerate(seen) if op.startswith("write") and url.endswith(".accepted.json"))
    return min(len(seen), record + 3)


def test_a_commit_at_any_point_of_a_claim_is_accepted_or_fenced_never_lost(backend):
    """The old owner's save lands before each request of the new owner's claim
    sequence (claim, scan, record): a save that returned is listed by every
    reader and survives the new owner's saves and gc; one that raised
    OwnershipLostError is either accepted (listed like any other) or fenced
    (never listed, and `cloudckpt gc` removes it)."""
    so = backend.storage_options
    points = _claim_requests(backend, "probe")
    outcomes = []
    for i in range(points):
        sub = f"run{i}"
        d = backend.url(sub)
        wa, ca = _state()
        a = manager(backend, ca, 10, sub=sub)
        _saves(a, wa, [1, 2, 3])
        b = manager(backend, _state()[1], 10, sub=sub)
        count = [0]
        result: dict = {}

        def hook(op, url, i=i, a=a, wa=wa, count=count, result=result):
            count[0] += 1
            if count[0] == i + 1 and not result:
                wa[:] = 4.0
                try:
                    result["url"] = a.save()
                except cloudckpt.OwnershipLostError as exc:
                    result["lost"] = str(exc)

        remove = b._storage.add_hook(hook)
        b.restore_or_initialize()
        remove()
        assert result, f"point {i}: the hook did not run"
        b.save(checkpoint_number=99)
        b.gc()
        view = _view(backend, sub)
        url4 = f"{d}/ckpt-4"
        if "url" in result:
            outcomes.append("returned")
            assert result["url"] == url4
            assert "ckpt-4" in _names(view.valid), f"point {i}: a save that returned was not listed"
            assert cloudckpt.load(url4, storage_options=so)["model"]["w"].tolist() == [4.0] * 4
        else:
            outcomes.append("lost")
            if "ckpt-4" in _names(view.valid):
                continue  # accepted: committed before the record, listed like any other
            assert "ckpt-4" not in _names(view.valid)
            assert cloudckpt.latest_checkpoint(d, storage_options=so) == f"{d}/ckpt-99"
            storage = open_storage(d, so)
            garbage = admin.find_garbage(storage)
            fenced = [g for g in garbage if g.kind == "fenced-checkpoint"]
            if fenced:
                assert [g.key for g in fenced] == ["ckpt-4"]
                admin.collect_garbage(storage, garbage)
                assert not storage.exists("ckpt-4/manifest.json")
    assert "returned" in outcomes and "lost" in outcomes, outcomes


def test_a_zombie_async_save_after_the_record_is_never_listed(backend):
    """The old owner's async save passes its ownership check, then the new owner
    claims, scans and records; then the old save commits: fenced."""
    d = backend.url("run")
    so = backend.storage_options
    wa, ca = _state()
    a = manager(backend, ca, 10, async_save=True)
    _saves(a, wa, [9, 10], numbers=[9, 10])
    a.sync()
    b = manager(backend, _state()[1], 10)
    claimed: list[str | None] = []

    def just_before_the_commit(op, url):
        if op == "write_create" and url.endswith("ckpt-5/manifest.json") and not claimed:
            claimed.append(b.restore_or_initialize())

    remove = a._storage.add_hook(just_before_the_commit)
    wa[:] = 5.0
    a.save(checkpoint_number=5)
    with pytest.raises(cloudckpt.OwnershipLostError, match="fenced"):
        a.sync()
    remove()
    assert claimed == [f"{d}/ckpt-10"]
    assert open_storage(d, so).exists("ckpt-5/manifest.json")  # committed, but fenced:
    fresh = manager(backend, _state()[1], 10)
    assert fresh.all_steps() == [9, 10] and fresh.latest_checkpoint == f"{d}/ckpt-10"
    assert cloudckpt.latest_checkpoint(d, storage_options=so) == f"{d}/ckpt-10"
    report = cloudckpt.verify(d, storage_options=so)
    assert any("ckpt-5" in w and "fenced" in w for w in report.warnings)
    copied = cloudckpt.copy(d, backend.url("copy"), src_storage_options=so, dst_storage_options=so)
    assert sorted(name(u) for u in copied.copied) == ["ckpt-10", "ckpt-9"]
    listing = admin.list_directory(open_storage(d, so))
    assert {e.name: e.state for e in listing.entries}["ckpt-5"] == "fenced"
    storage = open_storage(d, so)
    removed = admin.collect_garbage(storage, admin.find_garbage(storage))
    assert [g.key for g in removed] == ["ckpt-5"] and not storage.exists("ckpt-5/manifest.json")


# ------------------------------------------------------------------ admin commands against a live job


def test_gc_and_ls_against_a_live_job_break_nothing(local_backend):
    """`cloudckpt gc --yes` in a loop beside a saving job: every save commits, no
    reader ever sees a partial manifest, and young temp files are kept."""
    b = local_backend
    d = b.url("run")
    w, c = _state()
    m = manager(b, c, 3)
    m.restore_or_initialize()
    errors: list[BaseException] = []
    stop = threading.Event()

    def admin_loop():
        storage = open_storage(d)
        while not stop.is_set():
            try:
                admin.collect_garbage(storage, admin.find_garbage(storage))
                view = directory.read_view(storage)
                assert view.damaged == [], [e.error for e in view.damaged]
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=admin_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for step in range(1, 61):
            w[:] = step
            m.save()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert m.all_steps() == [58, 59, 60]
    # a temp file younger than the age limit is a write in flight: listed, not collected
    Path(d, "checkpoint.tmp-0123456789ab").write_bytes(b"x")
    found = [g for g in admin.find_garbage(open_storage(d)) if g.kind == "temp-file"]
    assert [g.collect for g in found] == [False] and "in flight" in found[0].reason
    old = Path(d, "checkpoint.tmp-ba9876543210")
    old.write_bytes(b"x")
    os.utime(old, (1, 1))
    removed = admin.collect_garbage(open_storage(d), admin.find_garbage(open_storage(d)))
    assert [g.key for g in removed] == ["checkpoint.tmp-ba9876543210"]


def test_a_create_never_shows_a_partial_file(local_backend, monkeypatch):
    """Local disk without hard links: create-only goes through renameat2(RENAME_NOREPLACE);
    where that is missing too the write fails and nothing is visible; a temp file taken
    away mid-write fails the write and makes nothing visible."""
    import errno

    from cloudckpt.storage.backends import local as _local

    d = local_backend.url("run")
    s = open_storage(d)

    def no_link(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(_local.os, "link", no_link)
    assert s.write_if_absent("a.json", b"1")
    assert s.read("a.json") == b"1" and not s.write_if_absent("a.json", b"2") and s.read("a.json") == b"1"
    monkeypatch.setattr(_local, "_renameat2", None)
    with pytest.raises(cloudckpt.StorageError, match="neither hard links"):
        s.write_if_absent("b.json", b"1")
    assert not s.exists("b.json") and [k for k in s.list_all() if ".tmp-" in k] == []
    monkeypatch.undo()

    real_link = os.link

    def vanished(src, dst):
        os.unlink(src)  # as an admin's gc of any age did
        return real_link(src, dst)

    monkeypatch.setattr(_local.os, "link", vanished)
    with pytest.raises(cloudckpt.StorageError):
        s.write_if_absent("c.json", b"1")
    assert not s.exists("c.json")


# ------------------------------------------------------------------ latest, order, save_counter


def test_every_reader_agrees_on_latest(backend):
    d = backend.url("run")
    so = backend.storage_options
    for n in (3, 7):
        cloudckpt.save(f"{d}/model-{n}", {"model": {"w": np.full(4, n, np.float32)}, "step": n, "save_counter": 0}, storage_options=so)
    w, c = _state()
    m = manager(backend, c, 3)

    def agree(expected):
        storage = open_storage(d, so)
        assert m.latest_checkpoint == cloudckpt.latest_checkpoint(d, storage_options=so) == f"{d}/{expected}"
        assert admin.list_directory(storage).latest == f"{d}/{expected}"
        assert [x for x in cloudckpt.verify(d, storage_options=so).warnings if "state file" in x] == []

    assert m.latest_checkpoint == f"{d}/model-7"  # written without a manager: by number among themselves
    assert m.restore_or_initialize() == f"{d}/model-7" and w.tolist() == [7.0] * 4
    m.save()
    agree("ckpt-1")  # a manager's commit comes after every unmanaged one
    m.save(checkpoint_number=0)
    agree("ckpt-0")  # commit order, not numbers
    assert m.all_steps() == [1, 0]
    fresh = manager(backend, _state()[1], 3)
    assert fresh.latest_checkpoint == f"{d}/ckpt-0" and fresh.all_steps() == [1, 0]


def test_resuming_a_loop_numbered_by_step_keeps_save_counter(backend, caplog):
    d = backend.url("run")
    w, c = _state()
    m = manager(backend, c, 3)
    m.restore_or_initialize()
    _saves(m, w, [5, 10, 15, 20], numbers=[5, 10, 15, 20])
    assert c.save_counter == 4
    w2, c2 = _state()
    with caplog.at_level(logging.WARNING, logger="cloudckpt"):
        again = manager(backend, c2, 3)
        assert again.restore_or_initialize() == f"{d}/ckpt-20"
    assert c2.save_counter == 4 and w2.tolist() == [20.0] * 4
    assert caplog.text == ""
    assert again.all_steps() == [10, 15, 20] and again.latest_step() == 20


# ------------------------------------------------------------------ rollback


def test_rollback_restores_an_older_checkpoint_and_abandons_the_rest(backend, caplog):
    d = backend.url("run")
    so = backend.storage_options
    w, c = _state()
    m = manager(backend, c, 6)
    m.restore_or_initialize()
    _saves(m, w, [500, 600, 700, 800, 900, 1000], numbers=[500, 600, 700, 800, 900, 1000])
    # a loss spike after 800: go back to it
    assert m.restore(800) == f"{d}/ckpt-800" and w.tolist() == [800.0] * 4 and int(c.step) == 800
    assert cloudckpt.latest_checkpoint(d, storage_options=so) == f"{d}/ckpt-1000"  # nothing changed yet
    with pytest.raises(cloudckpt.CheckpointExistsError):
        m.save(checkpoint_number=700)  # committed, not abandoned: never overwritten
    with caplog.at_level(logging.WARNING, logger="cloudckpt"):
        w[:] = 850
        m.save(checkpoint_number=900)  # reaches the abandoned ckpt-900: replaces it
    assert f"{d}/ckpt-900" in caplog.text and "abandoned" in caplog.text
    assert cloudckpt.load(f"{d}/ckpt-900", storage_options=so)["model"]["w"].tolist() == [850.0] * 4
    for reader in (m, manager(backend, _state()[1], 6)):
        assert reader.latest_checkpoint == f"{d}/ckpt-900"  # the newest commit, not the highest number
        assert reader.all_steps() == [1000, 500, 600, 700, 800, 900]  # the abandoned ckpt-1000 retires first
    assert cloudckpt.latest_checkpoint(d, storage_options=so) == f"{d}/ckpt-900"
    listing = admin.list_directory(open_storage(d, so))
    assert {e.name: e.state for e in listing.entries}["ckpt-1000"] == "abandoned"
    w[:] = 1000
    m.save(checkpoint_number=1000)  # reaches the abandoned ckpt-1000: replaces it
    assert m.all_steps() == [500, 600, 700, 800, 900, 1000]
    assert cloudckpt.load(f"{d}/ckpt-1000", storage_options=so)["model"]["w"].tolist() == [1000.0] * 4
    w[:] = 1100
    m.save(checkpoint_number=1100)  # retention as usual: the oldest goes
    assert m.all_steps() == [600, 700, 800, 900, 1000, 1100]
    w2, c2 = _state()
    assert manager(backend, c2, 6).restore_or_initialize() == f"{d}/ckpt-1100" and w2.tolist() == [1100.0] * 4


def test_restore_takes_a_url_and_refuses_what_is_not_there(backend):
    d = backend.url("run")
    w, c = _state()
    m = manager(backend, c, 5)
    _saves(m, w, [1, 2, 3])
    assert m.restore(f"{d}/ckpt-2") == f"{d}/ckpt-2" and w.tolist() == [2.0] * 4
    with pytest.raises(cloudckpt.CheckpointNotFoundError, match="ckpt-9"):
        m.restore(9)
    with pytest.raises(ValueError, match=r"Checkpoint\.read"):
        m.restore(backend.url("elsewhere", "ckpt-1"))


# ------------------------------------------------------------------ the first release's directories


def _first_release_run(backend):
    """tests/data/release-0.1.0/run, copied object by object onto ``backend``."""
    src = DATA / "release-0.1.0" / "run"
    dst = open_storage(backend.url("run"), backend.storage_options)
    for path in sorted(src.rglob("*")):
        if path.is_file():
            dst.write(path.relative_to(src).as_posix(), path.read_bytes())
    return backend.url("run")


def test_a_directory_of_the_first_release_is_read_and_continued(backend):
    d = _first_release_run(backend)
    so = backend.storage_options
    assert cloudckpt.latest_checkpoint(d, storage_options=so) == f"{d}/ckpt-30"
    view = _view(backend)
    assert _names(view.valid) == ["ckpt-10", "ckpt-20", "ckpt-30"] and view.fenced == []
    w, c = _state()
    b = np.zeros(2)
    c = cloudckpt.Checkpoint(model={"w": w, "b": b}, step=0)
    m = manager(backend, c, 5)
    assert m.all_steps() == [10, 20, 30]
    assert m.restore_or_initialize() == f"{d}/ckpt-30"
    assert w.tolist() == [3.0] * 4 and b.tolist() == [-3.0] * 2 and int(c.step) == 3
    assert c.save_counter == 21  # as saved
    w[:] = 4
    assert name(m.save(checkpoint_number=40)) == "ckpt-40"
    assert m.epoch == 3 and m.all_steps() == [10, 20, 30, 40]
    assert cloudckpt.verify(d, storage_options=so).ok
    for n in (10, 20):
        assert cloudckpt.load(f"{d}/ckpt-{n}", storage_options=so)["model"]["w"].tolist() == [n / 10] * 4


# ------------------------------------------------------------------ reading is bounded and total


def _many_leaves(n):
    return {f"t{i}": np.full(1, i, np.float32) for i in range(n)}


def test_a_manifest_over_the_limit_is_refused_before_it_is_read(backend, monkeypatch):
    d = backend.url("run")
    so = backend.storage_options
    cloudckpt.save(f"{d}/ckpt-1", {"w": np.ones(2)}, storage_options=so)
    big = cloudckpt.save(f"{d}/ckpt-2", _many_leaves(3000), storage_options=so)  # a manifest of ~0.5 MB
    monkeypatch.setenv("CLOUDCKPT_MAX_MANIFEST_BYTES", str(64 * 1024))
    view = _view(backend)
    assert _names(view.valid) == ["ckpt-1"] and "over the manifest size limit" in view.damaged[0].error
    assert cloudckpt.latest_checkpoint(d, storage_options=so) == big  # damaged, numbered above: newest
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="CLOUDCKPT_MAX_MANIFEST_BYTES"):
        cloudckpt.load(big, storage_options=so)
    m = manager(backend, cloudckpt.Checkpoint(w=np.zeros(2)), 3)
    assert m.restore_or_initialize(fallback=True) == f"{d}/ckpt-1"
    with pytest.raises(ValueError, match="over the manifest size limit"):
        cloudckpt.save(f"{d}/ckpt-3", _many_leaves(3000), storage_options=so)
    assert not open_storage(d, so).exists("ckpt-3/manifest.json")
    assert not cloudckpt.verify(d, storage_options=so).ok


def test_listing_reads_headers_not_whole_manifests(backend):
    d = backend.url("run")
    so = backend.storage_options
    m = manager(backend, cloudckpt.Checkpoint(**_many_leaves(2000)), None)
    for _ in range(4):
        m.save()
    size = len(open_storage(d, so).read("ckpt-1/manifest.json"))
    assert size > 200_000
    storage = open_storage(d, so)
    before = storage.stats.snapshot()
    view = directory.read_view(storage)
    after = storage.stats.snapshot()
    assert _names(view.valid) == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]
    read = after["bytes_read"] - before["bytes_read"]
    assert read < 4 * 64 * 1024 + 4096, read  # the first line of each manifest, not 4 x 200 kB
    # one listing, then per checkpoint a listing and a header read; the ownership records
    assert after["requests"] - before["requests"] <= 2 * 4 + 4


def test_a_hostile_float_or_path_affects_only_its_checkpoint(backend):
    import json

    from cloudckpt.format.manifest import encode_manifest

    d = backend.url("run")
    so = backend.storage_options
    w, c = _state()
    m = manager(backend, c, 5)
    _saves(m, w, [1, 2])
    s = open_storage(d, so)
    doc = json.loads(s.read("ckpt-2/manifest.json"))
    doc["tree"]["v"][0]["v"].append({"t": "float", "v": "0x1.0p+99999999999999999999"})
    doc["tree"]["v"][0]["k"].append("huge")
    s.write("ckpt-2/manifest.json", encode_manifest(doc))
    fresh = manager(backend, _state()[1], 5)  # the constructor reads headers only
    assert fresh.latest_checkpoint == f"{d}/ckpt-2"
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="float"):
        fresh.restore_or_initialize()
    assert fresh.restore_or_initialize(fallback=True) == f"{d}/ckpt-1"
    assert not cloudckpt.verify(d, storage_options=so).ok
    doc = json.loads(s.read("ckpt-1/manifest.json"))
    doc["pack"]["path"] = "../../victim/secret.bin"
    s.write("ckpt-1/manifest.json", encode_manifest(doc))
    with pytest.raises(cloudckpt.CorruptCheckpointError, match=r"pack\.path"):
        cloudckpt.load(f"{d}/ckpt-1", storage_options=so)
    doc["pack"]["path"] = "_pack"
    doc["metadata"] = {"loss": float("nan")}
    s.write("ckpt-1/manifest.json", json.dumps(doc).encode())  # NaN: Python's json writes it, we never do
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="NaN"):
        cloudckpt.load(f"{d}/ckpt-1", storage_options=so)


def test_an_object_longer_than_recorded_is_damage(backend):
    import json

    d = backend.url("c")
    so = backend.storage_options
    url = cloudckpt.save(d, {"big": np.arange(1 << 16, dtype=np.float32), "small": np.ones(3)}, storage_options=so,
                         options=cloudckpt.StoreOptions(pack_threshold=1024, chunk_bytes=1 << 16))
    s = open_storage(url, so)
    objects = json.loads(s.read("manifest.json"))["objects"]
    chunks = [o["key"] for o in objects if "/big/c/" in o["key"]]
    packs = [o["key"] for o in objects if "/_pack/c/" in o["key"]]
    assert chunks and packs
    for key in (chunks[0], packs[0]):
        original = s.read(key)
        s.write(key, original + b"\0")
        with pytest.raises(cloudckpt.CorruptCheckpointError, match="longer than its recorded size"):
            cloudckpt.load(url, storage_options=so)
        s.write(key, original)
    assert cloudckpt.load(url, storage_options=so)["small"].tolist() == [1.0] * 3


def test_an_absurd_declared_size_is_damage_not_an_os_error(local_backend):
    import json

    from cloudckpt.format.manifest import encode_manifest

    d = local_backend.url("c")
    url = cloudckpt.save(d, {"big": np.arange(1 << 16, dtype=np.float32)},
                         options=cloudckpt.StoreOptions(pack_threshold=0, chunk_bytes=1 << 16))
    s = open_storage(url)
    doc = json.loads(s.read("manifest.json"))
    rec = doc["arrays"][0]
    lo, hi = rec["chunked"]["objects"]
    rows = 1 << 41  # 8 TiB of float32 in total
    per = rows // (hi - lo)
    rec["shape"] = [rows]
    rec["nbytes"] = rows * 4
    rec["chunked"]["chunk_shape"] = [per]
    for o in doc["objects"][lo:hi]:
        o["size"] = per * 4
    doc["nbytes"] = rows * 4
    doc.pop("stored", None)
    s.write("manifest.json", encode_manifest(doc))
    with pytest.raises(cloudckpt.CheckpointError) as info:
        cloudckpt.load(url)
    assert url in str(info.value)


# ------------------------------------------------------------------ the small TF differences


def test_names_and_urls_as_tf_and_the_same_on_every_backend(backend, tmp_path, monkeypatch):
    so = backend.storage_options
    # "checkpoint" is a name like any other: checkpoint-1/ does not collide with the state file
    m = manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), 2, checkpoint_name="checkpoint")
    assert name(m.save()) == "checkpoint-1" and cloudckpt.latest_checkpoint(backend.url("run"), storage_options=so)
    # x/../y is y on every backend
    cloudckpt.save(backend.url("a", "..", "b", "c"), {"w": np.ones(1)}, storage_options=so)
    assert open_storage(backend.url("b"), so).exists("c/manifest.json")
    # a save inside another checkpoint's data is refused and changes nothing
    data = cloudckpt.info(backend.url("b", "c"), storage_options=so).data_url
    with pytest.raises(ValueError, match="inside"):
        cloudckpt.save(f"{data}/sneaky", {"w": np.zeros(1)}, storage_options=so)
    assert cloudckpt.verify(backend.url("b", "c"), storage_options=so).ok
    with pytest.raises(TypeError, match="chunk_bytes"):
        cloudckpt.StoreOptions(chunk_bytes=1000.5)
    with pytest.raises(TypeError, match="max_to_keep"):
        manager(backend, cloudckpt.Checkpoint(w=np.ones(1)), "3")


def test_a_relative_directory_stays_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "train", 2)
    assert m.save() == os.path.join("train", "ckpt-1") == m.latest_checkpoint
    assert cloudckpt.latest_checkpoint("train") == "train/ckpt-1"
    assert cloudckpt.load("train/ckpt-1")["w"].tolist() == [1.0]


@pytest.mark.parametrize("typo", ["s3:/bucket/run", "gs:bucket/run", "memory:/x"])
def test_a_mistyped_scheme_is_not_a_local_folder(tmp_path, monkeypatch, typo):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="mistyped URL"):
        cloudckpt.save(typo, {"w": np.ones(1)})
    assert list(tmp_path.iterdir()) == []


def test_a_dotdot_may_not_leave_the_bucket(object_backend):
    with pytest.raises(ValueError, match="leaves the bucket"):
        open_storage(object_backend.url("..", "..", "other"), object_backend.storage_options)


def test_parsing_a_manifest_is_bounded_by_the_limit(monkeypatch):
    """The worst a manifest can cost: one-field nodes, as many as fit under the limit.
    Its peak memory is a fixed multiple of the limit (measured ~21x: a Python dict
    per node); one byte more is refused before parsing."""
    import tracemalloc

    from cloudckpt.format.manifest import build_manifest, encode_manifest, parse_manifest

    limit = 1 << 20
    monkeypatch.setenv("CLOUDCKPT_MAX_MANIFEST_BYTES", str(limit))

    def of_nodes(n):
        m = build_manifest(tree={"t": "list", "v": [{"t": "none"}] * n}, arrays=[], pack=None, objects=[],
                           data="data-0123456789abcdef", attempt="0123456789abcdef")
        return encode_manifest(m)

    n = limit // 13
    while len(data := of_nodes(n)) > limit:
        n -= 1000
    assert len(data) > limit - 20_000
    tracemalloc.start()
    try:
        assert len(parse_manifest(data, "memory://x/manifest.json")["tree"]["v"]) == n
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * limit, peak
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="over the manifest size limit"):
        parse_manifest(of_nodes(n + 2000), "memory://x/manifest.json")


@pytest.mark.parametrize("backend", ["memory", "local"], indirect=True)
def test_a_newer_format_numbered_above_the_latest_is_not_skipped_silently(backend):
    import json

    from cloudckpt.format.manifest import encode_manifest

    d = backend.url("run")
    w, c = _state()
    m = manager(backend, c, 5)
    _saves(m, w, [1, 2])
    s = open_storage(d, backend.storage_options)
    doc = json.loads(s.read("ckpt-2/manifest.json"))
    doc["format_version"] = 99
    s.write("ckpt-3/manifest.json", encode_manifest({**doc, "checkpoint_number": 3}))
    fresh = manager(backend, _state()[1], 5)
    assert fresh.latest_checkpoint == f"{d}/ckpt-3"
    with pytest.raises(cloudckpt.FormatVersionError, match="upgrade cloudckpt"):
        fresh.restore_or_initialize()
    assert fresh.restore_or_initialize(fallback=True) == f"{d}/ckpt-2"
    assert name(fresh.save()) == "ckpt-4"  # numbered past it; it is left as it is
    assert s.exists("ckpt-3/manifest.json")


def test_restore_takes_a_local_path_given_either_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = np.zeros(1)
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=w), "train", 3)
    for step in (1, 2):
        w[:] = step
        m.save()
    assert m.restore(str(tmp_path / "train" / "ckpt-1")) == "train/ckpt-1" and w.tolist() == [1.0]
    assert m.restore("./train/ckpt-2") == "train/ckpt-2" and w.tolist() == [2.0]
    with pytest.raises(ValueError, match="not a checkpoint of"):
        m.restore(str(tmp_path / "elsewhere" / "ckpt-1"))
