"""JAX pytrees and NamedTuples through cloudckpt (the jax tests skip without jax).

- NamedTuples (optax states) are stored with their class and field names
  (format version 2) and load as plain tuples, or as their class when
  restored into a live target (numpy-only tests: they run without jax);
- jax arrays of every dtype jax has round-trip bit-exactly, bfloat16 and
  float8 included;
- ``load(framework="jax")``, ``load(target=)`` with shardings and
  ``jax.ShapeDtypeStruct`` targets, ``Checkpoint`` rebinding;
- optax: a restored optimizer state continues training identically.
"""

from __future__ import annotations

import json
import typing

import ml_dtypes
import numpy as np
import pytest

import cloudckpt
from cloudckpt.format.manifest import encode_manifest
from cloudckpt.storage import open_storage

try:
    import jax
    import jax.numpy as jnp
except ImportError:  # pragma: no cover - jax is optional
    jax = None  # type: ignore[assignment]
else:
    try:  # two CPU devices for the sharding tests, if no JAX computation ran yet in this process
        jax.config.update("jax_num_cpu_devices", 2)
    except (RuntimeError, AttributeError):  # computed already, or a jax without the option
        pass

needs_jax = pytest.mark.skipif(jax is None, reason="jax is not installed (pip install jax jaxlib)")

try:
    import optax
except ImportError:  # pragma: no cover - optax is optional
    optax = None


class Adam(typing.NamedTuple):
    count: typing.Any
    mu: typing.Any
    nu: typing.Any


class Empty(typing.NamedTuple):
    pass


# -- NamedTuples (numpy only) -------------------------------------------------------------------


def test_namedtuples_are_recorded_and_load_as_plain_tuples() -> None:
    state = {"opt": (Empty(), Adam(np.int32(3), {"w": np.ones(2)}, {"w": np.zeros(2)})), "plain": (1, 2)}
    url = cloudckpt.save("memory://nt-plain/c", state)
    manifest = json.loads(open_storage(url).read("manifest.json"))
    assert manifest["format_version"] == 2
    opt = manifest["tree"]["v"][0]
    assert opt["t"] == "tuple" and "namedtuple" not in opt
    assert opt["v"][0]["namedtuple"] == {"name": f"{__name__}.Empty", "fields": []}
    assert opt["v"][1]["namedtuple"] == {"name": f"{__name__}.Adam", "fields": ["count", "mu", "nu"]}

    out = cloudckpt.load(url)
    assert type(out["opt"][1]) is tuple and type(out["opt"][0]) is tuple and out["opt"][0] == ()
    count, mu, _ = out["opt"][1]
    assert count == 3 and type(count) is np.int32 and mu["w"].tolist() == [1, 1]
    # a state without NamedTuples (or tied tensors) stays format version 1
    assert cloudckpt.info(cloudckpt.save("memory://nt-plain/v1", {"t": (1, 2)})).format_version == 1


def test_namedtuples_are_rebuilt_when_restored_into_a_target() -> None:
    saved = Adam(np.int32(5), {"w": np.full(2, 7.0)}, [np.ones(3)])
    url = cloudckpt.Checkpoint(opt=saved, other=Empty()).write("memory://nt-target/c")
    live = Adam(np.int32(0), {"w": np.zeros(2)}, [np.zeros(3)])
    ckpt = cloudckpt.Checkpoint(opt=live, other=Empty())
    w, nu0 = live.mu["w"], live.nu[0]
    ckpt.read(url)
    assert type(ckpt.opt) is Adam and ckpt.opt.count == 5
    assert ckpt.opt.mu["w"] is w and w.tolist() == [7, 7] and ckpt.opt.nu[0] is nu0  # arrays in place

    out = cloudckpt.load(url, keys="opt", target={"opt": Adam(np.int32(0), {"w": np.zeros(2)}, [np.zeros(3)])})
    assert type(out["opt"]) is Adam and out["opt"].mu["w"].tolist() == [7, 7]
    with pytest.raises(ValueError, match="2 items here, 3 in the checkpoint"):
        cloudckpt.load(url, keys="opt", target={"opt": (np.int32(0), {"w": np.zeros(2)})})


@pytest.mark.parametrize(
    "namedtuple",
    [
        {"name": "", "fields": ["a", "b", "c"]},
        {"name": "X", "fields": ["a", "b"]},
        {"name": "X", "fields": [1, 2, 3]},
        "X",
        {"name": "X", "fields": ["a", "b", "c"], "code": "import os"},
    ],
    ids=["empty-name", "field-count", "field-type", "not-object", "extra-key"],
)
def test_malformed_namedtuple_fields_are_corrupt(namedtuple: typing.Any) -> None:
    url = cloudckpt.save(f"memory://nt-bad-{len(str(namedtuple))}-{id(namedtuple)}/c", {"t": Adam(1, 2, 3)})
    s = open_storage(url)
    m = json.loads(s.read("manifest.json"))
    m["tree"]["v"][0]["namedtuple"] = namedtuple
    s.delete(["manifest.json"])
    s.write("manifest.json", encode_manifest(m))
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="namedtuple"):
        cloudckpt.load(url)


def test_a_version_1_manifest_with_version_2_nodes_is_corrupt() -> None:
    url = cloudckpt.save("memory://nt-v1/c", {"t": Adam(1, 2, 3)})
    s = open_storage(url)
    m = json.loads(s.read("manifest.json"))
    m["format_version"] = 1
    s.delete(["manifest.json"])
    s.write("manifest.json", encode_manifest(m))
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="format_version 2"):
        cloudckpt.load(url)


# -- jax arrays ---------------------------------------------------------------------------------

JAX_DTYPES = [
    "bool", "int8", "int16", "int32", "uint8", "uint16", "uint32", "float16", "float32", "complex64",
    "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz",
    "float8_e3m4", "float8_e4m3", "float8_e8m0fnu", "int4", "uint4",
]  # fmt: skip


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) and name != "bool" else np.dtype(name)


def _random(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    if dtype == np.dtype(bool):
        return g.integers(0, 2, size=shape).astype(bool)
    if dtype.name in ("int4", "uint4"):
        return g.integers(-8 if dtype.name == "int4" else 0, 8, size=shape).astype(dtype)
    raw = g.integers(0, 256, size=(*shape, dtype.itemsize), dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


@needs_jax
@pytest.mark.parametrize("name", JAX_DTYPES)
def test_every_jax_dtype_round_trips_bit_exactly(name: str) -> None:
    dt = _np_dtype(name)
    try:
        arrays = {"big": jax.device_put(_random(dt, (40, 17), 1)), "small": jax.device_put(_random(dt, (3,), 2))}
    except (TypeError, ValueError) as exc:  # pragma: no cover - older jax
        pytest.skip(f"this jax has no {name}: {exc}")
    url = cloudckpt.save(f"memory://jax-dtype-{name}/c", arrays, options=cloudckpt.StoreOptions(pack_threshold=64, chunk_bytes=128))
    out = cloudckpt.load(url, framework="jax")
    for k, a in arrays.items():
        assert isinstance(out[k], jax.Array) and out[k].dtype == a.dtype and out[k].shape == a.shape, k
        assert np.asarray(out[k]).tobytes() == np.asarray(a).tobytes(), k


@needs_jax
def test_pytrees_round_trip_with_framework_jax() -> None:
    params = {"dense": [{"w": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.zeros(2)}], "scale": jnp.float32(2.0)}
    state = {"params": params, "opt": Adam(jnp.array(4), params, params), "step": 4, "rng": jax.random.PRNGKey(1)}
    url = cloudckpt.save("memory://jax-tree/c", state)
    out = cloudckpt.load(url, framework="jax")
    assert out["step"] == 4 and out["params"]["dense"][0]["w"].dtype == jnp.bfloat16
    assert type(out["opt"]) is tuple and int(out["opt"][0]) == 4
    assert jax.tree.structure(out["params"]) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves({**state, "opt": tuple(state["opt"])}), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # restored arrays are usable in jit
    assert float(jax.jit(lambda p: p["dense"][0]["w"].sum())(out["params"])) == 6.0


@needs_jax
def test_64_bit_arrays_are_not_narrowed() -> None:
    url = cloudckpt.save("memory://jax-x64/c", {"i": np.arange(3, dtype=np.int64) + 2**40, "f": np.ones(2, np.float32)})
    out = cloudckpt.load(url, framework="jax")
    if jax.config.jax_enable_x64:  # pragma: no cover - x64 mode
        assert out["i"].dtype == jnp.int64
    else:
        assert isinstance(out["i"], np.ndarray) and out["i"][0] == 2**40  # left as numpy, not truncated
    assert isinstance(out["f"], jax.Array)


@needs_jax
def test_typed_prng_keys_are_refused_naming_the_leaf() -> None:
    with pytest.raises(TypeError, match=r"'rng'.*key_data"):
        cloudckpt.save("memory://jax-key/c", {"rng": jax.random.key(0)})
    key = jax.random.key(3)
    url = cloudckpt.save("memory://jax-key/ok", {"rng": jax.random.key_data(key)})
    back = jax.random.wrap_key_data(cloudckpt.load(url, framework="jax")["rng"])
    assert (jax.random.key_data(back) == jax.random.key_data(key)).all()


@needs_jax
def test_restore_places_arrays_on_the_target_shardings() -> None:
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    params = {"w": jnp.arange(8.0).reshape(4, 2), "b": jnp.ones(2, jnp.bfloat16)}
    url = cloudckpt.save("memory://jax-shard/c", {"params": params, "opt": Adam(jnp.array(1), params, params)})

    mesh = Mesh(np.array(devices), ("x",))
    row = NamedSharding(mesh, PartitionSpec("x"))
    rep = NamedSharding(mesh, PartitionSpec())
    target_params = {
        "w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=row),
        "b": jax.device_put(jnp.zeros(2, jnp.bfloat16), rep),
    }
    target = {"params": target_params, "opt": Adam(jnp.array(0), target_params, target_params)}
    out = cloudckpt.load(url, target=target)
    assert type(out["opt"]) is Adam
    assert out["params"]["w"].sharding == row and out["params"]["b"].sharding == rep
    assert out["opt"].mu["w"].sharding == row
    np.testing.assert_array_equal(np.asarray(out["params"]["w"]), np.arange(8.0).reshape(4, 2))
    if len(devices) > 1:
        assert len(out["params"]["w"].addressable_shards) == len(devices)

    # one device or sharding for everything
    out = cloudckpt.load(url, framework="jax", device=devices[-1])
    assert out["params"]["w"].devices() == {devices[-1]}

    # a mismatch is refused before anything is placed
    bad = {"params": {"w": jax.ShapeDtypeStruct((2, 4), jnp.float32), "b": target_params["b"]}, "opt": target["opt"]}
    with pytest.raises(ValueError, match=r"'params/w'.*\(2, 4\)"):
        cloudckpt.load(url, target=bad)


@needs_jax
def test_checkpoint_rebinds_jax_arrays_and_the_manager_resumes(tmp_path) -> None:
    params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2, jnp.bfloat16)}
    opt_state = Adam(jnp.array(0), {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2, jnp.bfloat16)}, None)
    ckpt = cloudckpt.Checkpoint(params=params, opt_state=opt_state, step=0)
    manager = cloudckpt.CheckpointManager(ckpt, str(tmp_path), max_to_keep=2)
    ckpt.params = jax.tree.map(lambda x: x * 3, params)
    ckpt.opt_state = opt_state._replace(count=jnp.array(7))
    ckpt.step = 7
    manager.save()

    fresh = cloudckpt.Checkpoint(params=params, opt_state=opt_state, step=0)
    assert cloudckpt.CheckpointManager(fresh, str(tmp_path), max_to_keep=2).restore_or_initialize()
    assert fresh.step == 7 and type(fresh.opt_state) is Adam and int(fresh.opt_state.count) == 7
    assert isinstance(fresh.params["w"], jax.Array) and float(fresh.params["w"][0, 0]) == 3.0
    assert fresh.params["b"].dtype == jnp.bfloat16 and fresh.opt_state.nu is None


@needs_jax
@pytest.mark.skipif(optax is None, reason="optax is not installed (pip install optax)")
def test_optax_state_resumes_training_identically() -> None:
    def loss(p, x):
        return jnp.mean((x @ p["w"] + p["b"]) ** 2)

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 4))

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p, x)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    def run(p, s, n):
        out = []
        for _ in range(n):
            p, s, value = step(p, s)
            out.append(float(value))
        return p, s, out

    p0 = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    _, _, reference = run(p0, tx.init(p0), 8)
    p, s, first = run(p0, tx.init(p0), 4)
    url = cloudckpt.save("memory://jax-optax/c", {"params": p, "opt_state": s})
    restored = cloudckpt.load(url, target={"params": p0, "opt_state": tx.init(p0)})
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(s)
    _, _, rest = run(restored["params"], restored["opt_state"], 4)
    assert first + rest == reference


# -- sharded arrays in this process (more in tests/test_jax_sharded.py, with 8 devices) ----------


def _two_devices() -> list[typing.Any]:
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs 2 jax devices (jax started with 1 before this module set jax_num_cpu_devices)")
    return devices[:2]


@needs_jax
def test_sharded_arrays_are_stored_by_shards_and_restored_by_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import cloudckpt.frameworks.jax as cj

    devices = _two_devices()
    mesh = Mesh(np.array(devices), ("x",))
    rows, cols = NamedSharding(mesh, PartitionSpec("x")), NamedSharding(mesh, PartitionSpec(None, "x"))
    full = np.arange(48, dtype=np.float32).reshape(6, 8)
    w = jax.device_put(full, rows)

    assert isinstance(cj.to_leaf(w), np.ndarray)  # small: gathered (then packed)
    monkeypatch.setattr(cj, "GATHER_BELOW", 0)
    leaf = cj.to_leaf(w)
    assert isinstance(leaf, cloudckpt.ShardedArray) and leaf.local_boxes() == [((0, 0), (3, 8)), ((3, 0), (3, 8))]
    assert isinstance(cj.to_leaf(jax.device_put(full, NamedSharding(mesh, PartitionSpec()))), np.ndarray)  # replicated
    assert cj.wanted_boxes(jax.ShapeDtypeStruct((6, 8), np.float32, sharding=cols)) == [((0, 0), (6, 4)), ((0, 4), (6, 4))]
    assert cj.wanted_boxes(jnp.zeros((6, 8))) is None  # uncommitted: the whole array, placed freely
    assert cj.wanted_boxes(jax.ShapeDtypeStruct((6, 8), np.float32)) is None

    # pack_threshold=0: cloudckpt's own gathering of small sharded arrays (< 1 MiB) is off too
    url = cloudckpt.save("memory://jax-sharded-inproc/c", {"w": w}, options=cloudckpt.StoreOptions(pack_threshold=0))
    rec = json.loads(open_storage(url).read("manifest.json"))["arrays"][0]
    assert rec["chunked"]["axis"] is None and rec["chunked"]["chunk_shape"] == [3, 8]
    out = cloudckpt.load(url, target={"w": jax.ShapeDtypeStruct((6, 8), np.float32, sharding=cols)})["w"]
    assert out.sharding == cols and np.asarray(out).tobytes() == full.tobytes()
    assert [np.asarray(s.data).tolist() for s in out.addressable_shards] == [full[:, :4].tolist(), full[:, 4:].tolist()]
    assert cloudckpt.load(url)["w"].tobytes() == full.tobytes()

    with pytest.raises(ValueError, match="cannot have the sharding"):  # 5 columns over 2 devices
        cloudckpt.load(url, target={"w": jax.ShapeDtypeStruct((6, 5), np.float32, sharding=cols)})


@needs_jax
def test_rebind_takes_regions_of_loaded_pieces() -> None:
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import cloudckpt.frameworks.jax as cj

    devices = _two_devices()
    cols = NamedSharding(Mesh(np.array(devices), ("x",)), PartitionSpec(None, "x"))
    full = np.arange(24, dtype=np.float32).reshape(3, 8)
    target = jax.ShapeDtypeStruct(full.shape, full.dtype, sharding=cols)
    whole = cloudckpt.ShardedArray(full.shape, full.dtype, [((0, 0), full)])  # one piece holding both boxes
    out = cj._rebind(target, whole)
    assert out.sharding == cols and np.asarray(out).tobytes() == full.tobytes()
    half = cloudckpt.ShardedArray(full.shape, full.dtype, [((0, 0), full[:, :4])])
    with pytest.raises(ValueError, match="do not hold it"):
        cj._rebind(target, half)
    # a ShardedArray restored into an unsharded target is assembled
    assert np.asarray(cj._rebind(jnp.zeros((3, 8)), whole)).tobytes() == full.tobytes()


@needs_jax
def test_jax_group_is_single_process_without_jax_distributed() -> None:
    from cloudckpt.distributed.group import SINGLE
    from cloudckpt.frameworks.jax_group import JaxGroup, group_for

    assert group_for() is SINGLE and group_for(5) is SINGLE
    with pytest.raises(ValueError, match=r"jax\.distributed is not initialized"):
        JaxGroup(5)
