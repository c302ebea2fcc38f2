"""One request to a backend, and the state the storages of one directory tree share.

A request is made in attempts; each attempt checks the time limit, calls the
hooks (:mod:`cloudckpt.storage.hooks`: fault injection, tracing), is counted
(:mod:`cloudckpt.storage.stats`) and gets its per-call timeout; transient
failures are retried by the policy (:mod:`cloudckpt.storage.retry`); what
fails is raised as a typed :mod:`cloudckpt.errors` error naming the URL and
never a credential (:mod:`cloudckpt.storage.redact`).

Example:
    >>> from cloudckpt.storage.backends.local import LocalBackend
    >>> s = Session(LocalBackend(), "local", 4, RetryPolicy(), [])
    >>> s.request("list", "/nonexistent-dir", lambda: s.backend.list_dir("/nonexistent-dir")), s.stats.requests
    (({}, []), 1)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from cloudckpt.errors import ObjectNotFoundError, StorageError, StoragePermissionError
from cloudckpt.storage.hooks import Hooks
from cloudckpt.storage.protocol import Backend
from cloudckpt.storage.redact import redact_text, scrubbed
from cloudckpt.storage.retry import RetryPolicy, is_transient
from cloudckpt.storage.stats import RequestStats

__all__ = ["Session"]

log = logging.getLogger("cloudckpt")
T = TypeVar("T")

# what the SDKs raise when they find no credentials at all (botocore, google-auth)
_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError")


class Session:
    """What a Storage and the child storages derived from it share — backend,
    limits, retry policy, credentials to mask, counters, hooks — and the way
    one request is made.

    Example:
        >>> from cloudckpt.storage.backends.local import LocalBackend
        >>> Session(LocalBackend(), "local", 4, RetryPolicy(), []).max_concurrency
        4
    """

    def __init__(
        self,
        backend: Backend,
        protocol: str,
        max_concurrency: int,
        retry: RetryPolicy,
        secrets: list[str],
        request_timeout: float | None = None,
    ) -> None:
        self.backend = backend
        self.protocol = protocol
        self.max_concurrency = max_concurrency
        self.retry = retry
        self.secrets = secrets
        self.request_timeout = request_timeout
        self.deadline: float | None = None  # time.monotonic() after which no request starts
        self.stats = RequestStats()
        self.hooks = Hooks()
        self.warned_weak_commit = False  # WeakCommitWarning said once per opened store
        # a client that must not be used by two threads at once (an FTP or SFTP connection)
        self._one_at_a_time = None if backend.capabilities.concurrent_requests else threading.Lock()

    @contextlib.contextmanager
    def time_limit(self, seconds: float | None) -> Iterator[None]:
        """No request of these storages starts later than ``seconds`` from now
        within the block, and each attempt's timeout is cut to the time left.

        Example:
            >>> from cloudckpt.storage.backends.local import LocalBackend
            >>> s = Session(LocalBackend(), "local", 4, RetryPolicy(), [])
            >>> with s.time_limit(5):
            ...     s.deadline is not None
            True
        """
        previous = self.deadline
        if seconds is not None:
            at = time.monotonic() + max(0.0, float(seconds))
            self.deadline = at if previous is None else min(previous, at)
        try:
            yield
        finally:
            self.deadline = previous

    def redact(self, text: str) -> str:
        """A backend's message with the credentials masked."""
        return redact_text(text, self.secrets)

    def request(self, op: str, url: str, fn: Callable[[], T], nbytes: int = 0) -> T:
        """``fn()`` as one request ``op`` on ``url``: each attempt checks the time
        limit, calls the hooks, is counted and gets its timeout; transient
        failures are retried; a failure is raised as a typed error naming the URL.

        Example:
            >>> from cloudckpt.storage.backends.local import LocalBackend
            >>> s = Session(LocalBackend(), "local", 4, RetryPolicy(), [])
            >>> s.request("head", "/no/such/file", lambda: s.backend.size("/no/such/file"))
            Traceback (most recent call last):
            ...
            cloudckpt.errors.ObjectNotFoundError: head /no/such/file: no such object on local
        """

        def on_retry(n: int, exc: BaseException) -> None:
            self.stats.add_retry()
            log.debug("retrying %s %s after %s (attempt %d)", op, url, type(exc).__name__, n)

        try:
            return self.retry.run(lambda: self._attempt(op, url, fn, nbytes), on_retry=on_retry)
        except (StorageError, FileExistsError, NotImplementedError):
            raise  # ours already, a create-only conflict, or a verb the store lacks: the caller handles them
        except Exception as exc:
            raise self.error(op, url, exc) from scrubbed(exc, self.secrets)

    def _attempt(self, op: str, url: str, fn: Callable[[], T], nbytes: int) -> T:
        """One attempt: within the time limit, after the hooks, counted, with its timeout."""
        timeout = self.request_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise StorageError(
                    f"{op} {url}: not started, the time limit of this operation has passed", url=url, operation=op
                )
            timeout = left if timeout is None else min(timeout, left)
        self.hooks(op, url)
        self.stats.add(op, nbytes)
        with self._one_at_a_time or contextlib.nullcontext():
            if timeout is None or not self.backend.capabilities.call_timeout:
                return fn()
            with self.backend.call_timeout(timeout):
                return fn()

    def error(self, op: str, url: str, exc: Exception) -> StorageError:
        """The typed error for a backend's exception ``exc`` on request ``op``,
        its text with the credentials masked.

        Example:
            >>> from cloudckpt.storage.backends.local import LocalBackend
            >>> Session(LocalBackend(), "local", 4, RetryPolicy(), []).error("read", "/x", PermissionError("no"))
            StoragePermissionError('read /x: permission denied by local (no); check the credentials in storage_options or the environment')
        """
        name = self.backend.name
        if isinstance(exc, FileNotFoundError):
            # a write never needs the object to exist: what is missing is where it goes
            missing = "no bucket or directory to write into" if op.startswith("write") else "no such object"
            return ObjectNotFoundError(f"{op} {url}: {missing} on {name}", url=url, operation=op)
        if isinstance(exc, PermissionError):
            return StoragePermissionError(
                f"{op} {url}: permission denied by {name} ({self.redact(str(exc))}); "
                "check the credentials in storage_options or the environment",
                url=url,
                operation=op,
            )
        if type(exc).__name__ in _NO_CREDENTIALS:
            return StoragePermissionError(
                f"{op} {url}: no usable credentials for {name} ({type(exc).__name__}: "
                f"{self.redact(str(exc))}); pass them in storage_options or set them in the environment",
                url=url,
                operation=op,
            )
        transient = is_transient(exc)
        what = "failed after retries" if transient else "failed"
        return StorageError(
            f"{op} {url} {what} on {name}: {type(exc).__name__}: {self.redact(str(exc))}",
            url=url,
            operation=op,
            transient=transient,
        )
