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

This module decides; it never touches bytes: it calls the format layer
(:mod:`cloudckpt.layout.checkpoint_io`, :mod:`cloudckpt.layout.catalog`,
:mod:`cloudckpt.layout.ownership`, :mod:`cloudckpt.layout.statefile`) with storage handles.

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

import atexit
import contextlib
import json
import logging
import math
import operator
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cloudckpt.checkpoint import Checkpoint
from cloudckpt.distributed.group import agree, leader_call, resolve_group
from cloudckpt.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FormatVersionError,
    ObjectNotFoundError,
    OwnershipLostError,
)
from cloudckpt.format import adapters
from cloudckpt.format.manifest import MANIFEST_KEY, header_of
from cloudckpt.format.shards import ShardedArray
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.format.tree import Leaf, flatten
from cloudckpt.layout import catalog, ownership
from cloudckpt.layout import directory as directory_model
from cloudckpt.layout.catalog import Position, read_header
from cloudckpt.layout.checkpoint_io import write_checkpoint
from cloudckpt.layout.statefile import CheckpointState, read_state_file, write_state_file
from cloudckpt.manager import retention
from cloudckpt.storage import Storage, open_storage, validate_key

__all__ = ["CheckpointManager", "latest_checkpoint"]

log = logging.getLogger("cloudckpt")

#: ``max_to_keep`` when it is not given (TF requires it).
DEFAULT_MAX_TO_KEEP = 5


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got bool")
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        if isinstance(value, np.ndarray) and value.ndim == 0:
            return int(value.item())
        if hasattr(value, "item") and callable(value.item):
            item = value.item()
            if isinstance(item, float) and not item.is_integer():
                raise TypeError(f"{what} must be an integer, got {item!r}")
            return int(item)
        if isinstance(value, float):
            if not value.is_integer():
                raise TypeError(f"{what} must be an integer, got {value!r}")
            return int(value)
        return int(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be an integer (anything int() takes), got {type(value).__name__}") from None


def _evaluate_step(step_counter: Any) -> int:
    value = step_counter() if callable(step_counter) else step_counter
    return _as_int(value, "step_counter")


# Async saves in flight, waited for at interpreter exit. The wait must run
# before concurrent.futures shuts its thread pools down (the upload uses one),
# so it is registered with threading's pre-join exit hooks, which run in
# reverse order of registration: registered after concurrent.futures, ours
# runs first. Plain atexit would run too late.
_PENDING: set[threading.Thread] = set()
_PENDING_LOCK = threading.Lock()
_EXIT_HOOK = False


def _wait_for_pending_saves() -> None:
    while True:
        with _PENDING_LOCK:
            threads = list(_PENDING)
        if not threads:
            return
        log.debug("waiting for %d async save(s) before exit", len(threads))
        for t in threads:
            t.join()
            with _PENDING_LOCK:
                _PENDING.discard(t)


def _install_exit_hook() -> None:
    global _EXIT_HOOK
    with _PENDING_LOCK:
        if _EXIT_HOOK:
            return
        _EXIT_HOOK = True
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(_wait_for_pending_saves)
    except RuntimeError:
        atexit.register(_wait_for_pending_saves)


class CheckpointManager:
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
    ) -> None:
        if not (callable(getattr(checkpoint, "state", None)) and callable(getattr(checkpoint, "restore_state", None))):
            raise TypeError(
                f"checkpoint must be a cloudckpt.Checkpoint, got {type(checkpoint).__name__}; "
                "wrap your objects: cloudckpt.Checkpoint(model=..., optimizer=...)"
            )
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a URL or path string, got {type(directory).__name__}")
        if max_to_keep is not None:
            max_to_keep = _as_int(max_to_keep, "max_to_keep")
            if max_to_keep <= 0:
                raise ValueError(f"Expected a positive integer or None for max_to_keep, got {max_to_keep}")
        if keep_checkpoint_every_n_hours is not None:
            if isinstance(keep_checkpoint_every_n_hours, bool) or not isinstance(keep_checkpoint_every_n_hours, (int, float)):
                raise TypeError("keep_checkpoint_every_n_hours must be a number of hours or None")
            if not keep_checkpoint_every_n_hours > 0 or math.isinf(keep_checkpoint_every_n_hours):
                raise ValueError(
                    f"keep_checkpoint_every_n_hours must be a positive, finite number of hours, got {keep_checkpoint_every_n_hours}"
                )
        if not isinstance(checkpoint_name, str) or not checkpoint_name or "/" in checkpoint_name:
            raise ValueError(f"checkpoint_name must be a non-empty name without '/', got {checkpoint_name!r}")
        try:
            validate_key(checkpoint_name)
        except ValueError as exc:
            raise ValueError(f"checkpoint_name {checkpoint_name!r} cannot name a directory: {exc}") from None
        if checkpoint_interval is not None:
            if step_counter is None:
                raise ValueError("`step_counter` should be passed if `checkpoint_interval` is not None.")
            checkpoint_interval = _as_int(checkpoint_interval, "checkpoint_interval")
            if checkpoint_interval <= 0:
                raise ValueError(f"checkpoint_interval must be a positive number of steps, got {checkpoint_interval}")
        if step_counter is not None and not callable(step_counter):
            _evaluate_step(step_counter)  # fails now, not at the first save
        if last_checkpoint_step is not None:
            last_checkpoint_step = _as_int(last_checkpoint_step, "last_checkpoint_step")
        if init_fn is not None and not callable(init_fn):
            raise TypeError("init_fn must be a zero-argument callable or None")
        if not callable(clock):
            raise TypeError("clock must be a zero-argument callable returning seconds since the epoch")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if best_metric is not None and not isinstance(best_metric, str):
            raise TypeError("best_metric must be the name of a metric (str) or None")

        self._checkpoint = checkpoint
        self._directory = os.fspath(directory)
        self._storage: Storage = open_storage(self._directory, storage_options, request_timeout=request_timeout)
        self._max_to_keep = max_to_keep
        self._keep_hours = keep_checkpoint_every_n_hours
        self._name = checkpoint_name
        self._step_counter = step_counter
        self._checkpoint_interval = checkpoint_interval
        self._last_checkpoint_step: int | None = last_checkpoint_step
        self._init_fn = init_fn
        self._async = bool(async_save)
        self._clock = clock
        self._best_metric = best_metric
        self._best_mode = best_mode
        self._options = options
        self._writer_id = uuid.uuid4().hex[:12]

        self._lock = threading.RLock()
        self._epoch: int | None = None
        self._seq = 0  # commits made under self._epoch
        self._entries: dict[str, catalog.Entry] = {}  # every <name>-<N> of the directory, as last known
        self._claims: list[ownership.Claim] = []
        self._dir = directory_model.classify([], [])
        self._ranges: list[tuple[Position, Position]] = []  # abandoned ranges the next save records
        self._follows: Position | None = None  # the checkpoint the next save continues from
        self._maybe_delete: OrderedDict[int, float] = OrderedDict()
        self._latest_name: str | None = None
        self._last_preserved = 0.0
        self._recovered: dict[tuple[int, Any], float | None] = {}
        self._failed_attempts: list[tuple[str, str]] = []
        self._pending: threading.Thread | None = None
        self._pending_error: BaseException | None = None
        self._group = resolve_group(process_group)
        if self._group.size == 1:
            self._reconcile(initial=True)
        else:
            self._apply_view(leader_call(self._group, lambda: (self._reconcile(initial=True), self._view())[1]))

    def _view(self) -> dict[str, Any]:
        """What the other ranks of a distributed job need to know of rank 0's state."""
        with self._lock:
            return {"latest": self._latest_name, "active": list(self._maybe_delete)}

    def _apply_view(self, view: dict[str, Any] | None) -> None:
        if not view or self._group.rank == 0:
            return
        with self._lock:
            self._latest_name = view["latest"]
            self._maybe_delete = OrderedDict((int(n), 0.0) for n in view["active"])

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
        return self._checkpoint_interval

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
        parsed = catalog.parse_name(name) if name else None
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
            return None if self._latest_name is None else self._storage.url_for(self._latest_name)

    # -- helpers -----------------------------------------------------------
    def _dirname(self, number: int) -> str:
        return f"{self._name}-{number}"

    def _url(self, number: int) -> str:
        return self._storage.url_for(self._dirname(number))

    def _now(self) -> float:
        return float(self._clock())

    def _time_limit(self, seconds: float | None) -> contextlib.AbstractContextManager[None]:
        """Within the block, every storage request of this manager (also of an
        async save in flight) ends within ``seconds``; none starts after."""
        return self._storage.time_limit(seconds)

    def _own(self) -> dict[int, catalog.Entry]:
        """The valid checkpoints of this manager's name, by number."""
        return {e.number: e for e in self._dir.valid if e.checkpoint_name == self._name}

    def _reclassify(self) -> None:
        """Classify the known entries again (after a commit or a deletion)."""
        with self._lock:
            self._dir = directory_model.classify(list(self._entries.values()), self._claims)
            latest = self._dir.latest
            self._latest_name = latest.name if latest is not None else None

    def _reconcile(self, *, initial: bool = False) -> directory_model.View:
        """Rebuild the in-memory state from the manifests (the truth).

        As TF on recovery: the last preserved timestamp is the newest one
        recorded (state file, manifests, preserved markers); a managed
        checkpoint stays in the active set only if it is newer than that,
        timestamps are capped at the current clock, and a clock behind the
        last preservation is warned about and taken as the new preservation
        time, so that nothing recovered is deleted by mistake.
        """
        view = directory_model.read_view(self._storage)
        with self._lock:
            self._entries = {e.name: e for e in view.entries}
            self._claims = list(view.claims)
        self._reclassify()
        view = self._dir
        own = [e for e in view.valid if e.checkpoint_name == self._name]
        now = self._now()
        file_state = read_state_file(self._storage)
        candidates = []
        if file_state is not None and file_state.last_preserved_timestamp is not None:
            candidates.append(file_state.last_preserved_timestamp)
        for e in own:
            if e.last_preserved is not None:
                candidates.append(e.last_preserved)
            if e.preserved and e.managed:
                candidates.append(e.created)
        candidates = [c for c in candidates if math.isfinite(c)]
        if initial:
            last_preserved = max(candidates) if candidates else now - 1.0
            if now < last_preserved:
                log.warning(
                    "clock() returned a value %f seconds behind the last preserved checkpoint timestamp",
                    last_preserved - now,
                )
                last_preserved = now
        else:
            last_preserved = max([self._last_preserved, *(c for c in candidates if c <= now)])
        for e in own:
            if not e.managed or e.preserved:
                continue
            key = (e.number, e.attempt)
            if initial or key not in self._recovered:
                ts = min(e.created, now)
                self._recovered[key] = ts if ts > last_preserved else None
        with self._lock:
            self._last_preserved = last_preserved
            if self._epoch is None:
                self._ranges = list(view.ranges)
        self._rebuild_active()
        if file_state is not None and not self._state_matches(file_state):
            log.debug("state file of %s is stale; rebuilt from the manifests", self._storage.url)
        return view

    def _rebuild_active(self) -> None:
        """The active set: this name's managed, unpreserved, valid checkpoints
        known to be newer than the last preservation; abandoned ones first
        (they retire first), then in commit order."""
        with self._lock:
            view = self._dir
            active: OrderedDict[int, float] = OrderedDict()
            own = [e for e in view.valid if e.checkpoint_name == self._name and e.managed and not e.preserved]
            own.sort(key=lambda e: (not view.is_abandoned(e), directory_model.sort_key(e)))
            for e in own:
                ts = self._recovered.get((e.number, e.attempt))
                if ts is not None:
                    active[e.number] = ts
            self._maybe_delete = active

    def _metric_of(self, entry: catalog.Entry | None) -> float | None:
        if self._best_metric is None or entry is None or entry.header is None:
            return None
        metrics = entry.header.get("metadata", {}).get("metrics")
        if not isinstance(metrics, dict):
            return None
        v = metrics.get(self._best_metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def _state(self) -> CheckpointState:
        with self._lock:
            return CheckpointState(
                self._latest_name,
                [self._dirname(n) for n in self._maybe_delete],
                list(self._maybe_delete.values()),
                self._last_preserved,
            )

    def _state_matches(self, state: CheckpointState) -> bool:
        mine = self._state()
        return (
            mine.model_checkpoint_path == state.model_checkpoint_path
            and mine.all_model_checkpoint_paths == state.all_model_checkpoint_paths
            and mine.all_model_checkpoint_timestamps == state.all_model_checkpoint_timestamps
        )

    def _write_state(self) -> None:
        state = self._state()
        if state.model_checkpoint_path is None:
            return
        write_state_file(self._storage, state)

    # -- ownership -----------------------------------------------------------
    @property
    def epoch(self) -> int | None:
        """This manager's ownership epoch, or None before it has claimed the directory.

        Example:
            >>> import numpy as np, cloudckpt, tempfile
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 2)
            >>> m.epoch, m.restore_or_initialize(), m.epoch
            (None, None, 1)
        """
        return self._epoch

    def _ensure_owner(self) -> None:
        """Claim the directory (once), or check that this manager still owns it.

        The claim is written first, then the directory is scanned, then what
        the scan found valid is recorded as accepted (:mod:`cloudckpt.layout.ownership`):
        a commit of an older owner that this manager did not see lands after
        the claim, so its writer is told it lost the directory, and it is fenced.
        """
        if self._epoch is not None:
            ownership.check_owner(self._storage, self._epoch)
            return
        c = ownership.claim(self._storage, writer=self._writer_id, clock=self._clock)
        view = self._reconcile()
        table = directory_model.accepted_table(view)
        mine = ownership.record_accepted(self._storage, c.epoch, table)
        with self._lock:
            self._epoch = c.epoch
            self._seq = 0
            self._claims = [*(x for x in self._claims if x.epoch != c.epoch), mine]
        log.debug("claimed %s with epoch %d (accepted %s)", self._storage.url, c.epoch, table)
        self._collect(view)
        self._write_state()

    def _collect(self, view: directory_model.View) -> list[str]:
        """Remove, of this manager's name only, fenced checkpoints and orphaned
        data that no live writer can still be using: data of older epochs and
        this manager's own failed attempts. Returns the URLs removed."""
        assert self._epoch is not None
        removed: list[str] = []
        for e in view.fenced:
            if e.checkpoint_name != self._name:
                continue  # another name's: `cloudckpt gc` removes it, a manager never does
            log.warning(
                "removing %s: committed by epoch %d after a newer claim had recorded what it accepted (fenced)",
                self._storage.url_for(e.name),
                e.epoch,
            )
            self._delete_entry(e.name)
            removed.append(self._storage.url_for(e.name))
        for e in [*view.valid, *view.partial]:
            if e.checkpoint_name != self._name:
                continue
            old = [p for p in e.orphans if catalog.data_prefix_epoch(p) < self._epoch]
            sub = self._storage.child(e.name)
            for prefix in old:
                sub.delete_prefix(prefix)
                removed.append(sub.url_for(prefix))
                log.info("retention: removed orphaned data %s (a save that never committed)", removed[-1])
            if e.status == "partial" and old and len(old) == len(e.data_prefixes) and self._storage.is_local:
                # local disk keeps empty directories; object stores have none
                files, dirs = sub.list_dir()
                if not files and not dirs:
                    self._storage.delete_prefix(e.name)
        removed.extend(self._collect_own_failures())
        if self._storage.is_local:
            # a SIGKILL between a temp write and its rename (state file, manifest)
            own = [e.name for e in view.entries if e.checkpoint_name == self._name]
            for prefix in ["", ownership.OWNER_PREFIX, *own]:
                for url in self._storage.collect_temporaries(prefix):
                    removed.append(url)
                    log.info("retention: removed the temp file of a killed write %s", url)
        return removed

    def _collect_own_failures(self) -> list[str]:
        with self._lock:
            failed, self._failed_attempts = self._failed_attempts, []
        removed = []
        for dirname, prefix in failed:
            sub = self._storage.child(dirname)
            try:
                try:
                    if read_header(sub).get("data") == prefix:
                        continue  # the "failed" commit did land: its data is in use
                except ObjectNotFoundError:
                    pass
                except CorruptCheckpointError:
                    continue  # not ours to judge
                sub.delete_prefix(prefix)
                removed.append(sub.url_for(prefix))
                log.info("retention: removed data of a failed save %s", removed[-1])
            except CheckpointError as exc:
                log.debug("could not collect %s/%s: %s", dirname, prefix, exc)
                with self._lock:
                    self._failed_attempts.append((dirname, prefix))
        return removed

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

        def collect() -> list[str]:
            self._ensure_owner()
            assert self._epoch is not None
            ownership.check_owner(self._storage, self._epoch)
            view = self._reconcile()
            removed = self._collect(view)
            ownership.prune_claims(self._storage, self._claims)
            return removed

        return collect() if self._group.size == 1 else list(leader_call(self._group, collect))

    # -- deleting ------------------------------------------------------------
    def _delete_entry(self, name: str) -> None:
        """Manifest first (invisible at once), then everything else under it."""
        sub = self._storage.child(name)
        sub.delete([MANIFEST_KEY])
        self._storage.delete_prefix(name)
        with self._lock:
            self._entries.pop(name, None)
        self._reclassify()
        self._rebuild_active()

    def _remove_if_fenced(self, number: int) -> bool:
        """If checkpoint ``number`` is fenced, remove it and return True (also if it is gone)."""
        sub = self._storage.child(self._dirname(number))
        try:
            header = read_header(sub)
        except ObjectNotFoundError:
            return True
        except CheckpointError:
            return False
        entry = catalog.Entry(self._dirname(number), self._name, number, "committed", header=header)
        assert self._epoch is not None
        if not entry.managed or entry.epoch >= self._epoch:
            return False
        if not ownership.is_fenced(entry.epoch, entry.position[2], ownership.list_claims(self._storage, above=entry.epoch)):
            return False
        log.warning("removing %s: committed by epoch %d after a newer claim (fenced)", sub.url, entry.epoch)
        self._delete_entry(entry.name)
        return True

    def _sweep(self) -> bool:
        """Apply retention; return whether anything left the active set."""
        with self._lock:
            own = self._own()
            active = [retention.Managed(n, ts, self._metric_of(own.get(n))) for n, ts in self._maybe_delete.items()]
        decision = retention.sweep(
            active,
            max_to_keep=self._max_to_keep,
            keep_hours=self._keep_hours,
            last_preserved=self._last_preserved,
            best_mode=self._best_mode if self._best_metric else None,
        )
        if not decision.preserve and not decision.delete:
            return False
        assert self._epoch is not None
        ownership.check_owner(self._storage, self._epoch)  # re-check before changing anything
        for m in decision.preserve:
            sub = self._storage.child(self._dirname(m.number))
            record = {"preserved_at": self._now(), "timestamp": m.timestamp}
            sub.write_if_absent(catalog.PRESERVED_KEY, json.dumps(record).encode())
            with self._lock:
                self._maybe_delete.pop(m.number, None)
                entry = self._entries.get(self._dirname(m.number))
                if entry is not None:
                    entry.preserved = True
            log.info("retention: preserving %s for good (keep_checkpoint_every_n_hours)", self._url(m.number))
        with self._lock:
            self._last_preserved = decision.last_preserved
        for m in decision.delete:
            log.info("retention: deleting %s", self._url(m.number))
            self._delete_entry(self._dirname(m.number))
        return True

    # -- saving --------------------------------------------------------------
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
        self._raise_pending(wait=True)
        number_arg = None if checkpoint_number is None else _as_int(checkpoint_number, "checkpoint_number")
        if number_arg is not None and number_arg < 0:
            raise ValueError(f"checkpoint_number must be >= 0, got {number_arg}")
        meta: dict[str, Any] = {}
        if metrics is not None:
            if not isinstance(metrics, Mapping):
                raise TypeError(f"metrics must be a dict of JSON values, got {type(metrics).__name__}")
            meta["metrics"] = _json_metrics(metrics)
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
                leaves = [_host_copy(leaf) for leaf in leaves]
                log.debug("async save of %s: state copied to host in %.3f s", url, time.perf_counter() - t0)
        except Exception as exc:
            if self._group.size == 1:
                raise
            error = exc
        agree(self._group, error)  # a rank whose state cannot be saved stops every rank here
        if not self._async:
            self._commit(number, node, leaves, meta)
            return url
        copied = leaves
        thread = threading.Thread(
            target=self._background, args=(number, node, copied, meta), name=f"cloudckpt-save-{number}", daemon=False
        )
        _install_exit_hook()
        with _PENDING_LOCK:
            _PENDING.add(thread)
        with self._lock:
            self._pending = thread
        thread.start()
        return url

    def _abandoned_number(self, number: int) -> bool:
        """Whether this name's checkpoint ``number`` is abandoned (by a rollback
        on storage, or by one this manager made and has not saved after yet)."""
        with self._lock:
            entry = self._own().get(number)
            return entry is not None and directory_model.in_ranges(entry.position, self._ranges)

    def _check_number(self, number: int) -> None:
        """Refuse a number that is committed, unless that checkpoint is abandoned."""
        with self._lock:
            known = number in self._own()
        if known and not self._abandoned_number(number):
            # the view of an owner is current: no request is needed to know, nothing is written
            raise CheckpointExistsError(_exists_message(self._url(number)))

    def _decide(self, number_arg: int | None, check_interval: bool) -> int | None:
        """The number of the next checkpoint, or None to skip (interval); in a
        distributed job rank 0 decides and every rank follows."""

        def decide() -> dict[str, Any]:
            if self._checkpoint_interval is not None:
                current_step = _evaluate_step(self._step_counter)
                if self._last_checkpoint_step is not None:
                    if current_step == self._last_checkpoint_step:
                        return {"skip": True}
                    if check_interval and current_step < self._last_checkpoint_step + self._checkpoint_interval:
                        return {"skip": True}
            if not self._owner_in_background():
                self._ensure_owner()
            if self._checkpoint_interval is not None:
                self._last_checkpoint_step = current_step
            self._checkpoint.save_counter = self._checkpoint.save_counter + 1
            number = self._checkpoint.save_counter if number_arg is None else number_arg
            self._check_number(number)
            return {"number": number, "save_counter": self._checkpoint.save_counter, "step": self._last_checkpoint_step}

        if self._group.size == 1:
            d = decide()
        else:
            d = leader_call(self._group, decide)
            if self._group.rank != 0 and not d.get("skip"):
                self._checkpoint.save_counter = int(d["save_counter"])
                self._last_checkpoint_step = d["step"]
        return None if d.get("skip") else int(d["number"])

    def _owner_in_background(self) -> bool:
        """Whether an async save claims (or re-checks) ownership in its
        background thread rather than in ``save()``: with one process, so that
        the first save does not block on the claim's requests. The number is
        still refused in ``save()`` if the view (reconciled on construction)
        knows it; a number taken meanwhile fails the create-only commit."""
        return self._async and self._group.size == 1

    def _background(self, number: int, node: dict[str, Any], leaves: list[Leaf], meta: dict[str, Any]) -> None:
        try:
            if self._owner_in_background():
                self._ensure_owner()
                self._check_number(number)  # committed by another writer before our claim
            self._commit(number, node, leaves, meta)
        except BaseException as exc:
            log.error("async save of %s failed: %s", self._url(number), exc)
            with self._lock:
                self._pending_error = exc
        finally:
            with _PENDING_LOCK:
                _PENDING.discard(threading.current_thread())

    def _replace_abandoned(self, number: int) -> None:
        """Rank 0, before committing ``number``: remove the abandoned checkpoint
        that holds that number (the one case of a number reused)."""
        if not self._abandoned_number(number):
            return
        log.warning(
            "removing %s: it was abandoned by a rollback, and this save takes its number", self._url(number)
        )
        self._delete_entry(self._dirname(number))

    def _writer_record(self) -> dict[str, Any]:
        """Rank 0: what this save's manifest records of its writer (sequence, lineage, retention clock)."""
        with self._lock:
            self._seq += 1
            positions = [e.position for e in self._dir.valid]
            ranges = [(lo, hi) for lo, hi in self._ranges if any(lo < p <= hi for p in positions)]
            self._ranges = ranges
            return {
                "seq": self._seq,
                "follows": None if self._follows is None else list(self._follows),
                "abandoned": [[list(lo), list(hi)] for lo, hi in ranges] or None,
                "last_preserved_timestamp": self._last_preserved,
            }

    def _commit(self, number: int, node: dict[str, Any], leaves: list[Leaf], meta: dict[str, Any]) -> None:
        name = self._dirname(number)
        sub = self._storage.child(name)
        leader = self._group.rank == 0
        if leader:
            self._replace_abandoned(number)
        for first_try in (True, False):
            epoch = self._epoch if leader else None
            attempt = f"e{epoch}-{uuid.uuid4().hex[:16]}"
            try:
                result = write_checkpoint(
                    sub,
                    None,
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

                def retry(first: bool = first_try) -> bool:
                    assert self._epoch is not None
                    ownership.check_owner(self._storage, self._epoch)  # a lost owner learns that, not this
                    if first and self._remove_if_fenced(number):
                        return True
                    raise CheckpointExistsError(_exists_message(sub.url)) from None

                if retry() if self._group.size == 1 else leader_call(self._group, retry):
                    continue
                raise CheckpointExistsError(_exists_message(sub.url)) from None
            except BaseException:
                if leader:
                    with self._lock:
                        self._failed_attempts.append((name, f"data-{attempt}"))
                raise
        self._apply_view(result.extra)

    def _after_commit(self, number: int, manifest: dict[str, Any]) -> dict[str, Any]:
        """Rank 0, right after the commit: re-check ownership, record the new
        checkpoint, write the state file, apply retention. Returns the view
        the other ranks take over."""
        assert self._epoch is not None
        name = self._dirname(number)
        sub = self._storage.child(name)
        unconfirmed: CheckpointError | None = None
        try:
            ownership.check_owner(self._storage, self._epoch)
        except OwnershipLostError as exc:
            raise OwnershipLostError(
                f"{exc}. The checkpoint {sub.url} committed meanwhile belongs to no owner: unless the new "
                "owner accepted it, it is fenced (never listed or restored) and `cloudckpt gc` removes it"
            ) from None
        except CheckpointError as exc:
            # committed, but ownership could not be re-checked (storage trouble):
            # record the commit so that latest_checkpoint and retention know it, then raise
            unconfirmed = exc
        entry = catalog.Entry(name, self._name, number, "committed", header=header_of(manifest))
        entry.data_prefixes = [str(manifest["data"])]
        with self._lock:
            self._entries[name] = entry
            self._recovered[(number, entry.attempt)] = float(manifest["created"])
            self._follows = entry.position
        self._reclassify()
        self._rebuild_active()
        if unconfirmed is not None:
            raise unconfirmed
        self._write_state()  # before retention, as TF: a crash while deleting still names the new one
        if self._sweep():
            self._write_state()
        self._collect_own_failures()
        if self._seq == 1:  # the first commit of this owner: older claims are redundant from now on
            ownership.prune_claims(self._storage, self._claims)
        return self._view()

    def _raise_pending(self, *, wait: bool) -> None:
        thread = self._pending
        if thread is not None and wait:
            thread.join()
            with self._lock:
                if self._pending is thread:
                    self._pending = None
        with self._lock:
            err, self._pending_error = self._pending_error, None
        if err is not None:
            raise err

    def sync(self) -> None:
        """Wait for an in-flight async save; re-raise its failure, if any.

        Example:
            >>> import numpy as np, cloudckpt, tempfile
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 3, async_save=True)
            >>> url = m.save(); m.sync(); m.latest_checkpoint == url
            True
        """
        self._raise_pending(wait=True)

    # -- restoring -----------------------------------------------------------
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

        def candidates() -> dict[str, Any]:
            self._ensure_owner()
            with self._lock:
                view = self._dir
                order = [] if view.latest is None or view.latest is view.restorable else [view.latest]
                order += view.newest_first()
                return {"names": [e.name for e in order], "damaged": {e.name: [e.status, e.error] for e in view.damaged}}

        plan = candidates() if self._group.size == 1 else leader_call(self._group, candidates)
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
            inside = self._storage.url_for(name) == text or (
                self._storage.is_local
                and "://" not in text
                and os.path.abspath(os.path.dirname(text)) == os.path.abspath(self._storage.url)
            )
            if "/" in text and not inside:
                raise ValueError(
                    f"{text} is not a checkpoint of {self._storage.url}: a manager restores its own directory's "
                    "checkpoints (read another one with Checkpoint.read(url))"
                )
        else:
            name = self._dirname(_as_int(checkpoint, "checkpoint"))

        def plan() -> dict[str, Any]:
            self._ensure_owner()
            with self._lock:
                entry = self._entries.get(name)
                view = self._dir
                if entry is None or entry.status == "partial":
                    raise CheckpointNotFoundError(
                        f"no checkpoint {self._storage.url_for(name)}: the directory holds "
                        f"{[e.name for e in view.valid] or 'no checkpoint'}"
                    )
                if entry in view.fenced:
                    raise CheckpointNotFoundError(
                        f"{self._storage.url_for(name)} was committed by a manager that had lost the directory "
                        "(fenced): it is not restored"
                    )
                return {"names": [name], "damaged": {e.name: [e.status, e.error] for e in view.damaged}}

        p = plan() if self._group.size == 1 else leader_call(self._group, plan)
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
            sub = self._storage.child(name)
            if name in damaged:
                status, error = damaged[name]
                exc: CheckpointError = (
                    FormatVersionError(f"the latest checkpoint {sub.url} was written by a newer cloudckpt: {error}")
                    if status == "newer"
                    else CorruptCheckpointError(f"the latest checkpoint {sub.url} is damaged: {error}")
                )
                if not fallback:
                    raise exc
                log.error("cannot restore %s (%s); falling back to the previous checkpoint", sub.url, exc)
                skipped.append(name)
                continue
            try:
                self._checkpoint.restore_from(sub, self._group, partial=partial)
            except CorruptCheckpointError as exc:
                if not fallback:
                    raise
                log.error("cannot restore %s (%s); falling back to the previous checkpoint", sub.url, exc)
                skipped.append(name)
                continue
            except ValueError as exc:
                parsed = catalog.parse_name(name)
                if parsed is None or parsed[0] == self._name:
                    raise
                raise ValueError(
                    f"{exc}. The latest checkpoint of {self._storage.url} is {sub.url}, of another checkpoint_name "
                    f"than this manager's ({self._name!r}): one directory is meant for one run — give this job "
                    "its own directory, or restore with partial=True if the states overlap"
                ) from None
            if self._group.rank == 0:
                self._restored(name, skipped)
            if self._checkpoint_interval is not None:
                self._last_checkpoint_step = _evaluate_step(self._step_counter)
            return sub.url
        if names and fallback:
            raise CorruptCheckpointError(f"no checkpoint of {self._storage.url} restores: all are damaged")
        if self._init_fn is not None:
            self._init_fn()
        return None

    def _restored(self, name: str, skipped: list[str]) -> None:
        """Rank 0, after restoring ``name``: the next save follows it; if it is
        older than the newest commit, the ones after it are abandoned by that save."""
        with self._lock:
            entry = self._entries[name]
            pos = entry.position
            valid = self._dir.valid
            newest = valid[-1].position if valid else None
            ranges = []
            for lo, hi in self._ranges:  # restoring an abandoned checkpoint takes back what led to it
                ranges.append((pos, hi) if lo < pos <= hi else (lo, hi))
            ranges = [(lo, hi) for lo, hi in ranges if lo < hi]
            if newest is not None and pos < newest:
                ranges.append((pos, newest))
                log.warning(
                    "restored %s, older than the newest checkpoint %s: the checkpoints committed after it are "
                    "abandoned when the next save commits (never latest again, retired first)",
                    self._storage.url_for(name),
                    self._storage.url_for(valid[-1].name),
                )
            self._ranges = ranges
            self._follows = pos
        own_skipped = [catalog.parse_name(n) for n in skipped]
        past = max((p[1] for p in own_skipped if p is not None and p[0] == self._name), default=0)
        if past > self._checkpoint.save_counter:
            # a newer checkpoint of this name is damaged (skipped): number the next save past it,
            # or every save would collide with it
            log.warning(
                "restored %s, but %s does not restore: the next save is numbered %d",
                self._storage.url_for(name),
                self._url(past),
                past + 1,
            )
            self._checkpoint.save_counter = past


def _exists_message(url: str) -> str:
    return (
        f"checkpoint {url} is already committed and is never overwritten. A restarted job "
        "should call manager.restore_or_initialize() before saving (to continue the numbering), "
        "or pass checkpoint_number= explicitly. Nothing was changed."
    )


def _host_copy(leaf: Leaf) -> Leaf:
    """A leaf whose bytes are a private host copy (async save): the training
    loop may change its tensors once ``save()`` returns."""
    if leaf.shards is not None:
        sa = leaf.shards
        pieces = [(o, np.array(d, copy=True, order="C")) for o, d in sa.pieces]
        copied = ShardedArray(sa.shape, sa.dtype, pieces, dict(sa.boxes))
        return Leaf(leaf.path, leaf.array, leaf.scalar, shards=copied, per_rank=leaf.per_rank)
    return Leaf(leaf.path, np.array(leaf.array, copy=True, order="C"), leaf.scalar, per_rank=leaf.per_rank)


def _json_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"metric names must be str, got {k!r}")
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else v
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise TypeError(f"metric {k!r} must be a JSON scalar, got {type(v).__name__}")
        if isinstance(v, float) and math.isinf(v):
            raise ValueError(f"metric {k!r} is infinite; JSON cannot hold it")
        out[k] = v
    return out


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
    storage = open_storage(os.fspath(directory), storage_options)
    latest = directory_model.read_view(storage).latest
    return None if latest is None else storage.url_for(latest.name)
