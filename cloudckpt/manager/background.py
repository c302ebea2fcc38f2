"""Async saves: the private host copy, the background thread, and the wait at interpreter exit.

With ``async_save=True`` a manager's ``save()`` copies the state to host
memory (:func:`host_copy`, the only part the training loop waits for) and
uploads and commits in a thread (:class:`AsyncSaves`); ``sync()`` waits and
re-raises its failure. Saves in flight are waited for at interpreter exit.

Example:
    >>> saves = AsyncSaves()
    >>> saves.start(lambda: None, name="cloudckpt-save-doc", what="memory://doc/ckpt-1")
    >>> saves.raise_pending(wait=True)
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

import numpy as np

from cloudckpt.format.shards import ShardedArray
from cloudckpt.format.tree import Leaf

__all__ = ["AsyncSaves", "host_copy"]

log = logging.getLogger("cloudckpt")

# Async saves in flight, waited for at interpreter exit. The wait must run
# before concurrent.futures shuts its thread pools down (the upload uses one),
# so it is registered with threading's pre-join exit hooks, which run in
# reverse order of registration: registered after concurrent.futures, ours
# runs first. Plain atexit would run too late.
_PENDING: set[threading.Thread] = set()
_PENDING_LOCK = threading.Lock()
_EXIT_HOOK = False


def _wait_for_pending_saves() -> None:
    while True:
        with _PENDING_LOCK:
            threads = list(_PENDING)
        if not threads:
            return
        log.debug("waiting for %d async save(s) before exit", len(threads))
        for t in threads:
            t.join()
            with _PENDING_LOCK:
                _PENDING.discard(t)


def _install_exit_hook() -> None:
    global _EXIT_HOOK
    with _PENDING_LOCK:
        if _EXIT_HOOK:
            return
        _EXIT_HOOK = True
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(_wait_for_pending_saves)
    except RuntimeError:
        atexit.register(_wait_for_pending_saves)


def host_copy(leaf: Leaf) -> Leaf:
    """A leaf whose bytes are a private host copy (async save): the training
    loop may change its tensors once ``save()`` returns.

    Example:
        >>> import numpy as np
        >>> a = np.ones(2); c = host_copy(Leaf(("w",), a, None))
        >>> a[:] = 0; c.array
        array([1., 1.])
    """
    if leaf.shards is not None:
        sa = leaf.shards
        pieces = [(o, np.array(d, copy=True, order="C")) for o, d in sa.pieces]
        copied = ShardedArray(sa.shape, sa.dtype, pieces, dict(sa.boxes))
        return Leaf(leaf.path, leaf.array, leaf.scalar, shards=copied, per_rank=leaf.per_rank)
    return Leaf(leaf.path, np.array(leaf.array, copy=True, order="C"), leaf.scalar, per_rank=leaf.per_rank)


class AsyncSaves:
    """The one background save of a manager that may be in flight, and its failure.

    Example:
        >>> saves = AsyncSaves()
        >>> def fail() -> None:
        ...     raise OSError("disk full")
        >>> saves.start(fail, name="cloudckpt-save-doc", what="memory://doc/ckpt-2")
        >>> saves.raise_pending(wait=True)
        Traceback (most recent call last):
        ...
        OSError: disk full
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, work: Callable[[], None], *, name: str, what: str) -> None:
        """Run ``work`` in a new (non-daemon) thread; its failure is kept for :meth:`raise_pending`."""

        def run() -> None:
            try:
                work()
            except BaseException as exc:
                log.error("async save of %s failed: %s", what, exc)
                with self._lock:
                    self._error = exc
            finally:
                with _PENDING_LOCK:
                    _PENDING.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=False)
        _install_exit_hook()
        with _PENDING_LOCK:
            _PENDING.add(thread)
        with self._lock:
            self._thread = thread
        thread.start()

    def raise_pending(self, *, wait: bool) -> None:
        """With ``wait``, wait for the save in flight; then re-raise the failure of the last one, once."""
        thread = self._thread
        if thread is not None and wait:
            thread.join()
            with self._lock:
                if self._thread is thread:
                    self._thread = None
        with self._lock:
            err, self._error = self._error, None
        if err is not None:
            raise err
