"""Array dtypes: their names in a manifest and how they are stored in zarr.

A dtype is named in the manifest by a string: numpy's ``dtype.str`` for
numpy's own types (``'<f4'``, ``'|b1'``, ``'>i8'``, ``'<U5'``,
``'<M8[ns]'``) and the ml_dtypes name for the types numpy lacks
(``'bfloat16'``, ``'float8_e4m3fn'``, ...). Parsing a name never runs code:
it is matched against a pattern or a fixed list before numpy sees it.

zarr 3 stores bool, signed and unsigned ints, float16/32/64 and
complex64/128 natively (little-endian); every other supported dtype is
stored as its raw bytes, viewed as the unsigned int of the same width
(bfloat16 -> uint16, float8 -> uint8), or as uint8 with one extra trailing
axis of ``itemsize`` for widths without such an int (``<U5``, float128),
with the real dtype in the zarr array's attributes.

Example:
    >>> import numpy as np
    >>> dtype_name(np.dtype("float32")), parse_dtype("<f4")
    ('<f4', dtype('float32'))
    >>> import ml_dtypes
    >>> storage_dtype(np.dtype(ml_dtypes.bfloat16))
    dtype('uint16')
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

import numpy as np

__all__ = ["dtype_name", "parse_dtype", "storage_dtype", "storage_shape", "check_supported", "is_native"]

ML_DTYPE_NAMES = (  # the ml_dtypes names a manifest may hold (and the schema lists)
    "bfloat16",
    "float8_e3m4",
    "float8_e4m3",
    "float8_e4m3b11fnuz",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "float4_e2m1fn",
    "int2",
    "int4",
    "uint2",
    "uint4",
)
_NUMPY_NAME = re.compile(r"^[<>|=]?(?:[biufc][0-9]{1,2}|[mM]8(?:\[[0-9]*[a-zA-Z]{1,2}\])?|[SU][0-9]{1,9})$")
_NATIVE_KINDS = {"b", "i", "u", "f", "c"}
_NATIVE_SIZES = {"b": {1}, "i": {1, 2, 4, 8}, "u": {1, 2, 4, 8}, "f": {2, 4, 8}, "c": {8, 16}}
_UINT_OF_SIZE: dict[int, np.dtype] = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


@cache
def _ml_dtypes() -> dict[str, np.dtype]:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a dependency
        return {}
    out = {}
    for name in ML_DTYPE_NAMES:
        t = getattr(ml_dtypes, name, None)
        if t is not None:
            out[name] = np.dtype(t)
    return out


def _is_ml(dtype: np.dtype) -> bool:
    return dtype.type.__module__.startswith("ml_dtypes")


def check_supported(dtype: np.dtype) -> str | None:
    """Why ``dtype`` cannot be stored, or None if it can.

    Example:
        >>> check_supported(np.dtype(object))
        'object arrays hold Python objects and cannot be stored without pickle'
    """
    return _check_supported(dtype)


@lru_cache(maxsize=256)
def _check_supported(dtype: np.dtype) -> str | None:
    if dtype.hasobject:
        return "object arrays hold Python objects and cannot be stored without pickle"
    if _is_ml(dtype):
        if dtype.name in _ml_dtypes():
            return None
        return f"ml_dtypes type {dtype.name} is not supported"
    if dtype.fields is not None or dtype.kind == "V" or dtype.subdtype is not None:
        return f"structured or void dtype {dtype} is not supported; store its fields as separate arrays"
    if dtype.itemsize == 0:
        return f"zero-width dtype {dtype} is not supported"
    if dtype.kind not in "biufcmMSU":
        return f"dtype {dtype} is not supported"
    if not _NUMPY_NAME.match(dtype.str):
        return f"dtype {dtype} ({dtype.str}) is not supported"
    return None


def dtype_name(dtype: np.dtype) -> str:
    """The manifest name of a supported dtype.

    Example:
        >>> dtype_name(np.dtype(">i8"))
        '>i8'
    """
    return _dtype_name(dtype)


@lru_cache(maxsize=256)
def _dtype_name(dtype: np.dtype) -> str:
    if _is_ml(dtype):
        return str(dtype.name)
    return str(dtype.str)


def parse_dtype(name: object) -> np.dtype:
    """The dtype a manifest names; ValueError for anything else.

    Example:
        >>> parse_dtype("float8_e4m3fn")
        dtype(float8_e4m3fn)
    """
    if not isinstance(name, str) or len(name) > 32:
        raise ValueError(f"invalid dtype name {name!r}")
    return _parse_dtype_name(name)


@lru_cache(maxsize=256)
def _parse_dtype_name(name: str) -> np.dtype:
    """parse_dtype for a str: cached, as a manifest names the same few dtypes for
    thousands of arrays and a load parses each name more than once. ml_dtypes
    (a second or so of import) is imported only for a name numpy lacks."""
    if not _NUMPY_NAME.match(name):
        ml = _ml_dtypes() if name in ML_DTYPE_NAMES else {}
        if name in ml:
            return ml[name]
        raise ValueError(f"unsupported dtype name {name!r}")
    dt = np.dtype(name)
    reason = check_supported(dt)
    if reason:
        raise ValueError(f"unsupported dtype name {name!r}: {reason}")
    return dt


@lru_cache(maxsize=256)
def is_native(dtype: np.dtype) -> bool:
    """Whether zarr 3 stores ``dtype`` as itself (no raw-bytes view)."""
    return (
        not _is_ml(dtype)
        and dtype.kind in _NATIVE_KINDS
        and dtype.itemsize in _NATIVE_SIZES[dtype.kind]
    )


def storage_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype the bytes of ``dtype`` are stored as in zarr.

    Example:
        >>> storage_dtype(np.dtype(">f4")).str, storage_dtype(np.dtype("<U3")).str
        ('<f4', '|u1')
    """
    if is_native(dtype):
        return dtype.newbyteorder("<")
    return _UINT_OF_SIZE.get(dtype.itemsize) or np.dtype("u1")


def storage_shape(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the stored zarr array for an array of ``dtype`` and ``shape``.

    Example:
        >>> storage_shape(np.dtype("<U3"), (2,))
        (2, 12)
    """
    if is_native(dtype) or dtype.itemsize in _UINT_OF_SIZE:
        return tuple(shape)
    return (*shape, dtype.itemsize)


def stored_view(arr: np.ndarray) -> np.ndarray:
    """``arr`` as its stored dtype, C-contiguous and little-endian (a view when possible).

    Example:
        >>> stored_view(np.arange(3, dtype=">i2")).dtype.str
        '<i2'
    """
    dt = arr.dtype
    if is_native(dt):
        if dt.byteorder == ">" or (dt.byteorder == "=" and np.little_endian is False):
            arr = arr.astype(dt.newbyteorder("<"))
        return np.ascontiguousarray(arr)
    arr = np.ascontiguousarray(arr)
    if dt.kind in "mMU" and dt.byteorder == ">":
        arr = arr.astype(dt.newbyteorder("<"))
    sd = storage_dtype(dt)
    if dt.itemsize in _UINT_OF_SIZE:
        return arr.view(sd).reshape(arr.shape)
    return arr.reshape(*arr.shape, 1).view(np.uint8).reshape(*arr.shape, dt.itemsize)


def to_little(dtype: np.dtype) -> np.dtype:
    """The little-endian twin of ``dtype`` (the byte order data is stored in)."""
    if _is_ml(dtype) or dtype.byteorder in ("|", "<", "="):
        return dtype
    return dtype.newbyteorder("<")
