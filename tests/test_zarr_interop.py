"""Plain zarr-python, without cloudckpt, reads every tensor of a checkpoint.

Only ``cloudckpt.save``/``cloudckpt.info`` (to write and to find the data
group) come from cloudckpt; the reading side below uses zarr, numpy and
ml_dtypes alone, as a user without cloudckpt installed would.

``test_what_zarr_shows_of_a_small_model`` is what README.md, docs/index.md
and docs/quickstart.md say a user sees with ``zarr.open_group``: with the
default options, tensors under 16 MiB are one ``_pack`` uint8 array; with
``StoreOptions(pack_threshold=0)``, one array per tensor at its key path.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
import zarr

import cloudckpt

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zarr: consolidated metadata is not in the v3 spec


def logical_dtype(name: str) -> np.dtype:
    """A dtype from its name in the attributes (numpy's dtype.str, or an ml_dtypes name)."""
    if hasattr(ml_dtypes, name):
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def little(dt: np.dtype) -> np.dtype:
    return dt.newbyteorder("<") if dt.byteorder == ">" else dt


def from_stored(stored: np.ndarray, dtype_name: str, shape) -> np.ndarray:
    """The logical array from the bytes zarr returns (stored little-endian, maybe as raw uints)."""
    dt = little(logical_dtype(dtype_name))
    return np.ascontiguousarray(stored).reshape(-1).view(np.uint8).view(dt).reshape(tuple(shape))


def read_with_zarr(data_url: str, storage_options, use_consolidated: bool) -> tuple[dict, dict]:
    """({path: array} of the arrays stored on their own, {path: array} of the packed ones)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(data_url, mode="r", storage_options=storage_options, use_consolidated=use_consolidated)
    own: dict = {}
    packed: dict = {}
    for node_path, arr in _all_arrays(group):
        attrs = arr.attrs["cloudckpt"]
        if node_path == "_pack":
            data = arr[...]
            assert data.dtype == np.uint8 and data.ndim == 1
            for entry in attrs["packed"]:
                raw = data[entry["offset"] : entry["offset"] + entry["nbytes"]]
                packed[tuple(entry["path"])] = from_stored(raw, entry["dtype"], entry["shape"])
        else:
            path = tuple(attrs["path"])
            stored = arr[...]
            shape = stored.shape
            dt = logical_dtype(attrs["dtype"])
            if stored.dtype == np.uint8 and dt.itemsize > 1 and not hasattr(ml_dtypes, attrs["dtype"]):
                shape = shape[:-1]  # raw bytes with a trailing itemsize axis
            own[path] = from_stored(stored, attrs["dtype"], shape)
    return own, packed


def _all_arrays(group, prefix=""):
    for name, member in group.members():
        path = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            yield path, member
        else:
            yield from _all_arrays(member, path + "/")


def leaves(state, path=()):
    if isinstance(state, dict):
        for k, v in state.items():
            yield from leaves(v, (*path, k))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from leaves(v, (*path, i))
    elif isinstance(state, (np.ndarray, np.generic)):
        yield path, np.asarray(state)


def make_state():
    rng = np.random.default_rng(7)
    big = rng.standard_normal((9, 40)).astype("<f4")
    return {
        "model": {
            "w": big,  # chunked along axis 0 with a padded edge
            "wide": rng.standard_normal((2, 100)).astype(">f8"),  # chunked along axis 1, big-endian
            "bf16": big.astype(ml_dtypes.bfloat16),
            "fp8": big.astype(ml_dtypes.float8_e5m2),
            "layer.0.bias": np.arange(3, dtype="<i2"),  # packed
        },
        "weird keys": {
            "b/x": np.arange(30, dtype="<i8"),
            "b": {"x": np.arange(30, dtype="<u8")},
            "%": np.ones(20, "<f8"),
            "": np.zeros(20, "<f8"),
            "zarr.json": np.full(20, 3, "<i8"),
            "_pack": np.full(20, 4, "<i8"),
            "__dunder__": np.full(20, 5, "<i8"),
            "ünï cødé": np.full(20, 6, "<i8"),
            7: np.full(20, 7, "<i8"),
            "7": np.full(20, 8, "<i8"),
        },
        "opt": [np.arange(40, dtype="<c16"), (np.array(2.5), np.zeros((3, 0, 2), "<f4"))],
        "misc": {
            "str": np.array(["alpha", "β", "🙂🙂"] * 5),
            "dates": np.arange(20).astype("<M8[D]"),
            "bool": np.arange(100) % 3 == 0,
            "ld": np.arange(10, dtype=np.longdouble),
            "fortran": np.asfortranarray(big[:, :5]),
            "scalar": np.float32(1.25),
            "tiny": np.arange(2, dtype=">i4"),
        },
        "step": 3,
    }


@pytest.mark.parametrize("backend", ["local", "memory", "s3"], indirect=True)
def test_zarr_python_reads_every_tensor(backend):
    b = backend
    state = make_state()
    opts = cloudckpt.StoreOptions(pack_threshold=64, chunk_bytes=160)
    url = cloudckpt.save(b.url("ckpt-1"), state, storage_options=b.storage_options, options=opts)
    info = cloudckpt.info(url, storage_options=b.storage_options)
    expected = dict(leaves(state))
    stored_as = {tuple(leaf["path"]): leaf["stored_as"] for leaf in info.leaves}

    for use_consolidated in (True, False):  # one request for all metadata, or a zarr.json per node
        own, packed = read_with_zarr(info.data_url, b.storage_options, use_consolidated)
        assert set(own) == {p for p, s in stored_as.items() if s == "array"}
        assert set(packed) == {p for p, s in stored_as.items() if s == "packed"}
        assert set(own) | set(packed) == set(expected)
        assert len(own) >= 15 and len(packed) >= 3  # both kinds are exercised
        for path, want in expected.items():
            got = own[path] if path in own else packed[path]
            want_le = want.astype(little(want.dtype))
            assert got.dtype == want_le.dtype and got.shape == want.shape, (use_consolidated, path)
            assert got.tobytes() == want_le.tobytes(), (use_consolidated, path)


def test_zarr_sees_native_dtypes_as_themselves(local_backend):
    state = {"f4": np.arange(300, dtype=">f4"), "i8": np.arange(300, dtype="<i8"), "c8": np.ones(300, "<c8")}
    url = cloudckpt.save(local_backend.url("c"), state, options=cloudckpt.StoreOptions(pack_threshold=0))
    group = zarr.open_group(cloudckpt.info(url).data_url, mode="r")
    for k, a in state.items():
        z = group[k]
        assert z.dtype == little(a.dtype) and z.shape == a.shape
        np.testing.assert_array_equal(z[...], a)
        assert z.attrs["cloudckpt"]["path"] == [k]
    # a slice reads like any zarr array
    np.testing.assert_array_equal(group["f4"][10:20], state["f4"][10:20])


def test_packed_tensors_need_only_the_pack_and_its_attributes(local_backend):
    state = {"a": np.arange(5, dtype="<f8"), "b": [np.int16(3), np.zeros(0, "<f4")], "c": {"d": np.ones((2, 2), ">i4")}}
    url = cloudckpt.save(local_backend.url("c"), state)
    group = zarr.open_group(cloudckpt.info(url).data_url, mode="r")
    names = [name for name, _ in group.members()]
    assert names == ["_pack"], names  # nothing but the pack
    pack = group["_pack"]
    table = pack.attrs["cloudckpt"]["packed"]
    data = pack[...]
    got = {tuple(e["path"]): from_stored(data[e["offset"] : e["offset"] + e["nbytes"]], e["dtype"], e["shape"])
           for e in table}
    assert got.keys() == {("a",), ("b", 0), ("b", 1), ("c", "d")}
    np.testing.assert_array_equal(got[("a",)], state["a"])
    assert got[("b", 0)].shape == () and got[("b", 0)] == 3
    assert got[("b", 1)].shape == (0,)
    np.testing.assert_array_equal(got[("c", "d")], state["c"]["d"])


def test_what_zarr_shows_of_a_small_model(local_backend):
    """The statement of README.md and docs/index.md, as a user would check it."""
    model = {"w": np.ones((64, 32), "<f4"), "b": np.zeros(32, "<f4"), "norm": np.ones(32, ml_dtypes.bfloat16)}
    state = {"model": model, "step": 3}

    # default options: every tensor under 16 MiB is packed into one flat uint8 array
    assert cloudckpt.StoreOptions().pack_threshold == 16 * 2**20
    url = cloudckpt.save(local_backend.url("default"), state)
    group = zarr.open_group(cloudckpt.info(url).data_url, mode="r")
    assert [(name, type(node)) for name, node in group.members(max_depth=None)] == [("_pack", zarr.Array)]
    pack = group["_pack"]
    assert pack.dtype == np.uint8 and pack.ndim == 1
    table = {tuple(e["path"]): e for e in pack.attrs["cloudckpt"]["packed"]}  # offset, nbytes, dtype, shape
    assert set(table) == {("model", "w"), ("model", "b"), ("model", "norm")}  # "step" is JSON in the manifest
    e = table[("model", "w")]
    w = from_stored(pack[e["offset"] : e["offset"] + e["nbytes"]], e["dtype"], e["shape"])
    np.testing.assert_array_equal(w, model["w"])

    # a tensor of 16 MiB or more is an array of its own, even with the default options
    big = {"model": {**model, "embed": np.zeros((4096, 1024), "<f4")}}
    group = zarr.open_group(cloudckpt.info(cloudckpt.save(local_backend.url("big"), big)).data_url, mode="r")
    assert sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)) == [
        "_pack",
        "model/embed",
    ]

    # pack_threshold=0: one zarr array per tensor, at its key path, in its own dtype when zarr has it
    url = cloudckpt.save(local_backend.url("unpacked"), state, options=cloudckpt.StoreOptions(pack_threshold=0))
    group = zarr.open_group(cloudckpt.info(url).data_url, mode="r")
    arrays = {name: node for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}
    assert sorted(arrays) == ["model/b", "model/norm", "model/w"]
    assert group["model/w"].dtype == np.float32 and group["model/w"].shape == (64, 32)
    np.testing.assert_array_equal(group["model/w"][...], model["w"])
    # a dtype zarr does not know (bfloat16, float8) is stored as the unsigned int of its size, named in the attributes
    norm = group["model/norm"]
    assert norm.dtype == np.uint16 and norm.attrs["cloudckpt"] == {"path": ["model", "norm"], "dtype": "bfloat16"}
    np.testing.assert_array_equal(norm[...].view(ml_dtypes.bfloat16), model["norm"])
