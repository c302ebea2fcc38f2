"""The reader's checks of a manifest: everything read from one is validated before any I/O.

Keys stay inside the checkpoint's data prefix, sizes agree with shapes and
dtypes, indices are in range, the shards of an array partition it, and a
newer format version is refused with both versions named. The structure
these checks hold a manifest to is the one of
:mod:`cloudckpt.format.manifest_types` (the JSON Schema is generated from
it); the checks here add what a schema cannot express (docs/format.md,
section 9). They are plain Python: no schema library is imported to load
a checkpoint.

Example:
    >>> validate_header({"format": "cloudckpt", "format_version": 9})
    Traceback (most recent call last):
    ...
    cloudckpt.errors.FormatVersionError: format version 9 is newer than this cloudckpt ... reads (up to 3); upgrade cloudckpt to read it
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from cloudckpt import __about__
from cloudckpt.errors import FormatVersionError
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.format.dtypes import parse_dtype, storage_dtype, storage_shape
from cloudckpt.format.shards import partition_problem
from cloudckpt.format.structure import Invalid, check_header, check_structure
from cloudckpt.storage import validate_key

__all__ = [
    "FORMAT_VERSION",
    "NODE_TYPES",
    "Invalid",
    "version_for",
    "check_self_crc",
    "validate_header",
    "validate_manifest",
]

FORMAT_VERSION = 3  # the newest version this library reads; it writes the oldest that holds the tree
_MAX_DEPTH = 500  # the deepest a tree may nest
NODE_TYPES = {"dict", "list", "tuple", "none", "bool", "int", "float", "str", "array", "scalar", "alias", "per_rank"}
_V2_NODE_TYPES = {"alias"}  # node types that format version 1 lacks



def version_for(tree: Mapping[str, Any], arrays: Sequence[Mapping[str, Any]] | None = None) -> int:
    """The oldest format version that can hold ``tree`` and ``arrays``.

    3 if it has ``per_rank`` nodes (``PerRank`` values) or sharded arrays
    (a chunk grid that is not a contiguous split, or one array per shard);
    2 if it has ``alias`` nodes (tied tensors) or NamedTuples (tuple nodes
    with ``namedtuple``); else 1: a state without them stays readable by
    older readers.

    Example:
        >>> version_for({"t": "list", "v": [{"t": "array", "a": 0}, {"t": "alias", "a": 0}]})
        2
        >>> version_for({"t": "per_rank", "r": [{"t": "none"}]})
        3
    """
    if any("shards" in a or ("chunked" in a and a["chunked"].get("axis") is None) for a in arrays or []):
        return 3
    version = 1
    stack = [tree]
    while stack:
        n = stack.pop()
        if n.get("t") == "per_rank":
            return 3
        if n.get("t") in _V2_NODE_TYPES or "namedtuple" in n:
            version = 2
        if n.get("t") in ("dict", "list", "tuple"):
            stack.extend(n["v"])
    return version



_SELF_CRC = re.compile(rb',"crc32c":([0-9]{1,10})\}\s*$')


def check_self_crc(data: bytes, m: Mapping[str, Any]) -> None:
    """Verify the manifest's own crc32c (manifests written before it existed have none).

    ``data``: the manifest's bytes; ``m``: what they parse to.

    Example:
        >>> check_self_crc(b'{"a":1,"crc32c":3489125738}', {"a": 1, "crc32c": 3489125738})
    """
    if "crc32c" not in m:
        return
    match = _SELF_CRC.search(data)
    if match is None:
        raise Invalid("its crc32c field is not where the writer puts it (the last field)")
    body = data[: match.start()] + b"}"
    want = int(match.group(1))
    got = crc32c_of(body)
    if got != want or m["crc32c"] != want:
        raise Invalid(f"crc32c mismatch (recorded {want}, computed {got}): the manifest is damaged")



def _range(d: Mapping[str, Any], where: str, n_objects: int) -> tuple[int, int]:
    lo, hi = d["objects"]
    if not lo <= hi <= n_objects:
        raise Invalid(f"{where}.objects: range {[lo, hi]} outside the {n_objects} objects")
    return lo, hi


def _check_tree(node: Any, n_arrays: int, used: set[int], depth: int, aliases: list[int], features: set[str], in_rank: bool = False) -> None:
    """The tree's rules beyond its structure (checked before): depth, keys, references, nesting.

    ``features`` collects what needs a newer format version ('namedtuple', 'per_rank')."""
    if depth > _MAX_DEPTH:
        raise Invalid(f"tree: nested deeper than {_MAX_DEPTH} levels")
    t = node["t"]
    if t in ("dict", "list", "tuple"):
        vs = node["v"]
        if t == "dict":
            ks = node["k"]
            if len(ks) != len(vs):
                raise Invalid("tree: dict node with keys not matching values")
            if len(set(ks)) != len(ks):  # (no bools: 1 and '1' differ)
                seen: set[tuple[type, Any]] = set()
                for k in ks:
                    if (type(k), k) in seen:
                        raise Invalid(f"tree: duplicate dict key {k!r}")
                    seen.add((type(k), k))
        nt = node.get("namedtuple")
        if nt is not None:
            if len(nt["fields"]) != len(vs):
                raise Invalid("tree: malformed 'namedtuple' (a tuple node's {name, fields}, one field per value)")
            features.add("namedtuple")
        for v in vs:
            _check_tree(v, n_arrays, used, depth + 1, aliases, features, in_rank)
    elif t == "per_rank":
        if in_rank:
            raise Invalid("tree: per_rank node needs a non-empty list 'r' and cannot be nested")
        features.add("per_rank")
        for v in node["r"]:
            _check_tree(v, n_arrays, used, depth + 1, aliases, features, True)
    elif t == "alias":
        a = node["a"]
        if a >= n_arrays:
            raise Invalid(f"tree: alias of array {a!r} out of range")
        aliases.append(a)
    elif t in ("array", "scalar"):
        a = node["a"]
        if a >= n_arrays:
            raise Invalid(f"tree: array reference {a!r} out of range")
        if a in used:
            raise Invalid(f"tree: array {a} referenced twice")
        used.add(a)
    elif t == "float":
        _check_float(node)


def _check_float(node: Mapping[str, Any]) -> None:
    """A float node's value parses (its form is structural), and only a 'nan' has bits."""
    v = node["v"]
    try:
        float.fromhex(v)
    except (ValueError, OverflowError):
        raise Invalid(f"tree: float node with malformed value {v!r}") from None
    bits = node.get("bits")
    if bits is not None and v != "nan":
        raise Invalid(f"tree: float node with malformed bits {bits!r} (only a 'nan' has bits)")


def _check_chunked(
    c: Mapping[str, Any], sshape: tuple[int, ...], dt: Any, objects: list[Any], where: str, sharded: bool = False
) -> None:
    """A chunked array (or one shard of one): path, chunk grid, object count and sizes.

    ``axis`` is the axis of a contiguous split, or null for any regular grid
    (format 3: a sharded array's grid tiles its shards)."""
    try:
        validate_key(c["path"])
    except ValueError as exc:
        raise Invalid(f"{where}.path: {exc}") from None
    chunk = c["chunk_shape"]
    if len(chunk) != len(sshape):
        raise Invalid(f"{where}.chunk_shape: {chunk!r} does not fit shape {list(sshape)}")
    lo, hi = _range(c, where, len(objects))
    axis = c["axis"]
    if axis is None or sharded:
        # format 3 writers never make a chunk larger than its array: a reader
        # reads a grid chunk whole (with its padding) to check its crc32c
        if any(k > max(1, d) for k, d in zip(chunk, sshape, strict=True)):
            raise Invalid(f"{where}.chunk_shape: {chunk} is larger than the array's shape {list(sshape)}")
    if axis is None:
        n_chunks = math.prod(math.ceil(d / k) for d, k in zip(sshape, chunk, strict=True)) if math.prod(sshape) or not sshape else 0
    else:
        if axis > max(0, len(sshape) - 1):
            raise Invalid(f"{where}.axis: {axis} out of range [0, {max(0, len(sshape) - 1)}]")
        for ax in range(len(sshape) if math.prod(sshape) else 0):  # an empty array has no chunks
            if (ax < axis and chunk[ax] != 1) or (ax > axis and chunk[ax] != sshape[ax]):
                raise Invalid(f"{where}: chunk_shape {chunk} is not a contiguous split along axis {axis}")
        n_chunks = 1 if not sshape else (math.prod(sshape[:axis]) * math.ceil(sshape[axis] / chunk[axis]) if math.prod(sshape) else 0)
    if hi - lo != n_chunks:
        raise Invalid(f"{where}: {hi - lo} objects for {n_chunks} chunks")
    want = math.prod(chunk) * storage_dtype(dt).itemsize
    for o in objects[lo:hi]:
        if o["size"] != want:
            raise Invalid(f"{where}: object {o['key']} has size {o['size']}, chunks are {want}")


def _check_partition(boxes: list[tuple[list[int], list[int]]], shape: list[int], where: str) -> None:
    """The shards of an array must cover it exactly once (else a load would
    return memory no object filled)."""
    problem = partition_problem(shape, [(tuple(o), tuple(b)) for o, b in boxes])
    if problem:
        raise Invalid(f"{where}.shards: {problem.replace('pieces', 'shards')}")


def _check_version(m: Any) -> None:
    """A cloudckpt manifest of a version this library reads (before its structure: a newer one may differ)."""
    if not isinstance(m, dict):
        raise Invalid("manifest is not a JSON object")
    if m.get("format") != "cloudckpt":
        raise Invalid("not a cloudckpt manifest (field 'format' is not 'cloudckpt')")
    version = m.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise FormatVersionError(
            f"format version {version} is newer than this cloudckpt {__about__.__version__} reads "
            f"(up to {FORMAT_VERSION}); upgrade cloudckpt to read it"
        )


def _check_header_rules(m: Mapping[str, Any]) -> None:
    """The header's rules beyond its structure (checked before)."""
    if not m["created"] < 1e12:
        raise Invalid(f"created: {m['created']!r} is not a time in seconds since the epoch")
    writer = m["writer"]
    if writer.get("seq") is not None and writer.get("epoch") is None:
        raise Invalid("writer.seq: expected a positive int, and only beside an epoch")


def validate_header(m: Any) -> dict[str, Any]:
    """``m`` if its header fields are valid (see the module example): everything but the tree, arrays and objects."""
    _check_version(m)
    check_header(m)
    _check_header_rules(m)
    return m  # type: ignore[no-any-return]


def validate_manifest(m: Any) -> dict[str, Any]:
    """``m`` (a manifest parsed from JSON) if it is a valid manifest; raises
    :class:`Invalid` saying what is wrong where, or FormatVersionError.

    Its structure is checked against :mod:`cloudckpt.format.manifest_types`
    (:func:`cloudckpt.format.structure.check_structure`), then the rules a
    schema cannot express.

    Example:
        >>> validate_manifest({"format": "cloudckpt", "format_version": 1, "data": "d", "created": 0,
        ...                    "created_utc": "1970-01-01T00:00:00Z", "writer": {"library": "x", "attempt": "a",
        ...                    "epoch": None}, "checkpoint_number": None, "nbytes": 0, "metadata": {}, "pack": None,
        ...                    "objects": [], "arrays": [], "tree": {"t": "none"}})["data"]
        'd'
    """
    _check_version(m)
    _check_structure(m)
    _check_header_rules(m)
    objects = _check_objects(m)
    pack = _check_pack(m, objects)
    arrays = m["arrays"]
    sharded = False
    for n, a in enumerate(arrays):
        sharded = _check_array(a, n, pack, objects) or sharded
    _check_tree_of(m, arrays, sharded)
    return m


_SHARD_BOX = re.compile(r"\.shards\[[0-9]+\]\.(?:offset|shape)\[")


def _check_structure(m: Mapping[str, Any]) -> None:
    """The manifest's structure (:func:`check_structure`), with room to recurse through a deep tree."""
    try:
        check_structure(m)
    except RecursionError:
        # a deep tree: deeper than allowed, or as deep as allowed and checked again with room to recurse
        if _depth(m.get("tree")) > _MAX_DEPTH:
            raise Invalid(f"tree: nested deeper than {_MAX_DEPTH} levels") from None
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + 8 * _MAX_DEPTH)
        try:
            check_structure(m)
        finally:
            sys.setrecursionlimit(limit)
    except Invalid as exc:
        if _SHARD_BOX.search(str(exc)):  # say what it means for the array, as the cross-field check of the box does
            raise Invalid(f"{exc}: the shard's box does not lie inside the array") from None
        raise


def _depth(tree: Any) -> int:
    """How deep the tree nests (without recursing)."""
    deepest, stack = 0, [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > _MAX_DEPTH:
            break
        if isinstance(node, dict):
            for field in ("v", "r"):
                if isinstance(node.get(field), list):
                    stack.extend((v, depth + 1) for v in node[field])
    return deepest


def _check_objects(m: Mapping[str, Any]) -> list[Any]:
    data = m["data"]
    objects: list[Any] = m["objects"]
    keys: set[str] = set()
    for n, o in enumerate(objects):
        key = o["key"]
        try:
            validate_key(key)
        except ValueError as exc:
            raise Invalid(f"objects[{n}]: {exc}") from None
        if not key.startswith(data + "/"):
            raise Invalid(f"objects[{n}]: key {key!r} lies outside the checkpoint's data prefix {data!r}")
        if key in keys:
            raise Invalid(f"objects[{n}]: key {key!r} listed twice")
        keys.add(key)
    return objects


def _check_pack(m: Mapping[str, Any], objects: list[Any]) -> Any:
    pack = m["pack"]
    if pack is not None:
        pnb, csize = pack["nbytes"], pack["chunk_bytes"]
        lo, hi = _range(pack, "pack", len(objects))
        if hi - lo != math.ceil(pnb / csize):
            raise Invalid(f"pack: {hi - lo} objects for {pnb} bytes in chunks of {csize}")
        for o in objects[lo:hi]:
            if o["size"] != csize:
                raise Invalid(f"pack: object {o['key']} has size {o['size']}, chunks are {csize}")
    return pack


def _check_array(a: Mapping[str, Any], n: int, pack: Any, objects: list[Any]) -> bool:
    """arrays[n]: its size agrees with its dtype and shape, its bytes lie in the pack or its chunks.

    Returns whether it is a sharded array (format version 3)."""
    try:
        dt = parse_dtype(a["dtype"])
    except (ValueError, TypeError) as exc:
        raise Invalid(f"arrays[{n}].dtype: {exc}") from None
    shape, nbytes = a["shape"], a["nbytes"]
    if math.prod(shape) * dt.itemsize != nbytes:
        raise Invalid(f"arrays[{n}]: nbytes {nbytes} does not match shape {shape} of {dt}")
    p = a.get("packed")
    if p is not None:
        off = p["offset"]
        if pack is None or off + nbytes > pack["nbytes"]:
            raise Invalid(f"arrays[{n}]: packed bytes [{off}, {off + nbytes}) lie outside the pack")
        return False
    where = f"arrays[{n}]"
    if "chunked" in a:
        sshape = storage_shape(dt, tuple(shape))
        c = a["chunked"]
        if c["axis"] is None and sshape != tuple(shape):
            raise Invalid(f"{where}: dtype {dt} cannot be stored on a sharded grid (axis null)")
        _check_chunked(c, sshape, dt, objects, where + ".chunked")
        return c["axis"] is None
    _check_shards(a, where, dt, shape, objects)
    return True


def _check_shards(a: Mapping[str, Any], where: str, dt: Any, shape: list[int], objects: list[Any]) -> None:
    sshape = storage_shape(dt, tuple(shape))
    if sshape != tuple(shape):
        raise Invalid(f"{where}: dtype {dt} cannot be stored per shard")
    boxes = []
    for k, sh in enumerate(a["shards"]):
        w = f"{where}.shards[{k}]"
        off, bshape = sh["offset"], sh["shape"]
        if len(off) != len(shape) or len(bshape) != len(shape) or not all(
            o + n <= d for o, n, d in zip(off, bshape, shape, strict=True)
        ):
            raise Invalid(f"{w}: box {bshape} at {off} does not lie inside shape {shape}")
        boxes.append((off, bshape))
        _check_chunked(sh, tuple(bshape), dt, objects, w, sharded=True)
    _check_partition(boxes, shape, where)


def _check_tree_of(m: Mapping[str, Any], arrays: list[Any], sharded: bool) -> None:
    version = int(m["format_version"])
    tree = m["tree"]
    used: set[int] = set()
    aliases: list[int] = []
    features: set[str] = set()
    _check_tree(tree, len(arrays), used, 0, aliases, features)
    needed = 3 if sharded or "per_rank" in features else 2 if aliases or features else 1  # (as version_for)
    if version < needed:
        raise Invalid(
            f"tree: format_version {needed} is needed for what it holds (2: alias nodes, namedtuple fields; "
            f"3: per_rank nodes, sharded arrays), the manifest says {version}"
        )
    for a in aliases:
        if a not in used:
            raise Invalid(f"tree: alias of array {a}, which no array node references")
