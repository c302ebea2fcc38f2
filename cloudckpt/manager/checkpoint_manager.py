"""``CheckpointManager``: tf.train.CheckpointManager semantics on any fsspec URL.

Numbering, ``max_to_keep``, ``keep_checkpoint_every_n_hours``,
``step_counter``/``checkpoint_interval``, ``restore_or_initialize`` and the
human-readable ``checkpoint`` state file behave as in TensorFlow. Beyond TF:
manifests are the truth (a missing, stale or corrupt state file is rebuilt
from them), a manager claims the directory (ownership epochs; a displaced
manager gets :class:`~cloudckpt.OwnershipLostError`), committed checkpoints
are never overwritten (:class:`~cloudckpt.CheckpointExistsError`), restore
is strict, saves may run in the background (``async_save=True``), and
``best_metric`` keeps the best N instead of the newest N.

This module holds TF's semantics: save, restore, latest, the active set and
retention (:mod:`cloudckpt.manager.retention` decides). Ownership, fencing
and garbage collection are :mod:`cloudckpt.manager.owner`; what rank 0
decides for a distributed job, :mod:`cloudckpt.manager.leader`; async saves,
:mod:`cloudckpt.manager.background`; the options, :mod:`cloudckpt.manager.options`.
It never touches bytes: every read and write is a method of its
:class:`~cloudckpt.layout.handle.DirectoryHandle`.

Example:
    >>> import numpy as np, cloudckpt, tempfile
    >>> w = np.zeros(2)
    >>> ckpt = cloudckpt.Checkpoint(w=w, step=0)
    >>> manager = cloudckpt.CheckpointManager(ckpt, tempfile.mkdtemp(), max_to_keep=2)
    >>> for step in range(3):
    ...     w += 1; ckpt.step = step
    ...     _ = manager.save()
    >>> [u.rsplit("/", 1)[1] for u in manager.checkpoints]
    ['ckpt-2', 'ckpt-3']
    >>> w[:] = 0; manager.restore_or_initialize().endswith("ckpt-3"), w, ckpt.step
    (True, array([3., 3.]), 2)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cloudckpt.checkpoint import Checkpoint
from cloudckpt.distributed.group import agree, resolve_group
from cloudckpt.errors import CheckpointExistsError
from cloudckpt.format import adapters
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.format.tree import Leaf, flatten
from cloudckpt.layout.handle import open_directory
from cloudckpt.layout.names import attempt_id, data_prefix, parse_name
from cloudckpt.manager.background import AsyncSaves, host_copy
from cloudckpt.manager.options import DEFAULT_MAX_TO_KEEP, Settings, as_int, json_metrics
from cloudckpt.manager.owner import exists_message
from cloudckpt.manager.restoring import Restoring

__all__ = ["CheckpointManager", "latest_checkpoint"]

log = logging.getLogger("cloudckpt")


class CheckpointManager(Restoring):
    """Manages a directory of numbered checkpoints, as ``tf.train.CheckpointManager``.

    Args:
        checkpoint: the :class:`~cloudckpt.Checkpoint` to save and restore.
        directory: any fsspec URL or local path.
        max_to_keep: how many checkpoints of this manager's name stay in the
            active set; ``None`` keeps all. Default 5 (TF requires it; Orbax
            keeps all by default).
        keep_checkpoint_every_n_hours: a checkpoint leaving the active set is
            preserved for good if it is at least this many hours younger than
            the last preserved one.
        checkpoint_name: checkpoints are named ``<checkpoint_name>-<N>``.
        step_counter: for interval checks: anything ``int()`` takes (a 0-d
            array updated in place, a torch scalar tensor) or a zero-argument
            callable.
        checkpoint_interval: minimum steps between two saves (needs ``step_counter``).
        init_fn: called by :meth:`restore_or_initialize` when there is nothing to restore.
        last_checkpoint_step: the step of the last save, for the first interval
            check (TF's argument of the same name); default: none, so the
            first save is never skipped.
        storage_options: passed to the fsspec backend (credentials, endpoint).
        async_save: upload and commit in the background; ``save()`` returns
            after copying the state to host memory.
        clock: seconds since the epoch, used for every timestamp and age.
        best_metric: with ``max_to_keep``, keep the best N by this metric
            (given to ``save(metrics=...)``) instead of the newest N.
        best_mode: ``"max"`` or ``"min"``: which metric values are best.
        options: tuning of the tensor store (:class:`~cloudckpt.StoreOptions`).
        incremental: each save copies, inside the store, every object that
            holds the same bytes in the previous checkpoint (S3 ``CopyObject``,
            GCS rewrite, a hard link on local disk) instead of sending it:
            a fine-tuning run whose frozen base model never changes uploads
            only what changed. Every checkpoint stays whole: deleting one never
            affects another. Default True; False writes every byte of every
            save (on local disk: files that share no storage with other
            checkpoints).
        request_timeout: seconds one storage request may take on network
            backends before it fails (and is retried); default: the backend's
            own timeouts.
        process_group: the ranks of a distributed job that save and restore
            together (a torch.distributed ``ProcessGroup`` or a
            :class:`cloudckpt.distributed.group.Group`); default: torch.distributed's
            default group when it is initialized with several processes.

    In a distributed job every rank creates the manager and calls ``save``
    and ``restore_or_initialize`` at the same points. Rank 0 decides (the
    checkpoint number, interval skips, ownership), commits, writes the state
    file and applies retention; every rank writes its share of the data and
    learns the outcome, and a failure on any rank raises on all of them.

    One directory is meant for one run. :attr:`latest_checkpoint` is the
    most recently committed checkpoint of the directory whatever its name
    (as ``tf.train.latest_checkpoint(directory)``), and
    :meth:`restore_or_initialize` restores it; retention only ever deletes
    checkpoints of this manager's own ``checkpoint_name``. Checkpoints
    written without a manager (``Checkpoint.write``, ``cloudckpt.save``)
    count for :attr:`latest_checkpoint` and are restored, but are never
    managed: not listed in :attr:`checkpoints`, never deleted.

    Example:
        >>> import numpy as np, cloudckpt, tempfile
        >>> run = tempfile.mkdtemp()
        >>> params, step = {"w": np.zeros(2)}, np.array(0)
        >>> ckpt = cloudckpt.Checkpoint(params=params, step=step)
        >>> manager = cloudckpt.CheckpointManager(ckpt, run, max_to_keep=2, step_counter=step, checkpoint_interval=5)
        >>> manager.restore_or_initialize() is None     # a fresh run: nothing to restore
        True
        >>> for _ in range(12):
        ...     params["w"] += 1; step += 1
        ...     _ = manager.save(checkpoint_number=step)   # skipped unless 5 steps have passed
        >>> manager.all_steps()
        [6, 11]

        A restarted job resumes from the latest checkpoint:

        >>> params2, step2 = {"w": np.zeros(2)}, np.array(0)
        >>> with cloudckpt.CheckpointManager(cloudckpt.Checkpoint(params=params2, step=step2), run) as again:
        ...     again.restore_or_initialize().endswith("ckpt-11"), params2["w"], int(step2)
        (True, array([11., 11.]), 11)
    """


    def __init__(
        self,
        checkpoint: Checkpoint,
        directory: str | os.PathLike[str],
        max_to_keep: int | None = DEFAULT_MAX_TO_KEEP,
        keep_checkpoint_every_n_hours: float | None = None,
        checkpoint_name: str = "ckpt",
        step_counter: Any = None,
        checkpoint_interval: int | None = None,
        init_fn: Callable[[], Any] | None = None,
        last_checkpoint_step: Any = None,
        *,
        storage_options: dict[str, Any] | None = None,
        async_save: bool = False,
        clock: Callable[[], float] = time.time,
        best_metric: str | None = None,
        best_mode: str = "max",
        options: StoreOptions | None = None,
        request_timeout: float | None = None,
        process_group: Any = None,
        incremental: bool = True,
    ) -> None:
        if not (callable(getattr(checkpoint, "state", None)) and callable(getattr(checkpoint, "restore_state", None))):
            raise TypeError(
                f"checkpoint must be a cloudckpt.Checkpoint, got {type(checkpoint).__name__}; "
                "wrap your objects: cloudckpt.Checkpoint(model=..., optimizer=...)"
            )
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a URL or path string, got {type(directory).__name__}")
        settings = Settings.check(
            max_to_keep=max_to_keep,
            keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
            checkpoint_name=checkpoint_name,
            step_counter=step_counter,
            checkpoint_interval=checkpoint_interval,
            init_fn=init_fn,
            last_checkpoint_step=last_checkpoint_step,
            clock=clock,
            best_metric=best_metric,
            best_mode=best_mode,
        )
        self._checkpoint = checkpoint
        self._directory = os.fspath(directory)
        self._settings = settings
        self._name = settings.checkpoint_name
        self._last_checkpoint_step = settings.last_checkpoint_step
        self._async = bool(async_save)
        self._options = options
        if not isinstance(incremental, bool):
            raise TypeError(f"incremental must be True or False, got {type(incremental).__name__}")
        self._incremental = incremental
        self._saves = AsyncSaves()
        layout = open_directory(self._directory, storage_options, request_timeout=request_timeout)
        self._init_model(layout, writer_id=uuid.uuid4().hex[:12])
        self._group = resolve_group(process_group)
        self._start()

    # -- context manager -----------------------------------------------------
    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # do not hide the error that is leaving the block; still wait for the upload
            try:
                self.close()
            except Exception as err:
                log.error("an async save failed while leaving the manager's block: %s", err)

    def close(self) -> None:
        """Wait for an in-flight async save and re-raise its failure, if any
        (what leaving a ``with CheckpointManager(...)`` block does). The
        manager stays usable.

        Example:
            >>> import numpy as np, cloudckpt, tempfile
            >>> with cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), async_save=True) as m:
            ...     _ = m.save()
            >>> m.all_steps()
            [1]
        """
        self.sync()

    # -- attributes (TF) ---------------------------------------------------
    @property
    def directory(self) -> str:
        """The directory URL or path, as given.

        Example:
            >>> import numpy as np, cloudckpt
            >>> cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-dir/run", 2).directory
            'memory://doc-dir/run'
        """
        return self._directory

    @property
    def checkpoint(self) -> Checkpoint:
        """The managed :class:`~cloudckpt.Checkpoint`.

        Example:
            >>> import numpy as np, cloudckpt
            >>> ckpt = cloudckpt.Checkpoint(w=np.ones(1))
            >>> cloudckpt.CheckpointManager(ckpt, "memory://doc-ckpt-attr", 2).checkpoint is ckpt
            True
        """
        return self._checkpoint

    @property
    def checkpoint_interval(self) -> int | None:
        """Minimum steps between saves, or None.

        Example:
            >>> import numpy as np, cloudckpt
            >>> step = np.array(0)
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(step=step), "memory://doc-interval", 2,
            ...                                 step_counter=step, checkpoint_interval=100)
            >>> m.checkpoint_interval
            100
        """
        return self._settings.checkpoint_interval

    @property
    def checkpoints(self) -> list[str]:
        """Committed checkpoints of this manager's name in the active set, oldest first, as full URLs.

        Checkpoints preserved by ``keep_checkpoint_every_n_hours`` are not
        listed (as in TF). Checkpoints abandoned by a rollback come first:
        they retire first.

        Example:
            >>> import numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-checkpoints", 2)
            >>> for _ in range(3):
            ...     _ = m.save()
            >>> m.checkpoints
            ['memory://doc-checkpoints/ckpt-2', 'memory://doc-checkpoints/ckpt-3']
        """
        with self._lock:
            return [self._url(n) for n in self._maybe_delete]

    def all_steps(self) -> list[int]:
        """The numbers of the checkpoints in :attr:`checkpoints`, in the same order
        (Orbax's ``all_steps()``; with ``save(checkpoint_number=step)`` they are steps).

        Example:
            >>> import numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-all-steps", 2)
            >>> for step in (10, 20, 30):
            ...     _ = m.save(checkpoint_number=step)
            >>> m.all_steps()
            [20, 30]
        """
        with self._lock:
            return list(self._maybe_delete)

    def latest_step(self) -> int | None:
        """The number of :attr:`latest_checkpoint`, or None (Orbax's ``latest_step()``).

        Example:
            >>> import numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-latest-step", 2)
            >>> m.latest_step() is None, m.save(checkpoint_number=40) is not None, m.latest_step()
            (True, True, 40)
        """
        with self._lock:
            name = self._latest_name
        parsed = parse_name(name) if name else None
        return parsed[1] if parsed else None

    @property
    def latest_checkpoint(self) -> str | None:
        """URL of the most recently committed checkpoint of the directory, or None.

        Equal to :func:`cloudckpt.latest_checkpoint` of the directory, as in TF:
        the newest in commit order, whatever its name (see
        :mod:`cloudckpt.layout.directory`). Moves when a save commits.

        Example:
            >>> import numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-latest-attr", 2)
            >>> m.latest_checkpoint is None
            True
            >>> m.save(checkpoint_number=7) == m.latest_checkpoint == "memory://doc-latest-attr/ckpt-7"
            True
        """
        with self._lock:
            return None if self._latest_name is None else self._layout.url_for(self._latest_name)

    @property
    def _storage(self) -> Any:
        """Testing hook: the byte-level handle of the directory (tests watch its requests; the manager never uses it)."""
        return self._layout.storage

    def _time_limit(self, seconds: float | None) -> contextlib.AbstractContextManager[None]:
        """Within the block, every request of this manager (async save too) ends within ``seconds``."""
        return self._layout.time_limit(seconds)

    def gc(self) -> list[str]:
        """Collect orphaned data of crashed saves and fenced checkpoints of this
        manager's name (owner only).

        Claims the directory if this manager has not yet (which collects
        already). Returns the URLs removed. ``cloudckpt gc`` collects those of
        every name.

        Example:
            >>> import numpy as np, cloudckpt, tempfile
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 2)
            >>> _ = m.save(); m.gc()
            []
        """
        self.sync()
        return self._collect_on_leader()

    def save(
        self,
        checkpoint_number: Any = None,
        check_interval: bool = True,
        *,
        metrics: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Save a new checkpoint and apply retention; return its URL (None if skipped).

        ``checkpoint_number`` names the checkpoint (default: the incremented
        ``save_counter``; ``save_counter`` is incremented either way).
        With ``checkpoint_interval``, a save fewer than that many steps after
        the last one is skipped unless ``check_interval=False``; a second save
        at the same step is always skipped. ``metrics`` (a JSON dict) is stored
        in the manifest. With ``async_save`` the URL is returned once the state
        is copied to host memory; :meth:`sync` waits for the commit.

        Raises :class:`~cloudckpt.OwnershipLostError` if another manager has
        claimed the directory, and :class:`~cloudckpt.CheckpointExistsError`
        if that number is committed already (nothing is overwritten) — except
        a checkpoint abandoned by a rollback (:meth:`restore`), which the save
        replaces (logged at WARNING). With ``async_save`` in a single process,
        the ownership claim and check run in the background, and their failure
        is raised by the next ``save()`` or :meth:`sync`.

        Example:
            >>> import numpy as np, cloudckpt, tempfile
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 2)
            >>> m.save().rsplit("/", 1)[1], m.save(checkpoint_number=10).rsplit("/", 1)[1]
            ('ckpt-1', 'ckpt-10')
            >>> m.checkpoint.save_counter
            2
        """
        self._saves.raise_pending(wait=True)
        number_arg = None if checkpoint_number is None else as_int(checkpoint_number, "checkpoint_number")
        if number_arg is not None and number_arg < 0:
            raise ValueError(f"checkpoint_number must be >= 0, got {number_arg}")
        meta: dict[str, Any] = {}
        if metrics is not None:
            if not isinstance(metrics, Mapping):
                raise TypeError(f"metrics must be a dict of JSON values, got {type(metrics).__name__}")
            meta["metrics"] = json_metrics(metrics)
        number = self._decide(number_arg, check_interval)
        if number is None:
            return None
        url = self._url(number)
        error: Exception | None = None
        try:
            state = self._checkpoint.state()
            node, leaves = flatten(state, adapt=adapters.to_numpy)
            if self._async:
                t0 = time.perf_counter()
                leaves = [host_copy(leaf) for leaf in leaves]
                log.debug("async save of %s: state copied to host in %.3f s", url, time.perf_counter() - t0)
        except Exception as exc:
            if self._group.size == 1:
                raise
            error = exc
        agree(self._group, error)  # a rank whose state cannot be saved stops every rank here
        if not self._async:
            self._commit(number, node, leaves, meta)
            return url
        self._saves.start(
            lambda: self._background(number, node, leaves, meta), name=f"cloudckpt-save-{number}", what=url
        )
        return url

    def _background(self, number: int, node: dict[str, Any], leaves: list[Leaf], meta: dict[str, Any]) -> None:
        """The work of an async save, in its thread."""
        if self._owner_in_background():
            self._ensure_owner()
            self._check_number(number)  # committed by another writer before our claim
        self._commit(number, node, leaves, meta)

    def _commit(self, number: int, node: dict[str, Any], leaves: list[Leaf], meta: dict[str, Any]) -> None:
        name = self._dirname(number)
        leader = self._group.rank == 0
        if leader:
            self._replace_abandoned(number)
        base = self._base_name(number)
        for first_try in (True, False):
            epoch = self._epoch if leader else None
            attempt = attempt_id(epoch)
            try:
                result = self._layout.write_checkpoint(
                    name,
                    None,
                    base=base,
                    flat=(node, leaves),
                    checkpoint_number=number,
                    epoch=epoch,
                    metadata=meta,
                    options=self._options,
                    attempt=attempt,
                    created=self._now(),
                    writer_extra=self._writer_record() if leader else None,
                    check_exists=False,  # known above; a commit race still fails create-only
                    group=self._group,
                    after_commit=lambda manifest: self._after_commit(number, manifest) if leader else None,
                )
                break
            except CheckpointExistsError:
                if self._retry_taken_number(number, first_try):
                    continue
                raise CheckpointExistsError(exists_message(self._url(number))) from None
            except BaseException:
                if leader:
                    with self._lock:
                        self._failed_attempts.append((name, data_prefix(attempt)))
                raise
        self._apply_view(result.extra)

    def _base_name(self, number: int) -> str | None:
        """The checkpoint an incremental save of ``number`` copies from: the
        directory's latest if it is of this manager's name (after a rollback,
        the restored one), else this manager's newest; None when not incremental."""
        if not self._incremental:
            return None
        with self._lock:
            own = [n for n in self._maybe_delete if n != number]
            latest = self._latest_name
        parsed = parse_name(latest) if latest else None
        if parsed is not None and parsed[0] == self._name and parsed[1] != number:
            return latest
        return self._dirname(own[-1]) if own else None

    def sync(self) -> None:
        """Wait for an in-flight async save; re-raise its failure, if any.

        Example:
            >>> import numpy as np, cloudckpt, tempfile
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 3, async_save=True)
            >>> url = m.save(); m.sync(); m.latest_checkpoint == url
            True
        """
        self._saves.raise_pending(wait=True)


def latest_checkpoint(directory: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> str | None:
    """URL of the most recently committed checkpoint in ``directory`` (None if there is none).

    Looks at the manifests, not the state file, so it is right even after a
    crash between commit and state-file update. Commit order, not numbers,
    decides; fenced and abandoned checkpoints are skipped; a damaged manifest
    numbered above the latest counts as the newest (see :mod:`cloudckpt.layout.directory`).
    Equal to a :class:`CheckpointManager`'s ``latest_checkpoint`` of the directory.

    Example:
        >>> import numpy as np, cloudckpt
        >>> _ = cloudckpt.save("memory://doc-latest/ckpt-4", {"w": np.ones(1)})
        >>> cloudckpt.latest_checkpoint("memory://doc-latest")
        'memory://doc-latest/ckpt-4'
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a URL or path string, got {type(directory).__name__}")
    layout = open_directory(os.fspath(directory), storage_options)
    latest = layout.read_view().latest
    return None if latest is None else layout.url_for(latest.name)
