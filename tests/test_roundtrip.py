"""Bit-exact round trips of whole states through save/load on every backend."""

from __future__ import annotations

import itertools
import math
import struct
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tree import assert_same

import cloudckpt
from cloudckpt.layout import checkpoint_io
from cloudckpt.storage import open_storage

# ---------------------------------------------------------------- dtypes

ML_DTYPES = [
    "bfloat16", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz",
    "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn",
    "int2", "int4", "uint2", "uint4",
]
NUMPY_DTYPES = [
    "|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16",
    np.dtype(np.longdouble).str, np.dtype(np.clongdouble).str,
    "<M8[ns]", "<M8[D]", "<m8[s]", "<U5", "|S3",
    # big-endian twins
    ">i2", ">u4", ">i8", ">f2", ">f4", ">f8", ">c8", ">c16", ">M8[us]", ">m8[D]", ">U3",
]


def all_dtypes() -> list[np.dtype]:
    out = [np.dtype(d) for d in NUMPY_DTYPES]
    out += [np.dtype(getattr(ml_dtypes, n)) for n in ML_DTYPES if hasattr(ml_dtypes, n)]
    return out


def dtype_id(dt: np.dtype) -> str:
    return dt.name if dt.type.__module__.startswith("ml_dtypes") else dt.str


def random_array(dt: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Arbitrary bit patterns (NaN payloads, NaT, subnormals, ...) where every pattern is a value."""
    n = math.prod(shape)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind == "U":
        chars = np.array(list("aü€😀 \x00z"))
        words = ["".join(rng.choice(chars, size=rng.integers(0, dt.itemsize // 4 + 1))) for _ in range(n)]
        return np.array(words, dtype=dt).reshape(shape)
    raw = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def save_load(backend, state, options=None, name="c", **load_kw):
    so = backend.storage_options
    url = cloudckpt.save(backend.url(name), state, storage_options=so, options=options)
    return cloudckpt.load(url, storage_options=so, **load_kw)


PACKED = None  # default options: every small tensor goes to the pack
OWN_ARRAYS = cloudckpt.StoreOptions(pack_threshold=0)  # every tensor its own zarr array (multi-chunk: below)


# ---------------------------------------------------------------- every dtype, every backend


@pytest.mark.parametrize("options", [PACKED, OWN_ARRAYS], ids=["packed", "own-arrays"])
def test_every_dtype_roundtrips_bit_exact(backend, options):
    rng = np.random.default_rng(1)
    state = {dtype_id(dt): random_array(dt, (3, 5), rng) for dt in all_dtypes()}
    out = save_load(backend, state, options)
    assert list(out) == list(state)
    for k, a in state.items():
        b = out[k]
        assert type(b) is np.ndarray, k
        assert bits_equal(a, b), k  # same dtype (incl. byte order), shape and bytes


def test_float_special_values_keep_their_bits(backend):
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 5e-324, -5e-324, 1e308], dtype="<f8")
    specials = np.concatenate([specials, np.array([0x7FF0000000000001, 0xFFF4000000000000], "<u8").view("<f8")])
    with np.errstate(all="ignore"):  # overflow to inf in the narrow types is intended
        state = {
            "f8": specials,
            "f4": specials.astype("<f4"),
            "f2>": specials.astype(">f2"),
            "bf16": specials.astype(ml_dtypes.bfloat16),
            "c16": specials[:5] + 1j * specials[5:10],
        }
    out = save_load(backend, state)
    for k in state:
        assert bits_equal(state[k], out[k]), k


@pytest.mark.parametrize("options", [PACKED, OWN_ARRAYS], ids=["packed", "own-arrays"])
def test_shapes_and_memory_layouts(backend, options):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((6, 8)).astype("<f4")
    big_endian = base.astype(">f8")
    fortran = np.asfortranarray(rng.integers(0, 1000, (5, 7, 3)).astype("<i8"))
    state = {
        "0d": np.array(3.25),
        "0d_bf16": np.array(1.5, dtype=ml_dtypes.bfloat16),
        "0d_str": np.array("hello"),
        "empty": np.zeros((0,), "f4"),
        "empty_2d": np.zeros((3, 0, 2), "i2"),
        "empty_str": np.zeros((0, 4), "U7"),
        "strided": base[::2, 1::3],
        "reversed": base[::-1, ::-1],
        "transposed": base.T,
        "fortran": fortran,
        "fortran_strided": fortran[1:, ::2],
        "big_endian": big_endian,
        "big_endian_transposed": big_endian.T[::2],
        "broadcast": np.broadcast_to(np.arange(4.0), (3, 4)),
        "readonly": np.frombuffer(b"\x01\x02\x03\x04", dtype="<u2"),
        "bf16_strided": base.astype(ml_dtypes.bfloat16)[:, ::3],
        "f8_strided": base.astype(ml_dtypes.float8_e4m3fn).T,
    }
    out = save_load(backend, state, options)
    for k, a in state.items():
        b = out[k]
        assert b.dtype == a.dtype and b.shape == a.shape, k
        assert a.tobytes() == b.tobytes(), k
        assert b.flags.writeable, k  # a restored array is the caller's own


def test_json_scalars_and_containers(backend):
    neg_nan = float("inf") - float("inf")
    state = {
        "ints": [0, 1, -1, 2**53, 2**53 + 1, -(2**63), 2**64 + 7, -(10**40), 10**5000],
        "floats": [0.0, -0.0, 0.1, float("inf"), float("-inf"), float("nan"), neg_nan, 5e-324, sys.float_info.max],
        "strs": ["", "ünï\x00cødé", "a/b", "%2F", "🙂" * 3],
        "misc": [None, True, False],
        "tuple": (1, (2, [3, ()]), {}),
        "order": {"z": 1, "a": 2, "m": 3, "": 4},
        "int_keys": {3: "three", -1: "minus one", 0: {1: {2: None}}, 2**70: "big"},
        "mixed": {1: "int", "1": "str"},
        "nested_empty": {"l": [], "t": (), "d": {}},
        7: "int key at the root",
    }
    out = save_load(backend, state)
    assert_same(state, out)


@pytest.mark.parametrize(
    "root",
    [None, 5, 2.5, "s", [1, 2], (np.arange(3),), np.arange(6).reshape(2, 3), np.float16(2), {}],
    ids=lambda x: type(x).__name__,
)
def test_non_dict_roots(backend, root):
    if backend.is_object_store and not isinstance(root, np.ndarray):
        pytest.skip("storage-independent; arrays as the root cover the object stores")
    assert_same(root, save_load(backend, root))
    # the root array as its own zarr array (node path "_root")
    if isinstance(root, np.ndarray):
        assert_same(root, save_load(backend, root, cloudckpt.StoreOptions(pack_threshold=0, chunk_bytes=8), "c2"))


def test_numpy_scalars_come_back_as_the_same_numpy_scalar_type(backend):
    state = {
        "f32": np.float32(1.5),
        "f64": np.float64(-0.0),
        "f16": np.float16(np.nan),
        "i8": np.int8(-3),
        "u64": np.uint64(2**64 - 1),
        "b": np.bool_(True),
        "c64": np.complex64(1 - 2j),
        "bf16": ml_dtypes.bfloat16(3.0),
        "f8": ml_dtypes.float8_e5m2(0.5),
        "dt": np.datetime64("2024-02-29T12:00:00", "s"),
        "td": np.timedelta64(-5, "ms"),
        "str": np.str_("numpy str"),
        "bytes": np.bytes_(b"\x00\xff"),
        "ld": np.longdouble(1) / 3,
    }
    out = save_load(backend, state)
    for k, a in state.items():
        b = out[k]
        assert type(b) is type(a), (k, type(b))
        assert not isinstance(b, np.ndarray), k
        assert np.asarray(b).dtype == np.asarray(a).dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes(), k


# ---------------------------------------------------------------- chunked layouts


def _manifest(backend, url):
    storage = open_storage(url, backend.storage_options)
    return checkpoint_io.read_manifest(storage)


@pytest.mark.parametrize(
    ("shape", "dtype", "chunk_bytes", "chunk_shape", "axis", "n_objects"),
    [
        ((37, 11), "<f8", 1000, [3, 11], 0, 13),  # leading axis, padded edge chunk (37 = 12*3 + 1)
        ((3, 53), "<f8", 100, [1, 9], 1, 18),  # split along axis 1, padded edge (53 = 5*9 + 8)
        ((2, 3, 40), ">i2", 20, [1, 1, 10], 2, 24),  # innermost axis of a big-endian array
        ((1000,), "bfloat16", 300, [143], 0, 7),  # 2-byte raw dtype, padded edge (1000 = 6*143 + 142)
        ((4, 6), "<U3", 30, [1, 2, 12], 1, 12),  # str: stored as uint8 with a trailing itemsize axis
    ],
)
def test_chunked_layouts_roundtrip(backend, shape, dtype, chunk_bytes, chunk_shape, axis, n_objects):
    if backend.is_object_store and shape != (3, 53):
        pytest.skip("layouts are storage-independent; one multi-chunk case per object store")
    dt = np.dtype(getattr(ml_dtypes, dtype)) if hasattr(ml_dtypes, dtype) else np.dtype(dtype)
    rng = np.random.default_rng(3)
    a = random_array(dt, shape, rng)
    state = {"a": a, "fortran": np.asfortranarray(a), "strided": np.concatenate([a, a], axis=-1)[..., ::2]}
    opts = cloudckpt.StoreOptions(pack_threshold=1, chunk_bytes=chunk_bytes)
    url = cloudckpt.save(backend.url("c"), state, storage_options=backend.storage_options, options=opts)
    m = _manifest(backend, url)
    rec = m["arrays"][0]["chunked"]
    assert rec["chunk_shape"] == chunk_shape and rec["axis"] == axis
    lo, hi = rec["objects"]
    assert hi - lo == n_objects
    chunk_size = math.prod(chunk_shape) * (2 if dtype == "bfloat16" else (1 if dt.kind == "U" else dt.itemsize))
    assert {o["size"] for o in m["objects"][lo:hi]} == {chunk_size}  # padded edge chunks are full size
    out = cloudckpt.load(url, storage_options=backend.storage_options)
    for k in state:
        assert bits_equal(state[k], out[k]), k
    part = cloudckpt.load(url, storage_options=backend.storage_options, keys=["strided"])
    assert list(part) == ["strided"] and bits_equal(state["strided"], part["strided"])


def test_pack_spanning_many_chunks_and_partial_loads(backend):
    rng = np.random.default_rng(4)
    sizes = [0, 1, 3, 17, 64, 5, 130, 2, 0, 33, 250, 7]
    state = {f"t{i}": rng.standard_normal(n).astype("<f4") for i, n in enumerate(sizes)}
    state["t_be"] = np.arange(11, dtype=">i8")
    state["t_bf16"] = np.arange(9).astype(ml_dtypes.bfloat16)
    opts = cloudckpt.StoreOptions(pack_threshold=1 << 20, chunk_bytes=200)  # tensors straddle chunk borders
    so = backend.storage_options
    url = cloudckpt.save(backend.url("c"), state, storage_options=so, options=opts)
    assert_same(state, cloudckpt.load(url, storage_options=so))
    storage = open_storage(url, so)  # one client for the partial loads
    m = checkpoint_io.read_manifest(storage)
    assert all("packed" in a for a in m["arrays"])
    lo, hi = m["pack"]["objects"]
    assert hi - lo > 10
    for k in ("t0", "t6", "t10", "t_be", "t_bf16"):  # empty, straddling, largest, big-endian, raw dtype
        assert_same({k: state[k]}, checkpoint_io.read_state(storage, m, [k]))
    assert_same({"t2": state["t2"], "t9": state["t9"]}, checkpoint_io.read_state(storage, m, ["t9", "t2"]))


def test_partial_load_reads_only_the_requested_bytes(backend):
    rng = np.random.default_rng(5)
    state = {
        "big": rng.standard_normal(1 << 19).astype("<f4"),  # 2 MiB, its own array
        "big2": rng.standard_normal((256, 1024)).astype("<f4"),  # 1 MiB, its own array
        "many": [rng.standard_normal(1000).astype("<f4") for _ in range(50)],  # 200 kB in the pack
        "small": np.arange(10, dtype="<f8"),
        "step": 12,
    }
    opts = cloudckpt.StoreOptions(pack_threshold=1 << 18, chunk_bytes=1 << 18)
    so = backend.storage_options
    url = cloudckpt.save(backend.url("c"), state, storage_options=so, options=opts)
    total = cloudckpt.info(url, storage_options=so).stored_bytes

    storage = open_storage(url, so)
    manifest = checkpoint_io.read_manifest(storage)

    def load(keys):
        before = storage.stats.bytes_read
        out = checkpoint_io.read_state(storage, manifest, keys)
        return out, storage.stats.bytes_read - before

    out, nread = load(None)
    assert_same(state, out)
    assert nread >= sum(a.nbytes for a in [state["big"], state["big2"], *state["many"]])

    out, nread = load(["small", "step"])
    assert_same({"small": state["small"], "step": 12}, out)
    assert nread <= 1024, f"read {nread} bytes of {total} for an 80-byte tensor"

    out, nread = load(["step"])
    assert out == {"step": 12} and nread == 0

    out, nread = load(["big2"])
    assert_same({"big2": state["big2"]}, out)
    assert state["big2"].nbytes <= nread <= state["big2"].nbytes + 1024

    out, nread = load(["many/3"])
    assert_same({"many": [state["many"][3]]}, out)
    assert nread <= 2 * 4000


# ---------------------------------------------------------------- property test

SCALAR_DTYPES = [np.dtype(d) for d in ("|b1", "|i1", "<i4", ">i8", "<u2", "<f2", "<f4", ">f8", "<c8", "<M8[s]", "|S2", "<U2")]
SCALAR_DTYPES += [np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn)]


@st.composite
def arrays(draw):
    dt = draw(st.sampled_from(SCALAR_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    seed = draw(st.integers(0, 2**32 - 1))
    a = random_array(dt, shape, np.random.default_rng(seed))
    layout = draw(st.sampled_from(["c", "f", "t", "strided", "scalar"]))
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "t":
        a = a.T
    elif layout == "strided" and a.ndim:
        a = a[::2]
    elif layout == "scalar":
        return a.reshape(-1)[0] if a.size else a
    return a


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**60, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)
dict_keys = st.one_of(st.text(max_size=6), st.integers(-3, 2**66))
trees = st.recursive(
    st.one_of(json_leaves, arrays()),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(dict_keys, children, max_size=4),
    ),
    max_leaves=12,
)
option_sets = st.sampled_from([
    None,
    cloudckpt.StoreOptions(pack_threshold=0, chunk_bytes=16),
    cloudckpt.StoreOptions(pack_threshold=48, chunk_bytes=24),
    cloudckpt.StoreOptions(pack_threshold=1 << 20, chunk_bytes=7),
])
_counter = itertools.count()


def _same_leafwise(a, b):
    """assert_same, but arrays compare as their C-ordered bytes (layout is not kept)."""
    if isinstance(a, np.ndarray):
        assert type(b) is np.ndarray and bits_equal(a, b)
    elif isinstance(a, dict):
        assert type(b) is dict and [(type(k), k) for k in a] == [(type(k), k) for k in b]
        for k in a:
            _same_leafwise(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same_leafwise(x, y)
    elif isinstance(a, float) and not isinstance(a, np.generic):
        assert type(b) is float and struct.pack("<d", a) == struct.pack("<d", b)
    else:
        assert_same(a, b)


@pytest.mark.parametrize("backend", ["local", "memory"], indirect=True)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(state=trees, options=option_sets)
def test_property_random_trees_roundtrip(backend, state, options):
    out = save_load(backend, state, options, name=f"h{next(_counter)}")
    _same_leafwise(state, out)
