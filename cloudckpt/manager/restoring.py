"""Restoring: the part of a :class:`~cloudckpt.CheckpointManager` that reads a checkpoint back into its state.

The manager restores the latest checkpoint (``restore_or_initialize``) or a
chosen one (``restore``, a rollback); rank 0 decides which checkpoints to
try, in order (:mod:`cloudckpt.manager.leader`), and every rank reads.

Example:
    >>> import numpy as np, cloudckpt
    >>> issubclass(cloudckpt.CheckpointManager, Restoring)
    True
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cloudckpt.checkpoint import Checkpoint
from cloudckpt.errors import CheckpointError, CorruptCheckpointError, FormatVersionError
from cloudckpt.layout.names import parse_name
from cloudckpt.manager.leader import LeaderProtocol
from cloudckpt.manager.options import Settings, as_int, evaluate_step

__all__ = ["Restoring"]

log = logging.getLogger("cloudckpt")


class Restoring(LeaderProtocol):
    """The restore verbs of a manager (which supplies the state it restores into and its directory).

    Example:
        >>> import numpy as np, cloudckpt, tempfile
        >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 2)
        >>> m.restore_or_initialize() is None
        True
    """

    _checkpoint: Checkpoint
    _settings: Settings
    _name: str

    def sync(self) -> None:  # (the manager's: waits for an in-flight async save)
        raise NotImplementedError

    def restore_or_initialize(self, *, partial: bool = False, fallback: bool = False) -> str | None:
        """Restore the latest checkpoint of the directory and return its URL; else call ``init_fn`` and return None.

        Claims the directory for this manager. The latest checkpoint is that
        of :attr:`latest_checkpoint`, whatever its name. Restore is strict
        unless ``partial``. A damaged latest checkpoint raises
        :class:`~cloudckpt.CorruptCheckpointError`; with ``fallback=True`` the
        newest checkpoint that restores is used instead (logged as an error).
        ``save_counter`` is restored as it was saved.

        Example:
            >>> import numpy as np, cloudckpt, tempfile
            >>> d = tempfile.mkdtemp(); w = np.zeros(2)
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=w), d, 2, init_fn=lambda: w.fill(7))
            >>> m.restore_or_initialize(), w
            (None, array([7., 7.]))
        """
        self.sync()
        plan = self._restore_candidates()
        return self._restore_first(list(plan["names"]), dict(plan["damaged"]), partial=partial, fallback=fallback)

    def restore(self, checkpoint: Any, *, partial: bool = False) -> str:
        """Restore a chosen checkpoint of the directory — a number of this
        manager's name or a URL — and make it the one the next save follows.
        Returns its URL.

        This is a rollback when the checkpoint is older than the latest: the
        checkpoints committed after it become *abandoned* when the next save
        commits — never again latest, first to retire, and a save that reaches
        the number of an abandoned checkpoint replaces it (logged at
        WARNING). Until the next save commits nothing on storage changes.
        (TF's ``checkpoint.restore(path)``; Orbax's ``restore(step)``.)

        Example:
            >>> import numpy as np, cloudckpt, tempfile
            >>> w = np.zeros(1); m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=w), tempfile.mkdtemp(), 5)
            >>> for step in (100, 200, 300):
            ...     w[:] = step; _ = m.save(checkpoint_number=step)
            >>> m.restore(100).endswith("ckpt-100"), w
            (True, array([100.]))
            >>> _ = m.save(checkpoint_number=200)            # replaces the abandoned ckpt-200
            >>> m.latest_step(), m.all_steps()               # ckpt-300 is abandoned: retires first
            (200, [300, 100, 200])
        """
        self.sync()
        if isinstance(checkpoint, (str, os.PathLike)):
            text = os.fspath(checkpoint).rstrip("/")
            name = text.rsplit("/", 1)[-1]
            if "/" in text and not self._layout.contains(text):
                raise ValueError(
                    f"{text} is not a checkpoint of {self._layout.url}: a manager restores its own directory's "
                    "checkpoints (read another one with Checkpoint.read(url))"
                )
        else:
            name = self._dirname(as_int(checkpoint, "checkpoint"))

        p = self._restore_plan(name)
        url = self._restore_first(list(p["names"]), dict(p["damaged"]), partial=partial, fallback=False)
        assert url is not None
        return url

    def _restore_first(
        self, names: list[str], damaged: dict[str, list[Any]], *, partial: bool, fallback: bool
    ) -> str | None:
        """Restore the first of ``names`` that restores (all ranks); None (after
        ``init_fn``) if there is none."""
        skipped: list[str] = []
        for name in names:
            url = self._layout.url_for(name)
            if name in damaged:
                status, error = damaged[name]
                exc: CheckpointError = (
                    FormatVersionError(f"the latest checkpoint {url} was written by a newer cloudckpt: {error}")
                    if status == "newer"
                    else CorruptCheckpointError(f"the latest checkpoint {url} is damaged: {error}")
                )
                if not fallback:
                    raise exc
                log.error("cannot restore %s (%s); falling back to the previous checkpoint", url, exc)
                skipped.append(name)
                continue
            try:
                self._checkpoint.restore_from(self._layout.checkpoint(name), self._group, partial=partial)
            except CorruptCheckpointError as exc:
                if not fallback:
                    raise
                log.error("cannot restore %s (%s); falling back to the previous checkpoint", url, exc)
                skipped.append(name)
                continue
            except ValueError as exc:
                parsed = parse_name(name)
                if parsed is None or parsed[0] == self._name:
                    raise
                raise ValueError(
                    f"{exc}. The latest checkpoint of {self._layout.url} is {url}, of another checkpoint_name "
                    f"than this manager's ({self._name!r}): one directory is meant for one run — give this job "
                    "its own directory, or restore with partial=True if the states overlap"
                ) from None
            if self._group.rank == 0:
                self._restored(name, skipped)
            if self._settings.checkpoint_interval is not None:
                self._last_checkpoint_step = evaluate_step(self._settings.step_counter)
            return url
        if names and fallback:
            raise CorruptCheckpointError(f"no checkpoint of {self._layout.url} restores: all are damaged")
        if self._settings.init_fn is not None:
            self._settings.init_fn()
        return None

