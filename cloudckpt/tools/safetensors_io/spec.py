"""The safetensors file format, written from its public specification.

A file is: 8 bytes, the header's length ``N`` as a little-endian unsigned
64-bit integer; ``N`` bytes of UTF-8 JSON, padded with spaces so that the data
starts on an 8-byte boundary; then the tensors' bytes, back to back. The
header maps each tensor's name to ``{"dtype", "shape", "data_offsets": [begin,
end]}`` (offsets into the data, which the tensors cover without gap or
overlap), plus an optional ``"__metadata__"`` dict of strings. Tensors are
little-endian and C-ordered. Writers put the tensors of larger items first,
so that every tensor starts at a multiple of its item size.

Example:
    >>> import numpy as np
    >>> header, offsets = encode_header([("w", np.dtype("<f4"), (2,))], {"format": "pt"})
    >>> len(header) % 8, offsets
    (0, [(0, 8)])
    >>> meta, tensors, start = parse_header(header[:8], lambda n: header[8:8 + n], len(header) + 8, "doc")
    >>> meta, tensors[0].name, tensors[0].dtype, tensors[0].shape, start == len(header)
    ({'format': 'pt'}, 'w', dtype('float32'), (2,), True)
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from cloudckpt.format.dtypes import dtype_name, parse_dtype

__all__ = [
    "DTYPES",
    "MAX_HEADER",
    "TensorEntry",
    "safetensors_dtype",
    "numpy_dtype",
    "encode_header",
    "parse_header",
    "write_order",
]

#: safetensors dtype -> cloudckpt's name of the numpy (or ml_dtypes) dtype of the same bytes.
#: The sub-byte types of the spec (F4, F6_E2M3, F6_E3M2) pack several values in a byte, which
#: no numpy dtype does: they are refused, on import and export, with that reason.
DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "bfloat16",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "|i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "|u1",
    "BOOL": "|b1",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "C64": "<c8",
}
_SUB_BYTE = ("F4", "F6_E2M3", "F6_E3M2")

#: the largest header a reader accepts (the safetensors library's own limit: 100 MB)
MAX_HEADER = 100_000_000


@cache
def _by_name() -> dict[str, str]:
    return {v: k for k, v in DTYPES.items()}


def safetensors_dtype(dtype: np.dtype) -> str | None:
    """The safetensors name of ``dtype`` (any byte order), or None if safetensors has none.

    Example:
        >>> import ml_dtypes
        >>> safetensors_dtype(np.dtype(">f4")), safetensors_dtype(np.dtype(ml_dtypes.bfloat16)), safetensors_dtype(np.dtype("c16"))
        ('F32', 'BF16', None)
    """
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
    try:
        return _by_name().get(dtype_name(dtype))
    except (TypeError, ValueError):
        return None


def numpy_dtype(name: str, where: str) -> np.dtype:
    """The numpy dtype of the safetensors dtype ``name``; ValueError naming ``where`` if there is none.

    Example:
        >>> numpy_dtype("BF16", "x").name, numpy_dtype("BOOL", "x")
        ('bfloat16', dtype('bool'))
    """
    if name in _SUB_BYTE:
        raise ValueError(
            f"{where}: dtype {name} packs several values per byte, which no numpy dtype stores: "
            "not supported by cloudckpt's safetensors import"
        )
    if name not in DTYPES:
        raise ValueError(f"{where}: unknown safetensors dtype {name!r} (known: {', '.join(DTYPES)})")
    return parse_dtype(DTYPES[name])


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: its name, dtype, shape and byte range in the file.

    Example:
        >>> TensorEntry("w", np.dtype("<f2"), (3,), 32, 38).nbytes
        6
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # in the file (data offset + the header's 8 + N bytes)
    end: int

    @property
    def nbytes(self) -> int:
        """Its size in bytes."""
        return self.end - self.start


def write_order(items: Sequence[tuple[str, np.dtype]]) -> list[int]:
    """The indices of ``(name, dtype)`` in the order a file stores them: larger items
    first, then by name, so every tensor is aligned to its item size.

    Example:
        >>> write_order([("b", np.dtype("u1")), ("a", np.dtype("<f4")), ("c", np.dtype("<f4"))])
        [1, 2, 0]
    """
    return sorted(range(len(items)), key=lambda i: (-items[i][1].itemsize, items[i][0]))


def encode_header(
    tensors: Sequence[tuple[str, np.dtype, Sequence[int]]], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[tuple[int, int]]]:
    """The first ``8 + N`` bytes of a file holding ``tensors`` in this order, and
    each tensor's ``(begin, end)`` in the data. A dtype without a safetensors name raises ValueError."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets: list[tuple[int, int]] = []
    pos = 0
    for name, dtype, shape in tensors:
        st = safetensors_dtype(dtype)
        if st is None:
            raise ValueError(f"tensor {name!r}: dtype {dtype} has no safetensors equivalent")
        n = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": st, "shape": [int(s) for s in shape], "data_offsets": [pos, pos + n]}
        offsets.append((pos, pos + n))
        pos += n
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


def parse_header(
    first8: bytes, read_header: Callable[[int], bytes], size: int, where: str
) -> tuple[dict[str, str], list[TensorEntry], int]:
    """Parse and check the header of a file of ``size`` bytes: ``first8`` are its first
    bytes and ``read_header(n)`` reads the ``n`` after them. Returns the metadata, the
    tensors in the order of the data and where the data starts. Raises ValueError naming
    ``where`` and the tensor for anything the spec forbids, before any data is read."""
    if len(first8) < 8:
        raise ValueError(f"{where}: not a safetensors file: {size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER or 8 + n > size:
        raise ValueError(f"{where}: not a safetensors file: header length {n} (file of {size} bytes, limit {MAX_HEADER})")
    try:
        header = json.loads(read_header(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: the safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{where}: __metadata__ must map strings to strings")
    start = 8 + n
    tensors = [_entry(name, spec, start, f"{where}: tensor {name!r}") for name, spec in header.items()]
    tensors.sort(key=lambda t: (t.start, t.end))
    pos = start
    for t in tensors:
        if t.start != pos:
            raise ValueError(f"{where}: tensor {t.name!r} starts at byte {t.start}, expected {pos} (a gap or an overlap)")
        pos = t.end
    if pos != size:
        raise ValueError(f"{where}: the tensors end at byte {pos} but the file has {size} bytes (truncated or padded)")
    return meta, tensors, start


def _entry(name: str, spec: object, start: int, where: str) -> TensorEntry:
    """One header entry, checked: its fields, a known dtype, its size matches its offsets."""
    if not name or not isinstance(spec, dict):
        raise ValueError(f"{where}: an entry must be a non-empty name and an object")
    dtype = numpy_dtype(str(spec.get("dtype")), where)
    shape, offs = spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and o >= 0 for o in offs)):
        raise ValueError(f"{where}: data_offsets must be [begin, end], got {offs!r}")
    want = math.prod(shape) * dtype.itemsize
    if offs[1] - offs[0] != want:
        raise ValueError(f"{where}: data_offsets {offs} hold {offs[1] - offs[0]} bytes, the shape and dtype {want}")
    return TensorEntry(name, dtype, tuple(shape), start + offs[0], start + offs[1])
