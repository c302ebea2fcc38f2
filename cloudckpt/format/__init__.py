"""The checkpoint format: what is written, independent of where.

The state tree and its leaves (``tree``), dtypes (``dtypes``), zarr v3
metadata (``zarr_meta``), checksums (``checksum``), the manifest — the commit
record (``manifest``) — and the tensor store that turns leaves into zarr
arrays (``tensor_store``, ``regions`` for sharded arrays, ``shards`` for
their geometry). Framework tensors become leaves through the registry in
``adapters``. Bytes move only through :mod:`cloudckpt.storage`.
"""
