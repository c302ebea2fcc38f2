"""Fault injection at the storage layer: crashes, transient and permanent errors, latency.

Every request cloudckpt makes goes through :class:`cloudckpt.storage.Storage`,
which calls its hooks before each attempt (:meth:`Storage.add_hook
<cloudckpt.storage.Storage.add_hook>`, or :func:`~cloudckpt.storage.add_global_hook`
for every storage of the process). A :class:`FaultInjector` is such a hook.
Given a :class:`Faults` description it can, on the requests it matches
(``ops``, ``match``):

* ``kill_after=k`` — send ``signal`` (default SIGKILL) to this process just
  before its k-th request: a real crash between two requests;
* ``stop_after=k`` — raise :class:`InjectedCrash` (a ``BaseException``, so
  nothing retries or swallows it) at the k-th request and every later one:
  an in-process stand-in for a crash;
* ``fail_rate=p`` — raise a transient error on a fraction ``p`` of the
  requests, drawn from ``errors``: ``"timeout"`` (:class:`TimeoutError`),
  ``"reset"`` (:class:`ConnectionResetError`), ``"503"``
  (:class:`ServiceUnavailableError`, an :class:`OSError` with ``status``
  503), with a seeded RNG; ``max_failures_per_request`` caps how many
  attempts in a row of one request fail, so that retries are sure to win;
* ``latency`` (+ uniform ``jitter``) — sleep before each request;
* ``permanent=kind`` from the ``permanent_after``-th request on — raise
  ``"denied"`` (:class:`PermissionError`, EACCES), ``"enospc"`` (disk full),
  ``"erofs"`` (read-only file system) or ``"missing"`` (:class:`FileNotFoundError`).

``log`` names a file that gets one line per matching request (``n op url``)
and ``KILL n op url`` / ``STOP ...`` / ``FAIL ... kind`` lines for the faults,
written with ``O_APPEND`` before the fault, so that it survives a SIGKILL.

In a child process, call :func:`install_from_env`: it reads the variable
``CLOUDCKPT_FAULTS`` (``"kill_after=7,log=/tmp/requests.log"``, or the same
as a JSON object) and installs the injector for every storage of the
process. The RNG is seeded (``seed``), so the sequence of decisions is
reproducible; which of several concurrent requests meets which decision
depends on thread scheduling.

Example:
    >>> import numpy as np, cloudckpt
    >>> from cloudckpt.storage import open_storage
    >>> s = open_storage("memory://doc-faults")
    >>> faults = FaultInjector(stop_after=2)
    >>> remove = faults.attach(s)
    >>> s.write("a", b"1")
    >>> s.write("b", b"2")
    Traceback (most recent call last):
    ...
    cloudckpt.testing.faults.InjectedCrash: injected crash at request 2 (write memory://doc-faults/b)
    >>> remove(); faults.requests
    2
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal as _signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from cloudckpt.storage import Storage, add_global_hook

__all__ = [
    "ENV_VAR",
    "Faults",
    "FaultInjector",
    "InjectedCrash",
    "ServiceUnavailableError",
    "parse_spec",
    "install_from_env",
    "TRANSIENT_KINDS",
    "PERMANENT_KINDS",
]

#: The environment variable :func:`install_from_env` reads.
ENV_VAR = "CLOUDCKPT_FAULTS"


class InjectedCrash(BaseException):
    """Raised by ``stop_after``: the process "died" at this request.

    A ``BaseException`` (like ``KeyboardInterrupt``): retries and ``except
    Exception`` clauses do not catch it, so nothing after the crash point
    reaches storage through the injector's hook.

    Example:
        >>> issubclass(InjectedCrash, Exception)
        False
    """


class ServiceUnavailableError(OSError):
    """An injected HTTP 503, shaped like the errors object-store clients raise
    (``status``/``code`` 503; cloudckpt retries it as transient).

    Example:
        >>> from cloudckpt.storage import retry as _retry
        >>> e = ServiceUnavailableError("s3://b/k"); e.status, _retry.is_transient(e)
        (503, True)
    """

    status = 503
    code = 503

    def __init__(self, url: str = "") -> None:
        super().__init__(f"503 Service Unavailable (SlowDown, injected) for {url}")


def _transient(kind: str, op: str, url: str) -> BaseException:
    if kind == "timeout":
        return TimeoutError(f"injected timeout: {op} {url} timed out")
    if kind == "reset":
        return ConnectionResetError(errno.ECONNRESET, f"injected: connection reset by peer during {op} {url}")
    if kind == "503":
        return ServiceUnavailableError(url)
    raise ValueError(f"unknown transient error kind {kind!r}; choose from {sorted(TRANSIENT_KINDS)}")


def _permanent(kind: str, op: str, url: str) -> BaseException:
    if kind == "denied":
        return PermissionError(errno.EACCES, f"Access Denied (injected) for {op}", url)
    if kind == "enospc":
        return OSError(errno.ENOSPC, "No space left on device (injected)", url)
    if kind == "erofs":
        return OSError(errno.EROFS, "Read-only file system (injected)", url)
    if kind == "missing":
        return FileNotFoundError(errno.ENOENT, "No such object (injected)", url)
    raise ValueError(f"unknown permanent error kind {kind!r}; choose from {sorted(PERMANENT_KINDS)}")


#: Kinds of transient errors ``errors=`` may name.
TRANSIENT_KINDS = frozenset({"timeout", "reset", "503"})
#: Kinds of permanent errors ``permanent=`` may name.
PERMANENT_KINDS = frozenset({"denied", "enospc", "erofs", "missing"})


@dataclass(frozen=True)
class Faults:
    """What to inject; see the module docstring. Counts (``kill_after``,
    ``stop_after``, ``permanent_after``) are 1-based and count only the
    requests that ``ops`` and ``match`` select.

    Example:
        >>> Faults(fail_rate=0.25, errors=("timeout",), seed=3).fail_rate
        0.25
        >>> Faults(fail_rate=2)
        Traceback (most recent call last):
        ...
        ValueError: fail_rate must be in [0, 1], got 2
    """

    kill_after: int | None = None
    stop_after: int | None = None
    fail_rate: float = 0.0
    errors: tuple[str, ...] = ("timeout", "reset", "503")
    max_failures_per_request: int | None = None
    latency: float = 0.0
    jitter: float = 0.0
    permanent: str | None = None
    permanent_after: int = 1
    ops: tuple[str, ...] | None = None
    match: str | None = None
    seed: int = 0
    signal: int = int(_signal.SIGKILL)
    log: str | None = None

    def __post_init__(self) -> None:
        for name in ("kill_after", "stop_after", "max_failures_per_request"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if (
            isinstance(self.permanent_after, bool)
            or not isinstance(self.permanent_after, int)
            or self.permanent_after < 1
        ):
            raise ValueError(f"permanent_after must be a positive int, got {self.permanent_after!r}")
        if not 0.0 <= float(self.fail_rate) <= 1.0:
            raise ValueError(f"fail_rate must be in [0, 1], got {self.fail_rate}")
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must be >= 0 seconds")
        bad = set(self.errors) - TRANSIENT_KINDS
        if bad or not self.errors:
            raise ValueError(f"errors must name some of {sorted(TRANSIENT_KINDS)}, got {list(self.errors)}")
        if self.permanent is not None and self.permanent not in PERMANENT_KINDS:
            raise ValueError(f"permanent must be one of {sorted(PERMANENT_KINDS)}, got {self.permanent!r}")


_INT_FIELDS = {"kill_after", "stop_after", "max_failures_per_request", "permanent_after", "seed"}
_FLOAT_FIELDS = {"fail_rate", "latency", "jitter"}
_LIST_FIELDS = {"errors", "ops"}


def _signal_number(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).upper()
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(getattr(_signal, name))
    except AttributeError:
        raise ValueError(f"unknown signal {value!r}") from None


def parse_spec(text: str) -> Faults:
    """Parse a fault description: ``key=value`` pairs separated by ``,`` or
    ``;`` (list values separated by ``|``), or a JSON object with the same keys.

    Example:
        >>> parse_spec("kill_after=7")
        Faults(kill_after=7, stop_after=None, fail_rate=0.0, errors=('timeout', 'reset', '503'), max_failures_per_request=None, latency=0.0, jitter=0.0, permanent=None, permanent_after=1, ops=None, match=None, seed=0, signal=9, log=None)
        >>> f = parse_spec("fail_rate=0.2; errors=timeout|503; ops=write|write_create; seed=4")
        >>> f.errors, f.ops, f.seed
        (('timeout', '503'), ('write', 'write_create'), 4)
        >>> parse_spec('{"permanent": "enospc", "permanent_after": 3}').permanent
        'enospc'
        >>> parse_spec("explode=1")
        Traceback (most recent call last):
        ...
        ValueError: CLOUDCKPT_FAULTS: unknown key 'explode'; known: errors, fail_rate, jitter, kill_after, latency, log, match, max_failures_per_request, ops, permanent, permanent_after, seed, signal, stop_after
    """
    known = {f.name for f in fields(Faults)}
    text = text.strip()
    raw: dict[str, Any]
    if text.startswith("{"):
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"{ENV_VAR}: a JSON spec must be an object")
    else:
        raw = {}
        for part in text.replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"{ENV_VAR}: expected key=value, got {part!r}")
            k, v = (x.strip() for x in part.split("=", 1))
            raw[k] = v
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in known:
            raise ValueError(f"{ENV_VAR}: unknown key {k!r}; known: {', '.join(sorted(known))}")
        if k == "signal":
            kwargs[k] = _signal_number(v)
        elif k in _INT_FIELDS:
            kwargs[k] = int(v)
        elif k in _FLOAT_FIELDS:
            kwargs[k] = float(v)
        elif k in _LIST_FIELDS:
            kwargs[k] = tuple(x for x in (v.split("|") if isinstance(v, str) else list(v)) if x)
        else:
            kwargs[k] = v
    return Faults(**kwargs)


class FaultInjector:
    """A storage hook that injects the faults of a :class:`Faults` (or of keyword arguments).

    Use it as ``storage.add_hook(injector)`` / :meth:`attach` for one
    storage, :meth:`install` (or ``with injector:``) for every storage of
    the process. Counters: ``requests`` (matching requests seen),
    ``injected`` (errors raised), ``retried`` (requests attempted again after
    an injected error: retries observed), ``delayed``; ``events`` lists
    ``(n, op, url, what)`` for every fault. It is thread-safe.

    Example:
        >>> from cloudckpt.storage import open_storage, RetryPolicy
        >>> s = open_storage("memory://doc-injector", retry=RetryPolicy(base_delay=0))
        >>> faults = FaultInjector(fail_rate=1.0, errors=("timeout",), max_failures_per_request=2)
        >>> _ = faults.attach(s)
        >>> s.write("k", b"x")  # fails twice, the third attempt goes through
        >>> faults.injected, faults.retried, s.stats.retries
        (2, 2, 2)
        >>> denied = FaultInjector(permanent="denied", ops=("read",))
        >>> _ = denied.attach(s)
        >>> s.read("k")
        Traceback (most recent call last):
        ...
        cloudckpt.errors.StoragePermissionError: read memory://doc-injector/k: permission denied by memory ([Errno 13] Access Denied (injected) for read: 'memory://doc-injector/k'); check the credentials in storage_options or the environment
    """

    def __init__(self, faults: Faults | None = None, **kwargs: Any) -> None:
        if faults is not None and kwargs:
            raise TypeError("pass a Faults or keyword arguments, not both")
        self.faults = faults if faults is not None else Faults(**kwargs)
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._fails: dict[tuple[str, str], int] = {}
        self._log_fd: int | None = None
        self.requests = 0
        self.injected = 0
        self.retried = 0
        self.delayed = 0
        self.events: list[tuple[int, str, str, str]] = []
        if self.faults.log:
            self._log_fd = os.open(self.faults.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __repr__(self) -> str:
        return f"FaultInjector(requests={self.requests}, injected={self.injected}, retried={self.retried})"

    # -- installing --------------------------------------------------------
    def attach(self, storage: Storage) -> Callable[[], None]:
        """Inject into one storage (and the storages derived from it); returns the remover."""
        return storage.add_hook(self)

    def install(self) -> Callable[[], None]:
        """Inject into every storage of this process; returns the remover."""
        return add_global_hook(self)

    def __enter__(self) -> FaultInjector:
        self._remove = self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()
        self.close()

    def close(self) -> None:
        """Close the log file, if any."""
        fd, self._log_fd = self._log_fd, None
        if fd is not None:
            os.close(fd)

    # -- the hook ----------------------------------------------------------
    def _matches(self, op: str, url: str) -> bool:
        f = self.faults
        return (f.ops is None or op in f.ops) and (f.match is None or f.match in url)

    def _log(self, line: str) -> None:
        if self._log_fd is not None:
            os.write(self._log_fd, (line.replace("\n", " ") + "\n").encode())

    def __call__(self, op: str, url: str) -> None:
        if not self._matches(op, url):
            return
        f = self.faults
        with self._lock:
            self.requests += 1
            n = self.requests
            key = (op, url)
            if key in self._fails and self._fails[key] > 0:
                self.retried += 1
            delay = f.latency + (self._rng.uniform(0, f.jitter) if f.jitter else 0.0)
            if delay > 0:
                self.delayed += 1
            action: tuple[str, Any] | None = None
            if f.kill_after is not None and n >= f.kill_after:
                action = ("KILL", None)
            elif f.stop_after is not None and n >= f.stop_after:
                action = ("STOP", None)
            elif f.permanent is not None and n >= f.permanent_after:
                action = ("FAIL", f.permanent)
            elif f.fail_rate and self._rng.random() < f.fail_rate:
                streak = self._fails.get(key, 0)
                if f.max_failures_per_request is None or streak < f.max_failures_per_request:
                    action = ("FAIL", self._rng.choice(f.errors))
            if action is not None and action[0] == "FAIL":
                self._fails[key] = self._fails.get(key, 0) + 1
                self.injected += 1
            else:
                self._fails.pop(key, None)
            if action is not None:
                self.events.append((n, op, url, action[0] if action[1] is None else f"{action[0]} {action[1]}"))
            # logged under the lock: every request numbered below n is in the log before n is
            if action is None:
                self._log(f"{n} {op} {url}")
            elif action[0] == "FAIL":
                self._log(f"FAIL {n} {op} {url} {action[1]}")
            else:
                self._log(f"{action[0]} {n} {op} {url}")
        if delay > 0:
            time.sleep(delay)
        if action is None:
            return
        what, kind = action
        if what == "KILL":
            os.kill(os.getpid(), f.signal)
            time.sleep(5)  # a fatal signal ends us here; a handled one lets the handler run first
            return
        if what == "STOP":
            raise InjectedCrash(f"injected crash at request {n} ({op} {url})")
        if kind in TRANSIENT_KINDS:
            raise _transient(kind, op, url)
        raise _permanent(kind, op, url)


_ENV_INJECTOR: dict[str, Any] = {"injector": None, "remove": None}


def install_from_env(environ: Any = None, *, var: str = ENV_VAR) -> FaultInjector | None:
    """Install the faults described by ``$CLOUDCKPT_FAULTS`` for every storage of this
    process (see :func:`parse_spec`); None (and nothing installed) if it is unset or
    empty. A second call replaces the first injector. Call it in a child
    process at the point from which requests should be counted.

    Example:
        >>> inj = install_from_env({"CLOUDCKPT_FAULTS": "stop_after=1"})
        >>> import cloudckpt.storage as st
        >>> st.open_storage("memory://doc-env").write("k", b"x")
        Traceback (most recent call last):
        ...
        cloudckpt.testing.faults.InjectedCrash: injected crash at request 1 (write memory://doc-env/k)
        >>> install_from_env({}) is None  # unset: removes the previous injector
        True
        >>> st.open_storage("memory://doc-env").write("k", b"x")
    """
    env = os.environ if environ is None else environ
    old_remove = _ENV_INJECTOR["remove"]
    if old_remove is not None:
        old_remove()
        _ENV_INJECTOR["injector"].close()
        _ENV_INJECTOR.update(injector=None, remove=None)
    spec = env.get(var, "")
    if not spec.strip():
        return None
    injector = FaultInjector(parse_spec(spec))
    _ENV_INJECTOR.update(injector=injector, remove=injector.install())
    return injector
