"""Hooks called before every request attempt: fault injection and tracing.

A hook is ``hook(operation, url)``; it may sleep, raise (the request fails
as the backend would have failed it: a transient error is retried) or kill
the process. :func:`add_global_hook` reaches every
:class:`~cloudckpt.storage.Storage` of the process, also those created
later (a child process that opens its storages itself:
:mod:`cloudckpt.testing.faults`); a :class:`Hooks` list belongs to one
storage and the storages derived from it (``Storage.add_hook``). The global
hooks run first.

Example:
    >>> seen = []; hooks = Hooks()
    >>> remove = hooks.add(lambda op, url: seen.append((op, url)))
    >>> hooks("write", "memory://b/k"); remove(); hooks("read", "memory://b/k"); seen
    [('write', 'memory://b/k')]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

__all__ = ["Hook", "Hooks", "add_global_hook"]

Hook = Callable[[str, str], None]


class Hooks:
    """An ordered list of hooks, called by :meth:`__call__` after the global ones.

    Example:
        >>> h = Hooks(); remove = h.add(print); h("head", "s3://b/k"); remove()
        head s3://b/k
    """

    def __init__(self) -> None:
        self._hooks: list[Hook] = []

    def add(self, hook: Hook) -> Callable[[], None]:
        """Call ``hook`` before every request attempt; returns its remover."""
        self._hooks.append(hook)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._hooks.remove(hook)

        return remove

    def clear(self) -> None:
        """Remove every hook of this list (not the global ones)."""
        self._hooks.clear()

    def __call__(self, op: str, url: str) -> None:
        for hook in (*_GLOBAL._hooks, *self._hooks):
            hook(op, url)


# The hooks of every Storage of this process (the documented testing hook).
_GLOBAL = Hooks()


def add_global_hook(hook: Hook) -> Callable[[], None]:
    """Call ``hook(operation, url)`` before every request attempt of every
    :class:`~cloudckpt.storage.Storage` in this process (also those created
    later). Returns a function that removes it. Meant for fault injection and
    tracing (:mod:`cloudckpt.testing.faults`).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> seen = []
        >>> remove = add_global_hook(lambda op, url: seen.append(url))
        >>> open_storage("memory://doc-global-hook").write("k", b"x"); remove(); seen
        ['memory://doc-global-hook/k']
    """
    return _GLOBAL.add(hook)
