"""Sharded arrays and per-rank values in one process (format version 3).

A :class:`cloudckpt.ShardedArray` leaf is a global array of which this
process holds the pieces; it is saved as one zarr array on a regular chunk
grid when the pieces form one (a ``chunked`` record with ``"axis": null``),
else as one zarr array per piece (a ``shards`` record). These tests cover,
on local disk and ``memory://``:

- round trips of many box layouts and dtypes, with small chunks so that
  every array has many chunk objects;
- a property test: any partition of any array into boxes saves, loads
  bit-exactly, and reads back any regions;
- region reads fetch only the chunk objects that intersect the regions;
- ``PerRank`` values: saved as rank 0's, another rank gets a missing one;
- damage to any chunk (interior, padded edge, per-shard) is an error naming
  the object when the array is read whole;
- pieces that do not partition the array are refused before anything is
  written;
- zarr-python alone reads what was saved (docs/format.md, section 11).
"""

from __future__ import annotations

import json
import math
import uuid
import warnings
from pathlib import Path
from typing import Any

import fsspec
import ml_dtypes
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cloudckpt
from cloudckpt import PerRank, ShardedArray
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.format.regions import read_regions
from cloudckpt.format.shards import cells, intersect
from cloudckpt.layout.checkpoint_io import read_manifest, read_state
from cloudckpt.storage import add_global_hook, open_storage

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zarr: consolidated metadata is not in the v3 spec

Box = tuple[tuple[int, ...], tuple[int, ...]]

SMALL = cloudckpt.StoreOptions(chunk_bytes=40, pack_threshold=0)


# ------------------------------------------------------------------ helpers


def sharded(full: np.ndarray, boxes: list[Box]) -> ShardedArray:
    """``full`` as a ShardedArray holding the pieces ``boxes`` of it."""
    return ShardedArray(full.shape, full.dtype, [(o, full[_index((o, s))]) for o, s in boxes])


def _index(box: Box) -> tuple[Any, ...]:
    """The index of ``box``: a view even of a 0-d array (``a[()]`` would be a scalar)."""
    return (*(slice(o, o + n) for o, n in zip(box[0], box[1], strict=True)), ...)


def _grid(shape: tuple[int, ...], sizes: tuple[int, ...]) -> list[Box]:
    """The boxes of a regular grid of ``sizes`` over ``shape`` (last ones shorter)."""
    starts = [range(0, d, c) for d, c in zip(shape, sizes, strict=True)]
    out = []
    for idx in np.ndindex(*(len(r) for r in starts)):
        o = tuple(r[i] for r, i in zip(starts, idx, strict=True))
        out.append((o, tuple(min(c, d - x) for c, d, x in zip(sizes, shape, o, strict=True))))
    return out


def _base(where: str, tmp_path: Path) -> str:
    if where == "local":
        return str(tmp_path / f"ckpt-{uuid.uuid4().hex[:8]}")
    return f"memory://sharded-{uuid.uuid4().hex}/ckpt"


def _manifest(url: str) -> dict[str, Any]:
    return json.loads(open_storage(url).read(MANIFEST_KEY))


def _same(a: Any, b: Any) -> bool:
    """Bit-exact equality of loaded trees (dtype, shape and bytes of arrays)."""
    if isinstance(a, PerRank) or isinstance(b, PerRank):
        return isinstance(a, PerRank) and isinstance(b, PerRank) and a.is_missing == b.is_missing and _same(a.value, b.value)
    if isinstance(a, (np.ndarray, np.generic)) or isinstance(b, (np.ndarray, np.generic)):
        return (
            type(a) is type(b)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _kind(record: dict[str, Any]) -> str:
    if "shards" in record:
        return "shards"
    if "chunked" in record and record["chunked"]["axis"] is None:
        return "grid"
    return "packed" if "packed" in record else "chunked"


def _chunk_objects(m: dict[str, Any], record: dict[str, Any]) -> list[dict[str, Any]]:
    parts = record["shards"] if "shards" in record else [record["chunked"]]
    return [m["objects"][j] for p in parts for j in range(*p["objects"])]


def _per_rank_arrays(node: dict[str, Any], inside: bool = False) -> set[int]:
    """The indices of the arrays below per_rank nodes."""
    if node["t"] in ("array", "scalar"):
        return {node["a"]} if inside else set()
    children = node.get("r", []) if node["t"] == "per_rank" else node.get("v", []) if node["t"] in ("dict", "list", "tuple") else []
    out: set[int] = set()
    for child in children:
        out |= _per_rank_arrays(child, inside or node["t"] == "per_rank")
    return out


class Requests:
    """Every (operation, URL) any storage of this process requests."""

    def __enter__(self) -> Requests:
        self.seen: list[tuple[str, str]] = []
        self._remove = add_global_hook(lambda op, url: self.seen.append((op, url)))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._remove()


# ------------------------------------------------------------------ layouts

F = np.arange(120, dtype=np.float32).reshape(10, 12)
F1 = np.arange(121, dtype=np.float32)

# (id, shape, boxes, how it is stored)
LAYOUTS: list[tuple[str, tuple[int, ...], list[Box], str]] = [
    ("rows-even", (10, 12), [((0, 0), (5, 12)), ((5, 0), (5, 12))], "grid"),
    ("rows-last-shorter", (10, 12), [((0, 0), (4, 12)), ((4, 0), (4, 12)), ((8, 0), (2, 12))], "grid"),
    ("rows-uneven", (10, 12), [((0, 0), (4, 12)), ((4, 0), (6, 12))], "shards"),
    ("rows-prime", (26, 3), [((0, 0), (13, 3)), ((13, 0), (13, 3))], "grid"),
    ("columns-even", (10, 12), [((0, 0), (10, 6)), ((0, 6), (10, 6))], "grid"),
    ("columns-uneven", (10, 12), [((0, 0), (10, 5)), ((0, 5), (10, 7))], "shards"),
    ("grid-2x3", (10, 12), _grid((10, 12), (5, 4)), "grid"),
    ("grid-edges-short", (7, 9), _grid((7, 9), (3, 4)), "grid"),
    ("nested", (10, 12), [((0, 0), (5, 6)), ((0, 6), (5, 6)), ((5, 0), (5, 12))], "shards"),
    ("irregular-3d", (4, 5, 6), [((0, 0, 0), (4, 5, 2)), ((0, 0, 2), (1, 5, 4)), ((1, 0, 2), (3, 5, 4))], "shards"),
    ("last-axis-3d", (2, 3, 8), _grid((2, 3, 8), (2, 3, 2)), "grid"),
    ("many-1d", (24,), _grid((24,), (3,)), "grid"),
    ("uneven-1d", (10,), [((0,), (3,)), ((3,), (3,)), ((6,), (4,))], "shards"),
    ("whole", (10, 12), [((0, 0), (10, 12))], "grid"),
    ("replicated", (10, 12), [((0, 0), (5, 12)), ((5, 0), (5, 12)), ((0, 0), (5, 12))], "grid"),
    ("0-d", (), [((), ())], "grid"),
    ("empty-no-pieces", (0, 4), [], "grid"),
    ("empty-trailing", (3, 0), [((0, 0), (3, 0))], "grid"),
]


def _data(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.asarray(_values(shape, dtype))  # (arithmetic on a 0-d array gives a numpy scalar)


def _values(shape: tuple[int, ...], dtype: Any) -> Any:
    n = math.prod(shape)
    base = (np.arange(n, dtype=np.float64) * 1.5 - n / 3).reshape(shape)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return (np.arange(n).reshape(shape) % 3 == 0).astype(dt)
    if dt.kind == "u" or (dt.kind == "i" and dt.itemsize == 1):
        return (np.arange(n).reshape(shape) % 100).astype(dt)
    if dt.kind == "M":
        return np.arange(n).reshape(shape).astype(dt)
    if dt.kind == "U":
        return np.array([f"{i % 97}" for i in range(n)], dtype=dt).reshape(shape)
    if dt.kind == "c":
        return (base + 1j * base[::-1] if shape else base + 2j).astype(dt)
    return base.astype(dt)


@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize(("shape", "boxes", "kind"), [pytest.param(s, b, k, id=i) for i, s, b, k in LAYOUTS])
def test_layout_round_trip(tmp_path: Path, where: str, shape: tuple[int, ...], boxes: list[Box], kind: str) -> None:
    full = _data(shape, np.float32)
    state = {"model": {"w": sharded(full, boxes), "b": np.ones(3, np.float32)}, "step": 7}
    # pack_threshold=0: no sharded array is small enough to be gathered and packed whole
    url = cloudckpt.save(_base(where, tmp_path), state, options=SMALL)
    m = _manifest(url)
    assert m["format_version"] == 3
    record = m["arrays"][0]
    assert _kind(record) == kind
    assert _kind(m["arrays"][1]) == "chunked"  # plain arrays are stored as before
    n_objects = len(_chunk_objects(m, record))
    if full.nbytes > 80:
        assert n_objects > 2  # small chunks: many objects
    elif full.size == 0:
        assert n_objects == 0
    out = cloudckpt.load(url)
    assert _same(out["model"]["w"], full)
    assert _same(out["model"]["b"], np.ones(3, np.float32)) and out["step"] == 7
    assert cloudckpt.verify(url).ok


DTYPES = [
    pytest.param(np.float32, id="f4"),
    pytest.param(">f8", id="big-endian-f8"),
    pytest.param(">i4", id="big-endian-i4"),
    pytest.param(np.int8, id="i1"),
    pytest.param(np.uint16, id="u2"),
    pytest.param(np.bool_, id="bool"),
    pytest.param(np.complex64, id="c8"),
    pytest.param(np.float16, id="f2"),
    pytest.param(ml_dtypes.bfloat16, id="bfloat16"),
    pytest.param(ml_dtypes.float8_e4m3fn, id="float8"),
    pytest.param("<M8[s]", id="datetime64"),
    pytest.param("<U2", id="str-U2"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("boxes", "kind"),
    [
        pytest.param(_grid((9, 10), (3, 5)), "grid", id="grid"),
        pytest.param([((0, 0), (4, 10)), ((4, 0), (5, 3)), ((4, 3), (5, 7))], "shards", id="shards"),
    ],
)
def test_dtype_round_trip(dtype: Any, boxes: list[Box], kind: str) -> None:
    full = _data((9, 10), dtype)
    url = cloudckpt.save(f"memory://sharded-dt-{uuid.uuid4().hex}/c", {"w": sharded(full, boxes)}, options=SMALL)
    m = _manifest(url)
    assert _kind(m["arrays"][0]) == kind and m["arrays"][0]["dtype"] == cloudckpt.info(url).leaves[0]["dtype"]
    out = cloudckpt.load(url)["w"]
    assert _same(out, full)  # the logical dtype, big-endian included, comes back
    got = read_state(open_storage(url), read_manifest(open_storage(url)), regions={("w",): [((2, 1), (5, 8))]})["w"]
    assert isinstance(got, ShardedArray) and _same(got.pieces[0][1], np.array(full[2:7, 1:9]))


def test_big_endian_and_non_contiguous_pieces(tmp_path: Path) -> None:
    """Pieces may be any numpy views: big-endian, Fortran-ordered, strided."""
    full = np.arange(10 * 12, dtype=">f8").reshape(10, 12)
    fortran = np.asfortranarray(full)
    pieces = [((0, 0), fortran[:, :6]), ((0, 6), full[:, 6:][:, ::1])]
    strided = np.arange(240, dtype="<i4").reshape(10, 24)[:, ::2]
    state = {
        "be": ShardedArray(full.shape, full.dtype, pieces),
        "strided": ShardedArray((10, 12), strided.dtype, [((0, 0), strided[:3]), ((3, 0), strided[3:])]),
    }
    url = cloudckpt.save(str(tmp_path / "c"), state, options=SMALL)
    out = cloudckpt.load(url)
    assert _same(out["be"], full)
    assert _same(out["strided"], np.ascontiguousarray(strided))


def test_0d_sharded_arrays_load_their_value() -> None:
    """(Was: a 0-d sharded array was read into a copy, dest[()], and loaded uninitialized memory.)"""
    for i, dtype in enumerate([np.float32, ">f8", np.int16, np.uint8, ml_dtypes.bfloat16, np.complex64] * 4):
        full = np.array(i * 7 + 3, dtype)
        url = cloudckpt.save(f"memory://sharded-0d-{uuid.uuid4().hex}/c", {"w": sharded(full, [((), ())])}, options=SMALL)
        assert _same(cloudckpt.load(url)["w"], full), (i, dtype)
        s = open_storage(url)
        got = read_state(s, read_manifest(s), regions={("w",): [((), ())]})["w"]
        assert _same(got.pieces[0][1], full)


@pytest.mark.parametrize(
    ("shape", "boxes"),
    [
        pytest.param((10, 12), [((0, 0), (4, 12)), ((4, 0), (6, 12))], id="uneven"),
        pytest.param((10, 12), _grid((10, 12), (5, 6)), id="grid"),
        pytest.param((), [((), ())], id="0-d"),
        pytest.param((0, 3), [], id="empty"),
    ],
)
def test_small_sharded_arrays_round_trip_with_default_options(shape: tuple[int, ...], boxes: list[Box]) -> None:
    """With the default pack_threshold a writer may store a small sharded array
    whole (cloudckpt gathers and packs those): it loads the same."""
    full = _data(shape, ml_dtypes.bfloat16)
    url = cloudckpt.save(f"memory://sharded-small-{uuid.uuid4().hex}/c", {"w": sharded(full, boxes), "n": np.ones(2)})
    assert _same(cloudckpt.load(url)["w"], full)
    s = open_storage(url)
    box = ((0,) * len(shape), tuple(min(d, 2) for d in shape))
    got = read_state(s, read_manifest(s), regions={("w",): [box]})["w"]
    assert _same(got.pieces[0][1], np.array(full[_index(box)]))


def test_keys_select_a_sharded_leaf() -> None:
    state = {"a": sharded(F, _grid((10, 12), (5, 12))), "b": sharded(F, [((0, 0), (3, 12)), ((3, 0), (7, 12))]), "c": 1}
    url = cloudckpt.save(f"memory://sharded-keys-{uuid.uuid4().hex}/c", state, options=SMALL)
    assert list(cloudckpt.load(url, keys="b")) == ["b"]
    assert _same(cloudckpt.load(url, keys=["b"])["b"], F)
    assert _same(cloudckpt.load(url, keys="a")["a"], F)


# ------------------------------------------------------------------ property test


@st.composite
def partitions(draw: Any) -> tuple[tuple[int, ...], list[Box]]:
    """A random shape and a random partition of it into boxes: a regular grid,
    or a random sequence of splits of boxes in two (nested, uneven)."""
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    if ndim and draw(st.integers(0, 9)) == 0:  # now and then an empty array
        shape = (*shape[:-1], 0)
    if math.prod(shape) == 0 and ndim:
        return shape, []
    if draw(st.booleans()):
        sizes = tuple(draw(st.integers(1, d)) for d in shape)
        return shape, _grid(shape, sizes)
    boxes: list[Box] = [((0,) * ndim, shape)]
    for _ in range(draw(st.integers(0, 6))):
        k = draw(st.integers(0, len(boxes) - 1))
        o, s = boxes[k]
        axes = [d for d in range(ndim) if s[d] > 1]
        if not axes:
            continue
        ax = draw(st.sampled_from(axes))
        cut = draw(st.integers(1, s[ax] - 1))
        first = (o, (*s[:ax], cut, *s[ax + 1 :]))
        second = ((*o[:ax], o[ax] + cut, *o[ax + 1 :]), (*s[:ax], s[ax] - cut, *s[ax + 1 :]))
        boxes[k : k + 1] = [first, second]
    return shape, boxes


@st.composite
def regions_in(draw: Any, shape: tuple[int, ...]) -> list[Box]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        o, s = [], []
        for d in shape:
            lo = draw(st.integers(0, d))
            o.append(lo)
            s.append(draw(st.integers(0, d - lo)))
        out.append((tuple(o), tuple(s)))
    return out


PROPERTY_DTYPES = [np.float32, np.int16, ">f8", np.uint8, ml_dtypes.bfloat16, np.complex128]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=partitions(),
    dtype=st.sampled_from(PROPERTY_DTYPES),
    chunk_bytes=st.integers(1, 64),
    data=st.data(),
)
def test_any_partition_round_trips(layout: tuple[tuple[int, ...], list[Box]], dtype: Any, chunk_bytes: int, data: Any) -> None:
    shape, boxes = layout
    full = _data(shape, dtype)
    base = f"memory://sharded-prop-{uuid.uuid4().hex}"
    try:
        url = cloudckpt.save(
            f"{base}/c", {"w": sharded(full, boxes)}, options=cloudckpt.StoreOptions(chunk_bytes=chunk_bytes, pack_threshold=0)
        )
        m = _manifest(url)
        assert _kind(m["arrays"][0]) in ("grid", "shards")
        assert _same(cloudckpt.load(url)["w"], full)
        regions = data.draw(regions_in(shape))
        s = open_storage(url)
        got = read_state(s, read_manifest(s), regions={("w",): regions})["w"]
        assert isinstance(got, ShardedArray) and got.shape == shape
        assert [o for o, _ in got.pieces] == [o for o, _ in regions]
        for (_, piece), box in zip(got.pieces, regions, strict=True):
            assert _same(piece, np.array(full[_index(box)])), (box, boxes)
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists(base[len("memory://") :]):
            fs.rm(base[len("memory://") :], recursive=True)


# ------------------------------------------------------------------ region reads


def _expected_keys(m: dict[str, Any], record: dict[str, Any], regions: list[Box]) -> set[str]:
    keys = set()
    for box in regions:
        for cell in cells(record, tuple(record["shape"]), box):
            if intersect((cell.offset, cell.shape), box) is not None:
                keys.add(m["objects"][cell.obj]["key"])
    return keys


@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize(
    ("boxes", "kind"),
    [
        pytest.param(_grid((16, 16), (4, 8)), "grid", id="grid"),
        pytest.param([((0, 0), (5, 16)), ((5, 0), (11, 6)), ((5, 6), (11, 10))], "shards", id="shards"),
        pytest.param(None, "chunked", id="plain-array"),
    ],
)
def test_region_reads_fetch_only_intersecting_objects(tmp_path: Path, where: str, boxes: list[Box] | None, kind: str) -> None:
    full = np.arange(256, dtype=np.float32).reshape(16, 16)
    leaf = full if boxes is None else sharded(full, boxes)
    url = cloudckpt.save(_base(where, tmp_path), {"w": leaf, "n": 1}, options=cloudckpt.StoreOptions(chunk_bytes=32, pack_threshold=0))
    s = open_storage(url)
    m = read_manifest(s)
    record = m["arrays"][0]
    assert _kind(record) == kind
    all_chunks = {o["key"] for o in _chunk_objects(m, record)}
    assert len(all_chunks) >= 16
    for regions in ([((6, 9), (3, 2))], [((0, 0), (1, 1)), ((15, 15), (1, 1))], [((3, 0), (2, 16))], [((0, 0), (16, 16))]):
        want = _expected_keys(m, record, regions)
        before = s.stats.snapshot()
        with Requests() as seen:
            got = read_state(s, m, regions={("w",): regions})
        after = s.stats.snapshot()
        read = {url_.rsplit(f"{m['data']}/", 1)[-1] for _, url_ in seen.seen}
        assert read == {k.split("/", 1)[1] for k in want}, regions  # exactly the chunks the regions touch
        assert after["requests"] - before["requests"] == len(want)  # one request per object, nothing else
        if regions[0] != ((0, 0), (16, 16)):
            assert len(want) < len(all_chunks) / 2
            assert after["bytes_read"] - before["bytes_read"] < full.nbytes / 2
        for (_, piece), box in zip(got["w"].pieces, regions, strict=True):
            np.testing.assert_array_equal(piece, full[_index(box)])
        assert got["n"] == 1


def test_read_regions_refuses_a_box_outside_the_array() -> None:
    url = cloudckpt.save(f"memory://sharded-oob-{uuid.uuid4().hex}/c", {"w": sharded(F, _grid((10, 12), (5, 6)))}, options=SMALL)
    s = open_storage(url)
    m = read_manifest(s)
    with pytest.raises(ValueError, match=r"\(10, 12\)"):
        read_regions(s, m["arrays"], m["objects"], {0: [((8, 0), (3, 12))]}, prefix=m["data"])
    with pytest.raises(ValueError, match="region"):
        read_state(s, m, regions={("w",): [((0, 0, 0), (1, 1, 1))]})


# ------------------------------------------------------------------ PerRank


PER_RANK_VALUES = [
    pytest.param(np.arange(5, dtype=np.uint32), id="array"),
    pytest.param({"key": np.array([7, 11], np.uint64), "pos": 17, "t": (np.ones(2), "x")}, id="dict"),
    pytest.param([np.float32(2.5), None, [np.zeros((2, 0)), 3.5]], id="nested-list"),
    pytest.param(np.int64(3), id="numpy-scalar"),
    pytest.param(np.ones((4, 4), ml_dtypes.bfloat16), id="bfloat16"),
]


@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize("value", PER_RANK_VALUES)
def test_per_rank_round_trip(tmp_path: Path, where: str, value: Any) -> None:
    state = {"rng": PerRank(value), "w": np.arange(4.0), "step": 3, "other": [PerRank(np.ones(1)), 1]}
    url = cloudckpt.save(_base(where, tmp_path), state, options=cloudckpt.StoreOptions(pack_threshold=1 << 20))
    m = _manifest(url)
    assert m["format_version"] == 3
    node = m["tree"]["v"][0]
    assert node["t"] == "per_rank" and len(node["r"]) == 1  # a single process is rank 0
    # arrays of a PerRank value are never packed (even below pack_threshold): own arrays under <path>/_r0
    ranked = _per_rank_arrays(m["tree"])
    assert ranked  # "other" holds one at least
    for i, a in enumerate(m["arrays"]):
        if i in ranked:
            assert "chunked" in a and "/_r0" in f"/{a['chunked']['path']}", a
        else:
            assert "packed" in a, a
    out = cloudckpt.load(url)
    assert _same(out["rng"], PerRank(value))
    assert _same(out["other"], [PerRank(np.ones(1)), 1])
    assert _same(out["w"], np.arange(4.0)) and out["step"] == 3

    # another rank: a missing PerRank, and none of rank 0's per-rank arrays is read
    s = open_storage(url)
    manifest = read_manifest(s)
    with Requests() as seen:
        other = read_state(s, manifest, rank=1)
    assert other["rng"].is_missing and other["rng"].value is None and other["rng"] == PerRank.missing()
    assert other["other"][0].is_missing and other["other"][1] == 1
    assert _same(other["w"], np.arange(4.0)) and other["step"] == 3
    assert not any("/_r0" in u for _, u in seen.seen)


def test_per_rank_at_the_root_and_selected_by_key() -> None:
    url = cloudckpt.save(f"memory://sharded-pr-{uuid.uuid4().hex}/c", PerRank(np.arange(3.0)))
    m = _manifest(url)
    assert m["tree"] == {"t": "per_rank", "r": [{"t": "array", "a": 0}]}
    assert m["arrays"][0]["chunked"]["path"] == "_r0"
    assert _same(cloudckpt.load(url), PerRank(np.arange(3.0)))
    url = cloudckpt.save(f"memory://sharded-pr-{uuid.uuid4().hex}/c", {"a": PerRank({"x": np.ones(2)}), "b": np.ones(1)})
    assert _same(cloudckpt.load(url, keys="a"), {"a": PerRank({"x": np.ones(2)})})


def test_per_rank_and_sharded_together() -> None:
    state = {
        "model": {"w": sharded(F, [((0, 0), (4, 12)), ((4, 0), (6, 12))]), "g": sharded(F, _grid((10, 12), (5, 6)))},
        "loader": PerRank({"epoch": 2, "perm": np.arange(10)}),
        "rng": PerRank(np.array([1, 2], np.uint64)),
    }
    url = cloudckpt.save(f"memory://sharded-mix-{uuid.uuid4().hex}/c", state, options=SMALL)
    out = cloudckpt.load(url)
    assert _same(out["model"], {"w": F, "g": F})
    assert _same(out["loader"], state["loader"]) and _same(out["rng"], state["rng"])
    assert cloudckpt.verify(url).ok


@pytest.mark.parametrize(
    ("state", "match"),
    [
        pytest.param({"a": PerRank({"b": PerRank(1)})}, "PerRank value inside another", id="nested-per-rank"),
        pytest.param({"a": PerRank(sharded(F, [((0, 0), (10, 12))]))}, "sharded array inside a PerRank", id="sharded-in-per-rank"),
        pytest.param({"a": ShardedArray((2,), np.dtype("<U3"), [((0,), np.array(["abc", "d"]))])}, "sharded array", id="sharded-U3"),
    ],
)
def test_unsupported_combinations_are_refused_before_writing(state: Any, match: str) -> None:
    base = f"sharded-bad-{uuid.uuid4().hex}"
    with pytest.raises(TypeError, match=match):
        cloudckpt.save(f"memory://{base}/c", state)
    assert not fsspec.filesystem("memory").exists(base)


# ------------------------------------------------------------------ pieces that are no partition


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(cloudckpt.StoreOptions(pack_threshold=0), id="stored-sharded"),
        pytest.param(None, id="gathered-and-packed"),
    ],
)
@pytest.mark.parametrize(
    ("shape", "pieces", "match"),
    [
        pytest.param((10, 12), [((0, 0), (4, 12))], "cover 48 of its 120", id="gap"),
        pytest.param((10, 12), [((0, 0), (6, 12)), ((4, 0), (6, 12))], "overlap", id="overlap"),
        pytest.param((10, 12), [((0, 0), (6, 12)), ((4, 0), (4, 12))], "overlap", id="overlap-and-gap"),
        pytest.param((10, 12), [((0, 0), (5, 12)), ((5, 0), (5, 6))], "cover 90", id="grid-with-a-hole"),
        pytest.param((), [], "no process holds", id="0-d-without-pieces"),
        pytest.param((4,), [], "no process holds", id="no-pieces"),
    ],
)
def test_pieces_that_do_not_partition_the_array_are_refused_before_writing(
    shape: tuple[int, ...], pieces: list[Box], match: str, options: cloudckpt.StoreOptions | None
) -> None:
    """(Was: committed a checkpoint whose manifest every reader refuses.)"""
    full = _data(shape, np.float32)
    base = f"sharded-nopart-{uuid.uuid4().hex}"
    with pytest.raises(ValueError, match=match) as info:
        cloudckpt.save(f"memory://{base}/c", {"m": {"w": sharded(full, pieces)}}, options=options)
    assert "'m/w'" in str(info.value) or "['m']['w']" in str(info.value)
    assert fsspec.filesystem("memory").find(base) == []


def test_piece_outside_the_array_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        ShardedArray((4, 4), np.float32, [((2, 0), np.ones((3, 4), np.float32))])
    with pytest.raises(ValueError, match="dtype"):
        ShardedArray((4,), np.float32, [((0,), np.ones(4))])


# ------------------------------------------------------------------ damage


def _flip(s: Any, key: str, at: int) -> None:
    data = bytearray(s.read(key))
    data[at] ^= 0x5A
    s.write(key, bytes(data))


@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize(
    ("full", "boxes", "chunk_bytes", "which", "byte", "padded"),
    [
        pytest.param(F, _grid((10, 12), (4, 12)), 1 << 20, 0, 0, False, id="grid-interior"),
        pytest.param(F, _grid((10, 12), (4, 12)), 1 << 20, -1, 0, True, id="grid-edge-data"),
        pytest.param(F, _grid((10, 12), (4, 12)), 1 << 20, -1, -1, True, id="grid-edge-padding"),
        pytest.param(F, _grid((10, 12), (5, 5)), 1 << 20, -1, 0, True, id="grid-last-axis-edge"),
        pytest.param(F, _grid((10, 12), (5, 5)), 1 << 20, 2, 0, True, id="grid-column-edge"),
        pytest.param(F, [((0, 0), (4, 12)), ((4, 0), (6, 12))], 1 << 20, -1, 3, False, id="shards"),
        pytest.param(F1, [((0,), (20,)), ((20,), (101,))], 64, -1, 0, True, id="shards-edge-data"),
        pytest.param(F1, [((0,), (20,)), ((20,), (101,))], 64, -1, -1, True, id="shards-edge-padding"),
    ],
)
def test_a_damaged_chunk_is_an_error_naming_the_object(
    tmp_path: Path, where: str, full: np.ndarray, boxes: list[Box], chunk_bytes: int, which: int, byte: int, padded: bool
) -> None:
    """(Was: a padded edge chunk of a grid read whole was not checked: damage loaded silently.)"""
    url = cloudckpt.save(
        _base(where, tmp_path), {"w": sharded(full, boxes)}, options=cloudckpt.StoreOptions(chunk_bytes=chunk_bytes, pack_threshold=0)
    )
    s = open_storage(url)
    m = read_manifest(s)
    chunks = _chunk_objects(m, m["arrays"][0])
    assert len(chunks) >= 2
    key = chunks[which]["key"]
    cell = next(c for c in cells(m["arrays"][0], full.shape) if m["objects"][c.obj]["key"] == key)
    assert (cell.shape != cell.chunk) == padded
    _flip(s, key, byte)
    with pytest.raises(cloudckpt.CorruptCheckpointError) as info:
        cloudckpt.load(url)
    assert key in str(info.value) and "crc32c" in str(info.value)
    assert not cloudckpt.verify(url).ok
    # a region that does not touch the damaged chunk still reads
    first = next(c for c in cells(m["arrays"][0], full.shape) if m["objects"][c.obj]["key"] != key)
    got = read_state(s, m, regions={("w",): [(first.offset, first.shape)]})["w"]
    np.testing.assert_array_equal(got.pieces[0][1], full[_index((first.offset, first.shape))])


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_grid_chunk_is_an_error_naming_it(damage: str) -> None:
    url = cloudckpt.save(f"memory://sharded-dmg-{uuid.uuid4().hex}/c", {"w": sharded(F, _grid((10, 12), (5, 6)))}, options=SMALL)
    s = open_storage(url)
    m = read_manifest(s)
    key = _chunk_objects(m, m["arrays"][0])[3]["key"]
    if damage == "missing":
        s.delete([key])
    else:
        s.write(key, s.read(key)[:-4])
    with pytest.raises(cloudckpt.CorruptCheckpointError, match=damage) as info:
        cloudckpt.load(url)
    assert key in str(info.value)


# ------------------------------------------------------------------ zarr-python interop


def _open_group(url: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_group(cloudckpt.info(url).data_url, mode="r")


def _as_logical(stored: np.ndarray, name: str) -> np.ndarray:
    dt = np.dtype(getattr(ml_dtypes, name)) if name.isidentifier() else np.dtype(name)
    little = dt.newbyteorder("<") if dt.byteorder == ">" else dt
    return np.array(stored, copy=True).view(little).astype(dt)


@pytest.mark.parametrize("where", ["memory", "local"])
def test_zarr_python_reads_grid_arrays_whole(tmp_path: Path, where: str) -> None:
    state = {
        "f4": sharded(F, _grid((10, 12), (5, 4))),
        "be": sharded(F.astype(">f8"), _grid((10, 12), (10, 6))),
        "bf16": sharded(F.astype(ml_dtypes.bfloat16), _grid((10, 12), (2, 12))),
        "edges": sharded(np.arange(63, dtype=np.int16).reshape(7, 9), _grid((7, 9), (3, 4))),
        "scalar": sharded(np.array(1.25), [((), ())]),
        "layers": [{"w": sharded(F, _grid((10, 12), (5, 12)))}],
    }
    url = cloudckpt.save(_base(where, tmp_path), state, options=SMALL)
    group = _open_group(url)
    for name, want in [
        ("f4", F),
        ("be", F.astype(">f8")),
        ("bf16", F.astype(ml_dtypes.bfloat16)),
        ("edges", np.arange(63, dtype=np.int16).reshape(7, 9)),
        ("scalar", np.array(1.25)),
        ("layers/0/w", F),
    ]:
        z = group[name]
        assert isinstance(z, zarr.Array) and z.shape == want.shape
        info = z.attrs["cloudckpt"]
        assert "offset" not in info
        got = _as_logical(z[...], info["dtype"])
        assert _same(got, want), name
    # and a slice is an ordinary zarr slice
    np.testing.assert_array_equal(group["f4"][3:7, 2:9], F[3:7, 2:9])


def test_zarr_python_reads_per_shard_arrays_with_their_offsets(local_backend: Any) -> None:
    full = np.arange(10 * 12, dtype=">i4").reshape(10, 12)
    boxes = [((0, 0), (5, 6)), ((0, 6), (5, 6)), ((5, 0), (5, 12))]
    url = cloudckpt.save(local_backend.url("c"), {"model": {"emb": sharded(full, boxes)}, "n": 1}, options=SMALL)
    m = _manifest(url)
    record = m["arrays"][0]
    assert _kind(record) == "shards"
    group = _open_group(url)
    emb = group["model/emb"]
    assert isinstance(emb, zarr.Group)
    names = sorted(name for name, _ in emb.arrays())
    assert names == ["_s0", "_s1", "_s2"]
    whole = np.zeros((10, 12), full.dtype)
    seen = []
    for name, shard in emb.arrays():
        info = shard.attrs["cloudckpt"]
        assert info["path"] == ["model", "emb"] and info["global_shape"] == [10, 12] and info["dtype"] == ">i4"
        box = (tuple(info["offset"]), shard.shape)
        seen.append(box)
        whole[_index(box)] = _as_logical(shard[...], info["dtype"])
        sh = next(s for s in record["shards"] if s["path"] == f"model/emb/{name}")
        assert (sh["offset"], sh["shape"]) == (info["offset"], list(shard.shape))
    assert sorted(seen) == sorted(boxes)
    assert _same(whole, full)


def test_zarr_python_reads_per_rank_arrays_under_r0(local_backend: Any) -> None:
    state = {"rng": PerRank({"key": np.array([3, 4], np.uint32)}), "pos": PerRank(np.int64(9))}
    url = cloudckpt.save(local_backend.url("c"), state)
    group = _open_group(url)
    np.testing.assert_array_equal(group["rng/_r0/key"][...], [3, 4])
    assert group["rng/_r0/key"].attrs["cloudckpt"]["path"] == ["rng", "key"]
    assert group["pos/_r0"][...] == 9 and group["pos/_r0"].shape == ()
