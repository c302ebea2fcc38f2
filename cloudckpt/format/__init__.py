"""The checkpoint format: what is written, independent of where.

The state tree and its leaves (``tree``, ``node_names`` for the zarr
names of its keys), dtypes (``dtypes``), zarr v3
metadata (``zarr_meta``), checksums (``checksum``), the manifest — the commit
record: its JSON as types (``manifest_types``, from which ``schema`` makes
the JSON Schema that ``structure`` checks a manifest against), its typed
array records (``records``), the reader's cross-field checks
(``manifest_check``), encoding and parsing (``manifest``) — and the tensor
store that turns leaves into zarr arrays: options (``tensor_store``), chunk
planning (``chunking``), save planning (``store_plan``, ``shard_plan`` for
sharded arrays), writing (``store_write``), reading (``store_read``,
``regions`` for boxes of arrays, ``object_io`` for damage-checked reads),
with ``shards`` for the geometry of sharded arrays and ``budget`` for bytes
in flight. Framework tensors become leaves through the registry in
``adapters``. Bytes move only through :mod:`cloudckpt.storage`.
"""
