"""Incremental saves: unchanged objects are copied inside the store, every checkpoint stays whole.

On every backend: a manager's later saves send only what changed (the
store's own counters: bytes written vs bytes copied), every checkpoint loads
bit-exactly, alone, with zarr-python too, and after any other one is
deleted. A base that cannot serve (damaged manifest, damaged or deleted
objects, another store) makes the save write the bytes, never propagate
damage.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import zarr

import cloudckpt
from cloudckpt.storage import add_global_hook, open_storage

MiB = 1 << 20
OPTS = cloudckpt.StoreOptions(pack_threshold=64 * 1024, chunk_bytes=256 * 1024)


def frozen_and_trained(seed: int = 0) -> dict:
    """A fine-tuning-like state: a frozen base (chunked and packed tensors) and small trained ones."""
    rng = np.random.default_rng(seed)
    return {
        "base": {
            "embed": rng.standard_normal((512, 512)).astype("<f4"),  # 1 MiB: 4 chunks
            "proj": rng.standard_normal((256, 256)).astype("<f4"),  # 256 KiB: 1 chunk
            "norm": rng.standard_normal(64).astype("<f4"),  # packed
        },
        "lora": {"a": np.zeros((8, 256), "<f4"), "b": np.zeros((256, 8), "<f4")},  # packed, trained
        "step": np.zeros((), "<i8"),
    }


def train(state: dict, step: int) -> None:
    rng = np.random.default_rng(1000 + step)
    state["lora"]["a"][...] = rng.standard_normal(state["lora"]["a"].shape)
    state["lora"]["b"][...] = rng.standard_normal(state["lora"]["b"].shape)
    state["step"][...] = step


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    return np.asarray(a).dtype == np.asarray(b).dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()


def snapshot(state: dict) -> dict:
    return {k: snapshot(v) if isinstance(v, dict) else np.array(v, copy=True) for k, v in state.items()}


def manifest_of(url, storage_options=None) -> dict:
    return json.loads(open_storage(url, storage_options).read("manifest.json"))


def load(backend, url):
    out = cloudckpt.load(url, storage_options=backend.storage_options)
    out.pop("save_counter", None)  # (what a Checkpoint adds)
    return out


def test_a_managers_later_saves_send_only_what_changed_and_every_checkpoint_is_whole(backend):
    state = frozen_and_trained()
    m = cloudckpt.CheckpointManager(
        cloudckpt.Checkpoint(**state), backend.url("run"), 3, storage_options=backend.storage_options, options=OPTS
    )
    stats = m._storage.stats
    saved = {}
    sent, copied = [], []
    for step in (1, 2, 3):
        train(state, step)
        before = stats.snapshot()
        url = m.save()
        after = stats.snapshot()
        saved[url] = snapshot(state)
        sent.append(after["bytes_written"] - before["bytes_written"])
        copied.append(after.get("bytes_copied", 0) - before.get("bytes_copied", 0))
    frozen = sum(a.nbytes for a in state["base"].values() if a.nbytes >= OPTS.pack_threshold)
    copies = m._storage.capabilities.server_copy
    assert copied[0] == 0
    if copies:
        for n in (1, 2):
            assert copied[n] >= frozen, (copied, frozen)  # the frozen chunks were not sent again
            assert sent[n] < sent[0] - frozen + 64 * 1024, (sent, frozen)
    else:  # a store without a server-side copy writes everything, as before
        assert copied == [0, 0, 0] and sent[1] >= frozen
    for url, want in saved.items():
        assert same(load(backend, url), want)
    # whole: deleting the first (the base of the second) and then the second leaves the third intact
    first, second, third = list(saved)
    for gone in (first, second):
        open_storage(backend.url("run"), backend.storage_options).delete_prefix(gone.rsplit("/", 1)[1])
        assert same(load(backend, third), saved[third])
    assert same(load(backend, third), saved[third])


@pytest.mark.parametrize("backend", ["local", "memory", "s3"], indirect=True)
def test_an_incremental_checkpoint_reads_with_zarr_python_alone(backend):
    state = frozen_and_trained()
    first = cloudckpt.save(backend.url("ckpt-1"), state, storage_options=backend.storage_options, options=OPTS)
    train(state, 1)
    second = cloudckpt.save(backend.url("ckpt-2"), state, storage_options=backend.storage_options, options=OPTS, base=first)
    info = cloudckpt.info(second, storage_options=backend.storage_options)
    group = zarr.open_group(info.data_url, mode="r", storage_options=backend.storage_options)
    embed = next(leaf for leaf in info.leaves if leaf["path"] == ["base", "embed"])
    assert embed["stored_as"] == "array"
    assert np.array_equal(group[embed["zarr_path"]][...], state["base"]["embed"])


def test_local_incremental_saves_hard_link_unchanged_objects(local_backend):
    state = frozen_and_trained()
    first = cloudckpt.save(local_backend.url("ckpt-1"), state, options=OPTS)
    train(state, 1)
    second = cloudckpt.save(local_backend.url("ckpt-2"), state, options=OPTS, base=first)
    info = cloudckpt.info(second)
    m1, m2 = (manifest_of(u) for u in (first, second))
    shared = set(m1["content_hashes"]["objects"]) & set(m2["content_hashes"]["objects"])
    linked = [o for o, h in zip(m2["objects"], m2["content_hashes"]["objects"], strict=True) if h in shared and o["size"] >= OPTS.chunk_bytes]
    assert len(linked) >= 5  # embed (4 chunks) and proj
    for o in linked:
        st = os.stat(os.path.join(second, o["key"]))
        assert st.st_nlink == 2  # no extra disk space: one inode for both checkpoints
    assert info.url == second


def test_a_change_in_one_packed_tensor_resends_at_most_its_pack_object(memory_backend_url):
    # 40 tensors of 400 KiB are packed into objects of at most 8 MiB; one changes
    state = {f"t{i:02d}": np.full(100 * 1024, i, "<f4") for i in range(40)}
    opts = cloudckpt.StoreOptions(pack_threshold=1 * MiB)
    s = open_storage(memory_backend_url)
    first = cloudckpt.save(f"{memory_backend_url}/ckpt-1", state, options=opts)
    state["t17"][5] = -1.0
    before = s.stats.snapshot()["bytes_written"]
    cloudckpt.save(f"{memory_backend_url}/ckpt-2", state, options=opts, base=first)
    sent = open_storage(memory_backend_url).stats.snapshot()["bytes_written"] - before
    pack = manifest_of(first)["pack"]
    assert pack["chunk_bytes"] <= 8 * MiB
    assert sent <= state["t17"].nbytes + 8 * MiB + 64 * 1024, sent  # + the zarr documents
    assert sent < sum(a.nbytes for a in state.values()) / 2


@pytest.fixture
def memory_backend_url():
    import uuid

    import fsspec

    url = f"memory://incr-{uuid.uuid4().hex[:10]}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url[len("memory://"):]):
        fs.rm(url[len("memory://"):], recursive=True)


def test_a_damaged_base_manifest_makes_a_full_write(memory_backend_url, caplog):
    state = frozen_and_trained()
    first = cloudckpt.save(f"{memory_backend_url}/ckpt-1", state, options=OPTS)
    open_storage(first).write("manifest.json", b"{not json")
    train(state, 1)
    with caplog.at_level(logging.WARNING, logger="cloudckpt"):
        second = cloudckpt.save(f"{memory_backend_url}/ckpt-2", state, options=OPTS, base=first)
    assert "cannot be used" in caplog.text
    assert same(cloudckpt.load(second), state)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_or_deleted_base_object_is_written_not_propagated(backend, damage, caplog):
    if backend.is_object_store and damage == "truncate":
        pytest.skip("storage-independent case: truncation is checked on local and memory, flips and deletes everywhere")
    state = frozen_and_trained()
    so = backend.storage_options
    first = cloudckpt.save(backend.url("ckpt-1"), state, storage_options=so, options=OPTS)
    s1 = open_storage(first, so)
    manifest = manifest_of(first, so)
    embed = next(a for a in manifest["arrays"] if "chunked" in a and a["shape"] == [512, 512])
    key = manifest["objects"][embed["chunked"]["objects"][0]]["key"]
    data = s1.read(key)
    if damage == "flip":
        broken = bytearray(data)
        broken[len(broken) // 2] ^= 0x01
        s1.delete([key])  # (a fresh object: on local disk, never write into a file another checkpoint may share)
        s1.write(key, bytes(broken))
    elif damage == "truncate":
        s1.delete([key])
        s1.write(key, data[: len(data) // 2])
    else:
        s1.delete([key])
    train(state, 1)
    with caplog.at_level(logging.DEBUG, logger="cloudckpt"):
        second = cloudckpt.save(backend.url("ckpt-2"), state, storage_options=so, options=OPTS, base=first)
    assert same(cloudckpt.load(second, storage_options=so), state)  # the new checkpoint holds the right bytes
    caps = s1.capabilities
    if damage == "delete" and caps.server_copy:
        assert "is gone" in caplog.text
    elif damage == "truncate" and caps.server_copy:
        assert "is damaged" in caplog.text
    if damage == "flip":
        # a flipped source is caught at save time where the store reports the copy's crc32c,
        # else at load time of the base (never silently: the base itself raises)
        with pytest.raises(cloudckpt.CorruptCheckpointError):
            cloudckpt.load(first, storage_options=so)


def test_a_base_on_another_store_makes_a_full_write(tmp_path, memory_backend_url, caplog):
    state = frozen_and_trained()
    first = cloudckpt.save(f"{memory_backend_url}/ckpt-1", state, options=OPTS)
    with caplog.at_level(logging.DEBUG, logger="cloudckpt"):
        second = cloudckpt.save(str(tmp_path / "ckpt-2"), state, options=OPTS, base=first)
    assert "another store" in caplog.text
    assert same(cloudckpt.load(second), state)


def test_a_base_deleted_while_the_save_runs_is_written_instead(memory_backend_url):
    state = frozen_and_trained()
    first = cloudckpt.save(f"{memory_backend_url}/ckpt-1", state, options=OPTS)
    s = open_storage(memory_backend_url)
    gone = []

    def delete_base_on_first_copy(op: str, url: str) -> None:
        if op == "copy" and not gone:
            gone.append(url)
            s.delete_prefix("ckpt-1")

    remove = add_global_hook(delete_base_on_first_copy)
    try:
        train(state, 1)
        second = cloudckpt.save(f"{memory_backend_url}/ckpt-2", state, options=OPTS, base=first)
    finally:
        remove()
    assert gone
    assert same(cloudckpt.load(second), state)


def test_incremental_false_copies_nothing(memory_backend_url):
    state = frozen_and_trained()
    m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(**state), memory_backend_url, 2, options=OPTS, incremental=False)
    m.save()
    train(state, 1)
    m.save()
    assert m._storage.stats.snapshot().get("bytes_copied", 0) == 0
    with pytest.raises(TypeError, match="incremental"):
        cloudckpt.CheckpointManager(cloudckpt.Checkpoint(**state), memory_backend_url, 2, incremental="yes")


def test_manifests_record_a_content_hash_per_object_and_stay_readable_by_older_readers(memory_backend_url):
    url = cloudckpt.save(f"{memory_backend_url}/ckpt-1", frozen_and_trained(), options=OPTS)
    m = manifest_of(url)
    assert m["format_version"] == 1  # an informational field: no newer format version for the hashes
    assert m["content_hashes"]["algorithm"] == "xxh3-128"
    assert len(m["content_hashes"]["objects"]) == len(m["objects"])
    s = open_storage(url)
    from cloudckpt.format.checksum import content_hash_many

    for o, digest in zip(m["objects"], m["content_hashes"]["objects"], strict=True):
        assert set(o) == {"key", "size", "crc32c"}
        assert digest == content_hash_many([s.read(o["key"])])


def test_a_base_deleted_between_the_link_and_its_check_is_written_instead(local_backend):
    state = frozen_and_trained()
    first = cloudckpt.save(local_backend.url("ckpt-1"), state, options=OPTS)
    s = open_storage(local_backend.url())
    gone = []

    def delete_base_at_first_check(op: str, url: str) -> None:
        if op == "head" and "/ckpt-2/" in url and not gone:
            gone.append(url)
            s.delete_prefix("ckpt-1")

    remove = add_global_hook(delete_base_at_first_check)
    try:
        train(state, 1)
        second = cloudckpt.save(local_backend.url("ckpt-2"), state, options=OPTS, base=first)
    finally:
        remove()
    assert gone
    assert same(cloudckpt.load(second), state)


def test_a_remote_store_that_reports_no_crc_of_a_copy_gets_the_bytes(object_backend, monkeypatch, caplog):
    if not open_storage(object_backend.url(), object_backend.storage_options).capabilities.server_copy:
        pytest.skip(f"{object_backend.name} has no server-side copy")
    from cloudckpt.storage.backends.fsspec import FsspecBackend

    # an S3-compatible store that keeps no checksums: the copy is made, but nothing reports its crc32c
    for cls in FsspecBackend.__subclasses__():
        if "copy" in vars(cls):
            real = vars(cls)["copy"]
            monkeypatch.setattr(cls, "copy", lambda self, src, dst, real=real: (real(self, src, dst), None)[1])
    so = object_backend.storage_options
    state = frozen_and_trained()
    first = cloudckpt.save(object_backend.url("ckpt-1"), state, storage_options=so, options=OPTS)
    s1 = open_storage(first, so)
    manifest = manifest_of(first, so)
    key = manifest["objects"][-1]["key"]  # an array chunk of the frozen base
    data = s1.read(key)
    s1.write(key, bytes(len(data)))  # damaged, same size
    train(state, 1)
    with caplog.at_level(logging.WARNING, logger="cloudckpt"):
        second = cloudckpt.save(object_backend.url("ckpt-2"), state, storage_options=so, options=OPTS, base=first)
    assert "reports no crc32c" in caplog.text
    assert same(cloudckpt.load(second, storage_options=so), state)


def test_content_hashes_are_informational_for_the_reader(memory_backend_url):
    from cloudckpt.format.manifest import encode_manifest

    url = cloudckpt.save(f"{memory_backend_url}/ckpt-1", frozen_and_trained(), options=OPTS)
    s = open_storage(url)
    m = manifest_of(url)
    for changed in ({"algorithm": "blake3", "objects": ["ab" * 32]}, {"algorithm": "xxh3-128", "objects": []}):
        s.delete(["manifest.json"])
        s.write("manifest.json", encode_manifest({**m, "content_hashes": changed}))
        assert same(cloudckpt.load(url), frozen_and_trained())  # a future or odd table does not stop a load
        train_state = frozen_and_trained()
        train(train_state, 1)
        n = len(changed["objects"])
        second = cloudckpt.save(f"{memory_backend_url}/ckpt-{n + 2}", train_state, options=OPTS, base=url)
        assert same(cloudckpt.load(second), train_state)  # nothing usable to copy from: written in full


def test_a_manifest_near_the_size_limit_leaves_out_its_hashes(memory_backend_url, monkeypatch, caplog):
    state = {f"t{i}": np.full(300, i, "<f4") for i in range(40)}
    opts = cloudckpt.StoreOptions(pack_threshold=0, chunk_bytes=256)  # many objects: a long hash list
    probe = cloudckpt.save(f"{memory_backend_url}/probe", state, options=opts)
    raw = open_storage(probe).read("manifest.json")
    hashes = json.dumps(manifest_of(probe)["content_hashes"])
    monkeypatch.setenv("CLOUDCKPT_MAX_MANIFEST_BYTES", str(len(raw) - len(hashes) + 1000))
    with caplog.at_level(logging.WARNING, logger="cloudckpt"):
        url = cloudckpt.save(f"{memory_backend_url}/ckpt-1", state, options=opts)
    assert "leaves out its content hashes" in caplog.text
    assert "content_hashes" not in manifest_of(url)
    assert same(cloudckpt.load(url), state)


def test_a_local_base_object_changed_within_the_commits_clock_tick_is_caught(local_backend):
    # the kernel stamps files from a coarse clock: a change right after the commit may carry the commit's time
    state = frozen_and_trained()
    first = cloudckpt.save(local_backend.url("ckpt-1"), state, options=OPTS)
    manifest = manifest_of(first)
    embed = next(a for a in manifest["arrays"] if "chunked" in a and a["shape"] == [512, 512])
    path = os.path.join(first, manifest["objects"][embed["chunked"]["objects"][0]]["key"])
    committed = os.stat(os.path.join(first, "manifest.json")).st_mtime_ns
    with open(path, "r+b") as f:  # damaged in place, same size
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    os.utime(path, ns=(committed, committed))  # ... and stamped with the commit's time
    train(state, 1)
    second = cloudckpt.save(local_backend.url("ckpt-2"), state, options=OPTS, base=first)
    assert same(cloudckpt.load(second), state)
