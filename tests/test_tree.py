"""State trees: flatten/unflatten, key-name encoding, selection of partial paths."""

from __future__ import annotations

import json
import math
import struct
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cloudckpt
from cloudckpt.format.node_names import decode_name, encode_name, node_paths
from cloudckpt.format.tree import MAX_DEPTH, array_ids, flatten, format_path, parse_key_path, select, unflatten

# ---------------------------------------------------------------- helpers


def _bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def assert_same(a, b, where="<root>"):
    """Exact equality: container types, key order and key types, leaf types, bits."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b], where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, float):
        assert _bits(a) == _bits(b), where
    else:
        assert a == b, where


def roundtrip_json(node):
    """The node as it comes back from the manifest's JSON."""
    return json.loads(json.dumps(node, allow_nan=False))


def rebuild(state):
    node, leaves = flatten(state)
    return unflatten(roundtrip_json(node), {i: leaf.array for i, leaf in enumerate(leaves)})


# ---------------------------------------------------------------- flatten / unflatten

NASTY_FLOATS = [0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), float("inf") - float("inf"),
                5e-324, sys.float_info.max, 0.1]


def test_flatten_splits_structure_from_array_leaves_in_tree_order():
    a, b, c = np.zeros(2), np.ones(3), np.float32(2)
    state = {"z": a, "m": [1, {"x": b}], 7: (c, "s")}
    node, leaves = flatten(state)
    assert [leaf.path for leaf in leaves] == [("z",), ("m", 1, "x"), (7, 0)]
    assert leaves[0].array is a and leaves[1].array is b  # no copies
    assert [leaf.scalar for leaf in leaves] == [False, False, True]
    assert node["k"] == ["z", "m", 7]
    assert array_ids(node) == [0, 1, 2]
    json.dumps(node, allow_nan=False)  # the structure is plain JSON


@pytest.mark.parametrize(
    "state",
    [
        None,
        True,
        0,
        -(2**53) - 1,
        2**53 + 1,
        2**64,
        -(10**300),
        10**5000,  # beyond Python's int <-> decimal str limit
        "",
        "ünïcødé \x00 \n",
        *NASTY_FLOATS,
        [],
        (),
        {},
        [[], (), {}],
        {"b": 1, "a": 2, "c": 3},  # key order kept
        {1: "int", "1": "str", -5: None, 2**70: "big int key"},
        ([1, (2, [3])],),
        {"": {"": [None]}},
    ],
    ids=lambda x: type(x).__name__,
)
def test_json_structure_roundtrip_is_exact(state):
    assert_same(state, rebuild(state))


def test_negative_nan_and_nan_payloads_keep_their_bits():
    neg_nan = float("inf") - float("inf")  # x86 default NaN: sign bit set
    payload = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000123))[0]
    for x in (neg_nan, payload, float("nan")):
        assert math.isnan(x)
        assert _bits(rebuild(x)) == _bits(x)


def test_array_leaves_and_numpy_scalars():
    state = {"a": np.arange(3), "s": np.float32(1.5), "u": np.str_("hi"), "b": np.bool_(True)}
    out = rebuild(state)
    assert out["a"] is state["a"]
    for k in ("s", "u", "b"):
        assert type(out[k]) is type(state[k]), k
        assert out[k] == state[k]


@pytest.mark.parametrize(
    ("state", "culprit"),
    [
        ({"model": {"w": object()}}, "'model/w'"),
        ({"opt": [1, {"x": {1, 2}}]}, "['opt'][1]['x']"),
        ({"a": np.array([1, None], dtype=object)}, "'a'"),
        ({"a": np.zeros(2, dtype=[("x", "f4"), ("y", "i4")])}, "'a'"),
        ({"a": np.zeros(2, dtype="V8")}, "'a'"),
        ({"a": b"bytes"}, "'a'"),
        ({"a": 1j}, "'a'"),
        ({"a": np.ma.masked_array([1, 2])}, "'a'"),
        ({"k": {1.5: 1}}, "'k'"),
        ({"k": {None: 1}}, "'k'"),
        ({"k": {True: 1}}, "'k'"),
        ({"k": {("t",): 1}}, "'k'"),
        ({"k": {np.int64(1): 1}}, "'k'"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_unsupported_leaves_and_keys_raise_typeerror_naming_the_path(state, culprit):
    with pytest.raises(TypeError) as info:
        flatten(state)
    assert culprit in str(info.value)


def test_cycles_and_too_deep_nesting_are_refused():
    a: list = []
    a.append(a)
    with pytest.raises(ValueError, match="cycle"):
        flatten({"a": a})
    deep: dict = {}
    cur = deep
    for _ in range(MAX_DEPTH + 5):
        cur["d"] = {}
        cur = cur["d"]
    with pytest.raises(ValueError, match="nested deeper"):
        flatten(deep)
    ok: list = []
    cur = ok
    for _ in range(MAX_DEPTH - 1):
        cur.append([])
        cur = cur[0]
    assert_same(ok, rebuild(ok))


def test_shared_subtrees_are_not_cycles():
    shared = {"x": 1}
    state = {"a": shared, "b": shared, "c": [np.ones(1)] * 2}
    out = rebuild(state)
    assert out == {"a": {"x": 1}, "b": {"x": 1}, "c": [np.ones(1), np.ones(1)]}


def test_format_path():
    assert format_path(()) == "<root>"
    assert format_path(("model", "w")) == "'model/w'"
    assert format_path(("a/b", 0)) == "['a/b'][0]"


# ---------------------------------------------------------------- key name encoding

keys = st.one_of(st.text(), st.integers(min_value=-(2**70), max_value=2**70))


@settings(max_examples=400, deadline=None)
@given(keys)
def test_encode_name_is_a_valid_reversible_zarr_name(key):
    name = encode_name(key)
    assert name, "never empty"
    assert "/" not in name
    assert not name.startswith("__")
    assert not name.startswith("_"), "names starting with '_' are cloudckpt's own (_pack, _root)"
    assert set(name) != {"."}, "'.' and '..' are not node names"
    assert name != "zarr.json", "would collide with the group's metadata document"
    assert "\\" not in name and not any(ord(c) < 0x20 for c in name)
    back = decode_name(name)
    assert type(back) is type(key) and back == key


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, unique_by=lambda k: (type(k), k), max_size=30))
def test_encode_name_is_injective_within_a_container(ks):
    names = [encode_name(k) for k in ks]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("key", "name"),
    [("w", "w"), ("b/x", "b%2Fx"), ("", "%"), ("%", "%25"), ("__init__", "%5F_init__"), ("_pack", "%5Fpack"),
     ("#1", "%231"), (1, "#1"), (-2, "#-2"), (".", "%2E"), ("..", "%2E%2E"), ("a.b", "a.b"),
     ("zarr.json", "zarr%2Ejson"), ("layer.0.weight", "layer.0.weight"), ("ü", "ü"), ("a\x7fb", "a%7Fb"),
     ("x\n", "x%0A"), ("a\\b", "a%5Cb"), ("a_#", "a_#")],
)
def test_encode_name_examples(key, name):
    assert encode_name(key) == name
    assert decode_name(name) == key


def test_list_indices_are_plain_numbers():
    assert encode_name(3, in_list=True) == "3"


def test_colliding_keys_get_distinct_node_paths():
    state = {"b/x": np.zeros(1), "b": {"x": np.ones(1)}, 1: np.zeros(2), "1": np.zeros(3), "#1": np.zeros(4),
             "": np.zeros(5), "%": np.zeros(6), "l": [np.zeros(7)], "zarr.json": np.zeros(8),
             "_pack": np.zeros(9)}
    node, leaves = flatten(state)
    by_index = node_paths(node)
    paths = [by_index[i] for i in range(len(leaves))]
    assert len(set(paths)) == len(paths), paths
    assert paths[:2] == ["b%2Fx", "b/x"]
    assert "l/0" in paths
    assert not any(p == "_pack" or p.startswith("_pack/") for p in paths)
    # no node path is a prefix of another one's directory (a file and a dir of one name)
    for p in paths:
        assert not any(q.startswith(p + "/") for q in paths if q != p)


def test_a_whole_state_array_has_a_node_path():
    node, _leaves = flatten(np.arange(3))
    assert node_paths(node) == {0: "_root"}


def test_colliding_keys_stay_distinct_through_a_checkpoint(backend):
    state = {"b/x": np.arange(40.0), "b": {"x": np.arange(40.0) + 1}, 1: np.arange(40) * 2, "1": np.arange(40) * 3,
             "zarr.json": np.arange(40) * 4, "x": {"zarr.json": np.arange(40) * 5}, "_pack": np.arange(40) * 6}
    opts = cloudckpt.StoreOptions(pack_threshold=100)  # every array here is its own zarr array
    url = cloudckpt.save(backend.url("c"), state, storage_options=backend.storage_options, options=opts)
    assert_same(state, cloudckpt.load(url, storage_options=backend.storage_options))
    info = cloudckpt.info(url, storage_options=backend.storage_options)
    zpaths = [leaf["zarr_path"] for leaf in info.leaves]
    assert all(leaf["stored_as"] == "array" for leaf in info.leaves)
    assert len(set(zpaths)) == len(zpaths)
    part = cloudckpt.load(url, storage_options=backend.storage_options, keys=[("b/x",), "b/x", (1,)])
    assert_same({"b/x": state["b/x"], "b": {"x": state["b"]["x"]}, 1: state[1]}, part)


# ---------------------------------------------------------------- select / partial paths


@pytest.fixture
def tree():
    state = {
        "model": {"w": np.zeros(2), "b": np.ones(2), "a/b": 5},
        "opt": {"state": {0: {"m": np.ones(1)}, 1: {"m": np.zeros(1)}}, "lr": 0.1},
        "hist": [10, np.arange(2), (20, 30)],
        "7": "str seven",
        7: "int seven",
    }
    node, leaves = flatten(state)
    return state, roundtrip_json(node), {i: leaf.array for i, leaf in enumerate(leaves)}


def _sel(tree, *paths):
    _, node, arrays = tree
    pruned = select(node, [parse_key_path(p) for p in paths])
    return unflatten(pruned, {i: arrays[i] for i in array_ids(pruned)})


def test_parse_key_path():
    assert parse_key_path("model/w") == ("model", "w")
    assert parse_key_path("/model//w/") == ("model", "w")
    assert parse_key_path(("a/b", 0)) == ("a/b", 0)
    assert parse_key_path(["a", 1]) == ("a", 1)
    with pytest.raises(ValueError):
        parse_key_path("")
    with pytest.raises(ValueError):
        parse_key_path("/")
    with pytest.raises(TypeError):
        parse_key_path(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_key_path(("a", 1.5))  # type: ignore[arg-type]


def test_select_subtrees_keep_their_places(tree):
    state = tree[0]
    out = _sel(tree, "model/w", "opt/lr")
    assert list(out) == ["model", "opt"]
    assert list(out["model"]) == ["w"] and out["model"]["w"] is state["model"]["w"]
    assert out["opt"] == {"lr": 0.1}


def test_select_keeps_tree_order_not_request_order(tree):
    out = _sel(tree, "opt/lr", "model/b", "model/w")
    assert list(out) == ["model", "opt"]
    assert list(out["model"]) == ["w", "b"]


def test_select_int_keys_by_int_or_by_text(tree):
    by_int = _sel(tree, ("opt", "state", 1))
    by_text = _sel(tree, "opt/state/1")
    for out in (by_int, by_text):
        assert list(out["opt"]["state"]) == [1]
        assert type(next(iter(out["opt"]["state"]))) is int
        assert np.array_equal(out["opt"]["state"][1]["m"], np.zeros(1))


def test_select_str_key_that_looks_like_an_int_prefers_the_str(tree):
    assert _sel(tree, "7") == {"7": "str seven"}
    assert _sel(tree, (7,)) == {7: "int seven"}


def test_select_key_containing_slash_needs_a_tuple(tree):
    assert _sel(tree, ("model", "a/b")) == {"model": {"a/b": 5}}
    with pytest.raises(KeyError, match="model"):
        _sel(tree, "model/a/b")


def test_select_list_and_tuple_items(tree):
    out = _sel(tree, "hist/2/1", "hist/0")
    assert out == {"hist": [10, (30,)]}
    assert type(out["hist"][1]) is tuple


def test_select_overlapping_and_duplicate_paths(tree):
    state = tree[0]
    out = _sel(tree, "model", "model/w", "model")
    assert list(out["model"]) == ["w", "b", "a/b"]
    out = _sel(tree, "model/w", "model")
    assert list(out["model"]) == ["w", "b", "a/b"]
    assert out["model"]["b"] is state["model"]["b"]


def test_select_missing_key_names_it(tree):
    with pytest.raises(KeyError) as info:
        _sel(tree, "model/nope")
    assert "nope" in str(info.value)
    with pytest.raises(KeyError, match="hist"):
        _sel(tree, "hist/9")
    with pytest.raises(KeyError):
        _sel(tree, "model/w/deeper")


def test_select_prunes_array_references(tree):
    _, node, _ = tree
    pruned = select(node, [("model", "b")])
    assert array_ids(pruned) == [1]
