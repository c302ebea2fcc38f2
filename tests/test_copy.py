"""cloudckpt.copy: cross-cloud copies against real servers (moto S3, fake-gcs-server).

Every copy is checked by restoring at the destination and comparing bytes;
resumption is checked by counting requests with storage hooks.
"""

from __future__ import annotations

import itertools
import json
import threading
import tracemalloc
import uuid

import numpy as np
import pytest
import servers

import cloudckpt
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.layout import catalog, ownership
from cloudckpt.layout.checkpoint_io import write_checkpoint
from cloudckpt.storage import open_storage

SMALL = cloudckpt.StoreOptions(pack_threshold=4096, chunk_bytes=64 * 1024)


class Loc:
    """A fresh location on one backend: URL joining and storage options."""

    def __init__(self, name: str, root: str, options: dict | None) -> None:
        self.name, self.root, self.options = name, root, options
        self._storage = self._fs = None

    def url(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def storage(self):
        """One Storage for the test's own reads (a new S3 client costs ~0.5 s)."""
        if self._storage is None:
            self._storage = open_storage(self.root, self.options)
        return self._storage

    def fs(self):
        """A plain fsspec filesystem, to damage objects behind the library's back."""
        if self._fs is None:
            import fsspec

            protocol = {"local": "file", "memory": "memory", "s3": "s3", "gcs": "gs", "azure": "az"}[self.name]
            self._fs = fsspec.filesystem(protocol, skip_instance_cache=True, **(self.options or {}))
        return self._fs


@pytest.fixture
def locs(request, tmp_path):
    """make(name) -> a fresh Loc on backend ``name`` (servers started on demand)."""

    made = []

    def make(name: str) -> Loc:
        uid = uuid.uuid4().hex[:10]
        if name == "local":
            loc = Loc("local", str(tmp_path / f"l-{uid}"), None)
        elif name == "memory":
            loc = Loc("memory", f"memory://m-{uid}", None)
        elif name == "s3":
            srv = request.getfixturevalue("s3_server")
            bucket = request.getfixturevalue("s3_bucket")
            loc = Loc("s3", f"s3://{bucket}/{uid}", servers.s3_storage_options(srv.endpoint_url))
        elif name == "azure":
            srv = request.getfixturevalue("azure_server")
            container = request.getfixturevalue("azure_container")
            loc = Loc("azure", f"az://{container}/{uid}", servers.azure_storage_options(srv.endpoint_url))
        else:
            srv = request.getfixturevalue("gcs_server")
            bucket = request.getfixturevalue("gcs_bucket")
            loc = Loc("gcs", f"gs://{bucket}/{uid}", servers.gcs_storage_options(srv.endpoint_url))
        made.append(loc)
        return loc

    yield make
    for loc in made:
        if loc.name == "memory":
            fs = loc.fs()
            if fs.exists(loc.root):
                fs.rm(loc.root, recursive=True)


def make_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "model": {
            "w": rng.standard_normal((300, 200)).astype(np.float32),  # ~234 KiB: 4 chunks of 64 KiB
            "b": rng.standard_normal(7),
            "emb": rng.integers(0, 1 << 30, size=(50, 3), dtype=np.int64),
        },
        "opt": {"m": rng.standard_normal(100).astype(np.float16), "step": np.int64(seed)},
        "nan": np.array([np.nan, -0.0, np.inf]),
        "step": seed,
        "lr": 0.001,
        "name": f"run-{seed}",
    }


def assert_bit_exact(a, b) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_bit_exact(a[k], b[k])
    elif isinstance(a, (np.ndarray, np.generic)):
        assert isinstance(b, (np.ndarray, np.generic)), type(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    else:
        assert type(a) is type(b) and a == b


def read_raw(loc: Loc, *parts: str) -> bytes:
    return loc.storage().read("/".join(parts))


@pytest.mark.parametrize("pair", [("s3", "gcs"), ("gcs", "s3"), ("local", "memory")], ids=lambda p: "-to-".join(p))
def test_copy_checkpoint_bit_exact(locs, pair):
    src, dst = locs(pair[0]), locs(pair[1])
    state = make_state(1)
    url = cloudckpt.save(src.url("ckpt-1"), state, storage_options=src.options, options=SMALL)
    m = cloudckpt.info(url, storage_options=src.options)
    assert m.objects > 6  # several chunks, the pack, zarr.json documents, the manifest

    seen: list[tuple[int, int]] = []
    report = cloudckpt.copy(
        url,
        dst.url("ckpt-1"),
        src_storage_options=src.options,
        dst_storage_options=dst.options,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert report.kind == "checkpoint"
    assert report.copied == [dst.url("ckpt-1")] and report.skipped == []
    assert report.objects_copied == m.objects  # every data object plus the manifest
    assert report.bytes_copied == m.stored_bytes + len(read_raw(src, "ckpt-1", MANIFEST_KEY))
    assert report.state_file is None  # a single checkpoint: no state file is invented

    restored = cloudckpt.load(dst.url("ckpt-1"), storage_options=dst.options)
    assert_bit_exact(state, restored)
    # the manifest is the source's, byte for byte (same data prefix, same checksums)
    assert read_raw(dst, "ckpt-1", MANIFEST_KEY) == read_raw(src, "ckpt-1", MANIFEST_KEY)
    assert cloudckpt.verify(dst.url("ckpt-1"), storage_options=dst.options).ok

    # progress: starts at 0, never goes back, ends at the total
    assert seen[0] == (0, seen[0][1]) and seen[-1][0] == seen[-1][1] == seen[0][1]
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    assert seen[0][1] == report.bytes_copied


def test_copy_s3_to_azure_to_gcs_bit_exact(locs):
    """A checkpoint goes S3 -> Azure -> GCS: every hop restores bit-exactly, and every
    object (data and manifest) is the source's, byte for byte."""
    s3, az, gcs = locs("s3"), locs("azure"), locs("gcs")
    state = make_state(7)
    url = cloudckpt.save(s3.url("ckpt-1"), state, storage_options=s3.options, options=SMALL)
    m = cloudckpt.info(url, storage_options=s3.options)
    for src, dst in ((s3, az), (az, gcs)):
        report = cloudckpt.copy(
            src.url("ckpt-1"), dst.url("ckpt-1"), src_storage_options=src.options, dst_storage_options=dst.options
        )
        assert report.copied == [dst.url("ckpt-1")] and report.objects_copied == m.objects
        assert_bit_exact(state, cloudckpt.load(dst.url("ckpt-1"), storage_options=dst.options))
        assert cloudckpt.verify(dst.url("ckpt-1"), storage_options=dst.options).ok
    objects = s3.storage().list_all("ckpt-1")
    assert len(objects) == m.objects
    for loc in (az, gcs):
        assert loc.storage().list_all("ckpt-1") == objects
        for key in objects:
            assert read_raw(loc, "ckpt-1", key) == read_raw(s3, "ckpt-1", key), (loc.name, key)


def _managed_run(loc: Loc, clock_start: float = 1.7e9):
    """A managed directory with retention and one preserved checkpoint, plus debris."""
    t = [clock_start]
    states = {}
    ckpt = cloudckpt.Checkpoint(model=make_state(0)["model"], step=0)
    mgr = cloudckpt.CheckpointManager(
        ckpt,
        loc.root,
        max_to_keep=2,
        keep_checkpoint_every_n_hours=1.0,
        storage_options=loc.options,
        clock=lambda: t[0],
        options=SMALL,
    )
    for i in range(1, 6):
        t[0] += 1800.0  # half an hour per save: every other retired checkpoint is preserved
        ckpt.model["w"][:] = i
        ckpt.step = i
        mgr.save()
        states[i] = {"model": {k: np.copy(v) for k, v in ckpt.model.items()}, "step": i}
    return mgr, states


def test_copy_managed_directory_then_manager_restores(locs):
    src, dst = locs("s3"), locs("gcs")
    mgr, states = _managed_run(src)
    s = src.storage()
    # debris that must not travel: a crashed save and an orphaned attempt
    s.write("ckpt-6/data-e1-0123456789abcdef/zarr.json", b"{}")
    s.write("ckpt-5/data-e1-feedfeedfeedfeed/zarr.json", b"{}")
    src_names = sorted(e.name for e in catalog.scan(s) if e.status == "committed")
    preserved = [n for n in src_names if s.exists(f"{n}/preserved.json")]
    assert preserved and len(src_names) > 2

    report = cloudckpt.copy(src.root, dst.root, src_storage_options=src.options, dst_storage_options=dst.options)
    assert report.kind == "directory"
    assert sorted(u.rsplit("/", 1)[1] for u in report.copied) == src_names
    assert any("ckpt-6" in w and "no manifest" in w for w in report.warnings)
    assert report.state_file == dst.url("checkpoint")

    d = dst.storage()
    _, dirs = d.list_dir()
    assert "ownership" not in dirs and "ckpt-6" not in dirs
    assert sorted(x for x in dirs) == src_names
    assert d.list_dir("ckpt-5")[1] == [json.loads(read_raw(src, "ckpt-5", MANIFEST_KEY))["data"]]  # orphan left behind
    assert [n for n in src_names if d.exists(f"{n}/preserved.json")] == preserved
    state_text = d.read("checkpoint").decode()
    assert 'model_checkpoint_path: "ckpt-5"' in state_text

    # a manager on the destination sees what the source manager saw, and restores bit-exactly
    ckpt = cloudckpt.Checkpoint(model=make_state(9)["model"], step=-1)
    dm = cloudckpt.CheckpointManager(
        ckpt,
        dst.root,
        max_to_keep=2,
        keep_checkpoint_every_n_hours=1.0,
        storage_options=dst.options,
        clock=lambda: 1.7e9 + 10 * 3600,
    )
    assert [u.rsplit("/", 1)[1] for u in dm.checkpoints] == [u.rsplit("/", 1)[1] for u in mgr.checkpoints]
    assert dm.latest_checkpoint == dst.url("ckpt-5")
    assert dm.restore_or_initialize() == dst.url("ckpt-5")
    assert_bit_exact(states[5]["model"], ckpt.model)
    assert ckpt.step == 5
    for n in src_names:
        number = int(n.split("-")[1])
        got = cloudckpt.load(dst.url(n), storage_options=dst.options)
        assert_bit_exact(states[number]["model"], got["model"])
    # and it can carry on training there
    assert dm.save() == dst.url("ckpt-6")


class Crash(BaseException):
    """A simulated kill: passes through every except Exception."""


def test_interrupt_halfway_and_resume(locs):
    src, dst = locs("local"), locs("gcs")
    s = src.storage()
    states = {}
    for i in (1, 2, 3):
        states[i] = make_state(i)
        cloudckpt.save(src.url(f"ckpt-{i}"), states[i], storage_options=src.options, options=SMALL)
    manifests = {i: json.loads(s.read(f"ckpt-{i}/manifest.json")) for i in (1, 2, 3)}
    n_obj = {i: len(manifests[i]["objects"]) for i in (1, 2, 3)}
    crash_after = n_obj[1] + 1 + n_obj[2] // 2  # all of ckpt-1 (and its manifest), half of ckpt-2

    writes: list[str] = []
    lock = threading.Lock()

    def places(op: str) -> bool:
        """A request that places an object: a write, or a copy inside the store (the
        zarr documents of ckpt-2 and ckpt-3 are ckpt-1's, byte for byte)."""
        return op.startswith("write") or op == "copy"

    def crash_hook(op, url):
        if places(op):
            with lock:
                if len(writes) >= crash_after:
                    raise Crash(url)
                writes.append(url)

    def on_open(sstore, dstore):
        dstore.add_hook(crash_hook)

    with pytest.raises(Crash):
        cloudckpt.copy(
            src.root,
            dst.root,
            src_storage_options=src.options,
            dst_storage_options=dst.options,
            max_concurrency=2,
            _on_open=on_open,
        )
    assert len(writes) == crash_after
    # what was committed is whole; what was not is invisible
    assert cloudckpt.latest_checkpoint(dst.root, dst.options) == dst.url("ckpt-1")
    assert_bit_exact(states[1], cloudckpt.load(dst.url("ckpt-1"), storage_options=dst.options))
    d = dst.storage()
    assert not d.exists("ckpt-2/manifest.json")
    half = d.list_all(f"ckpt-2/{manifests[2]['data']}")
    assert 0 < len(half) < n_obj[2]

    # resume, counting requests on both sides
    ops: dict[str, list[tuple[str, str]]] = {"src": [], "dst": []}

    def counting(sstore, dstore):
        sstore.add_hook(lambda op, url: ops["src"].append((op, url)))
        dstore.add_hook(lambda op, url: ops["dst"].append((op, url)))

    report = cloudckpt.copy(
        src.root, dst.root, src_storage_options=src.options, dst_storage_options=dst.options, _on_open=counting
    )
    assert report.skipped == [dst.url("ckpt-1")]
    assert report.copied == [dst.url("ckpt-2"), dst.url("ckpt-3")]
    assert report.objects_present == len(half)
    # + 2 manifests; what is not sent is copied inside the destination
    assert report.objects_copied + report.objects_deduplicated == (n_obj[2] - len(half)) + n_obj[3] + 2
    # nothing of the committed checkpoint was read or written again
    assert not [u for op, u in ops["src"] if "/ckpt-1/" in u and not u.endswith("/manifest.json")]
    assert not [u for op, u in ops["dst"] if places(op) and "/ckpt-1/" in u]
    # objects of ckpt-2 already there were not written again
    rewritten = {u for op, u in ops["dst"] if places(op) and "/ckpt-2/" in u}
    assert not rewritten & {dst.url("ckpt-2", manifests[2]["data"], k) for k in half}
    assert len(rewritten) == n_obj[2] - len(half) + 1
    for i in (1, 2, 3):
        assert_bit_exact(states[i], cloudckpt.load(dst.url(f"ckpt-{i}"), storage_options=dst.options))

    # a third run has nothing to do: no write at all, no data read
    ops["src"].clear()
    ops["dst"].clear()
    again = cloudckpt.copy(
        src.root, dst.root, src_storage_options=src.options, dst_storage_options=dst.options, _on_open=counting
    )
    assert again.copied == [] and len(again.skipped) == 3 and again.bytes_copied == 0
    assert not [op for op, _ in ops["dst"] if places(op)]
    assert not [u for op, u in ops["src"] if "/data-" in u]


def test_interrupted_single_copy_to_local_rechecks_present_objects(locs):
    src, dst = locs("memory"), locs("local")
    state = make_state(4)
    url = cloudckpt.save(src.url("ckpt-1"), state, options=SMALL)
    n = len(json.loads(read_raw(src, "ckpt-1", MANIFEST_KEY))["objects"])
    count = [0]

    def on_open(s, d):
        def hook(op, url):
            if op == "write":
                count[0] += 1
                if count[0] > n // 2:
                    raise Crash(url)

        d.add_hook(hook)

    with pytest.raises(Crash):
        cloudckpt.copy(url, dst.url("ckpt-1"), max_concurrency=1, _on_open=on_open)
    # damage one object that the interrupted copy wrote: a local write cut short can leave this
    d = open_storage(dst.url("ckpt-1"))
    present = d.list_all()
    key = sorted(present)[0]
    raw = bytearray(d.read(key))
    raw[0] ^= 0xFF
    d.write(key, bytes(raw))
    report = cloudckpt.copy(url, dst.url("ckpt-1"))
    assert report.objects_present == len(present) - 1  # the damaged one was re-read, found bad, copied again
    assert_bit_exact(state, cloudckpt.load(dst.url("ckpt-1")))


def test_corrupt_source_aborts_naming_the_object(locs):
    src, dst = locs("gcs"), locs("memory")
    url = cloudckpt.save(src.url("ckpt-1"), make_state(2), storage_options=src.options, options=SMALL)
    m = json.loads(read_raw(src, "ckpt-1", MANIFEST_KEY))
    bad = next(o["key"] for o in m["objects"] if "/c/" in o["key"])
    fs = src.fs()
    data = bytearray(fs.cat_file(src.url("ckpt-1", bad)))
    data[len(data) // 2] ^= 0x01
    fs.pipe_file(src.url("ckpt-1", bad), bytes(data))
    with pytest.raises(cloudckpt.CorruptCheckpointError) as ei:
        cloudckpt.copy(url, dst.url("ckpt-1"), src_storage_options=src.options)
    assert src.url("ckpt-1", bad) in str(ei.value) and "crc32c" in str(ei.value)
    d = open_storage(dst.url("ckpt-1"))
    assert not d.exists(MANIFEST_KEY) and d.list_all() == {}


def test_different_checkpoint_at_destination_is_never_overwritten(locs):
    src, dst = locs("memory"), locs("memory")
    url = cloudckpt.save(src.url("ckpt-1"), {"w": np.ones(3)})
    other = cloudckpt.save(dst.url("ckpt-1"), {"w": np.zeros(3)})
    before = read_raw(dst, "ckpt-1", MANIFEST_KEY)
    with pytest.raises(cloudckpt.CheckpointExistsError):
        cloudckpt.copy(url, other)
    assert read_raw(dst, "ckpt-1", MANIFEST_KEY) == before
    assert cloudckpt.load(other)["w"].tolist() == [0, 0, 0]


def test_nothing_to_copy(locs):
    src, dst = locs("memory"), locs("memory")
    open_storage(src.root).write("ckpt-1/data-x/zarr.json", b"{}")  # only a crashed save
    with pytest.raises(cloudckpt.CheckpointNotFoundError):
        cloudckpt.copy(src.root, dst.root)
    with pytest.raises(cloudckpt.CheckpointNotFoundError):
        cloudckpt.copy(locs("memory").root, dst.root)


def test_fenced_checkpoints_are_not_copied_and_owned_destination_is_protected(locs):
    src, dst = locs("memory"), locs("memory")
    s = open_storage(src.root)
    ckpt = cloudckpt.Checkpoint(w=np.ones(2))
    m1 = cloudckpt.CheckpointManager(ckpt, src.root, max_to_keep=5)
    m1.save()  # ckpt-1, epoch 1
    c = ownership.claim(s, writer="other")  # epoch 2 takes over after ckpt-1 (sequence 1 of epoch 1)
    ownership.record_accepted(s, c.epoch, {1: 1})
    # the displaced writer commits ckpt-2 anyway (a zombie): fenced
    write_checkpoint(s.child("ckpt-2"), {"w": np.zeros(2)}, checkpoint_number=2, epoch=1)
    report = cloudckpt.copy(src.root, dst.root)
    assert [u.rsplit("/", 1)[1] for u in report.copied] == ["ckpt-1"]
    assert any("ckpt-2" in w and "fenced" in w for w in report.warnings)

    # a destination owned by a newer manager would fence (and delete) these: refused
    dst2 = locs("memory")
    d2 = open_storage(dst2.root)
    for w in "ab":
        ownership.record_accepted(d2, ownership.claim(d2, writer=w).epoch, {})
    with pytest.raises(cloudckpt.CheckpointExistsError, match="owned by a manager"):
        cloudckpt.copy(src.root, dst2.root)
    assert not d2.exists("ckpt-1/manifest.json")


def test_copy_memory_is_bounded(locs):
    src, dst = locs("local"), locs("local")
    big = np.random.default_rng(0).standard_normal(4 << 20)  # 32 MiB of float64
    url = cloudckpt.save(src.url("ckpt-1"), {"w": big}, options=cloudckpt.StoreOptions(chunk_bytes=1 << 20))
    del big
    tracemalloc.start()
    try:
        report = cloudckpt.copy(url, dst.url("ckpt-1"), buffer_bytes=4 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.bytes_copied > 32 << 20
    assert peak < 12 << 20, peak  # the budget (4 MiB) plus overhead, far below the 32 MiB checkpoint
    assert cloudckpt.verify(dst.url("ckpt-1")).ok


def test_vanished_source_checkpoint_is_reported(locs):
    src, dst = locs("memory"), locs("memory")
    for i in (1, 2):
        cloudckpt.save(src.url(f"ckpt-{i}"), make_state(i), options=SMALL)
    s = open_storage(src.root)
    deleted = []

    def on_open(sstore, dstore):
        def hook(op, url):
            # retention deletes ckpt-1 while its data is being read
            if op.startswith("read") and "/ckpt-1/data-" in url and not deleted:
                deleted.append(url)
                s.child("ckpt-1").delete([MANIFEST_KEY])
                s.delete_prefix("ckpt-1")

        sstore.add_hook(hook)

    report = cloudckpt.copy(src.root, dst.root, max_concurrency=1, _on_open=on_open)
    assert report.vanished == [src.url("ckpt-1")]
    assert report.copied == [dst.url("ckpt-2")]
    assert open_storage(dst.root).list_all("ckpt-1") == {}


def test_single_checkpoint_into_a_directory(locs):
    src, dst = locs("memory"), locs("memory")
    url = cloudckpt.save(src.url("ckpt-7"), {"w": np.arange(3)})
    # a trailing "/" means "into this directory", as with cp
    r = cloudckpt.copy(url, dst.root + "/")
    assert r.copied == [dst.url("ckpt-7")]
    # so does a directory that already holds checkpoints
    other = cloudckpt.save(src.url("ckpt-8"), {"w": np.arange(4)})
    r = cloudckpt.copy(other, dst.root)
    assert r.copied == [dst.url("ckpt-8")]
    assert not dst.storage().exists(MANIFEST_KEY)
    assert cloudckpt.latest_checkpoint(dst.root) == dst.url("ckpt-8")
    # an empty destination is the checkpoint's own path
    fresh = locs("memory")
    assert cloudckpt.copy(url, fresh.url("renamed-1")).copied == [fresh.url("renamed-1")]


# -- only what the destination lacks is sent -------------------------------------------------------

DEDUPE = cloudckpt.StoreOptions(pack_threshold=4096, chunk_bytes=256 * 1024)
FROZEN = np.random.default_rng(123).standard_normal((1024, 512)).astype(np.float32)  # 2 MiB: 8 chunks


def _finetune_state(i: int) -> dict:
    """A fine-tuning step: the frozen base model never changes, the small head does."""
    head = np.random.default_rng(1000 + i).standard_normal((64, 64)).astype(np.float32)  # 16 KiB: one chunk
    return {"base": {"w": FROZEN}, "head": {"w": head}, "step": i}


def _finetune_run(loc: Loc, numbers, *, old_format: bool = False) -> dict[int, dict]:
    """Committed checkpoints ckpt-<i> of a fine-tuning run at ``loc``; ``old_format``: their
    manifests rewritten as a release before content hashes made them."""
    from cloudckpt.format.manifest import encode_manifest, parse_manifest

    states = {}
    for i in numbers:
        states[i] = _finetune_state(i)
        url = cloudckpt.save(loc.url(f"ckpt-{i}"), states[i], storage_options=loc.options, options=DEDUPE)
        if old_format:
            s = loc.storage()
            m = parse_manifest(s.read(f"ckpt-{i}/{MANIFEST_KEY}"), url)
            m.pop("content_hashes", None)
            for o in m["objects"]:
                o.pop("xxh3", None)
            m["format_version"] = min(m["format_version"], 1)
            s.delete([f"ckpt-{i}/{MANIFEST_KEY}"])
            s.write(f"ckpt-{i}/{MANIFEST_KEY}", encode_manifest(m))
    return states


def _manifest(loc: Loc, name: str) -> tuple[dict, int]:
    raw = read_raw(loc, name, MANIFEST_KEY)
    return json.loads(raw), len(raw)


def _contents(m: dict) -> list[tuple[int, str | None]]:
    """(size, content hash) of each object of the manifest ``m``."""
    table = m.get("content_hashes")
    hashes = table["objects"] if table else [o.get("xxh3") for o in m["objects"]]
    return [(o["size"], h) for o, h in zip(m["objects"], hashes, strict=True)]


def _lacking_bytes(loc: Loc, names: list[str]) -> int:
    """What a copy of ``names`` (in this order) must send: the first checkpoint whole, then
    for each later one the objects whose content the one before lacks, and every manifest."""
    total, before = 0, set()
    for name in names:
        m, raw = _manifest(loc, name)
        have = set(_contents(m))
        assert all(h is not None for _, h in have)
        total += raw + sum(size for size, h in _contents(m) if (size, h) not in before)
        before = have
    return total


@pytest.mark.parametrize(
    "pair",
    [("memory", "memory"), ("local", "local"), ("memory", "local"), ("local", "memory"), ("s3", "gcs")],
    ids=lambda p: "-to-".join(p),
)
def test_directory_copy_sends_the_frozen_model_once(locs, pair):
    src, dst = locs(pair[0]), locs(pair[1])
    states = _finetune_run(src, range(1, 6))
    names = [f"ckpt-{i}" for i in range(1, 6)]
    full = [sum(o["size"] for o in _manifest(src, n)[0]["objects"]) + _manifest(src, n)[1] for n in names]
    frozen_bytes = FROZEN.nbytes
    assert all(f > frozen_bytes for f in full)
    # what must be sent: one whole checkpoint, then the head, its pack and the manifest of each later one
    lacking = _lacking_bytes(src, names)
    assert lacking < full[0] + 4 * (full[0] - frozen_bytes)
    assert lacking < 0.4 * sum(full)  # (the bound below means something)

    stores = {}
    report = cloudckpt.copy(
        src.root,
        dst.root,
        src_storage_options=src.options,
        dst_storage_options=dst.options,
        _on_open=lambda s, d: stores.update(src=s, dst=d, s0=s.stats.snapshot(), d0=d.stats.snapshot()),
    )
    assert report.copied == [dst.url(n) for n in names]
    sent_read = stores["src"].stats.snapshot()["bytes_read"] - stores["s0"]["bytes_read"]
    sent_written = stores["dst"].stats.snapshot()["bytes_written"] - stores["d0"]["bytes_written"]
    assert sent_read <= 1.2 * lacking, (sent_read, lacking)
    assert sent_written <= 1.2 * lacking, (sent_written, lacking)
    assert report.bytes_copied <= 1.2 * lacking
    # the frozen model went once; each later checkpoint copied it inside the destination
    assert report.bytes_deduplicated >= 4 * frozen_bytes
    assert report.objects_deduplicated >= 4 * 8
    assert report.bytes_copied + report.bytes_deduplicated == sum(full)
    assert report.to_dict()["bytes_deduplicated"] == report.bytes_deduplicated
    for i, n in zip(range(1, 6), names, strict=True):
        assert_bit_exact(states[i], cloudckpt.load(dst.url(n), storage_options=dst.options))
        assert read_raw(dst, n, MANIFEST_KEY) == read_raw(src, n, MANIFEST_KEY)

    # a later checkpoint copied alone into the directory copies from the newest one there
    states[6] = _finetune_run(src, [6])[6]
    one = cloudckpt.copy(src.url("ckpt-6"), dst.root, src_storage_options=src.options, dst_storage_options=dst.options)
    assert one.copied == [dst.url("ckpt-6")]
    assert one.bytes_deduplicated >= frozen_bytes
    assert one.bytes_copied <= 1.2 * _lacking_bytes(src, ["ckpt-5", "ckpt-6"]) - _manifest(src, "ckpt-5")[1]

    # every copied checkpoint is whole: deleting the first (whose objects the others copied) leaves them loadable
    d = dst.storage()
    d.delete([f"ckpt-1/{MANIFEST_KEY}"])
    d.delete_prefix("ckpt-1")
    assert d.list_all("ckpt-1") == {}
    for i in range(2, 7):
        assert_bit_exact(states[i], cloudckpt.load(dst.url(f"ckpt-{i}"), storage_options=dst.options))
        assert cloudckpt.verify(dst.url(f"ckpt-{i}"), storage_options=dst.options).ok


def _damage(loc: Loc, key: str, how: str) -> None:
    """Change an object at ``loc`` behind the library's back: ``truncate`` drops its last
    byte, ``flip`` changes one byte and keeps its size (in place on local disk)."""
    if loc.name == "local":
        import os

        path = os.path.join(loc.root, key)
        with open(path, "r+b") as f:
            if how == "truncate":
                f.truncate(os.path.getsize(path) - 1)
            else:
                f.seek(100)
                b = f.read(1)
                f.seek(100)
                f.write(bytes([b[0] ^ 0xFF]))
        return
    fs = loc.fs()
    data = bytearray(fs.cat_file(loc.url(key)))
    if how == "truncate":
        data = data[:-1]
    else:
        data[100] ^= 0xFF
    fs.pipe_file(loc.url(key), bytes(data))


@pytest.mark.parametrize(
    "pair", [("memory", "local"), ("local", "memory"), ("local", "gcs"), ("gcs", "s3")], ids=lambda p: "-to-".join(p)
)
def test_damaged_destination_object_is_not_propagated(locs, pair, caplog):
    src, dst = locs(pair[0]), locs(pair[1])
    states = _finetune_run(src, range(1, 4))
    # ckpt-1 alone first; then two of its frozen chunks at the destination get damaged
    cloudckpt.copy(
        src.url("ckpt-1"), dst.url("ckpt-1"), src_storage_options=src.options, dst_storage_options=dst.options
    )
    m1, _ = _manifest(dst, "ckpt-1")
    chunks = sorted(o["key"] for o in m1["objects"] if "/base/w/c/" in o["key"])
    assert len(chunks) == 8
    truncated, flipped = chunks[2], chunks[5]
    _damage(dst, f"ckpt-1/{truncated}", "truncate")  # caught by the copy's size (or store's crc32c) check
    _damage(dst, f"ckpt-1/{flipped}", "flip")  # same size: caught by the store's crc32c, or re-reading the copy
    assert not cloudckpt.verify(dst.url("ckpt-1"), storage_options=dst.options).ok

    with caplog.at_level("WARNING", logger="cloudckpt"):
        report = cloudckpt.copy(
            src.root, dst.root, src_storage_options=src.options, dst_storage_options=dst.options
        )  # resumes: ckpt-1 is there, the rest copies from it
    assert report.skipped == [dst.url("ckpt-1")]
    assert report.copied == [dst.url("ckpt-2"), dst.url("ckpt-3")]
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert dst.url("ckpt-1", truncated) in warned and dst.url("ckpt-1", flipped) in warned
    # ckpt-2 got those two chunks from the source, the six good ones inside the destination; ckpt-3 all
    # eight from ckpt-2
    assert report.objects_deduplicated >= 6 + 8
    for i in (2, 3):
        assert_bit_exact(states[i], cloudckpt.load(dst.url(f"ckpt-{i}"), storage_options=dst.options))
        assert cloudckpt.verify(dst.url(f"ckpt-{i}"), storage_options=dst.options).ok
        data = _manifest(src, f"ckpt-{i}")[0]["data"]
        for key in (truncated, flipped):
            same = f"{data}/{key.split('/', 1)[1]}"  # the same chunk under this checkpoint's data prefix
            assert read_raw(dst, f"ckpt-{i}", same) == read_raw(src, f"ckpt-{i}", same)
    # nothing was written into the damaged objects (a hard link would share them): ckpt-1 is as damaged as before
    damaged = sorted(d.url for d in cloudckpt.verify(dst.url("ckpt-1"), storage_options=dst.options).damaged)
    assert damaged == sorted([dst.url("ckpt-1", truncated), dst.url("ckpt-1", flipped)])


def test_old_format_checkpoints_are_sent_whole(locs):
    """Checkpoints whose objects record no content hash are copied as before: every object sent."""
    src, dst = locs("memory"), locs("local")
    states = _finetune_run(src, range(1, 4), old_format=True)
    assert all(h is None for _, h in _contents(_manifest(src, "ckpt-2")[0]))
    report = cloudckpt.copy(src.root, dst.root)
    assert report.objects_deduplicated == 0 and report.bytes_deduplicated == 0
    assert report.bytes_copied == sum(
        sum(o["size"] for o in _manifest(src, f"ckpt-{i}")[0]["objects"]) + _manifest(src, f"ckpt-{i}")[1]
        for i in (1, 2, 3)
    )
    # a current checkpoint copied into a directory whose newest is of the old format: no index, all sent
    states[4] = _finetune_run(src, [4])[4]
    one = cloudckpt.copy(src.url("ckpt-4"), dst.root + "/")
    assert one.copied == [dst.url("ckpt-4")] and one.objects_deduplicated == 0
    for i in range(1, 5):
        assert_bit_exact(states[i], cloudckpt.load(dst.url(f"ckpt-{i}")))


@pytest.mark.parametrize("pair", [("memory", "local"), ("local", "gcs")], ids=lambda p: "-to-".join(p))
def test_interrupted_deduplicating_copy_resumes(locs, pair):
    """A copy killed after placing some of ckpt-2's objects inside the destination resumes: those
    are found there (re-read on local disk) and not placed again; the rest is copied or sent."""
    src, dst = locs(pair[0]), locs(pair[1])
    states = _finetune_run(src, range(1, 4))
    copies: list[str] = []

    def on_open(s, d):
        def hook(op, url):
            if op == "copy" and "/ckpt-2/" in url:
                if len(copies) >= 4:
                    raise Crash(url)
                copies.append(url)

        d.add_hook(hook)

    with pytest.raises(Crash):
        cloudckpt.copy(
            src.root,
            dst.root,
            src_storage_options=src.options,
            dst_storage_options=dst.options,
            max_concurrency=1,
            _on_open=on_open,
        )
    assert len(copies) == 4
    d = dst.storage()
    assert d.exists(f"ckpt-1/{MANIFEST_KEY}") and not d.exists(f"ckpt-2/{MANIFEST_KEY}")
    report = cloudckpt.copy(src.root, dst.root, src_storage_options=src.options, dst_storage_options=dst.options)
    assert report.skipped == [dst.url("ckpt-1")]
    assert report.copied == [dst.url("ckpt-2"), dst.url("ckpt-3")]
    assert report.objects_present >= 4
    assert report.objects_deduplicated >= 8  # (ckpt-3's frozen chunks at least, from ckpt-2)
    for i in (1, 2, 3):
        assert_bit_exact(states[i], cloudckpt.load(dst.url(f"ckpt-{i}"), storage_options=dst.options))
        assert cloudckpt.verify(dst.url(f"ckpt-{i}"), storage_options=dst.options).ok
