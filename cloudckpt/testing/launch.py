"""Run a script as N local ranks of a torch.distributed job (like ``torchrun --standalone``).

Each rank is a real process with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT`` in its environment, so
the script calls ``torch.distributed.init_process_group("gloo")`` as under
torchrun. Lines a rank prints are collected; ``on_line(rank, line, procs)``
sees each as it arrives (to send a signal to a rank at a chosen moment).
Used by the multi-host tests, benchmarks and examples.

Example:
    >>> import sys
    >>> out = launch([sys.executable, "-c", "import os; print(os.environ['RANK'])"], 2)
    >>> [(r.rank, r.returncode, r.lines) for r in out]
    [(0, 0, ['0']), (1, 0, ['1'])]
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["RankResult", "launch", "free_port"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1.

    Example:
        >>> 1024 <= free_port() < 65536
        True
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RankResult:
    """How one rank ended: exit status (negative: killed by that signal), its
    stdout lines, its stderr text, and when it exited (``time.monotonic()``)."""

    rank: int
    returncode: int
    lines: list[str] = field(default_factory=list)
    stderr: str = ""
    ended: float = 0.0


def launch(
    argv: Sequence[str],
    nproc: int,
    *,
    env: Mapping[str, str] | None = None,
    rank_env: Mapping[int, Mapping[str, str]] | None = None,
    on_line: Callable[[int, str, list[subprocess.Popen[str]]], None] | None = None,
    timeout: float = 300.0,
    cwd: str | None = None,
) -> list[RankResult]:
    """Run ``argv`` as ranks ``0 .. nproc-1``; return their results in rank order.

    ``env`` is added to every rank's environment, ``rank_env[r]`` to rank
    ``r``'s. A rank still running after ``timeout`` seconds is killed
    (SIGKILL; its return code is then -9).
    """
    port = free_port()
    procs: list[subprocess.Popen[str]] = []
    results = [RankResult(r, 0) for r in range(nproc)]
    for r in range(nproc):
        e = dict(os.environ)
        e.update(env or {})
        e.update((rank_env or {}).get(r, {}))
        e.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        procs.append(subprocess.Popen(list(argv), env=e, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    def pump_out(r: int) -> None:
        stream = procs[r].stdout
        assert stream is not None
        for line in stream:
            line = line.rstrip("\n")
            results[r].lines.append(line)
            if on_line is not None:
                on_line(r, line, procs)

    def pump_err(r: int) -> None:
        stream = procs[r].stderr
        assert stream is not None
        results[r].stderr = stream.read()

    def wait(r: int) -> None:
        results[r].returncode = procs[r].wait()
        results[r].ended = time.monotonic()

    threads = [threading.Thread(target=f, args=(r,), daemon=True) for r in range(nproc) for f in (pump_out, pump_err)]
    waiters = [threading.Thread(target=wait, args=(r,), daemon=True) for r in range(nproc)]
    for t in [*threads, *waiters]:
        t.start()
    deadline = time.monotonic() + timeout
    for t in waiters:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in waiters):
        for q in procs:
            if q.poll() is None:
                q.kill()
        for t in waiters:
            t.join()
    for t in threads:
        t.join(10)
    return results
