"""Zarr node names of a state tree's keys, and the paths of its leaves.

Each key of the state becomes the name of a zarr group or array node:
:func:`encode_name` keeps readable keys as they are and quotes the rest
reversibly (:func:`decode_name`). :func:`node_paths`, :func:`leaf_paths` and
:func:`leaf_entries` walk the manifest's tree (:mod:`cloudckpt.format.tree`)
for the zarr path of each array, the key path of each leaf, and the entries
``cloudckpt.info`` lists.

Example:
    >>> encode_name("model"), encode_name("a/b"), decode_name(encode_name("a/b"))
    ('model', 'a%2Fb', 'a/b')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from cloudckpt.format.tree import Key, Path, unflatten

__all__ = ["ROOT_NODE", "encode_name", "decode_name", "node_paths", "leaf_paths", "leaf_entries"]

_ALWAYS_QUOTE = {"%", "/", "\\"}
_ZARR_JSON = "zarr.json"
# a name encode_name keeps as it is: no character it quotes, no leading "_" or "#"
_PLAIN_NAME = re.compile(r"[^%/\\\x00-\x1f\x7f_#][^%/\\\x00-\x1f\x7f]*")
ROOT_NODE = "_root"


def encode_name(key: Key, *, in_list: bool = False) -> str:
    """The zarr node name of one key: reversible, never empty, never ``__...``.

    str keys are kept readable: only ``%``, ``/``, ``\\``, control characters,
    a leading ``_`` or ``#``, all-dot names and the name ``zarr.json`` (its
    ``.``) are percent-encoded; the empty string is ``%``. int dict keys
    are ``#<n>``; list/tuple indices are ``<n>``. Names starting with ``_`` (after encoding) are cloudckpt's own.

    Example:
        >>> encode_name("b/x"), encode_name(""), encode_name("__init__"), encode_name(3), encode_name(3, in_list=True)
        ('b%2Fx', '%', '%5F_init__', '#3', '3')
    """
    if in_list:
        return str(int(key))
    if isinstance(key, int):
        return f"#{key}"
    if key == "":
        return "%"
    if _PLAIN_NAME.fullmatch(key) and key != _ZARR_JSON and key.strip("."):
        return key  # the common case, without a loop over its characters
    out = []
    for i, ch in enumerate(key):
        if ch in _ALWAYS_QUOTE or ord(ch) < 0x20 or ord(ch) == 0x7F or (i == 0 and ch in "_#"):
            out.append(_percent(ch))
        else:
            out.append(ch)
    name = "".join(out)
    if set(name) == {"."}:
        name = "%2E" * len(name)
    elif name == _ZARR_JSON:
        # a child named zarr.json would collide with its group's metadata document
        name = "zarr%2Ejson"
    return name


def _percent(ch: str) -> str:
    # not urllib's quote(): it leaves "_" (unreserved) as is, and "__x" is no zarr name
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def decode_name(name: str) -> Key:
    """Inverse of :func:`encode_name` for dict keys.

    Example:
        >>> decode_name("b%2Fx"), decode_name("#3"), decode_name("%")
        ('b/x', 3, '')
    """
    if name == "%":
        return ""
    if name.startswith("#"):
        return int(name[1:])
    return unquote(name)


def node_paths(node: Mapping[str, Any]) -> dict[int, str]:
    """The zarr node path of every array of a tree, by array index, in one walk.

    Example:
        >>> import numpy as np
        >>> import numpy as np
        >>> from cloudckpt.format.tree import flatten
        >>> tree, _ = flatten({"a": [np.zeros(1)], "b/c": np.ones(1)})
        >>> node_paths(tree)
        {0: 'a/0', 1: 'b%2Fc'}
    """
    out: dict[int, str] = {}

    def walk(n: Mapping[str, Any], prefix: str) -> None:
        t = n["t"]
        if t in ("array", "scalar"):
            out[n["a"]] = prefix or ROOT_NODE
        elif t == "dict":
            for k, v in zip(n["k"], n["v"], strict=True):
                name = encode_name(k)
                walk(v, f"{prefix}/{name}" if prefix else name)
        elif t in ("list", "tuple"):
            for i, v in enumerate(n["v"]):
                walk(v, f"{prefix}/{i}" if prefix else str(i))
        elif t == "per_rank":
            for r, v in enumerate(n["r"]):
                walk(v, f"{prefix}/_r{r}" if prefix else f"_r{r}")

    walk(node, "")
    return out


def leaf_paths(node: Mapping[str, Any], n: int) -> list[Path]:
    """The path of each of the ``n`` arrays of a tree, by array index (the
    arrays of every rank's ``per_rank`` value at the ``PerRank``'s path).

    Example:
        >>> import numpy as np
        >>> import numpy as np
        >>> from cloudckpt.format.tree import flatten
        >>> tree, _ = flatten({"a": [np.zeros(1)], "b": np.ones(1)})
        >>> leaf_paths(tree, 2)
        [('a', 0), ('b',)]
    """
    paths: list[Path] = [()] * n

    def walk(x: Mapping[str, Any], path: Path) -> None:
        t = x["t"]
        if t in ("array", "scalar"):
            paths[x["a"]] = path
        elif t == "dict":
            for k, v in zip(x["k"], x["v"], strict=True):
                walk(v, (*path, k))
        elif t in ("list", "tuple"):
            for i, v in enumerate(x["v"]):
                walk(v, (*path, i))
        elif t == "per_rank":
            for v in x.get("r", [x["v"]] if "v" in x else []):
                walk(v, path)

    walk(node, ())
    return paths


def leaf_entries(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every leaf of a tree in tree order, for showing what a checkpoint holds.

    Each is ``{"path": [keys], "kind": ...}``, with ``"rank"`` under a
    ``PerRank`` value (one entry per rank's leaf); kind ``"array"`` /
    ``"scalar"`` / ``"alias"`` (tied: the same tensor as an earlier leaf)
    carry ``"array"``, the array index; kind ``"json"`` carries the value's
    ``"type"`` name and ``"value"``.

    Example:
        >>> import numpy as np
        >>> import numpy as np
        >>> from cloudckpt.format.tree import flatten
        >>> tree, _ = flatten({"w": np.zeros(2), "step": 3})
        >>> for e in leaf_entries(tree):
        ...     print(e)
        {'path': ['w'], 'kind': 'array', 'array': 0}
        {'path': ['step'], 'kind': 'json', 'type': 'int', 'value': 3}
    """
    out: list[dict[str, Any]] = []

    def walk(n: Mapping[str, Any], path: Path, rank: dict[str, int]) -> None:
        t = n["t"]
        if t == "dict":
            for k, v in zip(n["k"], n["v"], strict=True):
                walk(v, (*path, k), rank)
        elif t in ("list", "tuple"):
            for i, v in enumerate(n["v"]):
                walk(v, (*path, i), rank)
        elif t == "per_rank" and "r" in n:  # format 3: one entry per rank's value
            for r, v in enumerate(n["r"]):
                walk(v, path, {"rank": r})
        elif t == "per_rank":  # before a save: this process's own value
            walk(n["v"], path, rank)
        elif t in ("array", "scalar", "alias"):
            out.append({"path": list(path), **rank, "kind": t, "array": n["a"]})
        else:
            value = unflatten(n, {})
            out.append({"path": list(path), **rank, "kind": "json", "type": type(value).__name__, "value": value})

    walk(node, (), {})
    return out
