"""The functional API: ``save``, ``load`` and ``info`` of one checkpoint at a URL.

Example:
    >>> import numpy as np, cloudckpt
    >>> url = cloudckpt.save("memory://doc-api/ckpt-1", {"w": np.arange(3), "step": 7})
    >>> cloudckpt.load(url)
    {'w': array([0, 1, 2]), 'step': 7}
    >>> cloudckpt.load(url, keys=["step"])
    {'step': 7}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudckpt import frameworks
from cloudckpt.checkpoint import regions_of, restore_into
from cloudckpt.distributed.group import agree, current_rank, resolve_group
from cloudckpt.format.node_names import leaf_entries
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.layout.checkpoint_io import describe_leaves, read_manifest, read_state, write_checkpoint
from cloudckpt.layout.incremental import open_base
from cloudckpt.storage import open_storage

__all__ = ["save", "load", "info", "CheckpointInfo"]


def save(
    path: str,
    state: Any,
    *,
    storage_options: dict[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    options: StoreOptions | None = None,
    process_group: Any = None,
    base: str | None = None,
) -> str:
    """Write ``state`` as one checkpoint at ``path`` and return its URL.

    ``path`` is any fsspec URL (``s3://bucket/run/ckpt-1``, ``gs://...``,
    ``memory://...``) or a local path. ``state`` is a tree of dict / list /
    tuple with numpy arrays, numpy scalars and JSON scalars as leaves.
    ``metadata`` is a JSON dict stored in the manifest. An existing committed
    checkpoint at ``path`` is never overwritten
    (:class:`~cloudckpt.CheckpointExistsError`); an unsupported leaf raises
    TypeError naming its path before anything is written.

    In a distributed job (torch.distributed initialized with several
    processes, or an explicit ``process_group``) every rank calls ``save``
    with its own state: ``DTensor`` leaves are stored as global arrays, each
    rank writing its shard; arrays every rank holds are written once, the
    writing spread over the ranks; ``cloudckpt.PerRank`` values are kept per
    rank. One manifest commits them all, or none (every rank raises).

    ``base``: the URL of an earlier checkpoint on the same store (an
    incremental save). Every object holding the same bytes as one of the
    base's is copied inside the store (S3 ``CopyObject``, GCS rewrite, a hard
    link on local disk) instead of sent; the new checkpoint is whole, and
    deleting the base never affects it. A base that cannot serve (missing,
    damaged, on another store, written by an older cloudckpt) makes the save
    write everything. A :class:`~cloudckpt.CheckpointManager` does this by
    itself (its ``incremental`` option).

    Example:
        >>> import numpy as np, cloudckpt, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> cloudckpt.save(os.path.join(d, "ckpt-1"), {"w": np.zeros(2)}) == os.path.join(d, "ckpt-1")
        True
        >>> state = {"frozen": np.zeros(1 << 20), "lora": np.ones(8)}
        >>> first = cloudckpt.save(os.path.join(d, "ckpt-2"), state)
        >>> state["lora"] += 1
        >>> second = cloudckpt.save(os.path.join(d, "ckpt-3"), state, base=first)
        >>> float(cloudckpt.load(second)["lora"][0])
        2.0
    """
    group = resolve_group(process_group)
    storage = open_storage(path, storage_options)
    found = None
    if base is not None:
        found = open_base(storage, open_storage(base, storage_options))
    return write_checkpoint(storage, state, metadata=metadata, options=options, group=group, base=found).url


def load(
    path: str,
    *,
    storage_options: dict[str, Any] | None = None,
    keys: Sequence[str | Sequence[Any]] | str | None = None,
    framework: str | None = None,
    device: Any = None,
    target: Any = None,
    process_group: Any = None,
    mmap: bool = True,
) -> Any:
    """Read the checkpoint at ``path`` and return its state.

    ``keys`` restricts the result to subtrees: ``["model/w", "opt"]``
    (``/``-separated) or tuples of keys (``[("a/b", 0)]``) for keys that
    contain ``/``; only their bytes are read. Every object read is checked
    against its crc32c. Raises :class:`~cloudckpt.CheckpointNotFoundError`
    when there is no committed checkpoint at ``path`` and
    :class:`~cloudckpt.CorruptCheckpointError` naming the damaged object.

    Arrays come back as numpy arrays, or with ``framework="torch"`` /
    ``framework="jax"`` as torch tensors / jax arrays (on ``device``: a torch
    device, or a ``jax.Device`` or ``jax.sharding.Sharding``); see
    :func:`cloudckpt.frameworks.convert`. With ``target`` (a live tree of the
    state's shape) the state is restored into it and the restored tree is
    returned: numpy arrays and torch tensors overwritten in place, jax arrays
    replaced by new ones with the target leaf's sharding, NamedTuples rebuilt
    as their class, dicts and lists updated in place; a mismatch raises one
    ValueError listing every difference before anything is changed (see
    :func:`cloudckpt.checkpoint.restore_into`). A ``DTensor`` in ``target``
    gets only its own shard, read from byte ranges, whatever sharding or
    world size saved it; without ``target`` every array loads whole.
    ``PerRank`` values are this rank's (torch.distributed's rank when it is
    initialized). A load is not collective unless ``process_group`` is
    given: then every rank of it must call ``load``, and if one cannot read
    its part, all raise.

    On local disk, with ``mmap=True`` (the default; as ``torch.load(mmap=True)``),
    the small tensors stored together in pack files come back as
    copy-on-write views of those files, mapped from the page cache: no copy,
    no freshly zeroed memory, and the crc32c is still checked over every
    byte. On Linux, so do large arrays whose chunk files are whole 4 KiB
    pages (the writer picks such chunks where they pad by at most 1%): the
    chunk files are mapped back to back as one array. Writing to them
    changes only this process's memory. The checkpoint may be deleted
    meanwhile (retention does); its files must not be truncated in place
    while the arrays live. ``mmap=False`` copies them into
    fresh memory. Object stores always copy.

    Example:
        >>> import numpy as np, cloudckpt
        >>> url = cloudckpt.save("memory://doc-load/c", {"a": {"x": np.ones(1), "y": 2}})
        >>> cloudckpt.load(url, keys="a/y")
        {'a': {'y': 2}}
    """
    if target is not None and (framework is not None or device is not None):
        raise ValueError("pass either target= (restore into live objects) or framework=/device=, not both")
    frameworks.require(framework)  # a bad name or a missing framework fails before any I/O
    group = resolve_group(process_group) if process_group is not None else None
    rank = group.rank if group is not None else current_rank()
    storage = open_storage(path, storage_options)
    state: Any = None
    error: BaseException | None = None
    try:
        manifest = read_manifest(storage)
        regions = regions_of(target) if target is not None else None
        state = read_state(storage, manifest, keys, regions=regions, rank=rank, mmap=mmap)
    except Exception as exc:
        if group is None or group.size == 1:
            raise
        error = exc
    if group is not None:
        agree(group, error)
    if target is not None:
        return restore_into(target, state, source=storage.url)
    return frameworks.convert(state, framework, device=device)


@dataclass
class CheckpointInfo:
    """What a checkpoint holds and where (returned by :func:`info`).

    ``data_url`` is the zarr v3 group holding the tensors:
    ``zarr.open_group(data_url, mode="r")`` reads it without cloudckpt.
    ``nbytes`` is the bytes of the tensors, ``stored_bytes`` the bytes of
    every object the manifest lists, ``objects`` their number with the
    manifest; ``leaves`` has one dict per array (path, dtype, shape, bytes,
    where it is stored); ``epoch`` is the ownership epoch of the manager that
    wrote it (None without a manager). ``writer`` is the manifest's record of
    its writer (``library``, ``epoch``, ...), ``created_utc`` the creation
    time as text; ``entries`` has one dict per leaf of the tree in order
    (``path``, ``rank`` under a ``PerRank``, ``kind``): an array or scalar
    with its ``leaves`` fields, an ``alias`` (tied tensor) with the path it
    is ``of``, a ``json`` value with its ``type`` and ``value``.

    Example:
        >>> import numpy as np, cloudckpt, zarr
        >>> url = cloudckpt.save("memory://doc-checkpointinfo/ckpt-3", {"w": np.ones(4, "f4")}, metadata={"lr": 0.1})
        >>> i = cloudckpt.info(url)
        >>> i.nbytes, i.metadata, i.epoch, [leaf["path"] for leaf in i.leaves]
        (16, {'lr': 0.1}, None, [['w']])
        >>> zarr.open_group(i.data_url, mode="r")["_pack"].dtype   # small tensors are packed
        dtype('uint8')
    """

    url: str
    data_url: str
    format_version: int
    created: float
    checkpoint_number: int | None
    nbytes: int
    objects: int
    stored_bytes: int
    metadata: dict[str, Any]
    leaves: list[dict[str, Any]]
    epoch: int | None = None
    writer: dict[str, Any] = field(default_factory=dict)
    created_utc: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)


def info(path: str, *, storage_options: dict[str, Any] | None = None) -> CheckpointInfo:
    """Describe the checkpoint at ``path`` from its manifest (one request).

    Example:
        >>> import numpy as np, cloudckpt
        >>> url = cloudckpt.save("memory://doc-info/c", {"w": np.zeros((2, 3), "f4")})
        >>> i = cloudckpt.info(url)
        >>> i.leaves[0]["dtype"], i.leaves[0]["shape"], i.data_url.startswith(url + "/data-")
        ('<f4', [2, 3], True)
    """
    storage = open_storage(path, storage_options)
    m = read_manifest(storage)
    leaves = describe_leaves(m)
    return CheckpointInfo(
        url=storage.url,
        data_url=storage.url_for(m["data"]),
        format_version=m["format_version"],
        created=float(m["created"]),
        checkpoint_number=m.get("checkpoint_number"),
        nbytes=int(m["nbytes"]),
        objects=len(m["objects"]) + 1,
        stored_bytes=sum(int(o["size"]) for o in m["objects"]),
        metadata=dict(m["metadata"]),
        leaves=leaves,
        epoch=m["writer"].get("epoch"),
        writer=dict(m["writer"]),
        created_utc=m.get("created_utc"),
        entries=[_entry(e, leaves) for e in leaf_entries(m["tree"])],
    )


def _entry(e: dict[str, Any], leaves: list[dict[str, Any]]) -> dict[str, Any]:
    """A leaf of the tree (:func:`leaf_entries`) with what ``leaves`` says of its array."""
    i = e.pop("array", None)
    if i is None:
        return e
    if e["kind"] == "alias":
        return {**e, "of": leaves[i]["path"]}
    kind = e.pop("kind")
    return {**e, **{k: v for k, v in leaves[i].items() if k not in ("path", "name")}, "kind": kind}
