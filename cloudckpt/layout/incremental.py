"""The base of an incremental save: the committed checkpoint whose objects a new one may copy.

See :mod:`cloudckpt.format.reuse` for how objects are matched and verified;
this module decides whether a checkpoint can serve as a base at all.

Example:
    >>> import numpy as np
    >>> import cloudckpt
    >>> from cloudckpt.storage import open_storage
    >>> _ = cloudckpt.save("memory://doc-incremental/ckpt-1", {"w": np.zeros(1000)})
    >>> s = open_storage("memory://doc-incremental")
    >>> base = open_base(s.child("ckpt-2"), s.child("ckpt-1"))
    >>> len(base.by_content) > 0
    True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cloudckpt.errors import CheckpointError
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.format.reuse import BaseObjects
from cloudckpt.layout.checkpoint_io import read_manifest
from cloudckpt.storage import Storage

__all__ = ["open_base"]

log = logging.getLogger("cloudckpt")


def open_base(storage: Storage, base: Storage, manifest: Mapping[str, Any] | None = None) -> BaseObjects | None:
    """The reusable objects of the checkpoint at ``base`` for a save into
    ``storage``, or None (the save then writes everything)
    when there is nothing usable: another store, no server-side copy on this
    one, no committed checkpoint there, a damaged manifest, or one of a format
    without content hashes. ``manifest``: the base's parsed manifest where the
    caller holds it already (a copy that has just committed it), not read again.
    See the module example. A base whose manifest
    cannot be read is logged at WARNING; the rest at DEBUG (a store without
    copies is no news at every save).
    """

    if not storage.can_copy_from(base):
        why = "this store cannot copy objects" if not storage.capabilities.server_copy else "it is on another store"
        log.debug("nothing is copied into %s from %s: %s; every object is written", storage.url, base.url, why)
        return None
    try:
        if manifest is None:
            manifest = read_manifest(base)
    except CheckpointError as exc:
        log.warning("nothing is copied into %s from %s, its manifest cannot be used: %s; every object is written", storage.url, base.url, exc)
        return None
    committed_at = None
    if not base.capabilities.remote:  # (a store that reports no checksum of a copy: local disk)
        try:
            committed_at = base.stat(MANIFEST_KEY)[1]
        except CheckpointError:  # (gone since it was read: its copies will find their sources gone too)
            pass
    found = BaseObjects.from_manifest(base, manifest, committed_at)
    if not found.by_content:
        log.debug("nothing is copied into %s from %s: it records no content hashes (an older release)", storage.url, base.url)
        return None
    return found
