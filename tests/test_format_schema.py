"""The published format: manifest JSON Schema, docs/format.md, format versions.

- manifests written by ``cloudckpt.save`` for many kinds of state validate
  against ``cloudckpt/format/manifest.schema.json`` (and broken ones do not), for
  format versions 1, 2 and 3 (sharded arrays, ``PerRank`` values);
- the schema embedded in docs/format.md is that file, verbatim;
- a newer format version is refused with both versions named;
- every ``<!-- runnable -->`` Python block of docs/format.md runs.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import cloudckpt
from cloudckpt import PerRank, ShardedArray
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.format.manifest import FORMAT_VERSION, MANIFEST_KEY, encode_manifest, parse_manifest
from cloudckpt.format.node_names import decode_name, encode_name
from cloudckpt.storage import open_storage

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "cloudckpt" / "format" / "manifest.schema.json"
FORMAT_MD = ROOT / "docs" / "format.md"

BEGIN = "<!-- BEGIN manifest.schema.json -->"
END = "<!-- END manifest.schema.json -->"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Any:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: Any, manifest: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in validator.iter_errors(manifest)]


def _save(base: str, state: Any, **kw: Any) -> tuple[str, dict[str, Any]]:
    url = cloudckpt.save(base, state, **kw)
    raw = open_storage(url).read(MANIFEST_KEY)
    return url, json.loads(raw)


def _base(where: str, tmp_path: Path) -> str:
    if where == "local":
        return str(tmp_path / "ckpt-1")
    return f"memory://fmt-{uuid.uuid4().hex}/ckpt-1"


# -- states -----------------------------------------------------------------

SMALL = cloudckpt.StoreOptions(pack_threshold=64, chunk_bytes=96)
ALL_CHUNKED = cloudckpt.StoreOptions(pack_threshold=0, chunk_bytes=64)


def _states() -> list[Any]:
    big = np.arange(100, dtype=np.float32).reshape(10, 10)
    return [
        pytest.param({"w": np.ones(3), "b": np.zeros(2, np.float32)}, None, "packed", id="packed-only"),
        pytest.param(
            {"w": np.arange(40.0).reshape(5, 8), "v": np.arange(7, dtype=np.int16)},
            ALL_CHUNKED,
            "chunked",
            id="chunked-only",
        ),
        pytest.param({"big": big, "small": np.ones(2, np.int8), "step": 5}, SMALL, "both", id="packed-and-chunked"),
        pytest.param({}, None, "none", id="empty-state"),
        pytest.param([], None, "none", id="empty-list-state"),
        pytest.param(
            {
                "model": {"layers": [{"w": np.ones((2, 2))}, {"w": np.zeros((2, 2))}], "cfg": ("relu", 3, 0.5)},
                "misc": [None, True, False, "", "é/ü", [[], {}, ()], (1, [2, (3,)])],
            },
            None,
            "packed",
            id="nested-dict-list-tuple",
        ),
        pytest.param(
            {"state": {0: {"step": 1, "exp_avg": np.ones(3)}, 1: {"step": 1}, -7: "neg", "0": "str zero"}, 2: big},
            SMALL,
            "both",
            id="int-keys",
        ),
        pytest.param(
            {
                "f": np.float32(1.5),
                "i": np.int64(-3),
                "b": np.bool_(True),
                "c": np.complex64(1 - 2j),
                "h": np.float16(0.25),
                "bf": ml_dtypes.bfloat16(2.0),
            },
            None,
            "packed",
            id="numpy-scalars",
        ),
        pytest.param({"s": np.float64(2.0), "u": np.uint8(7)}, ALL_CHUNKED, "chunked", id="numpy-scalars-chunked"),
        pytest.param(
            {
                "emb": np.ones((16, 8), ml_dtypes.bfloat16),
                "bias": np.ones(3, ml_dtypes.bfloat16),
                "f8": np.zeros(40, ml_dtypes.float8_e4m3fn),
                "i4": np.ones(70, ml_dtypes.int4),
            },
            SMALL,
            "both",
            id="bfloat16-float8-int4",
        ),
        pytest.param(
            {"e": np.zeros((0,)), "e2": np.zeros((0, 3), np.float32), "e3": np.zeros((2, 0), ">i8")},
            None,
            "packed",
            id="empty-arrays-packed",
        ),
        pytest.param(
            {"e": np.zeros((0,)), "e2": np.zeros((0, 3), np.float32), "full": np.ones(20)},
            ALL_CHUNKED,
            "chunked",
            id="empty-arrays-chunked",
        ),
        pytest.param(
            {
                "be": np.arange(30, dtype=">f8"),
                "u": np.array(["ab", "cde"] * 10),
                "t": np.arange(12).astype("M8[s]"),
                "q": np.ones(5, np.longdouble),
                "fo": np.asfortranarray(np.ones((4, 6))),
                "small": np.arange(3, dtype=">i2"),
            },
            SMALL,
            "both",
            id="byteorder-strings-datetime-longdouble",
        ),
        pytest.param(
            {
                "int": [0, -1, 2**53, 2**53 + 1, -(2**64), 7**5000],
                "float": [0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 5e-324, 1.7976931348623157e308],
                "nans": [
                    -float("nan"),
                    float("inf") - float("inf"),
                    struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000123))[0],
                ],
            },
            None,
            "none",
            id="json-leaves",
        ),
        pytest.param(
            {
                "": np.ones(2),
                ".": np.ones(2),
                "..": np.ones(2),
                "%": np.ones(2),
                "#1": np.ones(2),
                "b/x": np.ones(2),
                "b": {"x": np.ones(2)},
                "zarr.json": np.ones(2),
                "a\nb": np.ones(2),
                "__x": np.ones(2),
                "_pack": np.ones(2),
            },
            ALL_CHUNKED,
            "chunked",
            id="keys-needing-encoding",
        ),
        pytest.param(np.arange(30.0), ALL_CHUNKED, "chunked", id="bare-array-chunked"),
        pytest.param(np.arange(3.0), None, "packed", id="bare-array-packed"),
    ]


def _dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name)) if name.isidentifier() else np.dtype(name)


def _check_cross_field(m: dict[str, Any]) -> None:
    """The rules of docs/format.md section 9 that the schema cannot express."""
    assert m["data"] == f"data-{m['writer']['attempt']}"
    keys = [o["key"] for o in m["objects"]]
    assert len(set(keys)) == len(keys)
    assert all(k.startswith(m["data"] + "/") for k in keys)
    assert m["nbytes"] == sum(a["nbytes"] for a in m["arrays"])
    for a in m["arrays"]:
        dt = _dtype(a["dtype"])
        assert a["nbytes"] == math.prod(a["shape"]) * dt.itemsize
        if "chunked" in a:
            c = a["chunked"]
            lo, hi = c["objects"]
            assert 0 <= lo <= hi <= len(keys)
            assert all(keys[i].startswith(f"{m['data']}/{c['path']}/c") for i in range(lo, hi))
            if c["axis"] is None:  # a sharded array on a regular grid (format 3)
                assert len(c["chunk_shape"]) == len(a["shape"])
                grid = [math.ceil(d / k) for d, k in zip(a["shape"], c["chunk_shape"], strict=True)]
                assert hi - lo == (math.prod(grid) if math.prod(a["shape"]) or not a["shape"] else 0)
        if "shards" in a:  # one zarr array per shard (format 3): they partition the array
            covered = np.zeros(a["shape"], np.int8)
            for sh in a["shards"]:
                lo, hi = sh["objects"]
                assert all(keys[i].startswith(f"{m['data']}/{sh['path']}/c") for i in range(lo, hi))
                box = tuple(slice(o, o + n) for o, n in zip(sh["offset"], sh["shape"], strict=True))
                assert all(o + n <= d for o, n, d in zip(sh["offset"], sh["shape"], a["shape"], strict=True))
                covered[box] += 1
            assert (covered == 1).all()
    if m["pack"] is not None:
        lo, hi = m["pack"]["objects"]
        assert hi - lo == math.ceil(m["pack"]["nbytes"] / m["pack"]["chunk_bytes"])
    shared: list[int] = []
    per_rank: dict[int, list[int]] = {}

    def walk(n: dict[str, Any], rank: int | None) -> None:
        if n["t"] in ("array", "scalar"):
            (shared if rank is None else per_rank.setdefault(rank, [])).append(n["a"])
        elif n["t"] in ("dict", "list", "tuple"):
            if n["t"] == "dict":
                assert len(n["k"]) == len(n["v"])
            for v in n["v"]:
                walk(v, rank)
        elif n["t"] == "per_rank":
            assert rank is None, "per_rank nodes do not nest"
            assert m["format_version"] == 3
            for r, v in enumerate(n["r"]):
                walk(v, r)

    walk(m["tree"], None)
    # shared arrays in tree order, then rank 0's per-rank arrays, rank 1's, ...
    refs = shared + [a for r in sorted(per_rank) for a in per_rank[r]]
    assert refs == list(range(len(m["arrays"])))
    sharded = any("shards" in a or a.get("chunked", {}).get("axis", 0) is None for a in m["arrays"])
    if sharded or per_rank:
        assert m["format_version"] == 3


@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize(("state", "options", "kind"), _states())
def test_saved_manifest_validates(
    validator: Any, tmp_path: Path, where: str, state: Any, options: Any, kind: str
) -> None:
    url, m = _save(_base(where, tmp_path), state, options=options)
    assert _errors(validator, m) == []
    _check_cross_field(m)
    packed = any("packed" in a for a in m["arrays"])
    chunked = any("chunked" in a for a in m["arrays"])
    assert (packed, chunked) == {
        "packed": (True, False),
        "chunked": (False, True),
        "both": (True, True),
        "none": (False, False),
    }[kind]
    assert (m["pack"] is not None) == packed
    # and the checkpoint it commits reads back
    cloudckpt.load(url)


def _sharded(full: np.ndarray, boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> ShardedArray:
    """``full`` as a ShardedArray whose pieces are ``boxes`` (offset, shape) of it."""
    # (the trailing ... keeps a 0-d piece an array: full[()] would be a scalar)
    pieces = [(o, full[(*(slice(a, a + n) for a, n in zip(o, sh, strict=True)), ...)]) for o, sh in boxes]
    return ShardedArray(full.shape, full.dtype, pieces)


_F = np.arange(120, dtype=np.float32).reshape(10, 12)
V3_OPTIONS = cloudckpt.StoreOptions(pack_threshold=64, chunk_bytes=96)


# a writer may store a small sharded array whole (cloudckpt gathers and packs those below
# pack_threshold): tiny ones are saved with pack_threshold=0 to keep them sharded
NOT_GATHERED = cloudckpt.StoreOptions(pack_threshold=0, chunk_bytes=96)


def _v3_states() -> list[Any]:
    rows = _sharded(_F, [((0, 0), (5, 12)), ((5, 0), (5, 12))])
    return [
        pytest.param({"w": rows}, "grid", None, id="sharded-rows-grid"),
        pytest.param({"w": _sharded(_F, [((0, 0), (10, 6)), ((0, 6), (10, 6))])}, "grid", None, id="sharded-columns-grid"),
        pytest.param(
            {"w": _sharded(_F, [((0, 0), (5, 4)), ((0, 4), (5, 4)), ((0, 8), (5, 4)), ((5, 0), (5, 4)), ((5, 4), (5, 4)), ((5, 8), (5, 4))])},
            "grid",
            None,
            id="sharded-2d-grid",
        ),
        pytest.param({"w": _sharded(_F, [((0, 0), (4, 12)), ((4, 0), (6, 12))])}, "shards", None, id="sharded-uneven"),
        pytest.param(
            {"w": _sharded(_F, [((0, 0), (5, 6)), ((0, 6), (5, 6)), ((5, 0), (5, 12))])}, "shards", None, id="sharded-nested"
        ),
        pytest.param({"w": _sharded(np.array(2.5), [((), ())])}, "grid", NOT_GATHERED, id="sharded-0d"),
        pytest.param({"w": _sharded(np.zeros((0, 3), np.float32), [])}, "grid", NOT_GATHERED, id="sharded-empty"),
        pytest.param(
            {"w": _sharded(_F.astype(ml_dtypes.bfloat16), [((0, 0), (4, 12)), ((4, 0), (6, 12))])},
            "shards",
            None,
            id="sharded-bfloat16",
        ),
        pytest.param({"rng": PerRank(np.arange(4, dtype=np.uint32))}, "per_rank", None, id="per-rank-array"),
        pytest.param(
            {"pos": PerRank(17), "x": PerRank(None), "s": PerRank("a")},
            "per_rank",
            None,
            id="per-rank-json",
        ),
        pytest.param(
            {"pos": PerRank(17), "x": PerRank(None), "a": PerRank(np.ones(1))}, "per_rank", None, id="per-rank-json-and-array"
        ),
        pytest.param(
            {"r": PerRank({"k": np.ones(2), "t": (np.float32(1), [3, np.zeros(0)])}), "w": np.ones(3), "step": 4},
            "per_rank",
            None,
            id="per-rank-containers-and-packed",
        ),
        pytest.param(PerRank(np.ones(3)), "per_rank", None, id="per-rank-root"),
        pytest.param(
            {
                "model": {"w": rows, "b": np.ones(2, np.float32), "big": np.arange(50.0)},
                "loader": PerRank({"epoch": 2, "perm": np.arange(10)}),
                "opt": [_sharded(_F, [((0, 0), (3, 12)), ((3, 0), (7, 12))]), PerRank(np.int64(3))],
            },
            "mixed",
            None,
            id="everything",
        ),
    ]


@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize(("state", "kind", "options"), _v3_states())
def test_saved_v3_manifest_validates(
    validator: Any, tmp_path: Path, where: str, state: Any, kind: str, options: Any
) -> None:
    url, m = _save(_base(where, tmp_path), state, options=options or V3_OPTIONS)
    assert m["format_version"] == 3
    assert _errors(validator, m) == []
    _check_cross_field(m)
    grid = any(a.get("chunked", {}).get("axis", 0) is None for a in m["arrays"])
    shards = any("shards" in a for a in m["arrays"])
    per_rank = '"per_rank"' in json.dumps(m["tree"])
    assert {"grid": (True, False, False), "shards": (False, True, False), "per_rank": (False, False, True)}.get(
        kind, (True, True, True)
    ) == (grid, shards, per_rank)
    # arrays below a per_rank node are never packed
    out = cloudckpt.load(url)
    assert out is not None


@pytest.mark.parametrize(
    "state",
    [
        pytest.param({"w": np.ones(3)}, id="plain"),
        pytest.param({"w": np.arange(100.0), "s": np.ones(2)}, id="chunked"),
    ],
)
def test_states_without_v3_features_stay_version_1(state: Any) -> None:
    _, m = _save(f"memory://fmt-v1-{uuid.uuid4().hex}/c", state, options=V3_OPTIONS)
    assert m["format_version"] == 1


def test_metadata_and_numbering_validate(validator: Any, tmp_path: Path) -> None:
    meta = {"step": 3, "loss": 0.25, "tags": ["a", "b"], "nested": {"x": None, "ok": True}, "unicode": "ü"}
    _, m = _save(str(tmp_path / "c"), {"w": np.ones(2)}, metadata=meta)
    assert m["metadata"] == meta
    assert _errors(validator, m) == []


def test_manager_manifests_validate(validator: Any, tmp_path: Path) -> None:
    """A CheckpointManager adds its number, epoch and writer fields; still valid."""
    from cloudckpt.checkpoint import Checkpoint
    from cloudckpt.manager.checkpoint_manager import CheckpointManager

    ckpt = Checkpoint(model={"w": np.ones(3)}, step=np.int64(0))
    manager = CheckpointManager(ckpt, str(tmp_path / "run"), max_to_keep=2, keep_checkpoint_every_n_hours=1)
    for number in (1, 2):
        path = manager.save()
        assert path is not None
        m = json.loads(open_storage(path).read(MANIFEST_KEY))
        assert m["checkpoint_number"] == number and isinstance(m["writer"]["epoch"], int)
        assert _errors(validator, m) == []
        _check_cross_field(m)


def test_objects_are_exactly_what_is_stored(tmp_path: Path) -> None:
    """objects lists every stored object with its true size and crc32c, and nothing else."""
    url, m = _save(
        str(tmp_path / "c"),
        {"big": np.arange(100.0), "s": np.ones(3), "n": {"x": np.arange(50, dtype=np.int32)}},
        options=SMALL,
    )
    on_disk = {}
    for root, _, files in os.walk(url):
        for f in files:
            p = Path(root, f)
            on_disk[p.relative_to(url).as_posix()] = p.read_bytes()
    assert on_disk.pop(MANIFEST_KEY)
    assert sorted(on_disk) == sorted(o["key"] for o in m["objects"])
    for o in m["objects"]:
        assert len(on_disk[o["key"]]) == o["size"]
        assert crc32c_of(on_disk[o["key"]]) == o["crc32c"]


@pytest.mark.parametrize("where", ["memory", "local"])
def test_forward_compatible_fields_are_allowed(validator: Any, tmp_path: Path, where: str) -> None:
    _, m = _save(_base(where, tmp_path), {"w": np.ones(2)})
    m["a_future_field"] = {"anything": [1, 2]}
    m["writer"]["retention_clock"] = 1234.5
    assert _errors(validator, m) == []
    # and the reader ignores them too
    assert parse_manifest(encode_manifest(m), "memory://x/manifest.json")["a_future_field"]


# -- broken manifests -----------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def mutate(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        cur: Any = m
        for p in parents:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        if isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value

    return mutate


def _delete(path: str) -> Any:
    def mutate(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        cur: Any = m
        for p in parents:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        del cur[int(last) if isinstance(cur, list) else last]

    return mutate


BROKEN = [
    pytest.param(_set("format_version", "1"), id="format_version-str"),
    pytest.param(_set("format_version", True), id="format_version-bool"),
    pytest.param(_set("format", "zarr"), id="format-other"),
    pytest.param(_set("created", "yesterday"), id="created-str"),
    pytest.param(_set("created_utc", 12), id="created_utc-int"),
    pytest.param(_set("writer.epoch", "3"), id="epoch-str"),
    pytest.param(_delete("writer.attempt"), id="writer-no-attempt"),
    pytest.param(_set("checkpoint_number", 1.5), id="checkpoint_number-float"),
    pytest.param(_set("checkpoint_number", 2**56), id="checkpoint_number-too-big"),
    pytest.param(_set("writer.epoch", 2**56), id="epoch-too-big"),
    pytest.param(_set("data", "../elsewhere"), id="data-escapes"),
    pytest.param(_set("nbytes", -1), id="nbytes-negative"),
    pytest.param(_set("metadata", []), id="metadata-list"),
    pytest.param(_delete("tree"), id="tree-missing"),
    pytest.param(_set("tree", {"t": "pickle", "v": "gASV"}), id="tree-unknown-node"),
    pytest.param(_set("tree.v.0", {"t": "float", "v": 1.5}), id="float-node-not-hex"),
    pytest.param(_set("tree.v.0", {"t": "int", "v": 1.5}), id="int-node-float"),
    pytest.param(_set("tree.v.0", {"t": "float", "v": "nan", "bits": "7ff8"}), id="float-bits-short"),
    pytest.param(_set("tree.v.0", {"t": "array", "a": -1}), id="array-ref-negative"),
    pytest.param(_set("tree.k.0", None), id="dict-key-null"),
    pytest.param(_set("arrays.0.dtype", "O"), id="dtype-object"),
    pytest.param(_set("arrays.0.shape", ["2"]), id="shape-str"),
    pytest.param(_set("arrays.0.shape", [-1]), id="shape-negative"),
    pytest.param(
        _set("arrays.0.chunked", {"path": "w", "chunk_shape": [1], "axis": 0, "objects": [0, 0]}),
        id="packed-and-chunked",
    ),
    pytest.param(_delete("arrays.0.packed"), id="neither-packed-nor-chunked"),
    pytest.param(_set("arrays.0.packed.crc32c", 2**32), id="tensor-crc32c-too-big"),
    pytest.param(_set("arrays.0.extra", 1), id="array-extra-field"),
    pytest.param(_delete("pack.chunk_bytes"), id="pack-no-chunk_bytes"),
    pytest.param(_set("pack.objects", [0]), id="pack-range-short"),
    pytest.param(_set("objects.0.crc32c", 2**32), id="object-crc32c-too-big"),
    pytest.param(_set("objects.0.crc32c", -1), id="object-crc32c-negative"),
    pytest.param(_set("objects.0.size", "12"), id="object-size-str"),
    pytest.param(_set("objects.0.key", "../../etc/passwd"), id="object-key-dotdot"),
    pytest.param(_set("objects.0.key", "/etc/passwd"), id="object-key-absolute"),
    pytest.param(_set("objects", {}), id="objects-not-list"),
]


@pytest.fixture(scope="module")
def good_manifest() -> dict[str, Any]:
    _, m = _save(f"memory://fmt-good-{uuid.uuid4().hex}/c", {"w": np.ones(2), "x": 1})
    assert m["arrays"][0].get("packed") and m["pack"] is not None
    return m


@pytest.mark.parametrize("mutate", BROKEN)
def test_broken_manifest_fails_schema(validator: Any, good_manifest: dict[str, Any], mutate: Any) -> None:
    m = copy.deepcopy(good_manifest)
    assert _errors(validator, m) == []
    mutate(m)
    assert _errors(validator, m) != []


# Broken version-3 manifests: the schema refuses them; those marked "reader" are
# refused by cloudckpt's own validation too (the rest break only the schema's
# closed fields, which a reader does not look at).
BROKEN_V3 = [
    pytest.param(_set("format_version", 4), True, id="format_version-4"),
    pytest.param(_set("arrays.0.chunked.axis", "null"), True, id="grid-axis-str"),
    pytest.param(_set("arrays.0.chunked.axis", -1), True, id="grid-axis-negative"),
    pytest.param(_set("arrays.0.chunked.chunk_shape", [0, 12]), True, id="grid-chunk-zero"),
    pytest.param(_set("arrays.0.chunked.objects", [0]), True, id="grid-range-short"),
    pytest.param(_set("arrays.1.shards", []), True, id="shards-empty"),
    pytest.param(_set("arrays.1.shards", {"path": "u/_s0"}), True, id="shards-not-list"),
    pytest.param(_delete("arrays.1.shards.0.offset"), True, id="shard-no-offset"),
    pytest.param(_delete("arrays.1.shards.0.axis"), True, id="shard-no-axis"),
    pytest.param(_set("arrays.1.shards.0.offset", [-1, 0]), True, id="shard-offset-negative"),
    pytest.param(_set("arrays.1.shards.0.shape", [0, 12]), True, id="shard-empty"),
    pytest.param(_set("arrays.1.shards.0.shape", ["4", 12]), True, id="shard-shape-str"),
    pytest.param(_set("arrays.1.shards.0.axis", None), False, id="shard-axis-null"),
    pytest.param(_set("arrays.1.shards.0.path", "../../victim"), True, id="shard-path-escapes"),
    pytest.param(_set("arrays.1.shards.0.extra", 1), False, id="shard-extra-field"),
    pytest.param(_set("arrays.1.packed", {"offset": 0, "crc32c": 0}), True, id="shards-and-packed"),
    pytest.param(
        _set("arrays.1.chunked", {"path": "u", "chunk_shape": [1, 12], "axis": 0, "objects": [0, 0]}),
        True,
        id="shards-and-chunked",
    ),
    pytest.param(_set("tree.v.2", {"t": "per_rank", "r": []}), True, id="per-rank-empty"),
    pytest.param(_set("tree.v.2", {"t": "per_rank", "v": {"t": "none"}}), True, id="per-rank-v-not-r"),
    pytest.param(_set("tree.v.2", {"t": "per_rank", "r": {"t": "none"}}), True, id="per-rank-r-not-list"),
    pytest.param(_set("tree.v.2.r.0", {"t": "pickle"}), True, id="per-rank-unknown-node"),
    pytest.param(_set("tree.v.2.x", 1), False, id="per-rank-extra-field"),
]


@pytest.fixture(scope="module")
def good_v3_manifest() -> dict[str, Any]:
    state = {
        "g": _sharded(_F, [((0, 0), (5, 12)), ((5, 0), (5, 12))]),
        "u": _sharded(_F, [((0, 0), (4, 12)), ((4, 0), (6, 12))]),
        "rng": PerRank(np.arange(3)),
        "step": 1,
    }
    _, m = _save(f"memory://fmt-good3-{uuid.uuid4().hex}/c", state, options=V3_OPTIONS)
    assert m["format_version"] == 3 and m["arrays"][0]["chunked"]["axis"] is None and "shards" in m["arrays"][1]
    assert m["tree"]["v"][2]["t"] == "per_rank"
    return m


@pytest.mark.parametrize(("mutate", "reader_refuses"), BROKEN_V3)
def test_broken_v3_manifest_fails_schema(
    validator: Any, good_v3_manifest: dict[str, Any], mutate: Any, reader_refuses: bool
) -> None:
    m = copy.deepcopy(good_v3_manifest)
    assert _errors(validator, m) == []
    parse_manifest(encode_manifest(m), "memory://x/manifest.json")
    mutate(m)
    assert _errors(validator, m) != []
    if reader_refuses:
        with pytest.raises((cloudckpt.CorruptCheckpointError, cloudckpt.FormatVersionError)):
            parse_manifest(encode_manifest(m), "memory://x/manifest.json")


# Version-3 manifests the schema accepts but section 9 refuses (what a schema cannot express).
CROSS_FIELD_V3 = [
    pytest.param(_set("format_version", 2), "format_version 3 is needed", id="v3-features-in-version-2"),
    pytest.param(_set("arrays.1.shards.1.offset", [3, 0]), "overlap", id="shards-overlap"),
    pytest.param(_delete("arrays.1.shards.1"), "cover 48 of its 120", id="shards-gap"),
    pytest.param(_set("arrays.1.shards.1.offset", [5, 0]), "does not lie inside", id="shard-outside"),
    pytest.param(_set("arrays.0.chunked.chunk_shape", [3, 12]), "objects for", id="grid-chunk-count"),
    pytest.param(
        _set("tree.v.2.r.0", {"t": "per_rank", "r": [{"t": "array", "a": 2}]}), "nested", id="per-rank-nested"
    ),
]


@pytest.mark.parametrize(("mutate", "message"), CROSS_FIELD_V3)
def test_v3_cross_field_rules_are_the_readers(
    validator: Any, good_v3_manifest: dict[str, Any], mutate: Any, message: str
) -> None:
    m = copy.deepcopy(good_v3_manifest)
    mutate(m)
    assert _errors(validator, m) == []  # the schema cannot tell
    with pytest.raises(cloudckpt.CorruptCheckpointError, match=message):
        parse_manifest(encode_manifest(m), "memory://x/manifest.json")


def test_schema_version_is_the_library_version(schema: dict[str, Any]) -> None:
    assert schema["properties"]["format_version"]["enum"] == list(range(1, FORMAT_VERSION + 1))
    assert schema["$id"] == f"urn:cloudckpt:manifest:{FORMAT_VERSION}"
    versions = ", ".join(map(str, range(1, FORMAT_VERSION))) + f" and {FORMAT_VERSION}"
    assert schema["title"] == f"cloudckpt manifest, format versions {versions}"
    assert f"versions {versions}" in _doc()
    # every node type a reader knows is in the schema
    from cloudckpt.format.manifest_check import NODE_TYPES

    assert set(schema["$defs"]["node"]["properties"]["t"]["enum"]) == NODE_TYPES


# -- docs/format.md ------------------------------------------------------------


def _doc() -> str:
    return FORMAT_MD.read_text(encoding="utf-8")


def test_schema_in_format_md_is_the_schema_file() -> None:
    doc = _doc()
    assert doc.count(BEGIN) == 1 and doc.count(END) == 1
    block = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    match = re.fullmatch(r"\s*```json\n(.*?)```\s*", block, re.S)
    assert match, "the schema in docs/format.md must be one ```json block between the markers"
    embedded = match.group(1)
    on_disk = SCHEMA_PATH.read_text(encoding="utf-8")
    assert json.loads(embedded) == json.loads(on_disk)
    assert embedded.strip() == on_disk.strip(), "keep docs/format.md verbatim in sync with manifest.schema.json"


def _runnable_blocks() -> list[Any]:
    blocks = re.findall(r"<!-- runnable -->[ \t]*\n```python\n(.*?)\n```", _doc(), re.S)
    return [pytest.param(code, id=f"block{i}") for i, code in enumerate(blocks)]


def test_format_md_has_runnable_examples() -> None:
    assert len(_runnable_blocks()) >= 3
    # a zarr-python reading example is among them
    assert any("zarr.open_group" in p.values[0] for p in _runnable_blocks())


@pytest.mark.parametrize("code", _runnable_blocks())
def test_format_md_example_runs(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(FORMAT_MD), "exec"), {"__name__": "__format_md__"})
    capsys.readouterr()


# The table of docs/format.md section 3.
ENCODINGS = [
    pytest.param(0, True, "0", id="list-index"),
    pytest.param(12, True, "12", id="list-index-12"),
    pytest.param(3, False, "#3", id="int-key"),
    pytest.param(-2, False, "#-2", id="int-key-negative"),
    pytest.param("", False, "%", id="empty"),
    pytest.param("b/x", False, "b%2Fx", id="slash"),
    pytest.param("%", False, "%25", id="percent"),
    pytest.param("a\\b", False, "a%5Cb", id="backslash"),
    pytest.param("a\nb\x7f", False, "a%0Ab%7F", id="control"),
    pytest.param("#1", False, "%231", id="leading-hash"),
    pytest.param("a#b_c", False, "a#b_c", id="inner-hash-underscore"),
    pytest.param("a.b c", False, "a.b c", id="dot-space"),
    pytest.param("é", False, "é", id="non-ascii"),
    pytest.param(".", False, "%2E", id="dot"),
    pytest.param("...", False, "%2E%2E%2E", id="dots"),
    pytest.param("zarr.json", False, "zarr%2Ejson", id="zarr-json"),
    pytest.param("__init__", False, "%5F_init__", id="dunder"),
    pytest.param("_pack", False, "%5Fpack", id="reserved-pack"),
]


@pytest.mark.parametrize(("key", "in_list", "name"), ENCODINGS)
def test_documented_key_encoding(key: Any, in_list: bool, name: str) -> None:
    assert encode_name(key, in_list=in_list) == name
    if not in_list:
        assert decode_name(name) == key


def test_chunked_empty_array_with_empty_trailing_axis(tmp_path: Path) -> None:
    url = cloudckpt.save(str(tmp_path / "c"), {"e": np.zeros((3, 0))}, options=ALL_CHUNKED)
    assert cloudckpt.load(url)["e"].shape == (3, 0)


def test_user_key_named_like_the_pack(tmp_path: Path) -> None:
    """A user key '_pack' is escaped, so it never collides with the pack (section 3)."""
    state = {"_pack": np.arange(100.0), "small": np.ones(2)}
    url = cloudckpt.save(str(tmp_path / "c"), state, options=SMALL)
    out = cloudckpt.load(url)
    assert out["_pack"].tobytes() == state["_pack"].tobytes()


# -- format versions -----------------------------------------------------------


def _with_version(version: Any) -> tuple[str, bytes]:
    url, m = _save(f"memory://fmtver-{uuid.uuid4().hex}/ckpt", {"w": np.ones(2), "n": 1})
    m["format_version"] = version
    return url, encode_manifest(m)


def _standalone(number: int, text: str) -> bool:
    return re.search(rf"(?<![\w.-]){number}(?![\w.-])", text) is not None


def test_newer_format_version_is_refused_naming_both_versions() -> None:
    newer = FORMAT_VERSION + 1
    url, payload = _with_version(newer)
    storage = open_storage(url)
    storage.write(MANIFEST_KEY, payload)
    for call in (cloudckpt.load, cloudckpt.info):
        with pytest.raises(cloudckpt.FormatVersionError) as exc:
            call(url)
        msg = str(exc.value)
        assert _standalone(newer, msg) and _standalone(FORMAT_VERSION, msg), msg
        assert url in msg
        assert isinstance(exc.value, cloudckpt.CheckpointError)
    with pytest.raises(cloudckpt.FormatVersionError, match=str(newer)):
        parse_manifest(payload, f"{url}/{MANIFEST_KEY}")


def test_every_earlier_version_reads_and_zero_is_invalid() -> None:
    for version in range(1, FORMAT_VERSION + 1):
        _, payload = _with_version(version)
        assert parse_manifest(payload, "memory://x/manifest.json")["format_version"] == version
    _, payload = _with_version(0)
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="format_version"):
        parse_manifest(payload, "memory://x/manifest.json")


# -- the schema is generated from the manifest's types -------------------------


def test_schema_file_is_generated_from_the_types() -> None:
    from cloudckpt.format.schema import main, manifest_schema, schema_text

    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), "run python -m cloudckpt.format.schema --write"
    assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == manifest_schema()
    assert main(["--check"]) == 0  # docs/format.md's copy too


def test_schema_versions_are_the_readers() -> None:
    from cloudckpt.format.manifest_types import FORMAT_VERSIONS

    assert FORMAT_VERSIONS == tuple(range(1, FORMAT_VERSION + 1))
