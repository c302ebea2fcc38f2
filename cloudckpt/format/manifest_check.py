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
from collections.abc import Mapping, Sequence
from typing import Any

from cloudckpt import __about__
from cloudckpt.errors import FormatVersionError
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.format.dtypes import parse_dtype, storage_dtype, storage_shape
from cloudckpt.format.shards import partition_problem
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
_DATA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_NDIM = 64
_MAX_SIZE = 1 << 56
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



class Invalid(Exception):
    """What is wrong with a manifest, and where (the parser turns it into a CorruptCheckpointError naming the URL).

    Example:
        >>> validate_manifest([])
        Traceback (most recent call last):
        ...
        cloudckpt.format.manifest_check.Invalid: manifest is not a JSON object
    """


def _req(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise Invalid(f"{where}: missing field '{key}'")
    v = d[key]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise Invalid(f"{where}.{key}: expected {types}, got bool")
    if not isinstance(v, types):
        raise Invalid(f"{where}.{key}: expected {getattr(types, '__name__', types)}, got {type(v).__name__}")
    return v


def _int(d: Mapping[str, Any], key: str, where: str, lo: int = 0, hi: int = _MAX_SIZE) -> int:
    v = _req(d, key, int, where)
    if not lo <= v <= hi:
        raise Invalid(f"{where}.{key}: {v} out of range [{lo}, {hi}]")
    return int(v)


def _range(d: Mapping[str, Any], where: str, n_objects: int) -> tuple[int, int]:
    r = _req(d, "objects", list, where)
    if len(r) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in r):
        raise Invalid(f"{where}.objects: expected [start, stop]")
    lo, hi = r
    if not 0 <= lo <= hi <= n_objects:
        raise Invalid(f"{where}.objects: range {r} outside the {n_objects} objects")
    return lo, hi


def _check_tree(
    node: Any, n_arrays: int, used: set[int], depth: int = 0, aliases: list[int] | None = None, in_rank: bool = False
) -> None:
    if depth > 500:
        raise Invalid("tree: nested deeper than 500 levels")
    if not isinstance(node, dict):
        raise Invalid("tree: node is not an object")
    t = node.get("t")
    if t not in NODE_TYPES:
        raise Invalid(f"tree: unknown node type {t!r}")
    if t in ("dict", "list", "tuple"):
        vs = node.get("v")
        if not isinstance(vs, list):
            raise Invalid(f"tree: {t} node without a list 'v'")
        if t == "dict":
            ks = node.get("k")
            if not isinstance(ks, list) or len(ks) != len(vs):
                raise Invalid("tree: dict node with keys not matching values")
            seen: set[tuple[str, Any]] = set()
            for k in ks:
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise Invalid(f"tree: dict key {k!r} is not a str or int")
                mk = (type(k).__name__, k)
                if mk in seen:
                    raise Invalid(f"tree: duplicate dict key {k!r}")
                seen.add(mk)
        nt = node.get("namedtuple")
        if nt is not None and not (
            t == "tuple"
            and isinstance(nt, dict)
            and set(nt) == {"name", "fields"}
            and isinstance(nt["name"], str)
            and 0 < len(nt["name"]) <= 1024
            and isinstance(nt["fields"], list)
            and len(nt["fields"]) == len(vs)
            and all(isinstance(f, str) and 0 < len(f) <= 1024 for f in nt["fields"])
        ):
            raise Invalid("tree: malformed 'namedtuple' (a tuple node's {name, fields}, one field per value)")
        for v in vs:
            _check_tree(v, n_arrays, used, depth + 1, aliases, in_rank)
    elif t == "per_rank":
        rs = node.get("r")
        if in_rank or not isinstance(rs, list) or not 1 <= len(rs) <= 1 << 20:
            raise Invalid("tree: per_rank node needs a non-empty list 'r' and cannot be nested")
        for v in rs:
            _check_tree(v, n_arrays, used, depth + 1, aliases, True)
    elif t == "alias":
        a = node.get("a")
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < n_arrays:
            raise Invalid(f"tree: alias of array {a!r} out of range")
        if aliases is not None:
            aliases.append(a)
    elif t in ("array", "scalar"):
        a = node.get("a")
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < n_arrays:
            raise Invalid(f"tree: array reference {a!r} out of range")
        if a in used:
            raise Invalid(f"tree: array {a} referenced twice")
        used.add(a)
    else:
        _check_value(node, t)


def _check_value(node: Mapping[str, Any], t: str) -> None:
    """A node of a non-array leaf: bool, int, float or str (none has nothing to check)."""
    if t == "bool":
        if not isinstance(node.get("v"), bool):
            raise Invalid("tree: bool node without a bool value")
    elif t == "int":
        v = node.get("v")
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise Invalid("tree: int node without an int value")
        # big ints: decimal (within Python's int/str conversion limit) or hex
        if isinstance(v, str) and not (
            (len(v) <= 4000 and re.fullmatch(r"-?[0-9]+", v)) or re.fullmatch(r"-?0x[0-9a-f]+", v)
        ):
            raise Invalid("tree: int node with a malformed value")
    elif t == "float":
        v = node.get("v")
        if not isinstance(v, str) or len(v) > 64:
            raise Invalid("tree: float node without a hex string value")
        try:
            float.fromhex(v)
        except (ValueError, OverflowError):
            raise Invalid(f"tree: float node with malformed value {v!r}") from None
        bits = node.get("bits")
        if bits is not None and not (isinstance(bits, str) and re.fullmatch(r"0x[0-9a-f]{16}", bits) and v == "nan"):
            raise Invalid(f"tree: float node with malformed bits {bits!r} (only a 'nan' has bits)")
    elif t == "str" and not isinstance(node.get("v"), str):
        raise Invalid("tree: str node without a str value")


def _check_chunked(
    c: Mapping[str, Any], sshape: tuple[int, ...], dt: Any, objects: list[Any], where: str, sharded: bool = False
) -> None:
    """A chunked array (or one shard of one): path, chunk grid, object count and sizes.

    ``axis`` is the axis of a contiguous split, or null for any regular grid
    (format 3: a sharded array's grid tiles its shards)."""
    path = _req(c, "path", str, where)
    try:
        validate_key(path)
    except ValueError as exc:
        raise Invalid(f"{where}.path: {exc}") from None
    chunk = _req(c, "chunk_shape", list, where)
    if len(chunk) != len(sshape) or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x < _MAX_SIZE for x in chunk):
        raise Invalid(f"{where}.chunk_shape: {chunk!r} does not fit shape {list(sshape)}")
    if "axis" not in c:
        raise Invalid(f"{where}: missing field 'axis'")
    lo, hi = _range(c, where, len(objects))
    if c["axis"] is None or sharded:
        # format 3 writers never make a chunk larger than its array: a reader
        # reads a grid chunk whole (with its padding) to check its crc32c
        if any(k > max(1, d) for k, d in zip(chunk, sshape, strict=True)):
            raise Invalid(f"{where}.chunk_shape: {chunk} is larger than the array's shape {list(sshape)}")
    if c["axis"] is None:
        n_chunks = math.prod(math.ceil(d / k) for d, k in zip(sshape, chunk, strict=True)) if math.prod(sshape) or not sshape else 0
    else:
        axis = _int(c, "axis", where, 0, max(0, len(sshape) - 1))
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


_MAX_RANGES = 1000


def _position(v: Any, where: str) -> None:
    if not (
        isinstance(v, list)
        and len(v) == 3
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < _MAX_SIZE for x in v)
        and v[0] in (0, 1)
    ):
        raise Invalid(f"{where}: expected a commit position [managed (0 or 1), epoch, sequence], got {v!r}")


def validate_header(m: Any) -> dict[str, Any]:
    """``m`` if its header fields are valid (see the module example): everything but the tree, arrays and objects."""
    if not isinstance(m, dict):
        raise Invalid("manifest is not a JSON object")
    if m.get("format") != "cloudckpt":
        raise Invalid("not a cloudckpt manifest (field 'format' is not 'cloudckpt')")
    version = _req(m, "format_version", int, "manifest")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"format version {version} is newer than this cloudckpt {__about__.__version__} reads "
            f"(up to {FORMAT_VERSION}); upgrade cloudckpt to read it"
        )
    if version < 1:
        raise Invalid(f"format_version {version} is not valid")
    data = _req(m, "data", str, "manifest")
    if not _DATA_RE.match(data) or data in (".", ".."):
        raise Invalid(f"data prefix {data!r} is not a plain directory name")
    created = _req(m, "created", (int, float), "manifest")
    if not 0 <= created < 1e12:
        raise Invalid(f"created: {created!r} is not a time in seconds since the epoch")
    writer = _req(m, "writer", dict, "manifest")
    epoch = writer.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < _MAX_SIZE):
        raise Invalid("writer.epoch: expected a non-negative int or null")
    seq = writer.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < _MAX_SIZE or epoch is None):
        raise Invalid("writer.seq: expected a positive int, and only beside an epoch")
    if writer.get("follows") is not None:
        _position(writer["follows"], "writer.follows")
    ranges = writer.get("abandoned")
    if ranges is not None:
        if not isinstance(ranges, list) or len(ranges) > _MAX_RANGES:
            raise Invalid(f"writer.abandoned: expected a list of at most {_MAX_RANGES} ranges")
        for r in ranges:
            if not isinstance(r, list) or len(r) != 2:
                raise Invalid("writer.abandoned: every range is [after, upto]")
            _position(r[0], "writer.abandoned")
            _position(r[1], "writer.abandoned")
    lp = writer.get("last_preserved_timestamp")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, (int, float))):
        raise Invalid("writer.last_preserved_timestamp: expected a number")
    number = m.get("checkpoint_number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < _MAX_SIZE):
        raise Invalid("checkpoint_number: expected a non-negative int or null")
    _req(m, "metadata", dict, "manifest")
    nbytes = m.get("nbytes")
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes < _MAX_SIZE):
        raise Invalid("nbytes: expected a non-negative int")
    stored = m.get("stored")
    if stored is not None and not (
        isinstance(stored, dict)
        and all(
            isinstance(stored.get(k), int) and not isinstance(stored.get(k), bool) and 0 <= stored[k] < _MAX_SIZE
            for k in ("objects", "bytes")
        )
    ):
        raise Invalid("stored: expected {objects, bytes} counts")
    return m


def validate_manifest(m: Any) -> dict[str, Any]:
    """``m`` (a manifest parsed from JSON) if it is a valid manifest; raises
    :class:`Invalid` saying what is wrong where, or FormatVersionError.

    Example:
        >>> validate_manifest({"format": "cloudckpt", "format_version": 1, "data": "d", "created": 0,
        ...                    "writer": {}, "metadata": {}, "objects": [], "arrays": [], "tree": {"t": "none"}})["data"]
        'd'
    """
    validate_header(m)
    objects = _check_objects(m)
    pack = _check_pack(m, objects)
    arrays = _req(m, "arrays", list, "manifest")
    for n, a in enumerate(arrays):
        _check_array(a, f"arrays[{n}]", pack, objects)
    _check_tree_of(m, arrays)
    return m


def _check_objects(m: Mapping[str, Any]) -> list[Any]:
    data = str(m["data"])
    objects = _req(m, "objects", list, "manifest")
    keys: set[str] = set()
    for n, o in enumerate(objects):
        where = f"objects[{n}]"
        if not isinstance(o, dict):
            raise Invalid(f"{where}: not an object")
        key = _req(o, "key", str, where)
        try:
            validate_key(key)
        except ValueError as exc:
            raise Invalid(f"{where}: {exc}") from None
        if not key.startswith(data + "/"):
            raise Invalid(f"{where}: key {key!r} lies outside the checkpoint's data prefix {data!r}")
        if key in keys:
            raise Invalid(f"{where}: key {key!r} listed twice")
        keys.add(key)
        _int(o, "size", where)
        _int(o, "crc32c", where, 0, 0xFFFFFFFF)
    return objects


def _check_pack(m: Mapping[str, Any], objects: list[Any]) -> Any:
    pack = m.get("pack")
    if pack is not None:
        if not isinstance(pack, dict):
            raise Invalid("pack: expected an object or null")
        pnb = _int(pack, "nbytes", "pack")
        csize = _int(pack, "chunk_bytes", "pack", 1)
        lo, hi = _range(pack, "pack", len(objects))
        if hi - lo != math.ceil(pnb / csize):
            raise Invalid(f"pack: {hi - lo} objects for {pnb} bytes in chunks of {csize}")
        for o in objects[lo:hi]:
            if o["size"] != csize:
                raise Invalid(f"pack: object {o['key']} has size {o['size']}, chunks are {csize}")
        if _req(pack, "path", str, "pack") != "_pack":
            raise Invalid(f"pack.path: {pack['path']!r} is not the pack array '_pack'")
    return pack


def _check_array(a: Any, where: str, pack: Any, objects: list[Any]) -> None:
    if not isinstance(a, dict):
        raise Invalid(f"{where}: not an object")
    try:
        dt = parse_dtype(a.get("dtype"))
    except (ValueError, TypeError) as exc:
        raise Invalid(f"{where}.dtype: {exc}") from None
    shape = _req(a, "shape", list, where)
    if len(shape) > _MAX_NDIM or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < _MAX_SIZE for x in shape):
        raise Invalid(f"{where}.shape: {shape!r} is not a list of non-negative ints")
    nbytes = _int(a, "nbytes", where)
    if math.prod(shape) * dt.itemsize != nbytes:
        raise Invalid(f"{where}: nbytes {nbytes} does not match shape {shape} of {dt}")
    if ("packed" in a) + ("chunked" in a) + ("shards" in a) != 1:
        raise Invalid(f"{where}: needs exactly one of 'packed', 'chunked' and 'shards'")
    if "packed" in a:
        p = _req(a, "packed", dict, where)
        off = _int(p, "offset", where + ".packed")
        _int(p, "crc32c", where + ".packed", 0, 0xFFFFFFFF)
        if pack is None or off + nbytes > pack["nbytes"]:
            raise Invalid(f"{where}: packed bytes [{off}, {off + nbytes}) lie outside the pack")
    elif "chunked" in a:
        sshape = storage_shape(dt, tuple(shape))
        c = _req(a, "chunked", dict, where)
        if c.get("axis", 0) is None and sshape != tuple(shape):
            raise Invalid(f"{where}: dtype {dt} cannot be stored on a sharded grid (axis null)")
        _check_chunked(c, sshape, dt, objects, where + ".chunked")
    else:
        _check_shards(a, where, dt, shape, objects)


def _check_shards(a: Mapping[str, Any], where: str, dt: Any, shape: list[int], objects: list[Any]) -> None:
    sshape = storage_shape(dt, tuple(shape))
    if sshape != tuple(shape):
        raise Invalid(f"{where}: dtype {dt} cannot be stored per shard")
    shards = _req(a, "shards", list, where)
    if not shards:
        raise Invalid(f"{where}.shards: empty")
    boxes = []
    for k, sh in enumerate(shards):
        w = f"{where}.shards[{k}]"
        if not isinstance(sh, dict):
            raise Invalid(f"{w}: not an object")
        off = _req(sh, "offset", list, w)
        bshape = _req(sh, "shape", list, w)
        if len(off) != len(shape) or len(bshape) != len(shape) or not all(
            isinstance(o, int) and isinstance(n, int) and not isinstance(o, bool) and not isinstance(n, bool)
            and 0 <= o and 0 < n and o + n <= d
            for o, n, d in zip(off, bshape, shape, strict=True)
        ):
            raise Invalid(f"{w}: box {bshape} at {off} does not lie inside shape {shape}")
        boxes.append((off, bshape))
        _check_chunked(sh, tuple(bshape), dt, objects, w, sharded=True)
    _check_partition(boxes, shape, where)


def _check_tree_of(m: Mapping[str, Any], arrays: list[Any]) -> None:
    version = int(m["format_version"])
    tree = _req(m, "tree", dict, "manifest")
    used: set[int] = set()
    aliases: list[int] = []
    _check_tree(tree, len(arrays), used, 0, aliases)
    needed = version_for(tree, arrays)
    if version < needed:
        raise Invalid(
            f"tree: format_version {needed} is needed for what it holds (2: alias nodes, namedtuple fields; "
            f"3: per_rank nodes, sharded arrays), the manifest says {version}"
        )
    for a in aliases:
        if a not in used:
            raise Invalid(f"tree: alias of array {a}, which no array node references")
