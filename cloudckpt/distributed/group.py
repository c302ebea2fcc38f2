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
A framework's groups come from its provider (:func:`register_provider`):
``cloudckpt.frameworks.torch_group`` and ``jax_group`` register themselves,
loaded by name once the program has imported torch or jax, so that nothing
here imports a framework or ``cloudckpt.frameworks``.

Example:
    >>> g = resolve_group(None)
    >>> g.rank, g.size, g.all_gather_json({"x": 1})
    (0, 1, [{'x': 1}])
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from cloudckpt import errors

__all__ = [
    "JsonCollectives",
    "Group",
    "SingleProcess",
    "SINGLE",
    "resolve_group",
    "register_provider",
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


class JsonCollectives:
    """The JSON collectives of a :class:`Group`, built on its byte collectives: a base for group classes.

    Example:
        >>> SINGLE.all_gather_json({"a": 1}), SINGLE.broadcast_json([1, 2])
        ([{'a': 1}], [1, 2])
    """

    def all_gather_json(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (JSON), in rank order."""
        raw = self.all_gather_bytes(json.dumps(value, separators=(",", ":")).encode())  # type: ignore[attr-defined]
        return [json.loads(b) for b in raw]

    def broadcast_json(self, value: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``value`` (JSON) on every rank."""
        data = json.dumps(value, separators=(",", ":")).encode() if self.rank == src else None  # type: ignore[attr-defined]
        return json.loads(self.broadcast_bytes(data, src))  # type: ignore[attr-defined]


class SingleProcess(JsonCollectives):
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


#: a provider of process groups: ``provide(process_group, timeout)`` -> the
#: group of ``process_group`` (None: the framework's default job, ``SINGLE``
#: when that is one process), or None when ``process_group`` is not its framework's
Provider = Callable[[Any, float], Any]

# framework module -> the cloudckpt module that registers its provider, in the
# order resolve_group asks them (torch.distributed before jax.distributed)
_LAZY = {
    "torch": "cloudckpt.frameworks.torch_group",
    "jax": "cloudckpt.frameworks.jax_group",
}
_PROVIDERS: dict[str, Provider] = {}
_pending = dict(_LAZY)
_lock = threading.RLock()


def register_provider(framework: str, provide: Provider) -> None:
    """Register the process groups of ``framework`` (the name of its module).

    ``provide(process_group, timeout)`` returns the cloudckpt group of
    ``process_group`` (None: the framework's default job; ``SINGLE`` when that
    job is one process or not initialized), or None when ``process_group`` is
    not one of its framework's. :func:`resolve_group` asks the providers of
    the frameworks the program has imported; ``cloudckpt.frameworks.torch_group``
    and ``jax_group`` register themselves when imported, which
    :func:`resolve_group` does once torch or jax is in ``sys.modules``: the
    core never imports a framework.

    Example:
        >>> class DocGroup(SingleProcess): ...
        >>> register_provider("doc-framework", lambda pg, timeout: DocGroup() if pg is None else None)
        >>> type(resolve_group(None)).__name__   # no other framework's job: this one's
        'DocGroup'
        >>> _ = _PROVIDERS.pop("doc-framework")
    """
    with _lock:
        _PROVIDERS[framework] = provide


def _providers() -> list[Provider]:
    """The providers of the frameworks the program has imported (theirs
    registered on first use), torch's before jax's, then any other."""
    if any(name in sys.modules for name in _pending):
        with _lock:  # other threads wait here until the registration is complete
            for name in [n for n in _pending if n in sys.modules]:
                importlib.import_module(_pending[name])  # an error is raised again on the next call
                _pending.pop(name, None)
    order = {name: i for i, name in enumerate(_LAZY)}
    with _lock:
        return [_PROVIDERS[n] for n in sorted(_PROVIDERS, key=lambda n: order.get(n, len(order)))]


def resolve_group(process_group: Any = None, *, timeout: float | None = None) -> Any:
    """The group a save or restore runs on.

    ``process_group``: a cloudckpt :class:`Group`, a torch.distributed
    ``ProcessGroup``, or None for torch.distributed's default group when it
    is initialized with several processes, else all processes of an
    initialized ``jax.distributed`` job, else a single process. ``timeout`` (seconds, default
    ``CLOUDCKPT_COLLECTIVE_TIMEOUT`` or 600) bounds every collective.
    The groups of a framework come from its provider (:func:`register_provider`).

    Example:
        >>> resolve_group(None) is SINGLE
        True
    """
    if process_group is not None and hasattr(process_group, "all_gather_bytes"):
        return process_group
    t = DEFAULT_TIMEOUT if timeout is None else timeout
    for provide in _providers():
        group = provide(process_group, t)
        if group is not None and (process_group is not None or group is not SINGLE):
            return group
    if process_group is not None:
        raise TypeError(f"process_group must be a torch.distributed ProcessGroup or None, got {type(process_group).__name__}")
    return SINGLE


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
