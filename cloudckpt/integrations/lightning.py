"""PyTorch Lightning: a ``CheckpointIO`` plugin that writes cloudckpt checkpoints.

``Trainer(plugins=[CloudCheckpointIO()])`` makes every checkpoint Lightning
writes (``ModelCheckpoint``, ``trainer.save_checkpoint``) a cloudckpt
checkpoint at the path Lightning chose — ``s3://bucket/run/epoch=1-step=20.ckpt``
is a checkpoint *directory* there, its ``manifest.json`` written last,
create-only, with a crc32c for every object — and every checkpoint Lightning
reads (``fit(ckpt_path=...)``, ``"last"``, ``"best"``) is loaded and checked
from there. No pickle on either side: a value that cannot be stored without
one raises ``TypeError`` naming its key, before anything is written.

``last.ckpt``. Lightning rewrites ``last.ckpt`` at every save, but a committed
cloudckpt checkpoint is never overwritten. So a path whose name is Lightning's
"last" name (``last.ckpt``, ``last-v1.ckpt``...) is a small *pointer* object
naming a checkpoint of the directory ``<name>.versions/`` beside it: a save
commits ``last.ckpt.versions/ckpt-<n+1>``, then replaces the pointer (one
whole-object write), then deletes the older versions. A crash at any
instant leaves ``last.ckpt`` naming a committed checkpoint. The pointer is an
ordinary file, so Lightning can ask its filesystem for its modification time
(to pick the newest ``last*.ckpt``), which an object store cannot give for a
directory; :class:`CloudModelCheckpoint` lets ``fit(ckpt_path="last")`` find
it on an object store at all.

Deleting. ``remove_checkpoint`` uncommits (manifest first, then the data),
and only removes a checkpoint inside a directory this plugin has saved into
in this process, never one it loaded: the checkpoint a run resumed from
survives, and so does a previous run's directory, on object stores too
(Lightning's ``ModelCheckpoint`` applies those two rules to local paths only).

Example:
    >>> import torch, lightning as L, cloudckpt
    >>> from cloudckpt.integrations.lightning import CloudCheckpointIO
    >>> io = CloudCheckpointIO()
    >>> state = {"state_dict": {"w": torch.ones(2)}, "epoch": 3, "hyper_parameters": {"lr": 0.1}}
    >>> io.save_checkpoint(state, "memory://doc-lightning/epoch=3-step=9.ckpt")
    >>> io.load_checkpoint("memory://doc-lightning/epoch=3-step=9.ckpt")["epoch"]
    3
    >>> trainer = L.Trainer(plugins=[io], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes  # noqa: F401  (here, with the framework: a first save or load would otherwise pay its import)
import numpy as np
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from cloudckpt.api import load, save
from cloudckpt.errors import CheckpointError, CheckpointNotFoundError, ObjectNotFoundError
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.layout.commit import delete_checkpoint
from cloudckpt.layout.names import MANIFEST_KEY, checkpoint_dirname, parse_name
from cloudckpt.storage import Storage, open_storage

__all__ = ["CloudCheckpointIO", "CloudModelCheckpoint", "POINTER_FORMAT", "is_last_name"]

log = logging.getLogger("cloudckpt")

POINTER_FORMAT = "cloudckpt-lightning-last"
_VERSIONS = ".versions"
_POINTER_MAX = 64 * 1024
_HINTS = {
    "hyper_parameters": "leave it out with self.save_hyperparameters(ignore=[{name!r}]), or store a number, string or "
    "tensor instead",
    "datamodule_hyper_parameters": "leave it out with self.save_hyperparameters(ignore=[{name!r}]) in the "
    "LightningDataModule, or store a number, string or tensor instead",
    "callbacks": "make that callback's state_dict() return only tensors, numbers, strings, None, lists and dicts",
}
_GENERIC_HINT = (
    "checkpoints hold tensors, numpy arrays, numbers, strings, None, and lists, tuples and dicts of them; "
    "convert it (e.g. in on_save_checkpoint) or remove it"
)


def is_last_name(path: str) -> bool:
    """Whether ``path`` names a Lightning "last" checkpoint (``last.ckpt``, ``last-v1.ckpt``...).

    The rule is ``ModelCheckpoint``'s own for ``ckpt_path="last"``: the name
    starts with ``ModelCheckpoint.CHECKPOINT_NAME_LAST`` and ends with its
    ``FILE_EXTENSION``.

    Example:
        >>> is_last_name("s3://b/run/last.ckpt"), is_last_name("/r/last-v1.ckpt"), is_last_name("/r/epoch=1.ckpt")
        (True, True, False)
    """
    name = _split(path)[1]
    return name.startswith(ModelCheckpoint.CHECKPOINT_NAME_LAST) and name.endswith(ModelCheckpoint.FILE_EXTENSION)


def _split(url: str) -> tuple[str, str]:
    """(directory URL, name) of a checkpoint path."""
    url = url.rstrip("/")
    head, _, name = url.rpartition("/")
    if not head and "://" not in url:
        head = os.path.dirname(os.path.abspath(url))
    return head, name


def _normalize(path: Any) -> str:
    text = os.fspath(path) if not isinstance(path, str) else path
    if "://" not in text:
        text = os.path.abspath(text)
    return text.rstrip("/")


def _unstorable(tree: Any, path: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], Any] | None:
    """The path and value of the first leaf that has no pickle-free form, or None."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                return (*path, k), k
            found = _unstorable(v, (*path, k))
            if found:
                return found
        return None
    if isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            found = _unstorable(v, (*path, i))
            if found:
                return found
        return None
    if tree is None or isinstance(tree, (bool, int, float, str, np.ndarray, np.generic, torch.Tensor)):
        return None
    return path, tree


def _check_storable(checkpoint: Mapping[str, Any], url: str) -> None:
    found = _unstorable(checkpoint)
    if found is None:
        return
    path, value = found
    where = "/".join(str(p) for p in path)
    hint = _HINTS.get(str(path[0]), _GENERIC_HINT) if path else _GENERIC_HINT
    hint = hint.format(name=path[-1] if path else "")
    raise TypeError(
        f"cannot save {url}: {where!r} is a {type(value).__module__}.{type(value).__qualname__}, which cloudckpt "
        f"cannot store without pickle; {hint}. Nothing was written."
    )


class CloudCheckpointIO(CheckpointIO):
    """Lightning's ``CheckpointIO`` through cloudckpt: any fsspec URL, checksums, a create-only commit, no pickle.

    ``storage_options`` are fsspec options for every URL (credentials,
    ``endpoint_url``); ``options`` tune the tensor store
    (:class:`~cloudckpt.StoreOptions`). Pass it to the ``Trainer``:
    ``Trainer(plugins=[CloudCheckpointIO()], callbacks=[ModelCheckpoint(dirpath="s3://bucket/run", ...)])``.
    Lightning itself lists the checkpoint directory (``ckpt_path="last"``,
    the ``-v1`` name counter) with its own fsspec filesystem, which reads the
    same credentials from the environment or fsspec's configuration
    (``fsspec.config.conf["s3"]``), not from ``storage_options``.

    Example:
        >>> import torch
        >>> io = CloudCheckpointIO()
        >>> io.save_checkpoint({"state_dict": {"w": torch.zeros(1)}, "epoch": 0}, "memory://doc-cio/last.ckpt")
        >>> io.save_checkpoint({"state_dict": {"w": torch.ones(1)}, "epoch": 1}, "memory://doc-cio/last.ckpt")
        >>> io.load_checkpoint("memory://doc-cio/last.ckpt")["state_dict"]["w"]     # the newer one
        tensor([1.])
    """

    def __init__(self, storage_options: dict[str, Any] | None = None, *, options: StoreOptions | None = None) -> None:
        self.storage_options = dict(storage_options) if storage_options else None
        self.options = options
        self._saved_dirs: set[str] = set()
        self._loaded: set[str] = set()

    # -- save -------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save Lightning's checkpoint dict as a cloudckpt checkpoint at ``path``.

        ``storage_options`` (a dict of fsspec options, as
        ``trainer.save_checkpoint(path, storage_options=...)`` passes it)
        replaces the plugin's for this call. A value with no pickle-free form
        raises ``TypeError`` naming its key before anything is written; an
        existing checkpoint at ``path`` is never overwritten
        (:class:`~cloudckpt.CheckpointExistsError`), except "last"
        checkpoints, which are replaced (see the module's docstring).

        Example:
            >>> io = CloudCheckpointIO()
            >>> io.save_checkpoint({"hyper_parameters": {"net": object()}}, "memory://doc-cio-save/a.ckpt")
            Traceback (most recent call last):
            ...
            TypeError: cannot save memory://doc-cio-save/a.ckpt: 'hyper_parameters/net' is a builtins.object, \
which cloudckpt cannot store without pickle; leave it out with self.save_hyperparameters(ignore=['net']), \
or store a number, string or tensor instead. Nothing was written.
        """
        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError(
                f"CloudCheckpointIO.save_checkpoint: storage_options must be a dict of fsspec options or None, "
                f"got {type(storage_options).__name__}"
            )
        opts = storage_options if storage_options is not None else self.storage_options
        url = _normalize(path)
        _check_storable(checkpoint, url)
        if is_last_name(url):
            self._save_last(checkpoint, url, opts)
        else:
            save(url, checkpoint, storage_options=opts, options=self.options)
        self._saved_dirs.add(_split(url)[0])

    def _save_last(self, checkpoint: dict[str, Any], url: str, opts: dict[str, Any] | None) -> None:
        parent_url, name = _split(url)
        parent = open_storage(parent_url, opts)
        versions = parent.child(name + _VERSIONS)
        _, dirs = versions.list_dir()
        numbers = sorted(n for d in dirs if (parsed := parse_name(d, "ckpt")) for n in [parsed[1]])
        new = checkpoint_dirname("ckpt", (numbers[-1] if numbers else 0) + 1)
        save(versions.url_for(new), checkpoint, storage_options=opts, options=self.options)  # committed
        pointer = {"format": POINTER_FORMAT, "version": 1, "checkpoint": f"{name}{_VERSIONS}/{new}"}
        parent.write(name, json.dumps(pointer).encode(), atomic=True)  # from here on, "last" is the new one
        for d in dirs:
            if d != new and parse_name(d, "ckpt"):
                delete_checkpoint(versions, d)  # manifest first, then data

    # -- load -------------------------------------------------------------
    def resolve(self, path: Any, storage_options: dict[str, Any] | None = None) -> str:
        """The URL of the checkpoint that ``path`` stands for: itself, or what a "last" pointer names.

        Example:
            >>> import torch
            >>> io = CloudCheckpointIO()
            >>> io.save_checkpoint({"w": torch.ones(1)}, "memory://doc-resolve/last.ckpt")
            >>> io.resolve("memory://doc-resolve/last.ckpt")
            'memory://doc-resolve/last.ckpt.versions/ckpt-1'
        """
        url = _normalize(path)
        if not is_last_name(url):
            return url
        parent_url, name = _split(url)
        parent = open_storage(parent_url, storage_options or self.storage_options)
        if _is_checkpoint(parent, name):
            return url  # a checkpoint saved there directly (save_last="link", or without the plugin's pointer)
        try:
            raw = parent.read(name, max_bytes=_POINTER_MAX)
        except ObjectNotFoundError:
            return url  # nothing there: load says so
        try:
            pointer = json.loads(raw)
            target = pointer["checkpoint"]
            ok = pointer.get("format") == POINTER_FORMAT and isinstance(target, str)
        except (ValueError, TypeError, KeyError):
            ok = False
        if not ok or target.startswith("/") or ".." in target.split("/") or "://" in target:
            raise CheckpointNotFoundError(
                f"{url} is not a cloudckpt 'last' pointer (a JSON object with format {POINTER_FORMAT!r} naming a "
                f"checkpoint beside it); remove it or load another checkpoint"
            )
        return parent.url_for(target)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Load the checkpoint at ``path`` (a "last" pointer is followed) as torch tensors.

        Every object read is checked against its crc32c. ``map_location``
        may be a device (``"cpu"``, ``"cuda:0"``, ``torch.device``); any
        other form loads to the CPU. ``weights_only`` changes nothing: a
        cloudckpt checkpoint holds no code to run. The checkpoint is
        remembered as loaded, and :meth:`remove_checkpoint` will not delete it.

        Example:
            >>> import torch
            >>> io = CloudCheckpointIO()
            >>> io.save_checkpoint({"state_dict": {"w": torch.arange(3)}}, "memory://doc-cio-load/e.ckpt")
            >>> io.load_checkpoint("memory://doc-cio-load/e.ckpt", map_location="cpu")["state_dict"]["w"]
            tensor([0, 1, 2])
        """
        device = map_location if isinstance(map_location, (str, torch.device)) else None
        url = self.resolve(path)
        state = load(url, storage_options=self.storage_options, framework="torch", device=device)
        self._loaded.add(_normalize(path))
        return state

    # -- remove -----------------------------------------------------------
    def remove_checkpoint(self, path: Any) -> None:
        """Delete the checkpoint at ``path``: its manifest first (invisible at once), then its data.

        Skipped, with a warning, for a checkpoint this plugin loaded (the
        one a run resumed from) and for one outside every directory this
        plugin has saved into in this process (a previous run's).

        Example:
            >>> import torch
            >>> io = CloudCheckpointIO()
            >>> io.save_checkpoint({"w": torch.ones(1)}, "memory://doc-cio-rm/a.ckpt")
            >>> io.remove_checkpoint("memory://doc-cio-rm/a.ckpt")
            >>> io.load_checkpoint("memory://doc-cio-rm/a.ckpt")
            Traceback (most recent call last):
            ...
            cloudckpt.errors.CheckpointNotFoundError: no checkpoint at memory://doc-cio-rm/a.ckpt: ...
        """
        url = _normalize(path)
        parent_url, name = _split(url)
        if url in self._loaded:
            log.warning("not removing %s: this run loaded it (resumed from it)", url)
            return
        if parent_url not in self._saved_dirs:
            log.warning("not removing %s: it is outside the directories this run saves to (%s)", url,
                        ", ".join(sorted(self._saved_dirs)) or "none yet")  # fmt: skip
            return
        parent = open_storage(parent_url, self.storage_options)
        if is_last_name(url):
            _remove_last(parent, name)
            return
        delete_checkpoint(parent, name)
        log.info("removed %s", url)

    def teardown(self) -> None:
        """Nothing to release: each call opens its own storage.

        Example:
            >>> CloudCheckpointIO().teardown()
        """


class CloudModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``fit(ckpt_path="last")`` finds ``last.ckpt`` on an object store too.

    Lightning looks for ``last*.ckpt`` by listing ``dirpath`` with fsspec,
    which returns remote paths without their ``s3://``; it then looks for
    them on the local disk, finds nothing and starts from scratch
    (Lightning-AI/pytorch-lightning#18261). This subclass returns the full
    URLs of the "last" entries of a remote ``dirpath``; everything else is
    ``ModelCheckpoint``, arguments included. On local disk the two are the same.

    Example:
        >>> import lightning as L
        >>> callback = CloudModelCheckpoint(dirpath="memory://doc-cmc/run", monitor="val_loss", save_top_k=2,
        ...                                 save_last=True)
        >>> CloudCheckpointIO().save_checkpoint({"epoch": 4}, "memory://doc-cmc/run/last.ckpt")
        >>> sorted(callback._find_last_checkpoints(L.Trainer(logger=False)))
        ['memory://doc-cmc/run/last.ckpt']
    """

    def _find_last_checkpoints(self, trainer: Any) -> set[str]:
        dirpath = None if self.dirpath is None else str(self.dirpath)
        if dirpath is None or "://" not in dirpath or dirpath.startswith("file://"):
            return super()._find_last_checkpoints(trainer)
        if not self._fs.exists(dirpath):
            return set()
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(dirpath, detail=False)}
        return {f"{dirpath.rstrip('/')}/{n}" for n in names if is_last_name(n)}


def _is_checkpoint(parent: Storage, name: str) -> bool:
    """Whether ``name`` in ``parent`` is a checkpoint (a directory with a manifest), not a pointer object."""
    try:
        return parent.exists(f"{name}/{MANIFEST_KEY}")
    except (OSError, CheckpointError):  # local disk: the pointer file is not a directory
        return False


def _remove_last(parent: Storage, name: str) -> None:
    versions = parent.child(name + _VERSIONS)
    if _is_checkpoint(parent, name):
        delete_checkpoint(parent, name)
        return
    parent.delete([name])  # the pointer first: "last" is gone from here on
    _, dirs = versions.list_dir()
    for d in dirs:
        delete_checkpoint(versions, d)
    log.info("removed %s", parent.url_for(name))
