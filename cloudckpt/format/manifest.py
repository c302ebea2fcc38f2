"""The manifest: the commit record of a checkpoint.

``manifest.json`` is written last and create-only; a checkpoint exists if and
only if it exists and parses. It records the format version, the tree
structure, every array (dtype, shape, where its bytes are, crc32c of packed
tensors), and every object the checkpoint owns with its size and crc32c, so
that restore, verify, copy and delete need no listing. Its JSON Schema is
``manifest.schema.json`` beside this module (and in docs/format.md),
generated from the types of :mod:`cloudckpt.format.manifest_types`.

Everything read from a manifest is validated here before any I/O: keys stay
inside the checkpoint's data prefix, sizes agree with shapes and dtypes,
indices are in range. A newer format version is refused with both versions
named.

Example:
    >>> m = build_manifest(tree={"t": "none"}, arrays=[], pack=None, objects=[],
    ...                    data="data-0123456789abcdef", attempt="0123456789abcdef")
    >>> parse_manifest(encode_manifest(m), "memory://x/manifest.json")["format_version"]
    1
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cloudckpt import __about__
from cloudckpt.errors import CorruptCheckpointError, FormatVersionError
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.format.dtypes import parse_dtype, storage_dtype, storage_shape
from cloudckpt.format.records import ArrayRecord, PackRecord
from cloudckpt.format.shards import partition_problem
from cloudckpt.storage import validate_key

if TYPE_CHECKING:
    from cloudckpt.format.manifest_types import ObjectEntry

__all__ = [
    "FORMAT_VERSION",
    "version_for",
    "MANIFEST_KEY",
    "build_manifest",
    "encode_manifest",
    "parse_manifest",
    "parse_header",
    "header_of",
    "check_manifest_size",
    "max_manifest_bytes",
    "HEADER_FIELDS",
]

FORMAT_VERSION = 3  # the newest version this library reads; it writes the oldest that holds the tree
MANIFEST_KEY = "manifest.json"
_DATA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_NDIM = 64
_MAX_SIZE = 1 << 56
_NODE_TYPES = {"dict", "list", "tuple", "none", "bool", "int", "float", "str", "array", "scalar", "alias", "per_rank"}
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


def build_manifest(
    *,
    tree: dict[str, Any],
    arrays: Sequence[ArrayRecord],
    pack: PackRecord | None,
    objects: Sequence[ObjectEntry],
    data: str,
    attempt: str,
    checkpoint_number: int | None = None,
    epoch: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    created: float | None = None,
    writer_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest dict (see docs/format.md for every field).

    ``writer_extra`` adds fields to ``writer`` (the manager records its
    retention clock there so that it survives the loss of the state file).
    The typed records become the JSON they stand for (:meth:`to_json`).
    """
    arrays_json = [a.to_json() for a in arrays]
    created = time.time() if created is None else float(created)
    writer = {"library": f"cloudckpt {__about__.__version__}", "attempt": attempt, "epoch": epoch}
    writer.update(writer_extra or {})
    return {
        "format": "cloudckpt",
        "format_version": version_for(tree, arrays_json),
        "created": created,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "writer": writer,
        "checkpoint_number": checkpoint_number,
        "data": data,
        "nbytes": sum(a.nbytes for a in arrays),
        "stored": {"objects": len(objects) + 1, "bytes": sum(int(o["size"]) for o in objects)},
        "metadata": dict(metadata or {}),
        "tree": tree,
        "arrays": arrays_json,
        "pack": None if pack is None else pack.to_json(),
        "objects": list(objects),
    }


_SELF_CRC = re.compile(rb',"crc32c":([0-9]{1,10})\}\s*$')
_HEADER_CRC = re.compile(rb'^"header_crc32c":([0-9]{1,10}),')

#: The fields of a manifest's header: everything a directory listing needs
#: (number, times, writer with its epoch and sequence, user metadata). The
#: writer puts them first, on the first line (see :func:`encode_manifest`).
HEADER_FIELDS = (
    "format",
    "format_version",
    "created",
    "created_utc",
    "writer",
    "checkpoint_number",
    "data",
    "nbytes",
    "stored",
    "metadata",
)
#: Bytes read from the start of a manifest to find its header (a header that
#: does not fit makes the reader fall back to the whole manifest).
HEADER_READ_BYTES = 64 * 1024
#: Default of the manifest size limit (``CLOUDCKPT_MAX_MANIFEST_BYTES``).
DEFAULT_MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def max_manifest_bytes() -> int:
    """The manifest size limit in bytes: env ``CLOUDCKPT_MAX_MANIFEST_BYTES``, default 16 MiB.

    A manifest over it is refused before it is parsed (read) or committed
    (save): it bounds the memory and time any operation spends on one manifest.

    Example:
        >>> max_manifest_bytes() >= 1024
        True
    """
    text = os.environ.get("CLOUDCKPT_MAX_MANIFEST_BYTES")
    if not text:
        return DEFAULT_MAX_MANIFEST_BYTES
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"CLOUDCKPT_MAX_MANIFEST_BYTES must be a number of bytes, got {text!r}") from None
    if value < 1024:
        raise ValueError(f"CLOUDCKPT_MAX_MANIFEST_BYTES must be at least 1024, got {value}")
    return value


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Serialize a manifest to UTF-8 JSON (no NaN: floats in the tree are hex strings).

    The header fields (:data:`HEADER_FIELDS`) come first, followed by a
    newline (the only raw newline: compact JSON escapes those in strings) and
    ``header_crc32c``, the crc32c of the bytes before the newline; a listing
    reads and checks just that first line. The last field, ``crc32c``, is the
    crc32c of the bytes before it plus the closing brace — the manifest with
    that field removed — so that a flipped bit anywhere in the manifest is
    detected even where the JSON still parses.

    Example:
        >>> encode_manifest({"a": 1})
        b'{"a":1,"crc32c":3489125738}'
        >>> encode_manifest({"format": "cloudckpt", "tree": {}}).split(b"\\n")[0]
        b'{"format":"cloudckpt",'
    """
    body = {k: v for k, v in manifest.items() if k not in ("crc32c", "header_crc32c")}
    head = {k: body[k] for k in HEADER_FIELDS if k in body}
    rest = {k: v for k, v in body.items() if k not in head}
    if head and rest:
        first = _dumps(head)[:-1] + b","
        data = first + b'\n"header_crc32c":' + str(crc32c_of(first)).encode() + b"," + _dumps(rest)[1:]
    else:
        data = _dumps(body)
    if not data.endswith(b"}") or data == b"{}":
        return data
    return data[:-1] + b',"crc32c":' + str(crc32c_of(data)).encode() + b"}"


def _check_self_crc(data: bytes, m: Mapping[str, Any]) -> None:
    """Verify the manifest's own crc32c (manifests written before it existed have none)."""
    if "crc32c" not in m:
        return
    match = _SELF_CRC.search(data)
    if match is None:
        raise _Bad("its crc32c field is not where the writer puts it (the last field)")
    body = data[: match.start()] + b"}"
    want = int(match.group(1))
    got = crc32c_of(body)
    if got != want or m["crc32c"] != want:
        raise _Bad(f"crc32c mismatch (recorded {want}, computed {got}): the manifest is damaged")


class _Bad(Exception):
    pass


def _req(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise _Bad(f"{where}: missing field '{key}'")
    v = d[key]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _Bad(f"{where}.{key}: expected {types}, got bool")
    if not isinstance(v, types):
        raise _Bad(f"{where}.{key}: expected {getattr(types, '__name__', types)}, got {type(v).__name__}")
    return v


def _int(d: Mapping[str, Any], key: str, where: str, lo: int = 0, hi: int = _MAX_SIZE) -> int:
    v = _req(d, key, int, where)
    if not lo <= v <= hi:
        raise _Bad(f"{where}.{key}: {v} out of range [{lo}, {hi}]")
    return int(v)


def _range(d: Mapping[str, Any], where: str, n_objects: int) -> tuple[int, int]:
    r = _req(d, "objects", list, where)
    if len(r) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in r):
        raise _Bad(f"{where}.objects: expected [start, stop]")
    lo, hi = r
    if not 0 <= lo <= hi <= n_objects:
        raise _Bad(f"{where}.objects: range {r} outside the {n_objects} objects")
    return lo, hi


def _check_tree(
    node: Any, n_arrays: int, used: set[int], depth: int = 0, aliases: list[int] | None = None, in_rank: bool = False
) -> None:
    if depth > 500:
        raise _Bad("tree: nested deeper than 500 levels")
    if not isinstance(node, dict):
        raise _Bad("tree: node is not an object")
    t = node.get("t")
    if t not in _NODE_TYPES:
        raise _Bad(f"tree: unknown node type {t!r}")
    if t in ("dict", "list", "tuple"):
        vs = node.get("v")
        if not isinstance(vs, list):
            raise _Bad(f"tree: {t} node without a list 'v'")
        if t == "dict":
            ks = node.get("k")
            if not isinstance(ks, list) or len(ks) != len(vs):
                raise _Bad("tree: dict node with keys not matching values")
            seen: set[tuple[str, Any]] = set()
            for k in ks:
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise _Bad(f"tree: dict key {k!r} is not a str or int")
                mk = (type(k).__name__, k)
                if mk in seen:
                    raise _Bad(f"tree: duplicate dict key {k!r}")
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
            raise _Bad("tree: malformed 'namedtuple' (a tuple node's {name, fields}, one field per value)")
        for v in vs:
            _check_tree(v, n_arrays, used, depth + 1, aliases, in_rank)
    elif t == "per_rank":
        rs = node.get("r")
        if in_rank or not isinstance(rs, list) or not 1 <= len(rs) <= 1 << 20:
            raise _Bad("tree: per_rank node needs a non-empty list 'r' and cannot be nested")
        for v in rs:
            _check_tree(v, n_arrays, used, depth + 1, aliases, True)
    elif t == "alias":
        a = node.get("a")
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < n_arrays:
            raise _Bad(f"tree: alias of array {a!r} out of range")
        if aliases is not None:
            aliases.append(a)
    elif t in ("array", "scalar"):
        a = node.get("a")
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < n_arrays:
            raise _Bad(f"tree: array reference {a!r} out of range")
        if a in used:
            raise _Bad(f"tree: array {a} referenced twice")
        used.add(a)
    elif t == "bool":
        if not isinstance(node.get("v"), bool):
            raise _Bad("tree: bool node without a bool value")
    elif t == "int":
        v = node.get("v")
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise _Bad("tree: int node without an int value")
        # big ints: decimal (within Python's int/str conversion limit) or hex
        if isinstance(v, str) and not (
            (len(v) <= 4000 and re.fullmatch(r"-?[0-9]+", v)) or re.fullmatch(r"-?0x[0-9a-f]+", v)
        ):
            raise _Bad("tree: int node with a malformed value")
    elif t == "float":
        v = node.get("v")
        if not isinstance(v, str) or len(v) > 64:
            raise _Bad("tree: float node without a hex string value")
        try:
            float.fromhex(v)
        except (ValueError, OverflowError):
            raise _Bad(f"tree: float node with malformed value {v!r}") from None
        bits = node.get("bits")
        if bits is not None and not (isinstance(bits, str) and re.fullmatch(r"0x[0-9a-f]{16}", bits) and v == "nan"):
            raise _Bad(f"tree: float node with malformed bits {bits!r} (only a 'nan' has bits)")
    elif t == "str" and not isinstance(node.get("v"), str):
        raise _Bad("tree: str node without a str value")


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
        raise _Bad(f"{where}.path: {exc}") from None
    chunk = _req(c, "chunk_shape", list, where)
    if len(chunk) != len(sshape) or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x < _MAX_SIZE for x in chunk):
        raise _Bad(f"{where}.chunk_shape: {chunk!r} does not fit shape {list(sshape)}")
    if "axis" not in c:
        raise _Bad(f"{where}: missing field 'axis'")
    lo, hi = _range(c, where, len(objects))
    if c["axis"] is None or sharded:
        # format 3 writers never make a chunk larger than its array: a reader
        # reads a grid chunk whole (with its padding) to check its crc32c
        if any(k > max(1, d) for k, d in zip(chunk, sshape, strict=True)):
            raise _Bad(f"{where}.chunk_shape: {chunk} is larger than the array's shape {list(sshape)}")
    if c["axis"] is None:
        n_chunks = math.prod(math.ceil(d / k) for d, k in zip(sshape, chunk, strict=True)) if math.prod(sshape) or not sshape else 0
    else:
        axis = _int(c, "axis", where, 0, max(0, len(sshape) - 1))
        for ax in range(len(sshape) if math.prod(sshape) else 0):  # an empty array has no chunks
            if (ax < axis and chunk[ax] != 1) or (ax > axis and chunk[ax] != sshape[ax]):
                raise _Bad(f"{where}: chunk_shape {chunk} is not a contiguous split along axis {axis}")
        n_chunks = 1 if not sshape else (math.prod(sshape[:axis]) * math.ceil(sshape[axis] / chunk[axis]) if math.prod(sshape) else 0)
    if hi - lo != n_chunks:
        raise _Bad(f"{where}: {hi - lo} objects for {n_chunks} chunks")
    want = math.prod(chunk) * storage_dtype(dt).itemsize
    for o in objects[lo:hi]:
        if o["size"] != want:
            raise _Bad(f"{where}: object {o['key']} has size {o['size']}, chunks are {want}")


def _check_partition(boxes: list[tuple[list[int], list[int]]], shape: list[int], where: str) -> None:
    """The shards of an array must cover it exactly once (else a load would
    return memory no object filled)."""
    problem = partition_problem(shape, [(tuple(o), tuple(b)) for o, b in boxes])
    if problem:
        raise _Bad(f"{where}.shards: {problem.replace('pieces', 'shards')}")


_MAX_RANGES = 1000


def _position(v: Any, where: str) -> None:
    if not (
        isinstance(v, list)
        and len(v) == 3
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < _MAX_SIZE for x in v)
        and v[0] in (0, 1)
    ):
        raise _Bad(f"{where}: expected a commit position [managed (0 or 1), epoch, sequence], got {v!r}")


def _validate_header(m: Any) -> dict[str, Any]:
    """The header fields (:data:`HEADER_FIELDS`): everything but the tree, arrays and objects."""
    if not isinstance(m, dict):
        raise _Bad("manifest is not a JSON object")
    if m.get("format") != "cloudckpt":
        raise _Bad("not a cloudckpt manifest (field 'format' is not 'cloudckpt')")
    version = _req(m, "format_version", int, "manifest")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"format version {version} is newer than this cloudckpt {__about__.__version__} reads "
            f"(up to {FORMAT_VERSION}); upgrade cloudckpt to read it"
        )
    if version < 1:
        raise _Bad(f"format_version {version} is not valid")
    data = _req(m, "data", str, "manifest")
    if not _DATA_RE.match(data) or data in (".", ".."):
        raise _Bad(f"data prefix {data!r} is not a plain directory name")
    created = _req(m, "created", (int, float), "manifest")
    if not 0 <= created < 1e12:
        raise _Bad(f"created: {created!r} is not a time in seconds since the epoch")
    writer = _req(m, "writer", dict, "manifest")
    epoch = writer.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < _MAX_SIZE):
        raise _Bad("writer.epoch: expected a non-negative int or null")
    seq = writer.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < _MAX_SIZE or epoch is None):
        raise _Bad("writer.seq: expected a positive int, and only beside an epoch")
    if writer.get("follows") is not None:
        _position(writer["follows"], "writer.follows")
    ranges = writer.get("abandoned")
    if ranges is not None:
        if not isinstance(ranges, list) or len(ranges) > _MAX_RANGES:
            raise _Bad(f"writer.abandoned: expected a list of at most {_MAX_RANGES} ranges")
        for r in ranges:
            if not isinstance(r, list) or len(r) != 2:
                raise _Bad("writer.abandoned: every range is [after, upto]")
            _position(r[0], "writer.abandoned")
            _position(r[1], "writer.abandoned")
    lp = writer.get("last_preserved_timestamp")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, (int, float))):
        raise _Bad("writer.last_preserved_timestamp: expected a number")
    number = m.get("checkpoint_number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < _MAX_SIZE):
        raise _Bad("checkpoint_number: expected a non-negative int or null")
    _req(m, "metadata", dict, "manifest")
    nbytes = m.get("nbytes")
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes < _MAX_SIZE):
        raise _Bad("nbytes: expected a non-negative int")
    stored = m.get("stored")
    if stored is not None and not (
        isinstance(stored, dict)
        and all(
            isinstance(stored.get(k), int) and not isinstance(stored.get(k), bool) and 0 <= stored[k] < _MAX_SIZE
            for k in ("objects", "bytes")
        )
    ):
        raise _Bad("stored: expected {objects, bytes} counts")
    return m


def _validate(m: Any) -> dict[str, Any]:
    _validate_header(m)
    version = int(m["format_version"])
    data = str(m["data"])

    objects = _req(m, "objects", list, "manifest")
    keys: set[str] = set()
    for n, o in enumerate(objects):
        where = f"objects[{n}]"
        if not isinstance(o, dict):
            raise _Bad(f"{where}: not an object")
        key = _req(o, "key", str, where)
        try:
            validate_key(key)
        except ValueError as exc:
            raise _Bad(f"{where}: {exc}") from None
        if not key.startswith(data + "/"):
            raise _Bad(f"{where}: key {key!r} lies outside the checkpoint's data prefix {data!r}")
        if key in keys:
            raise _Bad(f"{where}: key {key!r} listed twice")
        keys.add(key)
        _int(o, "size", where)
        _int(o, "crc32c", where, 0, 0xFFFFFFFF)

    pack = m.get("pack")
    if pack is not None:
        if not isinstance(pack, dict):
            raise _Bad("pack: expected an object or null")
        pnb = _int(pack, "nbytes", "pack")
        csize = _int(pack, "chunk_bytes", "pack", 1)
        lo, hi = _range(pack, "pack", len(objects))
        if hi - lo != math.ceil(pnb / csize):
            raise _Bad(f"pack: {hi - lo} objects for {pnb} bytes in chunks of {csize}")
        for o in objects[lo:hi]:
            if o["size"] != csize:
                raise _Bad(f"pack: object {o['key']} has size {o['size']}, chunks are {csize}")
        if _req(pack, "path", str, "pack") != "_pack":
            raise _Bad(f"pack.path: {pack['path']!r} is not the pack array '_pack'")

    arrays = _req(m, "arrays", list, "manifest")
    for n, a in enumerate(arrays):
        where = f"arrays[{n}]"
        if not isinstance(a, dict):
            raise _Bad(f"{where}: not an object")
        try:
            dt = parse_dtype(a.get("dtype"))
        except (ValueError, TypeError) as exc:
            raise _Bad(f"{where}.dtype: {exc}") from None
        shape = _req(a, "shape", list, where)
        if len(shape) > _MAX_NDIM or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < _MAX_SIZE for x in shape):
            raise _Bad(f"{where}.shape: {shape!r} is not a list of non-negative ints")
        nbytes = _int(a, "nbytes", where)
        if math.prod(shape) * dt.itemsize != nbytes:
            raise _Bad(f"{where}: nbytes {nbytes} does not match shape {shape} of {dt}")
        if ("packed" in a) + ("chunked" in a) + ("shards" in a) != 1:
            raise _Bad(f"{where}: needs exactly one of 'packed', 'chunked' and 'shards'")
        if "packed" in a:
            p = _req(a, "packed", dict, where)
            off = _int(p, "offset", where + ".packed")
            _int(p, "crc32c", where + ".packed", 0, 0xFFFFFFFF)
            if pack is None or off + nbytes > pack["nbytes"]:
                raise _Bad(f"{where}: packed bytes [{off}, {off + nbytes}) lie outside the pack")
        elif "chunked" in a:
            sshape = storage_shape(dt, tuple(shape))
            c = _req(a, "chunked", dict, where)
            if c.get("axis", 0) is None and sshape != tuple(shape):
                raise _Bad(f"{where}: dtype {dt} cannot be stored on a sharded grid (axis null)")
            _check_chunked(c, sshape, dt, objects, where + ".chunked")
        else:
            sshape = storage_shape(dt, tuple(shape))
            if sshape != tuple(shape):
                raise _Bad(f"{where}: dtype {dt} cannot be stored per shard")
            shards = _req(a, "shards", list, where)
            if not shards:
                raise _Bad(f"{where}.shards: empty")
            boxes = []
            for k, sh in enumerate(shards):
                w = f"{where}.shards[{k}]"
                if not isinstance(sh, dict):
                    raise _Bad(f"{w}: not an object")
                off = _req(sh, "offset", list, w)
                bshape = _req(sh, "shape", list, w)
                if len(off) != len(shape) or len(bshape) != len(shape) or not all(
                    isinstance(o, int) and isinstance(n, int) and not isinstance(o, bool) and not isinstance(n, bool)
                    and 0 <= o and 0 < n and o + n <= d
                    for o, n, d in zip(off, bshape, shape, strict=True)
                ):
                    raise _Bad(f"{w}: box {bshape} at {off} does not lie inside shape {shape}")
                boxes.append((off, bshape))
                _check_chunked(sh, tuple(bshape), dt, objects, w, sharded=True)
            _check_partition(boxes, shape, where)

    tree = _req(m, "tree", dict, "manifest")
    used: set[int] = set()
    aliases: list[int] = []
    _check_tree(tree, len(arrays), used, 0, aliases)
    needed = version_for(tree, arrays)
    if version < needed:
        raise _Bad(
            f"tree: format_version {needed} is needed for what it holds (2: alias nodes, namedtuple fields; "
            f"3: per_rank nodes, sharded arrays), the manifest says {version}"
        )
    for a in aliases:
        if a not in used:
            raise _Bad(f"tree: alias of array {a}, which no array node references")
    return m


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a manifest")


def _loads(data: bytes | str) -> Any:
    return json.loads(data, parse_constant=_reject_constant)


def check_manifest_size(size: int, url: str) -> None:
    """Raise :class:`CorruptCheckpointError` if a manifest of ``size`` bytes is over the limit.

    Example:
        >>> check_manifest_size(100, "memory://x/manifest.json")
    """
    limit = max_manifest_bytes()
    if size > limit:
        raise CorruptCheckpointError(
            f"manifest {url} is over the manifest size limit ({size} > {limit} bytes); it is not read. "
            "If it is genuine (a state of very many leaves), raise CLOUDCKPT_MAX_MANIFEST_BYTES"
        )


def parse_manifest(data: bytes, url: str) -> dict[str, Any]:
    """Parse and validate manifest bytes read from ``url``.

    Raises :class:`CorruptCheckpointError` (naming ``url``) for anything
    malformed or over the size limit (:func:`max_manifest_bytes`), and
    :class:`FormatVersionError` for a newer format.

    Example:
        >>> parse_manifest(b"{", "memory://x/manifest.json")
        Traceback (most recent call last):
        ...
        cloudckpt.errors.CorruptCheckpointError: manifest memory://x/manifest.json is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); the checkpoint is damaged
    """
    check_manifest_size(len(data), url)
    try:
        m = _loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(f"manifest {url} is not valid JSON ({exc}); the checkpoint is damaged") from None
    try:
        if isinstance(m, dict):
            version = m.get("format_version")
            if m.get("format") == "cloudckpt" and isinstance(version, int) and version > FORMAT_VERSION:
                _validate(m)  # raises FormatVersionError naming both versions
            _check_self_crc(data if isinstance(data, bytes) else bytes(data), m)
        return _validate(m)
    except _Bad as exc:
        raise CorruptCheckpointError(f"manifest {url} is invalid: {exc}") from None
    except FormatVersionError as exc:
        raise FormatVersionError(f"checkpoint {url.rsplit('/', 1)[0]}: {exc}") from None


def parse_header(prefix: bytes, url: str) -> dict[str, Any] | None:
    """The validated header of a manifest from the first bytes of it, or None
    when they hold no complete header line (a manifest written before headers
    existed, or one whose metadata is larger than ``prefix``): then the whole
    manifest must be read.

    Raises :class:`CorruptCheckpointError` if the header line is there but
    damaged, :class:`FormatVersionError` for a newer format.

    Example:
        >>> m = build_manifest(tree={"t": "none"}, arrays=[], pack=None, objects=[],
        ...                    data="data-0123456789abcdef", attempt="0123456789abcdef", checkpoint_number=3)
        >>> parse_header(encode_manifest(m)[:4096], "memory://x/manifest.json")["checkpoint_number"]
        3
    """
    nl = prefix.find(b"\n")
    if nl < 0:
        return None
    first = prefix[:nl]
    match = _HEADER_CRC.match(prefix[nl + 1 :])
    if match is None or not first.endswith(b","):
        # no header line as a writer makes it (e.g. a manifest someone re-formatted): the
        # whole manifest decides, as for one written before headers existed
        return None
    want, got = int(match.group(1)), crc32c_of(first)
    if want != got:
        raise CorruptCheckpointError(
            f"manifest {url} is invalid: header crc32c mismatch (recorded {want}, computed {got}): the manifest is damaged"
        )
    try:
        head = _loads(first[:-1] + b"}")
        return _validate_header(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(f"manifest {url} is invalid: its header is not valid JSON ({exc})") from None
    except _Bad as exc:
        raise CorruptCheckpointError(f"manifest {url} is invalid: {exc}") from None
    except FormatVersionError as exc:
        raise FormatVersionError(f"checkpoint {url.rsplit('/', 1)[0]}: {exc}") from None


def header_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The header fields of a parsed manifest (what :func:`parse_header` returns for it).

    Example:
        >>> sorted(header_of({"format": "cloudckpt", "tree": {}, "metadata": {}}))
        ['format', 'metadata']
    """
    return {k: manifest[k] for k in HEADER_FIELDS if k in manifest}
