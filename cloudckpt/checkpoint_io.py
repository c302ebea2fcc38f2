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
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import adapters
from .arrays import StoreOptions, read_arrays, write_arrays
from .errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ObjectNotFoundError,
)
from .manifest import MANIFEST_KEY, build_manifest, encode_manifest, parse_manifest
from .storage import Storage
from .tree import array_ids, flatten, format_path, node_paths, parse_key_path, select, unflatten

__all__ = ["WriteResult", "write_checkpoint", "read_manifest", "read_state", "new_attempt_id"]

log = logging.getLogger("cloudckpt")


@dataclass
class WriteResult:
    """Outcome of a committed write: URL, manifest, bytes, seconds, requests."""

    url: str
    manifest: dict[str, Any]
    nbytes: int
    seconds: float
    requests: int


def new_attempt_id() -> str:
    """A fresh id for one save attempt (names its data prefix).

    Example:
        >>> len(new_attempt_id())
        16
    """
    return uuid.uuid4().hex[:16]


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
) -> WriteResult:
    """Write ``state`` as a checkpoint in the directory ``storage`` and commit it.

    Raises TypeError (naming the leaf) before anything is written if the
    state holds an unsupported leaf, and :class:`CheckpointExistsError` if a
    committed checkpoint is already there (nothing is changed then).
    ``flat`` is the result of :func:`~cloudckpt.tree.flatten` when the caller
    has flattened (and perhaps copied) the state already; ``attempt`` names
    the data prefix ``data-<attempt>``.
    """
    t0 = time.perf_counter()
    requests0 = storage.stats.requests
    node, leaves = flat if flat is not None else flatten(state, adapt=adapters.to_numpy)
    _check_json(node, metadata)
    if check_exists and storage.exists(MANIFEST_KEY):
        raise CheckpointExistsError(
            f"a committed checkpoint already exists at {storage.url}; committed checkpoints are "
            "never overwritten: write to another path, or delete it first"
        )
    attempt = attempt or new_attempt_id()
    prefix = f"data-{attempt}"
    paths_by_index = node_paths(node)
    paths = [paths_by_index[i] for i in range(len(leaves))]
    try:
        written = write_arrays(storage, prefix, leaves, options, node_paths=paths)
        storage.barrier()
    except BaseException:
        _cleanup(storage, prefix)
        raise
    manifest = build_manifest(
        tree=node,
        arrays=written.records,
        pack=written.pack,
        objects=written.objects,
        data=prefix,
        attempt=attempt,
        checkpoint_number=checkpoint_number,
        epoch=epoch,
        metadata=metadata,
        created=created,
        writer_extra=writer_extra,
    )
    payload = encode_manifest(manifest)
    try:
        created_it = storage.write_if_absent(MANIFEST_KEY, payload)
    except BaseException:
        # The outcome is unknown (the request may have landed): keep the data
        # unless we can tell that our manifest is not there. The error raised
        # is the commit's (bare raise after the check), not that of the check.
        known = True
        try:
            ours = storage.read(MANIFEST_KEY) == payload
        except ObjectNotFoundError:
            ours = False
        except Exception:
            ours, known = False, False
        if not known:
            raise
        if not ours:
            _cleanup(storage, prefix)
            raise
        created_it = True
    if not created_it:
        _cleanup(storage, prefix)
        raise CheckpointExistsError(
            f"another writer committed a checkpoint at {storage.url} while this save was running; "
            "this save's data was removed and nothing of the other checkpoint was changed"
        )
    seconds = time.perf_counter() - t0
    requests = storage.stats.requests - requests0
    log.info(
        "saved %s: %d bytes in %d arrays, %.3f s, %d requests",
        storage.url,
        written.nbytes,
        len(leaves),
        seconds,
        requests,
    )
    return WriteResult(storage.url, manifest, written.nbytes, seconds, requests)


def _check_json(node: dict[str, Any], metadata: Mapping[str, Any] | None) -> None:
    """Fail before anything is written if the manifest could not be encoded."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of JSON values or None, got {type(metadata).__name__}")
    try:
        encode_manifest({"tree": node, "metadata": dict(metadata or {})})
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"the state or metadata cannot be stored in the manifest as JSON: {exc}") from None


def _cleanup(storage: Storage, prefix: str) -> None:
    try:
        storage.delete_prefix(prefix)
    except Exception as exc:
        log.debug("could not remove %s after a failed save: %s", storage.url_for(prefix), exc)


def read_manifest(storage: Storage) -> dict[str, Any]:
    """Read and validate the manifest of the checkpoint at ``storage``.

    Raises :class:`CheckpointNotFoundError` if there is none.
    """
    try:
        data = storage.read(MANIFEST_KEY)
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


def _leaf_paths(node: Mapping[str, Any], n: int) -> list[tuple[Any, ...]]:
    paths: list[tuple[Any, ...]] = [()] * n

    def walk(x: Mapping[str, Any], path: tuple[Any, ...]) -> None:
        t = x["t"]
        if t in ("array", "scalar"):
            paths[x["a"]] = path
        elif t == "dict":
            for k, v in zip(x["k"], x["v"], strict=True):
                walk(v, (*path, k))
        elif t in ("list", "tuple"):
            for i, v in enumerate(x["v"]):
                walk(v, (*path, i))

    walk(node, ())
    return paths


def read_state(
    storage: Storage,
    manifest: Mapping[str, Any],
    keys: Sequence[str | Sequence[Any]] | None = None,
    options: StoreOptions | None = None,
) -> Any:
    """Read the state of a checkpoint whose validated manifest is ``manifest``.

    ``keys`` selects subtrees (``"model/w"`` or a tuple of keys); only their
    bytes are read. Raises KeyError naming a key that is not in the checkpoint.
    """
    t0 = time.perf_counter()
    requests0 = storage.stats.requests
    node = manifest["tree"]
    if keys is not None:
        if not isinstance(keys, (str, tuple, list)):
            raise TypeError(
                f"keys must be a key path ('model/w' or a tuple of keys) or a list of them, got {type(keys).__name__}"
            )
        if isinstance(keys, (str, tuple)):
            keys = [keys]
        paths = [parse_key_path(k) for k in keys]
        try:
            node = select(node, paths)
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]} at {storage.url}") from None
    wanted = array_ids(node)
    leaf_paths = _leaf_paths(manifest["tree"], len(manifest["arrays"]))
    try:
        arrays = read_arrays(
            storage,
            manifest["data"],
            manifest["arrays"],
            manifest.get("pack"),
            manifest["objects"],
            wanted,
            options,
            paths=leaf_paths,
        )
    except CorruptCheckpointError:
        if _manifest_gone(storage, manifest):
            # not damage: a manager retired (deleted) the checkpoint while we read it
            raise CheckpointNotFoundError(
                f"checkpoint {storage.url} was deleted while it was being read (retired by its manager); "
                "nothing was restored: read the latest checkpoint again"
            ) from None
        raise
    state = unflatten(node, arrays)
    nbytes = sum(int(manifest["arrays"][i]["nbytes"]) for i in wanted)
    log.info(
        "restored %s: %d bytes in %d arrays, %.3f s, %d requests",
        storage.url,
        nbytes,
        len(wanted),
        time.perf_counter() - t0,
        storage.stats.requests - requests0,
    )
    return state


def _manifest_gone(storage: Storage, manifest: Mapping[str, Any]) -> bool:
    """Whether the checkpoint whose manifest was ``manifest`` is no longer there
    (its manifest deleted, or replaced by another save's)."""
    try:
        now = parse_manifest(storage.read(MANIFEST_KEY), storage.url_for(MANIFEST_KEY))
    except ObjectNotFoundError:
        return True
    except Exception:
        return False
    return bool(now.get("writer", {}).get("attempt") != manifest.get("writer", {}).get("attempt"))


def describe_leaves(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per array leaf: path, dtype, shape, bytes and where it is stored."""
    paths = _leaf_paths(manifest["tree"], len(manifest["arrays"]))
    out = []
    for i, a in enumerate(manifest["arrays"]):
        where = a["chunked"]["path"] if "chunked" in a else f"{manifest['pack']['path']}@{a['packed']['offset']}"
        out.append(
            {
                "path": list(paths[i]),
                "name": format_path(paths[i]),
                "dtype": a["dtype"],
                "shape": list(a["shape"]),
                "nbytes": a["nbytes"],
                "stored_as": "array" if "chunked" in a else "packed",
                "zarr_path": where,
            }
        )
    return out
