"""A budget of bytes in flight, shared by the tensor store's writes and the
tools that copy and verify objects.

Example:
    >>> b = ByteBudget(10)
    >>> with b.held(4):
    ...     b.used
    4
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["ByteBudget"]


class ByteBudget:
    """A counting semaphore of bytes: bounds the object bytes held at once.

    A request for more than the whole budget waits for the whole budget, so
    one oversized object still proceeds (alone). ``acquire`` returns what it
    took (the request, clamped to the budget): give that to ``release``.

    Example:
        >>> b = ByteBudget(10); n = b.acquire(25); n, b.free
        (10, 0)
        >>> b.release(n); b.free
        10
    """

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self.free = self.total
        self._cv = threading.Condition()

    @property
    def used(self) -> int:
        """Bytes held now.

        Example:
            >>> ByteBudget(3).used
            0
        """
        return self.total - self.free

    def acquire(self, n: int) -> int:
        """Wait until ``n`` bytes (at most the whole budget) are free and take them; returns what was taken.

        Example:
            >>> ByteBudget(8).acquire(3)
            3
        """
        n = max(0, min(int(n), self.total))
        with self._cv:
            while self.free < n:
                self._cv.wait()
            self.free -= n
        return n

    def release(self, n: int) -> None:
        """Give back ``n`` bytes taken by :meth:`acquire`.

        Example:
            >>> b = ByteBudget(8); b.release(b.acquire(3)); b.free
            8
        """
        with self._cv:
            self.free += n
            self._cv.notify_all()

    @contextlib.contextmanager
    def held(self, n: int) -> Iterator[None]:
        """Hold ``n`` bytes for the duration of the block (see the module example)."""
        taken = self.acquire(n)
        try:
            yield
        finally:
            self.release(taken)
