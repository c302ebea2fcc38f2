"""Classifying backend failures and retrying the transient ones with backoff."""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# errno values that mean "this will not get better by trying again".
_PERMANENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.EINVAL,
}
_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EINTR,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EBUSY,
    errno.EIO,
}
_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
_TRANSIENT_WORDS = (
    "slowdown",
    "slow down",
    "serviceunavailable",
    "service unavailable",
    "internalerror",
    "internal error",
    "requesttimeout",
    "request timeout",
    "throttl",
    "too many requests",
    "connection reset",
    "server disconnected",
    "timed out",
    "timeout",
)


def is_transient(exc: BaseException) -> bool:
    """Whether a backend exception is worth retrying.

    Example:
        >>> is_transient(TimeoutError()), is_transient(PermissionError())
        (True, False)
    """
    if isinstance(
        exc,
        (
            FileNotFoundError,
            FileExistsError,
            PermissionError,
            IsADirectoryError,
            NotADirectoryError,
            ValueError,
            TypeError,
            KeyError,
            NotImplementedError,
            MemoryError,
        ),
    ):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(code, int) and code >= 400:
        return code in _TRANSIENT_HTTP
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in _PERMANENT_ERRNOS:
            return False
        if exc.errno in _TRANSIENT_ERRNOS:
            return True
    module = type(exc).__module__ or ""
    if module.startswith(("aiohttp", "asyncio")):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    if any(word in text for word in _TRANSIENT_WORDS):
        return True
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return is_transient(cause)
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient storage failure is retried.

    ``attempts`` counts the first try. Delays grow exponentially from
    ``base_delay`` up to ``max_delay`` with full jitter.

    Example:
        >>> RetryPolicy(attempts=3).attempts
        3
    """

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0, cap)

    def run(
        self,
        fn: Callable[[], T],
        *,
        on_retry: Callable[[int, BaseException], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """Call ``fn`` until it succeeds, a permanent error occurs, or attempts run out."""
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                if attempt >= self.attempts or not is_transient(exc):
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc)
                sleep(self.delay(attempt))
                attempt += 1
