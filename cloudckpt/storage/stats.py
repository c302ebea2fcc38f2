"""Counting requests and bytes, by operation.

Example:
    >>> s = RequestStats(); s.add("write", 3); s.add("copy", 5); s.snapshot()["bytes_written"]
    3
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["RequestStats"]


@dataclass
class RequestStats:
    """Counts of requests and bytes, by operation.

    ``bytes_read`` and ``bytes_written`` are bytes that crossed this process's
    connection to the store; ``bytes_copied`` the sizes of the objects copied
    within the store (a ``"copy"`` request), whose bytes never passed through it.

    Example:
        >>> s = RequestStats(); s.add("read", 10); s.add("copy", 7); s.requests, s.bytes_copied, s.bytes_written
        (2, 7, 0)
    """

    by_op: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_copied: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, op: str, nbytes: int = 0) -> None:
        with self._lock:
            self.by_op[op] = self.by_op.get(op, 0) + 1
            if op.startswith("read"):
                self.bytes_read += nbytes
            elif op.startswith("write"):
                self.bytes_written += nbytes
            elif op == "copy":
                self.bytes_copied += nbytes

    def add_bytes_read(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_read += nbytes

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

    @property
    def requests(self) -> int:
        """Total number of requests made."""
        return sum(self.by_op.values())

    def snapshot(self) -> dict[str, int]:
        """A copy of the per-operation counts plus totals."""
        with self._lock:
            d = dict(self.by_op)
        d["requests"] = sum(d.values())
        d["bytes_read"] = self.bytes_read
        d["bytes_written"] = self.bytes_written
        d["bytes_copied"] = self.bytes_copied
        d["retries"] = self.retries
        return d
