"""zarr v3 metadata documents (``zarr.json``) for the arrays and groups of a checkpoint.

cloudckpt writes chunk bytes itself (uncompressed, little-endian, regular
grid: exactly what zarr's ``bytes`` codec produces) and builds the metadata
documents here. zarr's own dtype classes supply each dtype's JSON name and
fill value, once per dtype, so the documents are what zarr-python itself
would write, at a fraction of the cost of its per-array API.

Example:
    >>> import numpy as np
    >>> doc = array_doc(np.dtype("<f4"), (4, 2), (2, 2), {})
    >>> doc["data_type"], doc["chunk_grid"]["configuration"]["chunk_shape"]
    ('float32', [2, 2])
    >>> chunk_key((1, 0))
    'c/1/0'
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["array_doc", "group_doc", "chunk_key", "encode_doc"]


# The zarr v3 name and default fill value of every dtype cloudckpt stores
# natively. Importing zarr costs ~1.5 s, which the first save of a training
# job would otherwise pay; tests/test_zarr_meta.py checks this table against
# zarr's own dtype classes.
STATIC_DTYPES: dict[str, tuple[Any, Any]] = {
    "|b1": ("bool", False),
    "|i1": ("int8", 0),
    "<i2": ("int16", 0),
    "<i4": ("int32", 0),
    "<i8": ("int64", 0),
    "|u1": ("uint8", 0),
    "<u2": ("uint16", 0),
    "<u4": ("uint32", 0),
    "<u8": ("uint64", 0),
    "<f2": ("float16", 0.0),
    "<f4": ("float32", 0.0),
    "<f8": ("float64", 0.0),
    "<c8": ("complex64", [0.0, 0.0]),
    "<c16": ("complex128", [0.0, 0.0]),
}


@lru_cache(maxsize=64)
def _dtype_json(dtype_str: str) -> tuple[Any, Any]:
    if dtype_str in STATIC_DTYPES:
        return STATIC_DTYPES[dtype_str]
    return zarr_dtype_json(dtype_str)


def zarr_dtype_json(dtype_str: str) -> tuple[Any, Any]:
    """zarr's own JSON name and default fill value for a numpy dtype string.

    Example:
        >>> zarr_dtype_json("<f4")
        ('float32', 0.0)
    """
    from zarr.dtype import parse_data_type  # public since zarr 3.1.0

    zdt = parse_data_type(np.dtype(dtype_str), zarr_format=3)
    fill = zdt.to_json_scalar(zdt.default_scalar(), zarr_format=3)
    if isinstance(fill, tuple):
        fill = list(fill)
    return zdt.to_json(zarr_format=3), fill


def array_doc(
    stored_dtype: np.dtype,
    shape: tuple[int, ...],
    chunk_shape: tuple[int, ...],
    attributes: dict[str, Any],
) -> dict[str, Any]:
    """The ``zarr.json`` of an uncompressed array with a regular chunk grid."""
    data_type, fill = _dtype_json(stored_dtype.str)
    codec: dict[str, Any] = {"name": "bytes"}
    if stored_dtype.itemsize > 1:
        codec["configuration"] = {"endian": "little"}
    return {
        "shape": list(shape),
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [codec],
        "attributes": attributes,
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def group_doc(attributes: dict[str, Any], consolidated: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``zarr.json`` of a group; ``consolidated`` maps every descendant's
    node path to its document (zarr-python's inline consolidated metadata, so
    a reader opens the whole hierarchy with one request)."""
    doc: dict[str, Any] = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
    if consolidated is not None:
        doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": consolidated}
    return doc


def chunk_key(index: tuple[int, ...]) -> str:
    """The object key of a chunk, relative to its array (default encoding, ``/``)."""
    if not index:
        return "c"
    return "c/" + "/".join(str(i) for i in index)


def encode_doc(doc: dict[str, Any]) -> bytes:
    """Serialize a metadata document as compact JSON.

    (zarr-python indents; any JSON is valid zarr metadata, and indenting
    forces Python's slow pure-Python encoder: seconds for the pack table of
    50,000 tensors.)"""
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
