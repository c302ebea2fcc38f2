"""The model of a directory of checkpoints that every reader and writer shares.

The manager, :func:`cloudckpt.latest_checkpoint`, ``verify``, ``copy`` and
the command line all classify a directory through :func:`read_view`, so they
agree on what it holds:

- **valid**: committed (the manifest parses) and not fenced, in *commit
  order*: by :attr:`~cloudckpt.layout.catalog.Entry.position` — checkpoints written
  without a manager first, by number; then those of managers by ownership
  epoch and the sequence of commits within it.
- **fenced**: committed by a manager that had lost the directory, after the
  new owner recorded what it accepted (:mod:`cloudckpt.layout.ownership`). Never
  listed, restored or counted for latest; ``cloudckpt gc`` removes them.
- **abandoned**: valid, but left behind by a rollback (a manager restored an
  older checkpoint and saved after it). Recorded in the manifest of every
  later save (``writer.abandoned``: ranges of positions); the newest valid
  manifest is the record. Never again latest; retired first.
- **latest**: the newest valid checkpoint that is not abandoned, whatever its
  name — unless a damaged manifest (or one of a newer format) has a higher
  number than it: that one counts as the newest, so that restoring raises
  instead of silently going back (``fallback=True`` skips it).

Example:
    >>> import numpy as np, cloudckpt
    >>> from cloudckpt.storage import open_storage
    >>> for n in (3, 1):
    ...     _ = cloudckpt.save(f"memory://doc-dir-view/ckpt-{n}", {"w": np.ones(1)})
    >>> view = read_view(open_storage("memory://doc-dir-view"))
    >>> [e.name for e in view.valid], view.latest.name
    (['ckpt-1', 'ckpt-3'], 'ckpt-3')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cloudckpt.layout import catalog, ownership
from cloudckpt.layout.catalog import Entry, Position
from cloudckpt.layout.statefile import CheckpointState
from cloudckpt.storage import Storage

__all__ = ["View", "read_view", "classify", "is_fenced", "in_ranges", "accepted_table", "sort_key"]


def sort_key(e: Entry) -> tuple[Position, float, str]:
    """The commit order of committed entries (ties: commit time, then name).

    Example:
        >>> sort_key(Entry("ckpt-2", "ckpt", 2, "partial"))
        ((0, 0, 2), 0.0, 'ckpt-2')
    """
    return (e.position, e.created, e.name)


def in_ranges(position: Position, ranges: Sequence[tuple[Position, Position]]) -> bool:
    """Whether ``position`` lies in one of ``ranges`` (each ``(after, upto]``).

    Example:
        >>> in_ranges((1, 1, 5), [((1, 1, 3), (1, 1, 6))]), in_ranges((1, 1, 3), [((1, 1, 3), (1, 1, 6))])
        (True, False)
    """
    return any(lo < position <= hi for lo, hi in ranges)


def is_fenced(e: Entry, claims: Sequence[ownership.Claim]) -> bool:
    """Whether the committed entry ``e`` is fenced under ``claims``: written by a
    manager after a newer claim recorded what it accepted. The one rule every
    reader (manager, ``latest_checkpoint``, ``verify``, ``copy``, the CLI) applies.

    Example:
        >>> e = Entry("ckpt-4", "ckpt", 4, "committed", header={"writer": {"epoch": 1, "seq": 4}})
        >>> is_fenced(e, [ownership.Claim(2, accepted={1: 3})]), is_fenced(e, [ownership.Claim(2, accepted={1: 4})])
        (True, False)
    """
    return e.managed and ownership.is_fenced(e.epoch, e.position[2], claims)


def _ranges_of(e: Entry) -> list[tuple[Position, Position]]:
    raw = e.writer.get("abandoned") or []
    return [(tuple(lo), tuple(hi)) for lo, hi in raw]  # type: ignore[misc]


@dataclass
class View:
    """A directory as every reader sees it (see the module docstring).

    ``valid`` is in commit order; ``latest`` is the entry that counts as the
    newest (a valid one, or a damaged one numbered above it); ``restorable``
    the newest valid, non-abandoned one.
    """

    entries: list[Entry]
    claims: list[ownership.Claim]
    valid: list[Entry] = field(default_factory=list)
    fenced: list[Entry] = field(default_factory=list)
    damaged: list[Entry] = field(default_factory=list)
    partial: list[Entry] = field(default_factory=list)
    abandoned: set[str] = field(default_factory=set)
    ranges: list[tuple[Position, Position]] = field(default_factory=list)
    latest: Entry | None = None
    restorable: Entry | None = None

    @property
    def owner_epoch(self) -> int:
        """The epoch of the newest claim (0 if none)."""
        return self.claims[-1].epoch if self.claims else 0

    def is_abandoned(self, e: Entry) -> bool:
        """Whether the valid entry ``e`` was left behind by a rollback."""
        return e.name in self.abandoned

    def newest_first(self) -> list[Entry]:
        """The valid, non-abandoned entries, newest first, then the abandoned ones, newest first.

        The order in which a restore with ``fallback=True`` tries them.
        """
        kept = [e for e in self.valid if e.name not in self.abandoned]
        gone = [e for e in self.valid if e.name in self.abandoned]
        return kept[::-1] + gone[::-1]


def classify(entries: Sequence[Entry], claims: Sequence[ownership.Claim]) -> View:
    """Classify scanned ``entries`` under the ownership ``claims`` (see the module docstring).

    Example:
        >>> classify([], []).latest is None
        True
    """
    view = View(list(entries), list(claims))
    committed: list[Entry] = []
    for e in entries:
        if e.status == "committed":
            committed.append(e)
        elif e.status in ("corrupt", "newer"):
            view.damaged.append(e)
        else:
            view.partial.append(e)
    for e in sorted(committed, key=sort_key):
        (view.fenced if is_fenced(e, claims) else view.valid).append(e)
    newest_managed = [e for e in view.valid if e.managed]
    if newest_managed:
        view.ranges = _ranges_of(newest_managed[-1])
    view.abandoned = {e.name for e in view.valid if in_ranges(e.position, view.ranges)}
    kept = [e for e in view.valid if e.name not in view.abandoned]
    view.restorable = kept[-1] if kept else None
    view.latest = view.restorable
    above = [d for d in view.damaged if view.restorable is None or d.number > view.restorable.number]
    if above:
        view.latest = max(above, key=lambda d: (d.number, d.name))
    return view


def read_view(storage: Storage, checkpoint_name: str | None = None) -> View:
    """Scan the directory ``storage`` and classify it.

    The scan comes first and the claims are listed after it, so that a
    fenced commit the scan saw is fenced by a record this listing sees.
    ``checkpoint_name`` restricts the scan to one name (fencing and order are
    the same; "latest" is then that name's latest).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> read_view(open_storage("memory://doc-dir-empty")).valid
        []
    """
    entries = catalog.scan(storage, checkpoint_name)
    return classify(entries, ownership.list_claims(storage))


def accepted_table(view: View) -> dict[int, int]:
    """What a new claim accepts of ``view``: the last position of each epoch among the valid entries.

    Example:
        >>> accepted_table(classify([], []))
        {}
    """
    table: dict[int, int] = {}
    for e in view.valid:
        if e.managed:
            table[e.epoch] = max(table.get(e.epoch, 0), e.position[2])
    return table


def preserved_times(state: CheckpointState | None, entries: Iterable[Entry]) -> list[float]:
    """Every time a directory records for the last checkpoint preserved for good
    (``keep_checkpoint_every_n_hours``): the state file's
    ``last_preserved_timestamp``, each manifest's ``last_preserved``, and the
    commit time of each managed checkpoint that is preserved. The latest of
    them is where the next preservation interval starts.

    Example:
        >>> preserved_times(CheckpointState("ckpt-1", ["ckpt-1"], [5.0], 2.0), [])
        [2.0]
    """
    times = []
    if state is not None and state.last_preserved_timestamp is not None:
        times.append(state.last_preserved_timestamp)
    for e in entries:
        if e.last_preserved is not None:
            times.append(e.last_preserved)
        if e.preserved and e.managed:
            times.append(e.created)
    return times
