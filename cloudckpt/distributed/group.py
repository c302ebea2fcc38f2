"""The processes of a distributed job, as cloudckpt sees them.

cloudckpt adds no coordinator of its own: a collective save or restore uses
the job's own process group (torch.distributed) for the few agreements it
needs — gather every rank's description and results, broadcast rank 0's
decision and outcome. Everything exchanged is JSON (never pickle), and every
collective has a timeout, so that a rank that died makes the others raise
instead of hang.

:func:`resolve_group` picks the group: an explicit ``process_group``, else
torch.distributed's default group when the program has initialized it with
more than one process, else ``SINGLE`` (``cloudckpt.SINGLE_PROCESS``) (one process; no collective).

Example:
    >>> g = resolve_group(None)
    >>> g.rank, g.size, g.all_gather_json({"x": 1})
    (0, 1, [{'x': 1}])
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from cloudckpt import errors

__all__ = [
    "Group",
    "SingleProcess",
    "SINGLE",
    "resolve_group",
    "current_rank",
    "leader_call",
    "agree",
    "raise_remote",
    "DEFAULT_TIMEOUT",
]

log = logging.getLogger("cloudckpt")
T = TypeVar("T")

DEFAULT_TIMEOUT = float(os.environ.get("CLOUDCKPT_COLLECTIVE_TIMEOUT", "600"))


class Group(Protocol):
    """What cloudckpt needs of a process group: rank, size, and two
    collectives on bytes that raise (never hang) when a member is gone."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def all_gather_bytes(self, data: bytes) -> list[bytes]: ...

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes: ...

    def all_gather_json(self, value: Any) -> list[Any]: ...

    def broadcast_json(self, value: Any, src: int = 0) -> Any: ...

    def all_reduce_max(self, value: int) -> int: ...

    def fork(self) -> Group: ...


class _JsonMixin:
    def all_gather_json(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (JSON), in rank order."""
        raw = self.all_gather_bytes(json.dumps(value, separators=(",", ":")).encode())  # type: ignore[attr-defined]
        return [json.loads(b) for b in raw]

    def broadcast_json(self, value: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``value`` (JSON) on every rank."""
        data = json.dumps(value, separators=(",", ":")).encode() if self.rank == src else None  # type: ignore[attr-defined]
        return json.loads(self.broadcast_bytes(data, src))  # type: ignore[attr-defined]


class SingleProcess(_JsonMixin):
    """A group of one process: every collective returns its own input.

    Example:
        >>> SINGLE.broadcast_json([1, 2])
        [1, 2]
    """

    rank = 0
    size = 1

    def all_gather_bytes(self, data: bytes) -> list[bytes]:
        """``[data]``."""
        return [data]

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        """``data``."""
        assert data is not None
        return data

    def all_reduce_max(self, value: int) -> int:
        """``value``."""
        return int(value)

    def fork(self) -> SingleProcess:
        """Itself (a second channel of the same ranks, for collectives that may
        run while another thread uses this group)."""
        return self

    def __repr__(self) -> str:
        return "SingleProcess()"


SINGLE = SingleProcess()
"""The group of one process (``cloudckpt.SINGLE_PROCESS``): pass
``process_group=cloudckpt.SINGLE_PROCESS`` to save or load in one rank of a
distributed job without the others."""


def resolve_group(process_group: Any = None, *, timeout: float | None = None) -> Any:
    """The group a save or restore runs on.

    ``process_group``: a cloudckpt :class:`Group`, a torch.distributed
    ``ProcessGroup``, or None for torch.distributed's default group when it
    is initialized with several processes, else all processes of an
    initialized ``jax.distributed`` job, else a single process. ``timeout`` (seconds, default
    ``CLOUDCKPT_COLLECTIVE_TIMEOUT`` or 600) bounds every collective.

    Example:
        >>> resolve_group(None) is SINGLE
        True
    """
    if process_group is not None and hasattr(process_group, "all_gather_bytes"):
        return process_group
    t = DEFAULT_TIMEOUT if timeout is None else timeout
    if process_group is None and "torch.distributed" not in sys.modules:
        if "jax" in sys.modules:  # a jax.distributed job (else: SINGLE)
            from cloudckpt.frameworks import jax_group

            return jax_group.group_for(t)
        return SINGLE
    if process_group is not None and "torch" not in sys.modules:
        raise TypeError(f"process_group must be a torch.distributed ProcessGroup or None, got {type(process_group).__name__}")
    from cloudckpt.frameworks import torch_group  # imports torch, which the program has already imported

    group = torch_group.group_for(process_group, t)
    if group is SINGLE and process_group is None and "jax" in sys.modules:
        from cloudckpt.frameworks import jax_group

        return jax_group.group_for(t)
    return group


def current_rank() -> int:
    """This process's rank in torch.distributed's default group, or 0 (no
    collective: for choosing ``PerRank`` values on a plain load).

    Example:
        >>> current_rank()
        0
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


def _error_payload(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc)}


def raise_remote(payload: dict[str, Any], rank: int) -> None:
    """Raise on this rank the error another rank reported: the same class
    when it is a cloudckpt error or a builtin one, else a CheckpointError."""
    name, message = payload.get("type", "Exception"), payload.get("message", "")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        builtin = {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError, "FileNotFoundError": FileNotFoundError}
        cls = builtin.get(name)
    if cls is None:
        raise errors.CheckpointError(f"rank {rank} failed: {name}: {message}")
    if cls is KeyError:
        raise KeyError(f"{message} (on rank {rank})")
    raise cls(f"{message} (on rank {rank})" if rank else message)


def leader_call(group: Any, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and give its JSON result to every rank; an
    exception on rank 0 is raised on every rank (same class where possible).

    Example:
        >>> leader_call(SINGLE, lambda: {"latest": 3})
        {'latest': 3}
    """
    if group.size == 1:
        return fn()
    if group.rank == 0:
        try:
            result = fn()
        except Exception as exc:
            group.broadcast_json({"error": _error_payload(exc)})
            raise
        group.broadcast_json({"ok": result})
        return result
    got = group.broadcast_json(None)
    if "error" in got:
        raise_remote(got["error"], 0)
    return got["ok"]  # type: ignore[no-any-return]


def agree(group: Any, error: BaseException | None) -> None:
    """Every rank says whether its part succeeded; if any failed, every rank
    raises (the first failing rank's error; its own where it failed itself).

    Example:
        >>> agree(SINGLE, None)
    """
    if group.size == 1:
        if error is not None:
            raise error
        return
    reports = group.all_gather_json(None if error is None else _error_payload(error))
    if error is not None:
        raise error
    for r, rep in enumerate(reports):
        if rep is not None:
            raise_remote(rep, r)
