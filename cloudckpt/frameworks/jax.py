"""JAX support: jax arrays as leaves, ``load(framework="jax")``, restore with shardings.

Imported (and registered) automatically once the program has imported
``jax``; nothing to call.

Saving. A ``jax.Array`` anywhere in a state (a pytree of nested dicts, lists,
tuples and NamedTuples such as optax states) is stored like a numpy array,
bfloat16 and float8 included (exact bits). An array on one device, or
replicated on every device of its sharding, is stored as one numpy array. An
array *sharded* over several devices (a ``NamedSharding`` over a mesh, any
``PartitionSpec``) is stored as one global array without being gathered:
each distinct shard this process holds (replicas once) is copied to host on
its own and written as the chunks of its box (a ``cloudckpt.ShardedArray``),
so a save never holds the whole array in one buffer. Sharded arrays smaller
than :data:`GATHER_BELOW` bytes whose shards are all in this process are
gathered instead (they are then packed with the other small tensors; one
object per shard of a tiny array would cost one request each). Arrays
spanning several processes (``jax.distributed``) need every process to call
the save; its group of those processes
(:func:`cloudckpt.frameworks.jax_group.group_for`) is the default once
``jax.distributed`` is initialized. Typed PRNG keys
(``jax.random.key``) are refused: store ``jax.random.key_data(key)``.
Custom pytree nodes (flax ``struct`` dataclasses) are not containers
cloudckpt knows: store ``flax.serialization.to_state_dict(x)`` and restore
with ``flax.serialization.from_state_dict(x, restored)``.

Restoring. JAX arrays are immutable, so nothing is restored in place:

* ``restored = cloudckpt.load(url, framework="jax")`` gives jax arrays on the
  default device, or on ``device=`` (a ``jax.Device`` or a
  ``jax.sharding.Sharding``, as for ``jax.device_put``; every array is read
  whole first). NamedTuples come back as plain tuples (the manifest records
  their class and field names for information; loading never creates
  classes).
* ``restored = cloudckpt.load(url, target=pytree)`` gives the structure of
  ``pytree``: every jax array (or ``jax.ShapeDtypeStruct`` with a
  ``sharding``) in it is replaced by the saved value placed with that leaf's
  sharding. For a sharded target only the boxes of the shards this process
  holds are read (byte ranges of the stored chunks), whatever sharding or
  number of devices or processes saved the array, and each device gets its
  shard (``jax.make_array_from_single_device_arrays``; a box replicated on
  several devices is read once). An uncommitted array, such as
  ``jnp.zeros(...)`` or an optax counter, gives an uncommitted one on the
  default device, which ``jit`` may still move. NamedTuples are rebuilt as
  their own class. Shapes and dtypes must match (one ValueError lists every
  mismatch, before anything is read onto a device).
* ``Checkpoint(params=params, opt_state=opt_state)``: ``ckpt.read(url)`` or
  ``manager.restore_or_initialize()`` rebinds the attributes: use
  ``ckpt.params`` afterwards, not the old variable.

Without ``jax_enable_x64``, JAX silently narrows 64-bit arrays; those are
left as numpy arrays by ``framework="jax"`` rather than truncated.

Example:
    >>> import typing, jax, jax.numpy as jnp, cloudckpt
    >>> class AdamState(typing.NamedTuple):
    ...     count: jax.Array
    ...     mu: dict
    >>> params = {"w": jnp.ones((2, 2), jnp.bfloat16)}
    >>> opt_state = AdamState(jnp.array(3), {"w": jnp.zeros((2, 2), jnp.bfloat16)})
    >>> url = cloudckpt.save("memory://doc-jax/ckpt-1", {"params": params, "opt": opt_state})
    >>> out = cloudckpt.load(url, framework="jax")
    >>> out["params"]["w"].dtype, type(out["opt"]).__name__
    (dtype(bfloat16), 'tuple')
    >>> out = cloudckpt.load(url, target={"params": params, "opt": opt_state})
    >>> type(out["opt"]).__name__, int(out["opt"].count), out["params"]["w"].sharding == params["w"].sharding
    ('AdamState', 3, True)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from cloudckpt.format import adapters
from cloudckpt.format.shards import Box, ShardedArray
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.frameworks import map_arrays

__all__ = ["to_numpy", "to_leaf", "wanted_boxes", "from_numpy", "from_numpy_tree", "GATHER_BELOW"]

_WIDE = {"i": 8, "u": 8, "f": 8, "c": 16}

GATHER_BELOW: int = StoreOptions().pack_threshold
"""Sharded arrays whose shards are all in this process and that are smaller
than this many bytes are gathered and stored as one numpy array (packed with
the other small tensors); larger ones, and arrays spanning processes, are
stored shard by shard. Set it to 0 to store every sharded array by shards."""


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array)


def _is_target(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct))


def _refuse(x: Any) -> None:
    if isinstance(x, jax.core.Tracer):
        raise TypeError("a traced jax value (inside jit/grad/vmap) cannot be saved; save concrete arrays outside the transformation")
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        raise TypeError("typed jax PRNG keys are not supported; store jax.random.key_data(key) and rewrap it with jax.random.wrap_key_data")


def to_numpy(x: Any) -> np.ndarray | None:
    """A jax array as one numpy array (gathered to host); None for anything else.

    An array sharded over devices of other processes cannot be gathered in
    one process (TypeError) unless it is replicated on every device.

    Example:
        >>> import jax.numpy as jnp
        >>> a = to_numpy(jnp.arange(3, dtype=jnp.bfloat16))
        >>> type(a).__name__, a.dtype.name, a.tolist()
        ('ndarray', 'bfloat16', [0.0, 1.0, 2.0])
    """
    if not isinstance(x, jax.Array):
        return None
    _refuse(x)
    if not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        raise TypeError(
            "a jax array sharded over devices of other processes cannot be gathered in one process; "
            "save it with every process and a group (cloudckpt.frameworks.jax_group.group_for()), "
            "or gather it first (jax.experimental.multihost_utils.process_allgather)"
        )
    return np.asarray(x)


def _box(index: tuple[Any, ...], shape: tuple[int, ...]) -> Box:
    """The box ``(offset, shape)`` of a shard index (a tuple of slices) of an array of ``shape``."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    offset, size = [], []
    for sl, n in zip(index, shape, strict=True):
        if not isinstance(sl, slice):  # an integer index (pmap's old sharding) drops an axis
            raise TypeError(f"a jax shard with index {index} has no box")
        start, stop, step = sl.indices(n)
        if step != 1:
            raise TypeError(f"a jax shard with index {index} (a step) has no box")
        offset.append(start)
        size.append(max(0, stop - start))
    return tuple(offset), tuple(size)


def _sharded(x: Any) -> bool:
    """Whether ``x`` (an array or a sharding's target) is split over devices: not on one device, not replicated."""
    sharding = getattr(x, "sharding", None)
    if sharding is None or len(sharding.device_set) <= 1:
        return False
    return not bool(sharding.is_fully_replicated)


def to_leaf(x: Any) -> np.ndarray | ShardedArray | None:
    """What a jax array is stored as: a numpy array (one device, replicated,
    or small and in this process: see :data:`GATHER_BELOW`) or a
    :class:`~cloudckpt.format.shards.ShardedArray` of the distinct shards this
    process holds, each copied to host on its own (never the whole array at
    once). None for anything else.

    Example:
        >>> import jax.numpy as jnp
        >>> to_leaf(jnp.ones(2)), to_leaf([1])
        (array([1., 1.], dtype=float32), None)
    """
    if not isinstance(x, jax.Array):
        return None
    _refuse(x)
    if not _sharded(x):
        if x.is_fully_addressable:
            return np.asarray(x)
        if not x.addressable_shards:
            raise TypeError("a jax array on a device of another process: only that process can save it")
        return np.asarray(x.addressable_data(0))  # replicated over processes: every process has it all
    if x.is_fully_addressable and x.nbytes < GATHER_BELOW:
        return np.asarray(x)
    shape = tuple(int(n) for n in x.shape)
    shards = sorted(x.addressable_shards, key=lambda sh: sh.replica_id)  # replica 0 first where present
    try:
        boxes = [_box(shard.index, shape) for shard in shards]
    except TypeError:
        if x.is_fully_addressable:
            return np.asarray(x)  # a sharding without boxes: gathered
        raise
    pieces: dict[Box, np.ndarray] = {}
    for shard, box in zip(shards, boxes, strict=True):
        if box not in pieces:
            data = np.asarray(shard.data)
            if tuple(data.shape) != box[1]:
                raise TypeError(f"a jax shard of shape {tuple(data.shape)} at index {shard.index} of an array of shape {shape}")
            pieces[box] = data
    return ShardedArray(shape, np.dtype(x.dtype), [(offset, data) for (offset, _), data in pieces.items()])


def _device_boxes(x: Any) -> list[tuple[Any, Box]]:
    """``(device, box)`` for every device of this process in ``x``'s sharding."""
    shape = tuple(int(n) for n in x.shape)
    try:
        indices = x.sharding.addressable_devices_indices_map(shape)
    except ValueError as exc:  # jax's IndivisibleError: a sharding that does not fit the shape
        raise ValueError(f"a jax target of shape {shape} cannot have the sharding {x.sharding}: {exc}") from None
    return [(dev, _box(index, shape)) for dev, index in indices.items()]


def _placed(x: Any) -> bool:
    """Whether a restore must follow ``x``'s sharding (an uncommitted array stays free to move)."""
    if getattr(x, "sharding", None) is None:
        return False
    return not (isinstance(x, jax.Array) and not getattr(x, "committed", True))


def wanted_boxes(x: Any) -> list[Box] | None:
    """The distinct boxes of the global array that the devices of this
    process hold under the sharding of ``x`` (a jax array or a
    ``jax.ShapeDtypeStruct`` with a sharding): what a restore into ``x``
    reads. None when ``x`` is not sharded (one device, replicated,
    uncommitted, or not a jax value): the whole array.

    Example:
        >>> import jax.numpy as jnp
        >>> wanted_boxes(jnp.ones(2)) is None
        True
    """
    if not _is_target(x) or not _placed(x) or not _sharded(x):
        return None
    try:
        device_boxes = _device_boxes(x)
    except TypeError:  # a sharding without boxes: read whole, placed by device_put
        return None
    out: dict[Box, None] = {}
    for _, box in device_boxes:
        out.setdefault(box, None)
    return list(out)


def _describe(x: Any) -> tuple[tuple[int, ...], np.dtype] | None:
    if not _is_target(x):
        return None
    return tuple(x.shape), np.dtype(x.dtype)


def _narrowed(dtype: np.dtype) -> bool:
    """Whether jax (without x64) would silently narrow arrays of ``dtype``."""
    return not jax.config.read("jax_enable_x64") and _WIDE.get(dtype.kind) == dtype.itemsize


def _jax_can_hold(dtype: np.dtype) -> bool:
    if dtype.kind not in "biufc" and dtype.type.__module__.split(".")[0] != "ml_dtypes":
        return False
    if dtype.kind in "biufc" and not dtype.isnative:
        return True  # converted to native below
    try:
        jax.dtypes.canonicalize_dtype(dtype)
    except (TypeError, ValueError):
        return False
    return True


def _native(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "biufc" and not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def from_numpy(arr: np.ndarray, device: Any = None) -> Any:
    """A numpy array as a jax array on ``device`` (a Device or Sharding), or None if jax cannot hold it exactly.

    Example:
        >>> from_numpy(np.ones(2, np.float32)).dtype, from_numpy(np.array(["a"])) is None
        (dtype('float32'), True)
    """
    if not _jax_can_hold(arr.dtype) or _narrowed(arr.dtype):
        return None
    return jax.device_put(_native(arr), device)


def from_numpy_tree(state: Any, *, device: Any = None) -> Any:
    """``state`` with every numpy array jax can hold exactly as a jax array.

    Example:
        >>> from_numpy_tree({"w": np.zeros(2, np.float32), "n": np.zeros(1, np.int64)})["n"].dtype
        dtype('int64')
    """
    return map_arrays(state, lambda x: from_numpy(x, device))


def _region(value: ShardedArray, box: Box) -> np.ndarray:
    """The data of ``box`` from the pieces of ``value``: a piece that is the
    box (the pieces of a restore are the boxes asked for), else a slice of
    one that contains it."""
    offset, shape = box
    for o, data in value.pieces:
        if o == offset and tuple(data.shape) == shape:
            return data
    for o, data in value.pieces:
        if all(a <= b and b + n <= a + m for a, m, b, n in zip(o, data.shape, offset, shape, strict=True)):
            return data[tuple(slice(b - a, b - a + n) for a, b, n in zip(o, offset, shape, strict=True))]
    raise ValueError(f"cannot restore a jax shard of shape {shape} at {offset}: the loaded pieces {value.local_boxes()} do not hold it")


def _from_pieces(target: Any, value: ShardedArray) -> Any:
    """A jax array with ``target``'s sharding whose shards come from the pieces of ``value``."""
    if not _jax_can_hold(value.dtype) or _narrowed(value.dtype):
        raise TypeError(f"jax cannot hold a saved {value.dtype} array exactly; enable jax_enable_x64 to restore it")
    shape = tuple(int(n) for n in target.shape)
    singles = [jax.device_put(_native(_region(value, box)), dev) for dev, box in _device_boxes(target)]
    return jax.make_array_from_single_device_arrays(shape, target.sharding, singles)


def _rebind(target: Any, value: Any) -> Any:
    if isinstance(value, ShardedArray):
        if _placed(target) and _sharded(target):
            out = _from_pieces(target, value)
            if out.dtype != np.dtype(target.dtype):
                raise TypeError(f"jax turned a saved {value.dtype} array into {out.dtype}; enable jax_enable_x64 to restore it")
            return out
        value = value.assemble()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"cannot restore a {type(value).__name__} into a jax array")
    sharding = getattr(target, "sharding", None) if _placed(target) else None
    out = jax.device_put(_native(value), sharding)
    if out.dtype != np.dtype(target.dtype):  # jax narrowed it (x64 disabled)
        raise TypeError(f"jax turned a saved {value.dtype} array into {out.dtype}; enable jax_enable_x64 to restore it")
    return out


adapters.register(to_leaf, is_tensor=_is_target, rebind=_rebind, describe=_describe, wanted_boxes=wanted_boxes)
