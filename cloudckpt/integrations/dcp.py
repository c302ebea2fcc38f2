"""PyTorch Distributed Checkpoint (DCP) storage for cloudckpt checkpoints.

:class:`Writer` is a ``torch.distributed.checkpoint.StorageWriter`` and
:class:`Reader` a ``StorageReader``: ``dcp.save``, ``dcp.async_save`` and
``dcp.load`` then write and read an ordinary cloudckpt checkpoint at any URL
cloudckpt opens (local disk, ``s3://``, ``gs://``, ``memory://`` ...):

* every rank writes the tensor shards of its DCP plan as chunks of one zarr v3
  array per state-dict key (the global array; a shard is a region of it), and
  the non-tensor values DCP serialises (``BYTE_IO`` items) as opaque
  ``uint8`` arrays, with a crc32c of every object;
* ``finish()`` on DCP's coordinator is the commit: it writes the zarr
  metadata and then ``manifest.json``, create-only. A crash before that
  leaves nothing visible, and a second save to the same URL raises
  :class:`~cloudckpt.CheckpointExistsError` without touching the first;
* DCP's ``Metadata`` (chunk offsets and sizes, dtypes, tensor properties, the
  planner's key mapping) is stored as JSON in the manifest's ``dcp`` field:
  nothing is pickled by cloudckpt, and loading runs no code of the checkpoint
  (DCP itself deserialises the ``BYTE_IO`` values, as it does with its own
  writers);
* ``cloudckpt.load(url)`` reads the checkpoint without torch: a dict keyed by
  DCP's flattened keys (``"model.layer.weight"``);
* ``Writer(directory, manager=m)`` numbers, fences and retains the saves of
  ``dcp.save`` like ``m.save()`` does (:class:`~cloudckpt.CheckpointManager`).

Reading reshards like DCP does: a checkpoint saved by 2 ranks loads on 1 or 4.

Example:
    >>> import torch, torch.distributed.checkpoint as dcp, cloudckpt
    >>> state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7}
    >>> _ = dcp.save(state, storage_writer=Writer("memory://doc-dcp/c1"), no_dist=True)
    >>> cloudckpt.load("memory://doc-dcp/c1")["model.w"]
    array([[0., 1., 2.],
           [3., 4., 5.]], dtype=float32)
    >>> target = {"model": {"w": torch.zeros(2, 3)}, "step": 0}
    >>> dcp.load(target, storage_reader=Reader("memory://doc-dcp/c1"), no_dist=True)
    >>> target["model"]["w"][1], target["step"]
    (tensor([3., 4., 5.]), 7)
"""

from __future__ import annotations

import dataclasses
import io
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from cloudckpt.errors import CheckpointError, CheckpointExistsError
from cloudckpt.format.checksum import crc32c_of
from cloudckpt.format.dtypes import dtype_name, parse_dtype
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.format.node_names import node_paths
from cloudckpt.format.records import ChunkedRecord, ShardedRecord
from cloudckpt.format.shards import ShardedArray, cells
from cloudckpt.format.store_plan import Job, place_objects, plan_store
from cloudckpt.format.store_write import WrittenArrays, write_arrays
from cloudckpt.format.tensor_store import StoreOptions, check_options
from cloudckpt.format.tree import flatten
from cloudckpt.format.zarr_meta import encode_doc
from cloudckpt.frameworks.torch import from_numpy, numpy_dtype, to_numpy
from cloudckpt.layout.checkpoint_io import commit_written, read_manifest, read_state
from cloudckpt.layout.commit import discard_attempt
from cloudckpt.layout.names import attempt_id, data_prefix
from cloudckpt.storage import Storage, open_storage

__all__ = ["Writer", "Reader", "metadata_to_json", "metadata_from_json"]

FORMAT = "cloudckpt-dcp/1"  # the version of the manifest's "dcp" field


# -- DCP's Metadata as JSON ---------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(name: str, where: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise CheckpointError(f"{where}: the DCP metadata names an unknown torch dtype {name!r}")
    return dt


def _json_path(path: Any) -> list[Any] | None:
    """A planner key path (a tuple of str and int) as JSON, None if it is not one."""
    if not isinstance(path, (tuple, list)) or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in path):
        return None
    return list(path)


def metadata_to_json(md: Metadata) -> dict[str, Any]:
    """DCP's checkpoint ``Metadata`` as JSON (what the manifest's ``dcp`` field holds).

    Planner data other than the default planner's key mapping (a dict of key
    paths) is not kept: DCP's load planners do not read it.

    Example:
        >>> md = Metadata({"w": TensorStorageMetadata(TensorProperties(torch.float16), torch.Size([4]),
        ...     [ChunkStorageMetadata(torch.Size([0]), torch.Size([4]))]), "step": BytesStorageMetadata()})
        >>> metadata_to_json(md)["items"]["w"]
        {'t': 'tensor', 'dtype': 'float16', 'requires_grad': False, 'size': [4], 'chunks': [[[0], [4]]]}
        >>> metadata_from_json(metadata_to_json(md), "doc") == md
        True
    """
    items: dict[str, Any] = {}
    for fqn, m in md.state_dict_metadata.items():
        if isinstance(m, BytesStorageMetadata):
            items[fqn] = {"t": "bytes"}
        else:
            items[fqn] = {
                "t": "tensor",
                "dtype": _dtype_name(m.properties.dtype),
                "requires_grad": bool(m.properties.requires_grad),
                "size": [int(d) for d in m.size],
                "chunks": [[[int(o) for o in c.offsets], [int(s) for s in c.sizes]] for c in m.chunks],
            }
    planner = None
    if isinstance(md.planner_data, Mapping):
        paths = {str(k): _json_path(v) for k, v in md.planner_data.items()}
        planner = None if any(v is None for v in paths.values()) else paths
    sm = md.storage_meta
    storage_meta = None
    if sm is not None:
        cid = None if sm.checkpoint_id is None else os.fspath(sm.checkpoint_id)
        storage_meta = {"checkpoint_id": cid, "save_id": sm.save_id, "load_id": sm.load_id, "modules": list(sm.modules)}
    return {"format": FORMAT, "version": md.version, "items": items, "planner_data": planner, "storage_meta": storage_meta}


def metadata_from_json(doc: Mapping[str, Any], where: str) -> Metadata:
    """DCP's ``Metadata`` from :func:`metadata_to_json`'s JSON; ``where`` (a URL) names it in errors."""
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT or not isinstance(doc.get("items"), Mapping):
        raise CheckpointError(f"{where}: the manifest's 'dcp' field is not DCP metadata of format {FORMAT}")
    out: dict[str, Any] = {}
    try:
        for fqn, m in doc["items"].items():
            if m["t"] == "bytes":
                out[fqn] = BytesStorageMetadata()
                continue
            props = TensorProperties(dtype=_parse_dtype(m["dtype"], where), requires_grad=bool(m["requires_grad"]))
            chunks = [ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in m["chunks"]]
            out[fqn] = TensorStorageMetadata(props, torch.Size(m["size"]), chunks)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: malformed DCP metadata in the manifest ({type(exc).__name__}: {exc})") from None
    planner = doc.get("planner_data")
    sm = doc.get("storage_meta")
    return Metadata(
        state_dict_metadata=out,
        planner_data=None if planner is None else {k: tuple(v) for k, v in planner.items()},
        storage_meta=None if sm is None else StorageMeta(sm["checkpoint_id"], sm["save_id"], sm["load_id"], list(sm["modules"])),
        version=doc.get("version"),
    )


# -- the global layout the coordinator gives every rank --------------------------


def _layout_of(plans: Sequence[SavePlan]) -> dict[str, Any]:
    """Every key of the checkpoint: a tensor's dtype, global shape and boxes
    (with the rank that writes each), or the rank that writes a value's bytes."""
    layout: dict[str, Any] = {}
    for rank, plan in enumerate(plans):
        for item in plan.items:
            fqn = item.index.fqn
            if item.type == WriteItemType.BYTE_IO:
                layout[fqn] = {"bytes": rank}
                continue
            td = item.tensor_data
            assert td is not None
            np_dt = numpy_dtype(td.properties.dtype)
            if np_dt is None:
                raise TypeError(f"DCP key {fqn!r}: cloudckpt cannot store torch dtype {td.properties.dtype}")
            entry = layout.setdefault(fqn, {"dtype": dtype_name(np_dt), "shape": list(td.size), "boxes": []})
            entry["boxes"].append([list(td.chunk.offsets), list(td.chunk.sizes), rank])
    return layout


def _leaves_state(layout: Mapping[str, Any], mine: Mapping[tuple[str, tuple[int, ...]], np.ndarray],
                  sizes: Mapping[str, int]) -> dict[str, ShardedArray]:
    """The state every rank plans the same from: one ShardedArray per key, with
    this rank's pieces (``mine``) and every box with its writer. ``sizes``:
    the byte counts of the BYTE_IO values known here."""
    state: dict[str, ShardedArray] = {}
    for fqn, e in layout.items():
        if "bytes" in e:
            n = int(sizes.get(fqn, 0))
            data = mine.get((fqn, (0,)))
            held: list[tuple[tuple[int, ...], np.ndarray]] = [((0,), data)] if data is not None else []
            state[fqn] = ShardedArray((n,), np.dtype("u1"), held, {((0,), (n,)): (int(e["bytes"]),)})
            continue
        dtype = parse_dtype(e["dtype"])
        pieces: list[tuple[tuple[int, ...], np.ndarray]] = [(o, d) for (f, o), d in mine.items() if f == fqn]
        boxes: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[int, ...]] = {
            (tuple(o), tuple(s)): (int(r),) for o, s, r in e["boxes"]
        }
        state[fqn] = ShardedArray(tuple(e["shape"]), dtype, pieces, boxes)
    return state


def _resolve(items: Sequence[WriteItem], planner: SavePlanner) -> dict[tuple[str, tuple[int, ...]], np.ndarray]:
    """This rank's data of its plan's items: ``(key, offset) -> array`` (BYTE_IO values as uint8)."""
    out: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
    for item in items:
        data = planner.resolve_data(item)
        if isinstance(data, io.BytesIO):
            out[(item.index.fqn, (0,))] = np.frombuffer(data.getbuffer().tobytes(), np.uint8)
            continue
        arr = to_numpy(data.detach().cpu() if isinstance(data, torch.Tensor) else data)
        assert arr is not None and item.tensor_data is not None
        out[(item.index.fqn, tuple(int(o) for o in item.tensor_data.chunk.offsets))] = arr
    return out


def _local_state(layout: Mapping[str, Any], mine: Mapping[tuple[str, tuple[int, ...]], np.ndarray]) -> dict[str, Any]:
    """One process holds everything: whole tensors and values as plain arrays
    (small ones are packed together), tensors split into chunks as ShardedArrays."""
    state: dict[str, Any] = {}
    for fqn, e in layout.items():
        if "bytes" in e:
            state[fqn] = mine[(fqn, (0,))]
            continue
        boxes = e["boxes"]
        if len(boxes) == 1 and list(boxes[0][0]) == [0] * len(e["shape"]) and list(boxes[0][1]) == list(e["shape"]):
            state[fqn] = mine[(fqn, tuple(boxes[0][0]))]
        else:
            state[fqn] = ShardedArray(tuple(e["shape"]), parse_dtype(e["dtype"]), [(o, d) for (f, o), d in mine.items() if f == fqn])
    return state


def _done(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()  # torch's future: DCP waits on it
    fut.set_result(value)
    return fut


class Writer(StorageWriter):
    """A DCP ``StorageWriter`` that saves a cloudckpt checkpoint at ``url``.

    ``dcp.save(state_dict, storage_writer=Writer(url))`` (or ``checkpoint_id=url``
    with ``Writer()``) saves; ``dcp.async_save`` too. ``storage_options`` go to
    the storage backend (e.g. S3 ``endpoint_url``); ``options`` are the tensor
    store's (:class:`~cloudckpt.StoreOptions`).

    With ``manager=`` (a :class:`~cloudckpt.CheckpointManager`), ``url`` is
    not given: each ``dcp.save`` writes the manager's next checkpoint
    (``<directory>/ckpt-<n>``), claims or checks the manager's ownership of
    the directory first (a manager that lost it gets
    :class:`~cloudckpt.OwnershipLostError`), and applies its retention after
    the commit, exactly as ``manager.save()`` would. Every rank passes its own
    manager (same directory, built with the job's process group).

    Example:
        >>> import torch, torch.distributed.checkpoint as dcp, cloudckpt
        >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(), "memory://doc-dcp-mgr", max_to_keep=2)
        >>> w = Writer(manager=m)
        >>> for step in range(3):
        ...     _ = dcp.save({"w": torch.full((2,), float(step))}, storage_writer=w, no_dist=True)
        >>> [u.rsplit("/", 1)[1] for u in m.checkpoints], w.url.rsplit("/", 1)[1]
        (['ckpt-2', 'ckpt-3'], 'ckpt-3')
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        manager: Any = None,
        storage_options: dict[str, Any] | None = None,
        options: StoreOptions | None = None,
    ) -> None:
        super().__init__()
        if manager is not None and url is not None:
            raise ValueError("give a URL or a manager (whose directory the saves go to), not both")
        self.url: str | None = None if url is None else os.fspath(url)
        self.manager = manager
        self.storage_options = storage_options
        self.options = check_options(options)
        self._number: int | None = None
        self._rank = 0
        self._coordinator = True
        self._save_id = uuid.uuid4().hex
        self._local: tuple[dict[str, Any], WrittenArrays] | None = None  # the coordinator's own write, one process
        self._shared: dict[str, Any] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new save (DCP calls this first); ``checkpoint_id`` overrides the URL."""
        if checkpoint_id is not None:
            if self.manager is not None:
                raise ValueError("a Writer with a manager saves where the manager numbers: pass no checkpoint_id")
            self.url = os.fspath(checkpoint_id)
        self._save_id = uuid.uuid4().hex
        self._local = None
        self._number = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Learn whether this rank is DCP's coordinator (it commits) and its rank."""
        self._coordinator = bool(is_coordinator)
        self._rank = int(kwargs.get("rank", 0 if is_coordinator else -1))

    def storage_meta(self) -> StorageMeta | None:
        """What DCP records of this storage in the checkpoint's metadata."""
        return StorageMeta(checkpoint_id=self.url, save_id=self._save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """Whether ``checkpoint_id`` can be a checkpoint URL or path."""
        return isinstance(checkpoint_id, (str, os.PathLike)) and bool(os.fspath(checkpoint_id))

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Every rank: with a manager, agree on the number of this save (the
        manager's ownership check runs here, before anything is written)."""
        if self.manager is not None:
            counter = self.manager.checkpoint
            latest = self.manager.latest_step()  # a restarted job (state restored by dcp.load) continues after it
            if latest is not None and counter.save_counter < latest:
                counter.save_counter = latest
            number = self.manager._decide(None, False)  # numbering and fencing: the manager's own path
            if number is None:
                raise ValueError(
                    f"the manager of {self.manager.directory} skips a second save at the same step "
                    "(step_counter and checkpoint_interval): DCP cannot skip a save, so advance the step or call "
                    "dcp.save only when the manager should save"
                )
            self._number = int(number)
            self.url = self.manager._url(self._number)
        if self.url is None:
            raise ValueError("no checkpoint URL: pass Writer(url) or dcp.save(..., checkpoint_id=url)")
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """The coordinator: refuse an existing checkpoint before anything is
        written, then give every rank the attempt and the global layout."""
        assert self.url is not None
        storage = self._storage(self.url)
        storage.check_commit(MANIFEST_KEY)
        if self.manager is None and storage.exists(MANIFEST_KEY):
            raise CheckpointExistsError(
                f"a committed checkpoint already exists at {storage.url}; committed checkpoints are never "
                "overwritten: save to another URL, or delete it first"
            )
        epoch = self.manager.epoch if self.manager is not None else None
        shared = {"url": self.url, "attempt": attempt_id(epoch), "world": len(plans), "layout": _layout_of(plans)}
        return [dataclasses.replace(p, storage_data=shared) for p in plans]

    def _storage(self, url: str) -> Storage:
        return open_storage(url, self.storage_options)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Every rank: write the items of its plan under the attempt's data prefix."""
        shared = self._shared = plan.storage_data
        storage = self._storage(shared["url"])
        prefix = data_prefix(shared["attempt"])
        mine = _resolve(plan.items, planner)
        sizes = {f: int(d.nbytes) for (f, _), d in mine.items() if "bytes" in shared["layout"][f]}
        entries: dict[str, Any] = {}
        if shared["world"] == 1:
            node, leaves = flatten(_local_state(shared["layout"], mine))
            paths = node_paths(node)
            written = write_arrays(storage, prefix, leaves, self.options, node_paths=[paths[i] for i in range(len(leaves))])
            self._local = (node, written)
        else:
            node, leaves = flatten(_leaves_state(shared["layout"], mine, sizes))
            paths = node_paths(node)
            store = plan_store(storage, prefix, leaves, self.options, [paths[i] for i in range(len(leaves))])
            rank = self._rank if self._rank >= 0 else torch.distributed.get_rank()
            jobs = [j for j in store.chunks if isinstance(j, Job) and j.cands == (rank,)]
            for obj, _ in storage.map(lambda job: job.run(), jobs, limit=storage.max_concurrency):
                entries[obj["key"]] = obj
        storage.barrier()
        results = []
        for k, item in enumerate(plan.items):
            n = sizes.get(item.index.fqn, item.tensor_storage_size() or 0)
            data = {"objects": entries, "bytes": sizes} if k == 0 else None
            results.append(WriteResult(index=item.index, size_in_bytes=n, storage_data=data))
        return _done(results)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """The coordinator: write the zarr metadata, then commit the manifest create-only."""
        shared = self._shared
        storage = self._storage(shared["url"])
        prefix = data_prefix(shared["attempt"])
        if self._local is not None:
            node, written = self._local
        else:
            node, written = self._gather(storage, prefix, shared["layout"], results)
        extra = {"dcp": metadata_to_json(metadata)}
        try:
            if self.manager is None:
                commit_written(storage, node, written, shared["attempt"], extra=extra, checkpoint_number=None)
            else:
                self._commit_managed(storage, node, written, shared["attempt"], extra)
        finally:
            self._local = None

    def _gather(
        self, storage: Storage, prefix: str, layout: Mapping[str, Any], results: list[list[WriteResult]]
    ) -> tuple[dict[str, Any], WrittenArrays]:
        """Several ranks wrote: plan the whole checkpoint again with every
        value's size, write the zarr metadata documents, and list every object
        in the manifest's order."""
        entries: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        for rank_results in results:
            for r in rank_results:
                if r.storage_data:
                    entries.update(r.storage_data["objects"])
                    sizes.update(r.storage_data["bytes"])
        node, leaves = flatten(_leaves_state(layout, {}, sizes))
        paths = node_paths(node)
        store = plan_store(storage, prefix, leaves, self.options, [paths[i] for i in range(len(leaves))])
        records, pack = place_objects(store)

        def put(item: tuple[str, dict[str, Any]]) -> dict[str, Any]:
            data = encode_doc(item[1])
            key = f"{prefix}/{item[0]}"
            storage.write(key, data)
            return {"key": key, "size": len(data), "crc32c": crc32c_of(data)}

        try:
            objects: list[Any] = storage.map(put, store.docs, limit=storage.max_concurrency)
            storage.barrier()
            for rec in records:
                if isinstance(rec, (ChunkedRecord, ShardedRecord)):
                    objects.extend(entries[f"{prefix}/{c.key}"] for c in cells(rec, rec.shape))
        except BaseException:
            discard_attempt(storage, prefix)
            raise
        return node, WrittenArrays(records, pack, objects, store.nbytes)

    def _commit_managed(self, storage: Storage, node: dict[str, Any], written: WrittenArrays, attempt: str, extra: dict[str, Any]) -> None:
        """Commit as the manager's own save does: its number, epoch and writer
        record in the manifest; state file and retention right after."""
        m = self.manager
        assert self._number is not None
        m._replace_abandoned(self._number)
        manifest = commit_written(
            storage, node, written, attempt, extra=extra, checkpoint_number=self._number, epoch=m.epoch,
            created=m._now(), writer_extra=m._writer_record(),
        )
        m._after_commit(self._number, manifest)


class Reader(StorageReader):
    """A DCP ``StorageReader`` of a cloudckpt checkpoint written by :class:`Writer`.

    ``dcp.load(state_dict, storage_reader=Reader(url))`` loads into the
    state dict's tensors, resharding as DCP plans (any world size). Every
    object read is checked against its crc32c.

    Example:
        >>> import torch, torch.distributed.checkpoint as dcp
        >>> _ = dcp.save({"b": torch.ones(3)}, storage_writer=Writer("memory://doc-dcp-r/c"), no_dist=True)
        >>> target = {"b": torch.zeros(3)}
        >>> dcp.load(target, storage_reader=Reader("memory://doc-dcp-r/c"), no_dist=True); target["b"]
        tensor([1., 1., 1.])
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, *, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.url: str | None = None if url is None else os.fspath(url)
        self.storage_options = storage_options
        self._manifest: dict[str, Any] | None = None
        self._storage_obj: Storage | None = None

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new load (DCP calls this first); ``checkpoint_id`` overrides the URL."""
        if checkpoint_id is not None:
            self.url = os.fspath(checkpoint_id)
        self._manifest = None
        self._storage_obj = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """Whether ``checkpoint_id`` can be a checkpoint URL or path."""
        return isinstance(checkpoint_id, (str, os.PathLike)) and bool(os.fspath(checkpoint_id))

    def _open(self) -> tuple[Storage, dict[str, Any]]:
        if self._manifest is None or self._storage_obj is None:
            if self.url is None:
                raise ValueError("no checkpoint URL: pass Reader(url) or dcp.load(..., checkpoint_id=url)")
            self._storage_obj = open_storage(self.url, self.storage_options)
            self._manifest = read_manifest(self._storage_obj)
        return self._storage_obj, self._manifest

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """DCP's metadata of the checkpoint, from the manifest's JSON."""
        storage, manifest = self._open()
        if "dcp" not in manifest:
            raise CheckpointError(
                f"{storage.url} is a cloudckpt checkpoint, but not one written by cloudckpt.dcp.Writer (its "
                "manifest has no DCP metadata): read it with cloudckpt.load or cloudckpt.Checkpoint.read"
            )
        return metadata_from_json(manifest["dcp"], storage.url_for(MANIFEST_KEY))

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Nothing to set up beyond the manifest, read once per load."""
        self._open()

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """The plan as DCP made it."""
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """The plans as DCP made them."""
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Read the regions of the plan's items (only the chunks they touch) and hand them to the planner."""
        storage, manifest = self._open()
        regions: dict[tuple[Any, ...], list[Any]] = {}
        keys: dict[tuple[Any, ...], None] = {}
        for item in plan.items:
            path = (item.storage_index.fqn,)
            keys[path] = None
            if item.type == LoadItemType.TENSOR:
                box = _box(item.storage_index, item.storage_offsets, item.lengths)
                if box not in regions.setdefault(path, []):
                    regions[path].append(box)
        for path, boxes in list(regions.items()):
            if [b for b in boxes if not _whole(b, manifest, path[0])] == []:
                del regions[path]  # read whole (mapped on local disk), no region copy
        state = read_state(storage, manifest, list(keys), regions=regions) if keys else {}
        for item in plan.items:
            fqn = item.storage_index.fqn
            value = state[fqn]
            if item.type == LoadItemType.BYTE_IO:
                planner.load_bytes(item, io.BytesIO(np.ascontiguousarray(value).tobytes()))
                continue
            offset = _box(item.storage_index, item.storage_offsets, item.lengths)[0]
            piece = np.asarray(dict(value.pieces)[offset] if isinstance(value, ShardedArray) else value)
            target = planner.resolve_tensor(item).detach()
            dst = to_numpy(target) if target.device.type == "cpu" else None
            if dst is not None and dst.dtype == piece.dtype:
                np.copyto(dst, piece.reshape(dst.shape))  # straight into the tensor's memory
            else:
                src = from_numpy(piece)
                assert src is not None  # every dtype the writer stored has a torch dtype
                target.copy_(src.reshape(target.shape))
            planner.commit_tensor(item, target)
        return _done(None)


def _whole(box: tuple[tuple[int, ...], tuple[int, ...]], manifest: Mapping[str, Any], fqn: str) -> bool:
    """Whether ``box`` is the whole array of key ``fqn``."""
    item = manifest.get("dcp", {}).get("items", {}).get(fqn) or {}
    return all(o == 0 for o in box[0]) and list(box[1]) == list(item.get("size", [None]))


def _box(index: MetadataIndex, offsets: Sequence[int], lengths: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The region of the global array a read item asks for."""
    base = tuple(index.offset or (0,) * len(offsets))
    return tuple(int(b) + int(o) for b, o in zip(base, offsets, strict=True)), tuple(int(n) for n in lengths)
