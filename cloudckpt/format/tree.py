"""State trees: flattening to JSON structure + array leaves, and back.

A state is a tree of ``dict`` (keys: ``str`` of any content, or ``int``),
``list`` and ``tuple``, whose leaves are numpy arrays, numpy scalars, or
JSON scalars (``None``, ``bool``, ``int`` of any size, ``float`` including
nan/inf/-0.0, ``str``).

The structure is kept as JSON nodes (the ``tree`` of the manifest)::

    {"t": "dict", "k": [key, ...], "v": [node, ...]}   keys: JSON str or int
    {"t": "list", "v": [...]}    {"t": "tuple", "v": [...]}
    {"t": "none"}  {"t": "bool", "v": true}  {"t": "str", "v": "..."}
    {"t": "int", "v": 12}     (as a decimal string beyond 2**53)
    {"t": "float", "v": "0x1.8p+0"}              (float.hex: bit-exact)
    {"t": "float", "v": "nan", "bits": "0xfff8000000000000"}   (a NaN other than float("nan"))
    {"t": "array", "a": 3}    {"t": "scalar", "a": 4}   (index into arrays)
    {"t": "alias", "a": 3}    (format 2: the same tensor as array 3 again: tied weights, stored once)
    {"t": "tuple", "v": [...], "namedtuple": {"name": "optax.ScaleByAdamState", "fields": ["count", ...]}}
    {"t": "per_rank", "r": [node of rank 0, node of rank 1, ...]}   (format 3: a PerRank value)

A :class:`~cloudckpt.format.shards.ShardedArray` leaf (a distributed tensor) is an
``array`` node like any other; its leaf carries the pieces this process holds.
Flattening gives a ``{"t": "per_rank", "v": node}`` for a ``PerRank`` value
(this process's own); the collective save turns those into ``"r"`` lists.

A NamedTuple is stored as a tuple that records its class and field names
for information; it loads as a plain tuple (loading never creates classes)
unless restored into a live target of that class.

Numpy scalars (``np.float32(1)``) come back as numpy scalars of the same
type, stored as 0-d arrays.

A leaf's *path* is the tuple of keys from the root. A *key path* given by a
user (for partial loads) is a ``/``-separated string (``"model/w"``) or a
tuple of keys (for keys that themselves contain ``/``).

Example:
    >>> import numpy as np
    >>> node, leaves = flatten({"w": np.zeros(2), "step": 3})
    >>> node["k"], [leaf.path for leaf in leaves]
    (['w', 'step'], [('w',)])
    >>> unflatten(node, {0: np.ones(2)})
    {'w': array([1., 1.]), 'step': 3}
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudckpt.format.dtypes import check_supported, storage_shape
from cloudckpt.format.shards import PerRank, ShardedArray

__all__ = [
    "Leaf",
    "flatten",
    "unflatten",
    "format_path",
    "parse_key_path",
    "select",
]

Key = str | int
Path = tuple[Key, ...]
_BIG = 2**53
_NAN_BITS = 0x7FF8000000000000  # float("nan")
_DECIMAL_BITS = 4000 * 3  # decimal digits stay far below sys.int_info.default_max_str_digits
MAX_DEPTH = 200  # containers nested deeper are refused (the manifest is nested JSON)


@dataclass
class Leaf:
    """An array leaf of a state tree: its path, the array, and whether it was a numpy scalar."""

    path: Path
    array: np.ndarray
    scalar: bool = False
    shards: ShardedArray | None = None  # a distributed array: ``array`` is then a zero-stride stand-in
    per_rank: bool = False  # inside a PerRank value: stored as its own array, never packed


def stand_in(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that takes no memory: the
    ``array`` of a leaf whose bytes are elsewhere (other processes' shards).

    Example:
        >>> a = stand_in((1000, 1000), np.dtype("f8"))
        >>> a.shape, a.nbytes, a.base.nbytes
        ((1000, 1000), 8000000, 8)
    """
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


def format_path(path: Sequence[Key]) -> str:
    """A readable rendering of a leaf path for messages.

    Example:
        >>> format_path(("model", "w")), format_path(("opt", "state", 0)), format_path(())
        ("'model/w'", "['opt']['state'][0]", '<root>')
    """
    if not path:
        return "<root>"
    if all(isinstance(k, str) and k and "/" not in k and "'" not in k for k in path):
        return repr("/".join(str(k) for k in path))
    return "".join(f"[{k!r}]" for k in path)


def _float_node(x: float) -> dict[str, Any]:
    node: dict[str, Any] = {"t": "float", "v": float.hex(x)}
    if math.isnan(x):
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
        if bits != _NAN_BITS:  # float.hex drops a NaN's sign and payload (inf - inf is -nan)
            node["bits"] = f"0x{bits:016x}"
    return node


def _parse_float(node: Mapping[str, Any]) -> float:
    if "bits" in node:
        value: float = struct.unpack("<d", struct.pack("<Q", int(node["bits"], 16)))[0]
        return value
    return float.fromhex(node["v"])


def _int_node(x: int) -> dict[str, Any]:
    if -_BIG <= x <= _BIG:
        return {"t": "int", "v": x}
    if x.bit_length() <= _DECIMAL_BITS:
        return {"t": "int", "v": str(x)}
    # beyond Python's int -> decimal str conversion limit (sys.get_int_max_str_digits): hex
    return {"t": "int", "v": hex(x)}


def _parse_int(v: int | str) -> int:
    if isinstance(v, int):
        return v
    return int(v, 16) if "x" in v else int(v)


def flatten(state: Any, *, adapt: Callable[[Any], Any] | None = None) -> tuple[dict[str, Any], list[Leaf]]:
    """Split ``state`` into its JSON structure and its array leaves, in tree order.

    Raises TypeError naming the path of the first unsupported leaf or key,
    and ValueError for a cycle, before anything is written. ``adapt`` maps
    a foreign leaf (a framework tensor) to a numpy array, or returns None.
    If ``adapt`` has an attribute ``alias_key`` (a function giving a hashable
    identity of a foreign leaf's memory, or None), foreign leaves with equal
    keys (tied weights) are stored once: later ones become ``alias`` nodes.
    """
    flat = _Flattener(adapt)
    node = flat.walk(state, ())
    return node, flat.leaves


class _Flattener:
    """The walk of :func:`flatten`: its leaves so far, the containers on the
    current path (cycles), the aliases of tied foreign leaves."""

    def __init__(self, adapt: Callable[[Any], Any] | None) -> None:
        self.leaves: list[Leaf] = []
        self.active: set[int] = set()
        self.adapt = adapt
        self.alias_key = getattr(adapt, "alias_key", None)
        self.aliased: dict[Any, int] = {}
        self.in_per_rank = False

    def walk(self, x: Any, path: Path) -> dict[str, Any]:
        if len(path) > MAX_DEPTH:
            raise ValueError(f"the state is nested deeper than {MAX_DEPTH} levels at {format_path(path[:8])}...")
        if x is None:
            return {"t": "none"}
        if isinstance(x, bool):
            return {"t": "bool", "v": x}
        if isinstance(x, int) and not isinstance(x, np.generic):
            return _int_node(int(x))
        if isinstance(x, float) and not isinstance(x, np.generic):
            return _float_node(float(x))
        if isinstance(x, str) and not isinstance(x, np.generic):
            return {"t": "str", "v": str(x)}
        if isinstance(x, (np.ndarray, np.generic)):
            return self._numpy(x, path)
        if isinstance(x, ShardedArray):
            return self._sharded(x, path)
        if isinstance(x, PerRank):
            return self._per_rank(x, path)
        if isinstance(x, (dict, list, tuple)):
            return self._container(x, path)
        node = self._foreign(x, path)
        if node is not None:
            return node
        raise TypeError(
            f"leaf {format_path(path)} has unsupported type {type(x).__module__}.{type(x).__qualname__}; "
            "supported leaves are numpy arrays and scalars, None, bool, int, float and str"
        )

    def _numpy(self, x: np.ndarray | np.generic, path: Path) -> dict[str, Any]:
        if isinstance(x, np.generic):
            arr = np.asarray(x)
            reason = check_supported(arr.dtype)
            if reason:
                raise TypeError(f"leaf {format_path(path)} has dtype {arr.dtype}: {reason}")
            self.leaves.append(Leaf(path, arr, scalar=True, per_rank=self.in_per_rank))
            return {"t": "scalar", "a": len(self.leaves) - 1}
        if type(x) is not np.ndarray:
            raise TypeError(
                f"leaf {format_path(path)} is a {type(x).__name__}, a numpy array subclass whose "
                "extra state would be lost; pass np.asarray(value) if that is intended"
            )
        reason = check_supported(x.dtype)
        if reason:
            raise TypeError(f"leaf {format_path(path)} has dtype {x.dtype}: {reason}")
        self.leaves.append(Leaf(path, x, per_rank=self.in_per_rank))
        return {"t": "array", "a": len(self.leaves) - 1}

    def _sharded(self, x: ShardedArray, path: Path) -> dict[str, Any]:
        reason = check_supported(x.dtype)
        if reason or storage_shape(x.dtype, x.shape) != x.shape:
            raise TypeError(f"leaf {format_path(path)} is a sharded array of dtype {x.dtype}: {reason or 'not a numeric dtype'}")
        if self.in_per_rank:
            raise TypeError(f"leaf {format_path(path)}: a sharded array inside a PerRank value; save its local shard instead")
        self.leaves.append(Leaf(path, stand_in(x.shape, x.dtype), shards=x))
        return {"t": "array", "a": len(self.leaves) - 1}

    def _per_rank(self, x: PerRank, path: Path) -> dict[str, Any]:
        if self.in_per_rank:
            raise TypeError(f"leaf {format_path(path)}: a PerRank value inside another PerRank value")
        self.in_per_rank = True
        try:
            return {"t": "per_rank", "v": self.walk(x.value, path)}
        finally:
            self.in_per_rank = False

    def _container(self, x: dict[Any, Any] | list[Any] | tuple[Any, ...], path: Path) -> dict[str, Any]:
        if id(x) in self.active:
            raise ValueError(f"the state contains a reference cycle at {format_path(path)}")
        self.active.add(id(x))
        try:
            if isinstance(x, dict):
                return self._dict(x, path)
            kind = "list" if isinstance(x, list) else "tuple"
            out: dict[str, Any] = {"t": kind, "v": [self.walk(v, (*path, i)) for i, v in enumerate(x)]}
            if _is_namedtuple(x):
                cls: Any = type(x)
                out["namedtuple"] = {"name": f"{cls.__module__}.{cls.__qualname__}", "fields": list(cls._fields)}
            return out
        finally:
            self.active.discard(id(x))

    def _dict(self, x: dict[Any, Any], path: Path) -> dict[str, Any]:
        keys: list[Key] = []
        values = []
        for k, v in x.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)) or isinstance(k, np.generic):
                raise TypeError(
                    f"dict key {k!r} of type {type(k).__name__} at {format_path(path)}: "
                    "only str and int keys are supported"
                )
            k = str(k) if isinstance(k, str) else int(k)
            keys.append(k)
            values.append(self.walk(v, (*path, k)))
        return {"t": "dict", "k": keys, "v": values}

    def _foreign(self, x: Any, path: Path) -> dict[str, Any] | None:
        """The node of a framework leaf (through ``adapt``), an alias of a tied one, or None."""
        if self.adapt is None:
            return None
        try:
            key = self.alias_key(x) if self.alias_key is not None and not self.in_per_rank else None
            if key is not None and key in self.aliased:
                return {"t": "alias", "a": self.aliased[key]}
            adapted = self.adapt(x)
        except TypeError as exc:
            raise TypeError(f"leaf {format_path(path)}: {exc}") from None
        if adapted is None:
            return None
        node = self.walk(adapted, path)
        if key is not None and node["t"] == "array":
            self.aliased[key] = node["a"]
        return node


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def unflatten(node: Mapping[str, Any], arrays: Mapping[int, Any], rank: int = 0) -> Any:
    """Rebuild a tree from its JSON structure and the loaded arrays (by index).

    Subtrees whose arrays are absent from ``arrays`` must have been pruned
    from ``node`` by :func:`select` first. A ``per_rank`` node gives
    ``PerRank`` of the value saved by ``rank`` (a missing ``PerRank`` when
    that rank saved none: see :func:`array_ids`).
    """
    t = node["t"]
    if t == "dict":
        return {k: unflatten(v, arrays, rank) for k, v in zip(node["k"], node["v"], strict=True)}
    if t == "list":
        return [unflatten(v, arrays, rank) for v in node["v"]]
    if t == "tuple":
        return tuple(unflatten(v, arrays, rank) for v in node["v"])
    if t == "per_rank":
        values = node["r"]
        if rank < len(values):
            return PerRank(unflatten(values[rank], arrays, rank))
        return PerRank.missing()
    if t == "none":
        return None
    if t == "bool":
        return bool(node["v"])
    if t == "int":
        return _parse_int(node["v"])
    if t == "float":
        return _parse_float(node)
    if t == "str":
        return str(node["v"])
    if t == "array":
        return arrays[node["a"]]
    if t == "scalar":
        return arrays[node["a"]][()]
    if t == "alias":
        return arrays[node["a"]]
    raise ValueError(f"unknown tree node type {t!r}")


def array_ids(node: Mapping[str, Any], rank: int = 0) -> list[int]:
    """The array indices referenced below ``node``, in tree order (each once);
    below ``per_rank`` nodes only those of ``rank``."""
    out: list[int] = []
    aliases: list[int] = []  # arrays reached only through an alias (its first use was pruned)

    def walk(n: Mapping[str, Any]) -> None:
        t = n["t"]
        if t in ("array", "scalar"):
            out.append(n["a"])
        elif t == "alias":
            aliases.append(n["a"])
        elif t in ("dict", "list", "tuple"):
            for v in n["v"]:
                walk(v)
        elif t == "per_rank" and rank < len(n["r"]):
            walk(n["r"][rank])

    walk(node)
    seen = set(out)
    for a in aliases:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


def parse_key_path(key: str | Sequence[Key]) -> Path:
    """A user's key path as a tuple: ``"model/w"`` -> ``("model", "w")``.

    Example:
        >>> parse_key_path("opt/state/0"), parse_key_path(("a/b", 1))
        (('opt', 'state', '0'), ('a/b', 1))
    """
    if isinstance(key, str):
        parts = tuple(p for p in key.split("/") if p != "")
        if not parts:
            raise ValueError(f"empty key path {key!r}")
        return parts
    if isinstance(key, (tuple, list)):
        for k in key:
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"key path component {k!r} must be str or int")
        return tuple(key)
    raise TypeError(f"key path must be a str or a tuple of keys, got {type(key).__name__}")


def _child(node: Mapping[str, Any], k: Key) -> tuple[Key, Mapping[str, Any]] | None:
    t = node["t"]
    if t == "dict":
        keys = node["k"]
        for i, kk in enumerate(keys):
            if kk == k and type(kk) is type(k):
                return kk, node["v"][i]
        if isinstance(k, str) and _is_int_text(k):
            for i, kk in enumerate(keys):
                if isinstance(kk, int) and kk == int(k):
                    return kk, node["v"][i]
        return None
    if t in ("list", "tuple"):
        idx: int | None = k if isinstance(k, int) else (int(k) if isinstance(k, str) and _is_int_text(k) else None)
        if idx is not None and 0 <= idx < len(node["v"]):
            return idx, node["v"][idx]
    return None


def _is_int_text(s: str) -> bool:
    return s.lstrip("-").isdigit()


def select(node: Mapping[str, Any], paths: Sequence[Path]) -> dict[str, Any]:
    """Prune ``node`` to the subtrees at ``paths`` (kept at their places).

    Lists and tuples keep only the selected items, in order. Raises KeyError
    naming the first path that is not in the tree.

    Example:
        >>> node, _ = flatten({"a": {"x": 1, "y": 2}, "b": 3})
        >>> unflatten(select(node, [("a", "y")]), {})
        {'a': {'y': 2}}
    """
    wanted: dict[str, Any] = {}  # nested marker tree: key -> subtree or True
    for path in paths:
        cur: Mapping[str, Any] = node
        marker = wanted
        resolved: list[Key] = []
        for depth, k in enumerate(path):
            found = _child(cur, k)
            if found is None:
                raise KeyError(f"key {format_path(path)} is not in the checkpoint (no {format_path((*resolved, k))})")
            real, cur = found
            resolved.append(real)
            mk = (type(real).__name__, real)
            if depth == len(path) - 1:
                marker[mk] = True  # type: ignore[index]
            else:
                nxt = marker.get(mk)  # type: ignore[call-overload]
                if nxt is True:
                    break
                if nxt is None:
                    nxt = {}
                    marker[mk] = nxt  # type: ignore[index]
                marker = nxt

    def prune(n: Mapping[str, Any], m: Any) -> dict[str, Any]:
        if m is True:
            return dict(n)
        t = n["t"]
        if t == "dict":
            ks, vs = [], []
            for k, v in zip(n["k"], n["v"], strict=True):
                mk = (type(k).__name__, k)
                if mk in m:
                    ks.append(k)
                    vs.append(prune(v, m[mk]))
            return {"t": "dict", "k": ks, "v": vs}
        vs = []
        for i, v in enumerate(n["v"]):
            mk = ("int", i)
            if mk in m:
                vs.append(prune(v, m[mk]))
        return {"t": t, "v": vs}

    if any(len(p) == 0 for p in paths):
        return dict(node)
    return prune(node, wanted)
