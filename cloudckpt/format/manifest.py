"""The manifest: the commit record of a checkpoint.

``manifest.json`` is written last and create-only; a checkpoint exists if and
only if it exists and parses. It records the format version, the tree
structure, every array (dtype, shape, where its bytes are, crc32c of packed
tensors), and every object the checkpoint owns with its size and crc32c, so
that restore, verify, copy and delete need no listing. Its JSON Schema is
``manifest.schema.json`` beside this module (and in docs/format.md),
generated from the types of :mod:`cloudckpt.format.manifest_types`.

Everything read from a manifest is validated before any I/O
(:mod:`cloudckpt.format.manifest_check`): keys stay inside the checkpoint's
data prefix, sizes agree with shapes and dtypes, indices are in range. A
newer format version is refused with both versions named.

Example:
    >>> m = build_manifest(tree={"t": "none"}, arrays=[], pack=None, objects=[],
    ...                    data="data-0123456789abcdef", attempt="0123456789abcdef")
    >>> parse_manifest(encode_manifest(m), "memory://x/manifest.json")["format_version"]
    1
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cloudckpt import __about__
from cloudckpt.errors import CorruptCheckpointError, FormatVersionError
from cloudckpt.format.checksum import CONTENT_HASH_ALGORITHM, crc32c_of
from cloudckpt.format.manifest_check import (
    FORMAT_VERSION,
    Invalid,
    check_self_crc,
    validate_header,
    validate_manifest,
    version_for,
)
from cloudckpt.format.records import ArrayRecord, PackRecord

if TYPE_CHECKING:
    from cloudckpt.format.manifest_types import ObjectEntry

__all__ = [
    "FORMAT_VERSION",
    "version_for",
    "split_hashes",
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

MANIFEST_KEY = "manifest.json"


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
    entries, hashes = split_hashes(objects)
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
        "stored": {"objects": len(entries) + 1, "bytes": sum(int(o["size"]) for o in entries)},
        "metadata": dict(metadata or {}),
        "tree": tree,
        "arrays": arrays_json,
        "pack": None if pack is None else pack.to_json(),
        "objects": entries,
        **({"content_hashes": {"algorithm": CONTENT_HASH_ALGORITHM, "objects": hashes}} if hashes else {}),
    }


def split_hashes(objects: Sequence[Mapping[str, Any]]) -> tuple[list[ObjectEntry], list[str] | None]:
    """The manifest's object entries, and their content hashes where every
    entry as written carries one (``"xxh3"``, :meth:`cloudckpt.format.reuse.ObjectSink.put`), else None.

    Example:
        >>> split_hashes([{"key": "d/a", "size": 1, "crc32c": 2, "xxh3": "f" * 32}])
        ([{'key': 'd/a', 'size': 1, 'crc32c': 2}], ['ffffffffffffffffffffffffffffffff'])
        >>> split_hashes([{"key": "d/a", "size": 1, "crc32c": 2}])[1] is None
        True
    """
    entries: list[ObjectEntry] = [{"key": o["key"], "size": o["size"], "crc32c": o["crc32c"]} for o in objects]
    hashes = [o.get("xxh3") for o in objects]
    return entries, ([str(h) for h in hashes] if hashes and all(h is not None for h in hashes) else None)



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
                validate_manifest(m)  # raises FormatVersionError naming both versions
            check_self_crc(data if isinstance(data, bytes) else bytes(data), m)
        return validate_manifest(m)
    except Invalid as exc:
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
        return validate_header(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(f"manifest {url} is invalid: its header is not valid JSON ({exc})") from None
    except Invalid as exc:
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

