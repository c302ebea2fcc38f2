"""The distributed leader protocol of a manager: rank 0 decides, every rank follows.

In a job of several processes every rank creates the manager and calls
``save``, ``restore``, ``restore_or_initialize`` and ``gc`` at the same
points. Each such call has one decision that only rank 0 takes — it alone
reads the directory, claims it and keeps the model of
:mod:`cloudckpt.manager.owner` — and whose outcome (a small JSON value, or
rank 0's error) every rank receives (:func:`cloudckpt.distributed.group.leader_call`):

=====================  ========================================================
on construction        reconcile with the manifests; share latest and active set
``save``               the checkpoint number, or skip (interval); claim or check
                       ownership; the new ``save_counter`` and step
a failed commit        whether the number was taken by a fenced checkpoint (then
                       removed and retried) or the save fails on every rank
``restore*``           which checkpoints to try, in order, and which are damaged
``gc``                 what was removed
=====================  ========================================================

After a commit, rank 0 shares its new view through the commit's outcome
(:meth:`LeaderProtocol._view`). With one process the decisions run in place.

Example:
    >>> import numpy as np, cloudckpt
    >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-leader", 2)
    >>> m._on_leader(lambda: {"answer": 42})
    {'answer': 42}
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from cloudckpt.distributed.group import leader_call
from cloudckpt.errors import CheckpointExistsError, CheckpointNotFoundError
from cloudckpt.manager.options import evaluate_step
from cloudckpt.manager.owner import Ownership, exists_message

__all__ = ["LeaderProtocol"]

T = TypeVar("T")


class LeaderProtocol(Ownership):
    """The decisions rank 0 takes for every rank (see the module docstring).

    Example:
        >>> import numpy as np, cloudckpt
        >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), "memory://doc-leader-cls", 2)
        >>> isinstance(m, LeaderProtocol), m._view()
        (True, {'latest': None, 'active': []})
    """

    _group: Any
    _last_checkpoint_step: int | None

    def _on_leader(self, decide: Callable[[], T]) -> T:
        """Run ``decide`` on rank 0; every rank returns its result or raises its error."""
        if self._group.size == 1:
            return decide()
        return leader_call(self._group, decide)

    def _apply_view(self, view: dict[str, Any] | None) -> None:
        if not view or self._group.rank == 0:
            return
        with self._lock:
            self._latest_name = view["latest"]
            self._maybe_delete = OrderedDict((int(n), 0.0) for n in view["active"])

    def _start(self) -> None:
        """On construction: rank 0 reads the directory; the others learn its view."""
        if self._group.size == 1:
            self._reconcile(initial=True)
            return
        self._apply_view(self._on_leader(lambda: (self._reconcile(initial=True), self._view())[1]))

    def _owner_in_background(self) -> bool:
        """Whether an async save claims (or re-checks) ownership in its
        background thread rather than in ``save()``: with one process, so that
        the first save does not block on the claim's requests. The number is
        still refused in ``save()`` if the view (reconciled on construction)
        knows it; a number taken meanwhile fails the create-only commit."""
        return self._async and self._group.size == 1

    def _decide(self, number_arg: int | None, check_interval: bool) -> int | None:
        """The number of the next checkpoint, or None to skip (interval); rank 0
        decides, and every rank takes over its ``save_counter`` and step."""
        d = self._on_leader(lambda: self._decide_on_leader(number_arg, check_interval))
        if self._group.rank != 0 and not d.get("skip"):
            self._checkpoint.save_counter = int(d["save_counter"])
            self._last_checkpoint_step = d["step"]
        return None if d.get("skip") else int(d["number"])

    def _decide_on_leader(self, number_arg: int | None, check_interval: bool) -> dict[str, Any]:
        interval = self._settings.checkpoint_interval
        current_step = None
        if interval is not None:
            current_step = evaluate_step(self._settings.step_counter)
            if self._last_checkpoint_step is not None:
                if current_step == self._last_checkpoint_step:
                    return {"skip": True}
                if check_interval and current_step < self._last_checkpoint_step + interval:
                    return {"skip": True}
        if not self._owner_in_background():
            self._ensure_owner()
        if interval is not None:
            self._last_checkpoint_step = current_step
        self._checkpoint.save_counter = self._checkpoint.save_counter + 1
        number = self._checkpoint.save_counter if number_arg is None else number_arg
        self._check_number(number)
        return {"number": number, "save_counter": self._checkpoint.save_counter, "step": self._last_checkpoint_step}

    def _retry_taken_number(self, number: int, first: bool) -> bool:
        """After a commit found ``number`` taken: True to retry once the fenced
        checkpoint that held it is removed; else every rank fails with
        :class:`~cloudckpt.CheckpointExistsError` (or, on a lost owner,
        :class:`~cloudckpt.OwnershipLostError`)."""

        def decide() -> bool:
            assert self._epoch is not None
            self._layout.check_owner(self._epoch)  # a lost owner learns that, not this
            if first and self._remove_if_fenced(number):
                return True
            raise CheckpointExistsError(exists_message(self._url(number))) from None

        return bool(self._on_leader(decide))

    def _restore_candidates(self) -> dict[str, Any]:
        """Rank 0 claims the directory and names what ``restore_or_initialize`` tries, in order."""

        def decide() -> dict[str, Any]:
            self._ensure_owner()
            with self._lock:
                view = self._dir
                order = [] if view.latest is None or view.latest is view.restorable else [view.latest]
                order += view.newest_first()
                return {"names": [e.name for e in order], "damaged": {e.name: [e.status, e.error] for e in view.damaged}}

        return self._on_leader(decide)

    def _restore_plan(self, name: str) -> dict[str, Any]:
        """Rank 0 claims the directory and checks that ``name`` can be restored."""

        def decide() -> dict[str, Any]:
            self._ensure_owner()
            with self._lock:
                entry = self._entries.get(name)
                view = self._dir
                if entry is None or entry.status == "partial":
                    raise CheckpointNotFoundError(
                        f"no checkpoint {self._layout.url_for(name)}: the directory holds "
                        f"{[e.name for e in view.valid] or 'no checkpoint'}"
                    )
                if entry in view.fenced:
                    raise CheckpointNotFoundError(
                        f"{self._layout.url_for(name)} was committed by a manager that had lost the directory "
                        "(fenced): it is not restored"
                    )
                return {"names": [name], "damaged": {e.name: [e.status, e.error] for e in view.damaged}}

        return self._on_leader(decide)

    def _collect_on_leader(self) -> list[str]:
        """Rank 0 claims (or checks) ownership, re-reads the directory and collects; the URLs removed."""

        def decide() -> list[str]:
            self._ensure_owner()
            assert self._epoch is not None
            self._layout.check_owner(self._epoch)
            view = self._reconcile()
            removed = self._collect(view)
            self._layout.prune_claims(self._claims)
            return removed

        return list(self._on_leader(decide))
