"""Export the tensors of a checkpoint as Hugging Face safetensors, streamed one shard at a time.

Example:
    >>> import json, numpy as np, cloudckpt
    >>> from cloudckpt.storage import open_storage
    >>> url = cloudckpt.save("memory://doc-export/ckpt-1", {"model": {"a.w": np.ones(3, "f4")}, "step": 5})
    >>> r = export_safetensors(url, "memory://doc-export/hf", prefix="model")
    >>> r.files, r.skipped, r.tensors
    (['memory://doc-export/hf/model.safetensors'], [], 1)
    >>> data = open_storage("memory://doc-export/hf").read("model.safetensors")
    >>> json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["a.w"]
    {'dtype': 'F32', 'shape': [3], 'data_offsets': [0, 12]}
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudckpt.format.dtypes import parse_dtype
from cloudckpt.format.node_names import leaf_entries, leaf_paths
from cloudckpt.format.records import is_region_record, pack_from_json, records_from_json
from cloudckpt.format.regions import read_regions
from cloudckpt.format.store_read import read_arrays
from cloudckpt.layout.checkpoint_io import describe_leaves, read_manifest
from cloudckpt.storage import Storage, open_storage
from cloudckpt.tools.admin import RefusedError
from cloudckpt.tools.safetensors_io.common import (
    DEFAULT_MAX_SHARD,
    FILE_NAME,
    ExportReport,
    ProgressFn,
    index_name,
    open_file,
    parse_size,
    shard_name,
    split_prefix,
)
from cloudckpt.tools.safetensors_io.spec import encode_header, safetensors_dtype, write_order

__all__ = ["export_safetensors", "select_tensors", "plan_shards", "Tensor"]

log = logging.getLogger("cloudckpt")


@dataclass(frozen=True)
class Tensor:
    """A tensor to export: its safetensors name, its path in the checkpoint and its array's id there.

    Example:
        >>> Tensor("h.0.w", ("model", "h", 0, "w"), 3, np.dtype("<f4"), (2, 5)).nbytes
        40
    """

    key: str
    path: tuple[Any, ...]
    array: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Its size in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize


def export_safetensors(
    ckpt_url: str,
    dest_url: str,
    *,
    prefix: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    name: str = "model",
    metadata: Mapping[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
    dest_storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write the tensors of the checkpoint at ``ckpt_url`` as safetensors files in ``dest_url``.

    Every tensor leaf is exported, or with ``prefix`` (``"model"``,
    ``"model/encoder"``: ``/``-separated keys) those under it, the prefix
    removed from their names. A tensor's name is its path of keys joined
    with ``"."`` (``{"model": {"h": [w]}}`` gives ``model.h.0``); a key that
    already holds dots (a torch ``state_dict``'s) is kept as it is, and two
    paths that join to one name raise ValueError naming both. Leaves that
    are not tensors (ints, strings, ...) are not exported: the report lists
    them in ``skipped``. Tied tensors are written once under each name.

    As ``transformers``' ``save_pretrained``: files of at most
    ``max_shard_size`` (bytes, or ``"5GB"``, ``"500MB"``; a tensor larger
    than that gets a file of its own) named ``model-00001-of-00003.safetensors``
    with a ``model.safetensors.index.json`` written last, or one
    ``model.safetensors`` when one file holds everything (``name`` replaces
    ``model``). A ``dest_url`` ending in ``.safetensors`` is one file, whatever
    its size. The header's ``__metadata__`` is ``{"format": "pt"}``, the
    metadata a :func:`~cloudckpt.tools.safetensors_io.import_safetensors`
    kept, and ``metadata``.

    Memory is bounded by the largest file: each is read, written in one
    request from the arrays read (no joined copy) and released before the
    next. Existing export files at ``dest_url`` are a
    :class:`~cloudckpt.tools.admin.RefusedError`, unless ``overwrite``
    (stale shards of the old export are then deleted, after the new index).
    ``progress(bytes_done, bytes_total)`` is called after each file.

    Example:
        >>> import numpy as np, cloudckpt
        >>> url = cloudckpt.save("memory://doc-export2/c", {"a": np.zeros(100, "u1"), "b": np.ones(100, "u1")})
        >>> r = export_safetensors(url, "memory://doc-export2/out", max_shard_size=150)
        >>> [f.rsplit("/", 1)[1] for f in r.files], r.index.rsplit("/", 1)[1]
        (['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'], 'model.safetensors.index.json')
    """
    t0 = time.perf_counter()
    limit = parse_size(max_shard_size)
    src = open_storage(ckpt_url, storage_options)
    manifest = read_manifest(src)
    tensors, skipped = select_tensors(manifest, prefix, src.url)
    dst, shards, names = _destination(dest_url, dest_storage_options, tensors, limit, name)
    stale = _existing(dst, name, names, overwrite)
    stored = manifest["metadata"].get("safetensors")
    meta = {"format": "pt", **(stored if isinstance(stored, dict) else {}), **(metadata or {})}
    total = sum(t.nbytes for t in tensors)
    done = 0
    for shard, fname in zip(shards, names, strict=True):
        _write_shard(src, manifest, dst, fname, shard, meta)
        done += sum(t.nbytes for t in shard)
        if progress is not None:
            progress(done, total)
    index = None
    if len(shards) > 1:
        weight_map = {t.key: f for shard, f in zip(shards, names, strict=True) for t in shard}
        doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        dst.write(index_name(name), json.dumps(doc, indent=2).encode() + b"\n", atomic=True)
        index = dst.url_for(index_name(name))
    _remove_stale(dst, stale, names, index is not None, name)
    log.info("exported %s to %s: %d tensors, %d bytes in %d files", src.url, dst.url, len(tensors), total, len(names))
    return ExportReport(
        url=dst.url, files=[dst.url_for(f) for f in names], index=index, tensors=len(tensors), nbytes=total,
        seconds=time.perf_counter() - t0, skipped=skipped,
        largest_shard=max((sum(t.nbytes for t in s) for s in shards), default=0),
    )  # fmt: skip


def _destination(
    dest_url: str, options: dict[str, Any] | None, tensors: list[Tensor], limit: int, name: str
) -> tuple[Storage, list[list[Tensor]], list[str]]:
    """The directory written, the tensors of each file and the files' names: one
    file when ``dest_url`` ends in ``.safetensors``, else shards of at most ``limit`` bytes."""
    if dest_url.rstrip("/").endswith(".safetensors"):
        dst, only = open_file(dest_url.rstrip("/"), options)
        return dst, [tensors], [only]
    dst = open_storage(dest_url, options)
    shards = plan_shards(tensors, limit)
    return dst, shards, [shard_name(name, i + 1, len(shards)) for i in range(len(shards))]


def select_tensors(manifest: Mapping[str, Any], prefix: str | None, where: str) -> tuple[list[Tensor], list[str]]:
    """The tensors under ``prefix`` in the checkpoint's order, and the paths of the other leaves there.

    Example:
        >>> import numpy as np, cloudckpt
        >>> from cloudckpt.storage import open_storage
        >>> from cloudckpt.layout.checkpoint_io import read_manifest
        >>> url = cloudckpt.save("memory://doc-select/c", {"m": {"a.b": np.ones(2, "f2"), "n": 3}})
        >>> tensors, skipped = select_tensors(read_manifest(open_storage(url)), "m", url)
        >>> [(t.key, t.path, str(t.dtype), t.nbytes) for t in tensors], skipped
        ([('a.b', ('m', 'a.b'), 'float16', 4)], ['m/n'])
    """
    pre = split_prefix(prefix)
    leaves = describe_leaves(manifest)
    tensors: list[Tensor] = []
    skipped: list[str] = []
    seen: dict[str, tuple[Any, ...]] = {}
    for e in leaf_entries(manifest["tree"]):
        path = tuple(e["path"])
        if tuple(str(k) for k in path[: len(pre)]) != pre:
            continue
        text = "/".join(str(k) for k in path)
        if "rank" in e or "array" not in e:
            skipped.append(f"{text} (per-rank value)" if "rank" in e else text)
            continue
        leaf = leaves[e["array"]]
        key = ".".join(str(k) for k in path[len(pre) :]) or str(path[-1])
        dtype = parse_dtype(leaf["dtype"])
        if safetensors_dtype(dtype) is None:
            raise ValueError(
                f"{where}: tensor {text!r} has dtype {dtype}, which safetensors has no type for; "
                "export a prefix without it (--prefix)"
            )
        if key in seen:
            other = "/".join(str(k) for k in seen[key])
            raise ValueError(f"{where}: tensors {other!r} and {text!r} both export as {key!r}; rename one of them")
        seen[key] = path
        tensors.append(Tensor(key, path, e["array"], dtype, tuple(leaf["shape"])))
    if not tensors:
        scope = f"under prefix {'/'.join(pre)!r}" if pre else "in it"
        raise ValueError(f"{where}: no tensor {scope} to export")
    return tensors, skipped


def plan_shards(tensors: Sequence[Tensor], limit: int) -> list[list[Tensor]]:
    """``tensors`` cut in order into files of at most ``limit`` bytes, as
    ``huggingface_hub``'s split does: a tensor larger than ``limit`` alone in a file.

    Example:
        >>> t = [Tensor(k, (k,), i, np.dtype("u1"), (n,)) for i, (k, n) in enumerate([("a", 60), ("b", 60), ("c", 200), ("d", 10)])]
        >>> [[x.key for x in s] for s in plan_shards(t, 100)]
        [['a'], ['b'], ['c'], ['d']]
        >>> [[x.key for x in s] for s in plan_shards(t, 130)]
        [['a', 'b'], ['c'], ['d']]
    """
    shards: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        if t.nbytes > limit:
            shards.append([t])
            size = limit  # nothing more goes into it
            continue
        if not shards or size + t.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _read(storage: Storage, manifest: Mapping[str, Any], ids: Sequence[int]) -> dict[int, np.ndarray]:
    """The arrays ``ids`` of the checkpoint, read and checked against their crc32c (mapped on local disk)."""
    records = records_from_json(manifest["arrays"])
    pack = pack_from_json(manifest.get("pack"))
    paths = leaf_paths(manifest["tree"], len(manifest["arrays"]))
    plain = [i for i in ids if not is_region_record(records[i])]
    arrays = read_arrays(storage, manifest["data"], records, pack, manifest["objects"], plain, paths=paths, mmap=True)
    whole = {i: [((0,) * len(records[i].shape), tuple(records[i].shape))] for i in ids if is_region_record(records[i])}
    if whole:
        got = read_regions(storage, records, manifest["objects"], whole, prefix=manifest["data"], pack=pack)
        arrays.update({i: sa.pieces[0][1] for i, sa in got.items()})
    return arrays


def _write_shard(
    src: Storage, manifest: Mapping[str, Any], dst: Storage, fname: str, shard: Sequence[Tensor], meta: Mapping[str, str]
) -> None:
    """Read the arrays of ``shard`` and write them as the file ``fname``: one request, no joined copy."""
    arrays = _read(src, manifest, sorted({t.array for t in shard}))
    order = write_order([(t.key, t.dtype) for t in shard])
    header, _ = encode_header([(shard[i].key, shard[i].dtype, shard[i].shape) for i in order], meta)
    buffers: list[Any] = [header]
    for i in order:
        t = shard[i]
        a = np.asarray(arrays[t.array])
        if a.shape != t.shape or a.dtype != t.dtype:  # pragma: no cover - the manifest's record says otherwise
            raise ValueError(f"{src.url}: tensor {t.key!r} read as {a.dtype}{a.shape}, recorded {t.dtype}{t.shape}")
        if a.dtype.byteorder == ">":  # safetensors is little-endian
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.nbytes:
            buffers.append(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    del arrays
    dst.write(fname, buffers)


def _existing(dst: Storage, name: str, names: Sequence[str], overwrite: bool) -> list[str]:
    """The files of an earlier export named ``name`` at ``dst``: refused unless ``overwrite``."""
    files, _ = dst.list_dir("")
    old = [f for f in files if f in names or f == index_name(name) or _is_shard_of(f, name)]
    if old and not overwrite:
        raise RefusedError(
            f"{dst.url} already holds an export ({', '.join(sorted(old)[:3])}{', ...' if len(old) > 3 else ''}); "
            "give another destination, or overwrite it (--overwrite / overwrite=True)"
        )
    return old


def _is_shard_of(fname: str, name: str) -> bool:
    m = FILE_NAME.match(fname)
    return m is not None and m.group("name") == name and (m.group("i") is not None or fname == f"{name}.safetensors")


def _remove_stale(dst: Storage, old: Sequence[str], names: Sequence[str], indexed: bool, name: str) -> None:
    """Delete the files of the export replaced by this one that it did not rewrite."""
    keep = set(names) | ({index_name(name)} if indexed else set())
    stale = [f for f in old if f not in keep]
    if stale:
        dst.delete(stale)
