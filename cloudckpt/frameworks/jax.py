"""JAX support: jax arrays as leaves, ``load(framework="jax")``, restore with shardings.

Imported (and registered) automatically once the program has imported
``jax``; nothing to call.

Saving. A ``jax.Array`` anywhere in a state (a pytree of nested dicts, lists,
tuples and NamedTuples such as optax states) is stored like a numpy array,
bfloat16 and float8 included (exact bits). An array sharded over the local
devices is gathered to host. Typed PRNG keys (``jax.random.key``) are
refused: store ``jax.random.key_data(key)``. Custom pytree nodes (flax
``struct`` dataclasses) are not containers cloudckpt knows: store
``flax.serialization.to_state_dict(x)`` and restore with
``flax.serialization.from_state_dict(x, restored)``.

Restoring. JAX arrays are immutable, so nothing is restored in place:

* ``restored = cloudckpt.load(url, framework="jax")`` gives jax arrays on the
  default device, or on ``device=`` (a ``jax.Device`` or a
  ``jax.sharding.Sharding``, as for ``jax.device_put``). NamedTuples come
  back as plain tuples (the manifest records their class and field names for
  information; loading never creates classes).
* ``restored = cloudckpt.load(url, target=pytree)`` gives the structure of
  ``pytree``: every jax array (or ``jax.ShapeDtypeStruct`` with a
  ``sharding``) in it is replaced by the saved value placed with that leaf's
  sharding (an uncommitted array, such as ``jnp.zeros(...)`` or an optax
  counter, gives an uncommitted one on the default device, which ``jit``
  may still move), NamedTuples are rebuilt as their own class. Shapes and dtypes
  must match (one ValueError lists every mismatch, before anything is read
  onto a device).
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

from .. import adapters
from . import map_arrays

__all__ = ["to_numpy", "from_numpy", "from_numpy_tree"]

_WIDE = {"i": 8, "u": 8, "f": 8, "c": 16}


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array)


def _is_target(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct))


def to_numpy(x: Any) -> np.ndarray | None:
    """A jax array as a numpy array (gathered to host); None for anything else.

    Example:
        >>> import jax.numpy as jnp
        >>> to_numpy(jnp.arange(3, dtype=jnp.bfloat16))
        array([0, 1, 2], dtype=bfloat16)
    """
    if not isinstance(x, jax.Array):
        return None
    if isinstance(x, jax.core.Tracer):
        raise TypeError("a traced jax value (inside jit/grad/vmap) cannot be saved; save concrete arrays outside the transformation")
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        raise TypeError("typed jax PRNG keys are not supported; store jax.random.key_data(key) and rewrap it with jax.random.wrap_key_data")
    if not x.is_fully_addressable:
        raise TypeError(
            "a jax array sharded over devices of other processes cannot be saved from one process; "
            "gather it first (jax.experimental.multihost_utils.process_allgather)"
        )
    return np.asarray(x)


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


def from_numpy(arr: np.ndarray, device: Any = None) -> Any:
    """A numpy array as a jax array on ``device`` (a Device or Sharding), or None if jax cannot hold it exactly.

    Example:
        >>> from_numpy(np.ones(2, np.float32)).dtype, from_numpy(np.array(["a"])) is None
        (dtype('float32'), True)
    """
    if not _jax_can_hold(arr.dtype) or _narrowed(arr.dtype):
        return None
    if arr.dtype.kind in "biufc" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return jax.device_put(arr, device)


def from_numpy_tree(state: Any, *, device: Any = None) -> Any:
    """``state`` with every numpy array jax can hold exactly as a jax array.

    Example:
        >>> from_numpy_tree({"w": np.zeros(2, np.float32), "n": np.zeros(1, np.int64)})["n"].dtype
        dtype('int64')
    """
    return map_arrays(state, lambda x: from_numpy(x, device))


def _rebind(target: Any, value: Any) -> Any:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"cannot restore a {type(value).__name__} into a jax array")
    sharding = getattr(target, "sharding", None)
    if isinstance(target, jax.Array) and not getattr(target, "committed", True):
        sharding = None  # an uncommitted array (jnp.zeros, optax's counters) stays free to move under jit
    if value.dtype.kind in "biufc" and not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    out = jax.device_put(value, sharding)
    if out.dtype != np.dtype(target.dtype):  # jax narrowed it (x64 disabled)
        raise TypeError(f"jax turned a saved {value.dtype} array into {out.dtype}; enable jax_enable_x64 to restore it")
    return out


adapters.register(to_numpy, is_tensor=_is_target, rebind=_rebind, describe=_describe)
