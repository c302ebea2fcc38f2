"""cloudckpt.verify: damage is found, named by URL, on every backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cloudckpt
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.storage import open_storage
from cloudckpt.tools.verify import verify_checkpoint

SMALL = cloudckpt.StoreOptions(pack_threshold=1024, chunk_bytes=16 * 1024)


def _state():
    rng = np.random.default_rng(3)
    return {"w": rng.standard_normal((64, 100)).astype(np.float32), "b": np.arange(5.0), "step": 4}


def _flip(fs, url: str, pos: int | None = None) -> None:
    data = bytearray(fs.cat_file(url))
    pos = len(data) // 2 if pos is None else pos
    data[pos] ^= 0x10
    fs.pipe_file(url, bytes(data))


def test_verify_catches_a_flipped_byte(backend):
    """On local, memory, S3 and GCS: a flipped byte in a chunk and in a zarr.json is named."""
    url = cloudckpt.save(backend.url("ckpt-1"), _state(), storage_options=backend.storage_options, options=SMALL)
    cloudckpt.save(backend.url("ckpt-2"), _state(), storage_options=backend.storage_options, options=SMALL)
    clean = cloudckpt.verify(url, storage_options=backend.storage_options)
    assert clean.ok and clean.kind == "checkpoint"
    raw = open_storage(url, backend.storage_options).read(MANIFEST_KEY)
    manifest = json.loads(raw)
    assert clean.objects_checked == len(manifest["objects"]) + 1
    assert clean.bytes_checked == sum(o["size"] for o in manifest["objects"]) + len(raw)

    chunk = next(o["key"] for o in manifest["objects"] if "/w/c/" in o["key"])
    doc = next(o["key"] for o in manifest["objects"] if o["key"].endswith("w/zarr.json"))
    fs = backend.filesystem()
    _flip(fs, backend.url("ckpt-1", chunk))
    _flip(fs, backend.url("ckpt-1", doc), pos=1)

    report = cloudckpt.verify(url, storage_options=backend.storage_options)
    assert not report.ok
    assert sorted(d.url for d in report.damaged) == sorted([backend.url("ckpt-1", chunk), backend.url("ckpt-1", doc)])
    assert all("crc32c mismatch" in d.problem for d in report.damaged)

    # the directory: the damaged checkpoint is named, the other one is fine
    whole = cloudckpt.verify(backend.root, storage_options=backend.storage_options)
    assert whole.kind == "directory" and not whole.ok
    by_url = {c.url: c for c in whole.checkpoints}
    assert not by_url[backend.url("ckpt-1")].ok and by_url[backend.url("ckpt-2")].ok
    assert len(whole.damaged) == 2
    # and the loader agrees that it is damaged
    with pytest.raises(cloudckpt.CorruptCheckpointError):
        cloudckpt.load(url, storage_options=backend.storage_options)


def test_truncated_missing_too_long_and_bad_manifest():
    root = "memory://verify-kinds"
    for i in (1, 2):
        cloudckpt.save(f"{root}/ckpt-{i}", _state(), options=SMALL)
    s = open_storage(root)
    m = json.loads(s.read("ckpt-1/manifest.json"))
    chunks = [o["key"] for o in m["objects"] if "/c/" in o["key"]]
    k_trunc, k_missing, k_long = chunks[:3]
    s.write(f"ckpt-1/{k_trunc}", s.read(f"ckpt-1/{k_trunc}")[:-3])
    s.delete([f"ckpt-1/{k_missing}"])
    s.write(f"ckpt-1/{k_long}", s.read(f"ckpt-1/{k_long}") + b"x")
    s.write("ckpt-2/manifest.json", b"{not json")
    try:
        report = cloudckpt.verify(root)
        problems = {d.url: d.problem for d in report.damaged}
        assert problems[f"{root}/ckpt-1/{k_trunc}"].startswith("truncated")
        assert problems[f"{root}/ckpt-1/{k_missing}"] == "missing"
        assert problems[f"{root}/ckpt-1/{k_long}"].startswith("too long")
        assert "not valid JSON" in problems[f"{root}/ckpt-2/manifest.json"]
        assert len(problems) == 4
        # a checkpoint given directly, with a damaged manifest: reported, not raised
        single = cloudckpt.verify(f"{root}/ckpt-2")
        assert [d.url for d in single.damaged] == [f"{root}/ckpt-2/manifest.json"]
    finally:
        s.delete_prefix("ckpt-1")
        s.delete_prefix("ckpt-2")


def test_large_objects_are_read_in_pieces():
    url = cloudckpt.save("memory://verify-pieces/ckpt-1", {"w": np.arange(50_000.0)}, options=SMALL)
    s = open_storage(url)
    ops = []
    s.add_hook(lambda op, u: ops.append(op))
    assert verify_checkpoint(s, piece_bytes=4096).ok
    assert ops.count("read_range") > 50  # 400 KB in 4 KiB pieces
    m = json.loads(s.read(MANIFEST_KEY))
    key = next(o["key"] for o in m["objects"] if "/c/" in o["key"])
    raw = bytearray(s.read(key))
    raw[-1] ^= 1
    s.write(key, bytes(raw))
    bad = verify_checkpoint(s, piece_bytes=4096)
    assert [d.url for d in bad.damaged] == [s.url_for(key)]
    s.parent().delete_prefix("ckpt-1")


def test_state_file_consistency_and_partial_saves_are_warnings(tmp_path):
    d = str(tmp_path / "run")
    ckpt = cloudckpt.Checkpoint(w=np.ones(3))
    m = cloudckpt.CheckpointManager(ckpt, d, max_to_keep=3)
    m.save()
    m.save()
    s = open_storage(d)
    assert cloudckpt.verify(d).warnings == []
    s.write("checkpoint", b'model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-9"\n')
    s.write("ckpt-3/data-e1-0123456789abcdef/zarr.json", b"{}")  # a crashed save
    report = cloudckpt.verify(d)
    assert report.ok  # nothing is damaged: the state file is a cache, the partial save is invisible
    text = "\n".join(report.warnings)
    assert "'ckpt-1' as the latest checkpoint" in text and "'ckpt-2'" in text
    assert "'ckpt-9', which is not a committed checkpoint" in text
    assert "ckpt-3 has no manifest" in text
    s.write("checkpoint", b"garbage")
    assert any("does not parse" in w for w in cloudckpt.verify(d).warnings)


def test_nothing_there():
    with pytest.raises(cloudckpt.CheckpointNotFoundError):
        cloudckpt.verify("memory://verify-nothing-here")
