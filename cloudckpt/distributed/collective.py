"""One checkpoint from many processes: the global layout every rank agrees on.

Each rank flattens its own state. The ranks exchange a description of it
(JSON: the tree, and per array leaf its dtype, shape, whether it is per rank,
and the boxes of a sharded array this rank holds) and every rank then
computes the same global plan from the same descriptions:

* the global tree is rank 0's tree (non-array values, such as a step
  counter, are rank 0's), with each ``PerRank`` value replaced by the list
  of every rank's value;
* array leaves shared by all ranks come first, in tree order, then the
  per-rank leaves of rank 0, 1, ...;
* a sharded leaf learns every box of its array and which ranks hold it.

The structure (keys, container lengths, leaf kinds, array dtypes and shapes)
must be the same on every rank outside ``PerRank`` values; a difference
raises ValueError on every rank, naming the first rank that differs.

Example:
    >>> import numpy as np
    >>> from cloudckpt.format.tree import flatten
    >>> from cloudckpt.format.shards import PerRank
    >>> node, leaves = flatten({"w": np.ones(2), "rng": PerRank(np.zeros(1))})
    >>> tree, glob, holders = plan([describe(node, leaves)], 0, node, leaves)
    >>> tree["v"][1]
    {'t': 'per_rank', 'r': [{'t': 'array', 'a': 1}]}
    >>> holders
    [None, (0,)]
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cloudckpt.format.dtypes import dtype_name, parse_dtype
from cloudckpt.format.shards import partition_problem
from cloudckpt.format.tree import Leaf, format_path, stand_in

__all__ = ["describe", "plan", "gather_small", "GATHER_BELOW"]

GATHER_BELOW = 1 << 20  # sharded arrays smaller than this (whole) are gathered and packed


def describe(node: dict[str, Any], leaves: Sequence[Leaf]) -> dict[str, Any]:
    """This rank's flattened state as JSON for the other ranks."""
    out = []
    for leaf in leaves:
        arr = leaf.array
        d: dict[str, Any] = {"d": dtype_name(arr.dtype), "s": list(arr.shape), "p": leaf.per_rank, "path": list(leaf.path)}
        if leaf.scalar:
            d["scalar"] = True
        if leaf.shards is not None:
            d["b"] = [[list(o), list(s)] for o, s in leaf.shards.local_boxes()]
        out.append(d)
    return {"tree": node, "leaves": out}


def _numbering(leaves: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(shared leaf indices, per-rank leaf indices), each in tree order."""
    shared = [i for i, d in enumerate(leaves) if not d["p"]]
    own = [i for i, d in enumerate(leaves) if d["p"]]
    return shared, own


def _renumber(node: Any, mapping: dict[int, int]) -> Any:
    t = node["t"]
    if t in ("array", "scalar", "alias"):
        return {**node, "a": mapping[node["a"]]}
    if t in ("dict", "list", "tuple"):
        return {**node, "v": [_renumber(v, mapping) for v in node["v"]]}
    if t == "per_rank":
        return {**node, "v": _renumber(node["v"], mapping)}
    return node


def _skeleton(node: Any) -> Any:
    """The structure that must agree across ranks: values of JSON leaves and
    the contents of PerRank values left out."""
    t = node["t"]
    if t == "dict":
        return ["d", node["k"], [_skeleton(v) for v in node["v"]]]
    if t in ("list", "tuple"):
        return [t, [_skeleton(v) for v in node["v"]]]
    if t in ("array", "scalar", "alias"):
        return [t, node["a"]]
    if t == "per_rank":
        return ["p"]
    return ["j"]  # None, bool, int, float, str: rank 0's value is saved


def _per_rank_nodes(node: Any, out: list[Any]) -> list[Any]:
    t = node["t"]
    if t == "per_rank":
        out.append(node["v"])
    elif t in ("dict", "list", "tuple"):
        for v in node["v"]:
            _per_rank_nodes(v, out)
    return out


def _replace_per_rank(node: Any, values: list[list[Any]], counter: list[int]) -> Any:
    t = node["t"]
    if t == "per_rank":
        k = counter[0]
        counter[0] += 1
        return {"t": "per_rank", "r": [v[k] for v in values]}
    if t in ("dict", "list", "tuple"):
        return {**node, "v": [_replace_per_rank(v, values, counter) for v in node["v"]]}
    return node


def _first_difference(a: Any, b: Any, path: tuple[Any, ...] = ()) -> str:
    if a == b:
        return ""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a and a[0] == b[0]:
        if a[0] == "d" and a[1] == b[1]:
            for k, x, y in zip(a[1], a[2], b[2], strict=True):
                found = _first_difference(x, y, (*path, k))
                if found:
                    return found
        elif a[0] in ("list", "tuple") and len(a[1]) == len(b[1]):
            for i, (x, y) in enumerate(zip(a[1], b[1], strict=True)):
                found = _first_difference(x, y, (*path, i))
                if found:
                    return found
    return format_path(path)


def has_per_rank(node: Any) -> bool:
    """Whether a flattened tree holds a ``PerRank`` value.

    Example:
        >>> has_per_rank({"t": "list", "v": [{"t": "per_rank", "v": {"t": "int", "v": 1}}]})
        True
    """
    stack = [node]
    while stack:
        n = stack.pop()
        if n["t"] == "per_rank":
            return True
        if n["t"] in ("dict", "list", "tuple"):
            stack.extend(n["v"])
    return False


def plan(
    descs: Sequence[dict[str, Any]], rank: int, node: dict[str, Any], leaves: Sequence[Leaf]
) -> tuple[dict[str, Any], list[Leaf], list[tuple[int, ...] | None]]:
    """The global tree, the global leaves (stand-ins for other ranks' per-rank
    leaves) and, per global leaf, the ranks that hold its bytes (None: all).

    ``descs`` are every rank's :func:`describe`, ``node``/``leaves`` this
    rank's own flattened state. Raises ValueError (the same on every rank)
    when the ranks' structures differ.
    """
    world = len(descs)
    trees: list[dict[str, Any]] = []
    per_rank_values: list[list[Any]] = []
    shared_descs: list[list[dict[str, Any]]] = []
    per_rank_descs: list[list[dict[str, Any]]] = []
    counts = []
    numbering = [_numbering(d["leaves"]) for d in descs]  # (shared, per-rank) leaf indices of each rank
    for d, (shared, own) in zip(descs, numbering, strict=True):
        counts.append(len(own))
        shared_descs.append([d["leaves"][i] for i in shared])
        per_rank_descs.append([d["leaves"][i] for i in own])
    n_shared = len(shared_descs[0])
    starts = [n_shared + sum(counts[:r]) for r in range(world)]
    for r, d in enumerate(descs):
        shared, own = numbering[r]
        mapping = {i: k for k, i in enumerate(shared)}
        mapping.update({i: starts[r] + k for k, i in enumerate(own)})
        tree = _renumber(d["tree"], mapping)
        trees.append(tree)
        per_rank_values.append(_per_rank_nodes(tree, []))

    base = _skeleton(trees[0])
    for r in range(1, world):
        sk = _skeleton(trees[r])
        if sk != base or len(per_rank_values[r]) != len(per_rank_values[0]):
            where = _first_difference(base, sk)
            raise ValueError(
                f"the state of rank {r} does not have the structure of rank 0's (first difference at {where}): "
                "every rank must save the same keys, containers and array leaves; wrap values that differ "
                "between ranks in cloudckpt.PerRank"
            )
        for k, (a, b) in enumerate(zip(shared_descs[0], shared_descs[r], strict=True)):
            same = a["d"] == b["d"] and a["s"] == b["s"] and ("b" in a) == ("b" in b)
            if not same:
                raise ValueError(
                    f"array leaf #{k} is {b['d']} {b['s']} on rank {r} but {a['d']} {a['s']} on rank 0: "
                    "shared leaves must have the same dtype and (global) shape on every rank"
                )
    glob_tree = _replace_per_rank(trees[0], per_rank_values, [0])

    # this rank's own leaves, by global index
    shared, own = numbering[rank]
    mine: dict[int, Leaf] = {k: leaves[i] for k, i in enumerate(shared)}
    mine.update({starts[rank] + k: leaves[i] for k, i in enumerate(own)})

    out: list[Leaf] = []
    holders: list[tuple[int, ...] | None] = []
    for k in range(n_shared):
        leaf = mine[k]
        if leaf.shards is not None:
            boxes: dict[Any, list[int]] = {}
            for r in range(world):
                for o, s in shared_descs[r][k].get("b", []):
                    boxes.setdefault((tuple(o), tuple(s)), []).append(r)
            leaf.shards.boxes = {b: tuple(rs) for b, rs in boxes.items()}
        out.append(leaf)
        holders.append(None)
    for r in range(world):
        for k, d in enumerate(per_rank_descs[r]):
            g = starts[r] + k
            if r == rank:
                out.append(mine[g])
            else:
                out.append(Leaf(tuple(d["path"]), stand_in(tuple(d["s"]), parse_dtype(d["d"])), scalar=bool(d.get("scalar")), per_rank=True))
            holders.append((r,))
    return glob_tree, out, holders


def gather_small(group: Any, descs: Sequence[dict[str, Any]], leaves: list[Leaf], limit: int = GATHER_BELOW) -> list[Leaf]:
    """``leaves`` with every sharded leaf smaller than ``limit`` bytes (whole)
    replaced by the whole array, assembled from every rank's pieces in one
    collective: small shards (biases, norms and their optimizer state) are
    then packed like any small tensor instead of costing one object per
    shard. ``descs`` are every rank's :func:`describe` (same order).

    Example:
        >>> import numpy as np
        >>> from cloudckpt.distributed.group import SINGLE
        >>> from cloudckpt.format.shards import ShardedArray
        >>> from cloudckpt.format.tree import flatten
        >>> sa = ShardedArray((4,), np.dtype("f4"), [((0,), np.zeros(2, "f4")), ((2,), np.ones(2, "f4"))])
        >>> node, leaves = flatten({"b": sa})
        >>> gather_small(SINGLE, [describe(node, leaves)], leaves)[0].array
        array([0., 0., 1., 1.], dtype=float32)
    """
    small = [
        i for i, leaf in enumerate(leaves)
        if leaf.shards is not None and leaf.shards.nbytes < limit
    ]  # fmt: skip
    if not small:
        return leaves
    for i in small:
        sa = leaves[i].shards
        assert sa is not None
        boxes = {(tuple(o), tuple(b)) for d in descs for o, b in d["leaves"][i].get("b", []) if math.prod(b) or not sa.shape}
        problem = partition_problem(sa.shape, sorted(boxes))
        if problem:
            raise ValueError(
                f"sharded array {format_path(leaves[i].path)} of shape {sa.shape}: {problem}; the pieces of all "
                "processes together must cover the array exactly (a box held by several processes counts once)"
            )
    if group.size == 1:
        raw = [b"".join(np.ascontiguousarray(d).tobytes() for i in small for _, d in leaves[i].shards.pieces)]  # type: ignore[union-attr]
    else:
        mine = b"".join(np.ascontiguousarray(d).tobytes() for i in small for _, d in leaves[i].shards.pieces)  # type: ignore[union-attr]
        raw = group.all_gather_bytes(mine)
    out = list(leaves)
    fulls = {i: np.zeros(leaves[i].shards.shape, leaves[i].shards.dtype) for i in small}  # type: ignore[union-attr]
    for r, data in enumerate(raw):
        pos = 0
        for i in small:
            dt = fulls[i].dtype
            sa = leaves[i].shards
            assert sa is not None
            held = descs[r]["leaves"][i].get("b", []) if group.size > 1 else [[o, list(d.shape)] for o, d in sa.pieces]
            for offset, shape in held:
                n = math.prod(shape) * dt.itemsize
                piece = np.frombuffer(data, dtype=dt, count=math.prod(shape), offset=pos).reshape(shape)
                fulls[i][tuple(slice(o, o + k) for o, k in zip(offset, shape, strict=True))] = piece
                pos += n
    for i in small:
        out[i] = Leaf(leaves[i].path, fulls[i], leaves[i].scalar)
    return out


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (what a collective exchanges).

    Example:
        >>> encoded_size({"a": 1})
        7
    """
    return len(json.dumps(value, separators=(",", ":")))
