"""Sharded ``jax.Array``s: saved shard by shard, restored into any sharding.

Every test runs in fresh Python processes (this file run as a script): the
number of CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``)
must be set before jax starts, and the test session may have started jax with
one or two devices already.

One process, 8 CPU devices:

- arrays sharded by ``NamedSharding`` over meshes (8,), (4, 2) and (2, 4) with
  many ``PartitionSpec``s (partly replicated axes, both mesh axes on one
  dimension, transposed axes, empty arrays) are saved without the whole array
  ever being gathered (``__array__`` of a sharded array is never called; the
  stored layout is a zarr grid whose chunks tile the shards), load whole with
  ``cloudckpt.load`` and with zarr-python, and restore bit-exactly into
  targets with every other sharding (other meshes, other specs, replicated,
  one device, uncommitted, ``ShapeDtypeStruct``);
- small sharded arrays are gathered and packed (``GATHER_BELOW``), large ones
  are not;
- arrays stored in uneven or non-grid layouts (as torch ``DTensor``s save
  them; jax itself refuses uneven shardings) restore into jax shardings;
- an optax state of sharded parameters resumes training identically through
  a ``CheckpointManager`` with async save, and restores into other shardings.

Two processes (``jax.distributed`` on 127.0.0.1, 4 CPU devices each, gloo):

- global arrays sharded across the processes are saved by both processes
  with a :class:`~cloudckpt.frameworks.jax_group.JaxGroup` (each writes its
  own shards) and restored into other global shardings, through
  ``cloudckpt.save``/``load``, ``Checkpoint.write``/``read`` and a manager;
  optax training across both processes resumes identically;
- a process that does not join a collective makes the other raise
  ``CheckpointError`` after the timeout, not hang, and the group stays usable.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax_spec = pytest.importorskip("jax", reason="jax is not installed (pip install jax jaxlib)")

HERE = Path(__file__).resolve()
TIMEOUT = 420


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(name: str, *args: str, devices: int = 8) -> None:
    """Run ``child_<name>(*args)`` of this file in a fresh process with ``devices`` CPU devices."""
    proc = subprocess.run(
        [sys.executable, str(HERE), name, *args], env=_env(devices), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, f"child {name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    assert f"child {name} ok" in proc.stdout, proc.stdout[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_processes(name: str, directory: str, n: int = 2, devices: int = 4) -> None:
    """Run ``child_<name>(process_id, n, port, directory)`` in ``n`` processes of one jax.distributed job."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE), name, str(i), str(n), port, directory],
            env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(n)
    ]
    outs = []
    deadline = time.monotonic() + TIMEOUT
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, err = p.communicate()
        outs.append((p.returncode, out, err))
    report = "\n".join(f"--- process {i} (exit {rc})\n{out[-3000:]}\n{err[-6000:]}" for i, (rc, out, err) in enumerate(outs))
    assert all(rc == 0 for rc, _, _ in outs), report
    assert all(f"child {name} ok" in out for _, out, _ in outs), report


# -- the tests (each runs children) -----------------------------------------------------------


@pytest.mark.parametrize("mesh_shape", ["8", "4x2", "2x4"])
def test_sharded_arrays_save_by_shards_and_restore_into_every_sharding(mesh_shape: str) -> None:
    _run("reshard", mesh_shape)


def test_small_sharded_arrays_are_gathered_and_packed_large_ones_are_not() -> None:
    _run("threshold")


def test_uneven_and_non_grid_layouts_restore_into_jax_shardings() -> None:
    _run("uneven")


def test_optax_state_of_sharded_params_resumes_training_identically() -> None:
    pytest.importorskip("optax", reason="optax is not installed (pip install optax)")
    _run("optax")


def test_two_processes_save_and_restore_global_arrays(tmp_path: Path) -> None:
    pytest.importorskip("optax", reason="optax is not installed (pip install optax)")
    _run_processes("multiprocess", str(tmp_path))


def test_jax_group_times_out_instead_of_hanging(tmp_path: Path) -> None:
    _run_processes("timeout", str(tmp_path))


# -- helpers of the children --------------------------------------------------------------------


def _spec(text: str) -> Any:
    """A PartitionSpec from text: ``"a,b"``, ``"-,x"`` (- for None), ``"(a b)"`` for both axes on one dimension."""
    from jax.sharding import PartitionSpec

    if not text:
        return PartitionSpec()
    parts: list[Any] = []
    for item in text.split(","):
        if item == "-":
            parts.append(None)
        elif item.startswith("("):
            parts.append(tuple(item.strip("()").split()))
        else:
            parts.append(item)
    return PartitionSpec(*parts)


def _meshes() -> dict[str, Any]:
    import jax
    from jax.sharding import Mesh

    devs = np.array(jax.devices())
    return {
        "8": Mesh(devs, ("x",)),
        "4x2": Mesh(devs.reshape(4, 2), ("a", "b")),
        "2x4": Mesh(devs.reshape(2, 4), ("a", "b")),
        "8rev": Mesh(devs[::-1].copy(), ("x",)),  # another device order
        "4sub": Mesh(devs[4:], ("x",)),  # half of the devices
    }


SPECS = {
    "8": ["x", "-,x", "x,-", ""],
    "4x2": ["a,b", "b,a", "a", "-,b", "(a b)", "(b a),-", "-,(a b)", ""],
    "2x4": ["a,b", "b,a", "-,a", "b", "(a b)", "-,(b a)"],
    "8rev": ["x", "-,x"],
    "4sub": ["x", "-,x"],
}


class NoGather:
    """Fails if the whole of a sharded jax array is copied to host (``np.asarray(array)``)."""

    def __enter__(self) -> NoGather:
        from jax._src.array import ArrayImpl

        self.cls = ArrayImpl
        self.orig = ArrayImpl.__array__
        self.gathered: list[tuple[int, ...]] = []
        orig, gathered = self.orig, self.gathered

        def spy(arr: Any, *args: Any, **kwargs: Any) -> Any:
            if len(arr.sharding.device_set) > 1 and not arr.is_fully_replicated:
                gathered.append(tuple(arr.shape))
            return orig(arr, *args, **kwargs)

        ArrayImpl.__array__ = spy
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cls.__array__ = self.orig
        assert not self.gathered, f"sharded arrays of shapes {self.gathered} were gathered whole"


class WrittenKeys:
    """Records the keys of the objects this process writes (``Storage.write``)."""

    def __enter__(self) -> WrittenKeys:
        from cloudckpt.storage import Storage

        self.cls = Storage
        self.orig = Storage.write
        self.keys: list[str] = []
        orig, keys = self.orig, self.keys

        def spy(storage: Any, key: str, *args: Any, **kwargs: Any) -> Any:
            keys.append(key)
            return orig(storage, key, *args, **kwargs)

        Storage.write = spy  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cls.write = self.orig  # type: ignore[method-assign]


def _record(url: str, path: str | tuple[Any, ...]) -> dict[str, Any]:
    """The manifest record of the array at ``path`` (``"a/b"`` or a tuple of keys)."""
    from cloudckpt.format.node_names import leaf_paths
    from cloudckpt.storage import open_storage

    key = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
    m = json.loads(open_storage(url).read("manifest.json"))
    paths = [tuple(p) for p in leaf_paths(m["tree"], len(m["arrays"]))]
    return dict(m["arrays"][paths.index(key)])


def _zarr_read(url: str, name: str) -> np.ndarray:
    """The bytes of array ``name`` read with zarr-python alone (from the manifest's description of it)."""
    import zarr

    import cloudckpt

    info = cloudckpt.info(url)
    leaf = next(leaf for leaf in info.leaves if leaf["path"] == [name])
    group = zarr.open_group(info.data_url, mode="r")
    if leaf["stored_as"] == "packed":
        pack, offset = leaf["zarr_path"].split("@")
        raw = np.asarray(group[pack][int(offset) : int(offset) + leaf["nbytes"]])
    else:
        raw = np.asarray(group[leaf["zarr_path"]][...])
    return np.ascontiguousarray(raw).view(np.uint8)


def _check_grid(url: str, path: str | tuple[Any, ...], arr: Any) -> None:
    """The stored layout of the sharded jax array ``arr``: one zarr array whose
    chunks tile the shards (no chunk larger than a shard or across two)."""
    rec = _record(url, path)
    shard = tuple(int(n) for n in arr.sharding.shard_shape(arr.shape))
    assert "chunked" in rec and rec["chunked"]["axis"] is None, rec
    chunk = tuple(rec["chunked"]["chunk_shape"])
    if math.prod(arr.shape):
        assert all(s % c == 0 for s, c in zip(shard, chunk, strict=True)), (chunk, shard)
        lo, hi = rec["chunked"]["objects"]
        assert hi - lo == math.prod(n // c for n, c in zip(arr.shape, chunk, strict=True))


def _targets(shape: tuple[int, ...], dtype: Any) -> dict[str, Any]:
    """Restore targets of every kind for an array of ``shape``: name -> target."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, SingleDeviceSharding

    out: dict[str, Any] = {}
    for mname, mesh in _meshes().items():
        for spec in SPECS[mname]:
            p = _spec(spec)
            if len(p) > len(shape):
                continue
            sharding = NamedSharding(mesh, p)
            try:
                sharding.shard_shape(shape)
            except ValueError:
                continue  # does not divide this shape
            out[f"{mname}:{spec}"] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    out["device5"] = jax.device_put(jnp.zeros(shape, dtype), SingleDeviceSharding(jax.devices()[5]))
    out["uncommitted"] = jnp.zeros(shape, dtype)
    out["plain"] = jax.ShapeDtypeStruct(shape, dtype)
    out["committed-array"] = jax.device_put(jnp.zeros(shape, dtype), NamedSharding(_meshes()["2x4"], _spec("b")))
    return out


def _check_restored(got: Any, target: Any, expected: np.ndarray, what: str) -> None:
    import jax

    assert isinstance(got, jax.Array), what
    assert got.shape == expected.shape and got.dtype == expected.dtype, (what, got.shape, got.dtype)
    sharding = getattr(target, "sharding", None)
    if sharding is not None and getattr(target, "committed", True):
        assert got.sharding == sharding, (what, got.sharding, sharding)
    if isinstance(target, jax.Array) and not target.committed:
        assert not got.committed, what
    for shard in got.addressable_shards:  # every device's shard, without gathering
        want = expected[shard.index]
        assert np.asarray(shard.data).tobytes() == np.ascontiguousarray(want).tobytes(), (what, shard.device, shard.index)


def _random(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    if dtype == np.dtype(bool):
        return g.integers(0, 2, size=shape).astype(bool)
    raw = g.integers(0, 256, size=(*shape, dtype.itemsize), dtype=np.uint8)
    return raw.view(dtype).reshape(shape)  # any bits (NaN payloads too): compared as bytes


# -- children ---------------------------------------------------------------------------------


def child_reshard(mesh_name: str) -> None:
    import jax
    import ml_dtypes
    from jax.sharding import NamedSharding

    import cloudckpt
    import cloudckpt.frameworks.jax as cj

    assert len(jax.devices()) == 8, jax.devices()
    cj.GATHER_BELOW = 0  # store every sharded array by shards, however small
    cloudckpt.distributed.collective.GATHER_BELOW = 0  # (cloudckpt's own gathering of arrays < 1 MiB too)
    mesh = _meshes()[mesh_name]
    tmp = tempfile.mkdtemp()
    cases = [((16, 8), np.dtype(np.float32)), ((8, 16, 3), np.dtype(ml_dtypes.bfloat16)), ((24, 8), np.dtype(np.int8))]
    n_restores = 0
    for k, spec in enumerate(SPECS[mesh_name]):
        for j, (shape, dtype) in enumerate(cases):
            p = _spec(spec)
            sharding = NamedSharding(mesh, p)
            full = _random(dtype, shape, 100 * k + j)
            arr = jax.device_put(full, sharding)
            empty = jax.device_put(np.zeros((0, 8), np.float32), NamedSharding(mesh, _spec(f"-,{mesh.axis_names[0]}")))
            state = {"w": arr, "e": empty, "step": k, "small": np.arange(3)}
            url = f"{tmp}/{k}-{j}"
            with NoGather():
                if (k + j) % 2:
                    url = cloudckpt.save(url, state)
                else:
                    url = cloudckpt.Checkpoint(**state).write(url)
            if not arr.is_fully_replicated:
                _check_grid(url, "w", arr)
            else:
                assert "chunked" in _record(url, "w") or "packed" in _record(url, "w")
            # (b) whole numpy arrays
            back = cloudckpt.load(url)
            assert back["w"].dtype == dtype and back["w"].tobytes() == full.tobytes(), spec
            assert back["e"].shape == (0, 8) and back["step"] == k
            # (c) zarr-python alone
            assert _zarr_read(url, "w").tobytes() == full.tobytes(), spec
            # (a) into every other sharding
            extra = {"save_counter": 0} if "save_counter" in back else {}  # Checkpoint.write stores it
            for name, target in _targets(shape, dtype).items():
                got = cloudckpt.load(url, target={"w": target, "e": empty, "step": 0, "small": np.zeros(3, int), **extra})
                _check_restored(got["w"], target, full, f"{mesh_name}:{spec} -> {name}")
                n_restores += 1
            # Checkpoint.read rebinds
            ckpt = cloudckpt.Checkpoint(w=jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(_meshes()["2x4"], _spec("a"))), e=empty, step=0, small=np.zeros(3, int))
            ckpt.read(url)
            _check_restored(ckpt.w, jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(_meshes()["2x4"], _spec("a"))), full, "Checkpoint.read")
    assert n_restores > 50, n_restores
    print(f"{n_restores} restores")


def child_threshold() -> None:
    import jax
    from jax.sharding import NamedSharding

    import cloudckpt
    import cloudckpt.frameworks.jax as cj

    assert cj.GATHER_BELOW == cloudckpt.StoreOptions().pack_threshold
    mesh = _meshes()["4x2"]
    sharding = NamedSharding(mesh, _spec("a,b"))
    small_full = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    big_full = np.random.default_rng(0).standard_normal((2048, 4096), dtype=np.float32)  # 32 MiB
    small, big = jax.device_put(small_full, sharding), jax.device_put(big_full, sharding)
    tmp = tempfile.mkdtemp()
    with NoGather():
        leaf = cj.to_leaf(big)
    assert isinstance(leaf, cloudckpt.ShardedArray) and leaf.local_nbytes == big_full.nbytes and len(leaf.pieces) == 8
    url = cloudckpt.save(f"{tmp}/c", {"small": small, "big": big})
    assert "packed" in _record(url, "small")
    _check_grid(url, "big", big)
    rec = _record(url, "big")
    assert tuple(rec["chunked"]["chunk_shape"]) != (2048, 4096)
    target = jax.ShapeDtypeStruct(big.shape, big.dtype, sharding=NamedSharding(_meshes()["2x4"], _spec("b,a")))
    out = cloudckpt.load(url, target={"small": jax.ShapeDtypeStruct(small.shape, small.dtype, sharding=NamedSharding(mesh, _spec("b"))), "big": target})
    _check_restored(out["big"], target, big_full, "big")
    np.testing.assert_array_equal(np.asarray(out["small"]), small_full)


def child_uneven() -> None:
    import jax
    from jax.sharding import NamedSharding

    import cloudckpt

    full = np.arange(24 * 6, dtype=np.float32).reshape(24, 6)
    tmp = tempfile.mkdtemp()
    # uneven rows as a torch DTensor saves them (9, 9, 6 over 3 ranks): a grid whose last chunk is padded
    cuts = [0, 9, 18, 24]
    uneven = cloudckpt.ShardedArray(full.shape, full.dtype, [((a, 0), full[a:b]) for a, b in itertools.pairwise(cuts)])
    # rows 8, 8, 6, 2: no regular grid, one zarr array per box
    cuts = [0, 8, 16, 22, 24]
    ragged = cloudckpt.ShardedArray(full.shape, full.dtype, [((a, 0), full[a:b]) for a, b in itertools.pairwise(cuts)])
    # a 2-D tiling that is not a grid (nested boxes)
    nested = cloudckpt.ShardedArray(
        full.shape, full.dtype, [((0, 0), full[:12, :]), ((12, 0), full[12:, :2]), ((12, 2), full[12:, 2:])]
    )
    # pack_threshold=0: stored by shards, not gathered and packed (they are small)
    url = cloudckpt.save(f"{tmp}/c", {"u": uneven, "r": ragged, "n": nested}, options=cloudckpt.StoreOptions(pack_threshold=0))
    assert _record(url, "u")["chunked"]["chunk_shape"] == [9, 6]
    assert "shards" in _record(url, "r")
    assert "shards" in _record(url, "n")
    for name, target in _targets(full.shape, full.dtype).items():
        out = cloudckpt.load(url, target={"u": target, "r": target, "n": target})
        for k in ("u", "r", "n"):
            _check_restored(out[k], target, full, f"{k} -> {name}")
    # jax itself refuses uneven shardings (so jax arrays always store as a grid)
    try:
        jax.device_put(np.zeros(10), NamedSharding(_meshes()["8"], _spec("x")))
    except ValueError:
        pass
    else:  # pragma: no cover - a jax that allows them
        print("this jax allows uneven shardings")


def _optax_trainer(tx: Any, x: Any) -> Callable[[Any, Any, int], tuple[Any, Any, list[float]]]:
    """``run(params, opt_state, n)``: n jitted steps of ``tx`` on the toy loss
    mean((x @ w + b)^2); returns the new params, state and the n losses."""
    import jax
    import jax.numpy as jnp
    import optax

    @jax.jit
    def step(p: Any, s: Any) -> Any:
        value, grads = jax.value_and_grad(lambda q: jnp.mean((x @ q["w"] + q["b"]) ** 2))(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    def run(p: Any, s: Any, n: int) -> tuple[Any, Any, list[float]]:
        out = []
        for _ in range(n):
            p, s, value = step(p, s)
            out.append(float(value))
        return p, s, out

    return run


def child_optax() -> None:
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding

    import cloudckpt
    import cloudckpt.frameworks.jax as cj

    cj.GATHER_BELOW = 0
    cloudckpt.distributed.collective.GATHER_BELOW = 0
    m42, m24 = _meshes()["4x2"], _meshes()["2x4"]
    shard_a = {"w": NamedSharding(m42, _spec("a,b")), "b": NamedSharding(m42, _spec("b"))}
    shard_b = {"w": NamedSharding(m24, _spec("-,(a b)")), "b": NamedSharding(m24, _spec(""))}
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 16))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))

    def init(shardings: dict[str, Any]) -> dict[str, Any]:
        p = {"w": jnp.ones((16, 8)) / 4, "b": jnp.zeros(8)}
        return {k: jax.device_put(v, shardings[k]) for k, v in p.items()}

    run = _optax_trainer(tx, x)

    p0 = init(shard_a)
    _, _, reference = run(p0, tx.init(p0), 8)
    p, s, first = run(p0, tx.init(p0), 4)
    assert p["w"].sharding == shard_a["w"] and s[1][0].mu["w"].sharding == shard_a["w"]

    tmp = tempfile.mkdtemp()
    ckpt = cloudckpt.Checkpoint(params=p, opt_state=s, step=4)
    manager = cloudckpt.CheckpointManager(ckpt, tmp, max_to_keep=2, async_save=True)
    with NoGather():
        manager.save()
        manager.sync()
    url = manager.latest_checkpoint
    assert url is not None
    _check_grid(url, "params/w", p["w"])
    _check_grid(url, ("opt_state", 1, 0, 1, "w"), s[1][0].mu["w"])

    # a fresh job: same shardings, training continues identically
    q0 = init(shard_a)
    fresh = cloudckpt.Checkpoint(params=q0, opt_state=tx.init(q0), step=0)
    assert cloudckpt.CheckpointManager(fresh, tmp, max_to_keep=2).restore_or_initialize() == url
    assert fresh.step == 4 and type(fresh.opt_state) is type(s)
    assert fresh.params["w"].sharding == shard_a["w"] and fresh.opt_state[1][0].nu["w"].sharding == shard_a["w"]
    _, _, rest = run(fresh.params, fresh.opt_state, 4)
    assert first + rest == reference, (first + rest, reference)

    # another sharding: the same values, bit for bit, placed the new way
    r0 = init(shard_b)
    other = cloudckpt.load(url, target={"params": r0, "opt_state": tx.init(r0), "step": 0, "save_counter": 0})
    for a, b in zip(jax.tree.leaves(other["opt_state"]), jax.tree.leaves(s), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert other["params"]["w"].sharding == shard_b["w"] and other["opt_state"][1][0].mu["w"].sharding == shard_b["w"]
    for k in ("w", "b"):
        assert np.asarray(other["params"][k]).tobytes() == np.asarray(p[k]).tobytes()
    _, _, rest_b = run(other["params"], other["opt_state"], 4)
    np.testing.assert_allclose(rest_b, reference[4:], rtol=1e-5)


def _init_distributed(pid: str, n: str, port: str) -> tuple[int, int]:
    import jax

    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=int(n), process_id=int(pid), initialization_timeout=120
    )
    assert jax.process_count() == int(n) and len(jax.local_devices()) == 4 and len(jax.devices()) == 4 * int(n)
    return jax.process_index(), jax.process_count()


def child_multiprocess(pid: str, n: str, port: str, directory: str) -> None:
    import jax
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding

    import cloudckpt
    from cloudckpt.frameworks.jax_group import JaxGroup, group_for

    rank, world = _init_distributed(pid, n, port)
    cloudckpt.distributed.collective.GATHER_BELOW = 0  # these arrays are small: store them by shards, not gathered
    group = group_for(120)
    assert isinstance(group, JaxGroup) and (group.rank, group.size) == (rank, world)
    assert group.all_gather_json({"r": rank}) == [{"r": r} for r in range(world)]
    assert group.broadcast_json("from 1" if rank == 1 else None, src=1) == "from 1"
    assert group.all_reduce_max(rank * 10) == 10 * (world - 1)
    big = bytes(range(256)) * 4096 * (rank + 1)  # 1 MiB, 2 MiB
    assert group.all_gather_bytes(big) == [bytes(range(256)) * 4096 * (r + 1) for r in range(world)]
    assert group.fork().all_gather_json(rank) == list(range(world))

    devs = np.array(jax.devices())  # process 0's 4 devices, then process 1's
    meshes = {
        "x8": Mesh(devs, ("x",)),
        "p2x4": Mesh(devs.reshape(2, 4), ("p", "x")),  # p across the processes
        "x4p2": Mesh(devs.reshape(2, 4).T.copy(), ("x", "p")),  # both processes on each row
    }
    full_w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
    full_v = np.random.default_rng(1).standard_normal((8, 24)).astype(np.float32)

    def make(full: np.ndarray, sharding: Any) -> Any:
        return jax.make_array_from_callback(full.shape, sharding, lambda idx: full[idx])

    w = make(full_w, NamedSharding(meshes["x8"], _spec("x")))  # 2 rows per device, across both processes
    v = make(full_v, NamedSharding(meshes["p2x4"], _spec("-,x")))  # replicated over the processes
    u = make(full_w, NamedSharding(meshes["p2x4"], _spec("p,x")))
    rep = make(full_v, NamedSharding(meshes["x8"], _spec("")))  # on every device of both processes
    assert not w.is_fully_addressable and not u.is_fully_addressable and rep.is_fully_replicated
    state = {"w": w, "v": v, "u": u, "rep": rep, "step": 3, "rng": cloudckpt.PerRank(np.full(2, rank))}

    with pytest.raises(ValueError, match="cover"):  # this process alone: its shards are refused
        cloudckpt.save(f"{directory}/nogroup-{rank}", {"w": w}, process_group=cloudckpt.SINGLE_PROCESS)
    assert cloudckpt.distributed.group.resolve_group(None) is group or cloudckpt.distributed.group.resolve_group(None).size == 2  # detected
    with pytest.raises(cloudckpt.CheckpointNotFoundError):
        cloudckpt.load(f"{directory}/nogroup-{rank}")

    with NoGather(), WrittenKeys() as written:
        url = cloudckpt.save(f"{directory}/c1", state, process_group=group)
    _check_grid(url, "w", w)
    _check_grid(url, "u", u)
    # this process wrote chunks of its own shards only, and some of them
    for name, arr in (("w", w), ("u", u)):
        chunk = _record(url, name)["chunked"]["chunk_shape"]
        mine = {tuple(sl.indices(n)[0] for sl, n in zip(sh.index, arr.shape, strict=True)) for sh in arr.addressable_shards}
        shard = arr.sharding.shard_shape(arr.shape)
        cells = [tuple(int(i) for i in k.split(f"/{name}/c/")[1].split("/")) for k in written.keys if f"/{name}/c/" in k]
        assert cells, name
        for cell in cells:
            start = tuple(i * c for i, c in zip(cell, chunk, strict=True))
            assert any(all(o <= st < o + n for o, st, n in zip(box, start, shard, strict=True)) for box in mine), (name, cell)
    whole = cloudckpt.load(url)  # every process reads the whole arrays (not collective)
    assert whole["w"].tobytes() == full_w.tobytes() and whole["v"].tobytes() == full_v.tobytes()
    assert whole["u"].tobytes() == full_w.tobytes() and whole["rep"].tobytes() == full_v.tobytes()
    assert whole["rng"] == cloudckpt.PerRank(np.full(2, 0))  # no group: rank 0's

    targets = {
        "w": jax.ShapeDtypeStruct(full_w.shape, full_w.dtype, sharding=NamedSharding(meshes["x4p2"], _spec("x,p"))),
        "v": jax.ShapeDtypeStruct(full_v.shape, full_v.dtype, sharding=NamedSharding(meshes["x8"], _spec("-,x"))),
        "u": jax.ShapeDtypeStruct(full_w.shape, full_w.dtype, sharding=NamedSharding(meshes["p2x4"], _spec("-,p"))),
        "rep": jax.ShapeDtypeStruct(full_v.shape, full_v.dtype, sharding=NamedSharding(meshes["x4p2"], _spec("p"))),
        "step": 0,
        "rng": cloudckpt.PerRank(np.zeros(2, np.int64)),
    }
    out = cloudckpt.load(url, target=targets, process_group=group)
    for k, full in (("w", full_w), ("v", full_v), ("u", full_w), ("rep", full_v)):
        _check_restored(out[k], targets[k], full, f"load {k}")
    assert out["rng"].value.tolist() == [rank, rank] and out["step"] == 3
    # every process holds its part of the same global array
    gathered = multihost_utils.process_allgather(out["w"], tiled=True)
    assert np.asarray(gathered).tobytes() == full_w.tobytes()

    # Checkpoint.write / read with the group
    url2 = cloudckpt.Checkpoint(**state).write(f"{directory}/c2", process_group=group)
    ckpt = cloudckpt.Checkpoint(**{k: v for k, v in targets.items()})
    ckpt.read(url2, process_group=group)
    _check_restored(ckpt.u, targets["u"], full_w, "read u")
    assert ckpt.rng.value.tolist() == [rank, rank]

    # optax training across both processes, through a manager
    sh = {"w": NamedSharding(meshes["p2x4"], _spec("x,p")), "b": NamedSharding(meshes["x8"], _spec("x"))}
    x = jax.device_put(np.random.default_rng(2).standard_normal((16, 16)).astype(np.float32), NamedSharding(meshes["x8"], _spec("")))
    tx = optax.adamw(1e-2)

    def init() -> dict[str, Any]:
        return {"w": make(np.full((16, 8), 0.25, np.float32), sh["w"]), "b": make(np.zeros(8, np.float32), sh["b"])}

    run = _optax_trainer(tx, x)

    p0 = init()
    _, _, reference = run(p0, tx.init(p0), 6)
    p, s, first = run(p0, tx.init(p0), 3)
    run_dir = f"{directory}/run"
    manager = cloudckpt.CheckpointManager(
        cloudckpt.Checkpoint(params=p, opt_state=s), run_dir, max_to_keep=1, process_group=group, async_save=True
    )
    manager.save()  # its collectives run in a background thread, beside the training's device collectives
    run(p, s, 2)
    manager.sync()
    q0 = init()
    fresh = cloudckpt.Checkpoint(params=q0, opt_state=tx.init(q0))
    again = cloudckpt.CheckpointManager(fresh, run_dir, max_to_keep=1, process_group=group)
    assert again.restore_or_initialize() is not None
    assert fresh.params["w"].sharding == sh["w"] and not fresh.params["w"].is_fully_addressable
    _, _, rest = run(fresh.params, fresh.opt_state, 3)
    assert first + rest == reference, (first + rest, reference)
    group.all_gather_json("done")  # nobody leaves while another still reads
    jax.distributed.shutdown()


def child_timeout(pid: str, n: str, port: str, directory: str) -> None:
    import jax

    import cloudckpt
    from cloudckpt.frameworks.jax_group import group_for

    rank, world = _init_distributed(pid, n, port)
    group = group_for(3)
    assert group.all_gather_json(rank) == list(range(world))
    late = Path(directory) / "late-done"
    if rank == 0:
        t0 = time.monotonic()
        with pytest.raises(cloudckpt.CheckpointError, match="did not answer within 3 s"):
            group.all_gather_json("alone")
        assert time.monotonic() - t0 < 30
        deadline = time.monotonic() + 120
        while not late.exists():  # rank 1 has failed that collective too
            assert time.monotonic() < deadline
            time.sleep(0.02)
    else:
        time.sleep(6)  # misses the collective: rank 0 gives up after 3 s
        t0 = time.monotonic()
        with pytest.raises(cloudckpt.CheckpointError):  # the barrier has failed for everybody
            group.all_gather_json("late")
        assert time.monotonic() - t0 < 2.5, "a late rank should fail at once, not wait for its timeout"
        late.touch()
    # both failed the same collective: the group goes on
    assert group.all_gather_json(["again", rank]) == [["again", r] for r in range(world)]
    group.all_gather_json("done")
    jax.distributed.shutdown()


if __name__ == "__main__":
    _name, *_args = sys.argv[1:]
    globals()[f"child_{_name}"](*_args)
    print(f"child {_name} ok", flush=True)
