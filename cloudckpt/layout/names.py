"""Every object name of a directory of checkpoints, and its parsing: the one place they are spelled.

::

    <directory>/
      checkpoint                                   STATE_KEY: the TF-style state file
      ownership/epoch-<E:010d>.json                claim_key(E): an ownership claim
      ownership/epoch-<E:010d>.accepted.json       record_key(E): what that claim accepted
      <name>-<N>/                                  checkpoint_dirname(name, N); parse_name
        manifest.json                              MANIFEST_KEY: the commit record
        preserved.json                             PRESERVED_KEY: kept for good by retention
        data-<attempt>/                            data_prefix(attempt): one save attempt's data
                                                   (attempt = e<epoch>-<hex> under a manager)

Example:
    >>> checkpoint_dirname("ckpt", 7), parse_name("ckpt-7"), data_prefix(attempt_id(3, "abcd"))
    ('ckpt-7', ('ckpt', 7), 'data-e3-abcd')
    >>> data_prefix_epoch("data-e3-abcd"), parse_owner_key(claim_key(3)), parse_owner_key(record_key(3))
    (3, (3, False), (3, True))
"""

from __future__ import annotations

import re
import uuid

from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.storage import validate_key

__all__ = [
    "MANIFEST_KEY",
    "PRESERVED_KEY",
    "STATE_KEY",
    "OWNER_PREFIX",
    "DATA_PREFIX",
    "checkpoint_dirname",
    "parse_name",
    "check_checkpoint_name",
    "attempt_id",
    "data_prefix",
    "is_data_prefix",
    "data_prefix_epoch",
    "claim_key",
    "record_key",
    "parse_owner_key",
]

#: The create-only marker of a checkpoint preserved for good (``keep_checkpoint_every_n_hours``).
PRESERVED_KEY = "preserved.json"
#: The TF-style state file of a directory (:mod:`cloudckpt.layout.statefile`).
STATE_KEY = "checkpoint"
#: Where the ownership claims and their records live (:mod:`cloudckpt.layout.ownership`).
OWNER_PREFIX = "ownership"
#: Every data prefix of a save attempt starts with this.
DATA_PREFIX = "data-"

_NAME_RE = re.compile(r"^(?P<name>.+)-(?P<number>[0-9]{1,18})$")
_DATA_EPOCH_RE = re.compile(r"^data-e(?P<epoch>[0-9]+)-")
_CLAIM_RE = re.compile(r"^epoch-(?P<epoch>[0-9]{10,})\.json$")
_RECORD_RE = re.compile(r"^epoch-(?P<epoch>[0-9]{10,})\.accepted\.json$")


def checkpoint_dirname(checkpoint_name: str, number: int) -> str:
    """The sub-directory of checkpoint ``number`` of ``checkpoint_name``.

    Example:
        >>> checkpoint_dirname("model", 12)
        'model-12'
    """
    return f"{checkpoint_name}-{number}"


def parse_name(dirname: str, checkpoint_name: str | None = None) -> tuple[str, int] | None:
    """``"ckpt-7"`` -> ``("ckpt", 7)``; None if it is not a checkpoint name (of ``checkpoint_name``, if given).

    Example:
        >>> parse_name("ckpt-7"), parse_name("model-ckpt-12", "model-ckpt"), parse_name("other")
        (('ckpt', 7), ('model-ckpt', 12), None)
    """
    m = _NAME_RE.match(dirname)
    if not m:
        return None
    if checkpoint_name is not None and m.group("name") != checkpoint_name:
        return None
    return m.group("name"), int(m.group("number"))


def check_checkpoint_name(checkpoint_name: object) -> str:
    """``checkpoint_name`` if it can name checkpoint directories; ValueError saying why not.

    Example:
        >>> check_checkpoint_name("ckpt")
        'ckpt'
        >>> check_checkpoint_name("a/b")
        Traceback (most recent call last):
        ...
        ValueError: checkpoint_name must be a non-empty name without '/', got 'a/b'
    """
    if not isinstance(checkpoint_name, str) or not checkpoint_name or "/" in checkpoint_name:
        raise ValueError(f"checkpoint_name must be a non-empty name without '/', got {checkpoint_name!r}")
    try:
        validate_key(checkpoint_name)
    except ValueError as exc:
        raise ValueError(f"checkpoint_name {checkpoint_name!r} cannot name a directory: {exc}") from None
    return checkpoint_name


def attempt_id(epoch: int | None = None, unique: str | None = None) -> str:
    """A fresh id for one save attempt: ``e<epoch>-<16 hex>`` under a manager's epoch, else ``<16 hex>``.

    Example:
        >>> len(attempt_id()), attempt_id(4).startswith("e4-"), attempt_id(2, "ab")
        (16, True, 'e2-ab')
    """
    unique = uuid.uuid4().hex[:16] if unique is None else unique
    return unique if epoch is None else f"e{epoch}-{unique}"


def data_prefix(attempt: str) -> str:
    """The data prefix of save attempt ``attempt``.

    Example:
        >>> data_prefix("e1-0123")
        'data-e1-0123'
    """
    return f"{DATA_PREFIX}{attempt}"


def is_data_prefix(name: str) -> bool:
    """Whether the sub-directory ``name`` of a checkpoint is the data of a save attempt.

    Example:
        >>> is_data_prefix("data-e1-0123"), is_data_prefix("zarr.json")
        (True, False)
    """
    return name.startswith(DATA_PREFIX)


def data_prefix_epoch(prefix: str) -> int:
    """The ownership epoch encoded in a data prefix (``data-e3-...`` -> 3; else 0).

    Example:
        >>> data_prefix_epoch("data-e12-abcd"), data_prefix_epoch("data-abcd")
        (12, 0)
    """
    m = _DATA_EPOCH_RE.match(prefix)
    return int(m.group("epoch")) if m else 0


def claim_key(epoch: int) -> str:
    """The key of the ownership claim of ``epoch``.

    Example:
        >>> claim_key(3)
        'ownership/epoch-0000000003.json'
    """
    return f"{OWNER_PREFIX}/epoch-{epoch:010d}.json"


def record_key(epoch: int) -> str:
    """The key of the record of what the claim of ``epoch`` accepted.

    Example:
        >>> record_key(3)
        'ownership/epoch-0000000003.accepted.json'
    """
    return f"{OWNER_PREFIX}/epoch-{epoch:010d}.accepted.json"


def parse_owner_key(filename: str) -> tuple[int, bool] | None:
    """``(epoch, is_record)`` of a file name under :data:`OWNER_PREFIX`; None for any other name.

    Example:
        >>> parse_owner_key("epoch-0000000002.json"), parse_owner_key("notes.txt")
        ((2, False), None)
    """
    name = filename.rsplit("/", 1)[-1]
    m = _CLAIM_RE.match(name)
    if m:
        return int(m.group("epoch")), False
    m = _RECORD_RE.match(name)
    if m:
        return int(m.group("epoch")), True
    return None
