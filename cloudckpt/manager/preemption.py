"""Saving on preemption: a checkpoint when SIGTERM arrives, then a clean exit.

Spot and preemptible machines get a signal (SIGTERM on GCE, Kubernetes and
AWS spot via the instance's shutdown) and a grace period (30 s on GCE, about
120 s after an AWS spot notice) before they are killed. A
:class:`PreemptionCheckpointHandler` installs a signal handler that only
records the signal; the training loop calls the handler once per step, at a
point where the state is consistent, and after a signal that call

1. waits for an async save in flight (its failure is logged, not raised),
2. saves the current state synchronously with ``check_interval=False``, its
   storage requests bounded so that the save fails rather than hangs past
   the grace period,
3. logs the save's duration against ``grace_period``, and
4. exits the process with ``SystemExit(exit_code)`` — ``finally`` blocks and
   context managers run. The default exit status is ``128 + signal number``,
   what a shell reports for a process killed by that signal: **143 for
   SIGTERM** (130 for SIGINT), so supervisors see "terminated", not "failed".

If the save fails, its exception propagates from the call instead (the
process then exits with status 1 unless the loop catches it; a later call
tries again). The next run's ``manager.restore_or_initialize()`` resumes from
exactly the step at which the handler saved.

Signal handlers can only be installed from the main thread; call the handler
from the thread that runs the training loop (the main thread, for the exit).

In a distributed job (the manager has several ranks) every rank creates the
handler and calls it once per step; each call is one tiny collective (the
largest signal number over the ranks), so a signal that reaches any rank
makes every rank save the same step together, then exit.

Example:
    >>> import os, signal, tempfile, numpy as np, cloudckpt
    >>> w, step = np.zeros(2), np.array(0)
    >>> manager = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=w, step=step), tempfile.mkdtemp(), 3)
    >>> handler = cloudckpt.PreemptionCheckpointHandler(manager)
    >>> try:
    ...     for _ in range(100):
    ...         w += 1; step += 1
    ...         if step == 5:
    ...             os.kill(os.getpid(), signal.SIGTERM)   # the platform preempts us
    ...         handler()                                  # once per step
    ... except SystemExit as e:
    ...     print("exit status", e.code, "after step", int(step))
    exit status 143 after step 5
    >>> handler.close()
    >>> cloudckpt.load(manager.latest_checkpoint)["step"]
    array(5)
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from cloudckpt.manager.checkpoint_manager import CheckpointManager
from cloudckpt.manager.options import as_int

__all__ = ["PreemptionCheckpointHandler"]

log = logging.getLogger("cloudckpt")

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class PreemptionCheckpointHandler:
    """Save a checkpoint and exit when the process is told to stop.

    Args:
        manager: the :class:`~cloudckpt.CheckpointManager` to save with.
        signals: the signals that mean "preempted" (default ``(SIGTERM,)``).
            A handler installed before is chained: it is called too (except
            the default handlers; ``SIGINT``'s default would raise
            ``KeyboardInterrupt`` mid-step).
        grace_period: seconds between the signal and the kill, as the
            platform promises. The save's storage requests are cut off when
            it has passed (less ``margin``), and the save's duration is
            logged against it.
        exit_code: the process exit status after the save; default
            ``128 + signal number`` (143 for SIGTERM).
        save_fn: a zero-argument callable that saves instead of
            ``manager.save(check_interval=False)`` (e.g. to add metrics). It
            runs with the same time limit; its return value is logged.
        margin: seconds of the grace period kept for exiting (default 1).

    Call it once per training step: ``handler()`` or ``handler.check(step)``.
    Use it as a context manager, or call :meth:`close`, to restore the
    previous signal handlers.

    Example:
        >>> import os, signal, tempfile, numpy as np, cloudckpt
        >>> w, step = np.zeros(2), np.array(0)
        >>> manager = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=w, step=step), tempfile.mkdtemp(), 2)
        >>> try:
        ...     with cloudckpt.PreemptionCheckpointHandler(manager, grace_period=30.0) as handler:
        ...         for _ in range(100):
        ...             w += 1; step += 1                          # a training step
        ...             if step == 3:
        ...                 os.kill(os.getpid(), signal.SIGTERM)   # the platform preempts us
        ...             handler.check(step)                        # saves ckpt-3, then exits
        ... except SystemExit as e:
        ...     print("exit status", e.code)
        exit status 143
        >>> manager.latest_checkpoint.endswith("ckpt-3"), cloudckpt.load(manager.latest_checkpoint)["w"]
        (True, array([3., 3.]))
    """

    def __init__(
        self,
        manager: CheckpointManager,
        signals: Iterable[int] = (signal.SIGTERM,),
        grace_period: float = 30.0,
        exit_code: int | None = None,
        save_fn: Callable[[], Any] | None = None,
        *,
        margin: float = 1.0,
    ) -> None:
        if not isinstance(manager, CheckpointManager):
            raise TypeError(f"manager must be a cloudckpt.CheckpointManager, got {type(manager).__name__}")
        sigs = [signal.Signals(s) for s in signals]
        if not sigs:
            raise ValueError("signals must name at least one signal")
        if isinstance(grace_period, bool) or not isinstance(grace_period, (int, float)) or not grace_period > 0:
            raise ValueError(f"grace_period must be a positive number of seconds, got {grace_period!r}")
        if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
            raise TypeError(f"exit_code must be an int or None, got {exit_code!r}")
        if save_fn is not None and not callable(save_fn):
            raise TypeError("save_fn must be a zero-argument callable or None")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionCheckpointHandler must be created in the main thread (signal handlers)")
        self._manager = manager
        # its own channel: an async save may run collectives on the manager's group meanwhile
        self._group = manager._group.fork()
        self._grace = float(grace_period)
        self._margin = max(0.0, float(margin))
        self._exit_code = exit_code
        self._save_fn = save_fn
        self._signum: int | None = None
        self._received_at: float | None = None
        self._signals = [int(s) for s in sigs]
        self._previous: dict[int, _Handler] = {}
        for s in sigs:
            self._previous[int(s)] = signal.signal(s, self._on_signal)

    # -- the signal --------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signum is None:
            self._signum = signum
            self._received_at = time.monotonic()
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    @property
    def received(self) -> bool:
        """Whether a preemption signal has arrived.

        Example:
            >>> import tempfile, numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 1)
            >>> with cloudckpt.PreemptionCheckpointHandler(m) as h:
            ...     h.received
            False
        """
        return self._signum is not None

    @property
    def signal(self) -> int | None:
        """The signal received (the first, if several), or None.

        Example:
            >>> import signal, tempfile, numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 1)
            >>> with cloudckpt.PreemptionCheckpointHandler(m, signals=(signal.SIGUSR1,)) as h:
            ...     h.signal is None
            True
        """
        return self._signum

    @property
    def exit_code(self) -> int:
        """The exit status used after the save: ``exit_code`` if given, else
        ``128 +`` the signal received (or the first signal handled).

        Example:
            >>> import tempfile, numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 1)
            >>> with cloudckpt.PreemptionCheckpointHandler(m) as h:
            ...     h.exit_code
            143
        """
        if self._exit_code is not None:
            return self._exit_code
        signum = self._signum if self._signum is not None else self._signals[0]
        return 128 + int(signum)

    # -- the training loop's call -------------------------------------------
    def __call__(self, step: Any = None) -> None:
        """Same as :meth:`check`: ``handler()`` once per step.

        Example:
            >>> import tempfile, numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 1)
            >>> with cloudckpt.PreemptionCheckpointHandler(m) as handler:
            ...     handler()        # no signal has arrived: returns at once
            ...     handler.received
            False
        """
        self.check(step)

    def check(self, step: Any = None) -> None:
        """Call once per step; after a signal, save and exit (``SystemExit``).

        ``step`` (optional: anything ``int()`` takes) names the checkpoint,
        as ``manager.save(checkpoint_number=step)``; if the manager's latest
        checkpoint already has that number (saved at this very step), no
        second save is made. Without ``step`` the manager numbers it.
        Returns at once (a flag test) until a signal has arrived.

        Example:
            >>> import tempfile, numpy as np, cloudckpt
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 1)
            >>> with cloudckpt.PreemptionCheckpointHandler(m) as h:
            ...     h.check(step=1)   # no signal: nothing happens
        """
        if self._group.size > 1:
            # decide on the agreed value only: a signal that arrives during the
            # collective counts at the next call, on every rank alike
            agreed = self._group.all_reduce_max(self._signum or 0)
            if not agreed:
                return
            if self._signum is None or self._received_at is None:  # another rank was told to stop
                self._signum = agreed
                self._received_at = time.monotonic()
        if self._signum is None:
            return
        number = None if step is None else as_int(step, "step")
        assert self._received_at is not None
        name = signal.Signals(self._signum).name
        deadline = self._received_at + self._grace - self._margin
        log.warning(
            "received %s: saving a checkpoint%s before exiting (grace period %.1f s)",
            name,
            "" if number is None else f" at step {number}",
            self._grace,
        )
        m = self._manager
        t0 = time.monotonic()
        with m._time_limit(max(0.0, deadline - t0)):
            try:
                m.sync()
            except Exception as exc:  # the in-flight save failed; the new one matters
                log.error("the async save in flight when %s arrived failed: %s", name, exc)
            if self._save_fn is not None:
                url = self._save_fn()
            elif number is not None and m.latest_checkpoint is not None and m.latest_checkpoint == m._url(number):
                url = m.latest_checkpoint  # saved at this step already
            else:
                url = m.save(checkpoint_number=number, check_interval=False)
            m.sync()  # an async manager commits in the background: wait for it
        now = time.monotonic()
        took, since = now - t0, now - self._received_at
        left = self._grace - since
        level = logging.WARNING if left >= 0 else logging.ERROR
        log.log(
            level,
            "preemption checkpoint %s saved in %.2f s, %.2f s after %s: %s the %.1f s grace period; "
            "exiting with status %d",
            url if url is not None else "(state saved at this step already)",
            took,
            since,
            name,
            f"{left:.2f} s left of" if left >= 0 else f"{-left:.2f} s past",
            self._grace,
            self.exit_code,
        )
        raise SystemExit(self.exit_code)

    # -- cleanup -------------------------------------------------------------
    def close(self) -> None:
        """Restore the signal handlers that were installed before (idempotent).

        Example:
            >>> import signal, tempfile, numpy as np, cloudckpt
            >>> before = signal.getsignal(signal.SIGUSR2)
            >>> m = cloudckpt.CheckpointManager(cloudckpt.Checkpoint(w=np.ones(1)), tempfile.mkdtemp(), 1)
            >>> h = cloudckpt.PreemptionCheckpointHandler(m, signals=(signal.SIGUSR2,))
            >>> h.close(); signal.getsignal(signal.SIGUSR2) is before
            True
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("close() must be called in the main thread (signal handlers)")
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def __enter__(self) -> PreemptionCheckpointHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
