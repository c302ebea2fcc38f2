"""The typed manifest records encode to the very bytes the dict records did.

tests/data/manifests/multi-kind.json was written by the writer before the
typed records existed, and rewritten once since, when the pack began to
place its tensors largest first (for incremental saves; the records were
unchanged) (tests/_golden_state.py makes the state: packed,
chunked, sharded-grid, per-shard, per-rank, aliased, namedtuple, empty, 0-d
and big-endian leaves); the release-0.1.0 manifests come from that release.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from cloudckpt.format.manifest import encode_manifest, parse_manifest
from cloudckpt.format.records import (
    ChunkedRecord,
    PackedRecord,
    ShardedRecord,
    pack_from_json,
    records_from_json,
)

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _golden_state import GOLDEN, golden_manifest_bytes

ROOT = pathlib.Path(__file__).parent.parent
RELEASE = sorted((ROOT / "tests/data/release-0.1.0/run").glob("*/manifest.json"))


def test_the_writer_makes_the_same_manifest_bytes_as_before_the_typed_records():
    # the writer now adds the informational content_hashes field (one per object); without it, the same bytes
    m = parse_manifest(golden_manifest_bytes(), "memory://x/manifest.json")
    hashes = m.pop("content_hashes")
    assert hashes["algorithm"] == "xxh3-128" and len(hashes["objects"]) == len(m["objects"])
    assert encode_manifest(m) == (ROOT / GOLDEN).read_bytes()


def _reencoded(raw: bytes) -> bytes:
    m = parse_manifest(raw, "memory://x/manifest.json")
    records = records_from_json(m["arrays"])
    pack = pack_from_json(m["pack"])
    again = {**m, "arrays": [r.to_json() for r in records], "pack": None if pack is None else pack.to_json()}
    return encode_manifest(again)


def test_records_parsed_and_encoded_back_give_the_same_bytes():
    raw = (ROOT / GOLDEN).read_bytes()
    assert _reencoded(raw) == raw


@pytest.mark.parametrize("path", RELEASE, ids=lambda p: str(p.relative_to(ROOT)))
def test_release_records_encode_back_to_their_json(path):
    # (these manifests predate the header line, so the whole file is not re-made byte for byte)
    m = parse_manifest(path.read_bytes(), str(path))
    dumps = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
    assert dumps([r.to_json() for r in records_from_json(m["arrays"])]) == dumps(m["arrays"])
    pack = pack_from_json(m["pack"])
    assert dumps(None if pack is None else pack.to_json()) == dumps(m["pack"])


def test_every_record_kind_is_typed():
    m = parse_manifest((ROOT / GOLDEN).read_bytes(), "memory://x/manifest.json")
    kinds = {type(r) for r in records_from_json(m["arrays"])}
    assert kinds == {PackedRecord, ChunkedRecord, ShardedRecord}
    grid = [r for r in records_from_json(m["arrays"]) if isinstance(r, ChunkedRecord) and r.axis is None]
    assert grid and grid[0].chunk_shape == (4, 5)


def test_release_manifests_still_load():
    assert RELEASE
    for path in RELEASE:
        m = parse_manifest(path.read_bytes(), str(path))
        assert all(isinstance(r, PackedRecord | ChunkedRecord | ShardedRecord) for r in records_from_json(m["arrays"]))


def _saved_manifest(state: dict) -> dict:
    import uuid

    import fsspec

    import cloudckpt

    url = f"memory://records-{uuid.uuid4().hex}/ckpt-1"
    cloudckpt.save(url, state)
    raw = fsspec.filesystem("memory").cat(url.removeprefix("memory:/") + "/manifest.json")
    return parse_manifest(raw, url + "/manifest.json")


@pytest.mark.parametrize(
    ("field", "value"),
    [("epoch", 2**56), ("seq", 2**56), ("checkpoint_number", 2**56), ("epoch", 2**60)],
)
def test_epoch_seq_and_number_are_below_2_to_the_56(field, value):
    import cloudckpt

    m = _saved_manifest({"w": __import__("numpy").ones(2)})
    m["writer"]["epoch"], m["writer"]["seq"], m["checkpoint_number"] = 3, 1, 4
    parse_manifest(encode_manifest(m), "memory://x/manifest.json")  # the largest allowed is 2**56 - 1
    for v in (value - 1, value) if value == 2**56 else (value,):
        m2 = json.loads(json.dumps(m))
        (m2["writer"] if field != "checkpoint_number" else m2)[field] = v
        if v < 2**56:
            parse_manifest(encode_manifest(m2), "memory://x/manifest.json")
            continue
        where = "checkpoint_number" if field == "checkpoint_number" else f"writer.{field}"
        with pytest.raises(cloudckpt.CorruptCheckpointError, match=rf"{where}: expected an integer in \[[01], 72057594037927936\)"):
            parse_manifest(encode_manifest(m2), "memory://x/manifest.json")


def test_a_state_without_arrays_loads():
    import cloudckpt

    m = _saved_manifest({"step": 3, "name": "x"})
    assert m["arrays"] == [] and m["pack"] is None
    assert m["stored"]["objects"] >= 1  # the manifest counts: never 0, which the types refuse
    cloudckpt.save("memory://records-no-arrays/ckpt-1", {"step": 3, "name": "x"})
    assert cloudckpt.load("memory://records-no-arrays/ckpt-1") == {"step": 3, "name": "x"}
