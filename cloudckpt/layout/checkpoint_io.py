"""Writing and reading one checkpoint with the object-store-safe commit.

1. All tensor data goes under ``data-<attempt>/``, a prefix unique to this
   save attempt: a crashed or still-running older writer can never change
   bytes a committed checkpoint restores. Data is never renamed.
2. A barrier makes the data durable (fsync on local disk).
3. ``manifest.json`` is written last, create-only (S3 ``If-None-Match: *``,
   GCS ``ifGenerationMatch=0``, local ``link()`` of an fsynced temp file).
   From that instant the checkpoint is committed.

A crash between any two requests leaves no manifest, so nothing is visible;
the orphaned ``data-*`` prefix is collected later by the manager.

Example:
    >>> import numpy as np
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage("memory://doc-io/ckpt-1")
    >>> result = write_checkpoint(s, {"w": np.ones(3)})
    >>> m = read_manifest(s)
    >>> read_state(s, m)["w"]
    array([1., 1., 1.])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudckpt.distributed import collective
from cloudckpt.distributed.collective import describe, gather_small, has_per_rank, plan
from cloudckpt.distributed.group import SINGLE, raise_remote
from cloudckpt.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ObjectNotFoundError,
)
from cloudckpt.format import adapters
from cloudckpt.format.manifest import MANIFEST_KEY, build_manifest, encode_manifest, max_manifest_bytes, parse_manifest
from cloudckpt.format.node_names import leaf_paths, node_paths
from cloudckpt.format.records import (
    ChunkedRecord,
    PackedRecord,
    ShardedRecord,
    is_region_record,
    pack_from_json,
    records_from_json,
)
from cloudckpt.format.regions import read_regions
from cloudckpt.format.reuse import BaseObjects
from cloudckpt.format.shards import Box, ShardedArray
from cloudckpt.format.store_read import read_arrays
from cloudckpt.format.store_write import WrittenArrays, fill_packed_crcs, write_arrays
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.format.tree import Leaf, array_ids, flatten, format_path, parse_key_path, select, unflatten
from cloudckpt.layout.commit import commit, discard_attempt
from cloudckpt.layout.names import attempt_id, data_prefix, is_data_prefix
from cloudckpt.storage import Storage

__all__ = ["WriteResult", "write_checkpoint", "commit_written", "read_manifest", "read_state"]

log = logging.getLogger("cloudckpt")


@dataclass
class WriteResult:
    """Outcome of a committed write: URL, manifest, bytes, seconds, requests."""

    url: str
    manifest: dict[str, Any]
    nbytes: int
    seconds: float
    requests: int
    extra: dict[str, Any] = field(default_factory=dict)
    copied_bytes: int = 0  # bytes this process placed by a copy from the base (incremental), not sent


def write_checkpoint(
    storage: Storage,
    state: Any,
    *,
    checkpoint_number: int | None = None,
    epoch: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    options: StoreOptions | None = None,
    attempt: str | None = None,
    created: float | None = None,
    flat: tuple[dict[str, Any], list[Any]] | None = None,
    check_exists: bool = True,
    writer_extra: Mapping[str, Any] | None = None,
    group: Any = None,
    after_commit: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    base: BaseObjects | None = None,
) -> WriteResult:
    """Write ``state`` as a checkpoint in the directory ``storage`` and commit it.

    Raises TypeError (naming the leaf) before anything is written if the
    state holds an unsupported leaf, and :class:`CheckpointExistsError` if a
    committed checkpoint is already there (nothing is changed then).
    ``flat`` is the result of :func:`~cloudckpt.format.tree.flatten` when the caller
    has flattened (and perhaps copied) the state already; ``attempt`` names
    the data prefix ``data-<attempt>`` (:mod:`cloudckpt.layout.names`).

    With a ``group`` of several processes (:mod:`cloudckpt.distributed.group`) every rank
    calls this with its own state: all write their share of the data under
    one attempt prefix (rank 0's), rank 0 gathers what they wrote and commits
    the one manifest, and every rank returns or raises with the outcome; a
    rank that fails or dies makes every rank raise, with nothing committed.
    ``after_commit(manifest)`` runs on rank 0 right after the commit, before
    the other ranks learn the outcome (its error is theirs too); the JSON
    dict it returns is every rank's ``extra`` in the result. The manifest in
    the result is rank 0's; other ranks get ``{}``.

    ``base`` (:func:`cloudckpt.layout.incremental.open_base`): a committed
    checkpoint of the same store whose objects this save copies inside the
    store where they hold the same bytes, instead of sending them
    (:mod:`cloudckpt.format.reuse`); the new checkpoint is whole either way.

    Example:
        >>> import numpy as np
        >>> from cloudckpt.storage import open_storage
        >>> r = write_checkpoint(open_storage("memory://doc-write/ckpt-3"), {"w": np.ones(2)}, checkpoint_number=3)
        >>> r.manifest["checkpoint_number"], r.manifest["data"] == "data-" + r.manifest["writer"]["attempt"]
        (3, True)
    """
    t0 = time.perf_counter()
    requests0 = storage.stats.requests
    group = SINGLE if group is None else group
    rank, world = group.rank, group.size
    node: dict[str, Any] = {}
    leaves: list[Any] = []
    error: BaseException | None = None
    try:
        node, leaves = _prepare(storage, state, flat, metadata, check_exists=check_exists and rank == 0, rank=rank)
    except Exception as exc:
        if world == 1:
            raise
        error = exc
    node, leaves, holders, attempt = _plan(group, node, leaves, error, attempt or attempt_id(), options)
    prefix = data_prefix(attempt)
    written = _write_data(storage, group, prefix, node, leaves, holders, options, base)
    manifest: dict[str, Any] = {}
    outcome: dict[str, Any] = {"ok": True}
    if rank == 0:
        manifest = build_manifest(
            tree=node, arrays=written.records, pack=written.pack, objects=written.objects, data=prefix, attempt=attempt,
            checkpoint_number=checkpoint_number, epoch=epoch, metadata=metadata, created=created, writer_extra=writer_extra,
        )
        outcome = _commit_on_leader(storage, group, manifest, prefix, after_commit)
    if world > 1:
        outcome = group.broadcast_json(outcome if rank == 0 else None)
        if "error" in outcome:
            raise_remote(outcome["error"], 0)
    seconds, requests = time.perf_counter() - t0, storage.stats.requests - requests0
    _log_saved(storage, group, written, base, len(leaves), seconds, requests)
    return WriteResult(storage.url, manifest, written.nbytes, seconds, requests, outcome.get("extra") or {}, written.copied_bytes)


def _log_saved(
    storage: Storage, group: Any, written: WrittenArrays, base: BaseObjects | None, arrays: int, seconds: float, requests: int
) -> None:
    where = f" (rank {group.rank} of {group.size})" if group.size > 1 else ""
    copied = f", {written.copied_bytes} bytes copied from {base.storage.url}" if base is not None else ""
    log.info(
        "saved %s%s: %d bytes in %d arrays, %.3f s, %d requests%s", storage.url, where, written.nbytes, arrays, seconds, requests, copied
    )


def _prepare(
    storage: Storage,
    state: Any,
    flat: tuple[dict[str, Any], list[Any]] | None,
    metadata: Mapping[str, Any] | None,
    *,
    check_exists: bool,
    rank: int,
) -> tuple[dict[str, Any], list[Any]]:
    """Flatten the state and refuse, before anything is written, what cannot be saved here."""
    node, leaves = flat if flat is not None else flatten(state, adapt=adapters.to_numpy)
    _check_json(node, metadata, storage)
    if rank == 0:
        _refuse_inside_data(storage)
        storage.check_commit(MANIFEST_KEY)  # warns (or refuses) where the commit cannot be atomic
    if check_exists and storage.exists(MANIFEST_KEY):
        raise CheckpointExistsError(
            f"a committed checkpoint already exists at {storage.url}; committed checkpoints are "
            "never overwritten: write to another path, or delete it first"
        )
    return node, leaves


def _plan(
    group: Any,
    node: dict[str, Any],
    leaves: list[Any],
    error: BaseException | None,
    attempt: str,
    options: StoreOptions | None,
) -> tuple[dict[str, Any], list[Any], Any, str]:
    """Agree across ranks on the attempt and on which rank writes which leaf;
    raise every rank's error on every rank. Returns ``(node, leaves, holders, attempt)``."""
    if group.size == 1:
        descs = [describe(node, leaves)] if _needs_plan(leaves) or has_per_rank(node) else None
    else:
        mine = {"error": _payload(error)} if error is not None else {**describe(node, leaves), "attempt": attempt}
        descs = group.all_gather_json(mine)
        _raise_first(descs, group.rank, error)
        attempt = str(descs[0]["attempt"])
    if descs is None:
        return node, leaves, None, attempt
    limit = min(collective.GATHER_BELOW, (options or StoreOptions()).pack_threshold)
    leaves = gather_small(group, descs, leaves, limit)
    node, leaves, holders = plan(descs, group.rank, node, leaves)
    return node, leaves, holders, attempt


def _write_data(
    storage: Storage,
    group: Any,
    prefix: str,
    node: dict[str, Any],
    leaves: list[Any],
    holders: Any,
    options: StoreOptions | None,
    base: BaseObjects | None = None,
) -> Any:
    """Every rank writes its share of the data under ``prefix`` and makes it
    durable; rank 0 learns what the others wrote. A failure anywhere removes
    the attempt's data and raises on every rank."""
    rank, world = group.rank, group.size
    paths_by_index = node_paths(node)
    paths = [paths_by_index[i] for i in range(len(leaves))]
    written = None
    error: BaseException | None = None
    try:
        written = write_arrays(
            storage, prefix, leaves, options, node_paths=paths, holders=holders, rank=rank, world=world, base=base
        )
        storage.barrier()
    except BaseException as exc:
        if world == 1 or not isinstance(exc, Exception):
            discard_attempt(storage, prefix)
            raise
        error = exc
    if world > 1:
        report: dict[str, Any]
        if error is not None or written is None:
            report = {"error": _payload(error or CheckpointError("no data written"))}
        else:
            report = {
                "objects": {str(j): o for j, o in enumerate(written.objects) if o is not None},
                "crcs": {str(i): c for i, c in written.tensor_crcs.items()},
            }
        reports = group.all_gather_json(report)
        if any("error" in r for r in reports):
            if rank == 0:
                discard_attempt(storage, prefix)
            _raise_first(reports, rank, error)
        assert written is not None
        if rank == 0:
            for r in reports:
                for j, o in r["objects"].items():
                    written.objects[int(j)] = o
            crcs = {int(i): int(c) for r in reports for i, c in r["crcs"].items()}
            fill_packed_crcs(written.records, crcs)
    assert written is not None
    if rank == 0 and any(o is None for o in written.objects):
        raise AssertionError("an object of the checkpoint was written by no rank")
    return written


def _commit_on_leader(
    storage: Storage,
    group: Any,
    manifest: dict[str, Any],
    prefix: str,
    after_commit: Callable[[dict[str, Any]], dict[str, Any] | None] | None,
) -> dict[str, Any]:
    """Rank 0: commit and run ``after_commit``; the outcome the other ranks are told."""
    outcome: dict[str, Any] = {"ok": True}
    try:
        _commit(storage, manifest, prefix)
        if after_commit is not None:
            outcome["extra"] = after_commit(manifest) or {}
    except BaseException as exc:
        if group.size == 1 or not isinstance(exc, Exception):
            raise
        group.broadcast_json({"error": _payload(exc)})
        raise
    return outcome


def commit_written(
    storage: Storage,
    tree: dict[str, Any],
    written: WrittenArrays,
    attempt: str,
    *,
    extra: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Commit data that is already written under ``data-<attempt>/`` (by this
    process or by several): build the manifest and write it create-only.

    For writers that drive the data phase themselves (PyTorch DCP's
    ``write_data`` on every rank, then ``finish`` on one). ``written`` holds
    the records and the complete object list; ``fields`` are those of
    :func:`~cloudckpt.format.manifest.build_manifest` (``checkpoint_number``,
    ``epoch``, ``metadata``, ``created``, ``writer_extra``); ``extra`` adds
    top-level manifest fields (readers ignore fields they do not know there).
    Raises :class:`CheckpointExistsError` if a checkpoint is committed there
    already (this attempt's data is then removed). Returns the manifest.

    Example:
        >>> import numpy as np
        >>> from cloudckpt.storage import open_storage
        >>> from cloudckpt.format.tree import flatten
        >>> s = open_storage("memory://doc-commit-written/c")
        >>> node, leaves = flatten({"w": np.ones(2)})
        >>> w = write_arrays(s, data_prefix("a1"), leaves)
        >>> commit_written(s, node, w, "a1", extra={"note": 1})["note"], read_state(s, read_manifest(s))["w"]
        (1, array([1., 1.]))
    """
    prefix = data_prefix(attempt)
    if any(o is None for o in written.objects):
        raise AssertionError("an object of the checkpoint was written by no rank")
    manifest = build_manifest(
        tree=tree, arrays=written.records, pack=written.pack, objects=written.objects,  # type: ignore[arg-type]
        data=prefix, attempt=attempt, **fields,
    )
    manifest.update(extra or {})
    _commit(storage, manifest, prefix)
    return manifest


def _refuse_inside_data(storage: Storage) -> None:
    """Refuse a save at or below the ``data-*`` prefix of a committed checkpoint:
    it would add to (or change) that checkpoint's data. Costs one request per
    ``data-*`` component of the URL, none for any other."""
    here: Storage | None = storage
    while here is not None:
        name = here.url.rstrip("/").rsplit("/", 1)[-1]
        up = here.parent()
        if is_data_prefix(name) and up is not None and up.exists(MANIFEST_KEY):
            raise ValueError(
                f"refusing to save at {storage.url}: it lies inside {here.url}, the data of the committed "
                f"checkpoint {up.url}, which must not change. Save somewhere else"
            )
        here = up


def _needs_plan(leaves: Sequence[Leaf]) -> bool:
    return any(leaf.per_rank or leaf.shards is not None for leaf in leaves)


def _payload(exc: BaseException | None) -> dict[str, str]:
    assert exc is not None
    return {"type": type(exc).__name__, "message": str(exc)}


def _raise_first(reports: Sequence[dict[str, Any]], rank: int, own: BaseException | None) -> None:
    """Raise this rank's own error, else the first error another rank reported."""
    if own is not None:
        raise own
    for r, rep in enumerate(reports):
        if "error" in rep:
            raise_remote(rep["error"], r)


def _commit(storage: Storage, manifest: dict[str, Any], prefix: str) -> None:
    """Write the manifest create-only (:func:`cloudckpt.layout.commit.commit`);
    the attempt's data is removed when it certainly did not commit."""
    payload = encode_manifest(manifest)
    if len(payload) > max_manifest_bytes() and "content_hashes" in manifest:
        # informational: a checkpoint without it is whole, only its successors copy nothing from it
        log.warning("%s: the manifest leaves out its content hashes to stay within the size limit", storage.url)
        del manifest["content_hashes"]
        payload = encode_manifest(manifest)
    if len(payload) > max_manifest_bytes():
        discard_attempt(storage, prefix)
        raise ValueError(_too_large(storage, len(payload)))
    if not commit(storage, payload, discard=prefix):
        raise CheckpointExistsError(
            f"another writer committed a checkpoint at {storage.url} while this save was running; "
            "this save's data was removed and nothing of the other checkpoint was changed"
        )


def _too_large(storage: Storage, size: int) -> str:
    return (
        f"the manifest of {storage.url} would be {size} bytes, over the manifest size limit "
        f"({max_manifest_bytes()} bytes); nothing was committed. A state of this many leaves is better saved "
        "as fewer, larger arrays; or raise the limit with CLOUDCKPT_MAX_MANIFEST_BYTES (every reader needs the same)"
    )


def _check_json(node: dict[str, Any], metadata: Mapping[str, Any] | None, storage: Storage | None = None) -> None:
    """Fail before anything is written if the manifest could not be encoded, or
    would be over the size limit already for its tree and metadata."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of JSON values or None, got {type(metadata).__name__}")
    try:
        size = len(encode_manifest({"tree": node, "metadata": dict(metadata or {})}))
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"the state or metadata cannot be stored in the manifest as JSON (no NaN or infinity): {exc}") from None
    if storage is not None and size > max_manifest_bytes():
        raise ValueError(_too_large(storage, size))


def read_manifest(storage: Storage) -> dict[str, Any]:
    """Read and validate the manifest of the checkpoint at ``storage``.

    Raises :class:`CheckpointNotFoundError` if there is none.
    """
    try:
        data = storage.read(MANIFEST_KEY, max_bytes=max_manifest_bytes() + 1)
    except ObjectNotFoundError:
        hint = ""
        try:
            files, dirs = storage.list_dir()
            ckpts = [d for d in dirs if "-" in d]
            if "checkpoint" in files or ckpts:
                hint = (
                    f"; {storage.url} looks like a directory of checkpoints: pass one of them "
                    "(cloudckpt.latest_checkpoint(directory) finds the newest)"
                )
        except Exception:
            pass
        raise CheckpointNotFoundError(
            f"no checkpoint at {storage.url}: {storage.url_for(MANIFEST_KEY)} does not exist{hint}"
        ) from None
    return parse_manifest(data, storage.url_for(MANIFEST_KEY))


def read_state(
    storage: Storage,
    manifest: Mapping[str, Any],
    keys: Sequence[str | Sequence[Any]] | None = None,
    options: StoreOptions | None = None,
    *,
    regions: Mapping[tuple[Any, ...], Sequence[Box]] | None = None,
    rank: int = 0,
    mmap: bool = True,
) -> Any:
    """Read the state of a checkpoint whose validated manifest is ``manifest``.

    ``keys`` selects subtrees (``"model/w"`` or a tuple of keys); only their
    bytes are read. Raises KeyError naming a key that is not in the checkpoint.
    ``regions`` maps leaf paths to the boxes of the array this process needs
    (the shards of distributed tensors): those leaves load as
    :class:`~cloudckpt.format.shards.ShardedArray` holding just those boxes, read
    from byte ranges. ``PerRank`` values are those saved by ``rank``.
    ``mmap``: see :func:`cloudckpt.format.store_read.read_arrays`.
    """
    t0 = time.perf_counter()
    requests0 = storage.stats.requests
    node = _selected(storage, manifest["tree"], keys)
    wanted = array_ids(node, rank)
    paths = leaf_paths(manifest["tree"], len(manifest["arrays"]))
    records = records_from_json(manifest["arrays"])  # the validated manifest's records, typed
    pack = pack_from_json(manifest.get("pack"))
    boxes, sliced = _region_reads(wanted, records, paths, regions)
    try:
        arrays: dict[int, Any] = read_arrays(
            storage,
            manifest["data"],
            records,
            pack,
            manifest["objects"],
            [i for i in wanted if i not in boxes],  # one plan for every packed tensor: few requests
            options,
            paths=paths,
            mmap=mmap,
        )
        for i, want in sliced.items():
            arrays[i] = ShardedArray.of_boxes(arrays[i], want)
        if boxes:
            got = read_regions(
                storage, records, manifest["objects"], boxes,
                prefix=manifest["data"], pack=pack, where=lambda i: format_path(paths[i]),
            )
            for i, sa in got.items():
                whole = not (regions and paths[i] in regions)
                arrays[i] = sa.pieces[0][1] if whole else sa
    except CorruptCheckpointError:
        if _manifest_gone(storage, manifest):
            # not damage: a manager retired (deleted) the checkpoint while we read it
            raise CheckpointNotFoundError(
                f"checkpoint {storage.url} was deleted while it was being read (retired by its manager); "
                "nothing was restored: read the latest checkpoint again"
            ) from None
        raise
    state = unflatten(node, arrays, rank)
    nbytes = sum(records[i].nbytes for i in wanted)
    log.info(
        "restored %s: %d bytes in %d arrays, %.3f s, %d requests",
        storage.url,
        nbytes,
        len(wanted),
        time.perf_counter() - t0,
        storage.stats.requests - requests0,
    )
    return state


def _selected(storage: Storage, node: Mapping[str, Any], keys: Sequence[str | Sequence[Any]] | None) -> Mapping[str, Any]:
    """The subtree of ``node`` that ``keys`` (a key path or a list of them) select; all of it for None."""
    if keys is None:
        return node
    if not isinstance(keys, (str, tuple, list)):
        raise TypeError(f"keys must be a key path ('model/w' or a tuple of keys) or a list of them, got {type(keys).__name__}")
    if isinstance(keys, (str, tuple)):
        keys = [keys]
    paths = [parse_key_path(k) for k in keys]
    try:
        return select(node, paths)
    except KeyError as exc:
        raise KeyError(f"{exc.args[0]} at {storage.url}") from None


def _region_reads(
    wanted: Sequence[int],
    records: Sequence[Any],
    paths: Sequence[tuple[Any, ...]],
    regions: Mapping[tuple[Any, ...], Sequence[Box]] | None,
) -> tuple[dict[int, Sequence[Box]], dict[int, Sequence[Box]]]:
    """Which wanted arrays are read by regions (boxes), and which packed ones are read whole then sliced."""
    boxes: dict[int, Sequence[Box]] = {}
    sliced: dict[int, Sequence[Box]] = {}
    for i in wanted:
        want = regions.get(paths[i]) if regions else None
        if want is not None and isinstance(records[i], PackedRecord):
            sliced[i] = want
        elif want is not None:
            boxes[i] = want
        elif is_region_record(records[i]):
            boxes[i] = [((0,) * len(records[i].shape), records[i].shape)]
    return boxes, sliced


def _manifest_gone(storage: Storage, manifest: Mapping[str, Any]) -> bool:
    """Whether the checkpoint whose manifest was ``manifest`` is no longer there
    (its manifest deleted, or replaced by another save's)."""
    try:
        now = parse_manifest(storage.read(MANIFEST_KEY, max_bytes=max_manifest_bytes() + 1), storage.url_for(MANIFEST_KEY))
    except ObjectNotFoundError:
        return True
    except Exception:
        return False
    return bool(now.get("writer", {}).get("attempt") != manifest.get("writer", {}).get("attempt"))


def describe_leaves(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per array leaf: path, dtype, shape, bytes and where it is stored."""
    paths = leaf_paths(manifest["tree"], len(manifest["arrays"]))
    out = []
    for i, a in enumerate(records_from_json(manifest["arrays"])):
        match a:
            case ChunkedRecord():
                where, stored_as = a.path, "array"
            case ShardedRecord():
                where, stored_as = a.shards[0].path.rsplit("/", 1)[0], "shards"
            case PackedRecord():
                where, stored_as = f"{manifest['pack']['path']}@{a.offset}", "packed"
        out.append(
            {
                "path": list(paths[i]),
                "name": format_path(paths[i]),
                "dtype": a.dtype,
                "shape": list(a.shape),
                "nbytes": a.nbytes,
                "stored_as": stored_as,
                "zarr_path": where,
            }
        )
    return out
