"""Who may write a directory of checkpoints: ownership claims with increasing epochs.

A manager takes a directory in three steps:

1. **claim**: create ``ownership/epoch-<E>.json`` create-only, with ``E`` one
   above the highest claim it sees; of two managers racing for the same
   epoch exactly one wins and the other tries the next. The owner is the
   highest epoch. From this instant an older owner that commits learns that
   it lost the directory (it re-checks ownership after every commit).
2. **scan** the directory (every checkpoint name) — after the claim, so
   everything committed before the claim became visible is seen.
3. **record what was accepted**: create ``ownership/epoch-<E>.accepted.json``
   naming, for every older epoch, the last commit position the scan found
   valid. Every manifest records its writer's epoch and a sequence number
   within it, which grows with each commit of that writer.

A commit of an older epoch that is not accepted by the record of a newer
claim is *fenced*: it landed after that record (its writer had lost the
directory and was told so), and no reader lists, restores or counts it.
A commit that lands between a claim and its record may be accepted (then it
is listed like any other); either way its writer gets
:class:`~cloudckpt.OwnershipLostError`. A save that returned was committed
before any newer claim was visible, so the claim's scan saw it: it is
accepted, never fenced.

Claims written by the first release (``seen_upto``, no record) fence nothing:
they were made per checkpoint name and cannot be trusted across names.
Checkpoints written without a manager carry no epoch and are never fenced.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage("memory://doc-own")
    >>> c1 = claim(s, writer="a"); _ = record_accepted(s, c1.epoch, {})
    >>> c2 = claim(s, writer="b"); _ = record_accepted(s, c2.epoch, {1: 3})
    >>> (c1.epoch, c2.epoch, current_epoch(s))
    (1, 2, 2)
    >>> claims = list_claims(s)
    >>> is_fenced(1, 3, claims), is_fenced(1, 4, claims), is_fenced(2, 9, claims)
    (False, True, False)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cloudckpt.errors import ObjectNotFoundError, OwnershipLostError
from cloudckpt.layout.names import OWNER_PREFIX, claim_key, parse_owner_key, record_key
from cloudckpt.storage import Storage

__all__ = [
    "Claim",
    "claim",
    "record_accepted",
    "list_claims",
    "current_epoch",
    "check_owner",
    "is_fenced",
    "prune_claims",
]

_MAX_EPOCHS_IN_RECORD = 100_000


@dataclass(frozen=True)
class Claim:
    """One ownership claim.

    ``accepted`` maps each older epoch to the last commit position (sequence
    number) of it that the claim accepted; None while the claim has no
    record (being made, or its maker died first, or a first-release claim):
    such a claim fences nothing.

    Example:
        >>> Claim(3, accepted={1: 5}).accepts(1, 5), Claim(3, accepted={1: 5}).accepts(2, 1)
        (True, False)
    """

    epoch: int
    writer: str = ""
    time: float = 0.0
    accepted: Mapping[int, int] | None = None

    def accepts(self, epoch: int, position: int) -> bool:
        """Whether a commit at ``position`` of the older ``epoch`` stands under this claim."""
        if self.accepted is None or epoch >= self.epoch:
            return True
        return position <= self.accepted.get(epoch, 0)


def _listing(storage: Storage) -> tuple[list[int], set[int]]:
    files, _ = storage.list_dir(OWNER_PREFIX)
    claims, records = [], set()
    for name in files:
        parsed = parse_owner_key(name)
        if parsed is not None:
            epoch, is_record = parsed
            if is_record:
                records.add(epoch)
            else:
                claims.append(epoch)
    return sorted(claims), records


def current_epoch(storage: Storage) -> int:
    """The owner's epoch (0 if nobody has claimed the directory). One listing.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> current_epoch(open_storage("memory://doc-own-none"))
        0
    """
    epochs, _ = _listing(storage)
    return epochs[-1] if epochs else 0


def _read_json(storage: Storage, key: str) -> object:
    try:
        data = storage.read(key, 0, 1 << 20)
        return json.loads(data)
    except ObjectNotFoundError:
        return None
    except (ValueError, RecursionError):  # unparsable, however hostile
        return None


def _read_claim(storage: Storage, epoch: int, has_record: bool) -> Claim:
    data = _read_json(storage, claim_key(epoch))
    writer, t = "", 0.0
    if isinstance(data, dict):
        writer = str(data.get("writer", ""))[:200]
        tv = data.get("time")
        t = float(tv) if isinstance(tv, (int, float)) and not isinstance(tv, bool) else 0.0
    accepted: dict[int, int] | None = None
    if has_record:
        rec = _read_json(storage, record_key(epoch))
        table = rec.get("accepted") if isinstance(rec, dict) else None
        if isinstance(table, dict) and len(table) <= _MAX_EPOCHS_IN_RECORD:
            parsed: dict[int, int] = {}
            for k, v in table.items():
                if not (isinstance(k, str) and k.isdigit() and isinstance(v, int) and not isinstance(v, bool)):
                    parsed = {}
                    break
                parsed[int(k)] = v
            else:
                accepted = parsed
        # an unreadable record fences nothing: treating it as "accepted nothing"
        # would hide history
    return Claim(epoch, writer, t, accepted)


def list_claims(storage: Storage, *, above: int = 0) -> list[Claim]:
    """The claims with an epoch above ``above``, oldest first (one listing plus
    one or two small reads each).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> list_claims(open_storage("memory://doc-own-list"))
        []
    """
    epochs, records = _listing(storage)
    wanted = [e for e in epochs if e > above]
    return storage.map(lambda e: _read_claim(storage, e, e in records), wanted)


def claim(
    storage: Storage,
    *,
    writer: str,
    clock: Callable[[], float] = time.time,
    attempts: int = 20,
) -> Claim:
    """Claim the directory with the next epoch (step 1); returns the claim won.

    The caller then scans the directory and calls :func:`record_accepted`.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> claim(open_storage("memory://doc-own-claim"), writer="w").epoch
        1
    """
    import socket  # only a claim needs the host name

    for _ in range(attempts):
        epoch = current_epoch(storage) + 1
        now = float(clock())
        record = {"epoch": epoch, "writer": writer, "host": socket.gethostname(), "pid": os.getpid(), "time": now}
        if storage.write_if_absent(claim_key(epoch), json.dumps(record).encode()):
            return Claim(epoch, writer, now)
    raise OwnershipLostError(
        f"could not claim {storage.url}: {attempts} other managers claimed it first; "
        "only one manager should write a directory"
    )


def record_accepted(storage: Storage, epoch: int, accepted: Mapping[int, int]) -> Claim:
    """Record (create-only) the last position of every older epoch that claim
    ``epoch`` accepted (step 3): from then on, a commit of an older epoch past
    it is fenced. Returns the completed claim.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> s = open_storage("memory://doc-own-record")
        >>> record_accepted(s, claim(s, writer="w").epoch, {}).accepted
        {}
    """
    table = {str(e): int(p) for e, p in sorted(accepted.items()) if e < epoch}
    body = json.dumps({"epoch": epoch, "accepted": table}).encode()
    if not storage.write_if_absent(record_key(epoch), body):
        raise OwnershipLostError(
            f"the ownership record {storage.url_for(record_key(epoch))} was written by someone else; "
            "only one manager should write a directory"
        )
    return Claim(epoch, accepted={int(k): v for k, v in table.items()})


def check_owner(storage: Storage, epoch: int) -> None:
    """Raise :class:`OwnershipLostError` unless ``epoch`` is still the owner's.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> s = open_storage("memory://doc-own-check"); c = claim(s, writer="w")
        >>> check_owner(s, c.epoch)
    """
    now = current_epoch(storage)
    if now != epoch:
        raise OwnershipLostError(
            f"this manager (epoch {epoch}) no longer owns {storage.url}: another manager claimed it "
            f"with epoch {now}. Stop this job, or create a new CheckpointManager to take the directory back"
        )


def is_fenced(epoch: int, position: int, claims: Sequence[Claim]) -> bool:
    """Whether the commit at ``position`` of ``epoch`` is fenced by a newer claim's record.

    Example:
        >>> is_fenced(1, 4, [Claim(2, accepted={1: 3})]), is_fenced(1, 4, [Claim(2)])
        (True, False)
    """
    return any(not c.accepts(epoch, position) for c in claims)


def prune_claims(storage: Storage, claims: Sequence[Claim]) -> None:
    """Delete the claims and records older than the newest claim that has a
    record: that record alone fences everything the older ones did (it
    accepted only what they left standing).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> s = open_storage("memory://doc-own-prune")
        >>> for w in "ab":
        ...     _ = record_accepted(s, claim(s, writer=w).epoch, {})
        >>> prune_claims(s, list_claims(s)); [c.epoch for c in list_claims(s)]
        [2]
    """
    recorded = [c.epoch for c in claims if c.accepted is not None]
    if not recorded:
        return
    below = max(recorded)
    epochs, records = _listing(storage)
    old = [claim_key(e) for e in epochs if e < below] + [record_key(e) for e in records if e < below]
    if old:
        storage.delete(old)
