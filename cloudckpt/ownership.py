"""Who may write a directory of checkpoints: ownership claims with increasing epochs.

A manager claims a directory by creating ``ownership/epoch-<E>.json``
create-only, with ``E`` one above the highest claim it sees; of two managers
racing for the same epoch exactly one wins and the other tries the next.
The owner is the highest epoch. Every manifest records its writer's epoch.

A claim records the highest checkpoint number that was committed and valid
when it was made (``seen_upto``). A checkpoint written under an older epoch
and numbered above ``seen_upto`` of a later claim was committed after that
claim by a writer that had already lost the directory: it is *fenced* —
never listed, never restored, and removed by the owner.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage("memory://doc-own")
    >>> c1 = claim(s, seen_upto=None, writer="a"); c2 = claim(s, seen_upto=None, writer="b")
    >>> (c1.epoch, c2.epoch, current_epoch(s))
    (1, 2, 2)
    >>> is_fenced(1, 5, list_claims(s))
    True
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import ObjectNotFoundError, OwnershipLostError
from .storage import Storage

__all__ = ["OWNER_PREFIX", "Claim", "claim", "list_claims", "current_epoch", "check_owner", "is_fenced", "prune_claims"]

OWNER_PREFIX = "ownership"
_CLAIM_RE = re.compile(r"^epoch-(?P<epoch>[0-9]{10,})\.json$")


@dataclass(frozen=True)
class Claim:
    """One ownership claim."""

    epoch: int
    seen_upto: int | None = None
    writer: str = ""
    time: float = 0.0
    readable: bool = True  # False: the record does not parse; it fences nothing


def _key(epoch: int) -> str:
    return f"{OWNER_PREFIX}/epoch-{epoch:010d}.json"


def _epochs(storage: Storage) -> list[int]:
    files, _ = storage.list_dir(OWNER_PREFIX)
    out = []
    for name in files:
        m = _CLAIM_RE.match(name)
        if m:
            out.append(int(m.group("epoch")))
    return sorted(out)


def current_epoch(storage: Storage) -> int:
    """The owner's epoch (0 if nobody has claimed the directory). One listing."""
    epochs = _epochs(storage)
    return epochs[-1] if epochs else 0


def _read_claim(storage: Storage, epoch: int) -> Claim | None:
    try:
        data = json.loads(storage.read(_key(epoch)))
    except ObjectNotFoundError:
        return None
    except (ValueError, RecursionError):  # unparsable, however hostile
        data = None
    upto = data.get("seen_upto", 0) if isinstance(data, dict) else 0
    if not isinstance(data, dict) or not (upto is None or (isinstance(upto, int) and not isinstance(upto, bool))):
        # An unreadable claim still counts for ownership (its epoch is its name),
        # but fences nothing: treating it as "saw nothing" would delete history.
        return Claim(epoch, None, readable=False)
    t = data.get("time")
    return Claim(epoch, upto, str(data.get("writer", "")), float(t) if isinstance(t, (int, float)) else 0.0)


def list_claims(storage: Storage, *, above: int = 0) -> list[Claim]:
    """The claims with an epoch above ``above``, oldest first (one listing plus one read each)."""
    epochs = [e for e in _epochs(storage) if e > above]
    claims = storage.map(lambda e: _read_claim(storage, e), epochs)
    return [c for c in claims if c is not None]


def claim(
    storage: Storage,
    *,
    seen_upto: int | None,
    writer: str,
    clock: Callable[[], float] = time.time,
    attempts: int = 20,
) -> Claim:
    """Claim the directory with the next epoch; returns the claim won."""
    for _ in range(attempts):
        epoch = current_epoch(storage) + 1
        record = {
            "epoch": epoch,
            "seen_upto": seen_upto,
            "writer": writer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": clock(),
        }
        now = float(record["time"])  # type: ignore[arg-type]
        if storage.write_if_absent(_key(epoch), json.dumps(record).encode()):
            return Claim(epoch, seen_upto, writer, now)
    raise OwnershipLostError(
        f"could not claim {storage.url}: {attempts} other managers claimed it first; "
        "only one manager should write a directory"
    )


def check_owner(storage: Storage, epoch: int) -> None:
    """Raise :class:`OwnershipLostError` unless ``epoch`` is still the owner's."""
    now = current_epoch(storage)
    if now != epoch:
        raise OwnershipLostError(
            f"this manager (epoch {epoch}) no longer owns {storage.url}: another manager claimed it "
            f"with epoch {now}. Stop this job, or create a new CheckpointManager to take the directory back"
        )


def is_fenced(epoch: int, number: int, claims: Sequence[Claim]) -> bool:
    """Whether checkpoint ``number`` written under ``epoch`` was committed after a later claim."""
    for c in claims:
        if c.readable and c.epoch > epoch and (c.seen_upto is None or number > c.seen_upto):
            return True
    return False


def prune_claims(storage: Storage, below: int) -> None:
    """Delete claims with an epoch below ``below`` (they can fence no existing checkpoint)."""
    old = [_key(e) for e in _epochs(storage) if e < below]
    if old:
        storage.delete(old)
