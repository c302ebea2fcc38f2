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
(:mod:`cloudckpt.checkpoint_io`, :mod:`cloudckpt.catalog`,
:mod:`cloudckpt.ownership`, :mod:`cloudckpt.statefile`) with storage handles.

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

from . import adapters, catalog, ownership, retention
from .arrays import StoreOptions
from .checkpoint import Checkpoint
from .checkpoint_io import read_manifest, write_checkpoint
from .errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    OwnershipLostError,
)
from .group import agree, leader_call, resolve_group
from .shards import ShardedArray
from .statefile import CheckpointState, read_state_file, write_state_file
from .storage import Storage, open_storage, validate_key
from .tree import Leaf, flatten

__all__ = ["CheckpointManager", "latest_checkpoint"]

log = logging.getLogger("cloudckpt")


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got bool")
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
        max_to_keep: how many checkpoints stay in the active set; ``None`` keeps all.
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
            :class:`cloudckpt.group.Group`); default: torch.distributed's
            default group when it is initialized with several processes.

    In a distributed job every rank creates the manager and calls ``save``
    and ``restore_or_initialize`` at the same points. Rank 0 decides (the
    checkpoint number, interval skips, ownership), commits, writes the state
    file and applies retention; every rank writes its share of the data and
    learns the outcome, and a failure on any rank raises on all of them.

    Checkpoints in the directory that were not written by a manager
    (``Checkpoint.write``, ``cloudckpt.save``) count for
    :attr:`latest_checkpoint` and are restored, but are never managed: not
    listed in :attr:`checkpoints`, never deleted (as in TF).

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
        >>> [url.rsplit("/", 1)[1] for url in manager.checkpoints]
        ['ckpt-6', 'ckpt-11']

        A restarted job resumes from the latest checkpoint:

        >>> params2, step2 = {"w": np.zeros(2)}, np.array(0)
        >>> again = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(params=params2, step=step2), run, max_to_keep=2)
        >>> again.restore_or_initialize().endswith("ckpt-11"), params2["w"], int(step2)
        (True, array([11., 11.]), 11)
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        directory: str | os.PathLike[str],
        max_to_keep: int | None,
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
        validate_key(checkpoint_name)
        if checkpoint_name in (ownership.OWNER_PREFIX, "checkpoint"):
            raise ValueError(f"checkpoint_name {checkpoint_name!r} is reserved")
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
        self._maybe_delete: OrderedDict[int, float] = OrderedDict()
        self._metrics: dict[int, float | None] = {}
        self._manifests: dict[int, dict[str, Any]] = {}
        self._latest: int | None = None
        self._last_preserved = 0.0
        self._recovered: dict[tuple[int, Any], float | None] = {}
        self._failed_attempts: list[tuple[str, str]] = []
        self._pending: threading.Thread | None = None
        self._pending_error: BaseException | None = None
        self._taken = 0
        self._group = resolve_group(process_group)
        if self._group.size == 1:
            self._reconcile(initial=True)
        else:
            self._apply_view(leader_call(self._group, lambda: (self._reconcile(initial=True), self._view())[1]))

    def _view(self) -> dict[str, Any]:
        """What the other ranks of a distributed job need to know of rank 0's state."""
        with self._lock:
            return {"latest": self._latest, "active": list(self._maybe_delete), "taken": self._taken}

    def _apply_view(self, view: dict[str, Any] | None) -> None:
        if not view or self._group.rank == 0:
            return
        with self._lock:
            self._latest = view["latest"]
            self._maybe_delete = OrderedDict((int(n), 0.0) for n in view["active"])
            self._taken = int(view["taken"])

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
        """Committed checkpoints in the active set, oldest first, as full URLs.

        Checkpoints preserved by ``keep_checkpoint_every_n_hours`` are not
        listed (as in TF).

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

    @property
    def latest_checkpoint(self) -> str | None:
        """URL of the newest committed checkpoint, or None. Moves only when a save commits.

        Example:
            >>> import numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-latest-attr", 2)
            >>> m.latest_checkpoint is None
            True
            >>> m.save(checkpoint_number=7) == m.latest_checkpoint == "memory://doc-latest-attr/ckpt-7"
            True
        """
        with self._lock:
            return None if self._latest is None else self._url(self._latest)

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

    def _scan(self) -> tuple[list[catalog.Entry], list[catalog.Entry], list[catalog.Entry]]:
        """(valid committed, fenced, others) entries of the directory."""
        entries = catalog.scan(self._storage, self._name)
        committed = [e for e in entries if e.status == "committed"]
        managed = [e for e in committed if e.managed]
        claims: list[ownership.Claim] = []
        if managed:
            claims = ownership.list_claims(self._storage, above=min(e.epoch for e in managed))
        valid: list[catalog.Entry] = []
        fenced: list[catalog.Entry] = []
        for e in committed:
            (fenced if e.managed and ownership.is_fenced(e.epoch, e.number, claims) else valid).append(e)
        others = [e for e in entries if e.status != "committed"]
        return valid, fenced, others

    def _reconcile(
        self, *, initial: bool = False
    ) -> tuple[list[catalog.Entry], list[catalog.Entry], list[catalog.Entry]]:
        """Rebuild the in-memory state from the manifests (the truth).

        As TF on recovery: the last preserved timestamp is the newest one
        recorded (state file, manifests, preserved markers); a managed
        checkpoint stays in the active set only if it is newer than that,
        timestamps are capped at the current clock, and a clock behind the
        last preservation is warned about and taken as the new preservation
        time, so that nothing recovered is deleted by mistake.
        """
        valid, fenced, others = self._scan()
        # numbers that can never be saved again: a manifest is there, whether it
        # parses or not (damaged, or written by a newer cloudckpt)
        self._taken = max(
            [e.number for e in valid] + [e.number for e in others if e.status in ("corrupt", "newer")],
            default=0,
        )
        now = self._now()
        file_state = read_state_file(self._storage)
        candidates = []
        if file_state is not None and file_state.last_preserved_timestamp is not None:
            candidates.append(file_state.last_preserved_timestamp)
        for e in valid:
            assert e.manifest is not None
            lp = e.manifest["writer"].get("last_preserved_timestamp")
            if isinstance(lp, (int, float)) and not isinstance(lp, bool) and math.isfinite(lp):
                candidates.append(float(lp))
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
        active: OrderedDict[int, float] = OrderedDict()
        for e in sorted(valid, key=lambda e: e.number):
            if not e.managed or e.preserved:
                continue
            key = (e.number, e.manifest["writer"].get("attempt") if e.manifest else None)
            if initial or key not in self._recovered:
                ts = min(e.created, now)
                self._recovered[key] = ts if ts > last_preserved else None
            ts_or_none = self._recovered[key]  # decided when first seen, as TF decides at start
            if ts_or_none is not None:
                active[e.number] = ts_or_none
        with self._lock:
            self._last_preserved = last_preserved
            self._maybe_delete = active
            self._manifests = {e.number: e.manifest for e in valid if e.manifest is not None}
            self._metrics = {e.number: self._metric_of(e.manifest) for e in valid}
            self._latest = max((e.number for e in valid), default=None)
        if file_state is not None and not self._state_matches(file_state):
            log.debug("state file of %s is stale; rebuilt from the manifests", self._storage.url)
        return valid, fenced, others

    def _metric_of(self, manifest: Mapping[str, Any] | None) -> float | None:
        if self._best_metric is None or not manifest:
            return None
        metrics = manifest.get("metadata", {}).get("metrics")
        if not isinstance(metrics, dict):
            return None
        v = metrics.get(self._best_metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def _state(self) -> CheckpointState:
        with self._lock:
            return CheckpointState(
                None if self._latest is None else self._dirname(self._latest),
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
        if self._epoch is not None:
            ownership.check_owner(self._storage, self._epoch)
            return
        self._reconcile()
        # what the claim has seen: the newest checkpoint a manager committed (checkpoints
        # written without a manager are never fenced, so they do not count)
        with self._lock:
            seen = max((n for n, m in self._manifests.items() if m["writer"].get("epoch") is not None), default=None)
        c = ownership.claim(self._storage, seen_upto=seen, writer=self._writer_id, clock=self._clock)
        self._epoch = c.epoch
        log.debug("claimed %s with epoch %d (seen up to %s)", self._storage.url, c.epoch, c.seen_upto)
        # an older-epoch save may have committed between our scan and our claim: it is fenced now
        self._collect(*self._reconcile())
        self._write_state()

    def _collect(
        self, valid: list[catalog.Entry], fenced: list[catalog.Entry], others: list[catalog.Entry]
    ) -> list[str]:
        """Remove fenced checkpoints and orphaned data that no live writer can still be using:
        data of older epochs and this manager's own failed attempts. Returns the URLs removed."""
        assert self._epoch is not None
        removed: list[str] = []
        for e in fenced:
            log.warning(
                "removing %s: committed by epoch %d after a newer claim (fenced)", self._url(e.number), e.epoch
            )
            self._delete_checkpoint(e.number)
            removed.append(self._url(e.number))
        for e in [*valid, *others]:
            if e.status in ("newer", "corrupt"):
                continue  # not ours to judge; left alone
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
            for prefix in ["", *(e.name for e in [*valid, *others])]:
                for url in self._storage.collect_temporaries(prefix):
                    removed.append(url)
                    log.info("retention: removed the temp file of a killed write %s", url)
        ownership.prune_claims(self._storage, min([self._epoch, *(e.epoch for e in valid if e.managed)]))
        return removed

    def _collect_own_failures(self) -> list[str]:
        with self._lock:
            failed, self._failed_attempts = self._failed_attempts, []
        removed = []
        for dirname, prefix in failed:
            sub = self._storage.child(dirname)
            try:
                try:
                    if read_manifest(sub).get("data") == prefix:
                        continue  # the "failed" commit did land: its data is in use
                except CheckpointNotFoundError:
                    pass
                sub.delete_prefix(prefix)
                removed.append(sub.url_for(prefix))
                log.info("retention: removed data of a failed save %s", removed[-1])
            except CheckpointError as exc:
                log.debug("could not collect %s/%s: %s", dirname, prefix, exc)
                with self._lock:
                    self._failed_attempts.append((dirname, prefix))
        return removed

    def gc(self) -> list[str]:
        """Collect orphaned data of crashed saves and fenced checkpoints (owner only).

        Claims the directory if this manager has not yet (which collects
        already). Returns the URLs removed.

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
            valid, fenced, others = self._reconcile()
            return self._collect(valid, fenced, others)

        return collect() if self._group.size == 1 else list(leader_call(self._group, collect))

    # -- deleting ------------------------------------------------------------
    def _delete_checkpoint(self, number: int) -> None:
        """Manifest first (invisible at once), then everything else under it."""
        name = self._dirname(number)
        sub = self._storage.child(name)
        sub.delete(["manifest.json"])
        self._storage.delete_prefix(name)
        with self._lock:
            self._maybe_delete.pop(number, None)
            self._manifests.pop(number, None)
            self._metrics.pop(number, None)
            if self._latest == number:
                self._latest = max(self._manifests, default=None)

    def _remove_if_fenced(self, number: int) -> bool:
        """If checkpoint ``number`` is fenced, remove it and return True (also if it is gone)."""
        sub = self._storage.child(self._dirname(number))
        try:
            manifest = read_manifest(sub)
        except CheckpointNotFoundError:
            return True
        except CheckpointError:
            return False
        epoch = manifest["writer"].get("epoch")
        assert self._epoch is not None
        if epoch is None or epoch >= self._epoch:
            return False
        if not ownership.is_fenced(epoch, number, ownership.list_claims(self._storage, above=epoch)):
            return False
        log.warning("removing %s: committed by epoch %d after a newer claim (fenced)", sub.url, epoch)
        self._delete_checkpoint(number)
        return True

    def _sweep(self) -> bool:
        """Apply retention; return whether anything left the active set."""
        with self._lock:
            active = [retention.Managed(n, ts, self._metrics.get(n)) for n, ts in self._maybe_delete.items()]
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
            log.info("retention: preserving %s for good (keep_checkpoint_every_n_hours)", self._url(m.number))
        with self._lock:
            self._last_preserved = decision.last_preserved
        for m in decision.delete:
            log.info("retention: deleting %s", self._url(m.number))
            self._delete_checkpoint(m.number)
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
        if that number is committed already (nothing is overwritten). With
        ``async_save`` in a single process, the ownership claim and check run
        in the background, and their failure is raised by the next ``save()``
        or :meth:`sync`.

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
            with self._lock:
                known = number in self._manifests
            if known:  # the view of an owner is current: no request is needed to know, nothing is written
                raise CheckpointExistsError(_exists_message(self._url(number)))
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
                with self._lock:
                    known = number in self._manifests
                if known:  # committed by another writer before our claim
                    raise CheckpointExistsError(_exists_message(self._url(number)))
            self._commit(number, node, leaves, meta)
        except BaseException as exc:
            log.error("async save of %s failed: %s", self._url(number), exc)
            with self._lock:
                self._pending_error = exc
        finally:
            with _PENDING_LOCK:
                _PENDING.discard(threading.current_thread())

    def _commit(self, number: int, node: dict[str, Any], leaves: list[Leaf], meta: dict[str, Any]) -> None:
        name = self._dirname(number)
        sub = self._storage.child(name)
        leader = self._group.rank == 0
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
                    writer_extra={"last_preserved_timestamp": self._last_preserved},
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
        sub = self._storage.child(self._dirname(number))
        unconfirmed: CheckpointError | None = None
        try:
            ownership.check_owner(self._storage, self._epoch)
        except OwnershipLostError as exc:
            raise OwnershipLostError(
                f"{exc}. The checkpoint {sub.url} committed meanwhile belongs to no owner: it is fenced "
                "(never listed or restored) and the new owner removes it"
            ) from None
        except CheckpointError as exc:
            # committed, but ownership could not be re-checked (storage trouble):
            # record the commit so that latest_checkpoint and retention know it, then raise
            unconfirmed = exc
        with self._lock:
            if self._latest is not None and number < self._latest:
                log.warning(
                    "saved %s below the latest checkpoint %s: checkpoints are ordered by number, so it "
                    "is the oldest and retires first (did the job skip restore_or_initialize()?)",
                    sub.url,
                    self._url(self._latest),
                )
            self._maybe_delete[number] = float(manifest["created"])
            self._maybe_delete = OrderedDict(sorted(self._maybe_delete.items()))
            self._manifests[number] = manifest
            self._metrics[number] = self._metric_of(manifest)
            self._latest = number if self._latest is None else max(self._latest, number)
        if unconfirmed is not None:
            raise unconfirmed
        self._write_state()  # before retention, as TF: a crash while deleting still names the new one
        if self._sweep():
            self._write_state()
        self._collect_own_failures()
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
        """Restore the latest checkpoint and return its URL; else call ``init_fn`` and return None.

        Claims the directory for this manager. Restore is strict unless
        ``partial``. A damaged latest checkpoint raises
        :class:`~cloudckpt.CorruptCheckpointError`; with ``fallback=True`` the
        newest checkpoint that restores is used instead (logged as an error).

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
                return {"numbers": sorted(self._manifests, reverse=True), "taken": self._taken}

        plan = candidates() if self._group.size == 1 else leader_call(self._group, candidates)
        numbers = [int(n) for n in plan["numbers"]]
        for n in numbers:
            sub = self._storage.child(self._dirname(n))
            try:
                self._checkpoint.restore_from(sub, self._group, partial=partial)
            except CorruptCheckpointError as exc:
                if not fallback:
                    raise
                log.error("cannot restore %s (%s); falling back to the previous checkpoint", sub.url, exc)
                continue
            taken = int(plan["taken"])
            if self._checkpoint.save_counter < taken:
                # a newer checkpoint is damaged (skipped): number the next save past it,
                # or every save would collide with it
                log.warning(
                    "restored %s, but %s exists and does not restore: the next save is numbered %d",
                    sub.url,
                    self._url(taken),
                    taken + 1,
                )
                self._checkpoint.save_counter = taken
            if self._checkpoint_interval is not None:
                self._last_checkpoint_step = _evaluate_step(self._step_counter)
            return sub.url
        if numbers and fallback:
            raise CorruptCheckpointError(f"no checkpoint of {self._storage.url} restores: all are damaged")
        if self._init_fn is not None:
            self._init_fn()
        return None


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


def latest_checkpoint(directory: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """URL of the newest committed checkpoint in ``directory`` (None if there is none).

    Looks at the manifests, not the state file, so it is right even after a
    crash between commit and state-file update. Fenced checkpoints are skipped.

    Example:
        >>> import numpy as np, cloudckpt
        >>> _ = cloudckpt.save("memory://doc-latest/ckpt-4", {"w": np.ones(1)})
        >>> cloudckpt.latest_checkpoint("memory://doc-latest")
        'memory://doc-latest/ckpt-4'
    """
    storage = open_storage(directory, storage_options)
    entries = [e for e in catalog.scan(storage) if e.status == "committed"]
    if not entries:
        return None
    managed = [e for e in entries if e.managed]
    claims = ownership.list_claims(storage, above=min(e.epoch for e in managed)) if managed else []
    valid = [e for e in entries if not (e.managed and ownership.is_fenced(e.epoch, e.number, claims))]
    if not valid:
        return None
    best = max(valid, key=lambda e: (e.number, e.created))
    return storage.url_for(best.name)
