"""Rank 0's model of the directory: ownership, fencing, garbage collection, the lineage of saves.

The decisions of a :class:`~cloudckpt.CheckpointManager` about what is on
storage: it claims the directory (:mod:`cloudckpt.layout.ownership`: claim,
scan, record what was accepted), re-checks ownership before changing
anything, removes what no live writer can still use (fenced checkpoints and
orphaned data of its own name), numbers its commits within its epoch and
records the rollbacks it made (abandoned ranges); it keeps the active set
from the manifests, applies the retention that
:mod:`cloudckpt.manager.retention` decides (preserve or uncommit-and-delete)
and writes the state file. Every read and write goes through the manager's
:class:`~cloudckpt.layout.handle.DirectoryHandle`.

:class:`Ownership` is the base class of the manager that holds this model;
:mod:`cloudckpt.manager.leader` runs its decisions on rank 0,
:mod:`cloudckpt.manager.checkpoint_manager` builds TF's semantics on it.

Example:
    >>> import numpy as np, cloudckpt
    >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-owner", 2)
    >>> m.epoch, m.save().endswith("ckpt-1"), m.epoch
    (None, True, 1)
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from typing import Any

from cloudckpt.checkpoint import Checkpoint
from cloudckpt.errors import CheckpointError, CheckpointExistsError, ObjectNotFoundError, OwnershipLostError
from cloudckpt.format.manifest import header_of
from cloudckpt.layout import directory as directory_model
from cloudckpt.layout import ownership
from cloudckpt.layout.catalog import Entry, Position
from cloudckpt.layout.handle import DirectoryHandle
from cloudckpt.layout.names import checkpoint_dirname, parse_name
from cloudckpt.layout.statefile import CheckpointState
from cloudckpt.manager import retention
from cloudckpt.manager.options import Settings

__all__ = ["Ownership", "exists_message"]

log = logging.getLogger("cloudckpt")


def exists_message(url: str) -> str:
    """What a save that would overwrite the committed checkpoint ``url`` is told.

    Example:
        >>> exists_message("memory://run/ckpt-3").split(".")[0]
        'checkpoint memory://run/ckpt-3 is already committed and is never overwritten'
    """
    return (
        f"checkpoint {url} is already committed and is never overwritten. A restarted job "
        "should call manager.restore_or_initialize() before saving (to continue the numbering), "
        "or pass checkpoint_number= explicitly. Nothing was changed."
    )


class Ownership:
    """The directory model, ownership and gc decisions of a manager (its base class).

    Example:
        >>> import numpy as np, cloudckpt, tempfile
        >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 2)
        >>> isinstance(m, Ownership), m.gc()
        (True, [])
    """

    _checkpoint: Checkpoint
    _layout: DirectoryHandle
    _settings: Settings
    _name: str
    _async: bool

    def _init_model(self, layout: DirectoryHandle, writer_id: str) -> None:
        """The model of a directory not yet read (:meth:`_reconcile` reads it)."""
        self._layout = layout
        self._writer_id = writer_id
        self._lock = threading.RLock()
        self._epoch: int | None = None
        self._seq = 0  # commits made under self._epoch
        self._entries: dict[str, Entry] = {}  # every <name>-<N> of the directory, as last known
        self._claims: list[ownership.Claim] = []
        self._dir = directory_model.classify([], [])
        self._ranges: list[tuple[Position, Position]] = []  # abandoned ranges the next save records
        self._follows: Position | None = None  # the checkpoint the next save continues from
        self._maybe_delete: OrderedDict[int, float] = OrderedDict()
        self._latest_name: str | None = None
        self._last_preserved = 0.0
        self._recovered: dict[tuple[int, Any], float | None] = {}
        self._failed_attempts: list[tuple[str, str]] = []

    # -- names ---------------------------------------------------------------
    def _dirname(self, number: int) -> str:
        return checkpoint_dirname(self._name, number)

    def _url(self, number: int) -> str:
        return self._layout.url_for(self._dirname(number))

    def _now(self) -> float:
        return float(self._settings.clock())

    def _own(self) -> dict[int, Entry]:
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
        view = self._layout.read_view()
        with self._lock:
            self._entries = {e.name: e for e in view.entries}
            self._claims = list(view.claims)
        self._reclassify()
        view = self._dir
        own = [e for e in view.valid if e.checkpoint_name == self._name]
        now = self._now()
        file_state = self._layout.read_state_file()
        candidates = [c for c in directory_model.preserved_times(file_state, own) if math.isfinite(c)]
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
            log.debug("state file of %s is stale; rebuilt from the manifests", self._layout.url)
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
            self._layout.check_owner(self._epoch)
            return
        c = self._layout.claim(writer=self._writer_id, clock=self._settings.clock)
        view = self._reconcile()
        table = directory_model.accepted_table(view)
        mine = self._layout.record_accepted(c.epoch, table)
        with self._lock:
            self._epoch = c.epoch
            self._seq = 0
            self._claims = [*(x for x in self._claims if x.epoch != c.epoch), mine]
        log.debug("claimed %s with epoch %d (accepted %s)", self._layout.url, c.epoch, table)
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
                self._layout.url_for(e.name),
                e.epoch,
            )
            self._delete_entry(e.name)
            removed.append(self._layout.url_for(e.name))
        for e in [*view.valid, *view.partial]:
            if e.checkpoint_name != self._name:
                continue
            removed.extend(self._layout.collect_orphans(e, self._epoch))
        removed.extend(self._collect_own_failures())
        # a SIGKILL between a temp write and its rename (state file, manifest): local disk only
        removed.extend(self._layout.collect_temporaries(e.name for e in view.entries if e.checkpoint_name == self._name))
        return removed

    def _collect_own_failures(self) -> list[str]:
        with self._lock:
            failed, self._failed_attempts = self._failed_attempts, []
        removed = []
        for dirname, prefix in failed:
            try:
                url = self._layout.collect_failed_attempt(dirname, prefix)
                if url is not None:
                    removed.append(url)
            except CheckpointError as exc:
                log.debug("could not collect %s/%s: %s", dirname, prefix, exc)
                with self._lock:
                    self._failed_attempts.append((dirname, prefix))
        return removed

    def _delete_entry(self, name: str) -> None:
        """Uncommit and delete ``name`` (manifest first: invisible at once), and forget it."""
        self._layout.delete_checkpoint(name)
        with self._lock:
            self._entries.pop(name, None)
        self._reclassify()
        self._rebuild_active()

    def _remove_if_fenced(self, number: int) -> bool:
        """If checkpoint ``number`` is fenced, remove it and return True (also if it is gone)."""
        try:
            header = self._layout.read_header(self._dirname(number))
        except ObjectNotFoundError:
            return True
        except CheckpointError:
            return False
        entry = Entry(self._dirname(number), self._name, number, "committed", header=header)
        assert self._epoch is not None
        if not entry.managed or entry.epoch >= self._epoch:
            return False
        if not directory_model.is_fenced(entry, self._layout.list_claims(above=entry.epoch)):
            return False
        log.warning(
            "removing %s: committed by epoch %d after a newer claim (fenced)", self._layout.url_for(entry.name), entry.epoch
        )
        self._delete_entry(entry.name)
        return True

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
            raise CheckpointExistsError(exists_message(self._url(number)))

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

    def _after_commit(self, number: int, manifest: dict[str, Any]) -> dict[str, Any]:
        """Rank 0, right after the commit: re-check ownership, record the new
        checkpoint, write the state file, apply retention. Returns the view
        the other ranks take over."""
        assert self._epoch is not None
        name = self._dirname(number)
        url = self._layout.url_for(name)
        unconfirmed: CheckpointError | None = None
        try:
            self._layout.check_owner(self._epoch)
        except OwnershipLostError as exc:
            raise OwnershipLostError(
                f"{exc}. The checkpoint {url} committed meanwhile belongs to no owner: unless the new "
                "owner accepted it, it is fenced (never listed or restored) and `cloudckpt gc` removes it"
            ) from None
        except CheckpointError as exc:
            # committed, but ownership could not be re-checked (storage trouble):
            # record the commit so that latest_checkpoint and retention know it, then raise
            unconfirmed = exc
        entry = Entry(name, self._name, number, "committed", header=header_of(manifest))
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
            self._layout.prune_claims(self._claims)
        return self._view()

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
                    self._layout.url_for(name),
                    self._layout.url_for(valid[-1].name),
                )
            self._ranges = ranges
            self._follows = pos
        own_skipped = [parse_name(n) for n in skipped]
        past = max((p[1] for p in own_skipped if p is not None and p[0] == self._name), default=0)
        if past > self._checkpoint.save_counter:
            # a newer checkpoint of this name is damaged (skipped): number the next save past it,
            # or every save would collide with it
            log.warning(
                "restored %s, but %s does not restore: the next save is numbered %d",
                self._layout.url_for(name),
                self._url(past),
                past + 1,
            )
            self._checkpoint.save_counter = past

    def _view(self) -> dict[str, Any]:
        """What the other ranks of a distributed job need to know of rank 0's state."""
        with self._lock:
            return {"latest": self._latest_name, "active": list(self._maybe_delete)}

    # -- retention ----------------------------------------------------------
    def _sweep(self) -> bool:
        """Apply retention; return whether anything left the active set."""
        with self._lock:
            own = self._own()
            active = [retention.Managed(n, ts, self._metric_of(own.get(n))) for n, ts in self._maybe_delete.items()]
        decision = retention.sweep(
            active,
            max_to_keep=self._settings.max_to_keep,
            keep_hours=self._settings.keep_hours,
            last_preserved=self._last_preserved,
            best_mode=self._settings.best_mode if self._settings.best_metric else None,
        )
        if not decision.preserve and not decision.delete:
            return False
        assert self._epoch is not None
        self._layout.check_owner(self._epoch)  # re-check before changing anything
        for m in decision.preserve:
            self._layout.preserve(self._dirname(m.number), {"preserved_at": self._now(), "timestamp": m.timestamp})
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
    # -- the state file -------------------------------------------------------
    def _metric_of(self, entry: Entry | None) -> float | None:
        if self._settings.best_metric is None or entry is None or entry.header is None:
            return None
        metrics = entry.header.get("metadata", {}).get("metrics")
        if not isinstance(metrics, dict):
            return None
        v = metrics.get(self._settings.best_metric)
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
        self._layout.write_state_file(state)
