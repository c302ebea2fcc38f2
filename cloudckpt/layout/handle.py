"""A directory of checkpoints as the manager sees it: named operations, no bytes.

:class:`DirectoryHandle` is what :mod:`cloudckpt.manager` holds instead of a
storage handle. Each method is one step of the layout's protocols — scan and
classify, claim and check ownership, write and commit, uncommit and delete,
preserve, collect, the state file — so the manager decides *what* happens
and this package alone knows the names and the bytes.

Example:
    >>> import numpy as np
    >>> d = open_directory("memory://doc-handle")
    >>> _ = d.write_checkpoint("ckpt-1", {"w": np.ones(2)})
    >>> [e.name for e in d.read_view().valid], d.url_for("ckpt-1")
    (['ckpt-1'], 'memory://doc-handle/ckpt-1')
    >>> d.delete_checkpoint("ckpt-1"); d.read_view().valid
    []
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cloudckpt.layout import commit as commit_protocol
from cloudckpt.layout import directory, ownership, statefile
from cloudckpt.layout.catalog import Entry, read_header
from cloudckpt.layout.checkpoint_io import WriteResult, write_checkpoint
from cloudckpt.layout.incremental import open_base
from cloudckpt.storage import Storage, open_storage

__all__ = ["DirectoryHandle", "open_directory"]


class DirectoryHandle:
    """One directory of checkpoints (see the module docstring).

    ``storage`` is the byte-level handle, for the layout package and for
    tests that watch requests; the manager never uses it.

    Example:
        >>> d = open_directory("memory://doc-handle-cls")
        >>> d.current_epoch(), d.read_state_file() is None
        (0, True)
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @property
    def url(self) -> str:
        """The directory's URL."""
        return self.storage.url

    def url_for(self, name: str) -> str:
        """The URL of the entry ``name`` of the directory."""
        return self.storage.url_for(name)

    def contains(self, url: str) -> bool:
        """Whether ``url`` (a URL or local path) names an entry directly inside this directory."""
        text = url.rstrip("/")
        name = text.rsplit("/", 1)[-1]
        return self.storage.url_for(name) == text or (
            self.storage.is_local
            and "://" not in text
            and os.path.abspath(os.path.dirname(text)) == os.path.abspath(self.storage.url)
        )

    def checkpoint(self, name: str) -> Storage:
        """The handle of the checkpoint ``name``, for :meth:`cloudckpt.Checkpoint.restore_from`."""
        return self.storage.child(name)

    def time_limit(self, seconds: float | None) -> contextlib.AbstractContextManager[None]:
        """Within the block, every request on this directory ends within ``seconds``; none starts after."""
        return self.storage.time_limit(seconds)

    # -- reading the directory
    def read_view(self) -> directory.View:
        """Scan and classify (:func:`cloudckpt.layout.directory.read_view`)."""
        return directory.read_view(self.storage)

    def read_header(self, name: str) -> dict[str, Any]:
        """The manifest header of checkpoint ``name`` (:func:`cloudckpt.layout.catalog.read_header`)."""
        return read_header(self.storage.child(name))

    def read_state_file(self) -> statefile.CheckpointState | None:
        """The state file, or None if it is missing or unparsable."""
        return statefile.read_state_file(self.storage)

    def write_state_file(self, state: statefile.CheckpointState) -> None:
        """Replace the state file in one whole-object write."""
        statefile.write_state_file(self.storage, state)

    # -- ownership (:mod:`cloudckpt.layout.ownership`)
    def current_epoch(self) -> int:
        """The owner's epoch (0 if none)."""
        return ownership.current_epoch(self.storage)

    def claim(self, *, writer: str, clock: Callable[[], float]) -> ownership.Claim:
        """Claim the directory with the next epoch."""
        return ownership.claim(self.storage, writer=writer, clock=clock)

    def record_accepted(self, epoch: int, accepted: Mapping[int, int]) -> ownership.Claim:
        """Record what the claim ``epoch`` accepted."""
        return ownership.record_accepted(self.storage, epoch, accepted)

    def check_owner(self, epoch: int) -> None:
        """Raise :class:`~cloudckpt.OwnershipLostError` unless ``epoch`` still owns the directory."""
        ownership.check_owner(self.storage, epoch)

    def list_claims(self, *, above: int = 0) -> list[ownership.Claim]:
        """The claims above ``above``, oldest first."""
        return ownership.list_claims(self.storage, above=above)

    def prune_claims(self, claims: Iterable[ownership.Claim]) -> None:
        """Delete the claims the newest recorded one makes redundant."""
        ownership.prune_claims(self.storage, list(claims))

    # -- the life of a checkpoint (:mod:`cloudckpt.layout.commit`)
    def write_checkpoint(self, name: str, state: Any, *, base: str | None = None, **kwargs: Any) -> WriteResult:
        """Write and commit checkpoint ``name`` (:func:`cloudckpt.layout.checkpoint_io.write_checkpoint`);
        ``base``: the name of a committed checkpoint whose unchanged objects it copies (an incremental save)."""
        target = self.storage.child(name)
        found = open_base(target, self.storage.child(base)) if base is not None else None
        return write_checkpoint(target, state, base=found, **kwargs)

    def delete_checkpoint(self, name: str) -> None:
        """Uncommit checkpoint ``name`` (manifest first), then delete its data."""
        commit_protocol.delete_checkpoint(self.storage, name)

    def preserve(self, name: str, record: Mapping[str, Any]) -> bool:
        """Mark checkpoint ``name`` preserved for good (create-only)."""
        return commit_protocol.preserve(self.storage.child(name), record)

    def collect_orphans(self, entry: Entry, below_epoch: int) -> list[str]:
        """Remove ``entry``'s data prefixes of epochs below ``below_epoch`` that no manifest names."""
        return commit_protocol.collect_orphans(self.storage, entry, below_epoch)

    def collect_failed_attempt(self, name: str, prefix: str) -> str | None:
        """Remove the data of a failed save of ``name`` unless its commit landed."""
        return commit_protocol.collect_failed_attempt(self.storage, name, prefix)

    def collect_temporaries(self, names: Iterable[str]) -> list[str]:
        """Remove old temp files of killed local writes (none on object stores)."""
        return commit_protocol.collect_temporaries(self.storage, names)


def open_directory(
    url: str, storage_options: dict[str, Any] | None = None, *, request_timeout: float | None = None
) -> DirectoryHandle:
    """The :class:`DirectoryHandle` of the directory at ``url`` (any fsspec URL or local path).

    Example:
        >>> open_directory("memory://doc-open-dir").url
        'memory://doc-open-dir'
    """
    return DirectoryHandle(open_storage(url, storage_options, request_timeout=request_timeout))
