"""Running many requests at once: one I/O thread pool per process, and a bounded, ordered map over it.

Example:
    >>> bounded_map(lambda x: x + 1, range(4), limit=2)
    [1, 2, 3, 4]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

__all__ = ["bounded_map", "shared_pool"]

T = TypeVar("T")
R = TypeVar("R")

_POOL: dict[str, Any] = {"pool": None, "size": 0, "pid": None}
_POOL_LOCK = threading.Lock()


def shared_pool(size: int) -> ThreadPoolExecutor:
    """The I/O thread pool of this process, with at least ``size`` threads.

    One pool shared by every Storage (threads are costly to start; each
    :func:`bounded_map` bounds its own calls in flight). It grows when a
    storage asks for more concurrency and is rebuilt after a fork.

    Example:
        >>> shared_pool(2).submit(sum, [1, 2]).result()
        3
    """
    with _POOL_LOCK:
        pool = _POOL["pool"]
        if pool is None or _POOL["pid"] != os.getpid() or _POOL["size"] < size:
            new_size = max(size, _POOL["size"] if _POOL["pid"] == os.getpid() else 0)
            _POOL["pool"] = ThreadPoolExecutor(max_workers=new_size, thread_name_prefix="cloudckpt-io")
            _POOL["size"] = new_size
            _POOL["pid"] = os.getpid()
            if pool is not None and _POOL["pid"] == os.getpid():
                pool.shutdown(wait=False)
        return _POOL["pool"]  # type: ignore[no-any-return]


_in_pool = threading.local()


def bounded_map(fn: Callable[[T], R], items: Iterable[T], *, limit: int, pool_size: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` with at most ``limit`` calls in flight on the
    shared pool, results in order. The first exception stops new calls, waits
    for those in flight and is raised. Items are taken lazily, so memory for
    in-flight work stays bounded. A call made from inside the pool (a nested
    map) runs its items in its own thread: no deadlock. ``pool_size``: the
    threads the shared pool should have (default ``limit``).

    Example:
        >>> bounded_map(lambda x: x * 2, range(5), limit=3)
        [0, 2, 4, 6, 8]
    """
    limit = max(1, limit)
    if getattr(_in_pool, "active", False) or limit == 1:
        return [fn(x) for x in items]
    pool = shared_pool(max(limit, pool_size or 0))

    def run(x: T) -> R:
        _in_pool.active = True
        try:
            return fn(x)
        finally:
            _in_pool.active = False

    results: dict[int, R] = {}
    pending: dict[Future[R], int] = {}
    it: Iterator[T] = iter(items)
    index = 0
    error: BaseException | None = None
    exhausted = False
    while True:
        while not exhausted and error is None and len(pending) < limit:
            try:
                x = next(it)
            except StopIteration:
                exhausted = True
                break
            pending[pool.submit(run, x)] = index
            index += 1
        if not pending:
            break
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for f in done:
            i = pending.pop(f)
            exc = f.exception()
            if exc is not None:
                if error is None:
                    error = exc
            else:
                results[i] = f.result()
    if error is not None:
        raise error
    return [results[i] for i in range(index)]
