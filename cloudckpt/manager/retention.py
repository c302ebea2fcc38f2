"""Which checkpoints to keep: ``max_to_keep``, ``keep_checkpoint_every_n_hours``, best-N.

Pure decisions, no I/O. TensorFlow's rule: after a save, while more than
``max_to_keep`` checkpoints are in the active set, the oldest leaves it; it
is *preserved* (kept for good, no longer managed) if it is at least
``keep_checkpoint_every_n_hours`` younger than the last preserved one, else
deleted. With a ``best_metric`` the active set keeps the best N by that
metric instead of the newest N, and never drops the latest.

Example:
    >>> ckpts = [Managed(n, float(n) * 3600) for n in range(1, 6)]
    >>> d = sweep(ckpts, max_to_keep=2, keep_hours=None, last_preserved=0.0)
    >>> [c.number for c in d.delete], [c.number for c in d.keep]
    ([1, 2, 3], [4, 5])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Managed", "Decision", "sweep"]


@dataclass(frozen=True)
class Managed:
    """A checkpoint in the active set: number, commit timestamp, optional metric."""

    number: int
    timestamp: float
    metric: float | None = None


@dataclass
class Decision:
    """What a sweep decided: keep (active set), preserve (kept for good), delete."""

    keep: list[Managed] = field(default_factory=list)
    preserve: list[Managed] = field(default_factory=list)
    delete: list[Managed] = field(default_factory=list)
    last_preserved: float = 0.0


def _score(m: Managed, mode: str) -> float:
    if m.metric is None or (isinstance(m.metric, float) and math.isnan(m.metric)):
        return -math.inf
    return m.metric if mode == "max" else -m.metric


def sweep(
    active: Sequence[Managed],
    *,
    max_to_keep: int | None,
    keep_hours: float | None,
    last_preserved: float,
    best_mode: str | None = None,
) -> Decision:
    """Decide retention for ``active`` (oldest first; the last one is the latest).

    ``best_mode`` (``"max"``/``"min"``) ranks by metric instead of age.
    """
    d = Decision(last_preserved=last_preserved)
    if not max_to_keep or len(active) <= max_to_keep:
        d.keep = list(active)
        return d
    if best_mode is None:
        leaving = list(active[: len(active) - max_to_keep])
        d.keep = list(active[len(active) - max_to_keep :])
    else:
        latest = active[-1]
        ranked = sorted(active, key=lambda m: (_score(m, best_mode), m.number), reverse=True)
        kept = {id(m) for m in ranked[:max_to_keep]}
        if id(latest) not in kept:
            # never drop the latest: it replaces the worst of the best
            worst = ranked[max_to_keep - 1]
            kept.discard(id(worst))
            kept.add(id(latest))
        d.keep = [m for m in active if id(m) in kept]
        leaving = [m for m in active if id(m) not in kept]
    for m in leaving:  # oldest first, as TF pops them
        if keep_hours and m.timestamp - keep_hours * 3600.0 >= d.last_preserved:
            d.last_preserved = m.timestamp
            d.preserve.append(m)
        else:
            d.delete.append(m)
    return d
