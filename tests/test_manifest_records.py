"""The typed manifest records encode to the very bytes the dict records did.

tests/data/manifests/multi-kind.json was written by the writer before the
typed records existed (tests/_golden_state.py makes the state: packed,
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
    assert golden_manifest_bytes() == (ROOT / GOLDEN).read_bytes()


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
